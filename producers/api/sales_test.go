package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"testing"

	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/billing"
)

const (
	rSales         = "/v1/sales"
	rSale          = "/v1/sales/{id}"
	rSaleEvents    = "/v1/sales/{id}/events"
	rExpenses      = "/v1/expenses"
	rExpense       = "/v1/expenses/{id}"
	rExpenseEvents = "/v1/expenses/{id}/events"
)

// outboxEvent is an event as the outbox holds it.
type outboxEvent struct {
	topic, typ string
	sequence   int64
	payload    map[string]any
}

// outboxEvents reads the events written for key, in order.
func outboxEvents(t *testing.T, s *server, key string) []outboxEvent {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), "SELECT topic, type, sequence, payload FROM outbox WHERE key = $1 ORDER BY seq", key)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxEvent
	for rows.Next() {
		var (
			e   outboxEvent
			raw []byte
		)
		if err := rows.Scan(&e.topic, &e.typ, &e.sequence, &raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &e.payload); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// expectEvents checks the events of key: their types, topic, sequence
// (1, 2, ...), and, for each, the payload fields of want (a nil entry: no
// check), as JSON gives them (numbers are float64). A field whose wanted
// value is absent (nil) must be absent.
func expectEvents(t *testing.T, s *server, key, topic string, types []string, want []map[string]any) {
	t.Helper()
	evs := outboxEvents(t, s, key)
	var got []string
	for _, e := range evs {
		got = append(got, e.typ)
	}
	if !slices.Equal(got, types) {
		t.Fatalf("events of %s are %v, want %v", key, got, types)
	}
	for i, e := range evs {
		if e.topic != topic || e.sequence != int64(i+1) {
			t.Errorf("event %d of %s is on %s with sequence %d; want %s, %d", i, key, e.topic, e.sequence, topic, i+1)
		}
		for f, v := range want[i] {
			if pv, ok := e.payload[f]; v == nil && ok || v != nil && pv != v {
				t.Errorf("event %d (%s) of %s has %s = %v, want %v", i, e.typ, key, f, pv, v)
			}
		}
	}
}

func testSales(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	createCustomer(t, s, "c1")
	createCustomer(t, s, "c2")

	r := s.call(t, "POST", rSales, rSales, obj{"customer_id": "c1", "currency": "USD", "amount": 4999, "date": "2025-03-14"})
	var sale billing.Sale
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &sale)
	}
	if !regexp.MustCompile(`^sal_[0-9a-f]{32}$`).MatchString(sale.ID) || sale.Quantity != 1 || sale.RefundedAmount != 0 ||
		sale.Status != "active" || sale.Version != 1 || sale.Product != "" {
		t.Errorf("created %+v; want a sal_ id, quantity 1, nothing refunded, active, version 1, no product", sale)
	}
	if r.header.Get("Location") != "/v1/sales/"+sale.ID {
		t.Errorf("Location is %q, want the sale's path", r.header.Get("Location"))
	}
	var got billing.Sale
	if r := s.call(t, "GET", rSale, "/v1/sales/"+sale.ID, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got != sale {
		t.Errorf("read %+v after creating %+v", got, sale)
	}

	// Patches, a refund, a patch that changes nothing, then the delete.
	body := obj{"id": "s-1", "customer_id": "c1", "currency": "EUR", "amount": 10000, "quantity": 3, "product": "Widgets", "date": "2025-03-01"}
	expect(t, s.call(t, "POST", rSales, rSales, body), http.StatusCreated)
	expectProblem(t, s.call(t, "POST", rSales, rSales, body), http.StatusConflict, api.ProblemConflict)
	path := "/v1/sales/s-1"
	got = billing.Sale{} // decoding leaves what the answer omits
	if r := s.call(t, "PATCH", rSale, path, obj{"customer_id": "c2", "product": ""}); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.CustomerID != "c2" || got.Product != "" || got.Amount != 10000 || got.Version != 2 {
		t.Errorf("patched to %+v; want customer c2, no product, the amount kept, version 2", got)
	}
	if r := s.call(t, "PATCH", rSale, path, obj{"refunded_amount": 2500}); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.RefundedAmount != 2500 || got.Version != 3 {
		t.Errorf("refunded 2500: %+v", got)
	}
	if r := s.call(t, "PATCH", rSale, path, obj{"refunded_amount": 2500, "id": "s-1"}); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Version != 3 {
		t.Errorf("a patch that changes nothing moved the version to %d", got.Version)
	}
	for _, c := range []struct {
		patch  obj
		fields []string
	}{
		{obj{"refunded_amount": 10001}, []string{"refunded_amount"}},
		{obj{"amount": 2000}, []string{"amount"}}, // below the 2500 refunded
		{obj{"refunded_amount": -1, "quantity": 0, "currency": "usd", "date": "2025-02-30"}, []string{"currency", "date", "quantity", "refunded_amount"}},
		{obj{"customer_id": "nobody"}, []string{"customer_id"}},
		{obj{"id": "s-2"}, []string{"", "id"}},
		{obj{}, []string{""}},
	} {
		r := s.call(t, "PATCH", rSale, path, c.patch)
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("patch %v: errors %v, want fields %v", c.patch, p.Errors, c.fields)
		}
	}
	r = s.call(t, "DELETE", rSale, path, nil)
	if expect(t, r, http.StatusNoContent) && len(r.body) != 0 {
		t.Errorf("a delete answered a body: %s", r.body)
	}
	expectProblem(t, s.call(t, "GET", rSale, path, nil), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "PATCH", rSale, path, obj{"amount": 1}), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "DELETE", rSale, path, "{}"), http.StatusGone, api.ProblemGone)
	expectEvents(t, s, "s-1", "tally.sales.v1",
		[]string{"tally.sale.created.v1", "tally.sale.updated.v1", "tally.sale.updated.v1", "tally.sale.deleted.v1"},
		[]map[string]any{
			{"id": "s-1", "customer_id": "c1", "currency": "EUR", "amount": 10000.0, "quantity": 3.0, "product": "Widgets",
				"date": "2025-03-01", "refunded_amount": 0.0, "status": "active", "deleted_at": nil, "external_id": nil},
			{"customer_id": "c2", "product": nil, "refunded_amount": 0.0, "status": "active"},
			{"refunded_amount": 2500.0, "amount": 10000.0, "status": "active"},
			{"customer_id": "c2", "refunded_amount": 2500.0, "status": "deleted"},
		})
	if evs := outboxEvents(t, s, "s-1"); len(evs) == 4 && evs[3].payload["deleted_at"] == nil {
		t.Error("the deleted event has no deleted_at")
	}
	tr := trail(t, s, rSaleEvents, path+"/events")
	if len(tr) != 4 || tr[0].Type != "tally.sale.created.v1" || tr[3].Sequence != 4 {
		t.Errorf("the trail of the deleted sale is %+v", tr)
	}
	expectProblem(t, s.call(t, "GET", rSaleEvents, path+"/events?limit=0", nil), http.StatusUnprocessableEntity, api.ProblemValidation)

	// Invalid new sales, and unknown ones.
	r = s.call(t, "POST", rSales, rSales, obj{"id": "-x", "currency": "XAU", "amount": -5, "quantity": 1_000_001,
		"product": " ", "date": "1899-12-31", "refunded_amount": 1})
	want := []string{"amount", "currency", "customer_id", "date", "id", "product", "quantity", "refunded_amount"}
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), want) {
		t.Errorf("every invalid field of a new sale is listed as %v; errors %v", want, p.Errors)
	}
	r = s.call(t, "POST", rSales, rSales, obj{"customer_id": "nobody", "currency": "USD", "amount": 1, "date": "2025-03-14"})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"customer_id"}) {
		t.Errorf("an unknown customer is a customer_id error; errors %v", p.Errors)
	}
	for _, c := range []request{
		{"GET", rSale, "/v1/sales/nope", nil},
		{"PATCH", rSale, "/v1/sales/nope", obj{"amount": 1}},
		{"DELETE", rSale, "/v1/sales/nope", nil},
		{"GET", rSaleEvents, "/v1/sales/nope/events", nil},
	} {
		expectProblem(t, s.call(t, c.method, c.route, c.path, c.body), http.StatusNotFound, api.ProblemNotFound)
	}
	if n := count(t, s.pool, "SELECT count(*) FROM sales"); n != 2 {
		t.Errorf("%d sales rows, want 2 (refused requests write nothing)", n)
	}
}

func testExpenses(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)

	r := s.call(t, "POST", rExpenses, rExpenses, obj{"id": "e-1", "category": "inventory", "vendor": "Acme", "currency": "JPY",
		"amount": 50000, "date": "2025-03-02", "cost_of_goods_sold": true})
	var e billing.Expense
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &e)
	}
	if e.ID != "e-1" || !e.CostOfGoodsSold || e.Status != "active" || e.Version != 1 || r.header.Get("Location") != "/v1/expenses/e-1" {
		t.Errorf("created %+v (Location %q)", e, r.header.Get("Location"))
	}
	r = s.call(t, "POST", rExpenses, rExpenses, obj{"category": "rent", "currency": "USD", "amount": 120000, "date": "2025-03-01"})
	var rent billing.Expense
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &rent)
	}
	if !regexp.MustCompile(`^exp_[0-9a-f]{32}$`).MatchString(rent.ID) || rent.CostOfGoodsSold || rent.Vendor != "" {
		t.Errorf("created %+v; want an exp_ id, an operating expense without vendor", rent)
	}
	expectProblem(t, s.call(t, "POST", rExpenses, rExpenses, obj{"id": "e-1", "category": "x", "currency": "USD", "amount": 1, "date": "2025-03-01"}),
		http.StatusConflict, api.ProblemConflict)

	var got billing.Expense
	if r := s.call(t, "GET", rExpense, "/v1/expenses/e-1", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got != e {
		t.Errorf("read %+v after creating %+v", got, e)
	}
	got = billing.Expense{} // decoding leaves what the answer omits
	if r := s.call(t, "PATCH", rExpense, "/v1/expenses/e-1", obj{"amount": 55000, "cost_of_goods_sold": false, "vendor": ""}); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Amount != 55000 || got.CostOfGoodsSold || got.Vendor != "" || got.Version != 2 {
		t.Errorf("patched to %+v", got)
	}
	r = s.call(t, "PATCH", rExpense, "/v1/expenses/e-1", obj{"category": "", "amount": -1, "vendor": "\x00"})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"amount", "category", "vendor"}) {
		t.Errorf("errors %v", p.Errors)
	}
	r = s.call(t, "POST", rExpenses, rExpenses, obj{"vendor": "Acme", "amount": 1.0})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"category", "currency", "date"}) {
		t.Errorf("errors %v", p.Errors)
	}
	expect(t, s.call(t, "DELETE", rExpense, "/v1/expenses/e-1", "{}"), http.StatusNoContent)
	expectProblem(t, s.call(t, "GET", rExpense, "/v1/expenses/e-1", nil), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "PATCH", rExpense, "/v1/expenses/e-1", obj{"amount": 1}), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "DELETE", rExpense, "/v1/expenses/e-1", nil), http.StatusGone, api.ProblemGone)
	expectEvents(t, s, "e-1", "tally.expenses.v1",
		[]string{"tally.expense.created.v1", "tally.expense.updated.v1", "tally.expense.deleted.v1"},
		[]map[string]any{
			{"id": "e-1", "category": "inventory", "vendor": "Acme", "currency": "JPY", "amount": 50000.0, "date": "2025-03-02",
				"cost_of_goods_sold": true, "status": "active", "deleted_at": nil},
			{"amount": 55000.0, "cost_of_goods_sold": false, "vendor": nil},
			{"amount": 55000.0, "status": "deleted"},
		})
	if tr := trail(t, s, rExpenseEvents, "/v1/expenses/e-1/events?after=1"); len(tr) != 2 || tr[0].Sequence != 2 {
		t.Errorf("the trail after 1 is %+v", tr)
	}
	expectProblem(t, s.call(t, "GET", rExpenseEvents, "/v1/expenses/e-1/events?after=x", nil), http.StatusUnprocessableEntity, api.ProblemValidation)
	for _, c := range []request{
		{"GET", rExpense, "/v1/expenses/nope", nil},
		{"PATCH", rExpense, "/v1/expenses/nope", obj{"amount": 1}},
		{"DELETE", rExpense, "/v1/expenses/nope", nil},
		{"GET", rExpenseEvents, "/v1/expenses/nope/events", nil},
	} {
		expectProblem(t, s.call(t, c.method, c.route, c.path, c.body), http.StatusNotFound, api.ProblemNotFound)
	}
}
