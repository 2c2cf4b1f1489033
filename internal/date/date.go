// Package date is a calendar date without a time of day or a zone, written
// YYYY-MM-DD. Tally's business dates (issue, due, payment, service days) are
// dates, and days are counted in UTC.
package date

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Date is a day in the proleptic Gregorian calendar. The zero Date is
// 0001-01-01 and IsZero reports it.
type Date struct {
	t time.Time // midnight UTC
}

const layout = "2006-01-02"

// ErrSyntax is wrapped by Parse's errors.
var ErrSyntax = errors.New("date: want YYYY-MM-DD")

// Parse reads a YYYY-MM-DD date; it rejects anything else, including
// times, zones and out-of-range days such as 2025-02-30.
func Parse(s string) (Date, error) {
	if len(s) != len(layout) {
		return Date{}, fmt.Errorf("%w, got %q", ErrSyntax, clip(s))
	}
	t, err := time.Parse(layout, s)
	if err != nil {
		return Date{}, fmt.Errorf("%w, got %q", ErrSyntax, clip(s))
	}
	return Date{t}, nil
}

// Of returns the UTC date of t.
func Of(t time.Time) Date {
	y, m, d := t.UTC().Date()
	return New(y, m, d)
}

// New returns the date y-m-d, normalising out-of-range values as time.Date does.
func New(y int, m time.Month, d int) Date { return Date{time.Date(y, m, d, 0, 0, 0, 0, time.UTC)} }

// FromDays returns the date n days after 1970-01-01 (before it for n < 0).
func FromDays(n int) Date { return Date{time.Unix(int64(n)*86400, 0).UTC()} }

// Days returns the number of days from 1970-01-01 to d.
func (d Date) Days() int { return int(d.t.Unix() / 86400) }

// AddDays returns the date n days after d.
func (d Date) AddDays(n int) Date { return Date{d.t.AddDate(0, 0, n)} }

// YMD returns d's year, month and day of the month.
func (d Date) YMD() (int, time.Month, int) { return d.t.Date() }

// MonthStart returns the first day of d's month.
func (d Date) MonthStart() Date {
	y, m, _ := d.t.Date()
	return New(y, m, 1)
}

// Time returns midnight UTC of d.
func (d Date) Time() time.Time { return d.t }

func (d Date) String() string               { return d.t.Format(layout) }
func (d Date) IsZero() bool                 { return d.t.IsZero() }
func (d Date) Before(o Date) bool           { return d.t.Before(o.t) }
func (d Date) DaysSince(o Date) int         { return int(d.t.Sub(o.t).Hours() / 24) }
func (d Date) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Date) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ScanDate and DateValue make Date a PostgreSQL date for pgx.
func (d *Date) ScanDate(v pgtype.Date) error {
	if !v.Valid || v.InfinityModifier != pgtype.Finite {
		return fmt.Errorf("date: cannot scan %v into a Date", v)
	}
	*d = Of(v.Time)
	return nil
}

func (d Date) DateValue() (pgtype.Date, error) {
	return pgtype.Date{Time: d.t, Valid: true}, nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
