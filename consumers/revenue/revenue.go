// Package revenue is the revenue consumer group: from invoice events it
// keeps a projection of every invoice (its customer, currency, status,
// total, what is paid and due), the base that revenue recognition builds on.
//
// Invoice events carry the whole invoice, so each one replaces the
// projection, unless the projection already holds a later version (a higher
// ce_sequence): applying events late, twice or out of order ends in the
// same state.
package revenue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/consumer"
)

// Topics the group reads.
var Topics = []string{"tally.invoices.v1"}

// Group returns the revenue group's declaration.
func Group() *consumer.Group {
	g := consumer.NewGroup("revenue", Topics...).Projections("revenue_invoices")
	for _, typ := range []string{"tally.invoice.created.v1", "tally.invoice.updated.v1", "tally.invoice.paid.v1",
		"tally.invoice.voided.v1", "tally.invoice.deleted.v1"} {
		consumer.Handle(g, typ, applySnapshot)
	}
	consumer.Handle(g, "tally.invoice.payment_received.v1", applyPayment)
	return g
}

// snapshot is what the group reads of an invoice event's payload.
type snapshot struct {
	ID         string `json:"id"`
	CustomerID string `json:"customer_id"`
	Currency   string `json:"currency"`
	Status     string `json:"status"`
	Total      int64  `json:"total"`
	AmountPaid int64  `json:"amount_paid"`
	AmountDue  int64  `json:"amount_due"`
}

func applySnapshot(ctx context.Context, tx consumer.Tx, e consumer.Event[snapshot]) error {
	p := e.Payload
	if p.ID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payload of invoice %q is about %q", e.Subject, p.ID))
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
	return nil
}

// payment is what the group reads of a payment_received payload: the
// invoice's amounts after the payment, not the whole invoice.
type payment struct {
	InvoiceID  string `json:"invoice_id"`
	CustomerID string `json:"customer_id"`
	Currency   string `json:"currency"`
	Total      int64  `json:"total"`
	AmountPaid int64  `json:"amount_paid"`
	AmountDue  int64  `json:"amount_due"`
}

func applyPayment(ctx context.Context, tx consumer.Tx, e consumer.Event[payment]) error {
	p := e.Payload
	if p.InvoiceID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payment of invoice %q is about %q", e.Subject, p.InvoiceID))
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
	return nil
}

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
