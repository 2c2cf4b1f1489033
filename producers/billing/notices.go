package billing

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
)

// NoticeSchedule is when open invoices get notices, in days from their due
// date: a day before or on it, a reminder (tally.invoice.reminder_sent.v1);
// a day after it, an overdue notice (tally.invoice.overdue.v1).
type NoticeSchedule []int

// DefaultNoticeSchedule: reminders three days before the due date and on
// it, overdue notices 1, 7 and 30 days after it.
var DefaultNoticeSchedule = NoticeSchedule{-3, 0, 1, 7, 30}

// ParseNoticeSchedule reads a schedule such as "-3,0,1,7,30" (days from the
// due date); "none" is no notices at all.
func ParseNoticeSchedule(s string) (NoticeSchedule, error) {
	out := NoticeSchedule{}
	if strings.TrimSpace(s) == "none" {
		return out, nil
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < -365 || n > 3650 {
			return nil, fmt.Errorf("notice schedule %q: %q is not a number of days from the due date (-365 to 3650)", s, f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("notice schedule %q: day %d twice", s, n)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

func (s NoticeSchedule) String() string {
	if len(s) == 0 {
		return "none"
	}
	fs := make([]string, len(s))
	for i, d := range s {
		fs[i] = strconv.Itoa(d)
	}
	return strings.Join(fs, ",")
}

// Notice is what a notice event adds to the invoice it carries.
type Notice struct {
	Kind         string    `json:"kind"`          // reminder or overdue
	Step         int       `json:"step"`          // its day in the schedule, from the due date
	DaysPastDue  int       `json:"days_past_due"` // on the day it was sent (≤ 0: not yet due)
	SentOn       date.Date `json:"sent_on"`
	SkippedSteps []int     `json:"skipped_steps"` // earlier steps whose day passed unsent (the invoice was new, or the scheduler down)
}

// InvoiceNotice is the payload of a notice event: the invoice (at the
// version the notice gave it) and the notice.
type InvoiceNotice struct {
	Invoice
	Notice Notice `json:"notice"`
}

// NoticesReport is what one SendNotices run did.
type NoticesReport struct {
	Reminders, Overdue int
}

// NoticesSource is the ce_source of the notices.
const NoticesSource = "/tally/scheduler/notices"

// SendNotices sends the notices of schedule due on today: for each open
// invoice with something left to pay whose latest step due by today was
// not sent, one event for that step (earlier unsent steps are skipped for
// good: an invoice found 40 days past due gets the 30-day notice, not five).
// What was sent is recorded in invoice_notices in the transaction that
// writes the event, with the invoice locked: a step is sent once however
// often SendNotices runs and with several schedulers at once (they share
// the invoices, SKIP LOCKED), and never for an invoice that is paid, void
// or deleted when the notice is written, nor an overdue notice before the
// due date. A notice bumps the invoice's version, like every event of it,
// and carries the whole invoice. Invoices are taken batch at a time
// (default 200).
func SendNotices(ctx context.Context, pool *pgxpool.Pool, schedule NoticeSchedule, today date.Date, batch int) (NoticesReport, error) {
	var rep NoticesReport
	if len(schedule) == 0 {
		return rep, nil
	}
	if batch <= 0 {
		batch = 200
	}
	m := Meta{Source: NoticesSource, CorrelationID: envelope.NewID().String(), Now: time.Now()}
	for {
		n, err := noticeBatch(ctx, pool, m, schedule, today, batch, &rep)
		if err != nil {
			return rep, fmt.Errorf("sending invoice notices: %w", err)
		}
		if n < batch {
			return rep, nil
		}
	}
}

func noticeBatch(ctx context.Context, pool *pgxpool.Pool, m Meta, schedule NoticeSchedule, today date.Date, batch int, rep *NoticesReport) (int, error) {
	tx, err := postgres.Begin(ctx, pool)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	steps := []int(schedule)
	// The invoices whose latest step due by today is unsent, locked: the
	// recheck of status = 'open' after the lock (READ COMMITTED's
	// re-evaluation of a locked row) sees a payment that committed first.
	rows, err := tx.Query(ctx, `
		SELECT i.id, s.latest FROM invoices i
		CROSS JOIN LATERAL (SELECT max(d) AS latest FROM unnest($2::int[]) AS d WHERE i.due_at + d <= $1::date) s
		WHERE i.status = 'open' AND i.total > i.amount_paid AND s.latest IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM invoice_notices n WHERE n.invoice_id = i.id AND n.step >= s.latest)
		ORDER BY i.id LIMIT $3
		FOR NO KEY UPDATE OF i SKIP LOCKED`, today, steps, batch)
	if err != nil {
		return 0, err
	}
	type due struct {
		id   string
		step int
	}
	var dues []due
	var d due
	if _, err := pgx.ForEachRow(rows, []any{&d.id, &d.step}, func() error { dues = append(dues, d); return nil }); err != nil {
		return 0, err
	}
	var evs []envelope.Event
	for _, d := range dues {
		inv, err := getInvoice(ctx, tx, d.id, true)
		if err != nil {
			return 0, err
		}
		pastDue := today.Days() - inv.DueAt.Days()
		if inv.Status != StatusOpen || inv.AmountDue <= 0 || pastDue < d.step {
			continue // changed since it was chosen: nothing to say
		}
		var sent []int
		if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(step), '{}') FROM invoice_notices WHERE invoice_id = $1`,
			d.id).Scan(&sent); err != nil {
			return 0, err
		}
		// The choice was made on the statement's snapshot: a scheduler that
		// sent this step and committed before the lock was taken is seen
		// only now.
		if slices.ContainsFunc(sent, func(s int) bool { return s >= d.step }) {
			continue
		}
		var skipped []int
		for _, s := range steps {
			if s < d.step && !slices.Contains(sent, s) {
				skipped = append(skipped, s)
			}
		}
		kind, typ := "reminder", "tally.invoice.reminder_sent.v1"
		if d.step > 0 {
			kind, typ = "overdue", "tally.invoice.overdue.v1"
		}
		inv.Version++
		inv.UpdatedAt = m.now()
		ev, err := m.event(typ, inv.ID, inv.Version, "", InvoiceNotice{Invoice: inv,
			Notice: Notice{Kind: kind, Step: d.step, DaysPastDue: pastDue, SentOn: today, SkippedSteps: cmpOrEmpty(skipped)}})
		if err != nil {
			return 0, err
		}
		// The id is the invoice's and the step's: a notice written again
		// (a lost record of it) has the same id, which consumers pass over.
		ev.ID = envelope.DerivedID(today.Time(), "invoice-notice", inv.ID, strconv.Itoa(d.step))
		if err := outbox.Check(&ev); err != nil {
			return 0, fmt.Errorf("notice of invoice %q: %w", inv.ID, err)
		}
		evs = append(evs, ev)
		if err := saveInvoice(tx, inv); err != nil {
			return 0, err
		}
		tx.Queue(`INSERT INTO invoice_notices (invoice_id, step, sent, sent_on, event_id)
			SELECT $1, s, s = $2, $3, CASE WHEN s = $2 THEN $4::uuid END FROM unnest($5::int[]) AS s`,
			inv.ID, d.step, today, ev.ID, append(skipped, d.step))
		if kind == "reminder" {
			rep.Reminders++
		} else {
			rep.Overdue++
		}
	}
	var b pgx.Batch
	outbox.QueueChecked(&b, evs...)
	if err := tx.Commit(ctx, &b); err != nil {
		return 0, Explain(err)
	}
	return len(dues), nil
}

func cmpOrEmpty(xs []int) []int {
	if xs == nil {
		return []int{}
	}
	return xs
}
