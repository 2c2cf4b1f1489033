package revenue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/date"
)

func invoiceBody(id, currency, issued string, discount, tax int64, lines ...map[string]any) map[string]any {
	return map[string]any{"id": id, "customer_id": "c1", "currency": currency, "issued_at": issued, "due_at": issued,
		"lines": lines, "discount": discount, "tax": tax}
}

func line(amount int64, start, end string) map[string]any {
	l := map[string]any{"description": "service", "amount": amount}
	if start != "" {
		l["service_period"] = map[string]any{"start": start, "end": end}
	}
	return l
}

// outboxEvent is an event the outbox holds.
type outboxEvent struct {
	id, typ, subject, causation string
	data                        []byte
}

func revenueEvents(t *testing.T, p *pipeline, typ string) []outboxEvent {
	t.Helper()
	rows, err := p.pool.Query(context.Background(), `SELECT id::text, type, subject, causation_id, payload FROM outbox
		WHERE type = $1 ORDER BY shard, seq`, typ)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outboxEvent, error) {
		var e outboxEvent
		return e, r.Scan(&e.id, &e.typ, &e.subject, &e.causation, &e.data)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// createdEventID is the id of an invoice's created event.
func createdEventID(t *testing.T, p *pipeline, id string) string {
	t.Helper()
	var ev string
	if err := p.pool.QueryRow(context.Background(), `SELECT id::text FROM outbox WHERE subject = $1 AND type = 'tally.invoice.created.v1'`,
		id).Scan(&ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

// The ledger through the whole pipeline: invoices made over the API reach
// the revenue group, which books and recognizes them, announces its
// changes, and answers the reports: the waterfall, the deferred revenue
// with its roll-forward, and an invoice's schedule, on both bases.
func TestTheLedgerThroughTheAPI(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	p.call(t, "POST", "/v1/customers", map[string]any{"id": "c1", "name": "Ada", "email": "ada@example.com"}, 201, nil)
	// $365 for 2025, tax 10: Stripe's example.
	p.call(t, "POST", "/v1/invoices", invoiceBody("A", "USD", "2025-01-01", 0, 1000, line(36500, "2025-01-01", "2025-12-31")), 201, nil)
	// 100.00 less a discount of 10.00, at the issue date.
	p.call(t, "POST", "/v1/invoices", invoiceBody("B", "USD", "2025-02-10", 1000, 0, line(10000, "", "")), 201, nil)
	// Another currency, another ledger.
	p.call(t, "POST", "/v1/invoices", invoiceBody("C", "EUR", "2025-01-15", 0, 0, line(3100, "2025-01-15", "2025-02-14")), 201, nil)
	// Voided after its service ended: all it recognized is reversed today.
	p.call(t, "POST", "/v1/invoices", invoiceBody("D", "USD", "2025-03-01", 0, 0, line(3100, "2025-03-01", "2025-03-31")), 201, nil)
	p.call(t, "POST", "/v1/invoices/D/void", nil, 200, nil)
	// Paid in part: nothing changes on the accrual basis; the cash basis
	// recognizes the payment's share of the net: 18250 × 36500/37500.
	p.call(t, "POST", "/v1/invoices/A/payments", map[string]any{"amount": 18750, "paid_at": "2025-06-30"}, 201, nil)
	for _, id := range []string{"A", "B", "C", "D"} {
		p.caughtUp(t, id, "its changes")
	}
	today := date.Of(time.Now())

	var w revenue.Waterfall
	p.call(t, "GET", "/v1/revenue/waterfall?currency=USD&from=2025-01&to=2025-04", nil, 200, &w)
	want := []struct{ rec, rev, def int64 }{{3100, 0, 33400}, {2800 + 9000, 0, 30600}, {3100 + 3100, 0, 27500}, {3000, 0, 24500}}
	for i, m := range w.Months {
		if m.Recognized != want[i].rec || m.Scheduled != 0 || m.Reversed != want[i].rev || m.Deferred == nil || *m.Deferred != want[i].def {
			t.Errorf("USD %s: %+v (deferred %v), want recognized %d and deferred %d", m.Month, m, deref(m.Deferred), want[i].rec, want[i].def)
		}
	}
	var eur revenue.Waterfall
	p.call(t, "GET", "/v1/revenue/waterfall?currency=EUR&from=2025-01&to=2025-02", nil, 200, &eur)
	if eur.Months[0].Recognized != 1700 || eur.Months[1].Recognized != 1400 {
		t.Errorf("EUR waterfall %+v, want 1700 and 1400 (Stripe's $31 for Jan 15 – Feb 14)", eur.Months)
	}
	// D's void today reverses its March.
	var now revenue.Waterfall
	m := today.Time().Format("2006-01")
	p.call(t, "GET", "/v1/revenue/waterfall?currency=USD&from="+m+"&to="+m, nil, 200, &now)
	if now.Months[0].Reversed != -3100 {
		t.Errorf("this month %+v, want D's 3100 reversed", now.Months[0])
	}
	var cash revenue.Waterfall
	p.call(t, "GET", "/v1/revenue/waterfall?currency=USD&from=2025-06&to=2025-06&basis=cash", nil, 200, &cash)
	if cash.Months[0].Recognized != 18250 || cash.Months[0].Deferred != nil {
		t.Errorf("cash June %+v, want 18250", cash.Months[0])
	}

	var def revenue.DeferredReport
	p.call(t, "GET", "/v1/revenue/deferred?currency=USD&as_of=2025-01-31&from=2025-01-01&to=2025-01-31", nil, 200, &def)
	rf := def.RollForward
	if def.Deferred != 33400 || rf.Opening != 0 || rf.Deferred != 36500 || rf.Recognized != 3100 || rf.Closing != 33400 || !rf.Balanced {
		t.Errorf("deferred on 2025-01-31: %+v", def)
	}
	// Mid-month, the month's row is cut at the day: 36500 less 45 days.
	p.call(t, "GET", "/v1/revenue/deferred?currency=USD&as_of=2025-02-14&from=2025-02-01&to=2025-02-14", nil, 200, &def)
	if def.Deferred != 36500-4500 || def.RollForward.Recognized != 1400+9000 || def.RollForward.Deferred != 9000 || !def.RollForward.Balanced {
		t.Errorf("deferred on 2025-02-14: %+v", def)
	}
	p.call(t, "GET", "/v1/revenue/deferred?currency=USD&as_of="+today.String()+"&from=2025-01-01", nil, 200, &def)
	if rf := def.RollForward; def.Deferred != 0 || rf.Reversals != 0 || rf.Recognized != 36500+9000+3100 || !rf.Balanced {
		t.Errorf("deferred today: %+v, want everything recognized", def)
	}

	var s revenue.Schedule
	p.call(t, "GET", "/v1/revenue/invoices/A/schedule", nil, 200, &s)
	if len(s.Entries) != 12 || s.Entries[1].Period != "2025-02" || s.Entries[1].Amount != 2800 || s.Entries[1].Status != "recognized" {
		t.Errorf("A's schedule by month: %+v", s.Entries)
	}
	if len(s.Events) != 1 || s.Events[0].Kind != "deferred" || s.Events[0].Deferred != 36500 {
		t.Errorf("A's events: %+v", s.Events)
	}
	p.call(t, "GET", "/v1/revenue/invoices/C/schedule?granularity=day", nil, 200, &s)
	if len(s.Entries) != 31 || s.Entries[0].Period != "2025-01-15" || s.Entries[0].Amount != 100 {
		t.Errorf("C's schedule by day: %d entries, first %+v", len(s.Entries), s.Entries[0])
	}
	p.call(t, "GET", "/v1/revenue/invoices/nope/schedule", nil, 404, nil)
	for _, bad := range []string{
		"/v1/revenue/waterfall?from=2025-01&to=2025-02",
		"/v1/revenue/waterfall?currency=XXX&from=2025-01&to=2025-02",
		"/v1/revenue/waterfall?currency=USD&from=2025-03&to=2025-02",
		"/v1/revenue/waterfall?currency=USD&from=2025-1&to=2025-02",
		"/v1/revenue/waterfall?currency=USD&from=2025-01&to=2025-02&basis=tax",
		"/v1/revenue/deferred?currency=USD&as_of=yesterday",
		"/v1/revenue/deferred?currency=USD&basis=cash",
		"/v1/revenue/invoices/A/schedule?granularity=week",
	} {
		p.call(t, "GET", bad, nil, 422, nil)
	}

	// The group's events, caused by the invoice events.
	deferred := revenueEvents(t, p, "tally.revenue.deferred.v1")
	if len(deferred) != 4 {
		t.Fatalf("%d deferred events, want one an invoice", len(deferred))
	}
	for _, e := range deferred {
		if e.causation != createdEventID(t, p, e.subject) {
			t.Errorf("deferred event of %s caused by %s, want its created event", e.subject, e.causation)
		}
	}
	reversed := revenueEvents(t, p, "tally.revenue.reversed.v1")
	var rv revenue.Reversed
	if len(reversed) != 1 || json.Unmarshal(reversed[0].data, &rv) != nil || rv.InvoiceID != "D" || rv.RecognizedReversed != 3100 ||
		rv.DeferredCancelled != 0 || rv.Reason != "void" {
		t.Errorf("reversed events %v (%+v), want D's 3100", reversed, rv)
	}
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// The announcer announces each day of an invoice once: a repeated run
// announces nothing, two announcers at once share the work, and a change
// to days already announced is restated.
func TestAnnouncingRecognitionOncePerInvoiceAndDay(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	p.call(t, "POST", "/v1/customers", map[string]any{"id": "c1", "name": "Ada", "email": "ada@example.com"}, 201, nil)
	for i := range 40 {
		p.call(t, "POST", "/v1/invoices", invoiceBody(fmt.Sprint("I", i), "USD", "2026-01-01", 0, 0,
			line(int64(1000+i), "2026-01-01", "2026-01-10")), 201, nil)
	}
	for i := range 40 {
		p.caughtUp(t, fmt.Sprint("I", i), "its creation")
	}
	ctx := context.Background()
	day := func(s string) date.Date {
		d, _ := date.Parse(s)
		return d
	}
	// Two announcers at once, on January 4th: days 1–4 of every invoice.
	var wg sync.WaitGroup
	var reps [2]revenue.AnnounceReport
	for i := range 2 {
		wg.Go(func() {
			var err error
			if reps[i], err = revenue.Announce(ctx, p.pool, day("2026-01-04"), 7); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := reps[0].Recognized + reps[1].Recognized; n != 40 {
		t.Errorf("two announcers announced %d invoices (%+v), want each of the 40 once", n, reps)
	}
	if rep, err := revenue.Announce(ctx, p.pool, day("2026-01-04"), 0); err != nil || rep.Recognized != 0 {
		t.Errorf("a repeated run: %+v, %v; want nothing announced", rep, err)
	}
	// The rest, later.
	if rep, err := revenue.Announce(ctx, p.pool, day("2026-02-01"), 0); err != nil || rep.Recognized != 40 {
		t.Errorf("the rest of the days: %+v, %v", rep, err)
	}
	evs := revenueEvents(t, p, "tally.revenue.recognized.v1")
	perDay := map[string]int{}
	sums := map[string]int64{}
	for _, e := range evs {
		var r revenue.Recognized
		if err := json.Unmarshal(e.data, &r); err != nil {
			t.Fatal(err)
		}
		for _, d := range r.Days {
			perDay[r.InvoiceID+" "+d.Date.String()]++
		}
		sums[r.InvoiceID] += r.Amount
	}
	for k, n := range perDay {
		if n != 1 {
			t.Errorf("%s announced %d times", k, n)
		}
	}
	for i := range 40 {
		if id := fmt.Sprint("I", i); sums[id] != int64(1000+i) {
			t.Errorf("%s: %d announced, want %d", id, sums[id], 1000+i)
		}
	}
	// A void today, after every day was announced, takes them back: the
	// reversal says so, and the announcer restates nothing (the days were
	// recognized; the void reverses them on its own date).
	p.call(t, "POST", "/v1/invoices/I0/void", nil, 200, nil)
	p.caughtUp(t, "I0", "its void")
	if rep, err := revenue.Announce(ctx, p.pool, day("2026-02-02"), 0); err != nil || rep.Restated != 0 || rep.Recognized != 0 {
		t.Errorf("after a void of announced days: %+v, %v; want nothing to restate", rep, err)
	}
	// An update of an invoice with days still to come takes effect today,
	// a day announced already: that day is restated, once, and what was
	// announced sums to what the ledger recognizes.
	p.call(t, "POST", "/v1/invoices", invoiceBody("late", "USD", "2026-01-01", 0, 0, line(300000, "2026-01-01", "2027-12-31")), 201, nil)
	p.caughtUp(t, "late", "its creation")
	today := date.Of(time.Now())
	if rep, err := revenue.Announce(ctx, p.pool, today, 0); err != nil || rep.Recognized != 1 {
		t.Errorf("announcing late: %+v, %v", rep, err)
	}
	p.call(t, "PATCH", "/v1/invoices/late", map[string]any{"discount": 100000}, 200, nil)
	p.caughtUp(t, "late", "its update")
	for range 2 {
		if rep, err := revenue.Announce(ctx, p.pool, today, 0); err != nil || rep.Restated > 1 || rep.Recognized != 0 {
			t.Errorf("after an update from today on: %+v, %v; want today restated once", rep, err)
		}
	}
	var announced int64
	for _, typ := range []string{"tally.revenue.recognized.v1", "tally.revenue.adjusted.v1"} {
		for _, e := range revenueEvents(t, p, typ) {
			var v struct {
				Amount, Restated int64
				Reason           string
			}
			if e.subject != "late" || json.Unmarshal(e.data, &v) != nil || typ == "tally.revenue.adjusted.v1" && v.Reason != revenue.ReasonRestated {
				continue
			}
			announced += v.Amount + v.Restated
		}
	}
	var s revenue.Schedule
	p.call(t, "GET", "/v1/revenue/invoices/late/schedule?granularity=day", nil, 200, &s)
	var ledger int64
	for _, e := range s.Entries {
		if e.Status == "recognized" {
			ledger += e.Amount
		}
	}
	if announced != ledger || ledger == 0 {
		t.Errorf("announced %d of late, the ledger recognizes %d through today", announced, ledger)
	}
}
