package revenue

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"

	"github.com/tally-dev/tally/internal/date"
)

// The ledger of an invoice is a function of the invoice's versions and
// payments, whatever the order they arrive in: each event adds one to the
// invoice's history (history), the ledger's rows are derived from the whole
// history again (derive), and what changed is written and announced. So a
// duplicate changes nothing, an event that arrives late takes its place,
// and a replay from the beginning gives the same rows.

// Bases of the ledger's rows.
const (
	Accrual = "accrual" // revenue follows delivery (ASC 606, IFRS 15): the default
	Cash    = "cash"    // revenue follows payment: the view small businesses switch to
)

// Kinds of rows, named as the events that announce them.
const (
	KindDeferred   = "deferred"   // an invoice booked: its net amount, deferred
	KindRecognized = "recognized" // deferred revenue recognized, by service day
	KindAdjusted   = "adjusted"   // an update of an open invoice changed its net amount or schedule
	KindReversed   = "reversed"   // a void or delete: recognized revenue reversed, the rest of the deferred cancelled
)

// history is what the ledger knows of one invoice.
type history struct {
	CustomerID string       `json:"customer_id"`
	Versions   []version    `json:"versions"` // by sequence
	Payments   []paymentRec `json:"payments"` // by sequence
}

// version is one version of an invoice, from an invoice event.
type version struct {
	Seq       int64     `json:"seq"`
	EventID   string    `json:"event_id"`
	Status    string    `json:"status"`
	Effective date.Date `json:"effective"` // when the change took effect: the date of its update, void or delete
	Terms     terms     `json:"terms"`
}

// paymentRec is one payment, from a payment_received event.
type paymentRec struct {
	Seq        int64     `json:"seq"`
	ID         string    `json:"id"`
	Currency   string    `json:"currency"`
	Amount     int64     `json:"amount"`
	PaidAt     date.Date `json:"paid_at"`
	AmountPaid int64     `json:"amount_paid"` // all payments so far, this one included
	Total      int64     `json:"total"`
}

// addVersion adds v unless the history holds its sequence already, and
// reports whether it did.
func (h *history) addVersion(v version) bool {
	return insertBySeq(&h.Versions, v, func(v version) int64 { return v.Seq })
}

// addPayment adds p unless the history holds its sequence already, and
// reports whether it did.
func (h *history) addPayment(p paymentRec) bool {
	return insertBySeq(&h.Payments, p, func(p paymentRec) int64 { return p.Seq })
}

func insertBySeq[T any](xs *[]T, x T, seqOf func(T) int64) bool {
	i, found := slices.BinarySearchFunc(*xs, seqOf(x), func(y T, s int64) int { return cmp.Compare(seqOf(y), s) })
	if !found {
		*xs = slices.Insert(*xs, i, x)
	}
	return !found
}

// final reports whether a status ends an invoice.
func final(status string) bool { return status == "void" || status == "deleted" }

// row is one row of the ledger (revenue_entries). Revenue and Deferred
// are what it changes of the two balances: booking an invoice defers its
// net amount, recognizing moves deferred revenue to revenue, a reversal
// takes back both.
type row struct {
	Basis, Kind, Key string
	CustomerID       string
	Currency         string
	Date             date.Date // the day the row is dated: the service day recognized (a month's last), or when it happened
	Start, End       date.Date // the days it covers: a recognized month's first and last day of service
	Revenue          int64
	Deferred         int64
	// Cum, for a recognized month, is what is recognized from Start
	// through each day of the month, so that a report can cut the month
	// at any day.
	Cum []int64
	// Seq and EventID name the invoice event a point row (booked,
	// adjusted, reversed, a payment) follows from; recognized months,
	// which follow from the whole history, name none.
	Seq     int64
	EventID string
}

// id names a row among an invoice's rows.
func (r *row) id() string { return r.Basis + "/" + r.Kind + "/" + r.Key }

// same reports whether two rows say the same.
func (r *row) same(o *row) bool {
	return r.CustomerID == o.CustomerID && r.Currency == o.Currency && r.Date == o.Date && r.Start == o.Start && r.End == o.End &&
		r.Revenue == o.Revenue && r.Deferred == o.Deferred && slices.Equal(r.Cum, o.Cum) && r.Seq == o.Seq
}

// run is a stretch of an invoice's history in one currency: its curve and
// the point rows it books. An invoice has one, unless an update changed
// its currency: the run in the old currency then ends as a void does, and
// one in the new currency begins.
type run struct {
	first    int64 // the sequence of its first version
	currency string
	curve    curve
	net      int64 // the net amount of its last version
	last     version
}

// deriveAfter returns derive(h) for a history whose newest event, seq, was
// just added to one that derived rows: rows themselves, without deriving
// again, when that event is a version that changes no revenue (a paid
// invoice, a change of tax or due date) and comes after every other event
// of the history; else derive(h). TestLedgerProperties checks the shortcut
// against derive.
func deriveAfter(h *history, seq int64, rows map[string]*row) map[string]*row {
	n := len(h.Versions)
	if rows == nil || n < 2 || h.Versions[n-1].Seq != seq || customerOf(rows) != h.CustomerID {
		return derive(h)
	}
	if p := len(h.Payments); p > 0 && h.Payments[p-1].Seq > seq {
		return derive(h)
	}
	v, prev := &h.Versions[n-1], &h.Versions[n-2]
	if final(v.Status) || final(prev.Status) || !v.Terms.sameRevenue(prev.Terms) {
		return derive(h)
	}
	return rows
}

// customerOf returns the customer rows name, "" for none.
func customerOf(rows map[string]*row) string {
	for _, r := range rows {
		return r.CustomerID
	}
	return ""
}

// derive returns the rows of an invoice's ledger, by id, from its history.
func derive(h *history) map[string]*row {
	rows := map[string]*row{}
	add := func(r *row) {
		r.CustomerID = h.CustomerID
		rows[r.id()] = r
	}
	var runs []*run
	var cur *run
	var prev *version
	for i := range h.Versions {
		v := &h.Versions[i]
		if prev != nil && final(prev.Status) {
			break // nothing follows a void or a delete
		}
		t := v.Terms
		switch {
		case cur == nil:
			// The invoice is booked at its issue date, and recognized from it.
			cur = &run{first: v.Seq, currency: t.Currency, net: t.Net, last: *v}
			cur.curve.segs = append(cur.curve.segs, newSegment(t, t.Issued.Days(), 0))
			runs = append(runs, cur)
			add(&row{Basis: Accrual, Kind: KindDeferred, Key: vkey(v), Currency: t.Currency, Date: t.Issued,
				Start: t.Issued, End: t.Issued, Deferred: t.Net, Seq: v.Seq, EventID: v.EventID})
		case final(v.Status):
			add(cur.end(v, effective(cur, v)))
		case t.Currency != cur.currency:
			// Another currency, another ledger: this one ends, and the
			// new one books the invoice and recognizes it from now on.
			from := effective(cur, v)
			add(cur.end(v, from))
			cur = &run{first: v.Seq, currency: t.Currency, net: t.Net, last: *v}
			cur.curve.segs = append(cur.curve.segs, newSegment(t, from, 0))
			runs = append(runs, cur)
			d := date.FromDays(from)
			add(&row{Basis: Accrual, Kind: KindDeferred, Key: vkey(v), Currency: t.Currency, Date: d, Start: d, End: d,
				Deferred: t.Net, Seq: v.Seq, EventID: v.EventID})
		case t.sameRevenue(cur.last.Terms):
			cur.last = *v // paid, or a change of what is not revenue (tax, due date)
		default:
			// The difference is adjusted: what remains is spread over the
			// rest of the service period, from the update on; what was
			// recognized before it stays.
			from := effective(cur, v)
			cur.curve.segs = append(cur.curve.segs, newSegment(t, from, cur.curve.at(from-1)))
			d := date.FromDays(from)
			add(&row{Basis: Accrual, Kind: KindAdjusted, Key: vkey(v), Currency: t.Currency, Date: d, Start: d, End: d,
				Deferred: t.Net - cur.net, Seq: v.Seq, EventID: v.EventID})
			cur.net, cur.last = t.Net, *v
		}
		prev = v
	}
	for _, r := range runs {
		for _, m := range r.months() {
			add(m)
		}
	}
	for _, c := range cashRows(h) {
		add(c)
	}
	return rows
}

func vkey(v *version) string { return "v" + strconv.FormatInt(v.Seq, 10) }

// effective is the first day a version's change applies to: its own
// date, but never before the run's last segment began.
func effective(r *run, v *version) int {
	return max(v.Effective.Days(), r.curve.segs[len(r.curve.segs)-1].from)
}

// end stops r's recognition from day stop on, because of v (a void, a
// delete, or a change of currency), and returns the reversal: what was
// recognized before stop, reversed on stop, and the deferred balance left,
// cancelled.
func (r *run) end(v *version, stop int) *row {
	r.curve.stop = stop
	recognized := r.curve.at(stop - 1)
	d := date.FromDays(stop)
	return &row{Basis: Accrual, Kind: KindReversed, Key: vkey(v), Currency: r.currency, Date: d, Start: d, End: d,
		Revenue: -recognized, Deferred: -(r.net - recognized), Seq: v.Seq, EventID: v.EventID}
}

// months returns r's recognized rows, one a month with any recognition.
func (r *run) months() []*row {
	first, last := r.curve.span()
	var out []*row
	for ms := date.FromDays(first).MonthStart(); ms.Days() <= last; ms = nextMonth(ms) {
		from, n := ms.Days(), nextMonth(ms).Days()-ms.Days()
		before := r.curve.at(from - 1)
		cum := make([]int64, n)
		start, end := -1, -1
		prev := before
		for i := range n {
			v := r.curve.at(from + i)
			if v != prev {
				if start < 0 {
					start = from + i
				}
				end = from + i
			}
			cum[i] = v - before
			prev = v
		}
		if start < 0 {
			continue
		}
		y, m, _ := ms.YMD()
		total := cum[n-1]
		out = append(out, &row{Basis: Accrual, Kind: KindRecognized, Key: fmt.Sprintf("%04d-%02d:%s:v%d", y, int(m), r.currency, r.first),
			Currency: r.currency, Date: date.FromDays(end), Start: date.FromDays(start), End: date.FromDays(end),
			Revenue: total, Deferred: -total, Cum: cum})
	}
	return out
}

func nextMonth(d date.Date) date.Date { return d.MonthStart().AddDays(32).MonthStart() }

// cashRows returns the cash basis's rows: each payment recognizes its
// share of the invoice's net amount (the net over the total, tax being no
// revenue), cumulatively rounded, on its date. A payment whose invoice's
// terms are not known yet recognizes nothing until they are.
func cashRows(h *history) []*row {
	var out []*row
	prev := map[string]int64{} // by currency: what the payments before recognized
	for _, p := range h.Payments {
		v := versionBefore(h, p.Seq)
		if v == nil || v.Terms.Currency != p.Currency || p.Total <= 0 || p.AmountPaid > p.Total || p.AmountPaid < 0 {
			continue
		}
		c := mulDivRound(v.Terms.Net, p.AmountPaid, p.Total)
		out = append(out, &row{Basis: Cash, Kind: KindRecognized, Key: "p" + p.ID, Currency: p.Currency,
			Date: p.PaidAt, Start: p.PaidAt, End: p.PaidAt, Revenue: c - prev[p.Currency], Seq: p.Seq, EventID: v.EventID})
		prev[p.Currency] = c
	}
	return out
}

// versionBefore returns the latest version before sequence seq.
func versionBefore(h *history, seq int64) *version {
	var v *version
	for i := range h.Versions {
		if h.Versions[i].Seq < seq {
			v = &h.Versions[i]
		}
	}
	return v
}
