package api_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/billing"
)

// The document's paths.
const (
	rCustomers      = "/v1/customers"
	rCustomer       = "/v1/customers/{id}"
	rCustomerEvents = "/v1/customers/{id}/events"
	rInvoices       = "/v1/invoices"
	rInvoice        = "/v1/invoices/{id}"
	rPayments       = "/v1/invoices/{id}/payments"
	rVoid           = "/v1/invoices/{id}/void"
	rInvoiceEvents  = "/v1/invoices/{id}/events"
	rRevenueInvoice = "/v1/revenue/invoices/{id}"
	rSchedule       = "/v1/revenue/invoices/{id}/schedule"
	rWaterfall      = "/v1/revenue/waterfall"
	rDeferred       = "/v1/revenue/deferred"
	rKPIs           = "/v1/kpis"
	rKPIStream      = "/v1/kpis/stream"
	rDLQ            = "/v1/dlq"
	rParked         = "/v1/dlq/{id}"
	rReplay         = "/v1/dlq/replay"
	rSkip           = "/v1/dlq/skip"
	rPurge          = "/v1/dlq/purge"
	rEndpoints      = "/v1/webhooks/endpoints"
	rEndpoint       = "/v1/webhooks/endpoints/{id}"
	rDeliveries     = "/v1/webhooks/endpoints/{id}/deliveries"
	rRangeRedeliver = "/v1/webhooks/endpoints/{id}/redeliver"
	rDelivery       = "/v1/webhooks/deliveries/{id}"
	rRedeliver      = "/v1/webhooks/deliveries/{id}/redeliver"
	rMail           = "/v1/mail/messages"
	rMailMessage    = "/v1/mail/messages/{id}"
	rMailResend     = "/v1/mail/messages/{id}/resend"
)

type obj = map[string]any

func TestOpenAPIDocumentIsValid(t *testing.T) {
	t.Parallel()
	sp := theSpec(t)
	doc := sp.doc

	if got := doc["openapi"]; got != "3.1.0" {
		t.Errorf("openapi is %v; the document is OpenAPI 3.1.0", got)
	}
	if got := doc["jsonSchemaDialect"]; got != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("jsonSchemaDialect is %v; the schemas are JSON Schema 2020-12", got)
	}
	info, _ := doc["info"].(map[string]any)
	if info["title"] != "Tally API" || info["version"] != "1.0.0" {
		t.Errorf("info names %v %v, want Tally API 1.0.0", info["title"], info["version"])
	}
	servers, _ := doc["servers"].([]any)
	if len(servers) != 1 || servers[0].(map[string]any)["url"] != "http://127.0.0.1:8080" {
		t.Errorf("servers are %v, want the one default address http://127.0.0.1:8080", servers)
	}

	// Every $ref resolves, to a component.
	component := regexp.MustCompile(`^#/components/(schemas|parameters|headers|responses|requestBodies)/[A-Za-z0-9._-]+$`)
	refs := 0
	walk(doc, "", func(ptr string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return
		}
		refs++
		if !component.MatchString(ref) {
			t.Errorf("%s: $ref %q does not name a component of this document", ptr, ref)
			return
		}
		if _, err := sp.lookup(ref); err != nil {
			t.Errorf("%s: $ref %q does not resolve: %v", ptr, ref, err)
		}
	})
	if refs == 0 {
		t.Error("the document has no $ref; the walk that checks them is broken")
	}

	// Every schema compiles as JSON Schema 2020-12: the components', and
	// every one inline in a parameter, header, request body or response.
	schemas, _ := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for _, name := range sortedKeys(schemas) {
		if _, err := sp.schema(pointer("components", "schemas", name)); err != nil {
			t.Errorf("component schema %s: %v", name, err)
		}
	}
	compiled := 0
	walk(doc, "", func(ptr string, _ any) {
		if strings.HasSuffix(ptr, "/schema") && !strings.HasPrefix(ptr, "/components/schemas/") {
			compiled++
			if _, err := sp.schema(ptr); err != nil {
				t.Error(err)
			}
		}
	})
	if compiled < 20 {
		t.Errorf("only %d inline schemas compiled; the walk that finds them is broken", compiled)
	}

	// Examples are valid against their schemas.
	for _, name := range sortedKeys(schemas) {
		examples, _ := schemas[name].(map[string]any)["examples"].([]any)
		for i, ex := range examples {
			if err := sp.validate(pointer("components", "schemas", name), ex); err != nil {
				t.Errorf("example %d of schema %s is invalid %v", i, name, err)
			}
		}
	}

	// The problem types are exactly those of the api package.
	types, _ := sp.lookup("/components/schemas/Problem/properties/type/enum")
	var got []string
	for _, v := range types.([]any) {
		got = append(got, v.(string))
	}
	want := []string{api.ProblemMalformed, api.ProblemValidation, api.ProblemNotFound, api.ProblemGone,
		api.ProblemConflict, api.ProblemIdempotencyReuse, api.ProblemTooLarge, api.ProblemMediaType,
		api.ProblemMethod, api.ProblemUnavailable, api.ProblemInternal, api.ProblemInvalidCSV}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Problem.type enumerates %v; the api package's problem types are %v", got, want)
	}

	// Operations: unique operationIds, declared tags, described responses,
	// and path parameters that match their templates.
	tags := map[string]bool{}
	for _, tag := range doc["tags"].([]any) {
		tags[tag.(map[string]any)["name"].(string)] = true
	}
	ids := map[string]string{}
	template := regexp.MustCompile(`\{([^}]+)\}`)
	paths := doc["paths"].(map[string]any)
	for _, route := range sortedKeys(paths) {
		for _, m := range sortedKeys(paths[route].(map[string]any)) {
			if m == "parameters" {
				continue
			}
			op := pointer("paths", route, m)
			where := strings.ToUpper(m) + " " + route
			o, _ := sp.lookup(op)
			om := o.(map[string]any)
			id, _ := om["operationId"].(string)
			if id == "" {
				t.Errorf("%s has no operationId", where)
			} else if prev, dup := ids[id]; dup {
				t.Errorf("%s and %s share operationId %s", prev, where, id)
			}
			ids[id] = where
			opTags, _ := om["tags"].([]any)
			if len(opTags) == 0 {
				t.Errorf("%s has no tag", where)
			}
			for _, tag := range opTags {
				if !tags[tag.(string)] {
					t.Errorf("%s has tag %v, which the document does not declare", where, tag)
				}
			}
			responses, _ := om["responses"].(map[string]any)
			if len(responses) == 0 {
				t.Errorf("%s documents no response", where)
			}
			for _, code := range sortedKeys(responses) {
				r, _, err := sp.deref(op + pointer("responses", code))
				if err != nil {
					t.Errorf("%s response %s: %v", where, code, err)
				} else if d, _ := r["description"].(string); d == "" {
					t.Errorf("%s response %s has no description (OpenAPI requires one)", where, code)
				}
			}
			inPath := map[string]bool{}
			for _, p := range sp.parameters(op) {
				pm, _, err := sp.deref(p)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				if pm["in"] == "path" {
					inPath[pm["name"].(string)] = true
					if pm["required"] != true {
						t.Errorf("%s: path parameter %v must be required", where, pm["name"])
					}
				}
			}
			var vars []string
			for _, v := range template.FindAllStringSubmatch(route, -1) {
				vars = append(vars, v[1])
				if !inPath[v[1]] {
					t.Errorf("%s: path variable {%s} has no path parameter", where, v[1])
				}
			}
			for name := range inPath {
				if !slices.Contains(vars, name) {
					t.Errorf("%s: path parameter %s is not in the path", where, name)
				}
			}
		}
	}
}

// walk calls fn with every value of v and its JSON pointer, parents first.
func walk(v any, ptr string, fn func(string, any)) {
	fn(ptr, v)
	switch x := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(x) {
			walk(x[k], ptr+pointer(k), fn)
		}
	case []any:
		for i, e := range x {
			walk(e, ptr+pointer(strconv.Itoa(i)), fn)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// documentedRoutes returns "METHOD /path" of every operation.
func (sp *spec) documentedRoutes() []string {
	var routes []string
	for route, item := range sp.doc["paths"].(map[string]any) {
		for m := range item.(map[string]any) {
			if m != "parameters" {
				routes = append(routes, strings.ToUpper(m)+" "+route)
			}
		}
	}
	slices.Sort(routes)
	return routes
}

// servedPatterns returns the ServeMux patterns written in the non-test Go
// files of dirs: every string literal of the form "METHOD /path". The API
// registers its routes from such literals (api.go, handlers.go) and so do
// the operational endpoints the same mux serves (internal/observe).
func servedPatterns(t *testing.T, dirs ...string) []string {
	t.Helper()
	re := regexp.MustCompile(`^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|CONNECT|TRACE) /\S*$`)
	var patterns []string
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s: %v", dir, err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				if s, err := strconv.Unquote(lit.Value); err == nil && re.MatchString(s) {
					patterns = append(patterns, s)
				}
				return true
			})
		}
	}
	slices.Sort(patterns)
	return slices.Compact(patterns)
}

// concrete fills a route's path variables with placeholder values.
func concrete(path string) string {
	return regexp.MustCompile(`\{([^}]+)\}`).ReplaceAllString(path, "probe-$1")
}

// registered reports whether the server's mux routes the request of route
// ("METHOD /path") to exactly the pattern route.
func (s *server) registered(route string) error {
	method, path, _ := strings.Cut(route, " ")
	req, err := http.NewRequest(method, s.url+concrete(path), nil)
	if err != nil {
		return err
	}
	if _, pattern := s.mux.Handler(req); pattern != route {
		return fmt.Errorf("the server routes %s %s to pattern %q, not %q", method, concrete(path), pattern, route)
	}
	return nil
}

func TestOpenAPIRoutesMatchTheServer(t *testing.T) {
	t.Parallel()
	sp := theSpec(t)
	s := newServer(t, defaultConfig)
	documented := sp.documentedRoutes()

	served := servedPatterns(t, ".", filepath.Join("..", "..", "internal", "observe"))
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("the server registers %s, which the document does not describe", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("the document describes %s, which the code does not register", r)
		}
	}

	// Each documented route is a pattern of the live mux, and its path
	// serves exactly the documented methods (Allow of a 405; HEAD comes
	// with GET).
	methods := map[string][]string{}
	for _, r := range documented {
		if err := s.registered(r); err != nil {
			t.Errorf("documented route %s: %v", r, err)
		}
		m, path, _ := strings.Cut(r, " ")
		methods[path] = append(methods[path], m)
		if m == http.MethodGet {
			methods[path] = append(methods[path], http.MethodHead)
		}
	}
	for _, path := range sortedKeys(methods) {
		want := methods[path]
		slices.Sort(want)
		r := s.call(t, "PROBE", path, concrete(path), nil)
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("PROBE %s answered %d; a documented path answers an unknown method 405", path, r.status)
			continue
		}
		got := strings.Split(r.header.Get("Allow"), ", ")
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s allows %v; the document describes %v", path, got, want)
		}
	}

	// Live, every documented operation reaches its handler: it answers
	// neither the 405 nor the "no such route" 404 of unrouted requests.
	for _, route := range documented {
		m, path, _ := strings.Cut(route, " ")
		r := s.call(t, m, path, concrete(path), nil)
		if r.status == http.StatusMethodNotAllowed ||
			(r.status == http.StatusNotFound && r.problem(t).Detail == "no such route") {
			t.Errorf("%s answered %d %s; a documented route reaches its handler", route, r.status, r.body)
		}
	}

	// The checks can fail: routes the document lacks are not registered,
	// and the server answers them as unrouted.
	for _, route := range []string{"GET /v1/invoices", "GET /v1/customers", "PUT /v1/customers/{id}", "GET /v1/payments/{id}"} {
		if err := s.registered(route); err == nil {
			t.Errorf("%s is registered, but the document does not describe it", route)
		}
		m, path, _ := strings.Cut(route, " ")
		r := s.call(t, m, path, concrete(path), nil)
		if r.status != http.StatusNotFound && r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s answered %d; an undocumented route answers 404 or 405", route, r.status)
		}
	}
}

func TestOpenAPICheckCatchesDrift(t *testing.T) {
	t.Parallel()
	sp := theSpec(t)
	customer := `{"id":"c1","name":"Ada","email":"ada@example.com","version":1,` +
		`"created_at":"2025-03-01T10:00:00Z","updated_at":"2025-03-01T10:00:00Z"}`
	jsonHeader := http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"r1"}, "X-Correlation-Id": {"r1"}}
	created := http.Header{"Content-Type": {"application/json"}, "Location": {"/v1/customers/c1"},
		"X-Request-Id": {"r1"}, "X-Correlation-Id": {"r1"}}
	if probs := sp.verify("GET", rCustomer, 200, jsonHeader, []byte(customer)); len(probs) > 0 {
		t.Fatalf("a valid customer was reported: %v", probs)
	}
	if probs := sp.verify("POST", rCustomers, 201, created, []byte(customer)); len(probs) > 0 {
		t.Fatalf("a valid created customer was reported: %v", probs)
	}
	withoutLocation := created.Clone()
	withoutLocation.Del("Location")
	for _, c := range []struct {
		what          string
		method, route string
		status        int
		header        http.Header
		body          string
	}{
		{"an undocumented field", "GET", rCustomer, 200, jsonHeader, strings.Replace(customer, `"id"`, `"nickname":"A","id"`, 1)},
		{"a missing required field", "GET", rCustomer, 200, jsonHeader, strings.Replace(customer, `"version":1,`, "", 1)},
		{"money as a string", "GET", rCustomer, 200, jsonHeader, strings.Replace(customer, `"version":1`, `"version":"1"`, 1)},
		{"an undocumented status", "GET", rCustomer, 418, jsonHeader, customer},
		{"an undocumented media type", "GET", rCustomer, 200, http.Header{"Content-Type": {"text/plain"}}, customer},
		{"a missing required header", "POST", rCustomers, 201, withoutLocation, customer},
		{"an undocumented header", "GET", rCustomer, 200, http.Header{"Content-Type": {"application/json"}, "Retry-After": {"1"}}, customer},
		{"a missing body", "GET", rCustomer, 200, jsonHeader, ""},
		{"an undocumented operation", "DELETE", rCustomer, 204, http.Header{}, ""},
		{"an undocumented path", "GET", "/v1/things", 200, jsonHeader, customer},
	} {
		if probs := sp.verify(c.method, c.route, c.status, c.header, []byte(c.body)); len(probs) == 0 {
			t.Errorf("a response with %s passed the check; it must fail", c.what)
		}
	}
}

// expect reports an answer whose status is not want.
func expect(t *testing.T, r result, want int) bool {
	t.Helper()
	if r.status != want {
		t.Errorf("answered %d, want %d: %s", r.status, want, clip(r.body))
		return false
	}
	return true
}

// expectProblem reports an answer that is not a problem of status want and
// type typ, and returns the problem.
func expectProblem(t *testing.T, r result, want int, typ string) api.Problem {
	t.Helper()
	if !expect(t, r, want) {
		return api.Problem{}
	}
	p := r.problem(t)
	if p.Type != typ || p.Status != want {
		t.Errorf("problem is %s %d, want %s %d: %s", p.Type, p.Status, typ, want, r.body)
	}
	return p
}

// fields returns the sorted fields of a validation problem.
func fields(p api.Problem) []string {
	var fs []string
	for _, e := range p.Errors {
		fs = append(fs, e.Field)
	}
	slices.Sort(fs)
	return fs
}

func createCustomer(t *testing.T, s *server, id string) billing.Customer {
	t.Helper()
	r := s.call(t, "POST", rCustomers, rCustomers, obj{"id": id, "name": "Customer " + id, "email": id + "@example.com"})
	var c billing.Customer
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &c)
	}
	return c
}

// invoiceBody is a valid new invoice: one line of amount × quantity.
func invoiceBody(customer string, amount, quantity int64) obj {
	return obj{"customer_id": customer, "currency": "USD", "issued_at": "2025-03-01", "due_at": "2025-03-31",
		"lines": []obj{{"description": "Consulting", "amount": amount, "quantity": quantity}}}
}

func createInvoice(t *testing.T, s *server, body obj) billing.InvoiceWithPayments {
	t.Helper()
	r := s.call(t, "POST", rInvoices, rInvoices, body)
	var inv billing.InvoiceWithPayments
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &inv)
	}
	return inv
}

func invoicePath(id string, suffix ...string) string {
	return "/v1/invoices/" + id + strings.Join(suffix, "")
}

// trail reads a whole audit trail in one page.
func trail(t *testing.T, s *server, route, path string) []api.Event {
	t.Helper()
	r := s.call(t, "GET", route, path, nil)
	var tr api.Trail
	if expect(t, r, http.StatusOK) {
		r.decode(t, &tr)
	}
	return tr.Data
}

func types(evs []api.Event) []string {
	var ts []string
	for _, e := range evs {
		ts = append(ts, strings.TrimSuffix(strings.TrimPrefix(e.Type, "tally.invoice."), ".v1"))
	}
	return ts
}

// count runs a count(*) query.
func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// request is a request of one of the document's operations.
type request struct {
	method, route, path string
	body                any
}

// everyOperation is one valid request of each operation of the API.
func everyOperation() []request {
	return []request{
		{"POST", rCustomers, rCustomers, obj{"name": "Ada", "email": "ada@example.com"}},
		{"GET", rCustomer, "/v1/customers/c1", nil},
		{"PATCH", rCustomer, "/v1/customers/c1", obj{"name": "Ada L."}},
		{"GET", rCustomerEvents, "/v1/customers/c1/events", nil},
		{"POST", rInvoices, rInvoices, invoiceBody("c1", 100, 1)},
		{"GET", rInvoice, invoicePath("i1"), nil},
		{"PATCH", rInvoice, invoicePath("i1"), obj{"tax": 1}},
		{"DELETE", rInvoice, invoicePath("i1"), nil},
		{"POST", rPayments, invoicePath("i1", "/payments"), obj{"amount": 1}},
		{"POST", rVoid, invoicePath("i1", "/void"), nil},
		{"GET", rInvoiceEvents, invoicePath("i1", "/events"), nil},
		{"POST", rSales, rSales, obj{"customer_id": "c1", "currency": "USD", "amount": 100, "date": "2025-03-01"}},
		{"GET", rSale, "/v1/sales/s1", nil},
		{"PATCH", rSale, "/v1/sales/s1", obj{"refunded_amount": 1}},
		{"DELETE", rSale, "/v1/sales/s1", nil},
		{"GET", rSaleEvents, "/v1/sales/s1/events", nil},
		{"POST", rExpenses, rExpenses, obj{"category": "rent", "currency": "USD", "amount": 100, "date": "2025-03-01"}},
		{"GET", rExpense, "/v1/expenses/e1", nil},
		{"PATCH", rExpense, "/v1/expenses/e1", obj{"amount": 1}},
		{"DELETE", rExpense, "/v1/expenses/e1", nil},
		{"GET", rExpenseEvents, "/v1/expenses/e1/events", nil},
		upload(rUploadSales, "", "external_id,customer_id,currency,amount,date\ne1,c1,USD,1.00,2025-03-01\n"),
		upload(rUploadCustomers, "", "name,email\nAda,ada@example.com\n"),
		upload(rUploadExpenses, "dry_run=true", "category,currency,amount,date\nrent,USD,1.00,2025-03-01\n"),
		{"GET", rImport, "/v1/imports/imp-1", nil},
		{"GET", rRevenueInvoice, "/v1/revenue/invoices/i1", nil},
		{"GET", rSchedule, "/v1/revenue/invoices/i1/schedule", nil},
		{"GET", rWaterfall, rWaterfall + "?currency=USD&from=2025-01&to=2025-12", nil},
		{"GET", rDeferred, rDeferred + "?currency=USD", nil},
		{"GET", rKPIs, rKPIs + "?currency=USD&from=2025-03&to=2025-03", nil},
		{"GET", rKPIStream, rKPIStream, nil},
		{"GET", rDLQ, rDLQ, nil},
		{"GET", rParked, "/v1/dlq/1", nil},
		{"POST", rReplay, rReplay, obj{"actor": "ops", "ids": []int{1}}},
		{"POST", rSkip, rSkip, obj{"actor": "ops", "ids": []int{1}}},
		{"POST", rPurge, rPurge, obj{"actor": "ops", "ids": []int{1}}},
		{"POST", rEndpoints, rEndpoints, obj{"url": "https://93.184.215.14/hooks", "event_types": []string{"*"}}},
		{"GET", rEndpoints, rEndpoints, nil},
		{"GET", rEndpoint, "/v1/webhooks/endpoints/we_1", nil},
		{"PATCH", rEndpoint, "/v1/webhooks/endpoints/we_1", obj{"enabled": true}},
		{"DELETE", rEndpoint, "/v1/webhooks/endpoints/we_1", nil},
		{"GET", rDeliveries, "/v1/webhooks/endpoints/we_1/deliveries", nil},
		{"POST", rRangeRedeliver, "/v1/webhooks/endpoints/we_1/redeliver", obj{"since": "2025-03-01T00:00:00Z"}},
		{"GET", rDelivery, "/v1/webhooks/deliveries/1", nil},
		{"POST", rRedeliver, "/v1/webhooks/deliveries/1/redeliver", nil},
		{"GET", rMail, rMail, nil},
		{"GET", rMailMessage, "/v1/mail/messages/1", nil},
		{"POST", rMailResend, "/v1/mail/messages/1/resend", nil},
	}
}

// mutations are the operations that read a body, with a valid body each
// and one whose field has the wrong JSON type ("" when it has no field).
var mutations = []struct{ method, route, path, valid, wrongType string }{
	{"POST", rCustomers, rCustomers, `{"name":"Ada","email":"ada@example.com"}`, `{"name":5,"email":"ada@example.com"}`},
	{"PATCH", rCustomer, "/v1/customers/c1", `{"name":"Ada"}`, `{"email":true}`},
	{"POST", rInvoices, rInvoices, `{"customer_id":"c1","currency":"USD","issued_at":"2025-03-01","due_at":"2025-03-31","lines":[{"description":"x","amount":1}]}`, `{"lines":{}}`},
	{"PATCH", rInvoice, invoicePath("i1"), `{"tax":1}`, `{"discount":"10"}`},
	{"DELETE", rInvoice, invoicePath("i1"), `{}`, ""},
	{"POST", rPayments, invoicePath("i1", "/payments"), `{"amount":1}`, `{"amount":10.5}`},
	{"POST", rVoid, invoicePath("i1", "/void"), `{}`, ""},
	{"POST", rSales, rSales, `{"customer_id":"c1","currency":"USD","amount":1,"date":"2025-03-01"}`, `{"amount":"1.00"}`},
	{"PATCH", rSale, "/v1/sales/s1", `{"refunded_amount":1}`, `{"quantity":1.5}`},
	{"DELETE", rSale, "/v1/sales/s1", `{}`, ""},
	{"POST", rExpenses, rExpenses, `{"category":"rent","currency":"USD","amount":1,"date":"2025-03-01"}`, `{"cost_of_goods_sold":"yes"}`},
	{"PATCH", rExpense, "/v1/expenses/e1", `{"amount":1}`, `{"vendor":7}`},
	{"DELETE", rExpense, "/v1/expenses/e1", `{}`, ""},
	{"POST", rReplay, rReplay, `{"actor":"ops","ids":[1]}`, `{"actor":"ops","ids":[1.5]}`},
	{"POST", rSkip, rSkip, `{"actor":"ops","ids":[1]}`, `{"actor":"ops","ids":"1"}`},
	{"POST", rPurge, rPurge, `{"actor":"ops","ids":[1]}`, `{"actor":"ops","all":"yes"}`},
	{"POST", rEndpoints, rEndpoints, `{"url":"https://93.184.215.14/","event_types":["*"]}`, `{"event_types":"*"}`},
	{"PATCH", rEndpoint, "/v1/webhooks/endpoints/we_1", `{"enabled":true}`, `{"enabled":"yes"}`},
	{"POST", rRangeRedeliver, "/v1/webhooks/endpoints/we_1/redeliver", `{"since":"2025-03-01T00:00:00Z"}`, `{"include_succeeded":1}`},
}

// takesKey reports whether a POST on route takes an Idempotency-Key: every
// one but the dead-letter queue's actions, which are idempotent by nature.
// The redeliveries neither: asking twice makes the same deliveries due.
func takesKey(route string) bool {
	return !strings.HasPrefix(route, rDLQ+"/") && !strings.HasSuffix(route, "/redeliver")
}

func TestOpenAPIDescribesEveryResponse(t *testing.T) {
	t.Parallel()
	t.Run("scenario", func(t *testing.T) {
		t.Run("customers", testCustomers)
		t.Run("invoices", testInvoices)
		t.Run("sales", testSales)
		t.Run("expenses", testExpenses)
		t.Run("imports", testImports)
		t.Run("import errors", testImportErrors)
		t.Run("trail", testTrail)
		t.Run("revenue projection", testRevenueProjection)
		t.Run("revenue reports", testRevenueReports)
		t.Run("kpis", testKPIs)
		t.Run("dead-letter queue", testDLQ)
		t.Run("webhooks", testWebhooks)
		t.Run("mail", testMail)
		t.Run("idempotency", testIdempotency)
		t.Run("unreadable requests", testUnreadable)
		t.Run("body limit", testBodyLimit)
		t.Run("routing and operations", testRouting)
		t.Run("database unavailable", testUnavailable)
		t.Run("database broken", testBroken)
	})
	if f := flag.Lookup("test.run"); f != nil && strings.Contains(f.Value.String(), "/") {
		t.Log("some scenarios were filtered out by -run: not checking that every documented response was seen")
		return
	}
	for _, r := range theSpec(t).unseen(t) {
		t.Errorf("no scenario answered %s: the document describes a response the tests never saw", r)
	}
}

// testRevenueProjection reads the revenue group's projection, written here
// directly: the group itself is tested in consumers/revenue.
func testRevenueProjection(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	_, err := s.pool.Exec(context.Background(), `INSERT INTO revenue_invoices (invoice_id, customer_id, currency, status,
		total, amount_paid, amount_due, last_sequence, last_event_at) VALUES ('i1', 'c1', 'USD', 'open', 1000, 400, 600, 2, now())`)
	if err != nil {
		t.Fatal(err)
	}
	var got revenue.Invoice
	r := s.call(t, "GET", rRevenueInvoice, "/v1/revenue/invoices/i1", nil)
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.InvoiceID != "i1" || got.AmountDue != 600 || got.LastSequence != 2 {
		t.Errorf("projection read as %+v", got)
	}
	expectProblem(t, s.call(t, "GET", rRevenueInvoice, "/v1/revenue/invoices/nope", nil), http.StatusNotFound, api.ProblemNotFound)
}

// testRevenueReports reads the ledger's reports of an invoice whose
// history is written here directly: the ledger itself is tested in
// consumers/revenue.
func testRevenueReports(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	_, err := s.pool.Exec(context.Background(), `INSERT INTO revenue_ledger (invoice_id, customer_id, history, version, last_sequence)
		VALUES ('i1', 'c1', '{"customer_id":"c1","payments":[],"versions":[{"seq":1,"event_id":"e1","status":"open","effective":"2025-01-01",
		"terms":{"currency":"USD","issued":"2025-01-01","net":36500,"total":36500,"lines":[{"net":36500,"start":"2025-01-01","end":"2025-12-31"}]}}]}', 1, 1)`)
	if err != nil {
		t.Fatal(err)
	}
	var sched revenue.Schedule
	if r := s.call(t, "GET", rSchedule, "/v1/revenue/invoices/i1/schedule?granularity=month", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &sched)
	}
	if len(sched.Entries) != 12 || sched.Entries[0].Period != "2025-01" || sched.Entries[0].Amount != 3100 || sched.Entries[1].Amount != 2800 {
		t.Errorf("the schedule of 365.00 over 2025 is %+v; want 12 months from 3100, 2800", sched.Entries)
	}
	if r := s.call(t, "GET", rSchedule, "/v1/revenue/invoices/i1/schedule?granularity=day&basis=cash", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &sched)
	}
	if len(sched.Entries) != 0 {
		t.Errorf("an unpaid invoice recognizes %+v on the cash basis; want nothing", sched.Entries)
	}
	expectProblem(t, s.call(t, "GET", rSchedule, "/v1/revenue/invoices/nope/schedule", nil), http.StatusNotFound, api.ProblemNotFound)
	if p := expectProblem(t, s.call(t, "GET", rSchedule, "/v1/revenue/invoices/i1/schedule?granularity=week&basis=x", nil),
		http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"basis", "granularity"}) {
		t.Errorf("invalid fields %v, want basis and granularity", fields(p))
	}

	var wf revenue.Waterfall
	if r := s.call(t, "GET", rWaterfall, rWaterfall+"?currency=USD&from=2024-12&to=2025-02&basis=accrual", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &wf)
	}
	if len(wf.Months) != 3 || wf.Months[0].Month.String() != "2024-12" {
		t.Errorf("the waterfall of 2024-12..2025-02 has months %+v", wf.Months)
	}
	for _, c := range []struct {
		query  string
		fields []string
	}{
		{"", []string{"currency", "from", "to"}},
		{"?currency=usd&from=2025-13&to=2025", []string{"currency", "from", "to"}},
		{"?currency=USD&from=2025-03&to=2025-02", []string{"to"}},
		{"?currency=USD&from=2000-01&to=2025-02", []string{"to"}},
		{"?currency=USD&currency=EUR&from=2025-01&to=2025-02&basis=cash&basis=accrual", []string{"basis", "currency"}},
	} {
		if p := expectProblem(t, s.call(t, "GET", rWaterfall, rWaterfall+c.query, nil), http.StatusUnprocessableEntity,
			api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("waterfall%s: invalid fields %v, want %v", c.query, fields(p), c.fields)
		}
	}

	var def revenue.DeferredReport
	if r := s.call(t, "GET", rDeferred, rDeferred+"?currency=USD&as_of=2025-01-31&from=2025-01-01&to=2025-01-31", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &def)
	}
	if def.AsOf.String() != "2025-01-31" || !def.RollForward.Balanced {
		t.Errorf("deferred report %+v; want as of 2025-01-31, balanced", def)
	}
	for _, c := range []struct {
		query  string
		fields []string
	}{
		{"?as_of=2025-01-31", []string{"currency"}},
		{"?currency=USD&as_of=31/01/2025", []string{"as_of"}},
		{"?currency=USD&from=2025-02-01&to=2025-01-01", []string{"to"}},
		{"?currency=USD&basis=cash", []string{"basis"}},
	} {
		if p := expectProblem(t, s.call(t, "GET", rDeferred, rDeferred+c.query, nil), http.StatusUnprocessableEntity,
			api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("deferred%s: invalid fields %v, want %v", c.query, fields(p), c.fields)
		}
	}
}

// testKPIs reads the KPIs of a sale and a change written here directly:
// the group and the publisher are tested in consumers/kpi.
func testKPIs(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	if _, err := s.pool.Exec(context.Background(), `INSERT INTO kpi_sales (sale_id, customer_id, currency, day, amount, refunded, active, last_sequence)
		VALUES ('s1', 'c1', 'USD', '2025-03-05', 5000, 1000, true, 1);
		INSERT INTO kpi_values (currency, granularity, period, kpi, value, version, seq)
		VALUES ('USD', 'month', '2025-03', 'gross_sales', '5000', 1, nextval('kpi_values_seq'))`); err != nil {
		t.Fatal(err)
	}
	var rep kpi.Report
	if r := s.call(t, "GET", rKPIs, rKPIs+"?currency=USD&from=2025-02-01&to=2025-03-31&granularity=month", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &rep)
	}
	if len(rep.Periods) != 2 || rep.Periods[1].GrossSales != 5000 || rep.Periods[1].NetSales != 4000 || rep.Periods[1].NewCustomers != 1 {
		t.Errorf("the KPIs of February and March: %+v", rep.Periods)
	}
	if r := s.call(t, "GET", rKPIs, rKPIs+"?currency=USD&from=2025-03-05&to=2025-03-05&granularity=day", nil); expect(t, r, http.StatusOK) {
		r.decode(t, &rep)
	}
	if len(rep.Periods) != 1 || rep.Periods[0].Period != "2025-03-05" || rep.Periods[0].Orders != 1 {
		t.Errorf("the KPIs of March 5: %+v", rep.Periods)
	}
	for _, c := range []struct {
		query  string
		fields []string
	}{
		{"", []string{"currency", "from", "to"}},
		{"?currency=USD&from=2025-13-01&to=March&granularity=week", []string{"from", "granularity", "to"}},
		{"?currency=USD&from=2025-03-02&to=2025-03-01", []string{"to"}},
		{"?currency=USD&from=2020-01-01&to=2025-12-31&granularity=day", []string{"to"}},
	} {
		if p := expectProblem(t, s.call(t, "GET", rKPIs, rKPIs+c.query, nil), http.StatusUnprocessableEntity,
			api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("kpis%s: invalid fields %v, want %v", c.query, fields(p), c.fields)
		}
	}

	// The stream, from before the change: it sends the change, then stays
	// open (the harness ends it).
	r := s.call(t, "GET", rKPIStream, rKPIStream+"?after=0&currency=USD", nil)
	if expect(t, r, http.StatusOK) && (!strings.Contains(string(r.body), "event: kpi\n") ||
		!strings.Contains(string(r.body), `"kpi":"gross_sales"`) || !strings.Contains(string(r.body), "id: ")) {
		t.Errorf("the stream sent %q", r.body)
	}
	if r := s.call(t, "GET", rKPIStream, rKPIStream, nil, "Last-Event-ID", "0"); expect(t, r, http.StatusOK) &&
		!strings.Contains(string(r.body), `"value":5000`) {
		t.Errorf("the stream resumed from Last-Event-ID 0 sent %q", r.body)
	}
	if r := s.call(t, "GET", rKPIStream, rKPIStream+"?currency=EUR&after=0", nil); expect(t, r, http.StatusOK) &&
		strings.Contains(string(r.body), "event: kpi") {
		t.Errorf("the EUR stream sent a USD change: %q", r.body)
	}
	if p := expectProblem(t, s.call(t, "GET", rKPIStream, rKPIStream+"?after=x&granularity=year", nil),
		http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"after", "granularity"}) {
		t.Errorf("stream: invalid fields %v", fields(p))
	}
}

func testCustomers(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)

	r := s.call(t, "POST", rCustomers, rCustomers, obj{"name": "Ada Lovelace", "email": "ada@example.com"},
		"X-Request-ID", "req-create-ada", "X-Correlation-ID", "onboarding-7")
	var ada billing.Customer
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &ada)
	}
	if !regexp.MustCompile(`^cus_[0-9a-f]{32}$`).MatchString(ada.ID) || ada.Version != 1 {
		t.Errorf("created %+v; a server-made id is cus_ and 32 hex digits, and version starts at 1", ada)
	}
	if got := r.header.Get("Location"); got != "/v1/customers/"+ada.ID {
		t.Errorf("Location is %q, want the customer's path", got)
	}
	if r.header.Get("X-Request-ID") != "req-create-ada" || r.header.Get("X-Correlation-ID") != "onboarding-7" {
		t.Errorf("answered X-Request-ID %q, X-Correlation-ID %q; the caller's ids are echoed",
			r.header.Get("X-Request-ID"), r.header.Get("X-Correlation-ID"))
	}
	r = s.call(t, "POST", rCustomers, rCustomers, obj{"name": "Bob", "email": "bob@example.com"}, "X-Request-ID", "has space")
	if expect(t, r, http.StatusCreated) && (r.header.Get("X-Request-ID") == "has space" || r.header.Get("X-Correlation-ID") != r.header.Get("X-Request-ID")) {
		t.Errorf("an invalid X-Request-ID is replaced by a new id, which is also the correlation id; got %q, %q",
			r.header.Get("X-Request-ID"), r.header.Get("X-Correlation-ID"))
	}

	acme := createCustomer(t, s, "acme-1")
	if acme.ID != "acme-1" {
		t.Errorf("created id %q; the caller's id is kept", acme.ID)
	}
	r = s.call(t, "POST", rCustomers, rCustomers, obj{"id": "acme-1", "name": "Acme again", "email": "x@example.com"})
	expectProblem(t, r, http.StatusConflict, api.ProblemConflict)

	r = s.call(t, "GET", rCustomer, "/v1/customers/acme-1", nil)
	var got billing.Customer
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got != acme {
		t.Errorf("read %+v after creating %+v; a read returns what the create returned", got, acme)
	}

	r = s.call(t, "PATCH", rCustomer, "/v1/customers/acme-1", obj{"email": "ap@acme.example"})
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Email != "ap@acme.example" || got.Name != acme.Name || got.Version != 2 {
		t.Errorf("patched email to %+v; only the email changes and the version goes up by one", got)
	}
	r = s.call(t, "PATCH", rCustomer, "/v1/customers/acme-1", obj{"email": "ap@acme.example", "id": "acme-1"})
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Version != 2 {
		t.Errorf("a patch that changes nothing moved the version to %d", got.Version)
	}

	r = s.call(t, "PATCH", rCustomer, "/v1/customers/acme-1", obj{})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{""}) {
		t.Errorf("an empty patch is refused as a whole (field \"\"); errors %v", p.Errors)
	}
	r = s.call(t, "PATCH", rCustomer, "/v1/customers/acme-1", obj{"id": "acme-2", "name": " "})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"id", "name"}) {
		t.Errorf("changing the id and blanking the name are both listed; errors %v", p.Errors)
	}
	r = s.call(t, "POST", rCustomers, rCustomers, obj{"id": "-bad", "name": "", "email": "Ada <ada@example.com>"})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"email", "id", "name"}) {
		t.Errorf("every invalid field is listed; errors %v", p.Errors)
	}
	r = s.call(t, "POST", rCustomers, rCustomers, obj{"email": "ada@example.com"})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"name"}) {
		t.Errorf("a missing name is listed; errors %v", p.Errors)
	}

	expectProblem(t, s.call(t, "GET", rCustomer, "/v1/customers/nobody", nil), http.StatusNotFound, api.ProblemNotFound)
	expectProblem(t, s.call(t, "PATCH", rCustomer, "/v1/customers/nobody", obj{"name": "X"}), http.StatusNotFound, api.ProblemNotFound)
}

func testInvoices(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	createCustomer(t, s, "c1")
	today := time.Now().UTC().Format(time.DateOnly)

	// Totals: lines are unit amount × quantity; total = subtotal − discount + tax.
	r := s.call(t, "POST", rInvoices, rInvoices, obj{
		"customer_id": "c1", "currency": "USD", "issued_at": "2025-03-01", "due_at": "2025-03-31",
		"lines": []obj{
			{"description": "Support plan", "amount": 4900, "quantity": 2,
				"service_period": obj{"start": "2025-03-01", "end": "2025-03-31"}},
			{"description": "Setup", "amount": 1000},
		},
		"discount": 800, "tax": 1500,
	})
	var inv billing.InvoiceWithPayments
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &inv)
	}
	if r.header.Get("Location") != "/v1/invoices/"+inv.ID {
		t.Errorf("Location is %q, want the invoice's path", r.header.Get("Location"))
	}
	if len(inv.Lines) != 2 || inv.Lines[0].Total != 9800 || inv.Lines[1].Quantity != 1 || inv.Lines[1].Total != 1000 ||
		inv.Subtotal != 10800 || inv.Total != 11500 || inv.AmountDue != 11500 || inv.AmountPaid != 0 ||
		inv.Status != "open" || len(inv.Payments) != 0 || inv.Version != 1 {
		t.Errorf("created %+v; want line totals 9800 and 1000 (quantity 1 by default), subtotal 10800, total 11500 due, open, version 1", inv)
	}
	id := inv.ID

	r = s.call(t, "GET", rInvoice, invoicePath(id), nil)
	var got billing.InvoiceWithPayments
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Total != inv.Total || got.Version != inv.Version || !got.CreatedAt.Equal(inv.CreatedAt) {
		t.Errorf("read %+v after creating %+v", got, inv)
	}
	r = s.call(t, "PATCH", rInvoice, invoicePath(id), obj{"tax": 1200})
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Total != 11200 || got.AmountDue != 11200 || got.Version != 2 {
		t.Errorf("patched tax to 1200: %+v; want total 11200, version 2", got)
	}

	// A partial payment, then the 409s and 422s of paying and patching.
	r = s.call(t, "POST", rPayments, invoicePath(id, "/payments"), obj{"amount": 5000, "paid_at": "2025-03-15"})
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &got)
	}
	if got.AmountPaid != 5000 || got.AmountDue != 6200 || got.Status != "open" || len(got.Payments) != 1 ||
		got.Payments[0].Amount != 5000 || got.Payments[0].PaidAt.String() != "2025-03-15" {
		t.Errorf("after paying 5000 of 11200: %+v; want 6200 due, still open, one payment", got)
	}
	if r.header.Get("Location") != "/v1/invoices/"+id {
		t.Errorf("a payment's Location is %q, want the invoice's path", r.header.Get("Location"))
	}
	expectProblem(t, s.call(t, "POST", rPayments, invoicePath(id, "/payments"), obj{"amount": 6201}), http.StatusConflict, api.ProblemConflict)
	r = s.call(t, "POST", rPayments, invoicePath(id, "/payments"), obj{"amount": 0, "paid_at": "2025-02-30"})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"amount", "paid_at"}) {
		t.Errorf("a zero amount and an impossible date are both listed; errors %v", p.Errors)
	}
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(id),
		obj{"lines": []obj{{"description": "Less", "amount": 1000}}, "discount": 0, "tax": 0}), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(id), obj{"currency": "EUR"}), http.StatusConflict, api.ProblemConflict)
	r = s.call(t, "PATCH", rInvoice, invoicePath(id), obj{"discount": 999999})
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"discount"}) {
		t.Errorf("a discount above the subtotal is listed; errors %v", p.Errors)
	}
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(id), obj{"id": id}), http.StatusUnprocessableEntity, api.ProblemValidation)

	// The payment that settles makes it paid; paid is final.
	r = s.call(t, "POST", rPayments, invoicePath(id, "/payments"), obj{"amount": 6200})
	if expect(t, r, http.StatusCreated) {
		r.decode(t, &got)
	}
	if got.Status != "paid" || got.AmountDue != 0 || got.PaidAt == nil || got.PaidAt.String() != today || got.Version != 5 {
		t.Errorf("after paying the rest: %+v; want paid today (%s), nothing due, version 5", got, today)
	}
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(id), obj{"tax": 0}), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rPayments, invoicePath(id, "/payments"), obj{"amount": 1}), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rVoid, invoicePath(id, "/void"), nil), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "DELETE", rInvoice, invoicePath(id), nil), http.StatusConflict, api.ProblemConflict)
	if ts := types(trail(t, s, rInvoiceEvents, invoicePath(id, "/events"))); !slices.Equal(ts,
		[]string{"created", "updated", "payment_received", "payment_received", "paid"}) {
		t.Errorf("the trail of a patched, then paid invoice is %v", ts)
	}

	// Void: payments stay; void is final.
	inv = createInvoice(t, s, invoiceBody("c1", 700, 3))
	expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 100}), http.StatusCreated)
	r = s.call(t, "POST", rVoid, invoicePath(inv.ID, "/void"), "{}")
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Status != "void" || got.VoidedAt == nil || got.AmountPaid != 100 || got.AmountDue != 2000 || len(got.Payments) != 1 {
		t.Errorf("voided %+v; want void with its payment kept and 2000 still due", got)
	}
	expectProblem(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 1}), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "POST", rVoid, invoicePath(inv.ID, "/void"), nil), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(inv.ID), obj{"tax": 1}), http.StatusConflict, api.ProblemConflict)
	expectProblem(t, s.call(t, "DELETE", rInvoice, invoicePath(inv.ID), nil), http.StatusConflict, api.ProblemConflict)

	// Delete: only without payments; then 410 for everything but the trail.
	body := invoiceBody("c1", 500, 1)
	body["id"] = "inv-delete-me"
	inv = createInvoice(t, s, body)
	r = s.call(t, "DELETE", rInvoice, invoicePath(inv.ID), nil)
	if expect(t, r, http.StatusNoContent) && len(r.body) != 0 {
		t.Errorf("a delete answered a body: %s", r.body)
	}
	expectProblem(t, s.call(t, "GET", rInvoice, invoicePath(inv.ID), nil), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "PATCH", rInvoice, invoicePath(inv.ID), obj{"tax": 1}), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "DELETE", rInvoice, invoicePath(inv.ID), "{}"), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 1}), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "POST", rVoid, invoicePath(inv.ID, "/void"), nil), http.StatusGone, api.ProblemGone)
	expectProblem(t, s.call(t, "POST", rInvoices, rInvoices, body), http.StatusConflict, api.ProblemConflict)
	if ts := types(trail(t, s, rInvoiceEvents, invoicePath(inv.ID, "/events"))); !slices.Equal(ts, []string{"created", "deleted"}) {
		t.Errorf("the trail of a deleted invoice is %v, want created, deleted", ts)
	}
	inv = createInvoice(t, s, invoiceBody("c1", 500, 1))
	expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 100}), http.StatusCreated)
	expectProblem(t, s.call(t, "DELETE", rInvoice, invoicePath(inv.ID), nil), http.StatusConflict, api.ProblemConflict)

	// A patch that lowers the total to what was paid settles the invoice.
	inv = createInvoice(t, s, invoiceBody("c1", 1000, 1))
	expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 400}), http.StatusCreated)
	r = s.call(t, "PATCH", rInvoice, invoicePath(inv.ID), obj{"lines": []obj{{"description": "Less", "amount": 400}}})
	if expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Status != "paid" || got.AmountDue != 0 || got.PaidAt == nil || got.PaidAt.String() != today {
		t.Errorf("a patch down to what was paid gave %+v; want paid today", got)
	}
	evs := trail(t, s, rInvoiceEvents, invoicePath(inv.ID, "/events"))
	if ts := types(evs); !slices.Equal(ts, []string{"created", "payment_received", "updated", "paid"}) {
		t.Errorf("the trail of an invoice settled by a patch is %v", ts)
	} else if evs[3].CausationID != evs[2].ID {
		t.Errorf("paid is caused by %q, want the update %q", evs[3].CausationID, evs[2].ID)
	}

	// Unknown invoices; invalid new invoices.
	for _, c := range []request{
		{"GET", rInvoice, invoicePath("nope"), nil},
		{"PATCH", rInvoice, invoicePath("nope"), obj{"tax": 1}},
		{"DELETE", rInvoice, invoicePath("nope"), nil},
		{"POST", rPayments, invoicePath("nope", "/payments"), obj{"amount": 1}},
		{"POST", rVoid, invoicePath("nope", "/void"), nil},
		{"GET", rInvoiceEvents, invoicePath("nope", "/events"), nil},
	} {
		expectProblem(t, s.call(t, c.method, c.route, c.path, c.body), http.StatusNotFound, api.ProblemNotFound)
	}
	r = s.call(t, "POST", rInvoices, rInvoices, obj{
		"customer_id": "c1", "currency": "usd", "issued_at": "2025-03-31", "due_at": "2025-03-01",
		"lines": []obj{
			{"description": " ", "amount": -1, "quantity": 0},
			{"description": "ok", "amount": 1, "service_period": obj{"start": "2025-03-02", "end": "2025-03-01"}},
		},
	})
	want := []string{"currency", "due_at", "lines[0].amount", "lines[0].description", "lines[0].quantity", "lines[1].service_period.end"}
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), want) {
		t.Errorf("every invalid field of a new invoice is listed as %v; errors %v", want, p.Errors)
	}
	r = s.call(t, "POST", rInvoices, rInvoices, invoiceBody("nobody", 1, 1))
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"customer_id"}) {
		t.Errorf("an unknown customer is a customer_id error; errors %v", p.Errors)
	}
}

func testTrail(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	c := createCustomer(t, s, "c1")
	for i, name := range []string{"B", "C", "D"} {
		expect(t, s.call(t, "PATCH", rCustomer, "/v1/customers/c1", obj{"name": name},
			"X-Request-ID", fmt.Sprintf("req-%d", i), "X-Correlation-ID", "batch-1"), http.StatusOK)
	}
	evs := trail(t, s, rCustomerEvents, "/v1/customers/c1/events")
	if len(evs) != 4 {
		t.Fatalf("a customer created and patched 3 times has %d events, want 4", len(evs))
	}
	for i, e := range evs {
		wantType := "tally.customer.updated.v1"
		if i == 0 {
			wantType = "tally.customer.created.v1"
		}
		if e.Type != wantType || e.Sequence != int64(i+1) || e.Subject != c.ID || e.Source != api.Source || e.TraceParent == "" {
			t.Errorf("event %d is %s seq %d of %s from %s (traceparent %q); want %s seq %d of %s from %s with a trace",
				i, e.Type, e.Sequence, e.Subject, e.Source, e.TraceParent, wantType, i+1, c.ID, api.Source)
		}
		if i > 0 && (e.CausationID != fmt.Sprintf("req-%d", i-1) || e.CorrelationID != "batch-1") {
			t.Errorf("event %d is caused by %q in %q; want the request's ids req-%d, batch-1", i, e.CausationID, e.CorrelationID, i-1)
		}
	}

	page := func(query string) api.Trail {
		t.Helper()
		var tr api.Trail
		if r := s.call(t, "GET", rCustomerEvents, "/v1/customers/c1/events"+query, nil); expect(t, r, http.StatusOK) {
			r.decode(t, &tr)
		}
		return tr
	}
	seqs := func(tr api.Trail) []int64 {
		var ss []int64
		for _, e := range tr.Data {
			ss = append(ss, e.Sequence)
		}
		return ss
	}
	for _, c := range []struct {
		query string
		seqs  []int64
		more  bool
	}{
		{"?limit=2", []int64{1, 2}, true},
		{"?after=2&limit=2", []int64{3, 4}, false},
		{"?after=1&limit=3", []int64{2, 3, 4}, false},
		{"?after=4", nil, false},
		{"?limit=1000", []int64{1, 2, 3, 4}, false},
	} {
		if tr := page(c.query); !slices.Equal(seqs(tr), c.seqs) || tr.HasMore != c.more {
			t.Errorf("events%s are %v, has_more %v; want %v, %v", c.query, seqs(tr), tr.HasMore, c.seqs, c.more)
		}
	}
	for _, c := range []struct{ query, field string }{
		{"?limit=0", "limit"}, {"?limit=1001", "limit"}, {"?limit=x", "limit"}, {"?after=-1", "after"}, {"?after=1.5", "after"},
	} {
		r := s.call(t, "GET", rCustomerEvents, "/v1/customers/c1/events"+c.query, nil)
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{c.field}) {
			t.Errorf("events%s: the error names %v, want %s", c.query, p.Errors, c.field)
		}
	}
	expectProblem(t, s.call(t, "GET", rCustomerEvents, "/v1/customers/nobody/events", nil), http.StatusNotFound, api.ProblemNotFound)

	// An invoice's trail: a settling payment writes payment_received, then
	// paid caused by it.
	inv := createInvoice(t, s, invoiceBody("c1", 300, 1))
	expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 100}), http.StatusCreated)
	expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 200},
		"X-Request-ID", "req-settle"), http.StatusCreated)
	evs = trail(t, s, rInvoiceEvents, invoicePath(inv.ID, "/events"))
	if ts := types(evs); !slices.Equal(ts, []string{"created", "payment_received", "payment_received", "paid"}) {
		t.Fatalf("the trail of an invoice paid in two payments is %v", ts)
	}
	if evs[2].CausationID != "req-settle" || evs[3].CausationID != evs[2].ID || evs[3].CorrelationID != "req-settle" {
		t.Errorf("the settling payment_received is caused by %q and paid by %q in %q; want req-settle, %s, req-settle",
			evs[2].CausationID, evs[3].CausationID, evs[3].CorrelationID, evs[2].ID)
	}
	var tr api.Trail
	if r := s.call(t, "GET", rInvoiceEvents, invoicePath(inv.ID, "/events?after=1&limit=1"), nil); expect(t, r, http.StatusOK) {
		r.decode(t, &tr)
	}
	if len(tr.Data) != 1 || tr.Data[0].Sequence != 2 || !tr.HasMore {
		t.Errorf("events?after=1&limit=1 gave %+v; want the event of sequence 2, and more", tr)
	}
	expectProblem(t, s.call(t, "GET", rInvoiceEvents, invoicePath(inv.ID, "/events?limit=-5"), nil),
		http.StatusUnprocessableEntity, api.ProblemValidation)
}

func testIdempotency(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	createCustomer(t, s, "c1")
	body := `{"customer_id":"c1","currency":"USD","issued_at":"2025-03-01","due_at":"2025-03-31","lines":[{"description":"x","amount":2500}]}`

	first := s.call(t, "POST", rInvoices, rInvoices, body, "Idempotency-Key", "key-inv-1")
	again := s.call(t, "POST", rInvoices, rInvoices, body, "Idempotency-Key", "key-inv-1")
	var inv billing.InvoiceWithPayments
	if expect(t, first, http.StatusCreated) {
		first.decode(t, &inv)
	}
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Error("a first request with a key is marked Idempotent-Replayed")
	}
	if again.status != first.status || !bytes.Equal(again.body, first.body) ||
		again.header.Get("Location") != first.header.Get("Location") || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a retry answered %d %q (Location %q, Idempotent-Replayed %q); want the stored %d %q (Location %q), replayed",
			again.status, again.body, again.header.Get("Location"), again.header.Get("Idempotent-Replayed"),
			first.status, first.body, first.header.Get("Location"))
	}
	if n := count(t, s.pool, "SELECT count(*) FROM invoices"); n != 1 {
		t.Errorf("%d invoices after a create and its retry, want 1", n)
	}
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE topic = 'tally.invoices.v1' AND key = $1 AND type = 'tally.invoice.created.v1'`, inv.ID); n != 1 {
		t.Errorf("%d created events in the outbox after a create and its retry, want 1", n)
	}
	r := s.call(t, "POST", rInvoices, rInvoices, strings.Replace(body, "2500", "2600", 1), "Idempotency-Key", "key-inv-1")
	expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)
	r = s.call(t, "POST", rCustomers, rCustomers, `{"name":"Ada","email":"ada@example.com"}`, "Idempotency-Key", "key-inv-1")
	expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)
	r = s.call(t, "POST", rInvoices, rInvoices, " "+body, "Idempotency-Key", "key-inv-1")
	expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)

	// Payments and voids replay too, and write nothing the second time.
	for range 2 {
		expect(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 100}, "Idempotency-Key", "key-pay-1"), http.StatusCreated)
	}
	if n := count(t, s.pool, "SELECT count(*) FROM payments"); n != 1 {
		t.Errorf("%d payments after a payment and its retry, want 1", n)
	}
	expectProblem(t, s.call(t, "POST", rPayments, invoicePath(inv.ID, "/payments"), obj{"amount": 101}, "Idempotency-Key", "key-pay-1"),
		http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)
	for i := range 2 {
		r = s.call(t, "POST", rVoid, invoicePath(inv.ID, "/void"), nil, "Idempotency-Key", "key-void-1")
		if expect(t, r, http.StatusOK) && (r.header.Get("Idempotent-Replayed") == "true") != (i == 1) {
			t.Errorf("void %d: Idempotent-Replayed is %q", i, r.header.Get("Idempotent-Replayed"))
		}
	}
	expectProblem(t, s.call(t, "POST", rVoid, invoicePath(inv.ID, "/void"), "{}", "Idempotency-Key", "key-void-1"),
		http.StatusUnprocessableEntity, api.ProblemIdempotencyReuse)
	if ts := types(trail(t, s, rInvoiceEvents, invoicePath(inv.ID, "/events"))); !slices.Equal(ts, []string{"created", "payment_received", "voided"}) {
		t.Errorf("retries wrote events: the trail is %v", ts)
	}
	c1 := s.call(t, "POST", rCustomers, rCustomers, `{"name":"Bob","email":"bob@example.com"}`, "Idempotency-Key", "key-cus-1")
	c2 := s.call(t, "POST", rCustomers, rCustomers, `{"name":"Bob","email":"bob@example.com"}`, "Idempotency-Key", "key-cus-1")
	if expect(t, c1, http.StatusCreated) && (!bytes.Equal(c1.body, c2.body) || c2.header.Get("Idempotent-Replayed") != "true") {
		t.Errorf("a customer retry answered %s, want the stored %s, replayed", c2.body, c1.body)
	}

	// Errors are not stored: the key stays free.
	expectProblem(t, s.call(t, "POST", rInvoices, rInvoices, invoiceBody("nobody", 1, 1), "Idempotency-Key", "key-inv-2"),
		http.StatusUnprocessableEntity, api.ProblemValidation)
	r = s.call(t, "POST", rInvoices, rInvoices, invoiceBody("c1", 1, 1), "Idempotency-Key", "key-inv-2")
	if expect(t, r, http.StatusCreated) && r.header.Get("Idempotent-Replayed") != "" {
		t.Error("a key whose first request failed replayed something")
	}
	expectProblem(t, s.call(t, "POST", rInvoices, rInvoices, body, "Idempotency-Key", strings.Repeat("k", 256)),
		http.StatusBadRequest, api.ProblemMalformed)

	// PATCH takes no key: the header is ignored.
	for range 2 {
		r = s.call(t, "PATCH", rCustomer, "/v1/customers/c1", obj{"name": "Same"}, "Idempotency-Key", "key-patch")
		if expect(t, r, http.StatusOK) && r.header.Get("Idempotent-Replayed") != "" {
			t.Error("a PATCH was replayed from an Idempotency-Key")
		}
	}
}

func testUnreadable(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	for _, m := range mutations {
		bodies := []string{`{"name":`, `{"unknown_field":1}`, `{} {}`, `[1]`, `"x"`}
		if m.wrongType != "" {
			bodies = append(bodies, m.wrongType)
		}
		if m.method != "DELETE" && !strings.HasSuffix(m.route, "/void") {
			bodies = append(bodies, "", "  ")
		}
		for _, b := range bodies {
			r := s.call(t, m.method, m.route, m.path, b)
			if p := expectProblem(t, r, http.StatusBadRequest, api.ProblemMalformed); p.Detail == "" {
				t.Errorf("%s %s with %q: a 400 says what is wrong in detail", m.method, m.path, b)
			}
		}
		r := s.call(t, m.method, m.route, m.path, m.valid, "Content-Type", "text/plain")
		expectProblem(t, r, http.StatusUnsupportedMediaType, api.ProblemMediaType)
		if m.method == "POST" && takesKey(m.route) {
			r := s.call(t, m.method, m.route, m.path, m.valid, "Idempotency-Key", strings.Repeat("k", 256))
			expectProblem(t, r, http.StatusBadRequest, api.ProblemMalformed)
		}
	}
}

func testBodyLimit(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{MaxBodyBytes: 64, IdempotencyTTL: time.Hour})
	big := `{"name":"` + strings.Repeat("x", 100) + `"}`
	for _, m := range mutations {
		r := s.call(t, m.method, m.route, m.path, big)
		if p := expectProblem(t, r, http.StatusRequestEntityTooLarge, api.ProblemTooLarge); !strings.Contains(p.Detail, "64") {
			t.Errorf("%s %s: a 413 names the limit; detail %q", m.method, m.path, p.Detail)
		}
	}
}

func testRouting(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	sp := theSpec(t)

	r := s.call(t, "PUT", rCustomer, "/v1/customers/c1", `{}`)
	expectProblem(t, r, http.StatusMethodNotAllowed, api.ProblemMethod)
	if got := r.header.Get("Allow"); got != "GET, HEAD, PATCH" {
		t.Errorf("Allow is %q, want GET, HEAD, PATCH", got)
	}
	expectProblem(t, s.call(t, "DELETE", rCustomers, rCustomers, nil), http.StatusMethodNotAllowed, api.ProblemMethod)
	r = s.call(t, "GET", "/v1/nothing", "/v1/nothing", nil)
	if p := expectProblem(t, r, http.StatusNotFound, api.ProblemNotFound); p.Detail != "no such route" {
		t.Errorf("an unknown route's detail is %q, want no such route", p.Detail)
	}

	r = s.call(t, "GET", "/openapi.json", "/openapi.json", nil)
	if expect(t, r, http.StatusOK) && !bytes.Equal(r.body, sp.raw) {
		t.Error("GET /openapi.json does not serve producers/api/openapi.json as it is")
	}
	if r := s.call(t, "GET", "/livez", "/livez", nil); expect(t, r, http.StatusOK) && string(r.body) != "ok\n" {
		t.Errorf("/livez answered %q", r.body)
	}
	expect(t, s.call(t, "GET", "/readyz", "/readyz", nil), http.StatusOK)
	// The middleware counts a request after answering it: poll.
	series := []byte(`tally_http_requests_total{code="200",route="GET /readyz"} 1`)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r = s.call(t, "GET", "/metrics", "/metrics", nil)
		if !expect(t, r, http.StatusOK) || bytes.Contains(r.body, series) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("/metrics does not count requests by route pattern (%s):\n%s", series, clip(r.body))
			break
		}
	}
	r = s.call(t, "GET", "/metrics", "/metrics", nil, "Accept", "application/openmetrics-text; version=1.0.0")
	if expect(t, r, http.StatusOK) && !strings.HasPrefix(r.header.Get("Content-Type"), "application/openmetrics-text") {
		t.Errorf("/metrics asked for OpenMetrics answered %q", r.header.Get("Content-Type"))
	}
	s.health.Drain()
	if r := s.call(t, "GET", "/readyz", "/readyz", nil); expect(t, r, http.StatusServiceUnavailable) && string(r.body) != "draining\n" {
		t.Errorf("/readyz while draining answered %q", r.body)
	}
}

// testUnavailable runs every operation against a database that cannot be
// reached: each answers 503 with Retry-After, and readiness fails.
func testUnavailable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+addr+"/none?sslmode=disable&connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := serve(t, pool, defaultConfig)
	for _, op := range everyOperation() {
		r := s.call(t, op.method, op.route, op.path, op.body)
		expectProblem(t, r, http.StatusServiceUnavailable, api.ProblemUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: a 503 says when to retry", op.method, op.path)
		}
	}
	expect(t, s.call(t, "GET", "/readyz", "/readyz", nil), http.StatusServiceUnavailable)
}

// testBroken runs every operation against a database whose tables are
// gone: each answers 500, which names the request id.
func testBroken(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	if _, err := pool.Exec(context.Background(),
		`ALTER TABLE customers RENAME TO customers_gone; ALTER TABLE invoices RENAME TO invoices_gone;
		 ALTER TABLE revenue_invoices RENAME TO revenue_invoices_gone; ALTER TABLE revenue_ledger RENAME TO revenue_ledger_gone;
		 ALTER TABLE revenue_entries RENAME TO revenue_entries_gone; ALTER TABLE consumer_parked RENAME TO consumer_parked_gone;
		 ALTER TABLE sales RENAME TO sales_gone; ALTER TABLE expenses RENAME TO expenses_gone;
		 ALTER TABLE imports RENAME TO imports_gone; ALTER TABLE kpi_sales RENAME TO kpi_sales_gone;
		 ALTER TABLE kpi_values RENAME TO kpi_values_gone; ALTER TABLE webhook_endpoints RENAME TO webhook_endpoints_gone;
		 ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_gone; ALTER TABLE webhook_attempts RENAME TO webhook_attempts_gone;
		 ALTER TABLE mail_messages RENAME TO mail_messages_gone`); err != nil {
		t.Fatal(err)
	}
	s := serve(t, pool, defaultConfig)
	for _, op := range everyOperation() {
		r := s.call(t, op.method, op.route, op.path, op.body, "X-Request-ID", "req-broken")
		p := expectProblem(t, r, http.StatusInternalServerError, api.ProblemInternal)
		if !strings.Contains(p.Detail, "req-broken") {
			t.Errorf("%s %s: a 500 names the request id; detail %q", op.method, op.path, p.Detail)
		}
	}
}
