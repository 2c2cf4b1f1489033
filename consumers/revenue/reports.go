package revenue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/date"
)

// The ledger's reports. They sum revenue_entries, whose rows are dated by
// the service day they recognize (a month's row cut at any day by its cum)
// or by when a booking, adjustment or reversal happened: a report about a
// past date says the same whenever it is asked, but for events about that
// date that had not arrived yet. Days after today are scheduled, not
// recognized. Each currency is a ledger of its own.

// Report errors.
var (
	// ErrNoBasis: the report does not exist on the basis asked for.
	ErrNoBasis = errors.New("revenue: no such report on this basis")
)

// Month is a calendar month, YYYY-MM.
type Month struct{ first date.Date }

// ParseMonth reads YYYY-MM.
func ParseMonth(s string) (Month, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil || len(s) != 7 {
		return Month{}, fmt.Errorf("want YYYY-MM, got %q", clip(s))
	}
	return Month{date.Of(t)}, nil
}

func (m Month) String() string { return m.first.Time().Format("2006-01") }

// First returns the month's first day.
func (m Month) First() date.Date { return m.first }

// next returns the month after m.
func (m Month) next() Month { return Month{nextMonth(m.first)} }

// MarshalText writes YYYY-MM.
func (m Month) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads YYYY-MM.
func (m *Month) UnmarshalText(b []byte) error {
	v, err := ParseMonth(string(b))
	*m = v
	return err
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// WaterfallMonth is one month of a waterfall.
type WaterfallMonth struct {
	Month      Month `json:"month"`
	Recognized int64 `json:"recognized"` // by the service days of the month through the report's as_of
	Scheduled  int64 `json:"scheduled"`  // by its days after as_of
	Reversed   int64 `json:"reversed"`   // revenue taken back by voids and deletes dated in the month (≤ 0)
	Net        int64 `json:"net"`        // recognized + scheduled + reversed
	// Deferred is the deferred balance at the month's end, as the ledger
	// plans it (accrual only).
	Deferred *int64 `json:"deferred,omitempty"`
}

// Waterfall is recognized revenue by month.
type Waterfall struct {
	Currency string           `json:"currency"`
	Basis    string           `json:"basis"`
	From     Month            `json:"from"`
	To       Month            `json:"to"`
	AsOf     date.Date        `json:"as_of"`
	Months   []WaterfallMonth `json:"months"`
	Total    WaterfallMonth   `json:"total"` // the months' sums; its month is From, its deferred To's
}

// GetWaterfall returns the waterfall of currency on basis for the months
// from through to, as of the day asOf (today).
func GetWaterfall(ctx context.Context, q Querier, currency, basis string, from, to Month, asOf date.Date) (Waterfall, error) {
	w := Waterfall{Currency: currency, Basis: basis, From: from, To: to, AsOf: asOf}
	end := to.next().First()
	rows, err := q.Query(ctx, `
		SELECT date_trunc('month', e.start_date)::date, e.kind, sum(e.revenue)::bigint,
			sum(CASE WHEN e.end_date <= $5 THEN e.revenue
			         WHEN e.start_date > $5 THEN 0
			         WHEN e.kind = 'recognized' THEN e.cum[extract(day FROM $5)::int]
			         ELSE 0 END)::bigint,
			sum(e.deferred)::bigint
		FROM revenue_entries e
		WHERE e.currency = $1 AND e.basis = $2 AND e.start_date >= $3 AND e.start_date < $4
		GROUP BY 1, 2`, currency, basis, from.First(), end, asOf)
	if err != nil {
		return w, fmt.Errorf("reading the waterfall: %w", err)
	}
	byMonth := map[date.Date]*WaterfallMonth{}
	deferred := map[date.Date]int64{}
	for m := from; m.First().Before(end); m = m.next() {
		w.Months = append(w.Months, WaterfallMonth{Month: m})
	}
	for i := range w.Months {
		byMonth[w.Months[i].Month.First()] = &w.Months[i]
	}
	for rows.Next() {
		var m date.Date
		var kind string
		var total, through, def int64
		if err := rows.Scan(&m, &kind, &total, &through, &def); err != nil {
			rows.Close()
			return w, fmt.Errorf("reading the waterfall: %w", err)
		}
		wm := byMonth[m]
		switch kind {
		case KindRecognized:
			wm.Recognized += through
			wm.Scheduled += total - through
		case KindReversed:
			wm.Reversed += total
		}
		deferred[m] += def
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return w, fmt.Errorf("reading the waterfall: %w", err)
	}
	if basis == Accrual {
		open, err := deferredAt(ctx, q, currency, from.First().AddDays(-1))
		if err != nil {
			return w, err
		}
		for i := range w.Months {
			open += deferred[w.Months[i].Month.First()]
			v := open
			w.Months[i].Deferred = &v
		}
	}
	w.Total.Month = from
	for _, m := range w.Months {
		w.Total.Recognized += m.Recognized
		w.Total.Scheduled += m.Scheduled
		w.Total.Reversed += m.Reversed
		w.Total.Deferred = m.Deferred
	}
	for i := range w.Months {
		m := &w.Months[i]
		m.Net = m.Recognized + m.Scheduled + m.Reversed
	}
	w.Total.Net = w.Total.Recognized + w.Total.Scheduled + w.Total.Reversed
	return w, nil
}

// shareAt is the SQL of a ledger row's (e's) share of the deferred
// balance at the end of day, an SQL date: a recognized month's row cut at
// the day.
func shareAt(day string) string {
	return `CASE
	WHEN e.kind <> 'recognized' THEN CASE WHEN e.entry_date <= ` + day + ` THEN e.deferred ELSE 0 END
	WHEN ` + day + ` >= (date_trunc('month', e.start_date) + interval '1 month')::date THEN e.deferred
	WHEN ` + day + ` < date_trunc('month', e.start_date)::date THEN 0
	ELSE -e.cum[extract(day FROM ` + day + `)::int] END`
}

// deferredAt returns the accrual deferred balance of currency at the end
// of day.
func deferredAt(ctx context.Context, q Querier, currency string, day date.Date) (int64, error) {
	var v int64
	err := q.QueryRow(ctx, `SELECT coalesce(sum(`+shareAt("$2::date")+`), 0)::bigint FROM revenue_entries e
		WHERE e.currency = $1 AND e.basis = 'accrual' AND e.start_date <= $2`, currency, day).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("reading the deferred balance: %w", err)
	}
	return v, nil
}

// RollForward is the deferred revenue's movement over a range of days:
// Opening + Deferred − Recognized + Adjustments − Reversals = Closing,
// which Balanced checks.
type RollForward struct {
	From        date.Date `json:"from"`
	To          date.Date `json:"to"`
	Opening     int64     `json:"opening"`     // at the end of the day before From
	Deferred    int64     `json:"deferred"`    // invoices booked
	Recognized  int64     `json:"recognized"`  // deferred revenue recognized
	Adjustments int64     `json:"adjustments"` // updates' changes of net amounts
	Reversals   int64     `json:"reversals"`   // deferred revenue cancelled by voids and deletes
	Closing     int64     `json:"closing"`     // at the end of To
	Balanced    bool      `json:"balanced"`
}

// DeferredReport is the deferred revenue of a currency on a day, and its
// roll-forward over a range.
type DeferredReport struct {
	Currency    string      `json:"currency"`
	Basis       string      `json:"basis"`
	AsOf        date.Date   `json:"as_of"`
	Deferred    int64       `json:"deferred"`
	RollForward RollForward `json:"roll_forward"`
}

// GetDeferred returns currency's deferred revenue at the end of asOf, and
// its roll-forward from from through to. Only the accrual basis defers.
func GetDeferred(ctx context.Context, q Querier, currency, basis string, asOf, from, to date.Date) (DeferredReport, error) {
	rep := DeferredReport{Currency: currency, Basis: basis, AsOf: asOf, RollForward: RollForward{From: from, To: to}}
	if basis != Accrual {
		return rep, fmt.Errorf("%w: the %s basis defers nothing; deferred revenue is an accrual report", ErrNoBasis, basis)
	}
	var err error
	if rep.Deferred, err = deferredAt(ctx, q, currency, asOf); err != nil {
		return rep, err
	}
	rf := &rep.RollForward
	// Each kind's movement: its rows' shares at the end of To less their
	// shares at the end of the day before From.
	rows, err := q.Query(ctx, `SELECT e.kind, coalesce(sum(`+shareAt("$2::date")+` - `+shareAt("$3::date")+`), 0)::bigint
		FROM revenue_entries e
		WHERE e.currency = $1 AND e.basis = 'accrual' AND e.start_date <= $2
		GROUP BY e.kind`, currency, to, from.AddDays(-1))
	if err != nil {
		return rep, fmt.Errorf("reading the roll-forward: %w", err)
	}
	for rows.Next() {
		var kind string
		var v int64
		if err := rows.Scan(&kind, &v); err != nil {
			rows.Close()
			return rep, fmt.Errorf("reading the roll-forward: %w", err)
		}
		switch kind {
		case KindDeferred:
			rf.Deferred = v
		case KindRecognized:
			rf.Recognized = -v
		case KindAdjusted:
			rf.Adjustments = v
		case KindReversed:
			rf.Reversals = -v
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("reading the roll-forward: %w", err)
	}
	if rf.Opening, err = deferredAt(ctx, q, currency, from.AddDays(-1)); err != nil {
		return rep, err
	}
	if rf.Closing, err = deferredAt(ctx, q, currency, to); err != nil {
		return rep, err
	}
	rf.Balanced = rf.Opening+rf.Deferred-rf.Recognized+rf.Adjustments-rf.Reversals == rf.Closing
	return rep, nil
}

// ScheduleEntry is what a day or a month of an invoice recognizes.
type ScheduleEntry struct {
	Period   string `json:"period"` // YYYY-MM-DD or YYYY-MM
	Currency string `json:"currency"`
	Amount   int64  `json:"amount"`
	Status   string `json:"status"` // recognized (through as_of), scheduled, or partly (a month as_of cuts)
}

// ScheduleEvent is a booking, adjustment or reversal of an invoice.
type ScheduleEvent struct {
	Kind     string    `json:"kind"`
	Date     date.Date `json:"date"`
	Currency string    `json:"currency"`
	Deferred int64     `json:"deferred"`
	Revenue  int64     `json:"revenue"`
	Sequence int64     `json:"sequence"` // of the invoice event it follows from
}

// Schedule is one invoice's recognition, by day or by month.
type Schedule struct {
	InvoiceID   string          `json:"invoice_id"`
	Basis       string          `json:"basis"`
	Granularity string          `json:"granularity"`
	AsOf        date.Date       `json:"as_of"`
	Entries     []ScheduleEntry `json:"entries"`
	Events      []ScheduleEvent `json:"events"`
}

// GetSchedule returns invoice id's schedule on basis by day or month, as
// of asOf. ErrNotFound if the ledger does not know the invoice.
func GetSchedule(ctx context.Context, q Querier, id, basis, granularity string, asOf date.Date) (Schedule, error) {
	s := Schedule{InvoiceID: id, Basis: basis, Granularity: granularity, AsOf: asOf, Entries: []ScheduleEntry{}, Events: []ScheduleEvent{}}
	var raw []byte
	err := q.QueryRow(ctx, `SELECT history FROM revenue_ledger WHERE invoice_id = $1`, id).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return s, fmt.Errorf("reading the ledger of invoice %q: %w", id, err)
	}
	var h history
	if err := json.Unmarshal(raw, &h); err != nil {
		return s, fmt.Errorf("reading the ledger of invoice %q: %w", id, err)
	}
	var recognized []*row
	for _, r := range derive(&h) {
		switch {
		case r.Basis != basis:
		case r.Kind == KindRecognized:
			recognized = append(recognized, r)
		default:
			s.Events = append(s.Events, ScheduleEvent{Kind: r.Kind, Date: r.Date, Currency: r.Currency, Deferred: r.Deferred,
				Revenue: r.Revenue, Sequence: r.Seq})
		}
	}
	slices.SortFunc(s.Events, func(a, b ScheduleEvent) int {
		if c := a.Date.Days() - b.Date.Days(); c != 0 {
			return c
		}
		return int(a.Sequence - b.Sequence)
	})
	status := func(first, last date.Date) string {
		switch {
		case !asOf.Before(last):
			return "recognized"
		case asOf.Before(first):
			return "scheduled"
		}
		return "partly"
	}
	if basis == Cash {
		// Payments: every recognized row is a day.
		slices.SortFunc(recognized, func(a, b *row) int { return a.Date.Days() - b.Date.Days() })
		for _, r := range recognized {
			period := r.Date.String()
			if granularity == "month" {
				period = r.Date.Time().Format("2006-01")
			}
			if n := len(s.Entries); n > 0 && s.Entries[n-1].Period == period && s.Entries[n-1].Currency == r.Currency {
				s.Entries[n-1].Amount += r.Revenue
				continue
			}
			s.Entries = append(s.Entries, ScheduleEntry{Period: period, Currency: r.Currency, Amount: r.Revenue, Status: status(r.Date, r.Date)})
		}
		return s, nil
	}
	byCurrency := map[string][]*row{}
	for _, r := range recognized {
		byCurrency[r.Currency] = append(byCurrency[r.Currency], r)
	}
	for _, cur := range currencies(derive(&h)) {
		rs := byCurrency[cur]
		first, last, _ := span(rs)
		if granularity == "month" {
			for m := (Month{first.MonthStart()}); !last.Before(m.First()); m = m.next() {
				mEnd := m.next().First().AddDays(-1)
				amount := recognizedThrough(rs, mEnd) - recognizedThrough(rs, m.First().AddDays(-1))
				if amount != 0 {
					s.Entries = append(s.Entries, ScheduleEntry{Period: m.String(), Currency: cur, Amount: amount, Status: status(m.First(), mEnd)})
				}
			}
			continue
		}
		prev := recognizedThrough(rs, first.AddDays(-1))
		for day := first; !last.Before(day); day = day.AddDays(1) {
			now := recognizedThrough(rs, day)
			if now != prev {
				s.Entries = append(s.Entries, ScheduleEntry{Period: day.String(), Currency: cur, Amount: now - prev, Status: status(day, day)})
			}
			prev = now
		}
	}
	return s, nil
}
