// Package api is Tally's HTTP API: JSON over HTTP, money as integer minor
// units, errors as RFC 9457 problem details, and Idempotency-Key on POST.
// Every change writes its rows and its events in one transaction.
package api

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// Source is the ce_source of the events the API writes.
const Source = "/tally/api"

// requestTimeout bounds the work of one request.
const requestTimeout = 15 * time.Second

//go:embed openapi.json
var openAPI []byte

// Config holds the API's settings.
type Config struct {
	// MaxBodyBytes bounds request bodies (413 beyond it).
	MaxBodyBytes int64
	// IdempotencyTTL is how long a stored Idempotency-Key response is
	// replayed; after it, the key is taken as new.
	IdempotencyTTL time.Duration
	// MaxImportBytes bounds an uploaded CSV file (413 beyond it); 0 is
	// DefaultMaxImportBytes.
	MaxImportBytes int64
	// WebhookGuard checks the URLs of webhook endpoints at registration;
	// nil refuses every internal address (webhook.NewGuard without an
	// allow-list).
	WebhookGuard *webhook.Guard
}

// API serves the HTTP API.
type API struct {
	pool     *pgxpool.Pool
	notifier *outbox.Notifier
	importer *importer.Importer
	log      *slog.Logger
	cfg      Config
	guard    *webhook.Guard
}

// New returns the API. notifier wakes relays after each commit that wrote
// events.
func New(pool *pgxpool.Pool, notifier *outbox.Notifier, log *slog.Logger, cfg Config) *API {
	guard := cfg.WebhookGuard
	if guard == nil {
		guard, _ = webhook.NewGuard() // no option: no error
	}
	return &API{pool: pool, notifier: notifier, importer: importer.New(pool, notifier.Notify), log: log, cfg: cfg, guard: guard}
}

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPI)
	})
	for pattern, h := range a.routes() {
		mux.HandleFunc(pattern, h)
	}
}

// Handler wraps mux so that requests no route matches get a problem
// response too (404, or 405 with Allow), not ServeMux's plain text.
//
// It also gives every request its ids (see identify), before anything can
// answer it.
//
// Paths are matched as OpenAPI matches them: a path that a pattern without
// wildcards serves belongs to that pattern alone, so GET /v1/dlq/replay is
// a 405 (only POST serves it), not GET /v1/dlq/{id} with the id "replay".
func Handler(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = identify(w, r)
		h, pattern := mux.Handler(r)
		if pattern != "" {
			if allow := concreteAllow(mux, r, pattern); allow != "" {
				methodNotAllowed(w, r, allow)
				return
			}
			mux.ServeHTTP(w, r)
			return
		}
		rec := &capture{header: http.Header{}}
		h.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusNotFound:
			writeProblem(w, r, Problem{Type: ProblemNotFound, Status: http.StatusNotFound, Detail: "no such route"})
		case http.StatusMethodNotAllowed:
			allow := concreteAllow(mux, r, "")
			if allow == "" {
				allow = rec.header.Get("Allow")
			}
			methodNotAllowed(w, r, allow)
		default: // a redirect, such as a cleaned path
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
		}
	})
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeProblem(w, r, Problem{Type: ProblemMethod, Status: http.StatusMethodNotAllowed, Detail: "allowed: " + allow})
}

// routeMethods are the methods the API's patterns name.
var routeMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// concreteAllow applies OpenAPI's rule that a concrete path wins over a
// templated one. When r matched a pattern with wildcards (matched), or
// none (""), while patterns without wildcards serve r's path for other
// methods, it returns those methods, as an Allow header; else "".
func concreteAllow(mux *http.ServeMux, r *http.Request, matched string) string {
	if matched != "" && !strings.Contains(matched, "{") {
		return ""
	}
	var allow []string
	for _, m := range routeMethods {
		probe := r.WithContext(r.Context())
		probe.Method = m
		if _, p := mux.Handler(probe); p != "" && !strings.Contains(p, "{") {
			allow = append(allow, m)
			if m == http.MethodGet {
				allow = append(allow, http.MethodHead)
			}
		}
	}
	slices.Sort(allow)
	return strings.Join(allow, ", ")
}

type capture struct {
	header http.Header
	status int
}

func (c *capture) Header() http.Header         { return c.header }
func (c *capture) Write(b []byte) (int, error) { return len(b), nil }
func (c *capture) WriteHeader(s int)           { c.status = s }

// requestIDs are a request's ids, kept in its context.
type requestIDs struct{ request, correlation string }

// idsKey is the context key of requestIDs; the pointer's identity, not its
// text, makes it unique.
var idsKey = func() *string { s := "tally request ids"; return &s }()

// identify gives r its request id (X-Request-ID, or a new one) and its
// correlation id (X-Correlation-ID, or by default the request id), echoes
// both on the response, and keeps them in r's context. The request id is the
// causation id of the events the request causes and is quoted in 500
// answers and logs.
func identify(w http.ResponseWriter, r *http.Request) *http.Request {
	ids := requestIDs{request: headerID(r, "X-Request-ID"), correlation: headerID(r, "X-Correlation-ID")}
	if ids.request == "" {
		ids.request = envelope.NewID().String()
	}
	if ids.correlation == "" {
		ids.correlation = ids.request
	}
	w.Header().Set("X-Request-ID", ids.request)
	w.Header().Set("X-Correlation-ID", ids.correlation)
	return r.WithContext(context.WithValue(r.Context(), idsKey, ids))
}

func idsOf(r *http.Request) requestIDs {
	ids, _ := r.Context().Value(idsKey).(requestIDs)
	return ids
}

// meta builds the envelope attributes of the events a request causes.
func meta(r *http.Request) billing.Meta {
	ids := idsOf(r)
	return billing.Meta{Source: Source, CorrelationID: ids.correlation, CausationID: ids.request,
		TraceParent: observe.TraceParent(r.Context()), Now: time.Now()}
}

// headerID returns a caller-given id header if it is short and printable;
// anything else is ignored rather than copied into events.
func headerID(r *http.Request, name string) string {
	v := r.Header.Get(name)
	if v == "" || len(v) > 128 || !utf8.ValidString(v) {
		return ""
	}
	for _, c := range v {
		if c < 0x21 || c == 0x7f {
			return ""
		}
	}
	return v
}

// response is what a change answers.
type response struct {
	status   int
	location string
	body     any
	events   []envelope.Event
}

// change runs fn in a transaction, then writes its events to the outbox,
// commits and answers. With an Idempotency-Key (POST only), the response is
// stored in that same transaction, and a retry with the same key and the
// same request gets the stored response and writes nothing. A concurrent
// retry waits for the first to finish. Errors are not stored: nothing was
// written, so a retry simply runs again.
//
// The events, the stored response and COMMIT travel in one round trip, so
// the outbox shard is held only for it.
func (a *API) change(w http.ResponseWriter, r *http.Request, body []byte, fn func(context.Context, billing.Tx, billing.Meta) (response, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	m := meta(r)
	key := ""
	if r.Method == http.MethodPost {
		key = r.Header.Get("Idempotency-Key")
		if key != "" && (len(key) > 255 || !isPrintable(key)) {
			writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest,
				Detail: "Idempotency-Key must be 1 to 255 printable characters"})
			return
		}
	}
	tx, err := postgres.Begin(ctx, a.pool)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	defer tx.Rollback(ctx)
	if key != "" {
		fp := fingerprint(r, body)
		stored, err := claimKey(ctx, tx, key, fp, a.cfg.IdempotencyTTL)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if stored != nil {
			if string(stored.fingerprint) != string(fp) {
				writeProblem(w, r, Problem{Type: ProblemIdempotencyReuse, Status: http.StatusUnprocessableEntity,
					Detail: "this Idempotency-Key was used with a different request"})
				return
			}
			w.Header().Set("Idempotent-Replayed", "true")
			if stored.location != "" {
				w.Header().Set("Location", stored.location)
			}
			writeRaw(w, stored.status, stored.body)
			return
		}
	}
	res, err := fn(ctx, tx, m)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var out []byte
	if res.body != nil {
		if out, err = json.Marshal(res.body); err != nil {
			a.fail(w, r, fmt.Errorf("encoding response: %w", err))
			return
		}
	}
	var last pgx.Batch
	if key != "" {
		queueStoreKey(&last, key, res.status, res.location, out)
	}
	if err := outbox.Queue(&last, res.events...); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := tx.Commit(ctx, &last); err != nil {
		a.fail(w, r, fmt.Errorf("committing: %w", err))
		return
	}
	if len(res.events) > 0 {
		a.notifier.Notify()
	}
	if res.location != "" {
		w.Header().Set("Location", res.location)
	}
	writeRaw(w, res.status, out)
}

func isPrintable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return utf8.ValidString(s)
}

// fingerprint identifies a request for Idempotency-Key reuse checks.
func fingerprint(r *http.Request, body []byte) []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", r.Method, r.URL.Path)
	h.Write(body)
	return h.Sum(nil)
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	if body == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
	w.Write([]byte("\n"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeRaw(w, status, b)
}

// fail answers an error: the client's fault as its problem, a database
// outage as 503, anything else as 500 (logged with the request id).
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	err = billing.Explain(err)
	if p, ok := problemOf(err); ok {
		writeProblem(w, r, p)
		return
	}
	reqID := idsOf(r).request
	if unavailable(err) {
		a.log.Warn("database unavailable", "request_id", reqID, "route", r.Pattern, "err", err)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, Problem{Type: ProblemUnavailable, Status: http.StatusServiceUnavailable,
			Detail: "the database is unavailable; retry (with the same Idempotency-Key) shortly"})
		return
	}
	a.log.Error("request failed", "request_id", reqID, "route", r.Pattern, "err", err)
	writeProblem(w, r, Problem{Type: ProblemInternal, Status: http.StatusInternalServerError,
		Detail: "an internal error occurred; request id " + reqID})
}

// unavailable reports errors that mean the database could not be reached or
// gave up on the request (timeouts, shutdown, lost connections).
func unavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57") || pe.Code == "40001" || pe.Code == "40P01"
	}
	return errors.Is(err, context.DeadlineExceeded) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		errors.As(err, new(*pgconn.ConnectError))
}
