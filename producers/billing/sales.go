package billing

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
)

// maxProductCh bounds a sale's product.
const maxProductCh = 200

// Sale is a sale as the API returns it and as its events carry it. Amount
// is the gross amount of the sale in minor units of Currency, not a unit
// price (Quantity only counts the items); RefundedAmount is how much of it
// was refunded, from 0 to Amount.
type Sale struct {
	ID             string    `json:"id"`
	CustomerID     string    `json:"customer_id"`
	Currency       string    `json:"currency"`
	Amount         int64     `json:"amount"`
	Quantity       int64     `json:"quantity"`
	Product        string    `json:"product,omitempty"`
	Date           date.Date `json:"date"`
	RefundedAmount int64     `json:"refunded_amount"`
	Lifecycle
}

// SaleInput creates a sale (customer_id, currency, amount and date
// required; quantity defaults to 1) or patches an active one (only the
// fields given change; "" removes the product). A refund is a patch of
// refunded_amount, which a new sale cannot have.
type SaleInput struct {
	ID             *string `json:"id"`
	CustomerID     *string `json:"customer_id"`
	Currency       *string `json:"currency"`
	Amount         *int64  `json:"amount"`
	Quantity       *int64  `json:"quantity"`
	Product        *string `json:"product"`
	Date           *string `json:"date"`
	RefundedAmount *int64  `json:"refunded_amount"`
	// ExternalID is given by the CSV importer only; the JSON API does not
	// take it.
	ExternalID *string `json:"-"`
}

func (in SaleInput) apply(p *problems, s *Sale, creating bool) {
	switch {
	case in.CustomerID != nil:
		if !idPattern.MatchString(*in.CustomerID) {
			p.add("customer_id", "is not a valid id")
		}
		s.CustomerID = *in.CustomerID
	case creating:
		p.required("customer_id")
	}
	setCurrency(p, in.Currency, &s.Currency, creating)
	setAmount(p, in.Amount, &s.Amount, creating)
	if in.Quantity != nil {
		if *in.Quantity < 1 || *in.Quantity > maxQuantity {
			p.add("quantity", "must be from 1 to %d", maxQuantity)
		}
		s.Quantity = *in.Quantity
	}
	if in.Product != nil {
		checkOptionalText(p, "product", *in.Product, maxProductCh, creating)
		s.Product = *in.Product
	}
	if d, ok := parseDate(p, "date", in.Date, creating); ok {
		s.Date = d
	}
	if in.RefundedAmount != nil {
		switch {
		case creating:
			p.add("refunded_amount", "is set by a refund, a PATCH of the sale")
		case *in.RefundedAmount < 0:
			p.add("refunded_amount", "must not be negative")
		default:
			s.RefundedAmount = *in.RefundedAmount
		}
	}
	if len(*p) == 0 && s.RefundedAmount > s.Amount {
		if in.RefundedAmount != nil {
			p.add("refunded_amount", "must not exceed the amount (%d)", s.Amount)
		} else {
			p.add("amount", "must not be less than the %d refunded", s.RefundedAmount)
		}
	}
}

var sales = kind[Sale]{
	noun: "sale", events: "tally.sale", table: "sales",
	columns: `id, customer_id, currency, amount, quantity, coalesce(product, ''), date, refunded_amount, ` + lifecycleColumns,
	scan: func(row pgx.Row) (Sale, error) {
		var s Sale
		err := row.Scan(append([]any{&s.ID, &s.CustomerID, &s.Currency, &s.Amount, &s.Quantity, &s.Product, &s.Date,
			&s.RefundedAmount}, s.Lifecycle.scan()...)...)
		return s, err
	},
	id:   func(s *Sale) string { return s.ID },
	life: func(s *Sale) *Lifecycle { return &s.Lifecycle },
	insert: func(tx Tx, s *Sale) {
		tx.Queue(`INSERT INTO sales (id, customer_id, currency, amount, quantity, product, date, refunded_amount,
				status, external_id, version, created_at, updated_at)
			VALUES ($1, `+knownCustomer+`, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			s.ID, s.CustomerID, s.Currency, s.Amount, s.Quantity, nullable(s.Product), s.Date, s.RefundedAmount,
			s.Status, nullable(s.ExternalID), s.Version, s.CreatedAt, s.UpdatedAt)
	},
	save: func(tx Tx, s *Sale) {
		tx.Queue(`UPDATE sales SET customer_id = `+knownCustomer+`, currency = $3, amount = $4, quantity = $5,
				product = $6, date = $7, refunded_amount = $8, status = $9, version = $10, updated_at = $11,
				deleted_at = $12
			WHERE id = $1`,
			s.ID, s.CustomerID, s.Currency, s.Amount, s.Quantity, nullable(s.Product), s.Date, s.RefundedAmount,
			s.Status, s.Version, s.UpdatedAt, s.DeletedAt)
	},
}

// NewSale validates in, a new sale, and returns the sale it makes (active,
// version 1, created now) without writing it: CreateSale writes one, the
// CSV importer many at once (InsertSales). Whether the customer exists is
// checked by the write.
func NewSale(m Meta, in SaleInput) (Sale, error) {
	var p problems
	s := Sale{ID: checkID(&p, in.ID, "sal"), Quantity: 1, Lifecycle: newLifecycle(&p, m, in.ExternalID)}
	in.apply(&p, &s, true)
	return s, p.err()
}

// SaleCreated returns the created event of s, a sale NewSale made with m.
func SaleCreated(m Meta, s Sale) (envelope.Event, error) { return sales.event(m, "created", &s) }

// CreateSale records a sale of an existing customer and returns its created
// event.
func CreateSale(ctx context.Context, tx Tx, m Meta, in SaleInput) (Sale, []envelope.Event, error) {
	s, err := NewSale(m, in)
	if err != nil {
		return Sale{}, nil, err
	}
	return sales.create(tx, m, s)
}

// UpdateSale patches an active sale; a refund is a patch of
// refunded_amount. A patch that changes nothing returns the sale and no
// event.
func UpdateSale(ctx context.Context, tx Tx, m Meta, id string, in SaleInput) (Sale, []envelope.Event, error) {
	return sales.update(ctx, tx, m, id, in.ID, in == SaleInput{ID: in.ID}, func(p *problems, s *Sale) {
		in.apply(p, s, false)
	})
}

// DeleteSale deletes an active sale. The row stays, marked deleted, so its
// audit trail and id remain; the deleted event carries the sale as it was.
func DeleteSale(ctx context.Context, tx Tx, m Meta, id string) (Sale, []envelope.Event, error) {
	return sales.remove(ctx, tx, m, id)
}

// GetSale reads a sale. A deleted sale is ErrGone.
func GetSale(ctx context.Context, q Querier, id string) (Sale, error) {
	return sales.active(ctx, q, id, false)
}
