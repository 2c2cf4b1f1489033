package api_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/api"
)

// testWebhooks registers, reads, changes and deletes endpoints, and reads
// and redelivers a delivery written here directly: the group and the
// sender are tested in consumers/notify and internal/webhook.
func testWebhooks(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	var e webhook.Endpoint
	r := s.call(t, "POST", rEndpoints, rEndpoints, obj{"url": "https://93.184.215.14/hooks", "event_types": []string{"tally.invoice.*", "tally.customer.created.v1"},
		"description": "ERP"}, "Idempotency-Key", "we-1")
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &e)
	}
	if !strings.HasPrefix(e.ID, "we_") || webhook.CheckSecret(e.Secret) != nil || !e.Enabled || r.header.Get("Location") != rEndpoints+"/"+e.ID {
		t.Errorf("registered %+v at %q", e, r.header.Get("Location"))
	}
	path := rEndpoints + "/" + e.ID
	for _, c := range []struct {
		body   obj
		fields []string
	}{
		{obj{}, []string{"event_types", "url"}},
		{obj{"url": "http://169.254.169.254/latest", "event_types": []string{"*"}}, []string{"url"}},
		{obj{"url": "http://10.0.0.1/", "event_types": []string{"tally.*.x"}, "secret": "nope"}, []string{"event_types", "secret", "url"}},
		{obj{"url": "ftp://93.184.215.14/", "event_types": []string{}}, []string{"event_types", "url"}},
	} {
		if p := expectProblem(t, s.call(t, "POST", rEndpoints, rEndpoints, c.body), http.StatusUnprocessableEntity,
			api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("registering %v: invalid fields %v, want %v", c.body, fields(p), c.fields)
		}
	}

	var got webhook.Endpoint
	if r := s.call(t, "GET", rEndpoint, path, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Secret != "" || got.URL != e.URL {
		t.Errorf("read %+v; the secret is never shown again", got)
	}
	var page api.WebhookEndpointPage
	if r := s.call(t, "GET", rEndpoints, rEndpoints+"?limit=1", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &page)
	}
	if len(page.Data) != 1 || page.HasMore {
		t.Errorf("the list: %+v", page)
	}
	expectProblem(t, s.call(t, "GET", rEndpoints, rEndpoints+"?limit=0", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	expectProblem(t, s.call(t, "GET", rEndpoint, rEndpoints+"/we_nope", nil), http.StatusNotFound, api.ProblemNotFound)

	fresh := webhook.NewSecret()
	if r := s.call(t, "PATCH", rEndpoint, path, obj{"secret": fresh, "enabled": false}); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Secret != fresh || got.PreviousSecretExpiresAt == nil || got.Enabled || got.DisabledReason == nil {
		t.Errorf("after a rotation and a disabling: %+v", got)
	}
	expectProblem(t, s.call(t, "PATCH", rEndpoint, path, obj{"event_types": []string{}}), http.StatusUnprocessableEntity, api.ProblemValidation)
	expectProblem(t, s.call(t, "PATCH", rEndpoint, rEndpoints+"/we_nope", obj{"enabled": true}), http.StatusNotFound, api.ProblemNotFound)

	// A delivery, as the notify group writes it.
	var id int64
	if err := s.pool.QueryRow(context.Background(), `INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload, status)
		VALUES ($1, $2, 'tally.customer.created.v1', now(), '{"id":"c1"}', 'failed') RETURNING id`, e.ID, envelope.NewID()).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var dp api.WebhookDeliveryPage
	if r := s.call(t, "GET", rDeliveries, path+"/deliveries", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &dp)
	}
	if len(dp.Data) != 1 || dp.Data[0].ID != id || dp.Data[0].Status != webhook.StateFailed {
		t.Errorf("the deliveries: %+v", dp)
	}
	expectProblem(t, s.call(t, "GET", rDeliveries, rEndpoints+"/we_nope/deliveries", nil), http.StatusNotFound, api.ProblemNotFound)
	expectProblem(t, s.call(t, "GET", rDeliveries, path+"/deliveries?after=x", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	dpath := "/v1/webhooks/deliveries/" + itoa(id)
	var det webhook.DeliveryWithAttempts
	if r := s.call(t, "GET", rDelivery, dpath, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &det)
	}
	if det.ID != id || len(det.AttemptLog) != 0 || det.WebhookID == "" {
		t.Errorf("the delivery: %+v", det)
	}
	expectProblem(t, s.call(t, "GET", rDelivery, "/v1/webhooks/deliveries/0", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	expectProblem(t, s.call(t, "GET", rDelivery, "/v1/webhooks/deliveries/99999", nil), http.StatusNotFound, api.ProblemNotFound)

	// Redelivery waits for the endpoint to be enabled.
	rng := obj{"since": "2000-01-01T00:00:00Z"}
	expectProblem(t, s.call(t, "POST", rRedeliver, dpath+"/redeliver", nil), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rRangeRedeliver, path+"/redeliver", rng), http.StatusConflict, api.ProblemConflict)
	expect(t, s.call(t, "PATCH", rEndpoint, path, obj{"enabled": true}), http.StatusOK)
	var res api.RedeliverResult
	if r := s.call(t, "POST", rRangeRedeliver, path+"/redeliver", rng); expect(t, r, http.StatusAccepted) {
		r.decode(t, &res)
	}
	if res.Redelivered != 1 {
		t.Errorf("redelivered %d of the range, want 1", res.Redelivered)
	}
	var d webhook.Delivery
	if r := s.call(t, "POST", rRedeliver, dpath+"/redeliver", nil); expect(t, r, http.StatusAccepted) {
		r.decode(t, &d)
	}
	if d.Status != webhook.StatePending || d.NextAttemptAt == nil {
		t.Errorf("redelivered: %+v", d)
	}
	expectProblem(t, s.call(t, "POST", rRedeliver, "/v1/webhooks/deliveries/99999/redeliver", nil), http.StatusNotFound, api.ProblemNotFound)
	expectProblem(t, s.call(t, "POST", rRedeliver, "/v1/webhooks/deliveries/x/redeliver", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	expectProblem(t, s.call(t, "POST", rRangeRedeliver, rEndpoints+"/we_nope/redeliver", rng), http.StatusNotFound, api.ProblemNotFound)
	if p := expectProblem(t, s.call(t, "POST", rRangeRedeliver, path+"/redeliver", obj{"since": "yesterday", "until": "2000-01-01T00:00:00Z"}),
		http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"since"}) {
		t.Errorf("invalid fields %v", fields(p))
	}

	expect(t, s.call(t, "DELETE", rEndpoint, path, nil), http.StatusNoContent)
	expectProblem(t, s.call(t, "DELETE", rEndpoint, path, nil), http.StatusNotFound, api.ProblemNotFound)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
