package api

import (
	"net/http"
	"net/url"
	"time"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/money"
)

// The revenue ledger's reports (consumers/revenue), as of today (UTC):
// days after it are scheduled, not recognized.

// maxWaterfallMonths bounds a waterfall's range.
const maxWaterfallMonths = 240

// query reads the single-valued parameters of a report, listing every
// invalid one.
type query struct {
	q    url.Values
	errs fieldErrors
}

// one returns parameter name, or def when it is absent. A parameter given
// twice is an error, reported once; ok is false then.
func (q *query) one(name, def string) (v string, ok bool) {
	vs := q.q[name]
	switch len(vs) {
	case 0:
		return def, true
	case 1:
		return vs[0], true
	}
	q.errs.add(name, "must be given at most once")
	return def, false
}

func (q *query) currency() string {
	v, ok := q.one("currency", "")
	if !ok {
		return ""
	}
	if v == "" {
		q.errs.add("currency", "required: an ISO 4217 code such as USD")
		return ""
	}
	if _, err := money.ParseCurrency(v); err != nil {
		q.errs.add("currency", "%v", err)
	}
	return v
}

func (q *query) basis() string {
	v, ok := q.one("basis", revenue.Accrual)
	if ok && v != revenue.Accrual && v != revenue.Cash {
		q.errs.add("basis", "must be accrual or cash")
	}
	return v
}

func (q *query) date(name string, def date.Date) date.Date {
	v, _ := q.one(name, "")
	if v == "" {
		return def
	}
	d, err := date.Parse(v)
	if err != nil {
		q.errs.add(name, "must be a date, YYYY-MM-DD")
	}
	return d
}

func (q *query) month(name string) revenue.Month {
	v, ok := q.one(name, "")
	if !ok {
		return revenue.Month{}
	}
	if v == "" {
		q.errs.add(name, "required: a month, YYYY-MM")
		return revenue.Month{}
	}
	m, err := revenue.ParseMonth(v)
	if err != nil {
		q.errs.add(name, "must be a month, YYYY-MM")
	}
	return m
}

func today() date.Date { return date.Of(time.Now()) }

// waterfall serves GET /v1/revenue/waterfall?currency=&from=&to=&basis=.
func (a *API) waterfall(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	cur, basis, from, to := q.currency(), q.basis(), q.month("from"), q.month("to")
	if len(q.errs) == 0 {
		switch n := monthsBetween(from, to); {
		case n < 0:
			q.errs.add("to", "must not be before from")
		case n >= maxWaterfallMonths:
			q.errs.add("to", "at most %d months after from", maxWaterfallMonths-1)
		}
	}
	if q.errs.answer(w, r) {
		return
	}
	v, err := revenue.GetWaterfall(r.Context(), a.pool, cur, basis, from, to, today())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func monthsBetween(from, to revenue.Month) int {
	fy, fm, _ := from.First().YMD()
	ty, tm, _ := to.First().YMD()
	return (ty-fy)*12 + int(tm) - int(fm)
}

// deferred serves GET /v1/revenue/deferred?currency=&as_of=&from=&to=:
// the deferred balance at the end of as_of (default today), and its
// roll-forward from from (default the first of as_of's month) to to
// (default as_of).
func (a *API) deferred(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	cur, basis := q.currency(), q.basis()
	asOf := q.date("as_of", today())
	from, to := q.date("from", asOf.MonthStart()), q.date("to", asOf)
	if len(q.errs) == 0 && to.Before(from) {
		q.errs.add("to", "must not be before from")
	}
	if len(q.errs) == 0 && basis != revenue.Accrual {
		q.errs.add("basis", "the cash basis defers nothing: deferred revenue is an accrual report")
	}
	if q.errs.answer(w, r) {
		return
	}
	v, err := revenue.GetDeferred(r.Context(), a.pool, cur, basis, asOf, from, to)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// schedule serves GET /v1/revenue/invoices/{id}/schedule?granularity=&basis=.
func (a *API) schedule(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	basis := q.basis()
	granularity, ok := q.one("granularity", "month")
	if ok && granularity != "day" && granularity != "month" {
		q.errs.add("granularity", "must be day or month")
	}
	if q.errs.answer(w, r) {
		return
	}
	v, err := revenue.GetSchedule(r.Context(), a.pool, r.PathValue("id"), basis, granularity, today())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
