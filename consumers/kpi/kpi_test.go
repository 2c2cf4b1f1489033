package kpi_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/topics"
)

// history builds the events of a test's business, each aggregate's
// versions numbered in order.
type history struct {
	t    *testing.T
	seq  map[string]int64
	evs  []envelope.Event
	tops []string
}

func newHistory(t *testing.T) *history { return &history{t: t, seq: map[string]int64{}} }

var stamp = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Format(time.RFC3339Nano)

func (h *history) add(topic, typ, subject string, payload any) {
	h.t.Helper()
	data, err := json.Marshal(payload)
	if err != nil {
		h.t.Fatal(err)
	}
	h.seq[subject]++
	e := envelope.Event{ID: envelope.NewID(), Type: typ, Source: "/test", Subject: subject, Time: time.Now().UTC(),
		Sequence: h.seq[subject], CorrelationID: "c", Data: data}
	if err := topics.Validate(typ, data); err != nil {
		h.t.Fatalf("%s %s: %v", typ, subject, err)
	}
	h.evs = append(h.evs, e)
	h.tops = append(h.tops, topic)
}

type obj = map[string]any

func (h *history) customer(id, created string) {
	at := created + "T09:00:00Z"
	h.add("tally.customers.v1", "tally.customer.created.v1", id,
		obj{"id": id, "name": "Customer " + id, "email": id + "@example.com", "created_at": at, "updated_at": at})
}

// sale records a version of sale id: created first, then updated, or
// deleted when status is "deleted".
func (h *history) sale(id, customer, currency, day string, amount, refunded int64, status string) {
	typ := "tally.sale.updated.v1"
	if h.seq[id] == 0 {
		typ = "tally.sale.created.v1"
	}
	p := obj{"id": id, "customer_id": customer, "currency": currency, "amount": amount, "quantity": 1, "date": day,
		"refunded_amount": refunded, "status": "active", "created_at": stamp, "updated_at": stamp}
	if status == "deleted" {
		typ, p["status"], p["deleted_at"] = "tally.sale.deleted.v1", "deleted", stamp
	}
	h.add("tally.sales.v1", typ, id, p)
}

func (h *history) expense(id, category, currency, day string, amount int64, cogs bool, status string) {
	typ := "tally.expense.updated.v1"
	if h.seq[id] == 0 {
		typ = "tally.expense.created.v1"
	}
	p := obj{"id": id, "category": category, "currency": currency, "amount": amount, "date": day,
		"cost_of_goods_sold": cogs, "status": "active", "created_at": stamp, "updated_at": stamp}
	if status == "deleted" {
		typ, p["status"], p["deleted_at"] = "tally.expense.deleted.v1", "deleted", stamp
	}
	h.add("tally.expenses.v1", typ, id, p)
}

// invoice records a version of invoice id with status open, paid (paidAt)
// or void (voidedAt, a day).
func (h *history) invoice(id, currency, issued, due string, total, paid int64, status, on string) {
	typ := map[string]string{"open": "tally.invoice.updated.v1", "paid": "tally.invoice.paid.v1", "void": "tally.invoice.voided.v1"}[status]
	if h.seq[id] == 0 {
		typ = "tally.invoice.created.v1"
	}
	p := obj{"id": id, "customer_id": "c1", "currency": currency, "status": status, "issued_at": issued, "due_at": due,
		"lines":    []obj{{"description": "work", "amount": total, "quantity": 1, "total": total}},
		"subtotal": total, "discount": 0, "tax": 0, "total": total, "amount_paid": paid, "amount_due": total - paid,
		"created_at": stamp, "updated_at": stamp}
	switch status {
	case "paid":
		p["paid_at"] = on
	case "void":
		p["voided_at"] = on + "T10:00:00Z"
	}
	h.add("tally.invoices.v1", typ, id, p)
}

func (h *history) payment(invoice, id, currency, day string, amount, total, paidSoFar int64) {
	h.add("tally.invoices.v1", "tally.invoice.payment_received.v1", invoice, obj{"invoice_id": invoice, "customer_id": "c1",
		"payment_id": id, "currency": currency, "amount": amount, "paid_at": day, "total": total,
		"amount_paid": paidSoFar, "amount_due": total - paidSoFar})
}

func day(s string) date.Date {
	d, err := date.Parse(s)
	if err != nil {
		panic(err)
	}
	return d
}

func (h *history) revenue(typ, invoice string, payload any) {
	h.add("tally.revenue.v1", typ, invoice, payload)
}

// march is the business of the formula test: February and March 2025, in
// USD, with one sale in EUR. The figures it must give are worked out by
// hand in TestKPIFormulasOnHandComputedData.
func march(t *testing.T) *history {
	h := newHistory(t)
	h.customer("c1", "2025-02-10")
	h.customer("c2", "2025-03-05")
	h.customer("c3", "2025-03-20")
	h.sale("s1", "c1", "USD", "2025-02-15", 10000, 0, "")
	h.sale("s2", "c1", "USD", "2025-03-02", 20000, 0, "")
	h.sale("s3", "c2", "USD", "2025-03-05", 5000, 0, "")
	h.sale("s3", "c2", "USD", "2025-03-05", 5000, 1000, "") // a refund
	h.sale("s4", "c2", "USD", "2025-03-10", 7000, 0, "")
	h.sale("s5", "c3", "USD", "2025-03-20", 3000, 0, "")
	h.sale("s5", "c3", "USD", "2025-03-20", 3000, 0, "deleted")
	h.sale("s6", "c3", "USD", "2025-04-01", 9999, 0, "")
	h.sale("s6", "c3", "USD", "2025-03-25", 8000, 0, "") // moved into March
	h.sale("s7", "c1", "EUR", "2025-03-03", 50000, 0, "")
	h.expense("e1", "inventory", "USD", "2025-03-03", 12000, true, "")
	h.expense("e2", "rent", "USD", "2025-03-01", 10000, false, "")
	h.expense("e3", "software", "USD", "2025-03-15", 2000, false, "")
	h.expense("e3", "software", "USD", "2025-03-15", 2500, false, "")
	h.expense("e4", "rent", "USD", "2025-03-28", 10000, false, "")
	h.expense("e4", "rent", "USD", "2025-03-28", 10000, false, "deleted")
	h.invoice("i1", "USD", "2025-01-10", "2025-01-31", 10000, 0, "open", "")
	h.payment("i1", "p1", "USD", "2025-02-01", 4000, 10000, 4000)
	h.invoice("i2", "USD", "2025-03-01", "2025-03-31", 20000, 0, "open", "")
	h.invoice("i3", "USD", "2025-03-05", "2025-03-15", 5000, 0, "open", "")
	h.payment("i3", "p3", "USD", "2025-03-20", 5000, 5000, 5000)
	h.invoice("i3", "USD", "2025-03-05", "2025-03-15", 5000, 5000, "paid", "2025-03-20")
	h.invoice("i4", "USD", "2025-03-10", "2025-03-20", 3000, 0, "open", "")
	h.invoice("i4", "USD", "2025-03-10", "2025-03-20", 3000, 0, "void", "2025-03-25")
	h.invoice("i5", "USD", "2024-11-01", "2024-11-30", 7000, 0, "open", "")
	h.invoice("i6", "USD", "2025-02-01", "2025-03-01", 1000, 0, "open", "")
	h.revenue("tally.revenue.recognized.v1", "i2", revenue.Recognized{InvoiceID: "i2", CustomerID: "c1", Currency: "USD",
		PeriodStart: day("2025-03-01"), PeriodEnd: day("2025-03-02"), Amount: 300,
		Days: []revenue.Day{{Date: day("2025-03-01"), Amount: 100}, {Date: day("2025-03-02"), Amount: 200}}})
	h.revenue("tally.revenue.reversed.v1", "i4", revenue.Reversed{InvoiceID: "i4", CustomerID: "c1", Currency: "USD",
		ReversedOn: day("2025-03-10"), Reason: "void", RecognizedReversed: 50, DeferredCancelled: 2950})
	h.revenue("tally.revenue.adjusted.v1", "i2", revenue.Adjusted{InvoiceID: "i2", CustomerID: "c1", Currency: "USD",
		EffectiveOn: day("2025-03-15"), Reason: revenue.ReasonRestated, Restated: 5})
	return h
}

// apply runs the KPI group over h's events on a broker of its own, into
// pool, until every record is applied.
func apply(t *testing.T, pool *pgxpool.Pool, h *history) []string {
	t.Helper()
	_, seeds := testenv.Kafka(t)
	var recs []*kgo.Record
	for i := range h.evs {
		recs = append(recs, h.evs[i].Record(h.tops[i]))
	}
	cl := testenv.Client(t, seeds)
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c, err := consumer.New(pool, kpi.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitApplied(t, pool, len(recs))
	return seeds
}

func waitApplied(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int
		if err := pool.QueryRow(context.Background(), `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets
			WHERE group_id = 'kpi' AND topic NOT LIKE '%.retry.%' AND next_offset > 0`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group applied %d of %d records", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, pool *pgxpool.Pool, currency, granularity, from, to string) kpi.Report {
	t.Helper()
	rep, err := kpi.Get(context.Background(), pool, currency, granularity, day(from), day(to))
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func str(s string) *string { return &s }
func num(n int64) *int64   { return &n }

func TestKPIFormulasOnHandComputedData(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	apply(t, pool, march(t))
	rep := get(t, pool, "USD", kpi.Month, "2025-02-01", "2025-03-31")
	if len(rep.Periods) != 2 || rep.Periods[0].Period != "2025-02" || rep.Periods[1].Period != "2025-03" {
		t.Fatalf("periods %+v", rep.Periods)
	}
	feb, mar := rep.Periods[0], rep.Periods[1]
	// March, USD. Sales: s2 20000, s3 5000 refunded 1000, s4 7000, s6
	// 8000 (moved in from April); s5 deleted; s7 is in EUR.
	// Expenses: e1 12000 COGS; e2 rent 10000, e3 software 2500 (updated);
	// e4 deleted.
	// Customers: c1 ordered in February (returning), c2 twice (new, a
	// repeat), c3 new (its first order s5 was deleted).
	// Receivables at March 31: i1 6000 (59 days past due), i2 20000 (due
	// that day), i5 7000 (121 days), i6 1000 (30 days); i3 is paid, i4
	// void. Credit sales: i2 and i3, 25000; dso 34000 / 25000 × 31.
	// Recognized: 100 + 200 − 50 reversed + 5 restated.
	want := kpi.Period{Period: "2025-03", Start: day("2025-03-01"), End: day("2025-03-31"),
		GrossSales: 40000, Refunds: 1000, NetSales: 39000, Orders: 4, AverageOrderValue: num(10000),
		COGS: 12000, OperatingExpenses: 12500, ExpensesByCategory: map[string]int64{"inventory": 12000, "rent": 10000, "software": 2500},
		GrossProfit: 27000, GrossMargin: str("0.6923"), NetProfit: 14500, NetMargin: str("0.3718"),
		RecognizedRevenue: 255, NewCustomers: 2, ReturningCustomers: 1, ActiveCustomers: 3, RepeatRate: str("0.3333"),
		Signups: 2, AccountsReceivable: 34000,
		ARAging: kpi.Aging{Current: 20000, D1to30: 1000, D31to60: 6000, D61to90: 0, D91Plus: 7000}, DSO: str("42.16")}
	mar.Change = nil
	if got, w := mustJSON(t, mar), mustJSON(t, want); got != w {
		t.Errorf("March:\n got %s\nwant %s", got, w)
	}
	// February: s1 alone; i1 (4000 paid, 1 day to due... past due since
	// January 31: 28 days), i5 (90 days), i6 issued (current).
	if feb.GrossSales != 10000 || feb.Orders != 1 || feb.NewCustomers != 1 || *feb.GrossMargin != "1.0000" ||
		feb.AccountsReceivable != 6000+7000+1000 || feb.ARAging.D1to30 != 6000 || feb.ARAging.D61to90 != 7000 || feb.ARAging.Current != 1000 {
		t.Errorf("February: %s", mustJSON(t, feb))
	}
	for k, w := range map[string]*string{"gross_sales": str("3.0000"), "orders": str("3.0000"), "gross_margin": str("-0.3077"),
		"recognized_revenue": nil, "returning_customers": nil, "net_profit": str("0.4500")} {
		got, _ := rep.Periods[1].Change[k].(*string)
		if (got == nil) != (w == nil) || (got != nil && *got != *w) {
			t.Errorf("change of %s: %v, want %v", k, deref(got), deref(w))
		}
	}

	// EUR is a ledger of its own.
	eur := get(t, pool, "EUR", kpi.Month, "2025-03-01", "2025-03-31").Periods[0]
	if eur.GrossSales != 50000 || eur.Orders != 1 || eur.ActiveCustomers != 1 || eur.NewCustomers != 1 || eur.COGS != 0 ||
		eur.AccountsReceivable != 0 || eur.GrossMargin == nil || *eur.GrossMargin != "1.0000" {
		t.Errorf("EUR March: %s", mustJSON(t, eur))
	}

	// By day: March 5 holds s3 (c2's first order) and c2's signup.
	days := get(t, pool, "USD", kpi.Day, "2025-03-04", "2025-03-05")
	if len(days.Periods) != 2 {
		t.Fatalf("days: %+v", days.Periods)
	}
	if d := days.Periods[1]; d.Period != "2025-03-05" || d.GrossSales != 5000 || d.Refunds != 1000 || d.NewCustomers != 1 ||
		d.Signups != 1 || d.AverageOrderValue == nil || *d.AverageOrderValue != 5000 {
		t.Errorf("March 5: %s", mustJSON(t, d))
	}
	if d := days.Periods[0]; d.Orders != 0 || d.AverageOrderValue != nil || d.GrossMargin != nil || d.RepeatRate != nil {
		t.Errorf("March 4, without sales: %s", mustJSON(t, d))
	}
}

func deref(s *string) string {
	if s == nil {
		return "null"
	}
	return *s
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The same events in another order, each twice, give the same figures;
// so does a rebuild of the group from its topics.
func TestKPIsAreTheSameWhateverTheOrderAndAfterAReplay(t *testing.T) {
	t.Parallel()
	h := march(t)
	ordered, _ := testenv.Pool(t)
	seeds := apply(t, ordered, h)
	want := mustJSON(t, get(t, ordered, "USD", kpi.Day, "2025-02-25", "2025-03-31"))

	// Reversed, and every event twice: each aggregate's versions arrive
	// newest first.
	shuffled := newHistory(t)
	for i := len(h.evs) - 1; i >= 0; i-- {
		for range 2 {
			shuffled.evs = append(shuffled.evs, h.evs[i])
			shuffled.tops = append(shuffled.tops, h.tops[i])
		}
	}
	pool, _ := testenv.Pool(t)
	apply(t, pool, shuffled)
	if got := mustJSON(t, get(t, pool, "USD", kpi.Day, "2025-02-25", "2025-03-31")); got != want {
		t.Errorf("out of order and repeated:\n got %s\nwant %s", got, want)
	}

	if _, err := ordered.Exec(context.Background(), `DELETE FROM kpi_sales WHERE sale_id = 's2'; UPDATE kpi_revenue SET amount = 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := consumer.Rebuild(context.Background(), ordered, kpi.Group(), consumer.RebuildConfig{},
		consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...))); err != nil {
		t.Fatal(err)
	}
	if got := mustJSON(t, get(t, ordered, "USD", kpi.Day, "2025-02-25", "2025-03-31")); got != want {
		t.Errorf("after a rebuild:\n got %s\nwant %s", got, want)
	}
}

func TestGetRefusesBadRanges(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	for _, c := range []struct{ granularity, from, to string }{
		{kpi.Day, "2025-03-02", "2025-03-01"},
		{kpi.Day, "2024-01-01", "2025-12-31"},
		{kpi.Month, "1990-01-01", "2025-12-31"},
		{"week", "2025-01-01", "2025-01-31"},
	} {
		if _, err := kpi.Get(context.Background(), pool, "USD", c.granularity, day(c.from), day(c.to)); err == nil {
			t.Errorf("%s %s..%s: no error", c.granularity, c.from, c.to)
		}
	}
	// An empty business has zero figures and no ratios.
	rep := get(t, pool, "USD", kpi.Month, "2025-01-01", "2025-01-31")
	if p := rep.Periods[0]; p.GrossSales != 0 || p.GrossMargin != nil || p.DSO != nil || p.AverageOrderValue != nil {
		t.Errorf("an empty month: %s", mustJSON(t, p))
	}
}
