package billing

import (
	"context"
	"fmt"
	"time"
)

// Outcome is what a bulk insert did with one record.
type Outcome uint8

// Outcomes of a bulk insert.
const (
	// Created: the record was written.
	Created Outcome = iota
	// Duplicate: a record with its external_id exists (or came earlier in
	// the same insert); nothing was written.
	Duplicate
	// UnknownCustomer: the sale names no existing customer.
	UnknownCustomer
	// IDTaken: the customer's id belongs to a customer with another
	// external_id (or none).
	IDTaken
)

// The bulk inserts write records made by NewSale, NewCustomer and
// NewExpense (their created events are the caller's to write) in one
// statement, skipping duplicates by external_id (of records that share one,
// the first is written), and return the outcome of each record, in order. They are the CSV importer's write path: one
// statement per few thousand rows rather than one per row.
//
// The gotcha: a duplicate is recognised by the unique index, which makes a
// concurrent insert of the same external_id wait for the other transaction
// and then skip the row; but the classification of a customer that was
// skipped (Duplicate or IDTaken) reads the snapshot of the statement, so a
// customer that a concurrent import committed meanwhile may be reported as
// IDTaken rather than Duplicate. Nothing is written twice either way.

// Nullable texts travel as "" (NULLIF makes them NULL) and dates as
// time.Time: pgx encodes slices of *string and of date.Date through
// reflection, at several microseconds a row.

// InsertSales writes sales of existing customers; a sale of an unknown one
// is UnknownCustomer.
func InsertSales(ctx context.Context, q Querier, ss []Sale) ([]Outcome, error) {
	var (
		id, ext, cust, cur, prod = make([]string, len(ss)), make([]string, len(ss)), make([]string, len(ss)), make([]string, len(ss)), make([]string, len(ss))
		amount, qty, refunded    = make([]int64, len(ss)), make([]int64, len(ss)), make([]int64, len(ss))
		version                  = make([]int64, len(ss))
		day, created             = make([]time.Time, len(ss)), make([]time.Time, len(ss))
	)
	for i, s := range ss {
		id[i], ext[i], cust[i], cur[i], prod[i] = s.ID, s.ExternalID, s.CustomerID, s.Currency, s.Product
		amount[i], qty[i], refunded[i], day[i], version[i], created[i] = s.Amount, s.Quantity, s.RefundedAmount, s.Date.Time(), s.Version, s.CreatedAt
	}
	return outcomes(ctx, q, len(ss), `
WITH u AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[],
			$8::date[], $9::bigint[], $10::bigint[], $11::timestamptz[])
		WITH ORDINALITY AS u(id, external_id, customer_id, currency, amount, quantity, product, date, refunded,
			version, created_at, n)
), ins AS (
	INSERT INTO sales (id, external_id, customer_id, currency, amount, quantity, product, date, refunded_amount,
		status, version, created_at, updated_at)
	SELECT id, NULLIF(external_id, ''), customer_id, currency, amount, quantity, NULLIF(product, ''), date, refunded,
		'active', version, created_at, created_at
	FROM u WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = u.customer_id)
	ORDER BY n
	ON CONFLICT (external_id) DO NOTHING
	RETURNING id
)
SELECT n, CASE WHEN EXISTS (SELECT 1 FROM customers c WHERE c.id = u.customer_id) THEN 1 ELSE 2 END
FROM u WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = u.id)`,
		id, ext, cust, cur, amount, qty, prod, day, refunded, version, created)
}

// InsertExpenses writes expenses.
func InsertExpenses(ctx context.Context, q Querier, es []Expense) ([]Outcome, error) {
	var (
		id, ext, cat, vendor, cur = make([]string, len(es)), make([]string, len(es)), make([]string, len(es)), make([]string, len(es)), make([]string, len(es))
		amount, version           = make([]int64, len(es)), make([]int64, len(es))
		day, created              = make([]time.Time, len(es)), make([]time.Time, len(es))
		cogs                      = make([]bool, len(es))
	)
	for i, e := range es {
		id[i], ext[i], cat[i], vendor[i], cur[i] = e.ID, e.ExternalID, e.Category, e.Vendor, e.Currency
		amount[i], version[i], day[i], cogs[i], created[i] = e.Amount, e.Version, e.Date.Time(), e.CostOfGoodsSold, e.CreatedAt
	}
	return outcomes(ctx, q, len(es), `
WITH u AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::date[],
			$8::boolean[], $9::bigint[], $10::timestamptz[])
		WITH ORDINALITY AS u(id, external_id, category, vendor, currency, amount, date, cogs, version, created_at, n)
), ins AS (
	INSERT INTO expenses (id, external_id, category, vendor, currency, amount, date, cost_of_goods_sold, status,
		version, created_at, updated_at)
	SELECT id, NULLIF(external_id, ''), category, NULLIF(vendor, ''), currency, amount, date, cogs, 'active', version,
		created_at, created_at
	FROM u
	ORDER BY n
	ON CONFLICT (external_id) DO NOTHING
	RETURNING id
)
SELECT n, 1 FROM u WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = u.id)`,
		id, ext, cat, vendor, cur, amount, day, cogs, version, created)
}

// InsertCustomers writes customers; one whose id is taken (by a customer
// of another external_id) is IDTaken.
func InsertCustomers(ctx context.Context, q Querier, cs []Customer) ([]Outcome, error) {
	var (
		id, name, email, ext = make([]string, len(cs)), make([]string, len(cs)), make([]string, len(cs)), make([]string, len(cs))
		version              = make([]int64, len(cs))
		created              = make([]time.Time, len(cs))
	)
	for i, c := range cs {
		id[i], name[i], email[i], ext[i], version[i], created[i] = c.ID, c.Name, c.Email, c.ExternalID, c.Version, c.CreatedAt
	}
	// Only the first of the rows that share an id is inserted (k = 1); a
	// row not inserted is a duplicate if its external_id exists or was
	// inserted by this very statement (a repeat within the batch).
	return outcomes(ctx, q, len(cs), `
WITH u AS (
	SELECT id, NULLIF(external_id, '') AS external_id, name, email, version, created_at, n,
		row_number() OVER (PARTITION BY id ORDER BY n) AS k
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
		WITH ORDINALITY AS u(id, external_id, name, email, version, created_at, n)
), ins AS (
	INSERT INTO customers (id, external_id, name, email, version, created_at, updated_at)
	SELECT id, external_id, name, email, version, created_at, created_at FROM u WHERE k = 1
	ORDER BY n
	ON CONFLICT DO NOTHING
	RETURNING id, external_id
)
SELECT n, CASE WHEN EXISTS (SELECT 1 FROM customers c WHERE c.external_id = u.external_id)
		OR EXISTS (SELECT 1 FROM ins WHERE ins.external_id = u.external_id) THEN 1 ELSE 3 END
FROM u WHERE k > 1 OR NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = u.id)`,
		id, ext, name, email, version, created)
}

// outcomes runs a bulk insert of n records whose result rows are the
// records not created: their ordinal (from 1) and their Outcome.
func outcomes(ctx context.Context, q Querier, n int, sql string, args ...any) ([]Outcome, error) {
	out := make([]Outcome, n)
	if n == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("inserting %d records: %w", n, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			i int64
			o int16
		)
		if err := rows.Scan(&i, &o); err != nil {
			return nil, fmt.Errorf("reading the outcome of a bulk insert: %w", err)
		}
		out[i-1] = Outcome(o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("inserting %d records: %w", n, err)
	}
	return out, nil
}
