package billing

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
)

// Limits of an expense's texts.
const (
	maxCategoryCh = 100
	maxVendorCh   = 200
)

// Expense is an expense as the API returns it and as its events carry it.
// Amount is in minor units of Currency. CostOfGoodsSold tells the cost of
// goods sold (against which gross profit is figured) from operating
// expenses.
type Expense struct {
	ID              string    `json:"id"`
	Category        string    `json:"category"`
	Vendor          string    `json:"vendor,omitempty"`
	Currency        string    `json:"currency"`
	Amount          int64     `json:"amount"`
	Date            date.Date `json:"date"`
	CostOfGoodsSold bool      `json:"cost_of_goods_sold"`
	Lifecycle
}

// ExpenseInput creates an expense (category, currency, amount and date
// required; cost_of_goods_sold defaults to false) or patches an active one
// (only the fields given change; "" removes the vendor).
type ExpenseInput struct {
	ID              *string `json:"id"`
	Category        *string `json:"category"`
	Vendor          *string `json:"vendor"`
	Currency        *string `json:"currency"`
	Amount          *int64  `json:"amount"`
	Date            *string `json:"date"`
	CostOfGoodsSold *bool   `json:"cost_of_goods_sold"`
	// ExternalID is given by the CSV importer only; the JSON API does not
	// take it.
	ExternalID *string `json:"-"`
}

func (in ExpenseInput) apply(p *problems, e *Expense, creating bool) {
	switch {
	case in.Category != nil:
		if !plainText(*in.Category, maxCategoryCh) {
			p.add("category", "must be 1 to %d characters, not blank, without control characters", maxCategoryCh)
		}
		e.Category = *in.Category
	case creating:
		p.required("category")
	}
	if in.Vendor != nil {
		checkOptionalText(p, "vendor", *in.Vendor, maxVendorCh, creating)
		e.Vendor = *in.Vendor
	}
	setCurrency(p, in.Currency, &e.Currency, creating)
	setAmount(p, in.Amount, &e.Amount, creating)
	if d, ok := parseDate(p, "date", in.Date, creating); ok {
		e.Date = d
	}
	if in.CostOfGoodsSold != nil {
		e.CostOfGoodsSold = *in.CostOfGoodsSold
	}
}

var expenses = kind[Expense]{
	noun: "expense", events: "tally.expense", table: "expenses",
	columns: `id, category, coalesce(vendor, ''), currency, amount, date, cost_of_goods_sold, ` + lifecycleColumns,
	scan: func(row pgx.Row) (Expense, error) {
		var e Expense
		err := row.Scan(append([]any{&e.ID, &e.Category, &e.Vendor, &e.Currency, &e.Amount, &e.Date,
			&e.CostOfGoodsSold}, e.Lifecycle.scan()...)...)
		return e, err
	},
	id:   func(e *Expense) string { return e.ID },
	life: func(e *Expense) *Lifecycle { return &e.Lifecycle },
	insert: func(tx Tx, e *Expense) {
		tx.Queue(`INSERT INTO expenses (id, category, vendor, currency, amount, date, cost_of_goods_sold,
				status, external_id, version, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			e.ID, e.Category, nullable(e.Vendor), e.Currency, e.Amount, e.Date, e.CostOfGoodsSold,
			e.Status, nullable(e.ExternalID), e.Version, e.CreatedAt, e.UpdatedAt)
	},
	save: func(tx Tx, e *Expense) {
		tx.Queue(`UPDATE expenses SET category = $2, vendor = $3, currency = $4, amount = $5, date = $6,
				cost_of_goods_sold = $7, status = $8, version = $9, updated_at = $10, deleted_at = $11
			WHERE id = $1`,
			e.ID, e.Category, nullable(e.Vendor), e.Currency, e.Amount, e.Date, e.CostOfGoodsSold,
			e.Status, e.Version, e.UpdatedAt, e.DeletedAt)
	},
}

// NewExpense validates in, a new expense, and returns the expense it makes
// (active, version 1, created now) without writing it: CreateExpense writes
// one, the CSV importer many at once (InsertExpenses).
func NewExpense(m Meta, in ExpenseInput) (Expense, error) {
	var p problems
	e := Expense{ID: checkID(&p, in.ID, "exp"), Lifecycle: newLifecycle(&p, m, in.ExternalID)}
	in.apply(&p, &e, true)
	return e, p.err()
}

// ExpenseCreated returns the created event of e, an expense NewExpense made
// with m.
func ExpenseCreated(m Meta, e Expense) (envelope.Event, error) {
	return expenses.event(m, "created", &e)
}

// CreateExpense records an expense and returns its created event.
func CreateExpense(ctx context.Context, tx Tx, m Meta, in ExpenseInput) (Expense, []envelope.Event, error) {
	e, err := NewExpense(m, in)
	if err != nil {
		return Expense{}, nil, err
	}
	return expenses.create(tx, m, e)
}

// UpdateExpense patches an active expense. A patch that changes nothing
// returns the expense and no event.
func UpdateExpense(ctx context.Context, tx Tx, m Meta, id string, in ExpenseInput) (Expense, []envelope.Event, error) {
	return expenses.update(ctx, tx, m, id, in.ID, in == ExpenseInput{ID: in.ID}, func(p *problems, e *Expense) {
		in.apply(p, e, false)
	})
}

// DeleteExpense deletes an active expense. The row stays, marked deleted;
// the deleted event carries the expense as it was.
func DeleteExpense(ctx context.Context, tx Tx, m Meta, id string) (Expense, []envelope.Event, error) {
	return expenses.remove(ctx, tx, m, id)
}

// GetExpense reads an expense. A deleted expense is ErrGone.
func GetExpense(ctx context.Context, q Querier, id string) (Expense, error) {
	return expenses.active(ctx, q, id, false)
}
