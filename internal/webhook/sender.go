package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/internal/dispatch"
)

// DefaultSchedule is the delays between the attempts of a delivery, the
// first attempt being immediate: the Standard Webhooks specification's
// example, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (75.5 h in
// all, before jitter: about three days, as Stripe retries). After the
// last, the delivery fails.
var DefaultSchedule = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	5 * time.Hour, 10 * time.Hour, 14 * time.Hour, 20 * time.Hour, 24 * time.Hour}

// Sender defaults.
const (
	DefaultTimeout         = 10 * time.Second
	DefaultConcurrency     = 32
	DefaultPerEndpoint     = 4
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = time.Minute
	DefaultDisableAfter    = 5 * 24 * time.Hour
	DefaultPollInterval    = time.Second
	// maxThrottle bounds how long a Retry-After holds an endpoint back.
	maxThrottle = 24 * time.Hour
	// maxResponse is how much of a response body the log keeps.
	maxResponse = 1024
)

// Sender sends the pending deliveries (the notify consumer group writes
// them) to their endpoints. Any number of senders may run, in any number
// of processes: each claims due deliveries with FOR UPDATE SKIP LOCKED on
// their endpoints and takes a lease on them (the timeout and a margin)
// before sending, outside any transaction; a sender that dies lets the
// lease lapse and another sends again (receivers dedupe on webhook-id).
//
// Every attempt is signed afresh (webhook-timestamp is the attempt's) with
// the endpoint's secret and, during a rotation, its previous one, POSTed
// with a timeout, and recorded in the attempt log. What the answer means:
//
//   - 2xx: delivered.
//   - 410 Gone: the delivery fails and the endpoint is disabled.
//   - 429, or 502, 503, 504 with Retry-After: the endpoint is throttled:
//     none of its deliveries is sent before Retry-After (seconds or an HTTP
//     date, at most 24 h), or the schedule's next delay without one. This
//     is not a failure of the endpoint.
//   - anything else (another status, a 3xx, since redirects are not
//     followed, a timeout, a refused address): a failure. The delivery is
//     retried after the schedule's next delay, jittered, and fails after
//     the last.
//
// Per endpoint, at most PerEndpoint attempts are in flight, so one slow or
// dead endpoint holds at most that many of the sender's slots and the
// others go on. Consecutive failures open the endpoint's circuit: none of
// its deliveries is tried during the cool-down, then one probe is; its
// success closes the circuit, its failure opens it again. An endpoint all
// of whose attempts failed for DisableAfter is disabled, the reason
// recorded.
type Sender struct {
	pool            *pgxpool.Pool
	client          *http.Client
	log             *slog.Logger
	timeout         time.Duration
	schedule        []time.Duration
	jitter          func(time.Duration) time.Duration
	now             func() time.Time
	concurrency     int
	perEndpoint     int
	breakerFailures int
	breakerCooldown time.Duration
	disableAfter    time.Duration
	poll            time.Duration
	guard           *Guard
	onDisable       func(context.Context, pgx.Tx, Disabled) error
	reg             prometheus.Registerer
	m               *metrics
}

// SenderOpt configures a Sender.
type SenderOpt func(*Sender)

// WithTimeout bounds each attempt (connection, request and response
// headers and body); default DefaultTimeout.
func WithTimeout(d time.Duration) SenderOpt { return func(s *Sender) { s.timeout = d } }

// WithSchedule sets the delays between attempts; default DefaultSchedule.
// A delivery is attempted at most len(delays)+1 times.
func WithSchedule(delays ...time.Duration) SenderOpt {
	return func(s *Sender) { s.schedule = delays }
}

// WithJitter sets how a delay of the schedule is jittered. The default
// draws it uniformly from [d/2, d] ("equal jitter"): spread enough that
// the retries of many deliveries failed at once do not arrive together,
// yet the schedule's total stays about three days, which full jitter
// ([0, d]) would not keep. Tests pass the identity.
func WithJitter(fn func(time.Duration) time.Duration) SenderOpt {
	return func(s *Sender) { s.jitter = fn }
}

// WithClock sets the clock that decides what is due and when to retry;
// default time.Now. Timeouts use the real clock.
func WithClock(now func() time.Time) SenderOpt { return func(s *Sender) { s.now = now } }

// WithConcurrency sets how many attempts are in flight at most, in all
// (default DefaultConcurrency) and per endpoint (default
// DefaultPerEndpoint), for this sender. Keep perEndpoint well below total.
func WithConcurrency(total, perEndpoint int) SenderOpt {
	return func(s *Sender) { s.concurrency, s.perEndpoint = total, perEndpoint }
}

// WithBreaker opens an endpoint's circuit after failures consecutive
// failed attempts, for cooldown; defaults DefaultBreakerFailures and
// DefaultBreakerCooldown.
func WithBreaker(failures int, cooldown time.Duration) SenderOpt {
	return func(s *Sender) { s.breakerFailures, s.breakerCooldown = failures, cooldown }
}

// WithDisableAfter disables an endpoint whose attempts all failed for d;
// default DefaultDisableAfter (Svix's five days).
func WithDisableAfter(d time.Duration) SenderOpt { return func(s *Sender) { s.disableAfter = d } }

// WithPollInterval sets how often an idle sender looks for due
// deliveries; default DefaultPollInterval.
func WithPollInterval(d time.Duration) SenderOpt { return func(s *Sender) { s.poll = d } }

// WithGuard connects through g; the default guard allows no internal
// address.
func WithGuard(g *Guard) SenderOpt { return func(s *Sender) { s.guard = g } }

// Disabled is an endpoint the sender disabled.
type Disabled struct {
	ID  string
	URL string
	// Cause is "gone" (a 410) or "failing" (every attempt failed for
	// DisableAfter); Reason says it in words, as the endpoint records it.
	Cause  string
	Reason string
	At     time.Time
}

// WithOnDisable calls fn in the transaction that disables an endpoint
// (after a 410 Gone, or after failing for DisableAfter), so that a notice
// of it is written with it, or not at all; fn's error rolls the attempt's
// record back, to be tried again. Default: none, beyond the log, the
// endpoint's disabled_reason and tally_webhook_endpoints_disabled_total.
func WithOnDisable(fn func(ctx context.Context, tx pgx.Tx, d Disabled) error) SenderOpt {
	return func(s *Sender) { s.onDisable = fn }
}

// WithLogger logs to l; default slog.Default().
func WithLogger(l *slog.Logger) SenderOpt { return func(s *Sender) { s.log = l } }

// WithRegisterer registers the sender's metrics (tally_webhook_*) with r.
func WithRegisterer(r prometheus.Registerer) SenderOpt { return func(s *Sender) { s.reg = r } }

// NewSender returns a sender of pool's deliveries.
func NewSender(pool *pgxpool.Pool, opts ...SenderOpt) (*Sender, error) {
	s := &Sender{pool: pool, log: slog.Default(), timeout: DefaultTimeout, schedule: DefaultSchedule,
		jitter: equalJitter, now: time.Now, concurrency: DefaultConcurrency, perEndpoint: DefaultPerEndpoint,
		breakerFailures: DefaultBreakerFailures, breakerCooldown: DefaultBreakerCooldown,
		disableAfter: DefaultDisableAfter, poll: DefaultPollInterval}
	for _, o := range opts {
		o(s)
	}
	if s.concurrency < 1 || s.perEndpoint < 1 || s.breakerFailures < 1 || s.timeout <= 0 || s.poll <= 0 {
		return nil, errors.New("webhook sender: concurrency, breaker failures, timeout and poll interval must be positive")
	}
	if s.guard == nil {
		g, err := NewGuard()
		if err != nil {
			return nil, err
		}
		s.guard = g
	}
	s.client = s.guard.Client(s.timeout)
	m, err := newMetrics(s.reg)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

func equalJitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// claimed is a delivery claimed for an attempt, with what sending it takes.
type claimed struct {
	id         int64
	endpoint   string
	eventID    uuid.UUID
	eventType  string
	eventTime  time.Time
	payload    []byte
	attempts   int // with this one
	url        string
	secrets    []string
	rotatedOut *time.Time
}

// claimSQL leases at most $2 due deliveries at $1 until $3: of the
// enabled endpoints whose circuit is not open and which are not
// throttled, each locked (SKIP LOCKED: another sender has it) so that
// their attempts in flight are counted right, at most $4 in flight each,
// or 1 for an endpoint whose circuit is half-open ($5 failures or more),
// the earliest due first.
const claimSQL = `
WITH ep AS (
	SELECT e.id, CASE WHEN e.consecutive_failures >= $5 THEN 1 ELSE $4 END AS cap
	FROM webhook_endpoints e
	WHERE e.enabled AND coalesce(e.circuit_open_until, '-infinity') <= $1
		AND coalesce(e.throttled_until, '-infinity') <= $1
		AND EXISTS (SELECT 1 FROM webhook_deliveries d
			WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= $1)
	FOR UPDATE SKIP LOCKED
), room AS (
	SELECT ep.id, ep.cap - (SELECT count(*) FROM webhook_deliveries f
		WHERE f.endpoint_id = ep.id AND f.status = 'pending' AND f.leased_until > $1) AS n
	FROM ep
), picked AS (
	SELECT d.id FROM room CROSS JOIN LATERAL (
		SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
		WHERE d.endpoint_id = room.id AND d.status = 'pending' AND d.next_attempt_at <= $1
		ORDER BY d.next_attempt_at, d.id
		LIMIT greatest(room.n, 0)
		FOR UPDATE SKIP LOCKED
	) d
	ORDER BY d.next_attempt_at, d.id
	LIMIT $2
)
UPDATE webhook_deliveries d SET leased_until = $3, next_attempt_at = $3, attempts = d.attempts + 1
FROM picked, webhook_endpoints e
WHERE d.id = picked.id AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.event_time, d.payload::text, d.attempts, e.url, e.secret,
	CASE WHEN e.previous_secret_expires_at > $1 THEN e.previous_secret END, e.previous_secret_expires_at`

// claim leases at most n due deliveries.
func (s *Sender) claim(ctx context.Context, n int) ([]claimed, error) {
	now := s.now()
	rows, err := s.pool.Query(ctx, claimSQL, now, n, now.Add(s.timeout+30*time.Second), s.perEndpoint, s.breakerFailures)
	if err != nil {
		return nil, fmt.Errorf("claiming webhook deliveries: %w", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		var secret string
		var previous *string
		err := r.Scan(&c.id, &c.endpoint, &c.eventID, &c.eventType, &c.eventTime, &c.payload, &c.attempts,
			&c.url, &secret, &previous, &c.rotatedOut)
		c.secrets = []string{secret}
		if previous != nil {
			c.secrets = append(c.secrets, *previous)
		}
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming webhook deliveries: %w", err)
	}
	return cs, nil
}

// Run sends deliveries until ctx ends; attempts in flight then are
// abandoned, their deliveries released to be tried again. It returns nil
// when ctx ends.
func (s *Sender) Run(ctx context.Context) error {
	return dispatch.Loop[claimed]{Concurrency: s.concurrency, Poll: s.poll, Claim: s.claim, Work: s.attempt, Every: s.gauge,
		OnError: func(err error) { s.log.Warn("webhooks: claiming deliveries", "err", err) }}.Run(ctx)
}

// outcome is what an attempt's answer means (see Sender).
type outcome string

const (
	outcomeSucceeded outcome = "succeeded"
	outcomeFailed    outcome = "failed"
	outcomeThrottled outcome = "throttled"
	outcomeGone      outcome = "gone"
)

// result is what an attempt gave.
type result struct {
	at       time.Time
	status   int // 0 without an answer
	duration time.Duration
	response string
	err      string
	wait     time.Duration // a throttle's Retry-After, 0 without one
}

func (r result) outcome() outcome {
	switch {
	case r.status >= 200 && r.status < 300:
		return outcomeSucceeded
	case r.status == http.StatusGone:
		return outcomeGone
	case r.status == http.StatusTooManyRequests,
		r.wait > 0 && (r.status == http.StatusBadGateway || r.status == http.StatusServiceUnavailable || r.status == http.StatusGatewayTimeout):
		return outcomeThrottled
	}
	return outcomeFailed
}

// attempt sends c once and records what happened.
func (s *Sender) attempt(ctx context.Context, c claimed) {
	r := s.send(ctx, c)
	if r.status == 0 && ctx.Err() != nil {
		// Stopping cut the attempt short, unanswered: release the delivery
		// for the next sender, as if it had not been claimed. (An answer
		// is recorded, stopping or not.)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.pool.Exec(rctx, `UPDATE webhook_deliveries SET leased_until = NULL, next_attempt_at = $2,
			attempts = attempts - 1 WHERE id = $1 AND status = 'pending'`, c.id, s.now()); err != nil {
			s.log.Warn("webhooks: releasing a delivery", "delivery", c.id, "err", err)
		}
		return
	}
	o := r.outcome()
	s.m.deliveries.WithLabelValues(c.endpoint, string(o)).Inc()
	s.m.latency.Observe(r.duration.Seconds())
	if err := s.record(ctx, c, r, o); err != nil {
		// The lease lapses and the delivery is tried again.
		s.log.Warn("webhooks: recording an attempt", "delivery", c.id, "endpoint", c.endpoint, "err", err)
	}
}

// send makes the attempt's request.
func (s *Sender) send(ctx context.Context, c claimed) result {
	r := result{at: s.now()}
	b, err := body(c.eventType, c.eventTime, c.payload)
	if err != nil {
		r.err = fmt.Sprintf("building the body: %v", err)
		return r
	}
	id := MessageID(c.eventID, c.endpoint)
	sig, err := Sign(id, r.at, b, c.secrets...)
	if err != nil {
		r.err = err.Error()
		return r
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(b))
	if err != nil {
		r.err = fmt.Sprintf("building the request: %v", err)
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Tally-Webhooks/1")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(r.at.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		r.duration = time.Since(start)
		r.err = err.Error()
		return r
	}
	defer resp.Body.Close()
	head, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	r.duration = time.Since(start)
	r.status = resp.StatusCode
	r.response = truncate(string(head))
	if err != nil {
		r.err = fmt.Sprintf("reading the response: %v", err)
	}
	r.wait = retryAfter(resp.Header.Get("Retry-After"), r.at)
	return r
}

// truncate makes s valid UTF-8 of at most maxResponse bytes: cut at a
// character's start, and with each run of invalid bytes (a binary body)
// replaced by one "?", which never lengthens it.
func truncate(s string) string {
	if len(s) > maxResponse {
		i := maxResponse
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return strings.ToValidUTF8(s, "?")
}

// retryAfter reads a Retry-After header at now: seconds, or an HTTP date;
// 0 if absent or unreadable, at most maxThrottle.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		d = time.Duration(min(n, int64(maxThrottle/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return max(0, min(d, maxThrottle))
}

// record writes the attempt, and what it means for the delivery and the
// endpoint, in one transaction.
func (s *Sender) record(ctx context.Context, c claimed, r result, o outcome) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var status *int
	if r.status != 0 {
		status = &r.status
	}
	var errText *string
	if r.err != "" {
		errText = &r.err
	} else if o != outcomeSucceeded {
		e := fmt.Sprintf("answered %d %s", r.status, http.StatusText(r.status))
		errText = &e
	}
	now := s.now()
	var disabled *Disabled
	disable := func(cause string) func(pgx.Row) error {
		return func(row pgx.Row) error {
			d := Disabled{Cause: cause}
			switch err := row.Scan(&d.ID, &d.URL, &d.Reason, &d.At); {
			case errors.Is(err, pgx.ErrNoRows):
				return nil // enabled still, or disabled already
			case err != nil:
				return err
			}
			disabled = &d
			return nil
		}
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, duration_ms, response, error)
		SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)`,
		c.id, r.at, status, r.duration.Milliseconds(), r.response, errText)
	const done = `UPDATE webhook_deliveries SET status = $2, leased_until = NULL, completed_at = $3, last_error = $4 WHERE id = $1`
	const again = `UPDATE webhook_deliveries SET leased_until = NULL, next_attempt_at = $2, last_error = $3 WHERE id = $1`
	switch o {
	case outcomeSucceeded:
		b.Queue(done, c.id, StateSucceeded, now, nil)
		b.Queue(`UPDATE webhook_endpoints SET consecutive_failures = 0, failing_since = NULL, circuit_open_until = NULL
			WHERE id = $1 AND (consecutive_failures > 0 OR failing_since IS NOT NULL)`, c.endpoint)
	case outcomeGone:
		b.Queue(done, c.id, StateFailed, now, "the endpoint answered 410 Gone and was disabled")
		b.Queue(`UPDATE webhook_endpoints SET enabled = false, disabled_at = $2, updated_at = $2,
			disabled_reason = 'the endpoint answered 410 Gone to delivery ' || $3::bigint
			WHERE id = $1 AND enabled
			RETURNING id, url, disabled_reason, disabled_at`, c.endpoint, now, c.id).QueryRow(disable("gone"))
	case outcomeThrottled:
		wait := r.wait
		if wait == 0 {
			wait = s.delay(c.attempts)
		}
		if c.attempts > len(s.schedule) {
			b.Queue(done, c.id, StateFailed, now, *errText+"; no attempt left")
		} else {
			b.Queue(again, c.id, now.Add(wait), *errText)
		}
		b.Queue(`UPDATE webhook_endpoints SET throttled_until = greatest(coalesce(throttled_until, $2), $2) WHERE id = $1`,
			c.endpoint, now.Add(wait))
	case outcomeFailed:
		if c.attempts > len(s.schedule) {
			b.Queue(done, c.id, StateFailed, now, *errText+"; no attempt left")
		} else {
			b.Queue(again, c.id, now.Add(s.delay(c.attempts)), *errText)
		}
		b.Queue(`UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,
				failing_since = coalesce(failing_since, $2),
				circuit_open_until = CASE WHEN consecutive_failures + 1 >= $3 THEN $4 ELSE circuit_open_until END
			WHERE id = $1`, c.endpoint, now, s.breakerFailures, now.Add(s.breakerCooldown))
		b.Queue(`UPDATE webhook_endpoints SET enabled = false, disabled_at = $2, updated_at = $2,
				disabled_reason = 'every attempt failed for ' || $3::text || ' since ' || failing_since || '; last: ' || $4::text
			WHERE id = $1 AND enabled AND failing_since <= $5
			RETURNING id, url, disabled_reason, disabled_at`,
			c.endpoint, now, s.disableAfter.String(), *errText, now.Add(-s.disableAfter)).QueryRow(disable("failing"))
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		if disabled == nil || s.onDisable == nil {
			return nil
		}
		return s.onDisable(ctx, tx, *disabled)
	})
	if err == nil && disabled != nil {
		s.m.disabledTotal.WithLabelValues(disabled.Cause).Inc()
		s.log.Warn("webhooks: an endpoint was disabled", "endpoint", disabled.ID, "url", disabled.URL, "reason", disabled.Reason)
	}
	return err
}

// delay returns the jittered delay after the attempt-th attempt.
func (s *Sender) delay(attempt int) time.Duration {
	i := min(attempt, len(s.schedule)) - 1
	if i < 0 {
		return 0
	}
	return s.jitter(s.schedule[i])
}

// gauge refreshes the gauges of open circuits and disabled endpoints.
func (s *Sender) gauge(ctx context.Context) {
	var open, disabled int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE enabled AND circuit_open_until > $1),
		count(*) FILTER (WHERE NOT enabled) FROM webhook_endpoints`, s.now()).Scan(&open, &disabled)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("webhooks: counting endpoints", "err", err)
		}
		return
	}
	s.m.openCircuits.Set(float64(open))
	s.m.disabled.Set(float64(disabled))
}
