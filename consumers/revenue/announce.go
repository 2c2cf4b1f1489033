package revenue

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
)

// AnnounceSource is the ce_source of what Announce emits.
const AnnounceSource = "/tally/scheduler/revenue"

// AnnounceReport is what one Announce run did.
type AnnounceReport struct {
	Invoices   int // invoices looked at
	Recognized int // tally.revenue.recognized.v1 events emitted
	Restated   int // tally.revenue.adjusted.v1 restatements emitted
}

// Announce announces, for every invoice and currency of the ledger, the
// recognition of the days through today that were not announced yet, in
// one tally.revenue.recognized.v1 event (with each day's amount) through
// the outbox; and when days announced before recognize otherwise now (an
// update or a void that arrived after them), the difference, in a
// tally.revenue.adjusted.v1 restatement dated today. What was announced is
// kept in revenue_announcements, written in the transaction that writes
// the events: each day of an invoice is announced once, however often
// Announce runs, and two announcers running at once share the invoices
// (FOR UPDATE SKIP LOCKED) instead of announcing one twice.
//
// Each event's id is derived from the invoice, the currency and the days
// (or the ledger's version, for a restatement): announcing the same days
// again, should the announcements be lost, gives the same ids, which
// consumers pass over. Invoices are taken batch at a time (at most batch,
// default 500, a transaction).
func Announce(ctx context.Context, pool *pgxpool.Pool, today date.Date, batch int) (AnnounceReport, error) {
	if batch <= 0 {
		batch = 500
	}
	var rep AnnounceReport
	correlation := envelope.NewID().String()
	after := ""
	for {
		ids, err := dueInvoices(ctx, pool, today, batch, after)
		if err != nil {
			return rep, fmt.Errorf("announcing revenue: finding due invoices: %w", err)
		}
		if len(ids) == 0 {
			return rep, nil
		}
		after = ids[len(ids)-1]
		if err := announceBatch(ctx, pool, ids, today, correlation, &rep); err != nil {
			return rep, fmt.Errorf("announcing revenue: %w", err)
		}
	}
}

// dueInvoices returns up to n invoices after the id after with something
// to announce: none announced yet, a ledger changed since its
// announcement, or days due.
func dueInvoices(ctx context.Context, pool *pgxpool.Pool, today date.Date, n int, after string) ([]string, error) {
	rows, err := pool.Query(ctx, `
		SELECT invoice_id FROM (
			SELECT l.invoice_id FROM revenue_ledger l
			WHERE NOT EXISTS (SELECT 1 FROM revenue_announcements a WHERE a.invoice_id = l.invoice_id)
			UNION
			SELECT a.invoice_id FROM revenue_announcements a JOIN revenue_ledger l USING (invoice_id)
			WHERE a.version <> l.version
			UNION
			SELECT invoice_id FROM revenue_announcements WHERE next_day <= $1
		) due
		WHERE invoice_id > $3
		ORDER BY invoice_id LIMIT $2`, today, n, after)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// announcement is an invoice's announcement row in one currency.
type announcement struct {
	through   *date.Date
	announced int64
}

func announceBatch(ctx context.Context, pool *pgxpool.Pool, ids []string, today date.Date, correlation string, rep *AnnounceReport) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	type inv struct {
		h       history
		version int64
		seq     int64
		rows    map[string]*row
	}
	invs := map[string]*inv{}
	rows, err := tx.Query(ctx, `SELECT invoice_id, history, version, last_sequence FROM revenue_ledger WHERE invoice_id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id string
		var raw []byte
		v := &inv{}
		if err := rows.Scan(&id, &raw, &v.version, &v.seq); err != nil {
			rows.Close()
			return err
		}
		if err := json.Unmarshal(raw, &v.h); err != nil {
			rows.Close()
			return fmt.Errorf("reading the ledger of invoice %q: %w", id, err)
		}
		v.rows = derive(&v.h)
		invs[id] = v
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	// Every currency an invoice recognizes in has its announcement row;
	// the rows this transaction gets are its to announce.
	var ins pgx.Batch
	for _, id := range ids {
		v := invs[id]
		if v == nil {
			continue
		}
		curs := currencies(v.rows)
		if len(curs) == 0 {
			// Nothing to recognize (only payments known, or no line):
			// a row of no currency records that it was looked at.
			curs = []string{""}
		}
		for _, cur := range curs {
			ins.Queue(`INSERT INTO revenue_announcements (invoice_id, currency, announced, version) VALUES ($1, $2, 0, 0)
				ON CONFLICT DO NOTHING`, id, cur)
		}
	}
	if err := tx.SendBatch(ctx, &ins).Close(); err != nil {
		return err
	}
	type key struct{ id, currency string }
	locked := map[key]announcement{}
	var order []key
	rows, err = tx.Query(ctx, `SELECT invoice_id, currency, through, announced FROM revenue_announcements
		WHERE invoice_id = ANY($1) ORDER BY invoice_id, currency FOR UPDATE SKIP LOCKED`, ids)
	if err != nil {
		return err
	}
	for rows.Next() {
		var k key
		var a announcement
		if err := rows.Scan(&k.id, &k.currency, &a.through, &a.announced); err != nil {
			rows.Close()
			return err
		}
		locked[k] = a
		order = append(order, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	var evs []envelope.Event
	var b pgx.Batch
	for _, k := range order {
		v, a := invs[k.id], locked[k]
		if v == nil {
			continue // the invoice left the ledger: a rebuild took it away
		}
		rep.Invoices++
		mk := func(typ string, id [16]byte, payload any) error {
			cause := v.h.Versions[len(v.h.Versions)-1].EventID // there are rows: there is a version
			data, err := json.Marshal(payload)
			if err != nil {
				return err
			}
			ev := envelope.Event{ID: id, Type: typ, Source: AnnounceSource, Subject: k.id, Time: time.Now().UTC(),
				Sequence: max(v.seq, 1), CorrelationID: correlation, CausationID: cause, Data: data}
			if err := outbox.Check(&ev); err != nil {
				return fmt.Errorf("announcing invoice %q: %w", k.id, err)
			}
			evs = append(evs, ev)
			return nil
		}
		recognized := recognizedRows(v.rows, k.currency)
		first, last, ok := span(recognized)
		if a.through != nil {
			if diff := recognizedThrough(recognized, *a.through) - a.announced; diff != 0 {
				err := mk("tally.revenue.adjusted.v1", envelope.DerivedID(today.Time(), "revenue-announcer", k.id, k.currency, "restated",
					strconv.FormatInt(v.version, 10)), Adjusted{InvoiceID: k.id, CustomerID: v.h.CustomerID, Currency: k.currency,
					EffectiveOn: today, Reason: ReasonRestated, Restated: diff})
				if err != nil {
					return err
				}
				a.announced += diff
				rep.Restated++
			}
		}
		from := first
		if a.through != nil {
			from = a.through.AddDays(1)
		}
		through := a.through
		if ok && !today.Before(from) && !last.Before(from) {
			to := last
			if today.Before(to) {
				to = today
			}
			before := recognizedThrough(recognized, from.AddDays(-1))
			r := Recognized{InvoiceID: k.id, CustomerID: v.h.CustomerID, Currency: k.currency, PeriodStart: from, PeriodEnd: to,
				Days: []Day{}}
			prev := before
			for day := from; !to.Before(day); day = day.AddDays(1) {
				now := recognizedThrough(recognized, day)
				if now != prev {
					r.Days = append(r.Days, Day{Date: day, Amount: now - prev})
				}
				prev = now
			}
			r.Amount = prev - before
			if len(r.Days) > 0 {
				err := mk("tally.revenue.recognized.v1", envelope.DerivedID(from.Time(), "revenue-announcer", k.id, k.currency,
					from.String(), to.String()), r)
				if err != nil {
					return err
				}
				rep.Recognized++
			}
			a.announced += r.Amount
			through = &to
		}
		var next *date.Date
		switch {
		case !ok:
		case through == nil:
			next = &first
		case through.Before(last):
			n := through.AddDays(1)
			next = &n
		}
		b.Queue(`UPDATE revenue_announcements SET through = $3, next_day = $4, announced = $5, version = $6, updated_at = now()
			WHERE invoice_id = $1 AND currency = $2`, k.id, k.currency, through, next, a.announced, v.version)
	}
	outbox.QueueChecked(&b, evs...)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// currencies returns the currencies rows recognize in, sorted.
func currencies(rows map[string]*row) []string {
	var out []string
	for _, r := range rows {
		if r.Basis == Accrual && r.Kind == KindRecognized && !slices.Contains(out, r.Currency) {
			out = append(out, r.Currency)
		}
	}
	slices.Sort(out)
	return out
}

// recognizedRows returns the accrual recognized rows in currency.
func recognizedRows(rows map[string]*row, currency string) []*row {
	var out []*row
	for _, r := range rows {
		if r.Basis == Accrual && r.Kind == KindRecognized && r.Currency == currency {
			out = append(out, r)
		}
	}
	return out
}

// span returns the first and last days rows recognize on.
func span(rows []*row) (first, last date.Date, ok bool) {
	for i, r := range rows {
		if i == 0 || r.Start.Before(first) {
			first = r.Start
		}
		if i == 0 || last.Before(r.End) {
			last = r.End
		}
	}
	return first, last, len(rows) > 0
}

// recognizedThrough is what recognized rows recognize through the end of
// day, a month's row cut at the day.
func recognizedThrough(rows []*row, day date.Date) int64 {
	var sum int64
	for _, r := range rows {
		switch ms := r.Start.MonthStart(); {
		case !day.Before(nextMonth(ms)):
			sum += r.Revenue
		case !day.Before(ms):
			_, _, dom := day.YMD()
			sum += r.Cum[dom-1]
		}
	}
	return sum
}
