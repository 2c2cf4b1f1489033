package kpi

import (
	"context"
	"errors"
	"fmt"
	"math/big"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/date"
)

// Granularities of a report.
const (
	Day   = "day"
	Month = "month"
)

// ErrBadRange: the report's range is empty or too long.
var ErrBadRange = errors.New("kpi: bad range")

// MaxPeriods bounds the periods of one report.
const MaxPeriods = 400

// Querier is a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Aging is accounts receivable by days past the due date.
type Aging struct {
	Current int64 `json:"current"`
	D1to30  int64 `json:"1_30"`
	D31to60 int64 `json:"31_60"`
	D61to90 int64 `json:"61_90"`
	D91Plus int64 `json:"91_plus"`
}

// Period is the KPIs of one day or month (see the package doc for the
// formulas). Ratios are decimal strings; null where undefined.
type Period struct {
	Period             string           `json:"period"`
	Start              date.Date        `json:"start"`
	End                date.Date        `json:"end"`
	GrossSales         int64            `json:"gross_sales"`
	Refunds            int64            `json:"refunds"`
	NetSales           int64            `json:"net_sales"`
	Orders             int64            `json:"orders"`
	AverageOrderValue  *int64           `json:"average_order_value"`
	COGS               int64            `json:"cogs"`
	OperatingExpenses  int64            `json:"operating_expenses"`
	ExpensesByCategory map[string]int64 `json:"expenses_by_category"`
	GrossProfit        int64            `json:"gross_profit"`
	GrossMargin        *string          `json:"gross_margin"`
	NetProfit          int64            `json:"net_profit"`
	NetMargin          *string          `json:"net_margin"`
	RecognizedRevenue  int64            `json:"recognized_revenue"`
	NewCustomers       int64            `json:"new_customers"`
	ReturningCustomers int64            `json:"returning_customers"`
	ActiveCustomers    int64            `json:"active_customers"`
	RepeatRate         *string          `json:"repeat_rate"`
	Signups            int64            `json:"signups"`
	AccountsReceivable int64            `json:"accounts_receivable"`
	ARAging            Aging            `json:"ar_aging"`
	DSO                *string          `json:"dso"`
	Change             map[string]any   `json:"change"`

	creditSales int64
}

// Report is the KPIs of a currency, period by period.
type Report struct {
	Currency    string   `json:"currency"`
	Granularity string   `json:"granularity"`
	From        string   `json:"from"`
	To          string   `json:"to"`
	Periods     []Period `json:"periods"`
}

// Get returns the KPIs of currency for each day or month (granularity)
// from the one holding from to the one holding to, each with its change
// against the period before. ErrBadRange if to is before from or the range
// holds more than MaxPeriods periods.
func Get(ctx context.Context, q Querier, currency, granularity string, from, to date.Date) (Report, error) {
	rep := Report{Currency: currency, Granularity: granularity, Periods: []Period{}}
	if to.Before(from) {
		return rep, fmt.Errorf("%w: %s is before %s", ErrBadRange, to, from)
	}
	ps, err := periods(granularity, from, to)
	if err != nil {
		return rep, err
	}
	rep.From, rep.To = ps[1].Period, ps[len(ps)-1].Period
	if err := compute(ctx, q, currency, ps); err != nil {
		return rep, err
	}
	for i := 1; i < len(ps); i++ {
		ps[i].Change = change(&ps[i], &ps[i-1])
	}
	rep.Periods = ps[1:]
	return rep, nil
}

// periods returns the periods of granularity holding from through to, the
// one before them first.
func periods(granularity string, from, to date.Date) ([]Period, error) {
	var ps []Period
	switch granularity {
	case Day:
		if to.Days()-from.Days()+1 > MaxPeriods {
			return nil, fmt.Errorf("%w: at most %d days", ErrBadRange, MaxPeriods)
		}
		for d := from.AddDays(-1); !to.Before(d); d = d.AddDays(1) {
			ps = append(ps, Period{Period: d.String(), Start: d, End: d})
		}
	case Month:
		first := from.MonthStart()
		prev := first.AddDays(-1).MonthStart()
		for m := prev; !to.Before(m); m = nextMonth(m) {
			if len(ps) > MaxPeriods {
				return nil, fmt.Errorf("%w: at most %d months", ErrBadRange, MaxPeriods)
			}
			ps = append(ps, Period{Period: m.Time().Format("2006-01"), Start: m, End: nextMonth(m).AddDays(-1)})
		}
	default:
		return nil, fmt.Errorf("kpi: granularity %q: want day or month", granularity)
	}
	return ps, nil
}

func nextMonth(d date.Date) date.Date { return d.MonthStart().AddDays(32).MonthStart() }

// periodsCTE is the periods $2 (starts) and $3 (ends, inclusive), numbered
// from 1 as i.
const periodsCTE = `WITH p AS (SELECT * FROM unnest($2::date[], $3::date[]) WITH ORDINALITY AS p(a, b, i)) `

// compute fills in the KPIs of ps, in currency: six queries, however many
// periods.
func compute(ctx context.Context, q Querier, currency string, ps []Period) error {
	starts, ends := make([]date.Date, len(ps)), make([]date.Date, len(ps))
	for i := range ps {
		starts[i], ends[i] = ps[i].Start, ps[i].End
		ps[i].ExpensesByCategory = map[string]int64{}
	}
	at := func(i int64) *Period { return &ps[i-1] }
	type query struct {
		what string
		sql  string
		scan func(rows pgx.Rows) error
	}
	queries := []query{
		{"sales", periodsCTE + `
			SELECT p.i, coalesce(sum(s.amount), 0), coalesce(sum(s.refunded), 0), count(s.sale_id)
			FROM p LEFT JOIN kpi_sales s ON s.active AND s.currency = $1 AND s.day BETWEEN p.a AND p.b
			GROUP BY p.i`,
			func(rows pgx.Rows) error {
				var i int64
				var gross, refunds, orders int64
				if err := rows.Scan(&i, &gross, &refunds, &orders); err != nil {
					return err
				}
				p := at(i)
				p.GrossSales, p.Refunds, p.Orders = gross, refunds, orders
				return nil
			}},
		{"expenses", periodsCTE + `
			SELECT p.i, x.category, x.cogs, sum(x.amount)
			FROM p JOIN kpi_expenses x ON x.active AND x.currency = $1 AND x.day BETWEEN p.a AND p.b
			GROUP BY p.i, x.category, x.cogs`,
			func(rows pgx.Rows) error {
				var i, amount int64
				var category string
				var cogs bool
				if err := rows.Scan(&i, &category, &cogs, &amount); err != nil {
					return err
				}
				p := at(i)
				if cogs {
					p.COGS += amount
				} else {
					p.OperatingExpenses += amount
				}
				p.ExpensesByCategory[category] += amount
				return nil
			}},
		{"recognized revenue and signups", periodsCTE + `
			SELECT p.i,
				(SELECT coalesce(sum(r.amount), 0) FROM kpi_revenue r WHERE r.currency = $1 AND r.day BETWEEN p.a AND p.b),
				(SELECT count(*) FROM kpi_customers c WHERE c.created_on BETWEEN p.a AND p.b)
			FROM p`,
			func(rows pgx.Rows) error {
				var i int64
				var revenue, signups int64
				if err := rows.Scan(&i, &revenue, &signups); err != nil {
					return err
				}
				at(i).RecognizedRevenue, at(i).Signups = revenue, signups
				return nil
			}},
		{"customers", periodsCTE + `
			SELECT p.i, count(*), count(*) FILTER (WHERE f.first >= p.a), count(*) FILTER (WHERE o.orders >= 2)
			FROM p
			JOIN LATERAL (
				SELECT s.customer_id, count(*) AS orders FROM kpi_sales s
				WHERE s.active AND s.currency = $1 AND s.day BETWEEN p.a AND p.b GROUP BY s.customer_id
			) o ON true
			JOIN LATERAL (
				SELECT min(s.day) AS first FROM kpi_sales s WHERE s.active AND s.currency = $1 AND s.customer_id = o.customer_id
			) f ON true
			GROUP BY p.i`,
			func(rows pgx.Rows) error {
				var i, active, fresh, repeat int64
				if err := rows.Scan(&i, &active, &fresh, &repeat); err != nil {
					return err
				}
				p := at(i)
				p.ActiveCustomers, p.NewCustomers, p.ReturningCustomers = active, fresh, active-fresh
				p.RepeatRate = ratio(repeat, active)
				return nil
			}},
		// What each invoice issued by the period's end and neither voided,
		// deleted nor paid in full by then still owes at its end.
		{"receivables", periodsCTE + `
			SELECT p.i, sum(o.open),
				coalesce(sum(o.open) FILTER (WHERE p.b <= o.due_on), 0),
				coalesce(sum(o.open) FILTER (WHERE p.b - o.due_on BETWEEN 1 AND 30), 0),
				coalesce(sum(o.open) FILTER (WHERE p.b - o.due_on BETWEEN 31 AND 60), 0),
				coalesce(sum(o.open) FILTER (WHERE p.b - o.due_on BETWEEN 61 AND 90), 0),
				coalesce(sum(o.open) FILTER (WHERE p.b - o.due_on > 90), 0)
			FROM p
			JOIN LATERAL (
				SELECT i.due_on, i.total - coalesce((SELECT sum(y.amount) FROM kpi_payments y
					WHERE y.invoice_id = i.invoice_id AND y.paid_on <= p.b), 0) AS open
				FROM kpi_invoices i
				WHERE i.currency = $1 AND i.issued_on <= p.b AND (i.closed_on IS NULL OR i.closed_on > p.b)
					AND (i.settled_on IS NULL OR i.settled_on > p.b)
			) o ON o.open > 0
			GROUP BY p.i`,
			func(rows pgx.Rows) error {
				var i int64
				var a Aging
				var total int64
				if err := rows.Scan(&i, &total, &a.Current, &a.D1to30, &a.D31to60, &a.D61to90, &a.D91Plus); err != nil {
					return err
				}
				at(i).AccountsReceivable, at(i).ARAging = total, a
				return nil
			}},
		{"credit sales", periodsCTE + `
			SELECT p.i, coalesce(sum(i.total), 0)
			FROM p JOIN kpi_invoices i ON i.currency = $1 AND i.issued_on BETWEEN p.a AND p.b
				AND (i.closed_on IS NULL OR i.closed_on > p.b)
			GROUP BY p.i`,
			func(rows pgx.Rows) error {
				var i, total int64
				if err := rows.Scan(&i, &total); err != nil {
					return err
				}
				at(i).creditSales = total
				return nil
			}},
	}
	for _, qu := range queries {
		rows, err := q.Query(ctx, qu.sql, currency, starts, ends)
		if err != nil {
			return fmt.Errorf("computing KPIs (%s): %w", qu.what, err)
		}
		for rows.Next() {
			if err := qu.scan(rows); err != nil {
				rows.Close()
				return fmt.Errorf("computing KPIs (%s): %w", qu.what, err)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("computing KPIs (%s): %w", qu.what, err)
		}
	}
	for i := range ps {
		p := &ps[i]
		p.NetSales = p.GrossSales - p.Refunds
		if p.Orders > 0 {
			aov := roundDiv(p.GrossSales, p.Orders)
			p.AverageOrderValue = &aov
		}
		p.GrossProfit = p.NetSales - p.COGS
		p.NetProfit = p.GrossProfit - p.OperatingExpenses
		p.GrossMargin = ratio(p.GrossProfit, p.NetSales)
		p.NetMargin = ratio(p.NetProfit, p.NetSales)
		if p.creditSales > 0 {
			days := int64(p.End.Days() - p.Start.Days() + 1)
			s := new(big.Rat).SetFrac64(p.AccountsReceivable*days, p.creditSales).FloatString(2)
			p.DSO = &s
		}
	}
	return nil
}

// roundDiv is a ÷ b rounded half away from zero; b > 0.
func roundDiv(a, b int64) int64 {
	q, r := a/b, a%b
	switch {
	case r > 0 && r >= b-r:
		q++
	case r < 0 && -r >= b+r:
		q--
	}
	return q
}

// ratio is a ÷ b as a decimal string of four places, nil when b is 0.
func ratio(a, b int64) *string {
	if b == 0 {
		return nil
	}
	s := new(big.Rat).SetFrac64(a, b).FloatString(4)
	return &s
}

// Values returns the period's KPIs by name, each a JSON integer, a
// decimal string or null: the KPIs tally.kpi.calculated.v1 announces
// (expenses_by_category aside, whose names are the business's).
func (p *Period) Values() map[string]any {
	return map[string]any{
		"gross_sales": p.GrossSales, "refunds": p.Refunds, "net_sales": p.NetSales, "orders": p.Orders,
		"average_order_value": p.AverageOrderValue, "cogs": p.COGS, "operating_expenses": p.OperatingExpenses,
		"gross_profit": p.GrossProfit, "gross_margin": p.GrossMargin, "net_profit": p.NetProfit, "net_margin": p.NetMargin,
		"recognized_revenue": p.RecognizedRevenue, "new_customers": p.NewCustomers,
		"returning_customers": p.ReturningCustomers, "active_customers": p.ActiveCustomers, "repeat_rate": p.RepeatRate,
		"signups": p.Signups, "accounts_receivable": p.AccountsReceivable,
		"ar_aging.current": p.ARAging.Current, "ar_aging.1_30": p.ARAging.D1to30, "ar_aging.31_60": p.ARAging.D31to60,
		"ar_aging.61_90": p.ARAging.D61to90, "ar_aging.91_plus": p.ARAging.D91Plus, "dso": p.DSO,
	}
}

// change returns each KPI's change from prev to p: the relative change of
// an amount or a count (against the previous value's magnitude, so that a
// smaller loss is a positive change), null when the previous value is 0
// or either is null; the difference of a ratio or of dso.
func change(p, prev *Period) map[string]any {
	now, was := p.Values(), prev.Values()
	out := make(map[string]any, len(now))
	for k, n := range now {
		out[k] = diff(k, n, was[k])
	}
	return out
}

func diff(kpi string, now, was any) *string {
	relative := func(n, w int64) *string {
		if w == 0 {
			return nil
		}
		s := new(big.Rat).SetFrac64(n-w, abs(w)).FloatString(4)
		return &s
	}
	switch n := now.(type) {
	case int64:
		return relative(n, was.(int64))
	case *int64:
		if w := was.(*int64); n != nil && w != nil {
			return relative(*n, *w)
		}
	case *string:
		w := was.(*string)
		if n == nil || w == nil {
			return nil
		}
		a, _ := new(big.Rat).SetString(*n)
		b, _ := new(big.Rat).SetString(*w)
		places := 4
		if kpi == "dso" {
			places = 2
		}
		s := new(big.Rat).Sub(a, b).FloatString(places)
		return &s
	}
	return nil
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}
