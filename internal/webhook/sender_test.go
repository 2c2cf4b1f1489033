package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/internal/webhook"
)

// receiver is an httptest server answering with answer, which sees the
// number of the request (from 1); it records each request.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []*http.Request
	bodies [][]byte
	answer func(n int, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	rc := &receiver{answer: answer}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, r)
		rc.bodies = append(rc.bodies, b)
		n := len(rc.got)
		rc.mu.Unlock()
		rc.answer(n, w, r)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) hits() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got)
}

func status(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

// fixture is a database, an allow-list for the test servers, and a sender
// with a short schedule and no jitter.
type fixture struct {
	t    *testing.T
	pool *pgxpool.Pool
	reg  *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	return &fixture{t: t, pool: pool, reg: prometheus.NewRegistry()}
}

// run starts a sender with opts after the test's defaults, until the test
// ends or the returned stop is called.
func (f *fixture) run(opts ...webhook.SenderOpt) (stop func()) {
	f.t.Helper()
	g, err := webhook.NewGuard(webhook.WithAllow("127.0.0.1"))
	if err != nil {
		f.t.Fatal(err)
	}
	s, err := webhook.NewSender(f.pool, append([]webhook.SenderOpt{
		webhook.WithGuard(g), webhook.WithSchedule(10*time.Millisecond, 10*time.Millisecond),
		webhook.WithJitter(func(d time.Duration) time.Duration { return d }),
		webhook.WithPollInterval(20 * time.Millisecond), webhook.WithTimeout(5 * time.Second),
		webhook.WithBreaker(100, time.Minute), webhook.WithRegisterer(f.reg),
		webhook.WithLogger(slog.New(slog.NewTextHandler(f.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))),
	}, opts...)...)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	f.t.Cleanup(stop)
	return stop
}

func (f *fixture) endpoint(url string, types ...string) webhook.Endpoint {
	f.t.Helper()
	if len(types) == 0 {
		types = []string{"*"}
	}
	e, err := webhook.CreateEndpoint(context.Background(), f.pool, webhook.NewEndpoint{URL: url, EventTypes: types})
	if err != nil {
		f.t.Fatal(err)
	}
	return e
}

// deliver writes a delivery of a new event to endpoint, as the notify
// group does, and returns its id.
func (f *fixture) deliver(endpoint string) int64 {
	f.t.Helper()
	var id int64
	err := f.pool.QueryRow(context.Background(), `INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload)
		VALUES ($1, $2, 'tally.customer.created.v1', '2025-03-01T09:00:00Z', '{"id":"c1"}') RETURNING id`,
		endpoint, envelope.NewID()).Scan(&id)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *fixture) delivery(id int64) webhook.DeliveryWithAttempts {
	f.t.Helper()
	d, err := webhook.GetDelivery(context.Background(), f.pool, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fixture) endpointNow(id string) webhook.Endpoint {
	f.t.Helper()
	e, err := webhook.GetEndpoint(context.Background(), f.pool, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return e
}

// eventually waits (at most a generous 20 s) for cond.
func (f *fixture) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) settled(id int64) bool { return f.delivery(id).Status != webhook.StatePending }

// counter returns the value of tally_webhook_deliveries_total{outcome}.
func (f *fixture) counter(outcome string) float64 {
	return f.sum("tally_webhook_deliveries_total", "outcome", outcome)
}

// sum adds up the series of the counter name whose label is value.
func (f *fixture) sum(name, label, value string) float64 {
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// verify checks request i of rc against the Standard Webhooks headers,
// signed by secrets, and returns its webhook-id.
func verify(t *testing.T, rc *receiver, i int, secrets ...string) string {
	t.Helper()
	rc.mu.Lock()
	r, b := rc.got[i], rc.bodies[i]
	rc.mu.Unlock()
	id, ts := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		t.Fatalf("webhook-timestamp %q", ts)
	}
	want, err := webhook.Sign(id, time.Unix(sec, 0), b, secrets...)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Header.Get("webhook-signature"); got != want {
		t.Errorf("request %d: webhook-signature %q, want %q", i, got, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("request %d: Content-Type %q", i, ct)
	}
	return id
}

func TestSenderDeliversSigned(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, status(http.StatusNoContent))
	e := f.endpoint(rc.URL + "/hooks")
	ids := []int64{f.deliver(e.ID), f.deliver(e.ID), f.deliver(e.ID)}
	f.run()
	for _, id := range ids {
		f.eventually("the deliveries", func() bool { return f.settled(id) })
		d := f.delivery(id)
		if d.Status != webhook.StateSucceeded || len(d.AttemptLog) != 1 || *d.AttemptLog[0].StatusCode != 204 || d.CompletedAt == nil {
			t.Errorf("delivery %d: %+v", id, d)
		}
		if d.WebhookID != webhook.MessageID(d.EventID, e.ID) {
			t.Errorf("delivery %d has webhook id %s", id, d.WebhookID)
		}
	}
	seen := map[string]bool{}
	for i := range 3 {
		seen[verify(t, rc, i, e.Secret)] = true
		var msg struct {
			Type      string          `json:"type"`
			Timestamp time.Time       `json:"timestamp"`
			Data      json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(rc.bodies[i], &msg); err != nil || msg.Type != "tally.customer.created.v1" ||
			string(msg.Data) != `{"id":"c1"}` || !msg.Timestamp.Equal(time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)) {
			t.Errorf("body %s (%v)", rc.bodies[i], err)
		}
	}
	if len(seen) != 3 {
		t.Errorf("three deliveries had webhook ids %v", seen)
	}
	if got := f.counter("succeeded"); got != 3 {
		t.Errorf("tally_webhook_deliveries_total{outcome=succeeded} is %v, want 3", got)
	}

	// A new secret signs beside the old one, which still signs for a day.
	fresh := webhook.NewSecret()
	rotated, err := webhook.UpdateEndpoint(context.Background(), f.pool, e.ID, webhook.EndpointPatch{Secret: &fresh}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rotated.PreviousSecretExpiresAt == nil || time.Until(*rotated.PreviousSecretExpiresAt) < 23*time.Hour {
		t.Errorf("after a rotation, the old secret expires at %v; want in 24 h", rotated.PreviousSecretExpiresAt)
	}
	id := f.deliver(e.ID)
	f.eventually("the delivery after the rotation", func() bool { return f.settled(id) })
	verify(t, rc, 3, fresh, e.Secret)
	if sigs := strings.Fields(rc.got[3].Header.Get("webhook-signature")); len(sigs) != 2 {
		t.Errorf("during a rotation, %d signatures; want 2", len(sigs))
	}
}

func TestSenderRetriesWithTheSameID(t *testing.T) {
	f := newFixture(t)
	flaky := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, strings.Repeat("é", 1000)) // 2000 bytes
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	dead := newReceiver(t, status(http.StatusInternalServerError))
	ef, ed := f.endpoint(flaky.URL), f.endpoint(dead.URL)
	idf, idd := f.deliver(ef.ID), f.deliver(ed.ID)
	f.run()
	f.eventually("both deliveries", func() bool { return f.settled(idf) && f.settled(idd) })

	d := f.delivery(idf)
	if d.Status != webhook.StateSucceeded || len(d.AttemptLog) != 2 {
		t.Fatalf("the flaky endpoint's delivery: %+v", d)
	}
	first := d.AttemptLog[0]
	if *first.StatusCode != 500 || len(first.Response) > 1024 || len(first.Response) < 1000 || first.Error == nil {
		t.Errorf("first attempt logged as status %v, %d bytes of response, error %v", *first.StatusCode, len(first.Response), first.Error)
	}
	if a, b := verify(t, flaky, 0, ef.Secret), verify(t, flaky, 1, ef.Secret); a != b || a != d.WebhookID {
		t.Errorf("webhook-id %q then %q; want %q both times", a, b, d.WebhookID)
	}

	// Three attempts (the first, then one per delay), then it fails.
	d = f.delivery(idd)
	if d.Status != webhook.StateFailed || len(d.AttemptLog) != 3 || dead.hits() != 3 || d.LastError == nil ||
		!strings.Contains(*d.LastError, "no attempt left") {
		t.Errorf("the dead endpoint's delivery after %d requests: %+v", dead.hits(), d)
	}
	if e := f.endpointNow(ed.ID); e.ConsecutiveFailures != 3 || e.FailingSince == nil || !e.Enabled {
		t.Errorf("the dead endpoint: %+v", e)
	}
	if e := f.endpointNow(ef.ID); e.ConsecutiveFailures != 0 || e.FailingSince != nil {
		t.Errorf("the flaky endpoint after its success: %+v", e)
	}
}

func TestSenderHonoursRetryAfter(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	e := f.endpoint(rc.URL)
	id := f.deliver(e.ID)
	f.run()
	f.eventually("the delivery", func() bool { return f.settled(id) })
	d := f.delivery(id)
	if d.Status != webhook.StateSucceeded || len(d.AttemptLog) != 2 || *d.AttemptLog[0].StatusCode != 429 {
		t.Fatalf("delivery %+v", d)
	}
	// The schedule's delay is 10 ms; Retry-After said a second.
	if gap := d.AttemptLog[1].AttemptedAt.Sub(d.AttemptLog[0].AttemptedAt); gap < 900*time.Millisecond {
		t.Errorf("retried %v after a 429 with Retry-After: 1", gap)
	}
	if ep := f.endpointNow(e.ID); ep.ThrottledUntil == nil || ep.ConsecutiveFailures != 0 {
		t.Errorf("after a 429 the endpoint is %+v; want throttled, and no failure counted", ep)
	}
	if f.counter("throttled") != 1 {
		t.Errorf("throttled attempts counted %v", f.counter("throttled"))
	}
}

func TestSenderGoneDisables(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, status(http.StatusGone))
	e := f.endpoint(rc.URL)
	first := f.deliver(e.ID)
	notices := f.notices()
	f.run(webhook.WithConcurrency(4, 1), webhook.WithOnDisable(notices.record))
	f.eventually("the delivery", func() bool { return f.settled(first) })
	ep := f.endpointNow(e.ID)
	if ep.Enabled || ep.DisabledReason == nil || !strings.Contains(*ep.DisabledReason, "410 Gone") || ep.DisabledAt == nil {
		t.Fatalf("after a 410 the endpoint is %+v", ep)
	}
	notices.check(ep, "gone")
	if d := f.delivery(first); d.Status != webhook.StateFailed || len(d.AttemptLog) != 1 {
		t.Errorf("the delivery answered 410: %+v", d)
	}
	// Nothing more goes to it, and redelivering is refused until enabled.
	later := f.deliver(e.ID)
	time.Sleep(200 * time.Millisecond)
	if d := f.delivery(later); d.Status != webhook.StatePending || len(d.AttemptLog) != 0 || rc.hits() != 1 {
		t.Errorf("a delivery to the disabled endpoint: %+v, %d requests", d, rc.hits())
	}
	if _, err := webhook.Redeliver(context.Background(), f.pool, first, time.Now()); err == nil {
		t.Error("redelivered to a disabled endpoint")
	}
}

func TestDeadEndpointDoesNotDelayOthers(t *testing.T) {
	f := newFixture(t)
	// The dead endpoint answers nothing until the request ends (the
	// sender's timeout, or its stop).
	dead := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	healthy := newReceiver(t, status(http.StatusOK))
	ed, eh := f.endpoint(dead.URL), f.endpoint(healthy.URL)
	var deadIDs, healthyIDs []int64
	for range 10 {
		deadIDs = append(deadIDs, f.deliver(ed.ID))
	}
	for range 10 {
		healthyIDs = append(healthyIDs, f.deliver(eh.ID))
	}
	stop := f.run(webhook.WithConcurrency(4, 2), webhook.WithTimeout(time.Minute))
	f.eventually("the healthy endpoint's deliveries", func() bool {
		for _, id := range healthyIDs {
			if f.delivery(id).Status != webhook.StateSucceeded {
				return false
			}
		}
		return true
	})
	// Meanwhile the dead endpoint holds its two slots, and no attempt to it
	// has ended yet.
	var attempts int
	f.pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
		WHERE d.endpoint_id = $1`, ed.ID).Scan(&attempts)
	if attempts != 0 || dead.hits() > 2 {
		t.Errorf("when the healthy deliveries were done, %d attempts to the dead endpoint had ended and %d had started; want 0 and at most 2",
			attempts, dead.hits())
	}
	// Stopping abandons the attempts in flight, which are released, not
	// counted as failures.
	stop()
	for _, id := range deadIDs {
		if d := f.delivery(id); d.Status != webhook.StatePending || d.Attempts != 0 {
			t.Errorf("after the stop, delivery %d to the dead endpoint: %+v", id, d)
		}
	}
}

func TestCircuitBreaker(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	failing := true
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	e := f.endpoint(rc.URL)
	var ids []int64
	for range 5 {
		ids = append(ids, f.deliver(e.ID))
	}
	cooldown := 500 * time.Millisecond
	f.run(webhook.WithConcurrency(4, 1), webhook.WithBreaker(2, cooldown), webhook.WithSchedule(time.Millisecond, time.Millisecond, time.Millisecond))
	f.eventually("the circuit to open", func() bool { return f.endpointNow(e.ID).CircuitOpenUntil != nil })
	opened := time.Now()
	time.Sleep(cooldown / 2)
	if n := rc.hits(); n != 2 && time.Since(opened) < cooldown {
		t.Errorf("%d requests while the circuit was open after 2 failures; want 2", n)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	f.eventually("every delivery", func() bool {
		for _, id := range ids {
			if f.delivery(id).Status != webhook.StateSucceeded {
				return false
			}
		}
		return true
	})
	if n := rc.hits(); n != 7 {
		t.Errorf("%d requests; want the 2 failures, the probe and the 4 others", n)
	}
	if ep := f.endpointNow(e.ID); ep.ConsecutiveFailures != 0 || ep.CircuitOpenUntil != nil {
		t.Errorf("after the probe succeeded, the endpoint is %+v", ep)
	}
}

func TestFailingForDaysDisables(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, status(http.StatusInternalServerError))
	e := f.endpoint(rc.URL)
	id := f.deliver(e.ID)
	// Days are milliseconds here.
	notices := f.notices()
	f.run(webhook.WithDisableAfter(100*time.Millisecond), webhook.WithSchedule(slices(40, 20*time.Millisecond)...),
		webhook.WithOnDisable(notices.record))
	f.eventually("the endpoint to be disabled", func() bool { return !f.endpointNow(e.ID).Enabled })
	ep := f.endpointNow(e.ID)
	if ep.DisabledReason == nil || !strings.Contains(*ep.DisabledReason, "every attempt failed for 100ms") ||
		!strings.Contains(*ep.DisabledReason, "500") {
		t.Errorf("disabled for %v", ep.DisabledReason)
	}
	notices.check(ep, "failing")
	if d := f.delivery(id); d.Status != webhook.StatePending || len(d.AttemptLog) < 3 {
		t.Errorf("the delivery: %+v", d)
	}
}

// disableNotices records what the sender's OnDisable hook is called with,
// writing a row in the hook's transaction as a notice would.
type disableNotices struct {
	f  *fixture
	mu sync.Mutex
	ds []webhook.Disabled
}

func (f *fixture) notices() *disableNotices {
	if _, err := f.pool.Exec(context.Background(), `CREATE TABLE disable_notices (endpoint_id text)`); err != nil {
		f.t.Fatal(err)
	}
	return &disableNotices{f: f}
}

func (n *disableNotices) record(ctx context.Context, tx pgx.Tx, d webhook.Disabled) error {
	if _, err := tx.Exec(ctx, `INSERT INTO disable_notices VALUES ($1)`, d.ID); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ds = append(n.ds, d)
	return nil
}

// check verifies that the hook was called once, for ep, for cause, and
// that its write committed with the disabling.
func (n *disableNotices) check(ep webhook.Endpoint, cause string) {
	n.f.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.ds) != 1 {
		n.f.t.Fatalf("the disable hook was called %d times, want once", len(n.ds))
	}
	d := n.ds[0]
	if d.ID != ep.ID || d.URL != ep.URL || d.Cause != cause || d.Reason != *ep.DisabledReason || !d.At.Equal(*ep.DisabledAt) {
		n.f.t.Errorf("the disable hook got %+v; the endpoint is %+v", d, ep)
	}
	var rows int
	if err := n.f.pool.QueryRow(context.Background(), `SELECT count(*) FROM disable_notices WHERE endpoint_id = $1`, ep.ID).Scan(&rows); err != nil || rows != 1 {
		n.f.t.Errorf("the hook's write: %d rows (%v), want 1", rows, err)
	}
	if got := n.f.sum("tally_webhook_endpoints_disabled_total", "cause", cause); got != 1 {
		n.f.t.Errorf("tally_webhook_endpoints_disabled_total{cause=%s} is %v, want 1", cause, got)
	}
}

func slices(n int, d time.Duration) []time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = d
	}
	return ds
}

func TestSenderRefusesForbiddenAtSendTime(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, status(http.StatusOK))
	// Registered when it was allowed, say; the sender's guard refuses it.
	e := f.endpoint(rc.URL)
	id := f.deliver(e.ID)
	strict, _ := webhook.NewGuard()
	f.run(webhook.WithGuard(strict))
	f.eventually("the delivery", func() bool { return f.settled(id) })
	d := f.delivery(id)
	if d.Status != webhook.StateFailed || rc.hits() != 0 || d.AttemptLog[0].StatusCode != nil ||
		!strings.Contains(*d.AttemptLog[0].Error, "forbidden") {
		t.Errorf("a delivery to a loopback address: %+v after %d requests", d, rc.hits())
	}
}

func TestRedeliver(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, status(http.StatusOK))
	e := f.endpoint(rc.URL)
	id := f.deliver(e.ID)
	f.run()
	f.eventually("the delivery", func() bool { return f.settled(id) })
	ctx := context.Background()
	d, err := webhook.Redeliver(ctx, f.pool, id, time.Now())
	if err != nil || d.Status != webhook.StatePending || d.Attempts != 0 {
		t.Fatalf("redelivered: %+v, %v", d, err)
	}
	f.eventually("the redelivery", func() bool { return f.settled(id) })
	if n := len(f.delivery(id).AttemptLog); n != 2 || rc.hits() != 2 {
		t.Errorf("after a redelivery, %d attempts logged, %d requests", n, rc.hits())
	}
	if verify(t, rc, 0, e.Secret) != verify(t, rc, 1, e.Secret) {
		t.Error("a redelivery changed the webhook-id")
	}
	n, err := webhook.RedeliverRange(ctx, f.pool, e.ID, time.Now().Add(-time.Hour), time.Now().Add(time.Minute), false, time.Now())
	if err != nil || n != 0 {
		t.Errorf("redelivering the failed deliveries of the last hour: %d, %v; want none", n, err)
	}
	n, err = webhook.RedeliverRange(ctx, f.pool, e.ID, time.Now().Add(-time.Hour), time.Now().Add(time.Minute), true, time.Now())
	if err != nil || n != 1 {
		t.Errorf("redelivering every delivery of the last hour: %d, %v; want 1", n, err)
	}
	if _, err := webhook.Redeliver(ctx, f.pool, 999999, time.Now()); err == nil {
		t.Error("redelivered an unknown delivery")
	}
}

func TestSenderTimeoutIsAFailedAttempt(t *testing.T) {
	f := newFixture(t)
	// The first request gets no answer until the sender gives up on it.
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	e := f.endpoint(rc.URL)
	id := f.deliver(e.ID)
	f.run(webhook.WithTimeout(300 * time.Millisecond))
	f.eventually("the delivery", func() bool { return f.settled(id) })
	d := f.delivery(id)
	if d.Status != webhook.StateSucceeded || len(d.AttemptLog) != 2 {
		t.Fatalf("the delivery: %+v", d)
	}
	first := d.AttemptLog[0]
	if first.StatusCode != nil || first.Error == nil || !strings.Contains(*first.Error, "Timeout") || first.DurationMS < 300 {
		t.Errorf("the attempt that timed out was logged as %+v (error %v)", first, deref(first.Error))
	}
	if f.counter("failed") != 1 || f.counter("succeeded") != 1 {
		t.Errorf("attempts counted: %v failed, %v succeeded; want 1 and 1", f.counter("failed"), f.counter("succeeded"))
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// BenchmarkSend measures signed deliveries to eight loopback endpoints
// answering 204: claim, sign, POST, record, at the default concurrency.
func BenchmarkSend(b *testing.B) {
	pool, _ := testenv.Pool(b)
	ctx := context.Background()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer srv.Close()
	for i := range 8 {
		if _, err := webhook.CreateEndpoint(ctx, pool, webhook.NewEndpoint{URL: srv.URL + "/" + strconv.Itoa(i), EventTypes: []string{"*"}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload)
		SELECT e.id, gen_random_uuid(), 'tally.customer.created.v1', now(), '{"id": "c1", "name": "Ada"}'
		FROM generate_series(1, $1) i, LATERAL (SELECT id FROM webhook_endpoints ORDER BY id OFFSET i % 8 LIMIT 1) e`, b.N); err != nil {
		b.Fatal(err)
	}
	g, err := webhook.NewGuard(webhook.WithAllow("127.0.0.1"))
	if err != nil {
		b.Fatal(err)
	}
	s, err := webhook.NewSender(pool, webhook.WithGuard(g), webhook.WithPollInterval(5*time.Millisecond),
		webhook.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(sctx) }()
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_deliveries WHERE status <> 'succeeded'`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}
