// Package revenue is the revenue consumer group: from invoice events it
// keeps a projection of every invoice (its customer, currency, status,
// total, what is paid and due) and the revenue ledger, and announces the
// ledger's changes as revenue events (tally.revenue.v1).
//
// Recognition follows ASC 606 / IFRS 15 on the accrual basis: an invoice
// books its net amount (its lines less its discount, allocated over the
// lines in proportion to their totals; tax is never revenue) as deferred
// revenue on its issue date. A line with a service period is recognized
// ratably by day over it, both ends inclusive (UTC); one without, on the
// issue date; service days before the issue date are caught up on it.
// Rounding is cumulative (see schedule.go): every day is within one minor
// unit of exact, and the total is exact. An update of an open invoice
// adjusts the deferred revenue by the change of its net amount and spreads
// what remains to recognize over the rest of the service period, from the
// update's date on; what was recognized before it is not rewritten. A void
// or a delete reverses what was recognized, on its date, and cancels the
// deferred revenue left. Payments, reminders and overdue notices change
// nothing on the accrual basis; the cash basis recognizes each payment's
// share of the net amount on its date. Each currency is a ledger of its
// own: nothing is converted.
//
// Events of the invoice topic carry the whole invoice: each adds a
// version to the invoice's history, and the invoice's ledger rows are
// derived from the whole history again (ledger.go), so events applied
// late, twice or out of order end in the same ledger. The group emits
// tally.revenue.deferred.v1, .adjusted.v1 and .reversed.v1 as its rows
// change, caused by the invoice event that changed them; recognition day by
// day is announced by the scheduler (Announce), as days pass.
package revenue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/date"
)

// Topics the group reads.
var Topics = []string{"tally.invoices.v1"}

// Group returns the revenue group's declaration.
func Group() *consumer.Group {
	g := consumer.NewGroup("revenue", Topics...).
		Projections("revenue_invoices", "revenue_ledger", "revenue_entries").
		BatchState(loadLedgers, saveLedgers)
	for _, typ := range []string{"tally.invoice.created.v1", "tally.invoice.updated.v1", "tally.invoice.paid.v1",
		"tally.invoice.voided.v1", "tally.invoice.deleted.v1", "tally.invoice.reminder_sent.v1", "tally.invoice.overdue.v1"} {
		consumer.Handle(g, typ, applySnapshot)
	}
	consumer.Handle(g, "tally.invoice.payment_received.v1", applyPayment)
	return g
}

// snapshot is what the group reads of an invoice event's payload.
type snapshot struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Currency   string    `json:"currency"`
	Status     string    `json:"status"`
	IssuedAt   date.Date `json:"issued_at"`
	Lines      []struct {
		Total         int64 `json:"total"`
		ServicePeriod *struct {
			Start date.Date `json:"start"`
			End   date.Date `json:"end"`
		} `json:"service_period"`
	} `json:"lines"`
	Subtotal   int64      `json:"subtotal"`
	Discount   int64      `json:"discount"`
	Tax        int64      `json:"tax"`
	Total      int64      `json:"total"`
	AmountPaid int64      `json:"amount_paid"`
	AmountDue  int64      `json:"amount_due"`
	UpdatedAt  time.Time  `json:"updated_at"`
	VoidedAt   *time.Time `json:"voided_at"`
	DeletedAt  *time.Time `json:"deleted_at"`
}

// terms returns the snapshot's revenue terms: its discount allocated over
// its lines in proportion to their totals.
func (s *snapshot) terms() (terms, error) {
	var sum int64
	totals := make([]int64, len(s.Lines))
	for i, l := range s.Lines {
		if l.Total < 0 {
			return terms{}, fmt.Errorf("line %d has a negative total %d", i+1, l.Total)
		}
		totals[i] = l.Total
		sum += l.Total
	}
	switch {
	case sum != s.Subtotal:
		return terms{}, fmt.Errorf("the lines sum to %d, the subtotal says %d", sum, s.Subtotal)
	case s.Discount < 0 || s.Discount > s.Subtotal:
		return terms{}, fmt.Errorf("discount %d is not within the subtotal %d", s.Discount, s.Subtotal)
	}
	shares := spread(s.Discount, totals)
	t := terms{Currency: s.Currency, Issued: s.IssuedAt, Net: s.Subtotal - s.Discount, Total: s.Total,
		Lines: make([]lineTerms, len(s.Lines))}
	for i, l := range s.Lines {
		t.Lines[i].Net = l.Total - shares[i]
		if p := l.ServicePeriod; p != nil {
			if p.End.Before(p.Start) {
				return terms{}, fmt.Errorf("line %d's service period ends %s, before it starts %s", i+1, p.End, p.Start)
			}
			start, end := p.Start, p.End
			t.Lines[i].Start, t.Lines[i].End = &start, &end
		}
	}
	return t, nil
}

// effective is when the snapshot's change took effect: the date it was
// voided, deleted or last updated.
func (s *snapshot) effective() date.Date {
	switch {
	case s.VoidedAt != nil:
		return date.Of(*s.VoidedAt)
	case s.DeletedAt != nil:
		return date.Of(*s.DeletedAt)
	}
	return date.Of(s.UpdatedAt)
}

func applySnapshot(ctx context.Context, tx consumer.Tx, e consumer.Event[snapshot]) error {
	p := &e.Payload
	if p.ID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payload of invoice %q is about %q", e.Subject, p.ID))
	}
	t, err := p.terms()
	if err != nil {
		return consumer.Permanent(fmt.Errorf("invoice %q: %w", p.ID, err))
	}
	tx.Queue(`INSERT INTO revenue_invoices AS r (invoice_id, customer_id, currency, status, total, amount_paid,
			amount_due, last_sequence, last_event_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp())
		ON CONFLICT (invoice_id) DO UPDATE SET customer_id = excluded.customer_id, currency = excluded.currency,
			status = excluded.status, total = excluded.total, amount_paid = excluded.amount_paid,
			amount_due = excluded.amount_due, last_sequence = excluded.last_sequence,
			last_event_at = excluded.last_event_at, updated_at = clock_timestamp()
		WHERE r.last_sequence < excluded.last_sequence`,
		p.ID, p.CustomerID, p.Currency, p.Status, p.Total, p.AmountPaid, p.AmountDue, e.Sequence, e.Time)

	l := e.BatchState().(*ledgers).get(e.Subject)
	if !l.h.addVersion(version{Seq: e.Sequence, EventID: e.ID.String(), Status: p.Status, Effective: p.effective(), Terms: t}) {
		return nil // known already
	}
	if e.Sequence >= l.lastSeq {
		l.h.CustomerID = p.CustomerID
	}
	return l.update(e.Subject, e.Sequence, e)
}

// payment is what the group reads of a payment_received payload.
type payment struct {
	InvoiceID  string    `json:"invoice_id"`
	CustomerID string    `json:"customer_id"`
	PaymentID  string    `json:"payment_id"`
	Currency   string    `json:"currency"`
	Amount     int64     `json:"amount"`
	PaidAt     date.Date `json:"paid_at"`
	Total      int64     `json:"total"`
	AmountPaid int64     `json:"amount_paid"`
	AmountDue  int64     `json:"amount_due"`
}

func applyPayment(ctx context.Context, tx consumer.Tx, e consumer.Event[payment]) error {
	p := &e.Payload
	if p.InvoiceID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payment of invoice %q is about %q", e.Subject, p.InvoiceID))
	}
	if p.AmountPaid > p.Total {
		return consumer.Permanent(fmt.Errorf("payment %q of invoice %q: %d paid of a total of %d", p.PaymentID, p.InvoiceID, p.AmountPaid, p.Total))
	}
	// An invoice seen first through a payment (its created event set aside)
	// is open: a payment that settles it is followed by its paid event.
	tx.Queue(`INSERT INTO revenue_invoices AS r (invoice_id, customer_id, currency, status, total, amount_paid,
			amount_due, last_sequence, last_event_at, updated_at)
		VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, clock_timestamp())
		ON CONFLICT (invoice_id) DO UPDATE SET total = excluded.total, amount_paid = excluded.amount_paid,
			amount_due = excluded.amount_due, last_sequence = excluded.last_sequence,
			last_event_at = excluded.last_event_at, updated_at = clock_timestamp()
		WHERE r.last_sequence < excluded.last_sequence`,
		p.InvoiceID, p.CustomerID, p.Currency, p.Total, p.AmountPaid, p.AmountDue, e.Sequence, e.Time)

	l := e.BatchState().(*ledgers).get(e.Subject)
	if !l.h.addPayment(paymentRec{Seq: e.Sequence, ID: p.PaymentID, Currency: p.Currency, Amount: p.Amount,
		PaidAt: p.PaidAt, AmountPaid: p.AmountPaid, Total: p.Total}) {
		return nil
	}
	if l.h.CustomerID == "" {
		l.h.CustomerID = p.CustomerID
	}
	return l.update(e.Subject, e.Sequence, e)
}

// ledgers is the group's batch state: the ledgers of the batch's invoices,
// read in one query, changed by the handlers as they apply events, and
// written once, at the end of the batch (saveLedgers).
type ledgers struct {
	byID  map[string]*ledger
	order []string // the ledgers changed, in the order of their first change
}

// ledger is one invoice's ledger as the batch has it.
type ledger struct {
	h       history
	version int64           // of the row in revenue_ledger (0: none yet)
	lastSeq int64           // the highest sequence the history holds
	rows    map[string]*row // derive(h): what revenue_entries will hold
	saved   map[string]*row // what revenue_entries holds, once the batch changed the ledger
	changed bool
}

func (s *ledgers) get(id string) *ledger {
	l := s.byID[id]
	if l == nil {
		l = &ledger{}
		s.byID[id] = l
	}
	return l
}

func loadLedgers(ctx context.Context, tx consumer.Tx, ids []string) (any, error) {
	rows, err := tx.Query(ctx, `SELECT invoice_id, history, version, last_sequence FROM revenue_ledger WHERE invoice_id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	s := &ledgers{byID: make(map[string]*ledger, len(ids))}
	for rows.Next() {
		var id string
		var raw []byte
		l := &ledger{}
		if err := rows.Scan(&id, &raw, &l.version, &l.lastSeq); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, &l.h); err != nil {
			return nil, fmt.Errorf("reading the ledger of invoice %q: %w", id, err)
		}
		s.byID[id] = l
	}
	return s, rows.Err()
}

// update takes in the history's newest event, seq, and announces through
// a what it changed of invoice id's rows. The rows are written by
// saveLedgers.
func (l *ledger) update(id string, seq int64, a emitter) error {
	old := l.rows
	if old == nil && l.version > 0 {
		// The rows as the history before this event made them: derive
		// is a function of the history, and the event is its newest.
		prev := l.h
		prev.Versions = without(l.h.Versions, seq, func(v version) int64 { return v.Seq })
		prev.Payments = without(l.h.Payments, seq, func(p paymentRec) int64 { return p.Seq })
		old = derive(&prev)
	}
	if !l.changed {
		l.saved, l.changed = old, true
	}
	next := deriveAfter(&l.h, seq, old)
	if l.version == 0 || !sameRows(old, next) {
		l.version++
	}
	if err := announce(a, id, seq, l.h, old, next); err != nil {
		return err
	}
	l.rows = next
	l.lastSeq = max(l.lastSeq, seq)
	return nil
}

func sameRows(a, b map[string]*row) bool {
	if len(a) != len(b) {
		return false
	}
	for k, r := range a {
		if o := b[k]; o == nil || !o.same(r) {
			return false
		}
	}
	return true
}

// saveLedgers writes the ledgers the batch changed: each one's row in
// revenue_ledger, and its entries that differ from what revenue_entries
// held, in three statements for the whole batch.
func saveLedgers(ctx context.Context, tx consumer.Tx, state any) error {
	s := state.(*ledgers)
	var (
		led  ledgerCols
		ent  entryCols
		gone entryKeys
	)
	ids := make([]string, 0, len(s.byID))
	for id, l := range s.byID {
		if l.changed {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids) // a stable lock order among concurrent batches
	for _, id := range ids {
		l := s.byID[id]
		raw, err := json.Marshal(&l.h)
		if err != nil {
			return fmt.Errorf("encoding the ledger of invoice %q: %w", id, err)
		}
		led.add(id, l.h.CustomerID, raw, l.version, l.lastSeq)
		for _, k := range sortedKeys(l.rows) {
			if r, o := l.rows[k], l.saved[k]; o == nil || !o.same(r) {
				ent.add(id, r)
			}
		}
		for _, k := range sortedKeys(l.saved) {
			if o := l.saved[k]; l.rows[k] == nil {
				gone.add(id, o)
			}
		}
	}
	if len(gone.invoice) > 0 {
		tx.Queue(`DELETE FROM revenue_entries e USING unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS g(invoice_id, basis, kind, key)
			WHERE e.invoice_id = g.invoice_id AND e.basis = g.basis AND e.kind = g.kind AND e.key = g.key`,
			gone.invoice, gone.basis, gone.kind, gone.key)
	}
	if len(ent.invoice) > 0 {
		tx.Queue(upsertEntriesSQL, ent.invoice, ent.basis, ent.kind, ent.key, ent.customer, ent.currency, ent.date,
			ent.start, ent.end, ent.revenue, ent.deferred, ent.cum, ent.seq, ent.eventID)
	}
	if len(led.invoice) > 0 {
		tx.Queue(`INSERT INTO revenue_ledger (invoice_id, customer_id, history, version, last_sequence, updated_at)
			SELECT l.*, clock_timestamp() FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[], $5::bigint[]) AS l
			ON CONFLICT (invoice_id) DO UPDATE SET customer_id = excluded.customer_id, history = excluded.history,
				version = excluded.version, last_sequence = excluded.last_sequence, updated_at = excluded.updated_at`,
			led.invoice, led.customer, led.history, led.version, led.lastSeq)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// ledgerCols are revenue_ledger rows, by column.
type ledgerCols struct {
	invoice, customer []string
	history           []json.RawMessage
	version, lastSeq  []int64
}

func (c *ledgerCols) add(id, customer string, history []byte, version, lastSeq int64) {
	c.invoice, c.customer = append(c.invoice, id), append(c.customer, customer)
	c.history = append(c.history, history)
	c.version, c.lastSeq = append(c.version, version), append(c.lastSeq, lastSeq)
}

// entryKeys are revenue_entries keys, by column.
type entryKeys struct{ invoice, basis, kind, key []string }

func (c *entryKeys) add(id string, r *row) {
	c.invoice, c.basis, c.kind, c.key = append(c.invoice, id), append(c.basis, r.Basis), append(c.kind, r.Kind), append(c.key, r.Key)
}

// entryCols are revenue_entries rows, by column. A row's cum travels as
// the text of its array, since arrays of arrays must be rectangular.
type entryCols struct {
	entryKeys
	customer, currency, cum, eventID []string
	date, start, end                 []date.Date
	revenue, deferred, seq           []int64
}

func (c *entryCols) add(id string, r *row) {
	c.entryKeys.add(id, r)
	c.customer, c.currency, c.eventID = append(c.customer, r.CustomerID), append(c.currency, r.Currency), append(c.eventID, r.EventID)
	c.date, c.start, c.end = append(c.date, r.Date), append(c.start, r.Start), append(c.end, r.End)
	c.revenue, c.deferred, c.seq = append(c.revenue, r.Revenue), append(c.deferred, r.Deferred), append(c.seq, r.Seq)
	c.cum = append(c.cum, cumText(r.Cum))
}

// cumText is the array literal of cum, "" (NULL) for none.
func cumText(cum []int64) string {
	if cum == nil {
		return ""
	}
	b := make([]byte, 0, 8*len(cum)+2)
	b = append(b, '{')
	for i, v := range cum {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, v, 10)
	}
	return string(append(b, '}'))
}

// without returns xs without the element whose sequence is seq.
func without[T any](xs []T, seq int64, seqOf func(T) int64) []T {
	out := make([]T, 0, len(xs))
	for _, x := range xs {
		if seqOf(x) != seq {
			out = append(out, x)
		}
	}
	return out
}

const upsertEntriesSQL = `
INSERT INTO revenue_entries (invoice_id, basis, kind, key, customer_id, currency, entry_date, start_date, end_date,
	revenue, deferred, cum, seq, event_id)
SELECT invoice_id, basis, kind, key, customer_id, currency, entry_date, start_date, end_date,
	revenue, deferred, nullif(cum, '')::bigint[], seq, event_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::date[], $8::date[], $9::date[],
	$10::bigint[], $11::bigint[], $12::text[], $13::bigint[], $14::text[])
	AS e(invoice_id, basis, kind, key, customer_id, currency, entry_date, start_date, end_date, revenue, deferred, cum, seq, event_id)
ON CONFLICT (invoice_id, basis, kind, key) DO UPDATE SET customer_id = excluded.customer_id,
	currency = excluded.currency, entry_date = excluded.entry_date, start_date = excluded.start_date,
	end_date = excluded.end_date, revenue = excluded.revenue, deferred = excluded.deferred, cum = excluded.cum,
	seq = excluded.seq, event_id = excluded.event_id`

// Invoice is the group's projection of one invoice, as GET
// /v1/revenue/invoices/{id} answers it.
type Invoice struct {
	InvoiceID    string    `json:"invoice_id"`
	CustomerID   string    `json:"customer_id"`
	Currency     string    `json:"currency"`
	Status       string    `json:"status"`
	Total        int64     `json:"total"`
	AmountPaid   int64     `json:"amount_paid"`
	AmountDue    int64     `json:"amount_due"`
	LastSequence int64     `json:"last_sequence"`
	LastEventAt  time.Time `json:"last_event_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// ErrNotFound: the projection holds no such invoice (yet).
var ErrNotFound = errors.New("revenue: no such invoice in the projection")

// Querier is a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// GetInvoice reads an invoice's projection.
func GetInvoice(ctx context.Context, q Querier, id string) (Invoice, error) {
	var inv Invoice
	err := q.QueryRow(ctx, `SELECT invoice_id, customer_id, currency, status, total, amount_paid, amount_due,
			last_sequence, last_event_at, updated_at
		FROM revenue_invoices WHERE invoice_id = $1`, id).Scan(&inv.InvoiceID, &inv.CustomerID, &inv.Currency,
		&inv.Status, &inv.Total, &inv.AmountPaid, &inv.AmountDue, &inv.LastSequence, &inv.LastEventAt, &inv.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Invoice{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return Invoice{}, fmt.Errorf("reading the revenue projection: %w", err)
	}
	inv.LastEventAt, inv.UpdatedAt = inv.LastEventAt.UTC(), inv.UpdatedAt.UTC()
	return inv, nil
}
