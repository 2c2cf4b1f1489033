package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/billing"
)

// Webhook endpoints and their deliveries (/v1/webhooks), served from
// internal/webhook: registration checks each URL against the SSRF guard
// (Config.WebhookGuard), and the notify group and the webhook senders do
// the rest. Redeliveries take no Idempotency-Key: asking twice only makes
// the same deliveries due again.

const (
	defaultWebhookLimit = 100
	maxWebhookLimit     = 1000
	maxDescriptionChars = 500
	maxURLChars         = 2048
)

// WebhookEndpointPage is a page of endpoints, by id.
type WebhookEndpointPage struct {
	Data    []webhook.Endpoint `json:"data"`
	HasMore bool               `json:"has_more"`
}

// WebhookDeliveryPage is a page of an endpoint's deliveries, oldest first.
type WebhookDeliveryPage struct {
	Data    []webhook.Delivery `json:"data"`
	HasMore bool               `json:"has_more"`
}

// RedeliverResult answers a redelivery of a time range.
type RedeliverResult struct {
	Redelivered int `json:"redelivered"`
}

type endpointCreate struct {
	URL         string   `json:"url"`
	Description string   `json:"description"`
	EventTypes  []string `json:"event_types"`
	Secret      string   `json:"secret"`
	Enabled     *bool    `json:"enabled"`
}

type endpointPatch struct {
	URL         *string  `json:"url"`
	Description *string  `json:"description"`
	EventTypes  []string `json:"event_types"`
	Secret      *string  `json:"secret"`
	Enabled     *bool    `json:"enabled"`
}

type redeliverRange struct {
	Since            string `json:"since"`
	Until            string `json:"until"`
	IncludeSucceeded bool   `json:"include_succeeded"`
}

// checkEndpoint adds the invalid fields among those given to errs.
func (a *API) checkEndpoint(ctx context.Context, errs *fieldErrors, u, description *string, types []string, typesGiven bool, secret *string) {
	if u != nil {
		switch {
		case *u == "":
			errs.add("url", "required: the http or https URL to POST the events to")
		case len(*u) > maxURLChars:
			errs.add("url", "at most %d characters", maxURLChars)
		default:
			if err := a.guard.CheckURL(ctx, *u); err != nil {
				errs.add("url", "%v", err)
			}
		}
	}
	if description != nil && len([]rune(*description)) > maxDescriptionChars {
		errs.add("description", "at most %d characters", maxDescriptionChars)
	}
	if typesGiven {
		if err := webhook.CheckEventTypes(types); err != nil {
			errs.add("event_types", "%v", err)
		}
	}
	if secret != nil && *secret != "" {
		if err := webhook.CheckSecret(*secret); err != nil {
			errs.add("secret", "%v", err)
		}
	}
}

// createEndpoint serves POST /v1/webhooks/endpoints.
func (a *API) createEndpoint(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, a.cfg.MaxBodyBytes, false)
	var in endpointCreate
	if !ok || !decode(w, r, body, &in) {
		return
	}
	var errs fieldErrors
	a.checkEndpoint(r.Context(), &errs, &in.URL, &in.Description, in.EventTypes, true, &in.Secret)
	if errs.answer(w, r) {
		return
	}
	a.change(w, r, body, func(ctx context.Context, tx billing.Tx, _ billing.Meta) (response, error) {
		e, err := webhook.CreateEndpoint(ctx, tx, webhook.NewEndpoint{URL: in.URL, Description: in.Description,
			EventTypes: in.EventTypes, Secret: in.Secret, Disabled: in.Enabled != nil && !*in.Enabled})
		if err != nil {
			return response{}, err
		}
		return response{status: http.StatusCreated, body: e, location: "/v1/webhooks/endpoints/" + url.PathEscape(e.ID)}, nil
	})
}

// listEndpoints serves GET /v1/webhooks/endpoints?after=<id>&limit=.
func (a *API) listEndpoints(w http.ResponseWriter, r *http.Request) {
	q := &query{q: r.URL.Query()}
	after, _ := q.one("after", "")
	limit := q.limit()
	if q.errs.answer(w, r) {
		return
	}
	es, err := webhook.ListEndpoints(r.Context(), a.pool, after, limit+1)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page := WebhookEndpointPage{Data: es}
	if len(es) > limit {
		page.Data, page.HasMore = es[:limit], true
	}
	writeJSON(w, http.StatusOK, page)
}

// limit reads the limit of a page of webhooks.
func (q *query) limit() int {
	v, ok := q.one("limit", "")
	if !ok || v == "" {
		return defaultWebhookLimit
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxWebhookLimit {
		q.errs.add("limit", "must be an integer from 1 to %d", maxWebhookLimit)
	}
	return n
}

// patchEndpoint serves PATCH /v1/webhooks/endpoints/{id}.
func (a *API) patchEndpoint(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, a.cfg.MaxBodyBytes, false)
	var in endpointPatch
	if !ok || !decode(w, r, body, &in) {
		return
	}
	var errs fieldErrors
	a.checkEndpoint(r.Context(), &errs, in.URL, in.Description, in.EventTypes, in.EventTypes != nil, in.Secret)
	if in.Secret != nil && *in.Secret == "" {
		errs.add("secret", "the new secret, or leave the field out; %v", webhook.ErrBadSecret)
	}
	if errs.answer(w, r) {
		return
	}
	e, err := webhook.UpdateEndpoint(r.Context(), a.pool, r.PathValue("id"),
		webhook.EndpointPatch{URL: in.URL, Description: in.Description, EventTypes: in.EventTypes, Secret: in.Secret, Enabled: in.Enabled},
		time.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// deleteEndpoint serves DELETE /v1/webhooks/endpoints/{id}.
func (a *API) deleteEndpoint(w http.ResponseWriter, r *http.Request) {
	if err := webhook.DeleteEndpoint(r.Context(), a.pool, r.PathValue("id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listDeliveries serves GET /v1/webhooks/endpoints/{id}/deliveries.
func (a *API) listDeliveries(w http.ResponseWriter, r *http.Request) {
	after, limit, ferr := paging(r.URL.Query())
	if ferr != nil {
		fieldErrors{*ferr}.answer(w, r)
		return
	}
	ds, err := webhook.ListDeliveries(r.Context(), a.pool, r.PathValue("id"), after, limit+1)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page := WebhookDeliveryPage{Data: ds}
	if len(ds) > limit {
		page.Data, page.HasMore = ds[:limit], true
	}
	writeJSON(w, http.StatusOK, page)
}

// pathID reads the path's id, a positive integer (what says of what),
// answering 422 itself.
func pathID(w http.ResponseWriter, r *http.Request, what string) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		fieldErrors{{Field: "id", Message: "must be a positive integer (" + what + ")"}}.answer(w, r)
		return 0, false
	}
	return id, true
}

// getDelivery serves GET /v1/webhooks/deliveries/{id}.
func (a *API) getDelivery(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "a delivery id")
	if !ok {
		return
	}
	d, err := webhook.GetDelivery(r.Context(), a.pool, id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// redeliver serves POST /v1/webhooks/deliveries/{id}/redeliver; it reads
// no body.
func (a *API) redeliver(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "a delivery id")
	if !ok {
		return
	}
	d, err := webhook.Redeliver(r.Context(), a.pool, id, time.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, d)
}

// redeliverRange serves POST /v1/webhooks/endpoints/{id}/redeliver.
func (a *API) redeliverRange(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, a.cfg.MaxBodyBytes, false)
	var in redeliverRange
	if !ok || !decode(w, r, body, &in) {
		return
	}
	var errs fieldErrors
	instant := func(field, v string, def time.Time) time.Time {
		if v == "" {
			if def.IsZero() {
				errs.add(field, "required: an RFC 3339 instant")
			}
			return def
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			errs.add(field, "must be an RFC 3339 instant, such as 2025-03-01T00:00:00Z")
		}
		return t
	}
	now := time.Now()
	since, until := instant("since", in.Since, time.Time{}), instant("until", in.Until, now)
	if len(errs) == 0 && !until.After(since) {
		errs.add("until", "must be after since")
	}
	if errs.answer(w, r) {
		return
	}
	n, err := webhook.RedeliverRange(r.Context(), a.pool, r.PathValue("id"), since, until, in.IncludeSucceeded, now)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, RedeliverResult{Redelivered: n})
}

// webhookProblem maps the webhook package's errors to problems.
func webhookProblem(err error) (Problem, bool) {
	switch {
	case errors.Is(err, webhook.ErrNotFound):
		return Problem{Type: ProblemNotFound, Status: http.StatusNotFound, Detail: err.Error()}, true
	case errors.Is(err, webhook.ErrDisabled):
		return Problem{Type: ProblemConflict, Status: http.StatusConflict, Title: "The change is not allowed in the current state",
			Detail: fmt.Sprintf("%v: enable the endpoint (PATCH enabled: true) first", err)}, true
	}
	return Problem{}, false
}
