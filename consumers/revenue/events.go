package revenue

import (
	"slices"

	"github.com/tally-dev/tally/internal/date"
)

// The payloads of the revenue events (tally.revenue.v1, keyed by invoice
// id; their JSON Schemas are in topics/schemas). Amounts are minor units
// of Currency; dates are UTC days.

// Deferred is tally.revenue.deferred.v1: an invoice booked, its net amount
// deferred until its lines are delivered.
type Deferred struct {
	InvoiceID  string    `json:"invoice_id"`
	CustomerID string    `json:"customer_id"`
	Currency   string    `json:"currency"`
	BookedOn   date.Date `json:"booked_on"`
	Amount     int64     `json:"amount"`
	Lines      []Line    `json:"lines"`
}

// Line is one line's share of a booked invoice's net amount.
type Line struct {
	Line         int        `json:"line"` // from 1
	Amount       int64      `json:"amount"`
	ServiceStart *date.Date `json:"service_start,omitempty"` // none: recognized on the issue date
	ServiceEnd   *date.Date `json:"service_end,omitempty"`
}

// Recognized is tally.revenue.recognized.v1, from the scheduler's
// announcer: deferred revenue recognized over days of service, each day
// announced once.
type Recognized struct {
	InvoiceID   string    `json:"invoice_id"`
	CustomerID  string    `json:"customer_id"`
	Currency    string    `json:"currency"`
	PeriodStart date.Date `json:"period_start"`
	PeriodEnd   date.Date `json:"period_end"`
	Amount      int64     `json:"amount"`
	Days        []Day     `json:"days"` // the days of the period that recognize anything
}

// Day is what one day recognizes.
type Day struct {
	Date   date.Date `json:"date"`
	Amount int64     `json:"amount"`
}

// Reasons of an adjustment.
const (
	ReasonUpdated    = "updated"    // an update changed the net amount or the schedule
	ReasonCorrection = "correction" // an event that arrived late changed rows announced before
	ReasonRestated   = "restated"   // days announced as recognized recognize otherwise now
)

// Adjusted is tally.revenue.adjusted.v1: the deferred revenue changed by an
// update, or what was announced before corrected.
type Adjusted struct {
	InvoiceID   string    `json:"invoice_id"`
	CustomerID  string    `json:"customer_id"`
	Currency    string    `json:"currency"`
	EffectiveOn date.Date `json:"effective_on"`
	Reason      string    `json:"reason"`
	// DeferredChange is the change of the deferred balance booked (an
	// update's change of the net amount).
	DeferredChange int64 `json:"deferred_change"`
	// RevenueChange is a correction's change of revenue (a reversal's).
	RevenueChange int64 `json:"revenue_change"`
	// Restated is the change of what the days announced as recognized
	// recognize (ReasonRestated), dated EffectiveOn.
	Restated int64  `json:"restated"`
	Net      *int64 `json:"net,omitempty"` // the invoice's net amount after an update
}

// Reversed is tally.revenue.reversed.v1: an invoice voided or deleted (or
// moved to another currency): what it recognized reversed on ReversedOn,
// and its deferred revenue left cancelled.
type Reversed struct {
	InvoiceID          string    `json:"invoice_id"`
	CustomerID         string    `json:"customer_id"`
	Currency           string    `json:"currency"`
	ReversedOn         date.Date `json:"reversed_on"`
	Reason             string    `json:"reason"` // void, deleted or currency_changed
	RecognizedReversed int64     `json:"recognized_reversed"`
	DeferredCancelled  int64     `json:"deferred_cancelled"`
}

// emitter is where the group's events go: consumer.Event.Emit of the
// event being applied.
type emitter interface {
	Emit(typ, subject string, sequence int64, payload any) error
}

// announce emits the events that say how an invoice's booked rows changed
// from old to next (recognized days are the announcer's): a row booked,
// adjusted or reversed anew gets its event; one that an event arriving late
// changed or took away, a correction. They are emitted in the order of the
// rows' ids, so that applying the event again emits the same events.
func announce(a emitter, id string, seq int64, h history, old, next map[string]*row) error {
	var ids []string
	for k, r := range next {
		if r.Basis == Accrual && r.Kind != KindRecognized {
			ids = append(ids, k)
		}
	}
	for k, r := range old {
		if r.Basis == Accrual && r.Kind != KindRecognized && next[k] == nil {
			ids = append(ids, k)
		}
	}
	slices.Sort(ids)
	for _, k := range ids {
		o, n := old[k], next[k]
		var typ string
		var payload any
		switch {
		case o != nil && n != nil && o.same(n):
			continue
		case o == nil && n.Kind == KindDeferred:
			v := versionOf(h, n.Seq)
			d := Deferred{InvoiceID: id, CustomerID: h.CustomerID, Currency: n.Currency, BookedOn: n.Date, Amount: n.Deferred,
				Lines: make([]Line, len(v.Terms.Lines))}
			for i, l := range v.Terms.Lines {
				d.Lines[i] = Line{Line: i + 1, Amount: l.Net, ServiceStart: l.Start, ServiceEnd: l.End}
			}
			typ, payload = "tally.revenue.deferred.v1", d
		case o == nil && n.Kind == KindAdjusted:
			net := versionOf(h, n.Seq).Terms.Net
			typ, payload = "tally.revenue.adjusted.v1", Adjusted{InvoiceID: id, CustomerID: h.CustomerID, Currency: n.Currency,
				EffectiveOn: n.Date, Reason: ReasonUpdated, DeferredChange: n.Deferred, Net: &net}
		case o == nil && n.Kind == KindReversed:
			reason := "currency_changed"
			if v := versionOf(h, n.Seq); final(v.Status) {
				reason = v.Status
			}
			typ, payload = "tally.revenue.reversed.v1", Reversed{InvoiceID: id, CustomerID: h.CustomerID, Currency: n.Currency,
				ReversedOn: n.Date, Reason: reason, RecognizedReversed: -n.Revenue, DeferredCancelled: -n.Deferred}
		default:
			// Changed, or taken away, by an event that arrived late.
			c := Adjusted{InvoiceID: id, CustomerID: h.CustomerID, Reason: ReasonCorrection}
			if n != nil {
				c.Currency, c.EffectiveOn, c.DeferredChange, c.RevenueChange = n.Currency, n.Date, n.Deferred, n.Revenue
			}
			if o != nil {
				c.Currency, c.DeferredChange, c.RevenueChange = o.Currency, c.DeferredChange-o.Deferred, c.RevenueChange-o.Revenue
				if n == nil {
					c.EffectiveOn = o.Date
				}
			}
			typ, payload = "tally.revenue.adjusted.v1", c
		}
		if err := a.Emit(typ, id, seq, payload); err != nil {
			return err
		}
	}
	return nil
}

// versionOf returns the version of sequence seq, which the history holds.
func versionOf(h history, seq int64) *version {
	for i := range h.Versions {
		if h.Versions[i].Seq == seq {
			return &h.Versions[i]
		}
	}
	panic("revenue: a row names a version the history does not hold")
}
