package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/money"
)

// Invoice states. An open invoice can be updated, paid, voided or (without
// payments) deleted; paid, void and deleted are final.
const (
	StatusOpen    = "open"
	StatusPaid    = "paid"
	StatusVoid    = "void"
	StatusDeleted = "deleted"
)

// Limits on what one invoice may hold.
const (
	maxLines         = 500
	maxQuantity      = 1_000_000
	maxServiceDays   = 3660 // ten years
	maxDescriptionCh = 500
)

// Invoice is an invoice as its events carry it. Money is in minor units of
// Currency.
type Invoice struct {
	ID         string     `json:"id"`
	CustomerID string     `json:"customer_id"`
	Currency   string     `json:"currency"`
	Status     string     `json:"status"`
	IssuedAt   date.Date  `json:"issued_at"`
	DueAt      date.Date  `json:"due_at"`
	Lines      []Line     `json:"lines"`
	Subtotal   int64      `json:"subtotal"`
	Discount   int64      `json:"discount"`
	Tax        int64      `json:"tax"`
	Total      int64      `json:"total"`
	AmountPaid int64      `json:"amount_paid"`
	AmountDue  int64      `json:"amount_due"`
	PaidAt     *date.Date `json:"paid_at,omitempty"`
	VoidedAt   *time.Time `json:"voided_at,omitempty"`
	DeletedAt  *time.Time `json:"deleted_at,omitempty"`
	Version    int64      `json:"version"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
}

// Line is one invoice line: Amount is the unit amount, Total is Amount ×
// Quantity.
type Line struct {
	Description   string  `json:"description"`
	Amount        int64   `json:"amount"`
	Quantity      int64   `json:"quantity"`
	Total         int64   `json:"total"`
	ServicePeriod *Period `json:"service_period,omitempty"`
}

// Period is a service period, both ends inclusive.
type Period struct {
	Start date.Date `json:"start"`
	End   date.Date `json:"end"`
}

// Payment is one payment against an invoice.
type Payment struct {
	ID        string    `json:"id"`
	InvoiceID string    `json:"invoice_id"`
	Amount    int64     `json:"amount"`
	PaidAt    date.Date `json:"paid_at"`
	CreatedAt time.Time `json:"created_at"`
}

// InvoiceWithPayments is an invoice as the API returns it.
type InvoiceWithPayments struct {
	Invoice
	Payments []Payment `json:"payments"`
}

// InvoiceInput creates an invoice (customer_id, currency, issued_at, due_at
// and lines required) or patches an open one (only the fields given change;
// lines, when given, replace all lines). Dates are YYYY-MM-DD; money is in
// minor units.
type InvoiceInput struct {
	ID         *string      `json:"id"`
	CustomerID *string      `json:"customer_id"`
	Currency   *string      `json:"currency"`
	IssuedAt   *string      `json:"issued_at"`
	DueAt      *string      `json:"due_at"`
	Lines      *[]LineInput `json:"lines"`
	Discount   *int64       `json:"discount"`
	Tax        *int64       `json:"tax"`
}

// LineInput is one line of an InvoiceInput; quantity defaults to 1.
type LineInput struct {
	Description   *string      `json:"description"`
	Amount        *int64       `json:"amount"`
	Quantity      *int64       `json:"quantity"`
	ServicePeriod *PeriodInput `json:"service_period"`
}

// PeriodInput is a service period of a LineInput.
type PeriodInput struct {
	Start *string `json:"start"`
	End   *string `json:"end"`
}

// PaymentInput records a payment; paid_at defaults to today (UTC).
type PaymentInput struct {
	ID     *string `json:"id"`
	Amount *int64  `json:"amount"`
	PaidAt *string `json:"paid_at"`
}

func parseDate(p *problems, field string, s *string, required bool) (date.Date, bool) {
	if s == nil {
		if required {
			p.required(field)
		}
		return date.Date{}, false
	}
	d, err := date.Parse(*s)
	switch {
	case err != nil:
		p.add(field, "must be a date YYYY-MM-DD")
		return date.Date{}, false
	case d.Before(earliest):
		p.add(field, "must not be before %s", earliest)
		return date.Date{}, false
	}
	return d, true
}

// earliest is the first business date Tally accepts; anything before is a
// typo, not a record.
var earliest = date.New(1900, 1, 1)

func checkLines(p *problems, in []LineInput) []Line {
	if len(in) == 0 || len(in) > maxLines {
		p.add("lines", "must hold 1 to %d lines", maxLines)
		return nil
	}
	lines := make([]Line, len(in))
	for i, l := range in {
		f := fmt.Sprintf("lines[%d].", i)
		out := &lines[i]
		switch {
		case l.Description == nil:
			p.required(f + "description")
		case !plainText(*l.Description, maxDescriptionCh):
			p.add(f+"description", "must be 1 to %d characters, not blank, without control characters", maxDescriptionCh)
		default:
			out.Description = *l.Description
		}
		switch {
		case l.Amount == nil:
			p.required(f + "amount")
		case *l.Amount < 0:
			p.add(f+"amount", "must not be negative")
		default:
			out.Amount = *l.Amount
		}
		out.Quantity = 1
		if l.Quantity != nil {
			if *l.Quantity < 1 || *l.Quantity > maxQuantity {
				p.add(f+"quantity", "must be from 1 to %d", maxQuantity)
			}
			out.Quantity = *l.Quantity
		}
		if total, err := money.Mul(out.Amount, out.Quantity); err != nil {
			p.add(f+"amount", "amount × quantity is too large")
		} else {
			out.Total = total
		}
		if sp := l.ServicePeriod; sp != nil {
			start, ok1 := parseDate(p, f+"service_period.start", sp.Start, true)
			end, ok2 := parseDate(p, f+"service_period.end", sp.End, true)
			switch {
			case !ok1 || !ok2:
			case end.Before(start):
				p.add(f+"service_period.end", "must not be before start")
			case end.DaysSince(start) >= maxServiceDays:
				p.add(f+"service_period", "must not be longer than %d days", maxServiceDays)
			default:
				out.ServicePeriod = &Period{start, end}
			}
		}
	}
	return lines
}

// settle recomputes the totals of inv from its lines, discount and tax.
func settle(p *problems, inv *Invoice) {
	sub := int64(0)
	for _, l := range inv.Lines {
		var err error
		if sub, err = money.Add(sub, l.Total); err != nil {
			p.add("lines", "the sum of the lines is too large")
			return
		}
	}
	inv.Subtotal = sub
	switch {
	case inv.Discount < 0:
		p.add("discount", "must not be negative")
	case inv.Discount > sub:
		p.add("discount", "must not exceed the sum of the lines (%d)", sub)
	}
	if inv.Tax < 0 {
		p.add("tax", "must not be negative")
	}
	total, err := money.Add(sub-inv.Discount, inv.Tax)
	if err != nil {
		p.add("tax", "the total is too large")
	}
	inv.Total = total
	inv.AmountDue = inv.Total - inv.AmountPaid
}

// apply copies the fields of in onto inv, validating them.
func apply(p *problems, inv *Invoice, in InvoiceInput, creating bool) {
	if in.CustomerID != nil {
		if !idPattern.MatchString(*in.CustomerID) {
			p.add("customer_id", "is not a valid id")
		}
		inv.CustomerID = *in.CustomerID
	} else if creating {
		p.required("customer_id")
	}
	if in.Currency != nil {
		if _, err := money.ParseCurrency(*in.Currency); err != nil {
			p.add("currency", "must be an ISO 4217 code such as USD")
		}
		inv.Currency = *in.Currency
	} else if creating {
		p.required("currency")
	}
	if d, ok := parseDate(p, "issued_at", in.IssuedAt, creating); ok {
		inv.IssuedAt = d
	}
	if d, ok := parseDate(p, "due_at", in.DueAt, creating); ok {
		inv.DueAt = d
	}
	if !inv.IssuedAt.IsZero() && !inv.DueAt.IsZero() && inv.DueAt.Before(inv.IssuedAt) {
		p.add("due_at", "must not be before issued_at")
	}
	if in.Lines != nil {
		inv.Lines = checkLines(p, *in.Lines)
	} else if creating {
		p.required("lines")
	}
	if in.Discount != nil {
		inv.Discount = *in.Discount
	}
	if in.Tax != nil {
		inv.Tax = *in.Tax
	}
	if len(*p) == 0 {
		settle(p, inv)
	}
}

// CreateInvoice issues an open invoice and returns its created event. An
// invoice whose total is zero is settled at once: created is followed by
// paid, dated the issue date.
func CreateInvoice(ctx context.Context, tx Tx, m Meta, in InvoiceInput) (InvoiceWithPayments, []envelope.Event, error) {
	var p problems
	now := m.now()
	inv := Invoice{ID: checkID(&p, in.ID, "inv"), Status: StatusOpen, Version: 1, CreatedAt: now, UpdatedAt: now}
	apply(&p, &inv, in, true)
	if err := p.err(); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	created, err := m.event("tally.invoice.created.v1", inv.ID, inv.Version, "", inv)
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	evs := []envelope.Event{created}
	if inv.Total == 0 {
		// Nothing is due, so nothing could ever be paid: like Stripe, a
		// zero invoice is settled as it is issued.
		paid, err := markPaid(m, &inv, inv.IssuedAt, created.ID.String())
		if err != nil {
			return InvoiceWithPayments{}, nil, err
		}
		evs = append(evs, paid)
	}
	lines, err := json.Marshal(inv.Lines)
	if err != nil {
		return InvoiceWithPayments{}, nil, fmt.Errorf("encoding invoice lines: %w", err)
	}
	tx.Queue(`INSERT INTO invoices (id, customer_id, currency, status, issued_at, due_at, lines,
			subtotal, discount, tax, total, amount_paid, paid_at, version, created_at, updated_at)
		VALUES ($1, `+knownCustomer+`, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13, $14, $15)`,
		inv.ID, inv.CustomerID, inv.Currency, inv.Status, inv.IssuedAt, inv.DueAt, lines,
		inv.Subtotal, inv.Discount, inv.Tax, inv.Total, inv.PaidAt, inv.Version, inv.CreatedAt, inv.UpdatedAt)
	return InvoiceWithPayments{inv, []Payment{}}, evs, nil
}

// markPaid settles inv on the given date and returns its paid event, caused
// by the event named cause.
func markPaid(m Meta, inv *Invoice, on date.Date, cause string) (envelope.Event, error) {
	inv.Status, inv.PaidAt = StatusPaid, &on
	inv.Version++
	return m.event("tally.invoice.paid.v1", inv.ID, inv.Version, cause, *inv)
}

// UpdateInvoice patches an open invoice. A patch that changes nothing
// returns the invoice and no event. The new total must cover what was paid;
// a total equal to it (zero included) settles the invoice, which then also
// emits paid, dated today.
func UpdateInvoice(ctx context.Context, tx Tx, m Meta, id string, in InvoiceInput) (InvoiceWithPayments, []envelope.Event, error) {
	var p problems
	if in.ID != nil && *in.ID != id {
		p.add("id", "cannot change")
	}
	if in == (InvoiceInput{ID: in.ID}) {
		p.add("", "give at least one field to change")
	}
	if err := p.err(); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	inv, err := lockOpenInvoice(ctx, tx, id, "update")
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	next := inv
	apply(&p, &next, in, false)
	if err := p.err(); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	if inv.AmountPaid > 0 {
		if next.Currency != inv.Currency {
			return InvoiceWithPayments{}, nil, fmt.Errorf("%w: invoice %q has payments in %s; its currency cannot change", ErrConflict, id, inv.Currency)
		}
		if next.Total < inv.AmountPaid {
			return InvoiceWithPayments{}, nil, fmt.Errorf("%w: invoice %q: the new total %d is less than the %d already paid", ErrConflict, id, next.Total, inv.AmountPaid)
		}
	}
	if sameInvoice(inv, next) {
		return withPayments(ctx, tx, inv, nil)
	}
	next.Version++
	next.UpdatedAt = m.now()
	var evs []envelope.Event
	ev, err := m.event("tally.invoice.updated.v1", id, next.Version, "", next)
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	evs = append(evs, ev)
	if next.AmountDue == 0 {
		paid, err := markPaid(m, &next, date.Of(m.now()), ev.ID.String())
		if err != nil {
			return InvoiceWithPayments{}, nil, err
		}
		evs = append(evs, paid)
	}
	if err := saveInvoice(tx, next); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	return withPayments(ctx, tx, next, evs)
}

func sameInvoice(a, b Invoice) bool {
	if len(a.Lines) != len(b.Lines) {
		return false
	}
	for i := range a.Lines {
		x, y := a.Lines[i], b.Lines[i]
		if x.Description != y.Description || x.Amount != y.Amount || x.Quantity != y.Quantity ||
			(x.ServicePeriod == nil) != (y.ServicePeriod == nil) ||
			(x.ServicePeriod != nil && *x.ServicePeriod != *y.ServicePeriod) {
			return false
		}
	}
	return a.CustomerID == b.CustomerID && a.Currency == b.Currency && a.IssuedAt == b.IssuedAt &&
		a.DueAt == b.DueAt && a.Discount == b.Discount && a.Tax == b.Tax
}

// PayInvoice records a payment. The payment that settles the invoice also
// emits paid, caused by its payment_received.
func PayInvoice(ctx context.Context, tx Tx, m Meta, id string, in PaymentInput) (InvoiceWithPayments, []envelope.Event, error) {
	var p problems
	payID := checkID(&p, in.ID, "pay")
	switch {
	case in.Amount == nil:
		p.required("amount")
	case *in.Amount <= 0:
		p.add("amount", "must be positive")
	}
	paidAt := date.Of(m.now())
	if d, ok := parseDate(&p, "paid_at", in.PaidAt, false); ok {
		paidAt = d
	}
	if err := p.err(); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	inv, err := lockOpenInvoice(ctx, tx, id, "pay")
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	if *in.Amount > inv.AmountDue {
		return InvoiceWithPayments{}, nil, fmt.Errorf("%w: invoice %q: a payment of %d exceeds the %d due", ErrConflict, id, *in.Amount, inv.AmountDue)
	}
	now := m.now()
	pay := Payment{ID: payID, InvoiceID: id, Amount: *in.Amount, PaidAt: paidAt, CreatedAt: now}
	tx.Queue(`INSERT INTO payments (id, invoice_id, amount, paid_at, created_at) VALUES ($1, $2, $3, $4, $5)`,
		pay.ID, pay.InvoiceID, pay.Amount, pay.PaidAt, pay.CreatedAt)
	inv.AmountPaid += pay.Amount
	inv.AmountDue -= pay.Amount
	inv.Version++
	inv.UpdatedAt = now
	received, err := m.event("tally.invoice.payment_received.v1", id, inv.Version, "", paymentReceived{
		InvoiceID: id, CustomerID: inv.CustomerID, PaymentID: pay.ID, Currency: inv.Currency, Amount: pay.Amount,
		PaidAt: pay.PaidAt, Total: inv.Total, AmountPaid: inv.AmountPaid, AmountDue: inv.AmountDue,
	})
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	evs := []envelope.Event{received}
	if inv.AmountDue == 0 {
		paid, err := markPaid(m, &inv, pay.PaidAt, received.ID.String())
		if err != nil {
			return InvoiceWithPayments{}, nil, err
		}
		evs = append(evs, paid)
	}
	if err := saveInvoice(tx, inv); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	return withPayments(ctx, tx, inv, evs)
}

type paymentReceived struct {
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

// VoidInvoice voids an open invoice; its payments, if any, stay recorded.
func VoidInvoice(ctx context.Context, tx Tx, m Meta, id string) (InvoiceWithPayments, []envelope.Event, error) {
	inv, err := lockOpenInvoice(ctx, tx, id, "void")
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	now := m.now()
	inv.Status, inv.VoidedAt, inv.UpdatedAt = StatusVoid, &now, now
	inv.Version++
	ev, err := m.event("tally.invoice.voided.v1", id, inv.Version, "", inv)
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	if err := saveInvoice(tx, inv); err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	return withPayments(ctx, tx, inv, []envelope.Event{ev})
}

// DeleteInvoice deletes an open invoice that has no payment. The row stays,
// marked deleted, so its audit trail and id remain.
func DeleteInvoice(ctx context.Context, tx Tx, m Meta, id string) (Invoice, []envelope.Event, error) {
	inv, err := lockOpenInvoice(ctx, tx, id, "delete")
	if err != nil {
		return Invoice{}, nil, err
	}
	if inv.AmountPaid > 0 {
		return Invoice{}, nil, fmt.Errorf("%w: invoice %q has payments; void it instead", ErrConflict, id)
	}
	now := m.now()
	inv.Status, inv.DeletedAt, inv.UpdatedAt = StatusDeleted, &now, now
	inv.Version++
	ev, err := m.event("tally.invoice.deleted.v1", id, inv.Version, "", inv)
	if err != nil {
		return Invoice{}, nil, err
	}
	if err := saveInvoice(tx, inv); err != nil {
		return Invoice{}, nil, err
	}
	return inv, []envelope.Event{ev}, nil
}

// GetInvoice reads an invoice and its payments. A deleted invoice is
// ErrGone.
func GetInvoice(ctx context.Context, q Querier, id string) (InvoiceWithPayments, error) {
	inv, err := getInvoice(ctx, q, id, false)
	if err != nil {
		return InvoiceWithPayments{}, err
	}
	if inv.Status == StatusDeleted {
		return InvoiceWithPayments{}, fmt.Errorf("%w: invoice %q was deleted", ErrGone, id)
	}
	iwp, _, err := withPayments(ctx, q, inv, nil)
	return iwp, err
}

// withPayments completes a command's result with the invoice's payments.
func withPayments(ctx context.Context, q Querier, inv Invoice, evs []envelope.Event) (InvoiceWithPayments, []envelope.Event, error) {
	pays, err := payments(ctx, q, inv.ID)
	if err != nil {
		return InvoiceWithPayments{}, nil, err
	}
	return InvoiceWithPayments{inv, pays}, evs, nil
}

// lockOpenInvoice reads and locks an invoice that action requires open.
func lockOpenInvoice(ctx context.Context, tx Tx, id, action string) (Invoice, error) {
	inv, err := getInvoice(ctx, tx, id, true)
	if err != nil {
		return Invoice{}, err
	}
	switch inv.Status {
	case StatusOpen:
		return inv, nil
	case StatusDeleted:
		return Invoice{}, fmt.Errorf("%w: invoice %q was deleted", ErrGone, id)
	default:
		return Invoice{}, fmt.Errorf("%w: cannot %s invoice %q: it is %s", ErrConflict, action, id, inv.Status)
	}
}

const invoiceColumns = `id, customer_id, currency, status, issued_at, due_at, lines, subtotal, discount, tax, total,
	amount_paid, paid_at, voided_at, deleted_at, version, created_at, updated_at`

func getInvoice(ctx context.Context, q Querier, id string, lock bool) (Invoice, error) {
	sql := "SELECT " + invoiceColumns + " FROM invoices WHERE id = $1"
	if lock {
		sql += " FOR NO KEY UPDATE"
	}
	var (
		inv   Invoice
		lines []byte
	)
	err := q.QueryRow(ctx, sql, id).Scan(&inv.ID, &inv.CustomerID, &inv.Currency, &inv.Status, &inv.IssuedAt,
		&inv.DueAt, &lines, &inv.Subtotal, &inv.Discount, &inv.Tax, &inv.Total, &inv.AmountPaid, &inv.PaidAt,
		&inv.VoidedAt, &inv.DeletedAt, &inv.Version, &inv.CreatedAt, &inv.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Invoice{}, fmt.Errorf("%w: invoice %q", ErrNotFound, id)
	}
	if err != nil {
		return Invoice{}, fmt.Errorf("reading invoice: %w", err)
	}
	if err := json.Unmarshal(lines, &inv.Lines); err != nil {
		return Invoice{}, fmt.Errorf("decoding lines of invoice %q: %w", id, err)
	}
	inv.AmountDue = inv.Total - inv.AmountPaid
	inv.CreatedAt, inv.UpdatedAt = inv.CreatedAt.UTC(), inv.UpdatedAt.UTC()
	for _, t := range []*time.Time{inv.VoidedAt, inv.DeletedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return inv, nil
}

// knownCustomer is how invoice writes refer to their customer, $2: an
// unknown id becomes NULL, which the NOT NULL column refuses, so the write
// fails on the server (see migration 003 for why not a foreign key).
const knownCustomer = `(SELECT id FROM customers WHERE id = $2)`

func saveInvoice(tx Tx, inv Invoice) error {
	lines, err := json.Marshal(inv.Lines)
	if err != nil {
		return fmt.Errorf("encoding invoice lines: %w", err)
	}
	tx.Queue(`UPDATE invoices SET customer_id = `+knownCustomer+`, currency = $3, status = $4, issued_at = $5,
			due_at = $6, lines = $7, subtotal = $8, discount = $9, tax = $10, total = $11, amount_paid = $12,
			paid_at = $13, voided_at = $14, deleted_at = $15, version = $16, updated_at = $17
		WHERE id = $1`,
		inv.ID, inv.CustomerID, inv.Currency, inv.Status, inv.IssuedAt, inv.DueAt, lines, inv.Subtotal,
		inv.Discount, inv.Tax, inv.Total, inv.AmountPaid, inv.PaidAt, inv.VoidedAt, inv.DeletedAt, inv.Version,
		inv.UpdatedAt)
	return nil
}

// payments reads an invoice's payments in one row (a JSON array), so that,
// in a Tx, the read travels with the writes queued before it.
func payments(ctx context.Context, q Querier, invoiceID string) ([]Payment, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT coalesce(json_agg(json_build_object('id', id, 'invoice_id', invoice_id,
			'amount', amount, 'paid_at', paid_at, 'created_at', created_at) ORDER BY created_at, id), '[]')
		FROM payments WHERE invoice_id = $1`, invoiceID).Scan(&b)
	if err != nil {
		return nil, fmt.Errorf("reading payments: %w", err)
	}
	pays := []Payment{}
	if err := json.Unmarshal(b, &pays); err != nil {
		return nil, fmt.Errorf("decoding payments: %w", err)
	}
	for i := range pays {
		pays[i].CreatedAt = pays[i].CreatedAt.UTC()
	}
	return pays, nil
}
