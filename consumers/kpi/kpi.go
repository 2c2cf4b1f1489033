// Package kpi is the KPI consumer group: from sales, expenses, customers,
// invoices and the revenue group's events it keeps the facts a small
// business's KPIs are computed from, computes them per currency for any day
// or month (Get), and announces each change of a KPI's value in
// tally.kpi.calculated.v1 (Publish, run by the scheduler), coalesced so that
// a burst of events gives one announcement per KPI and period.
//
// # Formulas
//
// Per currency (nothing is converted), for a period of days P (a day or a
// month, UTC), amounts in minor units:
//
//   - gross_sales: the sum of the amounts of the sales dated in P that are
//     not deleted. refunds: the sum of their refunded amounts (a refund is
//     dated by its sale). net_sales = gross_sales − refunds.
//   - orders: the number of those sales. average_order_value =
//     gross_sales ÷ orders, rounded half away from zero (null without
//     orders; Shopify's definition, there being no order discounts).
//   - cogs: the expenses dated in P marked cost_of_goods_sold.
//     operating_expenses: the others; expenses_by_category: both, by
//     category.
//   - gross_profit = net_sales − cogs; gross_margin = gross_profit ÷
//     net_sales. net_profit = gross_profit − operating_expenses; net_margin =
//     net_profit ÷ net_sales. Ratios are decimal strings of four places
//     ("0.4250"), rounded half away from zero, null when net_sales is 0.
//   - recognized_revenue: what the revenue group recognized on the days of
//     P (tally.revenue.recognized.v1, and its restatements) less what voids
//     and deletes reversed on them (tally.revenue.reversed.v1).
//   - active_customers: the customers with an order in P; new_customers:
//     those whose first order in the currency ever is in P;
//     returning_customers = active − new. repeat_rate: the share of the
//     active customers with two orders or more in P.
//   - signups: the customers created in P (the same in every currency).
//   - accounts_receivable: at the end of P's last day, what the invoices
//     issued by then and not voided or deleted by then still owe (total
//     less the payments dated by then). ar_aging splits it by days past the
//     due date at that day: current (not yet due), 1_30, 31_60, 61_90,
//     91_plus (QuickBooks' buckets).
//   - dso (days sales outstanding) = accounts_receivable ÷ credit sales ×
//     the days of P, where credit sales are the totals of the invoices
//     issued in P that are open at its end or paid; a decimal string of two
//     places, null without credit sales.
//   - change: for each KPI, against the period before (the day or the
//     month before): amounts and counts as the relative change, a decimal
//     string of four places ("0.1250" is +12.5%), null when the previous
//     value is 0; ratios and dso as their difference.
//
// Updates and deletes correct the facts (a sale's latest version replaces
// the one before, a deleted one counts no more), events seen late or twice
// change nothing, and a replay gives the same facts, so the same figures.
package kpi

import (
	"context"
	"fmt"
	"time"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/date"
)

// Topics the group reads.
var Topics = []string{"tally.sales.v1", "tally.expenses.v1", "tally.customers.v1", "tally.invoices.v1", "tally.revenue.v1"}

// Group returns the KPI group's declaration.
func Group() *consumer.Group {
	g := consumer.NewGroup("kpi", Topics...).
		Projections("kpi_sales", "kpi_expenses", "kpi_invoices", "kpi_payments", "kpi_revenue", "kpi_customers", "kpi_dirty")
	for _, typ := range []string{"tally.sale.created.v1", "tally.sale.updated.v1", "tally.sale.deleted.v1"} {
		consumer.Handle(g, typ, applySale)
	}
	for _, typ := range []string{"tally.expense.created.v1", "tally.expense.updated.v1", "tally.expense.deleted.v1"} {
		consumer.Handle(g, typ, applyExpense)
	}
	consumer.Handle(g, "tally.customer.created.v1", applyCustomer)
	for _, typ := range []string{"tally.invoice.created.v1", "tally.invoice.updated.v1", "tally.invoice.paid.v1",
		"tally.invoice.voided.v1", "tally.invoice.deleted.v1", "tally.invoice.reminder_sent.v1", "tally.invoice.overdue.v1"} {
		consumer.Handle(g, typ, applyInvoice)
	}
	consumer.Handle(g, "tally.invoice.payment_received.v1", applyPayment)
	consumer.Handle(g, "tally.revenue.recognized.v1", applyRecognized)
	consumer.Handle(g, "tally.revenue.adjusted.v1", applyAdjusted)
	consumer.Handle(g, "tally.revenue.reversed.v1", applyReversed)
	return g
}

// The group handles none of the other types of its topics (customer
// updates, revenue deferrals): the runtime passes them over.

type sale struct {
	ID             string    `json:"id"`
	CustomerID     string    `json:"customer_id"`
	Currency       string    `json:"currency"`
	Amount         int64     `json:"amount"`
	Date           date.Date `json:"date"`
	RefundedAmount int64     `json:"refunded_amount"`
	Status         string    `json:"status"`
}

// markSQL marks the days a statement's old and new rows are dated on
// dirty; the statement is the CTE new, the row before it old.
const markSQL = `
INSERT INTO kpi_dirty (currency, day) SELECT currency, day FROM old UNION SELECT currency, day FROM new`

func applySale(ctx context.Context, tx consumer.Tx, e consumer.Event[sale]) error {
	p := &e.Payload
	if p.ID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payload of sale %q is about %q", e.Subject, p.ID))
	}
	if p.RefundedAmount > p.Amount {
		return consumer.Permanent(fmt.Errorf("sale %q: refunded %d of %d", p.ID, p.RefundedAmount, p.Amount))
	}
	tx.Queue(`WITH old AS (SELECT currency, day FROM kpi_sales WHERE sale_id = $1),
		new AS (
			INSERT INTO kpi_sales AS s (sale_id, customer_id, currency, day, amount, refunded, active, last_sequence)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (sale_id) DO UPDATE SET customer_id = excluded.customer_id, currency = excluded.currency,
				day = excluded.day, amount = excluded.amount, refunded = excluded.refunded, active = excluded.active,
				last_sequence = excluded.last_sequence
			WHERE s.last_sequence < excluded.last_sequence
			RETURNING currency, day)`+markSQL,
		p.ID, p.CustomerID, p.Currency, p.Date, p.Amount, p.RefundedAmount, p.Status != "deleted", e.Sequence)
	return nil
}

type expense struct {
	ID       string    `json:"id"`
	Category string    `json:"category"`
	Currency string    `json:"currency"`
	Amount   int64     `json:"amount"`
	Date     date.Date `json:"date"`
	COGS     bool      `json:"cost_of_goods_sold"`
	Status   string    `json:"status"`
}

func applyExpense(ctx context.Context, tx consumer.Tx, e consumer.Event[expense]) error {
	p := &e.Payload
	if p.ID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payload of expense %q is about %q", e.Subject, p.ID))
	}
	tx.Queue(`WITH old AS (SELECT currency, day FROM kpi_expenses WHERE expense_id = $1),
		new AS (
			INSERT INTO kpi_expenses AS x (expense_id, currency, day, category, amount, cogs, active, last_sequence)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (expense_id) DO UPDATE SET currency = excluded.currency, day = excluded.day,
				category = excluded.category, amount = excluded.amount, cogs = excluded.cogs, active = excluded.active,
				last_sequence = excluded.last_sequence
			WHERE x.last_sequence < excluded.last_sequence
			RETURNING currency, day)`+markSQL,
		p.ID, p.Currency, p.Date, p.Category, p.Amount, p.COGS, p.Status != "deleted", e.Sequence)
	return nil
}

type customer struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
}

func applyCustomer(ctx context.Context, tx consumer.Tx, e consumer.Event[customer]) error {
	p := &e.Payload
	tx.Queue(`INSERT INTO kpi_customers (customer_id, created_on, last_sequence) VALUES ($1, $2, $3)
		ON CONFLICT (customer_id) DO NOTHING`, p.ID, date.Of(p.CreatedAt), e.Sequence)
	return nil
}

type invoice struct {
	ID        string     `json:"id"`
	Currency  string     `json:"currency"`
	Status    string     `json:"status"`
	IssuedAt  date.Date  `json:"issued_at"`
	DueAt     date.Date  `json:"due_at"`
	Total     int64      `json:"total"`
	PaidAt    *date.Date `json:"paid_at"`
	VoidedAt  *time.Time `json:"voided_at"`
	DeletedAt *time.Time `json:"deleted_at"`
}

func applyInvoice(ctx context.Context, tx consumer.Tx, e consumer.Event[invoice]) error {
	p := &e.Payload
	if p.ID != e.Subject {
		return consumer.Permanent(fmt.Errorf("payload of invoice %q is about %q", e.Subject, p.ID))
	}
	var closed, settled *date.Date
	for _, at := range []*time.Time{p.VoidedAt, p.DeletedAt} {
		if at != nil && (p.Status == "void" || p.Status == "deleted") {
			d := date.Of(*at)
			closed = &d
		}
	}
	if p.Status == "paid" {
		settled = p.PaidAt
	}
	// Receivables change from the issue date on: the issue date is marked
	// (and a void's), the later days are recomputed when asked.
	tx.Queue(`WITH old AS (SELECT currency, issued_on AS day FROM kpi_invoices WHERE invoice_id = $1),
		new AS (
			INSERT INTO kpi_invoices AS i (invoice_id, currency, issued_on, due_on, total, closed_on, settled_on, last_sequence)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (invoice_id) DO UPDATE SET currency = excluded.currency, issued_on = excluded.issued_on,
				due_on = excluded.due_on, total = excluded.total, closed_on = excluded.closed_on,
				settled_on = excluded.settled_on, last_sequence = excluded.last_sequence
			WHERE i.last_sequence < excluded.last_sequence
			RETURNING currency, coalesce(closed_on, issued_on) AS day)`+markSQL,
		p.ID, p.Currency, p.IssuedAt, p.DueAt, p.Total, closed, settled, e.Sequence)
	return nil
}

type payment struct {
	InvoiceID string    `json:"invoice_id"`
	PaymentID string    `json:"payment_id"`
	Currency  string    `json:"currency"`
	Amount    int64     `json:"amount"`
	PaidAt    date.Date `json:"paid_at"`
}

func applyPayment(ctx context.Context, tx consumer.Tx, e consumer.Event[payment]) error {
	p := &e.Payload
	tx.Queue(`WITH old AS (SELECT NULL::text AS currency, NULL::date AS day WHERE false),
		new AS (
			INSERT INTO kpi_payments (invoice_id, payment_id, paid_on, amount) VALUES ($1, $2, $3, $4)
			ON CONFLICT DO NOTHING
			RETURNING $5::text AS currency, paid_on AS day)`+markSQL,
		p.InvoiceID, p.PaymentID, p.PaidAt, p.Amount, p.Currency)
	return nil
}

type recognized struct {
	Currency string `json:"currency"`
	Days     []struct {
		Date   date.Date `json:"date"`
		Amount int64     `json:"amount"`
	} `json:"days"`
}

func applyRecognized(ctx context.Context, tx consumer.Tx, e consumer.Event[recognized]) error {
	p := &e.Payload
	days := make([]date.Date, len(p.Days))
	amounts := make([]int64, len(p.Days))
	for i, d := range p.Days {
		days[i], amounts[i] = d.Date, d.Amount
	}
	addRevenue(tx, p.Currency, days, amounts)
	return nil
}

// addRevenue adds amounts to the recognized revenue of days in currency,
// and marks the days.
func addRevenue(tx consumer.Tx, currency string, days []date.Date, amounts []int64) {
	if len(days) == 0 {
		return
	}
	tx.Queue(`WITH old AS (SELECT NULL::text AS currency, NULL::date AS day WHERE false),
		new AS (
			INSERT INTO kpi_revenue AS r (currency, day, amount)
			SELECT $1, d.day, sum(d.amount) FROM unnest($2::date[], $3::bigint[]) AS d(day, amount) GROUP BY d.day
			ON CONFLICT (currency, day) DO UPDATE SET amount = r.amount + excluded.amount
			RETURNING currency, day)`+markSQL, currency, days, amounts)
}

type adjusted struct {
	Currency      string    `json:"currency"`
	EffectiveOn   date.Date `json:"effective_on"`
	Restated      int64     `json:"restated"`
	RevenueChange int64     `json:"revenue_change"`
}

// applyAdjusted takes in restatements (days announced as recognized that
// recognize otherwise now) and corrections of reversals. An update's change
// of the deferred balance is no revenue yet.
func applyAdjusted(ctx context.Context, tx consumer.Tx, e consumer.Event[adjusted]) error {
	if p := &e.Payload; p.Restated+p.RevenueChange != 0 {
		addRevenue(tx, p.Currency, []date.Date{p.EffectiveOn}, []int64{p.Restated + p.RevenueChange})
	}
	return nil
}

type reversed struct {
	Currency           string    `json:"currency"`
	ReversedOn         date.Date `json:"reversed_on"`
	RecognizedReversed int64     `json:"recognized_reversed"`
}

func applyReversed(ctx context.Context, tx consumer.Tx, e consumer.Event[reversed]) error {
	if p := &e.Payload; p.RecognizedReversed != 0 {
		addRevenue(tx, p.Currency, []date.Date{p.ReversedOn}, []int64{-p.RecognizedReversed})
	}
	return nil
}
