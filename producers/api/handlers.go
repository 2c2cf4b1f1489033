package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// command is the shape of every billing command on one aggregate.
type command[In, Out any] func(context.Context, billing.Tx, billing.Meta, string, In) (Out, []envelope.Event, error)

// mutate serves a command on the aggregate named by the path's {id}.
// location, when set, makes the answer carry a Location header.
func mutate[In, Out any](a *API, status int, location func(Out) string, emptyBody bool, cmd command[In, Out]) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r, a.cfg.MaxBodyBytes, emptyBody)
		var in In
		if !ok || !decode(w, r, body, &in) {
			return
		}
		a.change(w, r, body, func(ctx context.Context, tx billing.Tx, m billing.Meta) (response, error) {
			out, evs, err := cmd(ctx, tx, m, r.PathValue("id"), in)
			if err != nil {
				return response{}, err
			}
			res := response{status: status, body: out, events: evs}
			if location != nil {
				res.location = location(out)
			}
			if status == http.StatusNoContent {
				res.body = nil
			}
			return res, nil
		})
	}
}

// created drops the path id of commands that make a new aggregate.
func created[In, Out any](f func(context.Context, billing.Tx, billing.Meta, In) (Out, []envelope.Event, error)) command[In, Out] {
	return func(ctx context.Context, tx billing.Tx, m billing.Meta, _ string, in In) (Out, []envelope.Event, error) {
		return f(ctx, tx, m, in)
	}
}

// noInput adapts commands that take no body.
func noInput[Out any](f func(context.Context, billing.Tx, billing.Meta, string) (Out, []envelope.Event, error)) command[struct{}, Out] {
	return func(ctx context.Context, tx billing.Tx, m billing.Meta, id string, _ struct{}) (Out, []envelope.Event, error) {
		return f(ctx, tx, m, id)
	}
}

func customerLocation(c billing.Customer) string { return "/v1/customers/" + url.PathEscape(c.ID) }

func invoiceLocation(inv billing.InvoiceWithPayments) string {
	return "/v1/invoices/" + url.PathEscape(inv.ID)
}

func saleLocation(s billing.Sale) string { return "/v1/sales/" + url.PathEscape(s.ID) }

func expenseLocation(e billing.Expense) string { return "/v1/expenses/" + url.PathEscape(e.ID) }

func (a *API) routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"POST /v1/customers":                           mutate(a, http.StatusCreated, customerLocation, false, created(billing.CreateCustomer)),
		"GET /v1/customers/{id}":                       a.read(func(ctx context.Context, id string) (any, error) { return billing.GetCustomer(ctx, a.pool, id) }),
		"PATCH /v1/customers/{id}":                     mutate(a, http.StatusOK, nil, false, billing.UpdateCustomer),
		"GET /v1/customers/{id}/events":                a.trail("tally.customers.v1", "customers", "customer"),
		"POST /v1/invoices":                            mutate(a, http.StatusCreated, invoiceLocation, false, created(billing.CreateInvoice)),
		"GET /v1/invoices/{id}":                        a.read(func(ctx context.Context, id string) (any, error) { return billing.GetInvoice(ctx, a.pool, id) }),
		"PATCH /v1/invoices/{id}":                      mutate(a, http.StatusOK, nil, false, billing.UpdateInvoice),
		"DELETE /v1/invoices/{id}":                     mutate(a, http.StatusNoContent, nil, true, noInput(billing.DeleteInvoice)),
		"POST /v1/invoices/{id}/payments":              mutate(a, http.StatusCreated, invoiceLocation, false, billing.PayInvoice),
		"POST /v1/invoices/{id}/void":                  mutate(a, http.StatusOK, nil, true, noInput(billing.VoidInvoice)),
		"GET /v1/invoices/{id}/events":                 a.trail("tally.invoices.v1", "invoices", "invoice"),
		"POST /v1/sales":                               mutate(a, http.StatusCreated, saleLocation, false, created(billing.CreateSale)),
		"GET /v1/sales/{id}":                           a.read(func(ctx context.Context, id string) (any, error) { return billing.GetSale(ctx, a.pool, id) }),
		"PATCH /v1/sales/{id}":                         mutate(a, http.StatusOK, nil, false, billing.UpdateSale),
		"DELETE /v1/sales/{id}":                        mutate(a, http.StatusNoContent, nil, true, noInput(billing.DeleteSale)),
		"GET /v1/sales/{id}/events":                    a.trail("tally.sales.v1", "sales", "sale"),
		"POST /v1/expenses":                            mutate(a, http.StatusCreated, expenseLocation, false, created(billing.CreateExpense)),
		"GET /v1/expenses/{id}":                        a.read(func(ctx context.Context, id string) (any, error) { return billing.GetExpense(ctx, a.pool, id) }),
		"PATCH /v1/expenses/{id}":                      mutate(a, http.StatusOK, nil, false, billing.UpdateExpense),
		"DELETE /v1/expenses/{id}":                     mutate(a, http.StatusNoContent, nil, true, noInput(billing.DeleteExpense)),
		"GET /v1/expenses/{id}/events":                 a.trail("tally.expenses.v1", "expenses", "expense"),
		"POST /api/v1/data/upload-sales-csv":           a.upload("sales"),
		"POST /api/v1/data/upload-customers-csv":       a.upload("customers"),
		"POST /api/v1/data/upload-expenses-csv":        a.upload("expenses"),
		"GET /api/v1/data/upload-template/{data_type}": a.template,
		"GET /v1/imports/{id}": a.read(func(ctx context.Context, id string) (any, error) {
			return importer.Get(ctx, a.pool, id)
		}),
		"GET /v1/revenue/invoices/{id}": a.read(func(ctx context.Context, id string) (any, error) {
			return revenue.GetInvoice(ctx, a.pool, id)
		}),
		"GET /v1/revenue/invoices/{id}/schedule": a.schedule,
		"GET /v1/revenue/waterfall":              a.waterfall,
		"GET /v1/revenue/deferred":               a.deferred,
		"GET /v1/kpis":                           a.kpis,
		"GET /v1/kpis/stream":                    a.kpiStream,
		"POST /v1/webhooks/endpoints":            a.createEndpoint,
		"GET /v1/webhooks/endpoints":             a.listEndpoints,
		"GET /v1/webhooks/endpoints/{id}": a.read(func(ctx context.Context, id string) (any, error) {
			return webhook.GetEndpoint(ctx, a.pool, id)
		}),
		"PATCH /v1/webhooks/endpoints/{id}":           a.patchEndpoint,
		"DELETE /v1/webhooks/endpoints/{id}":          a.deleteEndpoint,
		"GET /v1/webhooks/endpoints/{id}/deliveries":  a.listDeliveries,
		"POST /v1/webhooks/endpoints/{id}/redeliver":  a.redeliverRange,
		"GET /v1/webhooks/deliveries/{id}":            a.getDelivery,
		"POST /v1/webhooks/deliveries/{id}/redeliver": a.redeliver,
		"GET /v1/mail/messages":                       a.listMail,
		"GET /v1/mail/messages/{id}":                  a.getMail,
		"POST /v1/mail/messages/{id}/resend":          a.resendMail,
		"GET /v1/dlq":                                 a.listParked,
		"GET /v1/dlq/{id}":                            a.showParked,
		"POST /v1/dlq/replay": a.actOnParked("replayed", true, func(ctx context.Context, f consumer.Filter, edited []byte, act consumer.Action) (int, error) {
			return consumer.Replay(ctx, a.pool, f, edited, act)
		}),
		"POST /v1/dlq/skip": a.actOnParked("skipped", false, func(ctx context.Context, f consumer.Filter, _ []byte, act consumer.Action) (int, error) {
			return consumer.Skip(ctx, a.pool, f, act)
		}),
		"POST /v1/dlq/purge": a.actOnParked("purged", false, func(ctx context.Context, f consumer.Filter, _ []byte, act consumer.Action) (int, error) {
			return consumer.Purge(ctx, a.pool, f, act)
		}),
	}
}

func (a *API) read(get func(context.Context, string) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := get(r.Context(), r.PathValue("id"))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// Event is one event of an audit trail, in the CloudEvents JSON format.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Sequence        int64           `json:"sequence"`
	CorrelationID   string          `json:"correlationid"`
	CausationID     string          `json:"causationid,omitempty"`
	TraceParent     string          `json:"traceparent,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// Trail is a page of an aggregate's audit trail.
type Trail struct {
	Data    []Event `json:"data"`
	HasMore bool    `json:"has_more"`
}

const (
	defaultTrailLimit = 100
	maxTrailLimit     = 1000
)

// trail serves an aggregate's events from PostgreSQL, oldest first, paged
// by ?after=<sequence>&limit=<n>. table, the aggregate's table, tells an
// unknown id (404) from one whose events were all pruned.
func (a *API) trail(topic, table, noun string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		after, limit, err := paging(r.URL.Query())
		if err != nil {
			writeProblem(w, r, Problem{Type: ProblemValidation, Status: http.StatusUnprocessableEntity,
				Title: titleValidation, Errors: []billing.FieldError{*err}})
			return
		}
		evs, err2 := outbox.Trail(r.Context(), a.pool, topic, id, after, limit+1)
		if err2 != nil {
			a.fail(w, r, err2)
			return
		}
		if len(evs) == 0 {
			var exists bool
			if err := a.pool.QueryRow(r.Context(), "SELECT EXISTS (SELECT 1 FROM "+table+" WHERE id = $1)", id).Scan(&exists); err != nil {
				a.fail(w, r, err)
				return
			}
			if !exists {
				a.fail(w, r, fmt.Errorf("%w: %s %q", billing.ErrNotFound, noun, id))
				return
			}
		}
		t := Trail{Data: make([]Event, 0, len(evs))}
		if len(evs) > limit {
			evs, t.HasMore = evs[:limit], true
		}
		for _, e := range evs {
			t.Data = append(t.Data, Event{
				SpecVersion: envelope.SpecVersion, ID: e.ID.String(), Source: e.Source, Type: e.Type,
				Subject: e.Subject, Time: e.Time.UTC().Format("2006-01-02T15:04:05.999999Z07:00"),
				DataContentType: envelope.ContentType, Sequence: e.Sequence, CorrelationID: e.CorrelationID,
				CausationID: e.CausationID, TraceParent: e.TraceParent, Data: e.Data,
			})
		}
		writeJSON(w, http.StatusOK, t)
	}
}

func paging(q url.Values) (after int64, limit int, _ *billing.FieldError) {
	limit = defaultTrailLimit
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, &billing.FieldError{Field: "after", Message: "must be a non-negative integer (a sequence)"}
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxTrailLimit {
			return 0, 0, &billing.FieldError{Field: "limit", Message: fmt.Sprintf("must be an integer from 1 to %d", maxTrailLimit)}
		}
		limit = n
	}
	return after, limit, nil
}
