package revenue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/relay"
)

// pipeline is the whole path of an invoice change: the API, the outbox,
// the relay, Kafka (kfake over TCP) and the revenue group.
type pipeline struct {
	url   string
	pool  *pgxpool.Pool
	seeds []string
}

func startPipeline(t *testing.T) *pipeline {
	t.Helper()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	var stops []chan struct{}
	run := func(f func(context.Context)) {
		done := make(chan struct{})
		stops = append(stops, done)
		go func() { defer close(done); f(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for _, d := range stops {
			<-d
		}
	})
	notifier := outbox.NewNotifier(pool, log)
	run(notifier.Run)
	r, err := relay.New(pool, relay.WithKafkaOptions(kgo.SeedBrokers(seeds...)), relay.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	run(func(ctx context.Context) { r.Run(ctx) })
	c, err := consumer.New(pool, revenue.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)), consumer.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	run(func(ctx context.Context) { c.Run(ctx) })
	mux := http.NewServeMux()
	api.New(pool, notifier, log, api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Hour}).Register(mux)
	srv := httptest.NewServer(api.Handler(mux))
	t.Cleanup(srv.Close)
	return &pipeline{url: srv.URL, pool: pool, seeds: seeds}
}

func (p *pipeline) call(t *testing.T, method, path string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, p.url+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s answered %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

// caughtUp waits until the projection of id has applied the invoice's
// current version, then checks that it says what the invoice says.
func (p *pipeline) caughtUp(t *testing.T, id, step string) {
	t.Helper()
	var inv billing.InvoiceWithPayments
	p.call(t, "GET", "/v1/invoices/"+id, nil, 200, &inv)
	deadline := time.Now().Add(15 * time.Second)
	var got revenue.Invoice
	for {
		req, _ := http.Get(p.url + "/v1/revenue/invoices/" + id)
		b, _ := io.ReadAll(req.Body)
		req.Body.Close()
		if req.StatusCode == 200 {
			json.Unmarshal(b, &got)
			if got.LastSequence == inv.Version {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, the projection of %s is at version %d, the invoice at %d", step, id, got.LastSequence, inv.Version)
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := revenue.Invoice{InvoiceID: inv.ID, CustomerID: inv.CustomerID, Currency: inv.Currency, Status: inv.Status,
		Total: inv.Total, AmountPaid: inv.AmountPaid, AmountDue: inv.AmountDue, LastSequence: inv.Version}
	got.LastEventAt, got.UpdatedAt = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("after %s the projection is\n%+v\nthe invoice says\n%+v", step, got, want)
	}
}

func TestProjectionFollowsTheInvoiceThroughTheWholePipeline(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	p.call(t, "POST", "/v1/customers", map[string]any{"id": "c1", "name": "Ada", "email": "ada@example.com"}, 201, nil)
	p.call(t, "POST", "/v1/customers", map[string]any{"id": "c2", "name": "Bob", "email": "bob@example.com"}, 201, nil)
	invoice := func(id string) map[string]any {
		return map[string]any{"id": id, "customer_id": "c1", "currency": "EUR", "issued_at": "2025-01-01",
			"due_at": "2025-01-31", "lines": []any{
				map[string]any{"description": "Plan", "amount": 10000, "service_period": map[string]any{"start": "2025-01-01", "end": "2025-12-31"}},
				map[string]any{"description": "Seats", "amount": 500, "quantity": 4}}, "tax": 2000}
	}
	p.call(t, "POST", "/v1/invoices", invoice("a"), 201, nil)
	p.caughtUp(t, "a", "create")
	p.call(t, "PATCH", "/v1/invoices/a", map[string]any{"customer_id": "c2", "discount": 1000}, 200, nil)
	p.caughtUp(t, "a", "update")
	p.call(t, "POST", "/v1/invoices/a/payments", map[string]any{"amount": 5000}, 201, nil)
	p.caughtUp(t, "a", "a partial payment")
	p.call(t, "POST", "/v1/invoices/a/payments", map[string]any{"amount": 8000}, 201, nil)
	p.caughtUp(t, "a", "the full payment")

	p.call(t, "POST", "/v1/invoices", invoice("b"), 201, nil)
	p.call(t, "POST", "/v1/invoices/b/payments", map[string]any{"amount": 100}, 201, nil)
	p.call(t, "POST", "/v1/invoices/b/void", nil, 200, nil)
	p.caughtUp(t, "b", "a void")

	for i := range 20 {
		id := fmt.Sprintf("many-%d", i)
		p.call(t, "POST", "/v1/invoices", invoice(id), 201, nil)
		p.call(t, "POST", "/v1/invoices/"+id+"/payments", map[string]any{"amount": 1 + i}, 201, nil)
	}
	for i := range 20 {
		p.caughtUp(t, fmt.Sprintf("many-%d", i), "many changes at once")
	}
}

// Events seen late, twice or out of order leave the projection at the
// latest version, each applied only over an older one, and the ledger as
// the events in order leave it.
func TestOutOfOrderAndRepeatedEventsEndInTheSameState(t *testing.T) {
	t.Parallel()
	snapshot := func(seq int64, status string, paid int64) envelope.Event {
		now := time.Now().UTC().Format(time.RFC3339Nano)
		typ := map[string]string{"open": "tally.invoice.updated.v1", "paid": "tally.invoice.paid.v1"}[status]
		extra := ""
		if status == "paid" {
			extra = `,"paid_at":"2025-01-20"`
		}
		return envelope.Event{ID: envelope.NewID(), Type: typ, Source: "/t", Subject: "x", Time: time.Now(), Sequence: seq,
			CorrelationID: "c", Data: fmt.Appendf(nil, `{"id":"x","customer_id":"c","currency":"USD","status":%q,
			"issued_at":"2025-01-01","due_at":"2025-01-31","lines":[{"description":"d","amount":100,"quantity":1,"total":100,
			"service_period":{"start":"2025-01-01","end":"2025-03-31"}}],
			"subtotal":100,"discount":%d,"tax":0,"total":%d,"amount_paid":%d,"amount_due":%d,"created_at":%q,"updated_at":%q%s}`,
				status, 100-seq*10, seq*10, paid, seq*10-paid, now, now, extra)}
	}
	payment := envelope.Event{ID: envelope.NewID(), Type: "tally.invoice.payment_received.v1", Source: "/t", Subject: "x",
		Time: time.Now(), Sequence: 3, CorrelationID: "c", Data: []byte(`{"invoice_id":"x","customer_id":"c",
		"payment_id":"p","currency":"USD","amount":40,"paid_at":"2025-01-20","total":40,"amount_paid":40,"amount_due":0}`)}
	v2, v4 := snapshot(2, "open", 0), snapshot(4, "paid", 40)
	// In order, and then: the payment first (the created event was lost),
	// then the latest version, then older ones, then everything again.
	inOrder := apply(t, v2, payment, v4)
	pool := apply(t, payment, v4, v2, payment, v2, v4)
	got, err := revenue.GetInvoice(context.Background(), pool, "x")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "paid" || got.AmountPaid != 40 || got.AmountDue != 0 || got.LastSequence != 4 {
		t.Errorf("projection %+v, want the paid version 4", got)
	}
	want, have := ledger(t, inOrder), ledger(t, pool)
	if fmt.Sprint(have) != fmt.Sprint(want) {
		t.Errorf("the ledger out of order:\n%s\nin order:\n%s", strings.Join(have, "\n"), strings.Join(want, "\n"))
	}
	if len(want) < 4 {
		t.Errorf("the ledger has %d rows; want the history, a booking, an adjustment, recognition and cash", len(want))
	}
}

// apply runs the revenue group over evs, produced in that order to a broker
// of its own, into a database of its own, and returns the database once
// every record is applied.
func apply(t *testing.T, evs ...envelope.Event) *pgxpool.Pool {
	t.Helper()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	var recs []*kgo.Record
	for _, e := range evs {
		recs = append(recs, e.Record("tally.invoices.v1"))
	}
	cl := testenv.Client(t, seeds)
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(pool, revenue.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var n int
		pool.QueryRow(context.Background(), `SELECT coalesce(max(next_offset), 0) FROM consumer_offsets`).Scan(&n)
		if n == len(evs) {
			return pool
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group applied %d of %d records", n, len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// projection returns the revenue projection as text, one invoice a line,
// without updated_at (when a row was written, not what it says).
func projection(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT concat_ws(' ', invoice_id, customer_id, currency, status, total,
		amount_paid, amount_due, last_sequence, last_event_at) FROM revenue_invoices ORDER BY invoice_id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ledger returns the revenue ledger as text, an invoice's history or an
// entry a line, without updated_at.
func ledger(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT concat_ws(' ', invoice_id, customer_id, version, last_sequence, history::text) FROM revenue_ledger
		UNION ALL
		SELECT concat_ws(' ', invoice_id, basis, kind, key, customer_id, currency, entry_date, start_date, end_date,
			revenue, deferred, cum::text, seq, event_id) FROM revenue_entries
		ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A rebuild of the revenue group from the start of its topic gives back
// the projection and the ledger the live group built, whatever happened to
// them since.
func TestARebuildEqualsTheLiveProjection(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	p.call(t, "POST", "/v1/customers", map[string]any{"id": "c1", "name": "Ada", "email": "ada@example.com"}, 201, nil)
	for i := range 8 {
		id := fmt.Sprintf("inv%d", i)
		p.call(t, "POST", "/v1/invoices", map[string]any{"id": id, "customer_id": "c1", "currency": "EUR",
			"issued_at": "2026-01-01", "due_at": "2026-01-31", "lines": []map[string]any{{"description": "work", "amount": 1000 * (i + 1),
				"service_period": map[string]any{"start": "2026-01-01", "end": fmt.Sprintf("2026-%02d-28", i+1)}}}}, 201, nil)
		if i%2 == 0 {
			p.call(t, "PATCH", "/v1/invoices/"+id, map[string]any{"discount": 100 * i, "tax": 50}, 200, nil)
		}
		switch i % 4 {
		case 1:
			p.call(t, "POST", "/v1/invoices/"+id+"/payments", map[string]any{"amount": 400, "paid_at": "2026-01-05"}, 201, nil)
		case 2:
			p.call(t, "POST", "/v1/invoices/"+id+"/payments", map[string]any{"amount": 1000*(i+1) - 100*i + 50, "paid_at": "2026-01-06"}, 201, nil)
		case 3:
			p.call(t, "POST", "/v1/invoices/"+id+"/void", nil, 200, nil)
		}
		p.caughtUp(t, id, "its changes")
	}
	live, liveLedger := projection(t, p.pool), ledger(t, p.pool)
	if _, err := p.pool.Exec(context.Background(), `UPDATE revenue_invoices SET total = 0 WHERE invoice_id = 'inv1';
		DELETE FROM revenue_invoices WHERE invoice_id = 'inv2';
		UPDATE revenue_entries SET revenue = revenue + 1 WHERE invoice_id = 'inv4' AND kind = 'recognized';
		DELETE FROM revenue_ledger WHERE invoice_id = 'inv5'`); err != nil {
		t.Fatal(err)
	}
	rep, err := consumer.Rebuild(context.Background(), p.pool, revenue.Group(), consumer.RebuildConfig{},
		consumer.WithKafkaOptions(kgo.SeedBrokers(p.seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	if got := projection(t, p.pool); fmt.Sprint(got) != fmt.Sprint(live) {
		t.Errorf("rebuilt projection:\n%v\nthe live group had:\n%v", got, live)
	}
	if got := ledger(t, p.pool); fmt.Sprint(got) != fmt.Sprint(liveLedger) {
		t.Errorf("rebuilt ledger:\n%v\nthe live group had:\n%v", strings.Join(got, "\n"), strings.Join(liveLedger, "\n"))
	}
	if rep.Rows["revenue_invoices"] != 8 || rep.Rows["revenue_ledger"] != 8 || rep.Rows["revenue_entries"] < 8*3 {
		t.Errorf("the rebuild swapped in %v rows; want 8 invoices, 8 ledgers and their entries", rep.Rows)
	}
	// The live group goes on.
	p.call(t, "POST", "/v1/invoices/inv0/payments", map[string]any{"amount": 1000, "paid_at": "2026-01-07"}, 201, nil)
	p.caughtUp(t, "inv0", "a payment after the rebuild")
}
