package revenue

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/date"
)

func d(s string) date.Date {
	v, err := date.Parse(s)
	if err != nil {
		panic(err)
	}
	return v
}

func dp(s string) *date.Date {
	v := d(s)
	return &v
}

// invoiceTerms is the terms of an invoice of lines (total, period) with a
// discount, issued on issued.
func invoiceTerms(t *testing.T, issued string, discount, tax int64, lines ...lineTerms) terms {
	t.Helper()
	s := snapshot{Currency: "USD", IssuedAt: d(issued), Discount: discount, Tax: tax}
	for _, l := range lines {
		sl := struct {
			Total         int64 `json:"total"`
			ServicePeriod *struct {
				Start date.Date `json:"start"`
				End   date.Date `json:"end"`
			} `json:"service_period"`
		}{Total: l.Net}
		if l.Start != nil {
			sl.ServicePeriod = &struct {
				Start date.Date `json:"start"`
				End   date.Date `json:"end"`
			}{*l.Start, *l.End}
		}
		s.Lines = append(s.Lines, sl)
		s.Subtotal += l.Net
	}
	s.Total = s.Subtotal - discount + tax
	tm, err := s.terms()
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func period(total int64, start, end string) lineTerms {
	return lineTerms{Net: total, Start: dp(start), End: dp(end)}
}

func once(total int64) lineTerms { return lineTerms{Net: total} }

// days returns what each day from..to recognizes.
func days(rows map[string]*row, from, to string) []int64 {
	var out []int64
	for day := d(from); !d(to).Before(day); day = day.AddDays(1) {
		out = append(out, recognizedThroughAll(rows, day)-recognizedThroughAll(rows, day.AddDays(-1)))
	}
	return out
}

// recognizedThroughAll sums the accrual recognized rows of every currency
// through day, cutting a month's row at the day as a report does.
func recognizedThroughAll(rows map[string]*row, day date.Date) int64 {
	var rs []*row
	for _, r := range rows {
		if r.Basis == Accrual && r.Kind == KindRecognized {
			rs = append(rs, r)
		}
	}
	return recognizedThrough(rs, day)
}

// byMonth returns the accrual recognized rows' amounts by month.
func byMonth(rows map[string]*row) map[string]int64 {
	out := map[string]int64{}
	for _, r := range rows {
		if r.Basis == Accrual && r.Kind == KindRecognized {
			y, m, _ := r.Start.YMD()
			out[fmt.Sprintf("%04d-%02d", y, int(m))] += r.Revenue
		}
	}
	return out
}

func single(tm terms) *history {
	return &history{CustomerID: "c", Versions: []version{{Seq: 1, EventID: "e1", Status: "open", Effective: tm.Issued, Terms: tm}}}
}

func TestRecognitionVectors(t *testing.T) {
	t.Run("10000 over 3 days", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-01-01", 0, 0, period(10000, "2025-01-01", "2025-01-03"))))
		if got := days(rows, "2025-01-01", "2025-01-03"); !slices.Equal(got, []int64{3333, 3334, 3333}) {
			t.Errorf("days %v, want [3333 3334 3333]", got)
		}
	})
	t.Run("1 over 3 days", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-01-01", 0, 0, period(1, "2025-01-01", "2025-01-03"))))
		if got := days(rows, "2025-01-01", "2025-01-03"); !slices.Equal(got, []int64{0, 1, 0}) {
			t.Errorf("days %v, want [0 1 0]", got)
		}
	})
	for _, c := range []struct {
		name         string
		total        int64
		start, end   string
		issued       string
		want         map[string]int64
		deferredLeft int64 // after the first month
	}{
		{"1000 over 2025-01-31..02-02", 1000, "2025-01-31", "2025-02-02", "2025-01-31", map[string]int64{"2025-01": 333, "2025-02": 667}, 667},
		{"$31 for 2019-01-15..02-14 (Stripe)", 3100, "2019-01-15", "2019-02-14", "2019-01-15", map[string]int64{"2019-01": 1700, "2019-02": 1400}, 1400},
		{"$120 for 120 days from Jun 15 (Stripe, by day)", 12000, "2025-06-15", "2025-10-12", "2025-06-15",
			map[string]int64{"2025-06": 1600, "2025-07": 3100, "2025-08": 3100, "2025-09": 3000, "2025-10": 1200}, 10400},
		{"$365 from January 1 for a year (Stripe)", 36500, "2025-01-01", "2025-12-31", "2025-01-01",
			map[string]int64{"2025-01": 3100, "2025-02": 2800, "2025-03": 3100, "2025-04": 3000, "2025-05": 3100, "2025-06": 3000,
				"2025-07": 3100, "2025-08": 3100, "2025-09": 3000, "2025-10": 3100, "2025-11": 3000, "2025-12": 3100}, 33400},
		{"$1,200 for 2025 (Lago's cumulative figures)", 120000, "2025-01-01", "2025-12-31", "2025-01-01",
			map[string]int64{"2025-01": 10192, "2025-02": 9205, "2025-03": 10192, "2025-04": 9863, "2025-05": 10192, "2025-06": 9863,
				"2025-07": 10192, "2025-08": 10191, "2025-09": 9863, "2025-10": 10192, "2025-11": 9863, "2025-12": 10192}, 109808},
	} {
		t.Run(c.name, func(t *testing.T) {
			rows := derive(single(invoiceTerms(t, c.issued, 0, 0, period(c.total, c.start, c.end))))
			got := byMonth(rows)
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("by month %v, want %v", got, c.want)
			}
			var sum int64
			for _, v := range got {
				sum += v
			}
			if sum != c.total {
				t.Errorf("recognized %d in all, want %d", sum, c.total)
			}
			first := d(c.start).MonthStart().AddDays(32).MonthStart().AddDays(-1)
			if left := deferredThrough(rows, first); left != c.deferredLeft {
				t.Errorf("deferred after the first month %d, want %d", left, c.deferredLeft)
			}
		})
	}
	t.Run("tax is no revenue", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-03-01", 0, 500, once(5000))))
		if got := byMonth(rows); got["2025-03"] != 5000 || len(got) != 1 {
			t.Errorf("by month %v, want 5000 in March", got)
		}
		if r := rows["accrual/deferred/v1"]; r.Deferred != 5000 {
			t.Errorf("booked %d, want 5000 (the tax of 500 is a liability)", r.Deferred)
		}
	})
	t.Run("discount is netted", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-03-01", 1000, 0, once(5000))))
		if got := byMonth(rows); got["2025-03"] != 4000 {
			t.Errorf("by month %v, want 4000 in March", got)
		}
	})
	t.Run("discount allocated over lines in proportion", func(t *testing.T) {
		tm := invoiceTerms(t, "2025-03-01", 100, 0, once(3000), once(6000), once(1000))
		if got := []int64{tm.Lines[0].Net, tm.Lines[1].Net, tm.Lines[2].Net}; !slices.Equal(got, []int64{2970, 5940, 990}) {
			t.Errorf("line nets %v, want [2970 5940 990]", got)
		}
		tm = invoiceTerms(t, "2025-03-01", 2, 0, once(1), once(1), once(1))
		if got := []int64{tm.Lines[0].Net, tm.Lines[1].Net, tm.Lines[2].Net}; !slices.Equal(got, []int64{0, 1, 0}) || tm.Net != 1 {
			t.Errorf("line nets %v (net %d), want [0 1 0]: 2 split cumulatively over three lines of 1", got, tm.Net)
		}
	})
	t.Run("service before the issue date is caught up on it", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-02-01", 0, 0, period(3100, "2025-01-01", "2025-01-31"))))
		if got := byMonth(rows); got["2025-01"] != 0 || got["2025-02"] != 3100 {
			t.Errorf("by month %v, want all 3100 on the issue date in February", got)
		}
	})
	t.Run("the naive last-day remainder never happens", func(t *testing.T) {
		rows := derive(single(invoiceTerms(t, "2025-01-01", 0, 0, period(120000, "2025-01-01", "2025-12-31"))))
		for i, v := range days(rows, "2025-01-01", "2025-12-31") {
			if v < 328 || v > 329 {
				t.Fatalf("day %d recognizes %d, want 328 or 329 (120000/365 = 328.77)", i+1, v)
			}
		}
	})
}

// deferredThrough is the deferred balance at the end of day.
func deferredThrough(rows map[string]*row, day date.Date) int64 {
	var sum int64
	for _, r := range rows {
		if r.Basis != Accrual {
			continue
		}
		if r.Kind == KindRecognized {
			continue
		}
		if !day.Before(r.Date) {
			sum += r.Deferred
		}
	}
	return sum - recognizedThroughAll(rows, day)
}

func TestMulDivRoundAtTheEdges(t *testing.T) {
	for _, c := range []struct{ a, b, c, want int64 }{
		{10, 1, 3, 3}, {10, 2, 3, 7}, {-10, 2, 3, -7}, {1, 1, 2, 1}, {-1, 1, 2, -1}, {5, 0, 9, 0},
		{math.MaxInt64, 1, 1, math.MaxInt64},
		{math.MaxInt64, 3, 7, 3952873730080618203},                 // exact: 3952873730080618203.0
		{9_000_000_000_000_000_000, 365, 366, 8975409836065573770}, // 8975409836065573770.49…
	} {
		if got := mulDivRound(c.a, c.b, c.c); got != c.want {
			t.Errorf("mulDivRound(%d, %d, %d) = %d, want %d", c.a, c.b, c.c, got, c.want)
		}
	}
}

// An update of an open invoice adjusts the deferred revenue by the change
// and spreads what remains over the rest of the service period, from the
// update's date; what was recognized before it stays.
func TestAnUpdateSpreadsTheDifferenceOverWhatRemains(t *testing.T) {
	v1 := invoiceTerms(t, "2025-01-01", 0, 0, period(36500, "2025-01-01", "2025-12-31"))
	v2 := invoiceTerms(t, "2025-01-01", 0, 0, period(73000, "2025-01-01", "2025-12-31"))
	h := single(v1)
	h.Versions = append(h.Versions, version{Seq: 2, EventID: "e2", Status: "open", Effective: d("2025-07-01"), Terms: v2})
	rows := derive(h)
	months := byMonth(rows)
	if months["2025-01"] != 3100 || months["2025-06"] != 3000 {
		t.Errorf("the months before the update changed: %v", months)
	}
	var sum int64
	for _, v := range months {
		sum += v
	}
	if sum != 73000 {
		t.Errorf("recognized %d in all, want the new net 73000", sum)
	}
	// 18100 recognized by June 30; 54900 over the 184 days left.
	if months["2025-07"] != 9249 { // round(54900·31/184) = 9249.4
		t.Errorf("July %d, want 9249", months["2025-07"])
	}
	if a := rows["accrual/adjusted/v2"]; a == nil || a.Deferred != 36500 || a.Date != d("2025-07-01") {
		t.Errorf("adjusted row %+v, want +36500 on 2025-07-01", a)
	}
	// A change of tax alone is no change of revenue.
	h.Versions = append(h.Versions, version{Seq: 3, EventID: "e3", Status: "open", Effective: d("2025-08-01"),
		Terms: invoiceTerms(t, "2025-01-01", 0, 999, period(73000, "2025-01-01", "2025-12-31"))})
	if again := derive(h); len(again) != len(rows) || again["accrual/adjusted/v3"] != nil {
		t.Errorf("a tax change made rows: %d rows, before %d", len(again), len(rows))
	}
	// After the service period, what remains is recognized on the update's date.
	late := single(v1)
	late.Versions = append(late.Versions, version{Seq: 2, EventID: "e2", Status: "open", Effective: d("2026-03-10"), Terms: v2})
	if got := byMonth(derive(late)); got["2026-03"] != 36500 || got["2025-12"] != 3100 {
		t.Errorf("a late update: %v, want 36500 in March 2026 and December untouched", got)
	}
}

// A void reverses what was recognized, on its date, and cancels the rest.
func TestAVoidReversesWhatWasRecognized(t *testing.T) {
	tm := invoiceTerms(t, "2025-01-01", 0, 0, period(36500, "2025-01-01", "2025-12-31"))
	h := single(tm)
	h.Versions = append(h.Versions, version{Seq: 2, EventID: "e2", Status: "void", Effective: d("2025-03-01"), Terms: tm})
	rows := derive(h)
	r := rows["accrual/reversed/v2"]
	if r == nil || r.Revenue != -5900 || r.Deferred != -(36500-5900) || r.Date != d("2025-03-01") {
		t.Fatalf("reversal %+v, want revenue −5900 and deferred −30600 on 2025-03-01", r)
	}
	if got := byMonth(rows); len(got) != 2 || got["2025-02"] != 2800 {
		t.Errorf("recognized %v, want January and February only", got)
	}
	if left := deferredThrough(rows, d("2025-12-31")); left != 0 {
		t.Errorf("deferred left %d after the void, want 0", left)
	}
}

func TestCashBasisRecognizesPaymentsInProportion(t *testing.T) {
	tm := invoiceTerms(t, "2025-01-01", 0, 1000, period(10000, "2025-01-01", "2025-12-31")) // total 11000
	h := single(tm)
	h.Payments = []paymentRec{
		{Seq: 2, ID: "p1", Currency: "USD", Amount: 3333, PaidAt: d("2025-02-01"), AmountPaid: 3333, Total: 11000},
		{Seq: 3, ID: "p2", Currency: "USD", Amount: 7667, PaidAt: d("2025-05-01"), AmountPaid: 11000, Total: 11000},
	}
	rows := derive(h)
	p1, p2 := rows["cash/recognized/pp1"], rows["cash/recognized/pp2"]
	if p1 == nil || p2 == nil || p1.Revenue != 3030 || p1.Revenue+p2.Revenue != 10000 || p2.Date != d("2025-05-01") {
		t.Errorf("cash rows %+v %+v, want 3030 (3333 × 10000/11000) then the rest of 10000", p1, p2)
	}
	// A payment before its invoice is known waits for it.
	early := &history{Payments: h.Payments}
	if rows := derive(early); len(rows) != 0 {
		t.Errorf("%d rows from payments alone, want none", len(rows))
	}
}

func TestACurrencyChangeEndsOneLedgerAndStartsAnother(t *testing.T) {
	usd := invoiceTerms(t, "2025-01-01", 0, 0, period(31000, "2025-01-01", "2025-01-31"))
	eur := usd
	eur.Currency = "EUR"
	h := single(usd)
	h.Versions = append(h.Versions, version{Seq: 2, EventID: "e2", Status: "open", Effective: d("2025-01-11"), Terms: eur})
	rows := derive(h)
	rev, book := rows["accrual/reversed/v2"], rows["accrual/deferred/v2"]
	if rev == nil || rev.Currency != "USD" || rev.Revenue != -10000 || book == nil || book.Currency != "EUR" || book.Deferred != 31000 {
		t.Fatalf("reversal %+v and booking %+v, want USD's 10000 reversed and EUR 31000 booked", rev, book)
	}
	if r := rows["accrual/recognized/2025-01:EUR:v2"]; r == nil || r.Revenue != 31000 || r.Start != d("2025-01-11") {
		t.Errorf("EUR recognition %+v, want all 31000 from January 11", r)
	}
}

// The ledger does not depend on the order events arrive in: a history
// built in any order derives the same rows.
func TestTheLedgerIsTheSameWhateverTheOrder(t *testing.T) {
	v1 := invoiceTerms(t, "2025-01-01", 0, 0, period(36500, "2025-01-01", "2025-12-31"))
	v2 := invoiceTerms(t, "2025-01-01", 500, 0, period(36500, "2025-01-01", "2025-12-31"))
	vs := []version{
		{Seq: 1, EventID: "e1", Status: "open", Effective: d("2025-01-01"), Terms: v1},
		{Seq: 2, EventID: "e2", Status: "open", Effective: d("2025-04-01"), Terms: v2},
		{Seq: 4, EventID: "e4", Status: "void", Effective: d("2025-09-15"), Terms: v2},
	}
	ps := []paymentRec{{Seq: 3, ID: "p", Currency: "USD", Amount: 100, PaidAt: d("2025-05-01"), AmountPaid: 100, Total: 36000}}
	var inOrder history
	for _, v := range vs {
		inOrder.addVersion(v)
	}
	inOrder.addPayment(ps[0])
	var shuffled history
	shuffled.addPayment(ps[0])
	for _, i := range []int{2, 0, 1, 0} { // and one twice
		shuffled.addVersion(vs[i])
	}
	a, b := derive(&inOrder), derive(&shuffled)
	if len(a) != len(b) {
		t.Fatalf("%d rows in order, %d shuffled", len(a), len(b))
	}
	for k, r := range a {
		if o := b[k]; o == nil || !o.same(r) {
			t.Errorf("row %s: %+v in order, %+v shuffled", k, r, o)
		}
	}
}

// randomHistory returns an invoice's history of random versions and
// payments, in order.
func randomHistory(rng *rand.Rand) *history {
	day0 := d("2024-01-01").Days() + rng.IntN(700)
	mkTerms := func(cur string) terms {
		var lines []lineTerms
		for range 1 + rng.IntN(4) {
			amount := rng.Int64N(500_000)
			if rng.IntN(4) == 0 {
				lines = append(lines, once(amount))
				continue
			}
			s := day0 + rng.IntN(400) - 100
			lines = append(lines, lineTerms{Net: amount, Start: ptr(date.FromDays(s)), End: ptr(date.FromDays(s + rng.IntN(800)))})
		}
		var sub int64
		for _, l := range lines {
			sub += l.Net
		}
		tm := terms{Currency: cur, Issued: date.FromDays(day0 + rng.IntN(30)), Lines: lines}
		discount := int64(0)
		if sub > 0 && rng.IntN(3) == 0 {
			discount = rng.Int64N(sub + 1)
		}
		shares := spread(discount, func() []int64 {
			w := make([]int64, len(lines))
			for i, l := range lines {
				w[i] = l.Net
			}
			return w
		}())
		for i := range tm.Lines {
			tm.Lines[i].Net -= shares[i]
		}
		tm.Net = sub - discount
		tm.Total = tm.Net + rng.Int64N(10_000)
		return tm
	}
	h := &history{CustomerID: "c"}
	cur := "USD"
	tm := mkTerms(cur)
	h.Versions = append(h.Versions, version{Seq: 1, EventID: "e1", Status: "open", Effective: tm.Issued, Terms: tm})
	at := tm.Issued.Days()
	seq := int64(1)
	paid := int64(0)
	for range rng.IntN(6) {
		seq++
		at += rng.IntN(120)
		switch r := rng.IntN(10); {
		case r < 4:
			if rng.IntN(8) == 0 {
				cur = map[string]string{"USD": "EUR", "EUR": "USD"}[cur]
			}
			tm = mkTerms(cur)
			h.Versions = append(h.Versions, version{Seq: seq, EventID: fmt.Sprint("e", seq), Status: "open", Effective: date.FromDays(at), Terms: tm})
			paid = 0
		case r < 6:
			// Revenue stays: a change of tax, or paid.
			tm.Total += rng.Int64N(100)
			h.Versions = append(h.Versions, version{Seq: seq, EventID: fmt.Sprint("e", seq), Status: []string{"open", "paid"}[rng.IntN(2)],
				Effective: date.FromDays(at), Terms: tm})
		case r < 8:
			if tm.Total == 0 || paid >= tm.Total {
				continue
			}
			p := 1 + rng.Int64N(tm.Total-paid)
			paid += p
			h.Payments = append(h.Payments, paymentRec{Seq: seq, ID: fmt.Sprint("p", seq), Currency: cur, Amount: p,
				PaidAt: date.FromDays(at), AmountPaid: paid, Total: tm.Total})
		default:
			h.Versions = append(h.Versions, version{Seq: seq, EventID: fmt.Sprint("e", seq), Status: []string{"void", "deleted"}[rng.IntN(2)],
				Effective: date.FromDays(at), Terms: tm})
			return h
		}
	}
	return h
}

func ptr[T any](v T) *T { return &v }

// diffRows describes the first difference of two derivations, "" for none.
func diffRows(want, got map[string]*row) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d rows, want %d", len(got), len(want))
	}
	for k, r := range want {
		if o := got[k]; o == nil || !o.same(r) {
			return fmt.Sprintf("row %s: %+v, want %+v", k, o, r)
		}
	}
	return ""
}

// Over random invoice histories: recognized plus deferred is always the net
// amount booked less what was reversed; nothing is created or lost (an
// invoice left open recognizes its net amount exactly, a voided one nets to
// nothing); the deferred balance is never negative; nothing is recognized
// before the invoice is issued; and the rows do not depend on the order
// the events arrive in, nor on repeats.
func TestLedgerProperties(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	shortcuts := 0
	for i := range 2000 {
		h := randomHistory(rng)
		rows := derive(h)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d, history %d (%+v): %s", seed, i, *h, fmt.Sprintf(format, args...))
		}
		byCur := map[string][]*row{}
		for _, r := range rows {
			if r.Basis == Accrual {
				byCur[r.Currency] = append(byCur[r.Currency], r)
			}
		}
		end := d("2040-01-01")
		for cur, rs := range byCur {
			// An invoice's currency may be left and taken again: runs.
			var booked, reversedNet, revenue, deferred int64
			runs := 0
			for _, r := range rs {
				revenue += r.Revenue
				deferred += r.Deferred
				switch r.Kind {
				case KindDeferred:
					runs++
					booked += r.Deferred
				case KindAdjusted:
					booked += r.Deferred
				case KindReversed:
					reversedNet += -(r.Revenue + r.Deferred)
				case KindRecognized:
					if r.Start.Before(h.Versions[0].Terms.Issued) {
						fail("%s recognizes %s, before the issue date", r.Key, r.Start)
					}
				}
			}
			// At the end of time, all is recognized or reversed.
			if revenue+deferred != booked-reversedNet || deferred != 0 {
				fail("%s: recognized %d + deferred %d, want booked %d − reversed %d, all recognized", cur, revenue, deferred, booked, reversedNet)
			}
			if last := h.Versions[len(h.Versions)-1]; runs == 1 && final(last.Status) && last.Terms.Currency == cur && revenue != 0 {
				fail("%s: voided, yet revenue %d remains", cur, revenue)
			}
			sub := map[string]*row{}
			for _, r := range rs {
				sub[r.id()] = r
			}
			for day := d("2023-12-01"); day.Before(end); day = day.AddDays(17) {
				if left := deferredThrough(sub, day); left < 0 {
					fail("%s: deferred %d on %s", cur, left, day)
				}
			}
		}
		// Any order, with repeats, derives the same rows.
		var shuffled history
		shuffled.CustomerID = h.CustomerID
		for _, j := range rng.Perm(len(h.Versions) + len(h.Payments)) {
			for range 1 + rng.IntN(2) {
				if j < len(h.Versions) {
					shuffled.addVersion(h.Versions[j])
				} else {
					shuffled.addPayment(h.Payments[j-len(h.Versions)])
				}
			}
		}
		if d := diffRows(rows, derive(&shuffled)); d != "" {
			fail("in order and shuffled: %s", d)
		}
		// The history built event by event, as the group builds it,
		// derives the same rows step by step as deriveAfter's shortcut.
		var step history
		var stepRows map[string]*row
		for _, j := range rng.Perm(len(h.Versions) + len(h.Payments)) {
			var seq int64
			if j < len(h.Versions) {
				step.addVersion(h.Versions[j])
				seq = h.Versions[j].Seq
			} else {
				step.addPayment(h.Payments[j-len(h.Versions)])
				seq = h.Payments[j-len(h.Versions)].Seq
			}
			step.CustomerID = h.CustomerID
			before := stepRows
			stepRows = deriveAfter(&step, seq, stepRows)
			if before != nil && reflect.ValueOf(before).Pointer() == reflect.ValueOf(stepRows).Pointer() {
				shortcuts++
			}
			if d := diffRows(derive(&step), stepRows); d != "" {
				fail("deriveAfter after sequence %d: %s", seq, d)
			}
		}
		if d := diffRows(rows, stepRows); d != "" {
			fail("step by step: %s", d)
		}
	}
	if shortcuts < 100 {
		t.Errorf("deriveAfter took its shortcut %d times in 2000 histories; the check of it is not exercised", shortcuts)
	}
}
