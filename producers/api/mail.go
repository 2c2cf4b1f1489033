package api

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tally-dev/tally/internal/mail"
)

// The email log (/v1/mail), served from internal/mail: what was queued
// for whom, whether it went out and why not, and sending a failed or
// cancelled message again.

// MailMessagePage is a page of messages, oldest first.
type MailMessagePage struct {
	Data    []mail.Record `json:"data"`
	HasMore bool          `json:"has_more"`
}

// listMail serves GET /v1/mail/messages?status=&kind=&customer_id=&invoice_id=&after=&limit=.
func (a *API) listMail(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	var f mail.Filter
	f.Status, _ = q.one("status", "")
	f.Kind, _ = q.one("kind", "")
	f.CustomerID, _ = q.one("customer_id", "")
	f.InvoiceID, _ = q.one("invoice_id", "")
	if f.Status != "" && !slices.Contains([]string{mail.StatePending, mail.StateSent, mail.StateFailed, mail.StateCancelled}, f.Status) {
		q.errs.add("status", "must be pending, sent, failed or cancelled")
	}
	if f.Kind != "" && !slices.Contains(mail.Kinds, f.Kind) {
		q.errs.add("kind", "must be one of %v", mail.Kinds)
	}
	var after int64
	if v, _ := q.one("after", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			q.errs.add("after", "must be a non-negative integer (a message id)")
		}
		after = n
	}
	limit := q.limit()
	if q.errs.answer(w, r) {
		return
	}
	ms, err := mail.List(r.Context(), a.pool, f, after, limit+1)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page := MailMessagePage{Data: ms}
	if len(ms) > limit {
		page.Data, page.HasMore = ms[:limit], true
	}
	writeJSON(w, http.StatusOK, page)
}

// getMail serves GET /v1/mail/messages/{id}.
func (a *API) getMail(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "a message id")
	if !ok {
		return
	}
	m, err := mail.Get(r.Context(), a.pool, id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// resendMail serves POST /v1/mail/messages/{id}/resend; it reads no body.
func (a *API) resendMail(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "a message id")
	if !ok {
		return
	}
	m, err := mail.Resend(r.Context(), a.pool, id, time.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, m)
}

// mailProblem maps the mail package's errors to problems.
func mailProblem(err error) (Problem, bool) {
	switch {
	case errors.Is(err, mail.ErrNotFound):
		return Problem{Type: ProblemNotFound, Status: http.StatusNotFound, Detail: err.Error()}, true
	case errors.Is(err, mail.ErrNotResendable):
		return Problem{Type: ProblemConflict, Status: http.StatusConflict, Title: "The change is not allowed in the current state",
			Detail: err.Error()}, true
	}
	return Problem{}, false
}
