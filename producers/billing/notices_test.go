package billing_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
)

func ptr[T any](v T) *T { return &v }

// run runs a billing command in a transaction with its events.
func run(t *testing.T, pool *pgxpool.Pool, cmd func(ctx context.Context, tx billing.Tx, m billing.Meta) ([]envelope.Event, error)) {
	t.Helper()
	ctx := context.Background()
	tx, err := postgres.Begin(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	evs, err := cmd(ctx, tx, billing.Meta{Source: "/test", CorrelationID: "c", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	var b pgx.Batch
	if err := outbox.Queue(&b, evs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx, &b); err != nil {
		t.Fatal(err)
	}
}

func newInvoice(t *testing.T, pool *pgxpool.Pool, id, due string) {
	t.Helper()
	run(t, pool, func(ctx context.Context, tx billing.Tx, m billing.Meta) ([]envelope.Event, error) {
		_, evs, err := billing.CreateInvoice(ctx, tx, m, billing.InvoiceInput{ID: ptr(id), CustomerID: ptr("c1"),
			Currency: ptr("USD"), IssuedAt: ptr("2025-01-01"), DueAt: ptr(due),
			Lines: &[]billing.LineInput{{Description: ptr("work"), Amount: ptr(int64(1000))}}})
		return evs, err
	})
}

// notices returns the notices in the outbox of invoice id: "kind step"
// each, in order.
func notices(t *testing.T, pool *pgxpool.Pool, id string) []billing.InvoiceNotice {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT payload FROM outbox WHERE subject = $1
		AND type IN ('tally.invoice.reminder_sent.v1', 'tally.invoice.overdue.v1') ORDER BY sequence`, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (billing.InvoiceNotice, error) {
		var raw []byte
		var n billing.InvoiceNotice
		if err := r.Scan(&raw); err != nil {
			return n, err
		}
		return n, json.Unmarshal(raw, &n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func send(t *testing.T, pool *pgxpool.Pool, on string) billing.NoticesReport {
	t.Helper()
	d, err := date.Parse(on)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := billing.SendNotices(context.Background(), pool, billing.DefaultNoticeSchedule, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// The schedule around a due date of March 31: reminders on the 28th and
// the 31st, overdue notices on April 1st, 7th and 30th; each once however
// often the scheduler runs; none for a paid or void invoice, even one
// paid between two runs; an invoice found late gets its latest notice
// only.
func TestNoticesAroundTheDueDate(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	run(t, pool, func(ctx context.Context, tx billing.Tx, m billing.Meta) ([]envelope.Event, error) {
		_, evs, err := billing.CreateCustomer(ctx, tx, m, billing.CustomerInput{ID: ptr("c1"), Name: ptr("Ada"), Email: ptr("ada@example.com")})
		return evs, err
	})
	newInvoice(t, pool, "open", "2025-03-31")
	newInvoice(t, pool, "paid", "2025-03-31")
	newInvoice(t, pool, "void", "2025-03-31")
	newInvoice(t, pool, "late", "2025-01-31")

	if rep := send(t, pool, "2025-03-27"); rep.Reminders != 0 || rep.Overdue != 1 {
		t.Errorf("March 27: %+v; want nothing due but the late invoice's 30-day notice", rep)
	}
	if got := notices(t, pool, "late"); len(got) != 1 || got[0].Notice.Step != 30 || got[0].Notice.Kind != "overdue" ||
		got[0].Notice.DaysPastDue != 55 || len(got[0].Notice.SkippedSteps) != 4 || got[0].Status != "open" {
		t.Errorf("the late invoice's notices: %+v; want the 30-day one alone, the four before it skipped", got)
	}
	if rep := send(t, pool, "2025-03-28"); rep != (billing.NoticesReport{Reminders: 3}) {
		t.Errorf("March 28: %+v; want the three reminders of three days before", rep)
	}
	if rep := send(t, pool, "2025-03-28"); rep != (billing.NoticesReport{}) {
		t.Errorf("March 28 again: %+v; want nothing", rep)
	}
	// Paid and voided after their first reminder, before the second.
	run(t, pool, func(ctx context.Context, tx billing.Tx, m billing.Meta) ([]envelope.Event, error) {
		_, evs, err := billing.PayInvoice(ctx, tx, m, "paid", billing.PaymentInput{Amount: ptr(int64(1000)), PaidAt: ptr("2025-03-29")})
		return evs, err
	})
	run(t, pool, func(ctx context.Context, tx billing.Tx, m billing.Meta) ([]envelope.Event, error) {
		_, evs, err := billing.VoidInvoice(ctx, tx, m, "void")
		return evs, err
	})
	// Two schedulers at once, each day until May.
	for d := time.Date(2025, 3, 29, 0, 0, 0, 0, time.UTC); d.Month() < 5; d = d.AddDate(0, 0, 1) {
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { send(t, pool, d.Format(time.DateOnly)) })
		}
		wg.Wait()
	}
	steps := func(id string) []int {
		var out []int
		for _, n := range notices(t, pool, id) {
			out = append(out, n.Notice.Step)
			if (n.Notice.Step <= 0) != (n.Notice.Kind == "reminder") || n.Notice.DaysPastDue < n.Notice.Step {
				t.Errorf("%s: notice %+v", id, n.Notice)
			}
		}
		return out
	}
	for id, want := range map[string][]int{"open": {-3, 0, 1, 7, 30}, "paid": {-3}, "void": {-3}, "late": {30}} {
		if got := steps(id); len(got) != len(want) || !equal(got, want) {
			t.Errorf("%s: notices of steps %v, want %v", id, got, want)
		}
	}
	// Each notice bumped the invoice's version, which its event carries.
	inv, err := billing.GetInvoice(context.Background(), pool, "open")
	if err != nil {
		t.Fatal(err)
	}
	if ns := notices(t, pool, "open"); inv.Version != 6 || ns[4].Version != 6 {
		t.Errorf("after five notices the invoice is at version %d (the last notice says %d); want 6", inv.Version, ns[4].Version)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParseNoticeSchedule(t *testing.T) {
	t.Parallel()
	s, err := billing.ParseNoticeSchedule(" 7, -3,0 ")
	if err != nil || s.String() != "-3,0,7" {
		t.Errorf("parsed %v, %v", s, err)
	}
	if s, err := billing.ParseNoticeSchedule("none"); err != nil || len(s) != 0 || s.String() != "none" {
		t.Errorf("none: %v, %v", s, err)
	}
	for _, bad := range []string{"", "1,,2", "x", "3,3", "9999"} {
		if _, err := billing.ParseNoticeSchedule(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
