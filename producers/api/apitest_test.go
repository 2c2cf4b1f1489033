package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/api"
)

// server is the API served over real HTTP and wired as `tally api` wires it
// (internal/cli/run.go): the operational routes and the API on one mux,
// behind api.Handler and the HTTP metrics middleware. No Kafka: events stay
// in the outbox table.
type server struct {
	url    string
	client *http.Client
	pool   *pgxpool.Pool
	mux    *http.ServeMux
	health *observe.Health
}

// newServer serves the API on a fresh, migrated database of its own.
func newServer(t *testing.T, cfg api.Config) *server {
	t.Helper()
	pool, _ := testenv.Pool(t)
	return serve(t, pool, cfg)
}

// defaultConfig is the production configuration (with a shorter TTL).
var defaultConfig = api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Hour}

// serve serves the API on pool until t ends.
func serve(t *testing.T, pool *pgxpool.Pool, cfg api.Config) *server {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	notifier := outbox.NewNotifier(pool, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); notifier.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	a := api.New(pool, notifier, log, cfg)
	reg := observe.NewRegistry()
	health := &observe.Health{}
	health.Check("postgres", pool.Ping)
	mux := http.NewServeMux()
	health.Register(mux, reg)
	a.Register(mux)
	srv := httptest.NewServer(observe.NewHTTPMetrics(reg).Wrap(observe.NewTracer(), mux, api.Handler(mux)))
	t.Cleanup(srv.Close)
	return &server{url: srv.URL, client: srv.Client(), pool: pool, mux: mux, health: health}
}

// result is an answer of the server, already checked against the document.
type result struct {
	status int
	header http.Header
	body   []byte
}

// decode unmarshals the body into v.
func (r result) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s into %T: %v", clip(r.body), v, err)
	}
}

// problem returns the body as a problem detail.
func (r result) problem(t *testing.T) api.Problem {
	t.Helper()
	var p api.Problem
	r.decode(t, &p)
	return p
}

// call sends method path, with body (nil: none; a string or []byte: as is,
// a form: as multipart/form-data, anything else as JSON) and the header
// name, value pairs of hdr, and checks
// the answer against what the document says of route (check). A body the
// server accepted (2xx) must also be valid against the documented request
// body, and so must the query parameters.
func (s *server) call(t *testing.T, method, route, path string, body any, hdr ...string) result {
	t.Helper()
	var raw []byte
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
	case form:
		raw, contentType = b.encode(t)
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	var rd io.Reader = http.NoBody
	if raw != nil {
		rd = bytes.NewReader(raw)
	}
	ctx := context.Background()
	if strings.HasSuffix(route, "/stream") {
		// A stream stays open: what it sends in its first second is the
		// answer checked.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if raw != nil {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	out := check(t, resp, method, route)
	if resp.StatusCode/100 == 2 {
		for _, p := range theSpec(t).verifyRequest(method, route, req.URL.Query(), req.Header.Get("Content-Type"), raw) {
			t.Errorf("%s %s was accepted (%d) but the document says the request is invalid: %s\nrequest: %s",
				method, path, resp.StatusCode, p, clip(raw))
		}
	}
	return result{resp.StatusCode, resp.Header, out}
}

// check validates resp, the answer to method on the document's path route,
// against the document: the status must be documented for that operation
// (or, for a path or method the document does not have, be its 404 or 405),
// the Content-Type must be a documented media type of that response and the
// body valid against its schema (or both absent when no body is documented),
// required headers must be present, documented headers valid, and the API's
// own headers (Location, Retry-After, ...) documented when present. It
// returns the body. Every request of these tests goes through it.
func check(t *testing.T, resp *http.Response, method, route string) []byte {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil && !(resp.Header.Get("Content-Type") == "text/event-stream" && errors.Is(err, context.DeadlineExceeded)) {
		t.Errorf("%s %s: reading the body: %v", method, route, err)
	}
	sp := theSpec(t)
	where := fmt.Sprintf("%s %s (%s) answered %d", method, route, resp.Request.URL.RequestURI(), resp.StatusCode)
	if !routeMatches(route, resp.Request.URL.Path) {
		t.Errorf("%s: the request path does not match route %s (a mistake in the test)", where, route)
	}
	for _, p := range sp.verify(method, route, resp.StatusCode, resp.Header, body) {
		t.Errorf("%s, which the document does not describe: %s\nbody: %s", where, p, clip(body))
	}
	sp.record(t, method, route, resp.StatusCode)
	return body
}

// routeMatches reports whether path is an instance of the route template.
func routeMatches(route, path string) bool {
	rs, ps := strings.Split(route, "/"), strings.Split(path, "/")
	if len(rs) != len(ps) {
		return false
	}
	for i := range rs {
		if rs[i] != ps[i] && !(strings.HasPrefix(rs[i], "{") && ps[i] != "") {
			return false
		}
	}
	return true
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// specURL names the document as a JSON Schema resource, so that its
// schemas, with their $refs into #/components/schemas, compile as they are.
const specURL = "https://tally.invalid/openapi.json"

// spec is the OpenAPI document with its schemas compiled on demand.
type spec struct {
	raw []byte
	doc map[string]any

	mu       sync.Mutex
	c        *jsonschema.Compiler
	compiled map[string]*jsonschema.Schema
	seen     map[string]map[string]bool // top-level test → "METHOD route status"
}

var loadSpec = sync.OnceValues(func() (*spec, error) {
	raw, err := os.ReadFile("openapi.json")
	if err != nil {
		return nil, err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("openapi.json is not JSON: %w", err)
	}
	doc, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("openapi.json is not a JSON object")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.RegisterFormat(&jsonschema.Format{Name: "int64", Validate: intFormat(64)})
	c.RegisterFormat(&jsonschema.Format{Name: "int32", Validate: intFormat(32)})
	if err := c.AddResource(specURL, doc); err != nil {
		return nil, err
	}
	return &spec{raw: raw, doc: doc, c: c, compiled: map[string]*jsonschema.Schema{},
		seen: map[string]map[string]bool{}}, nil
})

// intFormat asserts OpenAPI's int32 and int64 formats: an integer that fits.
func intFormat(bits int) func(any) error {
	return func(v any) error {
		n, ok := v.(json.Number)
		if !ok {
			return nil
		}
		if _, err := strconv.ParseInt(n.String(), 10, bits); err != nil {
			return fmt.Errorf("%s is not an int%d", n, bits)
		}
		return nil
	}
}

func theSpec(t testing.TB) *spec {
	t.Helper()
	sp, err := loadSpec()
	if err != nil {
		t.Fatalf("loading the OpenAPI document: %v", err)
	}
	return sp
}

// pointer builds a JSON pointer (RFC 6901) from unescaped tokens.
func pointer(tokens ...string) string {
	var b strings.Builder
	for _, tok := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(tok))
	}
	return b.String()
}

// lookup returns the value at ptr, a JSON pointer with or without a
// leading #.
func (sp *spec) lookup(ptr string) (any, error) {
	ptr = strings.TrimPrefix(ptr, "#")
	if ptr == "" {
		return sp.doc, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, fmt.Errorf("%q is not a JSON pointer", ptr)
	}
	var v any = sp.doc
	for _, tok := range strings.Split(ptr[1:], "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[tok]; !ok {
				return nil, fmt.Errorf("%s: no %q", ptr, tok)
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("%s: no index %q", ptr, tok)
			}
			v = x[i]
		default:
			return nil, fmt.Errorf("%s: %q is inside a scalar", ptr, tok)
		}
	}
	return v, nil
}

// deref returns the object at ptr, following Reference Objects, and the
// pointer of where it really is.
func (sp *spec) deref(ptr string) (map[string]any, string, error) {
	for range 10 {
		v, err := sp.lookup(ptr)
		if err != nil {
			return nil, "", err
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, "", fmt.Errorf("%s is not an object", ptr)
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return m, ptr, nil
		}
		if !strings.HasPrefix(ref, "#/") {
			return nil, "", fmt.Errorf("%s: $ref %q is not local", ptr, ref)
		}
		ptr = ref[1:]
	}
	return nil, "", fmt.Errorf("%s: $ref loop", ptr)
}

// schema compiles the schema at ptr within the document.
func (sp *spec) schema(ptr string) (*jsonschema.Schema, error) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if s, ok := sp.compiled[ptr]; ok {
		return s, nil
	}
	toks := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, tok := range toks {
		toks[i] = url.PathEscape(tok)
	}
	s, err := sp.c.Compile(specURL + "#/" + strings.Join(toks, "/"))
	if err != nil {
		return nil, fmt.Errorf("compiling the schema at %s: %w", ptr, err)
	}
	sp.compiled[ptr] = s
	return s, nil
}

// validate validates v against the schema at ptr.
func (sp *spec) validate(ptr string, v any) error {
	s, err := sp.schema(ptr)
	if err != nil {
		return err
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("against %s: %v", ptr, err)
	}
	return nil
}

// operation returns the pointer of the operation of method on route, or ""
// when the document has none.
func (sp *spec) operation(method, route string) string {
	m := strings.ToLower(method)
	if m == "head" {
		m = "get"
	}
	p := pointer("paths", route, m)
	if _, err := sp.lookup(p); err != nil {
		return ""
	}
	return p
}

// response returns the pointer of the response the document gives for
// status to method on route: the operation's own, or its default, or for a
// path the document lacks the global 404 and for a method it lacks the
// global 405.
func (sp *spec) response(method, route string, status int) (string, error) {
	if _, err := sp.lookup(pointer("paths", route)); err != nil {
		if status == http.StatusNotFound {
			return "/components/responses/NoSuchRoute", nil
		}
		return "", fmt.Errorf("%s is not a path of the document, and the answer is not its 404", route)
	}
	op := sp.operation(method, route)
	if op == "" {
		if status == http.StatusMethodNotAllowed {
			return "/components/responses/MethodNotAllowed", nil
		}
		return "", fmt.Errorf("the document has no %s on %s, and the answer is not its 405", method, route)
	}
	for _, code := range []string{strconv.Itoa(status), "default"} {
		p := op + pointer("responses", code)
		if _, err := sp.lookup(p); err == nil {
			return p, nil
		}
	}
	v, _ := sp.lookup(op + "/responses")
	var codes []string
	for c := range v.(map[string]any) {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	return "", fmt.Errorf("status %d is not documented (documented: %s)", status, strings.Join(codes, ", "))
}

// apiHeaders are the response headers the API sets itself; when one is
// present, the response must document it.
var apiHeaders = []string{"Location", "Retry-After", "Allow", "Idempotent-Replayed", "X-Request-ID", "X-Correlation-ID"}

// verify lists how an answer differs from the document.
func (sp *spec) verify(method, route string, status int, header http.Header, body []byte) []string {
	rp, err := sp.response(method, route, status)
	if err != nil {
		return []string{err.Error()}
	}
	r, rp, err := sp.deref(rp)
	if err != nil {
		return []string{err.Error()}
	}
	var probs []string
	content, _ := r["content"].(map[string]any)
	var types []string
	for mt := range content {
		types = append(types, mt)
	}
	slices.Sort(types)
	ct := header.Get("Content-Type")
	switch {
	case len(body) == 0 && len(content) > 0 && method != http.MethodHead:
		probs = append(probs, fmt.Sprintf("the document describes a body (%s) but there is none", strings.Join(types, ", ")))
	case len(body) > 0 && len(content) == 0:
		probs = append(probs, fmt.Sprintf("the document describes no body, but there are %d bytes (Content-Type %q)", len(body), ct))
	case len(body) > 0:
		mt, _, err := mime.ParseMediaType(ct)
		if _, ok := content[mt]; err != nil || !ok {
			probs = append(probs, fmt.Sprintf("Content-Type %q is not a documented media type (%s)", ct, strings.Join(types, ", ")))
			break
		}
		var v any = string(body)
		if mt == "application/json" || strings.HasSuffix(mt, "+json") {
			if v, err = jsonschema.UnmarshalJSON(bytes.NewReader(body)); err != nil {
				probs = append(probs, fmt.Sprintf("the %s body is not JSON: %v", mt, err))
				break
			}
		}
		if err := sp.validate(rp+pointer("content", mt, "schema"), v); err != nil {
			probs = append(probs, "the body is invalid "+err.Error())
		}
	}
	hs, _ := r["headers"].(map[string]any)
	documented := map[string]bool{}
	for name := range hs {
		documented[http.CanonicalHeaderKey(name)] = true
		h, hp, err := sp.deref(rp + pointer("headers", name))
		if err != nil {
			probs = append(probs, err.Error())
			continue
		}
		value := header.Get(name)
		if value == "" {
			if h["required"] == true {
				probs = append(probs, "the required header "+name+" is absent")
			}
			continue
		}
		var v any = value
		if s, _ := h["schema"].(map[string]any); s["type"] == "integer" {
			if _, err := strconv.ParseInt(value, 10, 64); err != nil {
				probs = append(probs, fmt.Sprintf("header %s: %q is not an integer", name, value))
				continue
			}
			v = json.Number(value)
		}
		if err := sp.validate(hp+"/schema", v); err != nil {
			probs = append(probs, fmt.Sprintf("header %s: %q is invalid %v", name, value, err))
		}
	}
	for _, name := range apiHeaders {
		if header.Get(name) != "" && !documented[http.CanonicalHeaderKey(name)] {
			probs = append(probs, fmt.Sprintf("header %s: %q is not documented for this response", name, header.Get(name)))
		}
	}
	return probs
}

// parameters returns the pointers of the parameters of the operation at op,
// those of its path item included.
func (sp *spec) parameters(op string) []string {
	var ps []string
	for _, at := range []string{op[:strings.LastIndex(op, "/")], op} {
		v, err := sp.lookup(at + "/parameters")
		if err != nil {
			continue
		}
		for i := range v.([]any) {
			ps = append(ps, at+pointer("parameters", strconv.Itoa(i)))
		}
	}
	return ps
}

// verifyRequest lists how a request the server accepted differs from what
// the document says is valid: its query parameters and its body, JSON or
// multipart/form-data (whose parts are checked as an object of strings).
func (sp *spec) verifyRequest(method, route string, query url.Values, contentType string, body []byte) []string {
	op := sp.operation(method, route)
	if op == "" {
		return nil // not an operation: the answer was already reported
	}
	var probs []string
	params := map[string]string{}
	for _, p := range sp.parameters(op) {
		m, mp, err := sp.deref(p)
		if err != nil {
			probs = append(probs, err.Error())
			continue
		}
		if m["in"] == "query" {
			params[m["name"].(string)] = mp
		}
	}
	for name, values := range query {
		mp, ok := params[name]
		if !ok {
			probs = append(probs, "query parameter "+name+" is not documented")
			continue
		}
		m, _, _ := sp.deref(mp)
		s, _ := m["schema"].(map[string]any)
		if s["type"] != "array" && len(values) > 1 {
			probs = append(probs, fmt.Sprintf("query parameter %s is given %d times; the document takes one value", name, len(values)))
		}
		var v any = values[0]
		switch s["type"] {
		case "integer":
			v = json.Number(values[0])
		case "array": // a parameter that may repeat: all its values
			var vs []any
			for _, x := range values {
				vs = append(vs, x)
			}
			v = vs
		}
		if err := sp.validate(mp+"/schema", v); err != nil {
			probs = append(probs, fmt.Sprintf("query parameter %s=%s is invalid %v", name, values[0], err))
		}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return probs
	}
	_, rp, err := sp.deref(op + "/requestBody")
	if err != nil {
		return append(probs, "the document describes no request body")
	}
	mt, params, _ := mime.ParseMediaType(contentType)
	if _, err := sp.lookup(rp + pointer("content", mt)); err != nil {
		return append(probs, fmt.Sprintf("the request body's media type %q is not documented", mt))
	}
	var v any
	if mt == "multipart/form-data" {
		form := map[string]any{}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return append(probs, "the request body is not multipart/form-data: "+err.Error())
			}
			b, _ := io.ReadAll(part)
			form[part.FormName()] = string(b)
		}
		v = form
	} else if v, err = jsonschema.UnmarshalJSON(bytes.NewReader(body)); err != nil {
		return append(probs, "the request body is not JSON")
	}
	if err := sp.validate(rp+pointer("content", mt, "schema"), v); err != nil {
		probs = append(probs, "the request body is invalid "+err.Error())
	}
	return probs
}

// record notes that method on route answered status in the top-level test
// t belongs to.
func (sp *spec) record(t *testing.T, method, route string, status int) {
	top, _, _ := strings.Cut(t.Name(), "/")
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.seen[top] == nil {
		sp.seen[top] = map[string]bool{}
	}
	sp.seen[top][fmt.Sprintf("%s %s %d", method, route, status)] = true
}

// unseen lists the documented responses of operations that no check in
// the top-level test t observed.
func (sp *spec) unseen(t *testing.T) []string {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	seen := sp.seen[t.Name()]
	var missing []string
	for route, item := range sp.doc["paths"].(map[string]any) {
		for m, op := range item.(map[string]any) {
			if m == "parameters" {
				continue
			}
			for code := range op.(map[string]any)["responses"].(map[string]any) {
				key := fmt.Sprintf("%s %s %s", strings.ToUpper(m), route, code)
				if !seen[key] {
					missing = append(missing, key)
				}
			}
		}
	}
	slices.Sort(missing)
	return missing
}
