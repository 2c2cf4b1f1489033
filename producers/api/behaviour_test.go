package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/billing"
)

// newInvoice is a valid invoice id of customer cid totalling amount.
func newInvoice(id, cid string, amount int) map[string]any {
	return map[string]any{"id": id, "customer_id": cid, "currency": "USD", "issued_at": "2025-01-01",
		"due_at": "2025-01-31", "lines": []any{map[string]any{"description": "Plan", "amount": amount}}}
}

// outboxTypes lists the event types written for key, in order.
func outboxTypes(t *testing.T, s *server, key string) []string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), "SELECT type, sequence FROM outbox WHERE key = $1 ORDER BY seq", key)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for want := int64(1); rows.Next(); want++ {
		var typ string
		var seq int64
		if err := rows.Scan(&typ, &seq); err != nil {
			t.Fatal(err)
		}
		if seq != want {
			t.Errorf("%s: event %s has sequence %d where %d was due", key, typ, seq, want)
		}
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(typ, "tally.invoice."), ".v1"))
	}
	return out
}

func TestConcurrentPaymentsNeverOverpay(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("inv", "c", 10000))

	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			r := s.call(t, "POST", rPayments, "/v1/invoices/inv/payments", map[string]any{"amount": 1000})
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
			if r.status == http.StatusConflict {
				if p := r.problem(t); p.Type != api.ProblemConflict {
					t.Errorf("a refused payment is a %s problem", p.Type)
				}
			}
		})
	}
	wg.Wait()
	if codes[201] != 10 || codes[409] != 10 {
		t.Errorf("20 payments of 1000 on a 10000 invoice: %v; want 10 accepted and 10 refused", codes)
	}
	var inv billing.InvoiceWithPayments
	s.call(t, "GET", rInvoice, "/v1/invoices/inv", nil).decode(t, &inv)
	if inv.AmountPaid != 10000 || inv.AmountDue != 0 || inv.Status != billing.StatusPaid || len(inv.Payments) != 10 {
		t.Errorf("invoice paid %d due %d status %s with %d payments", inv.AmountPaid, inv.AmountDue, inv.Status, len(inv.Payments))
	}
	types := outboxTypes(t, s, "inv")
	want := append(append([]string{"created"}, slices.Repeat([]string{"payment_received"}, 10)...), "paid")
	if !slices.Equal(types, want) {
		t.Errorf("events %v, want created, 10 payment_received, paid", types)
	}
}

func TestIdempotentRetriesWriteOnce(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	body := newInvoice("", "c", 500)
	delete(body, "id") // a server-made id must come back the same on every retry

	var mu sync.Mutex
	var bodies []string
	replayed := 0
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			r := s.call(t, "POST", rInvoices, "/v1/invoices", body, "Idempotency-Key", "key-1")
			expect(t, r, http.StatusCreated)
			mu.Lock()
			defer mu.Unlock()
			bodies = append(bodies, string(r.body))
			if r.header.Get("Idempotent-Replayed") == "true" {
				replayed++
			}
		})
	}
	wg.Wait()
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Fatalf("retries answered differently:\n%s\n%s", bodies[0], b)
		}
	}
	if replayed != 9 {
		t.Errorf("%d of 10 concurrent retries were replays, want 9", replayed)
	}
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM invoices").Scan(&n); err != nil || n != 1 {
		t.Errorf("%d invoices after 10 retries (%v), want 1", n, err)
	}
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox WHERE type = 'tally.invoice.created.v1'").Scan(&n); err != nil || n != 1 {
		t.Errorf("%d created events after 10 retries (%v), want 1", n, err)
	}

	// The same key with another request is refused, and writes nothing.
	other := newInvoice("", "c", 600)
	delete(other, "id")
	expectProblem(t, s.call(t, "POST", rInvoices, "/v1/invoices", other, "Idempotency-Key", "key-1"),
		http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)

	// A request that failed stored nothing: fixing it and retrying with the
	// same key goes through.
	bad := newInvoice("inv-2", "nobody", 100)
	expectProblem(t, s.call(t, "POST", rInvoices, "/v1/invoices", bad, "Idempotency-Key", "key-2"),
		http.StatusUnprocessableEntity, api.ProblemValidation)
	expect(t, s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("inv-2", "c", 100), "Idempotency-Key", "key-2"),
		http.StatusCreated)
	// Payments, like every POST, are idempotent too.
	for range 2 {
		expect(t, s.call(t, "POST", rPayments, "/v1/invoices/inv-2/payments", map[string]any{"amount": 40},
			"Idempotency-Key", "pay-1"), http.StatusCreated)
	}
	var inv billing.InvoiceWithPayments
	s.call(t, "GET", rInvoice, "/v1/invoices/inv-2", nil).decode(t, &inv)
	if inv.AmountPaid != 40 || len(inv.Payments) != 1 {
		t.Errorf("a retried payment was applied twice: paid %d in %d payments", inv.AmountPaid, len(inv.Payments))
	}
}

func TestZeroInvoiceIsSettledAtIssue(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	var inv billing.InvoiceWithPayments
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("free", "c", 0)).decode(t, &inv)
	if inv.Status != billing.StatusPaid || inv.PaidAt == nil || inv.PaidAt.String() != "2025-01-01" || inv.Version != 2 {
		t.Errorf("a zero invoice is %s, paid at %v, version %d; want paid on its issue date at version 2", inv.Status, inv.PaidAt, inv.Version)
	}
	if types := outboxTypes(t, s, "free"); !slices.Equal(types, []string{"created", "paid"}) {
		t.Errorf("events %v, want created then paid", types)
	}
	// An update that leaves nothing due settles an open invoice the same way.
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("disc", "c", 1000))
	s.call(t, "PATCH", rInvoice, "/v1/invoices/disc", map[string]any{"discount": 1000}).decode(t, &inv)
	if inv.Status != billing.StatusPaid {
		t.Errorf("a 100%% discount left the invoice %s", inv.Status)
	}
}

func TestTrailOfAnUnknownIDIsNotFoundOnEveryPage(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	for _, q := range []string{"", "?after=3", "?limit=5"} {
		expectProblem(t, s.call(t, "GET", rCustomerEvents, "/v1/customers/nobody/events"+q, nil), http.StatusNotFound, api.ProblemNotFound)
		expectProblem(t, s.call(t, "GET", rInvoiceEvents, "/v1/invoices/nobody/events"+q, nil), http.StatusNotFound, api.ProblemNotFound)
	}
}

// TestBadRequests sends every kind of bad request and checks the status,
// the problem type and, for invalid values, which fields are named. None of
// them may write anything.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("paid", "c", 100))
	s.call(t, "POST", rPayments, "/v1/invoices/paid/payments", map[string]any{"amount": 100})
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("void", "c", 100))
	s.call(t, "POST", rVoid, "/v1/invoices/void/void", nil)
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("partly", "c", 100))
	s.call(t, "POST", rPayments, "/v1/invoices/partly/payments", map[string]any{"amount": 10})
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("gone", "c", 100))
	s.call(t, "DELETE", rInvoice, "/v1/invoices/gone", nil)
	s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice("open", "c", 100))
	var before int
	s.pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&before)

	inv := func(edit func(map[string]any)) map[string]any {
		b := newInvoice("new", "c", 100)
		edit(b)
		return b
	}
	line := func(edit func(map[string]any)) map[string]any {
		return inv(func(b map[string]any) {
			l := map[string]any{"description": "x", "amount": 100}
			edit(l)
			b["lines"] = []any{l}
		})
	}
	manyLines := make([]any, 501)
	for i := range manyLines {
		manyLines[i] = map[string]any{"description": "x", "amount": 1}
	}
	type req struct {
		name, method, route, path string
		body                      any
		hdr                       []string
		status                    int
		typ                       string
		fields                    []string
	}
	const v, m, c, nf, g = api.ProblemValidation, api.ProblemMalformed, api.ProblemConflict, api.ProblemNotFound, api.ProblemGone
	cases := []req{
		{"customer without name or email", "POST", rCustomers, "/v1/customers", map[string]any{}, nil, 422, v, []string{"email", "name"}},
		{"blank name", "POST", rCustomers, "/v1/customers", map[string]any{"name": "  ", "email": "a@b.c"}, nil, 422, v, []string{"name"}},
		{"name too long", "POST", rCustomers, "/v1/customers", map[string]any{"name": strings.Repeat("n", 201), "email": "a@b.c"}, nil, 422, v, []string{"name"}},
		{"email with a display name", "POST", rCustomers, "/v1/customers", map[string]any{"name": "A", "email": "Ada <a@b.c>"}, nil, 422, v, []string{"email"}},
		{"email without @", "POST", rCustomers, "/v1/customers", map[string]any{"name": "A", "email": "ada"}, nil, 422, v, []string{"email"}},
		{"id with a space", "POST", rCustomers, "/v1/customers", map[string]any{"id": "a b", "name": "A", "email": "a@b.c"}, nil, 422, v, []string{"id"}},
		{"id too long", "POST", rCustomers, "/v1/customers", map[string]any{"id": strings.Repeat("i", 65), "name": "A", "email": "a@b.c"}, nil, 422, v, []string{"id"}},
		{"customer id taken", "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "A", "email": "a@b.c"}, nil, 409, c, nil},
		{"unknown field", "POST", rCustomers, "/v1/customers", map[string]any{"name": "A", "email": "a@b.c", "phone": "1"}, nil, 400, m, nil},
		{"name of the wrong type", "POST", rCustomers, "/v1/customers", map[string]any{"name": 5, "email": "a@b.c"}, nil, 400, m, nil},
		{"malformed JSON", "POST", rCustomers, "/v1/customers", `{"name": "A",`, nil, 400, m, nil},
		{"an array", "POST", rCustomers, "/v1/customers", `[{"name":"A","email":"a@b.c"}]`, nil, 400, m, nil},
		{"trailing data", "POST", rCustomers, "/v1/customers", `{"name":"A","email":"a@b.c"} {}`, nil, 400, m, nil},
		{"empty body", "POST", rCustomers, "/v1/customers", "", nil, 400, m, nil},
		{"not JSON", "POST", rCustomers, "/v1/customers", `{"name":"A","email":"a@b.c"}`, []string{"Content-Type", "text/plain"}, 415, api.ProblemMediaType, nil},
		{"idempotency key too long", "POST", rCustomers, "/v1/customers", map[string]any{"name": "A", "email": "a@b.c"}, []string{"Idempotency-Key", strings.Repeat("k", 256)}, 400, m, nil},
		{"empty patch", "PATCH", rCustomer, "/v1/customers/c", map[string]any{}, nil, 422, v, []string{""}},
		{"patching the id", "PATCH", rCustomer, "/v1/customers/c", map[string]any{"id": "d"}, nil, 422, v, []string{"", "id"}},
		{"unknown customer", "GET", rCustomer, "/v1/customers/nobody", nil, nil, 404, nf, nil},
		{"patching an unknown customer", "PATCH", rCustomer, "/v1/customers/nobody", map[string]any{"name": "B"}, nil, 404, nf, nil},

		{"invoice without anything", "POST", rInvoices, "/v1/invoices", map[string]any{}, nil, 422, v, []string{"currency", "customer_id", "due_at", "issued_at", "lines"}},
		{"unknown customer of an invoice", "POST", rInvoices, "/v1/invoices", newInvoice("new", "nobody", 100), nil, 422, v, []string{"customer_id"}},
		{"lower-case currency", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["currency"] = "usd" }), nil, 422, v, []string{"currency"}},
		{"no such currency", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["currency"] = "ABC" }), nil, 422, v, []string{"currency"}},
		{"gold is not a currency", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["currency"] = "XAU" }), nil, 422, v, []string{"currency"}},
		{"30 February", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["issued_at"] = "2025-02-30" }), nil, 422, v, []string{"issued_at"}},
		{"a US date", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["due_at"] = "01/31/2025" }), nil, 422, v, []string{"due_at"}},
		{"due before issued", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["due_at"] = "2024-12-31" }), nil, 422, v, []string{"due_at"}},
		{"no lines", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["lines"] = []any{} }), nil, 422, v, []string{"lines"}},
		{"501 lines", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["lines"] = manyLines }), nil, 422, v, []string{"lines"}},
		{"negative amount", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { l["amount"] = -1 }), nil, 422, v, []string{"lines[0].amount"}},
		{"line without amount or description", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { delete(l, "amount"); delete(l, "description") }), nil, 422, v, []string{"lines[0].amount", "lines[0].description"}},
		{"quantity 0", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { l["quantity"] = 0 }), nil, 422, v, []string{"lines[0].quantity"}},
		{"a fraction of a cent", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { l["amount"] = 10.5 }), nil, 400, m, nil},
		{"an amount as a string", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { l["amount"] = "100" }), nil, 400, m, nil},
		{"an amount beyond int64", "POST", rInvoices, "/v1/invoices", strings.Replace(mustJSON(line(func(map[string]any) {})), `"amount":100`, `"amount":9223372036854775808`, 1), nil, 400, m, nil},
		{"amount × quantity overflows", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) { l["amount"] = int64(1) << 61; l["quantity"] = 8 }), nil, 422, v, []string{"lines[0].amount"}},
		{"lines sum overflows", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) {
			b["lines"] = []any{map[string]any{"description": "a", "amount": int64(1) << 62}, map[string]any{"description": "b", "amount": int64(1) << 62}}
		}), nil, 422, v, []string{"lines"}},
		{"discount above the lines", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["discount"] = 101 }), nil, 422, v, []string{"discount"}},
		{"negative tax", "POST", rInvoices, "/v1/invoices", inv(func(b map[string]any) { b["tax"] = -1 }), nil, 422, v, []string{"tax"}},
		{"service ends before it starts", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) {
			l["service_period"] = map[string]any{"start": "2025-02-01", "end": "2025-01-01"}
		}), nil, 422, v, []string{"lines[0].service_period.end"}},
		{"service period without an end", "POST", rInvoices, "/v1/invoices", line(func(l map[string]any) {
			l["service_period"] = map[string]any{"start": "2025-02-01"}
		}), nil, 422, v, []string{"lines[0].service_period.end"}},
		{"invoice id taken", "POST", rInvoices, "/v1/invoices", newInvoice("open", "c", 100), nil, 409, c, nil},

		{"payment of 0", "POST", rPayments, "/v1/invoices/open/payments", map[string]any{"amount": 0}, nil, 422, v, []string{"amount"}},
		{"payment without amount", "POST", rPayments, "/v1/invoices/open/payments", map[string]any{"paid_at": "2025-01-02"}, nil, 422, v, []string{"amount"}},
		{"payment on a bad date", "POST", rPayments, "/v1/invoices/open/payments", map[string]any{"amount": 1, "paid_at": "yesterday"}, nil, 422, v, []string{"paid_at"}},
		{"overpaying", "POST", rPayments, "/v1/invoices/partly/payments", map[string]any{"amount": 91}, nil, 409, c, nil},
		{"paying a paid invoice", "POST", rPayments, "/v1/invoices/paid/payments", map[string]any{"amount": 1}, nil, 409, c, nil},
		{"paying a void invoice", "POST", rPayments, "/v1/invoices/void/payments", map[string]any{"amount": 1}, nil, 409, c, nil},
		{"paying a deleted invoice", "POST", rPayments, "/v1/invoices/gone/payments", map[string]any{"amount": 1}, nil, 410, g, nil},
		{"paying an unknown invoice", "POST", rPayments, "/v1/invoices/nobody/payments", map[string]any{"amount": 1}, nil, 404, nf, nil},
		{"updating a paid invoice", "PATCH", rInvoice, "/v1/invoices/paid", map[string]any{"tax": 1}, nil, 409, c, nil},
		{"updating a void invoice", "PATCH", rInvoice, "/v1/invoices/void", map[string]any{"tax": 1}, nil, 409, c, nil},
		{"total below what was paid", "PATCH", rInvoice, "/v1/invoices/partly", map[string]any{"discount": 95}, nil, 409, c, nil},
		{"currency of a paid-into invoice", "PATCH", rInvoice, "/v1/invoices/partly", map[string]any{"currency": "EUR"}, nil, 409, c, nil},
		{"voiding a paid invoice", "POST", rVoid, "/v1/invoices/paid/void", nil, nil, 409, c, nil},
		{"voiding twice", "POST", rVoid, "/v1/invoices/void/void", nil, nil, 409, c, nil},
		{"void with a body", "POST", rVoid, "/v1/invoices/open/void", map[string]any{"reason": "x"}, nil, 400, m, nil},
		{"deleting an invoice with a payment", "DELETE", rInvoice, "/v1/invoices/partly", nil, nil, 409, c, nil},
		{"reading a deleted invoice", "GET", rInvoice, "/v1/invoices/gone", nil, nil, 410, g, nil},
		{"events limit 0", "GET", rInvoiceEvents, "/v1/invoices/open/events?limit=0", nil, nil, 422, v, []string{"limit"}},
		{"events after -1", "GET", rInvoiceEvents, "/v1/invoices/open/events?after=-1", nil, nil, 422, v, []string{"after"}},
	}
	for _, tc := range cases {
		r := s.call(t, tc.method, tc.route, tc.path, tc.body, tc.hdr...)
		if r.status != tc.status {
			t.Errorf("%s: answered %d, want %d: %s", tc.name, r.status, tc.status, clip(r.body))
			continue
		}
		p := r.problem(t)
		if p.Type != tc.typ || p.Instance != strings.SplitN(tc.path, "?", 2)[0] {
			t.Errorf("%s: problem type %s instance %s, want %s", tc.name, p.Type, p.Instance, tc.typ)
		}
		var got []string
		for _, f := range p.Errors {
			got = append(got, f.Field)
			if f.Message == "" {
				t.Errorf("%s: field %s without a message", tc.name, f.Field)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.fields) {
			t.Errorf("%s: fields %q, want %q", tc.name, got, tc.fields)
		}
	}
	var after int
	s.pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&after)
	if after != before {
		t.Errorf("bad requests wrote %d events", after-before)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Inputs that once reached the database (or the outbox) and came back as
// 500s: each is the client's fault and says so.
func TestHostileInputsAreTheClientsFault(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	nul := map[string]any{"name": "Ada\u0000", "email": "ada@example.com"}
	p := expectProblem(t, s.call(t, "POST", rCustomers, "/v1/customers", nul), http.StatusUnprocessableEntity, api.ProblemValidation)
	if len(p.Errors) != 1 || p.Errors[0].Field != "name" {
		t.Errorf("a NUL in a name: fields %v", p.Errors)
	}
	early := newInvoice("early", "c", 100)
	early["issued_at"], early["due_at"] = "0001-01-01", "0000-12-31"
	p = expectProblem(t, s.call(t, "POST", rInvoices, "/v1/invoices", early), http.StatusUnprocessableEntity, api.ProblemValidation)
	if len(p.Errors) != 2 {
		t.Errorf("dates of year 1 and 0: fields %v, want issued_at and due_at", p.Errors)
	}
	// 500 lines of 500 characters that JSON escapes six-fold: a 265 KB
	// request whose event would exceed what Kafka takes.
	lines := make([]any, 500)
	for i := range lines {
		lines[i] = map[string]any{"description": strings.Repeat("<", 500), "amount": 1}
	}
	big := newInvoice("big", "c", 1)
	big["lines"] = lines
	expectProblem(t, s.call(t, "POST", rInvoices, "/v1/invoices", big), http.StatusRequestEntityTooLarge, api.ProblemTooLarge)
	var n int
	s.pool.QueryRow(context.Background(), "SELECT count(*) FROM invoices").Scan(&n)
	if n != 0 {
		t.Errorf("%d invoices written by refused requests", n)
	}
}

func TestIdempotencyKeysExpire(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Minute})
	body := map[string]any{"name": "Ada", "email": "ada@example.com"}
	first := s.call(t, "POST", rCustomers, "/v1/customers", body, "Idempotency-Key", "k")
	if r := s.call(t, "POST", rCustomers, "/v1/customers", body, "Idempotency-Key", "k"); string(r.body) != string(first.body) {
		t.Fatalf("a retry within the TTL answered differently")
	}
	if _, err := s.pool.Exec(context.Background(), "UPDATE idempotency_keys SET created_at = now() - interval '2 minutes'"); err != nil {
		t.Fatal(err)
	}
	r := s.call(t, "POST", rCustomers, "/v1/customers", body, "Idempotency-Key", "k")
	if r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "" || string(r.body) == string(first.body) {
		t.Errorf("a key past its TTL was replayed (%d, replayed %q); it must be taken as new", r.status, r.header.Get("Idempotent-Replayed"))
	}
}
