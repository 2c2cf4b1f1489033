package revenue

import (
	"math"
	"math/bits"
	"slices"

	"github.com/tally-dev/tally/internal/date"
)

// The arithmetic of recognition. Amounts are integer minor units; days
// are day numbers (date.Date.Days); no float touches either.
//
// Rounding is cumulative: what is recognized through day k of N days of
// an amount A is round(A·k/N), half away from zero, and day k recognizes
// the difference with day k−1. So each day is within one minor unit of
// A/N, the days sum to A exactly, and a month's figure does not depend on
// how the days are grouped. The same rule splits a discount over lines
// and rescales what remains of an invoice after an update.

// mulDivRound returns a·b/c rounded half away from zero, for 0 ≤ b ≤ c
// and c > 0, in 128-bit arithmetic: |a·b| may exceed int64 even though
// the result, at most |a|, does not.
func mulDivRound(a, b, c int64) int64 {
	if c <= 0 || b < 0 || b > c {
		panic("revenue: mulDivRound out of range")
	}
	neg := a < 0
	ua := uint64(a)
	if neg {
		ua = uint64(-a) // a > math.MinInt64: amounts are bounded far below it
	}
	// (2ab + c) / 2c, in 128 bits: floor(ab/c + 1/2).
	hi, lo := bits.Mul64(ua, uint64(b))
	hi = hi<<1 | lo>>63
	lo <<= 1
	var carry uint64
	lo, carry = bits.Add64(lo, uint64(c), 0)
	hi += carry
	q, _ := bits.Div64(hi, lo, 2*uint64(c))
	if neg {
		return -int64(q)
	}
	return int64(q)
}

// spread splits total over weights in proportion, cumulatively rounded:
// part i is round(total·W(i)/W) − round(total·W(i−1)/W), where W(i) is the
// sum of the first i weights. Weights are non-negative; with a zero sum,
// every part is 0 but the last, which takes total.
func spread(total int64, weights []int64) []int64 {
	parts := make([]int64, len(weights))
	var sum int64
	for _, w := range weights {
		sum += w
	}
	if len(weights) == 0 {
		return parts
	}
	if sum == 0 {
		parts[len(parts)-1] = total
		return parts
	}
	var run, prev int64
	for i, w := range weights {
		run += w
		cum := mulDivRound(total, run, sum)
		parts[i] = cum - prev
		prev = cum
	}
	return parts
}

// ratable returns what an amount spread over n days (n ≥ 1) recognizes
// through day k (clamped to 0..n).
func ratable(amount int64, k, n int) int64 {
	k = min(max(k, 0), n)
	return mulDivRound(amount, int64(k), int64(n))
}

// terms are what one version of an invoice says of its revenue: the net
// amount it books (lines less discount; tax is never revenue), the issue
// date, and each line's share of the net with its service period.
type terms struct {
	Currency string      `json:"currency"`
	Issued   date.Date   `json:"issued"`
	Net      int64       `json:"net"`
	Total    int64       `json:"total"` // net plus tax: what the customer pays
	Lines    []lineTerms `json:"lines"`
}

// lineTerms is one line's share of an invoice's net amount. A line with
// a service period is recognized ratably by day over it, both ends
// inclusive; one without, at the issue date.
type lineTerms struct {
	Net   int64      `json:"net"`
	Start *date.Date `json:"start,omitempty"`
	End   *date.Date `json:"end,omitempty"`
}

// sameRevenue reports whether two versions' terms recognize alike: the
// same currency, issue date and lines. Their totals (tax) may differ.
func (t terms) sameRevenue(o terms) bool {
	return t.Currency == o.Currency && t.Issued == o.Issued && t.Net == o.Net &&
		slices.EqualFunc(t.Lines, o.Lines, func(a, b lineTerms) bool {
			return a.Net == b.Net && eqDate(a.Start, b.Start) && eqDate(a.End, b.End)
		})
}

func eqDate(a, b *date.Date) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

// planned returns what t alone recognizes through day d: each line
// ratably over its service period, or at the issue date without one; and
// nothing before the issue date, where the days of service already past
// are caught up.
func (t terms) planned(d int) int64 {
	issued := t.Issued.Days()
	if d < issued {
		return 0
	}
	var sum int64
	for _, l := range t.Lines {
		if l.Start == nil {
			sum += l.Net
			continue
		}
		s, e := l.Start.Days(), l.End.Days()
		sum += ratable(l.Net, d-s+1, e-s+1)
	}
	return sum
}

// lastPlanned is the last day on which planned changes.
func (t terms) lastPlanned() int {
	last := t.Issued.Days()
	for _, l := range t.Lines {
		if l.End != nil {
			last = max(last, l.End.Days())
		}
	}
	return last
}

// segment is a stretch of an invoice's recognition under one version's
// terms: from day from on, what t plans for the days from from on, scaled
// so that with what was recognized before from (base) the whole comes to
// t.Net. The first version of a run recognizes its plan as it is (from is
// the issue date and base 0, so the scale is 1). The scaling is cumulative
// too: through day d it recognizes round(rest·X/Q), X being what the plan
// recognizes from from through d, Q what it has left from from on.
type segment struct {
	t    terms
	from int
	base int64 // recognized before from
	// plannedBefore is t.planned(from−1); remaining is t.Net less it: what
	// the plan has left from from on. When nothing is left, what remains
	// (t.Net − base) is recognized at once on from.
	plannedBefore, remaining int64
}

func newSegment(t terms, from int, base int64) segment {
	pb := t.planned(from - 1)
	return segment{t: t, from: from, base: base, plannedBefore: pb, remaining: t.Net - pb}
}

// at returns what is recognized through day d ≥ s.from. What remains is
// recognized at once on from when the plan has nothing left after it, or
// when more was recognized before than the terms now book: revenue is not
// taken back day by day.
func (s segment) at(d int) int64 {
	rest := s.t.Net - s.base
	if s.remaining == 0 || rest < 0 {
		return s.t.Net
	}
	return s.base + mulDivRound(rest, s.t.planned(d)-s.plannedBefore, s.remaining)
}

// last is the last day on which the segment's recognition changes.
func (s segment) last() int { return max(s.from, s.t.lastPlanned()) }

// curve is an invoice's recognition in one currency, day by day: its
// segments in order, and, for a voided or deleted invoice, the day from
// which nothing more is recognized (stop; 0 for none).
type curve struct {
	segs []segment
	stop int
}

// at returns what the curve has recognized through day d.
func (c curve) at(d int) int64 {
	if c.stop != 0 && d >= c.stop {
		d = c.stop - 1
	}
	var r int64
	for _, s := range c.segs {
		if d < s.from {
			break
		}
		r = s.at(d)
	}
	return r
}

// span returns the days over which the curve can change: from its first
// segment's start to the last day any segment changes (or the day before
// it stops). first > last for a curve that recognizes nothing.
func (c curve) span() (first, last int) {
	if len(c.segs) == 0 {
		return 1, 0
	}
	first, last = c.segs[0].from, math.MinInt
	for _, s := range c.segs {
		last = max(last, s.last())
	}
	if c.stop != 0 {
		last = min(last, c.stop-1)
	}
	return first, last
}
