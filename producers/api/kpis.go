package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/internal/date"
)

// The KPI group's figures (consumers/kpi).

// kpis serves GET /v1/kpis?currency=&from=&to=&granularity=.
func (a *API) kpis(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	cur := q.currency()
	granularity, ok := q.one("granularity", kpi.Month)
	if ok && granularity != kpi.Day && granularity != kpi.Month {
		q.errs.add("granularity", "must be day or month")
	}
	from, to := q.day("from", false), q.day("to", true)
	if len(q.errs) == 0 && to.Before(from) {
		q.errs.add("to", "must not be before from")
	}
	if q.errs.answer(w, r) {
		return
	}
	rep, err := kpi.Get(r.Context(), a.pool, cur, granularity, from, to)
	if errors.Is(err, kpi.ErrBadRange) {
		q.errs.add("to", "at most %d %ss after from", kpi.MaxPeriods, granularity)
		q.errs.answer(w, r)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// day reads a required date parameter: a day, or a month (YYYY-MM), which
// stands for its first day, or for its last when last is set.
func (q *query) day(name string, last bool) date.Date {
	v, ok := q.one(name, "")
	switch {
	case !ok:
		return date.Date{}
	case v == "":
		q.errs.add(name, "required: a date, YYYY-MM-DD, or a month, YYYY-MM")
		return date.Date{}
	}
	if d, err := date.Parse(v); err == nil {
		return d
	}
	t, err := time.Parse("2006-01", v)
	if err != nil {
		q.errs.add(name, "must be a date, YYYY-MM-DD, or a month, YYYY-MM")
		return date.Date{}
	}
	d := date.Of(t)
	if last {
		d = d.AddDays(32).MonthStart().AddDays(-1)
	}
	return d
}

// Stream timing: how often a stream looks for changes, and how often it
// writes a comment when there are none, so that proxies keep it open.
const (
	streamPoll      = 500 * time.Millisecond
	streamHeartbeat = 15 * time.Second
	streamBatch     = 500
)

// kpiStream serves GET /v1/kpis/stream?currency=&granularity=&after=: the
// KPI changes the publisher announces, as server-sent events (event kpi,
// id the change's seq, data a kpi.Change), from now on, or from after the
// change after (or the Last-Event-ID a reconnecting browser sends).
func (a *API) kpiStream(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	var cur string
	if len(q.q["currency"]) > 0 {
		cur = q.currency()
	}
	granularity, ok := q.one("granularity", "")
	if ok && granularity != "" && granularity != kpi.Day && granularity != kpi.Month {
		q.errs.add("granularity", "must be day or month")
	}
	after := int64(-1)
	v, _ := q.one("after", r.Header.Get("Last-Event-ID"))
	if v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			q.errs.add("after", "must be the id of a change, a non-negative integer")
		}
		after = n
	}
	if q.errs.answer(w, r) {
		return
	}
	ctx := r.Context()
	if after < 0 {
		last, err := kpi.LastChange(ctx, a.pool)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		after = last
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// The server's write timeout would end a stream; each write gets its own.
	write := func(b []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(streamHeartbeat + 10*time.Second))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte(": tally KPI changes\nretry: 2000\n\n")) {
		return
	}
	poll := time.NewTicker(streamPoll)
	defer poll.Stop()
	quiet := time.Now()
	for {
		changes, err := kpi.Changes(ctx, a.pool, after, cur, granularity, streamBatch)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("KPI stream: reading changes", "err", err)
			}
			return // the client reconnects with its Last-Event-ID
		}
		for _, c := range changes {
			data, err := json.Marshal(c)
			if err != nil {
				return
			}
			if !write(fmt.Appendf(nil, "id: %d\nevent: kpi\ndata: %s\n\n", c.Seq, data)) {
				return
			}
			after, quiet = c.Seq, time.Now()
		}
		if len(changes) == streamBatch {
			continue
		}
		if time.Since(quiet) >= streamHeartbeat {
			if !write([]byte(": ping\n\n")) {
				return
			}
			quiet = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		}
	}
}
