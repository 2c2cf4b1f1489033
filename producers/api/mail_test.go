package api_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/producers/api"
)

// testMail reads the email log and resends a failed message, written here
// directly: the group and the sender are tested in consumers/notify and
// internal/mail.
func testMail(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	var failed, sent int64
	if err := s.pool.QueryRow(context.Background(), `WITH m AS (
		INSERT INTO mail_messages (key, kind, event_id, customer_id, invoice_id, data, status, attempts, last_error, created_at, next_attempt_at)
		VALUES ('receipt:p1', 'receipt', gen_random_uuid(), 'c1', 'i1', '{"amount": "1.00"}', 'failed', 8, '550 no such mailbox', now(), now()),
			('welcome:c1', 'welcome', gen_random_uuid(), 'c1', NULL, '{}', 'sent', 1, NULL, now(), now())
		RETURNING id, status)
		SELECT (SELECT id FROM m WHERE status = 'failed'), (SELECT id FROM m WHERE status = 'sent')`).Scan(&failed, &sent); err != nil {
		t.Fatal(err)
	}
	var page api.MailMessagePage
	if r := s.call(t, "GET", rMail, rMail+"?customer_id=c1&status=failed", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &page)
	}
	if len(page.Data) != 1 || page.Data[0].ID != failed || page.Data[0].LastError == nil || page.HasMore {
		t.Errorf("the failed messages of c1: %+v", page)
	}
	if r := s.call(t, "GET", rMail, rMail+"?limit=1", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &page)
	}
	if len(page.Data) != 1 || !page.HasMore {
		t.Errorf("a page of one: %+v", page)
	}
	if p := expectProblem(t, s.call(t, "GET", rMail, rMail+"?status=lost&kind=spam&after=-1", nil), http.StatusUnprocessableEntity,
		api.ProblemValidation); !slices.Equal(fields(p), []string{"after", "kind", "status"}) {
		t.Errorf("invalid fields %v", fields(p))
	}

	path := "/v1/mail/messages/" + itoa(failed)
	var m mail.Record
	if r := s.call(t, "GET", rMailMessage, path, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &m)
	}
	if m.Key != "receipt:p1" || m.Status != mail.StateFailed || m.Attempts != 8 {
		t.Errorf("the message: %+v", m)
	}
	expectProblem(t, s.call(t, "GET", rMailMessage, "/v1/mail/messages/0", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	expectProblem(t, s.call(t, "GET", rMailMessage, "/v1/mail/messages/99999", nil), http.StatusNotFound, api.ProblemNotFound)

	if r := s.call(t, "POST", rMailResend, path+"/resend", nil); expect(t, r, http.StatusAccepted) {
		r.decode(t, &m)
	}
	if m.Status != mail.StatePending || m.Attempts != 0 || m.NextAttemptAt == nil {
		t.Errorf("resent: %+v", m)
	}
	// Pending now, and the sent one: neither is sent again on request.
	expectProblem(t, s.call(t, "POST", rMailResend, path+"/resend", nil), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rMailResend, "/v1/mail/messages/"+itoa(sent)+"/resend", nil), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rMailResend, "/v1/mail/messages/99999/resend", nil), http.StatusNotFound, api.ProblemNotFound)
	expectProblem(t, s.call(t, "POST", rMailResend, "/v1/mail/messages/x/resend", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
}
