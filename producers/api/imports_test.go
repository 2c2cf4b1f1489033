package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/importer"
)

const (
	rUploadSales     = "/api/v1/data/upload-sales-csv"
	rUploadCustomers = "/api/v1/data/upload-customers-csv"
	rUploadExpenses  = "/api/v1/data/upload-expenses-csv"
	rTemplate        = "/api/v1/data/upload-template/{data_type}"
	rImport          = "/v1/imports/{id}"
)

// form is a multipart/form-data body: its parts in order, each a name and
// a value; a part named file is sent as a file.
type form [][2]string

func (f form) encode(t *testing.T) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for _, p := range f {
		var err error
		if p[0] == "file" {
			var fw interface{ Write([]byte) (int, error) }
			if fw, err = w.CreateFormFile("file", "data.csv"); err == nil {
				_, err = fw.Write([]byte(p[1]))
			}
		} else {
			err = w.WriteField(p[0], p[1])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), w.FormDataContentType()
}

// upload is a request uploading csv to route, with a query ("" for none).
func upload(route, query, csv string) request {
	path := route
	if query != "" {
		path += "?" + query
	}
	return request{"POST", route, path, form{{"file", csv}}}
}

// importFile uploads csv and returns the report, expecting status want.
func importFile(t *testing.T, s *server, route, query string, body any, want int) importer.Report {
	t.Helper()
	path := route
	if query != "" {
		path += "?" + query
	}
	if csv, ok := body.(string); ok {
		body = form{{"file", csv}}
	}
	r := s.call(t, "POST", route, path, body)
	var rep importer.Report
	if expect(t, r, want) {
		r.decode(t, &rep)
	}
	if want == http.StatusCreated && r.header.Get("Location") != "/v1/imports/"+rep.ID {
		t.Errorf("Location is %q, want the import's path /v1/imports/%s", r.header.Get("Location"), rep.ID)
	}
	return rep
}

// counts are an import's counts, for comparing.
type counts struct{ rows, created, duplicates, rejected, errors int64 }

func countsOf(r importer.Report) counts {
	return counts{r.Rows, r.Created, r.Duplicates, r.Rejected, r.ErrorsTotal}
}

// errorKeys lists a report's errors as "row column code".
func errorKeys(r importer.Report) []string {
	var ks []string
	for _, e := range r.Errors {
		ks = append(ks, fmt.Sprintf("%d %s %s", e.Row, e.Column, e.Code))
	}
	return ks
}

// rowCounts counts the rows of the tables an import writes.
func rowCounts(t *testing.T, s *server) string {
	t.Helper()
	return fmt.Sprintf("sales %d, customers %d, expenses %d, imports %d, outbox %d",
		count(t, s.pool, "SELECT count(*) FROM sales"), count(t, s.pool, "SELECT count(*) FROM customers"),
		count(t, s.pool, "SELECT count(*) FROM expenses"), count(t, s.pool, "SELECT count(*) FROM imports"),
		count(t, s.pool, "SELECT count(*) FROM outbox"))
}

func testImports(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)

	// Templates: each imports as it is (the customers' example makes the
	// customer that the sales' example names), and again as duplicates.
	for _, typ := range []string{"customers", "sales", "expenses"} {
		r := s.call(t, "GET", rTemplate, "/api/v1/data/upload-template/"+typ, nil)
		if !expect(t, r, http.StatusOK) {
			continue
		}
		if ct := r.header.Get("Content-Type"); ct != "text/csv; charset=utf-8" || !bytes.Contains(r.body, []byte("external_id")) {
			t.Errorf("the %s template is %q: %s", typ, ct, r.body)
		}
		route := "/api/v1/data/upload-" + typ + "-csv"
		rep := importFile(t, s, route, "", string(r.body), http.StatusCreated)
		if countsOf(rep) != (counts{1, 1, 0, 0, 0}) || rep.Status != importer.StatusCompleted || rep.Type != typ {
			t.Errorf("importing the %s template: %+v; want its one row created", typ, rep)
		}
		rep = importFile(t, s, route, "", string(r.body), http.StatusCreated)
		if countsOf(rep) != (counts{1, 0, 1, 0, 0}) {
			t.Errorf("importing the %s template again: %+v; want its row a duplicate", typ, rep)
		}
	}
	expectProblem(t, s.call(t, "GET", rTemplate, "/api/v1/data/upload-template/invoices", nil), http.StatusNotFound, api.ProblemNotFound)

	// A file with good rows, a repeat, an unknown customer and bad values.
	const file = "External_ID, customer_id ,currency,amount,quantity,product,date\r\n" +
		"o-1,cus-1,USD,\"1,234.56\",2,Pro plan,2025-03-01\r\n" + // row 2
		"o-2,cus-1,USD,$12.50,,,2025-03-02\r\n" + // 3
		"\r\n" + // blank, skipped
		"o-1,cus-1,USD,9.99,1,Again,2025-03-03\r\n" + // 5: a repeat of o-1
		"o-3,nobody,USD,1.00,1,,2025-03-04\r\n" + // 6
		"o-4,cus-1,USD,1.234,1,,2025-03-05\r\n" + // 7
		"o-5,cus-1,usd,1.00,0,,2025-02-30\r\n" + // 8: three errors
		"o-6,cus-1,JPY,500,1,\"Multi\nline\",2025-03-06\r\n" + // 9, spread over two lines: no line breaks in a product
		"o-7,cus-1,JPY,500,1,\"Quoted, \"\"with\"\" commas\",2025-03-06\r\n" // 11
	before := count(t, s.pool, "SELECT count(*) FROM sales")
	rep := importFile(t, s, rUploadSales, "", file, http.StatusCreated)
	want := []string{"6 customer_id unknown_customer", "7 amount too_many_decimals", "8 currency invalid", "8 quantity invalid",
		"8 date invalid", "9 product invalid"}
	if countsOf(rep) != (counts{8, 3, 1, 4, 6}) || !slices.Equal(errorKeys(rep), want) {
		t.Errorf("imported %+v with errors %v; want 8 rows: 3 created, 1 duplicate, 4 rejected with %v", countsOf(rep), errorKeys(rep), want)
	}
	if rep.Filename != "data.csv" {
		t.Errorf("the report names the file %q, want the upload's data.csv", rep.Filename)
	}
	if n := count(t, s.pool, "SELECT count(*) FROM sales") - before; n != 3 {
		t.Errorf("%d sales written, want 3", n)
	}
	var got importer.Report
	if r := s.call(t, "GET", rImport, "/v1/imports/"+rep.ID, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.ID != rep.ID || got.Status != importer.StatusCompleted || countsOf(got) != countsOf(rep) || got.Processed != 8 ||
		got.Filename != "data.csv" ||
		!slices.Equal(errorKeys(got), want) || got.FinishedAt == nil || !got.FinishedAt.Equal(*rep.FinishedAt) {
		t.Errorf("GET /v1/imports/%s is %+v; want the report %+v", rep.ID, got, rep)
	}
	expectProblem(t, s.call(t, "GET", rImport, "/v1/imports/imp_none", nil), http.StatusNotFound, api.ProblemNotFound)

	// The created events: one per created row, from the importer, with the
	// row's values, and the import's completed event.
	var (
		payload []byte
		source  string
		seq     int64
		p       map[string]any
	)
	if err := s.pool.QueryRow(context.Background(), `SELECT o.payload, o.source, o.sequence FROM outbox o
		JOIN sales s ON s.id = o.key WHERE s.external_id = 'o-1' AND o.type = 'tally.sale.created.v1'`).Scan(&payload, &source, &seq); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(payload, &p)
	if p["external_id"] != "o-1" || p["product"] != "Pro plan" || p["date"] != "2025-03-01" || p["amount"] != 123456.0 ||
		p["quantity"] != 2.0 || p["refunded_amount"] != 0.0 || p["status"] != "active" || source != importer.Source || seq != 1 {
		t.Errorf("the created event of o-1 is %s from %s, sequence %d", payload, source, seq)
	}
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE type = 'tally.sale.created.v1'
		AND convert_from(payload, 'UTF8')::jsonb->>'external_id' IN ('o-1', 'o-2', 'o-7')`); n != 3 {
		t.Errorf("%d created events for the 3 rows created", n)
	}
	var done map[string]any
	if err := s.pool.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE topic = 'tally.imports.v1' AND key = $1
		AND type = 'tally.import.completed.v1' AND sequence = 1`, rep.ID).Scan(&payload); err != nil {
		t.Fatalf("the completed event of import %s: %v", rep.ID, err)
	}
	json.Unmarshal(payload, &done)
	if done["status"] != "completed" || done["rows"] != 8.0 || done["created"] != 3.0 || done["duplicates"] != 1.0 ||
		done["rejected"] != 4.0 || done["mode"] != "partial" || done["dry_run"] != false || done["type"] != "sales" {
		t.Errorf("the completed event is %s", payload)
	}

	// The same file again creates nothing.
	rep = importFile(t, s, rUploadSales, "", file, http.StatusCreated)
	if countsOf(rep) != (counts{8, 0, 4, 4, 6}) {
		t.Errorf("re-importing gave %+v; want nothing created, 4 duplicates, the same 4 rejected", countsOf(rep))
	}

	// all_or_nothing: the bad rows fail the import, which writes nothing;
	// without them, it writes everything.
	renamed := strings.ReplaceAll(file, "o-", "n-")
	sales, events := count(t, s.pool, "SELECT count(*) FROM sales"), count(t, s.pool, "SELECT count(*) FROM outbox")
	rep = importFile(t, s, rUploadSales, "mode=all_or_nothing", renamed, http.StatusCreated)
	if rep.Status != importer.StatusFailed || rep.Created != 0 || rep.Rejected != 4 || !strings.Contains(rep.Failure, "4 of the 8") ||
		!slices.Equal(errorKeys(rep), want) {
		t.Errorf("an all_or_nothing import with 4 bad rows: %+v", rep)
	}
	if n, m := count(t, s.pool, "SELECT count(*) FROM sales")-sales, count(t, s.pool, "SELECT count(*) FROM outbox")-events; n != 0 || m != 1 {
		t.Errorf("a failed all_or_nothing import wrote %d sales and %d events; want none but its completed event", n, m)
	}
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE key = $1 AND convert_from(payload, 'UTF8')::jsonb->>'status' = 'failed'`, rep.ID); n != 1 {
		t.Errorf("the failed import has %d failed completed events, want 1", n)
	}
	if r := s.call(t, "GET", rImport, "/v1/imports/"+rep.ID, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &got)
	}
	if got.Status != importer.StatusFailed || !slices.Equal(errorKeys(got), want) {
		t.Errorf("the failed import reads as %+v", got)
	}
	good := "external_id,customer_id,currency,amount,date\na-1,cus-1,USD,1.00,2025-03-01\na-2,cus-1,USD,2.00,2025-03-01\na-1,cus-1,USD,3.00,2025-03-01\n"
	rep = importFile(t, s, rUploadSales, "", form{{"mode", "all_or_nothing"}, {"file", good}}, http.StatusCreated)
	if rep.Status != importer.StatusCompleted || rep.Mode != importer.AllOrNothing || countsOf(rep) != (counts{3, 2, 1, 0, 0}) {
		t.Errorf("an all_or_nothing import of good rows: %+v", rep)
	}

	// A dry run counts exactly (the repeat within the file included) and
	// writes nothing, whether asked in the query or in a field after the file.
	dry := strings.ReplaceAll(good, "a-", "d-")
	beforeDry := rowCounts(t, s)
	rep = importFile(t, s, rUploadSales, "dry_run=true", dry, http.StatusOK)
	if rep.ID != "" || !rep.DryRun || rep.Status != importer.StatusCompleted || countsOf(rep) != (counts{3, 2, 1, 0, 0}) {
		t.Errorf("a dry run: %+v", rep)
	}
	rep = importFile(t, s, rUploadSales, "", form{{"file", file}, {"dry_run", "1"}}, http.StatusOK)
	if countsOf(rep) != (counts{8, 0, 4, 4, 6}) || rep.ID != "" {
		t.Errorf("a dry run of the first file: %+v", rep)
	}
	rep = importFile(t, s, rUploadSales, "dry_run=true&mode=all_or_nothing", renamed, http.StatusOK)
	if rep.Status != importer.StatusFailed || rep.Created != 0 || rep.Rejected != 4 {
		t.Errorf("an all_or_nothing dry run of bad rows: %+v", rep)
	}
	if after := rowCounts(t, s); after != beforeDry {
		t.Errorf("dry runs wrote: before %s, after %s", beforeDry, after)
	}

	// Customers and expenses, their idempotency and their errors.
	customers := "id,name,email,external_id\ncus-2,Bob,bob@example.com,crm-2\ncus-1,Not Ada,x@example.com,crm-9\n" +
		",Carol,carol@example.com,crm-3\n,Dan,not-an-email,crm-4\ncus-5,Eve,eve@example.com,\n"
	rep = importFile(t, s, rUploadCustomers, "", customers, http.StatusCreated)
	if countsOf(rep) != (counts{5, 3, 0, 2, 2}) || !slices.Equal(errorKeys(rep), []string{"3 id id_taken", "5 email invalid"}) {
		t.Errorf("customers: %+v, errors %v", countsOf(rep), errorKeys(rep))
	}
	rep = importFile(t, s, rUploadCustomers, "", customers, http.StatusCreated)
	if countsOf(rep) != (counts{5, 0, 2, 3, 3}) {
		// cus-5 had no external_id: importing it again is an id taken.
		t.Errorf("customers again: %+v, errors %v", countsOf(rep), errorKeys(rep))
	}
	var carol int
	if carol = count(t, s.pool, `SELECT count(*) FROM customers WHERE external_id = 'crm-3' AND id LIKE 'cus\_%'`); carol != 1 {
		t.Errorf("a customer imported without id has %d made ids", carol)
	}
	expenses := "category,vendor,currency,amount,date,cost_of_goods_sold,external_id\n" +
		"inventory,Acme,EUR,€1.200.00,2025-03-01,yes,b-1\n" + // a decimal comma: rejected
		"inventory,Acme,EUR,\"€1,200.00\",2025-03-01,yes,b-2\n" +
		"rent,,USD,2500,2025-03-01,,b-3\n" +
		"rent,,USD,2500,2025-03-01,maybe,b-4\n"
	rep = importFile(t, s, rUploadExpenses, "", expenses, http.StatusCreated)
	if countsOf(rep) != (counts{4, 2, 0, 2, 2}) || !slices.Equal(errorKeys(rep), []string{"2 amount invalid_amount", "5 cost_of_goods_sold invalid"}) {
		t.Errorf("expenses: %+v, errors %v", countsOf(rep), errorKeys(rep))
	}
	var amount int64
	var cogs bool
	if err := s.pool.QueryRow(context.Background(), `SELECT amount, cost_of_goods_sold FROM expenses WHERE external_id = 'b-2'`).Scan(&amount, &cogs); err != nil || amount != 120000 || !cogs {
		t.Errorf("expense b-2 is %d, %v (%v); want 120000 cents, cost of goods sold", amount, cogs, err)
	}

	// Invalid settings.
	for _, q := range []string{"mode=some", "dry_run=maybe"} {
		r := s.call(t, "POST", rUploadSales, rUploadSales+"?"+q, form{{"file", good}})
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); len(p.Errors) != 1 || !strings.HasPrefix(q, p.Errors[0].Field) {
			t.Errorf("?%s: errors %v", q, p.Errors)
		}
	}
	r := s.call(t, "POST", rUploadSales, rUploadSales, form{{"file", good}, {"mode", "whole"}})
	expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation)
}

// testImportErrors uploads files that are not CSV files of their type, and
// requests that are not uploads: none writes anything.
func testImportErrors(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	createCustomer(t, s, "cus-1")
	before := rowCounts(t, s)
	const header = "external_id,customer_id,currency,amount,quantity,product,date\n"
	good := "o-1,cus-1,USD,1.00,1,,2025-03-01\n"
	for _, c := range []struct {
		what, file, detail string
	}{
		{"an empty file", "", "the file is empty"},
		{"an unknown column", "external_id,customer_id,currency,ammount,date\n" + good, `unknown column "ammount"`},
		{"a missing column", "external_id,customer_id,currency,date\n", `missing column "amount"`},
		{"a column twice", "amount,customer_id,currency,amount,date\n", `column "amount" is named twice`},
		{"a column without name", "customer_id,currency,amount,date,\n", "column 5 has no name"},
		{"Latin-1", header + good + "o-2,cus-1,USD,1.00,1,Caf\xe9,2025-03-01\n", "line 3: the file is not UTF-8"},
		{"UTF-16", "\xff\xfee\x00x\x00t\x00\n\x00", "the file is UTF-16"},
		{"a bare quote", header + good + "o-2,cus-1,USD,1.00,1,12\" pipe,2025-03-01\n", "line 3: bare \" in non-quoted-field"},
		{"an unterminated quote", header + good + "o-2,cus-1,USD,1.00,1,\"open,2025-03-01\n" + strings.Repeat(good, 5), "extraneous or missing \" in quoted-field"},
		{"an overlong row", header + good + "o-2,cus-1,USD,1.00,1," + strings.Repeat("x", importer.MaxRowBytes) + ",2025-03-01\n" + good,
			"line 3: the row is longer than 65536 bytes"},
	} {
		r := s.call(t, "POST", rUploadSales, rUploadSales, form{{"file", c.file}})
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemInvalidCSV); !strings.Contains(p.Detail, c.detail) {
			t.Errorf("%s: detail %q, want it to say %q", c.what, p.Detail, c.detail)
		}
	}

	// Row errors: each class, in one partial import.
	rows := header +
		"r-2,cus-1,USD,1.00,1,,2025-03-01,extra\n" + // ragged
		"r-3,cus-1,USD,1e3,1,,2025-03-01\n" +
		"r-4,cus-1,USD,NaN,1,,2025-03-01\n" +
		"r-5,cus-1,USD,1.234,1,,2025-03-01\n" +
		"r-6,cus-1,USD,,1,,2025-03-01\n" +
		"r-7,cus-1,USD,-5.00,1,,2025-03-01\n" +
		"r-8,cus-1,USD,99999999999999999999,1,,2025-03-01\n" +
		"r-9,cus-1,USD,€5.00,1,,2025-03-01\n" +
		"r-10,cus-1,JPY,5.0,1,,2025-03-01\n" +
		"r-11,nobody,USD,5.00,1,,2025-03-01\n" +
		"r-12,cus-1,USD,5.00,two,,2025-03-01\n" +
		"r-13,cus-1,USD,5.00,1,,03/01/2025\n" +
		"r-14,,,,,,\n" +
		"r-15,cus-1,USD,\" 1,000.00 \",1,,2025-03-01\n" // the one good row
	rep := importFile(t, s, rUploadSales, "", rows, http.StatusCreated)
	want := []string{"2  field_count", "3 amount invalid_amount", "4 amount invalid_amount", "5 amount too_many_decimals",
		"6 amount required", "7 amount negative_amount", "8 amount amount_out_of_range", "9 amount invalid_amount",
		"10 amount too_many_decimals", "11 customer_id unknown_customer", "12 quantity invalid", "13 date invalid",
		"14 customer_id required", "14 currency required", "14 amount required", "14 date required"}
	if !slices.Equal(errorKeys(rep), want) || rep.Created != 1 || rep.Rejected != 13 || rep.Rows != 14 {
		t.Errorf("row errors: %+v\n%v\nwant %v", countsOf(rep), errorKeys(rep), want)
	}
	for _, e := range rep.Errors {
		if e.Message == "" {
			t.Errorf("error %+v has no message", e)
		}
	}
	if n := count(t, s.pool, "SELECT count(*) FROM sales WHERE amount = 100000"); n != 1 {
		t.Errorf("the good row was written %d times", n)
	}
	before = rowCounts(t, s)

	// Requests that are not uploads, to each upload route.
	for _, route := range []string{rUploadSales, rUploadCustomers, rUploadExpenses} {
		expectProblem(t, s.call(t, "POST", route, route, form{{"file", "nothing,useful\n"}}), http.StatusUnprocessableEntity, api.ProblemInvalidCSV)
		rep := importFile(t, s, route, "dry_run=true", templateOf(t, s, route), http.StatusOK)
		if rep.Rows != 1 || rep.ID != "" {
			t.Errorf("a dry run of the %s template: %+v", route, rep)
		}
		requestErrors(t, s, route, templateOf(t, s, route))
	}
	small := newServer(t, api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Hour, MaxImportBytes: 1000})
	for _, route := range []string{rUploadSales, rUploadCustomers, rUploadExpenses} {
		tmpl := templateOf(t, s, route)
		_, example, _ := strings.Cut(tmpl, "\n")
		r := small.call(t, "POST", route, route, form{{"file", tmpl + strings.Repeat(example, 100)}})
		if p := expectProblem(t, r, http.StatusRequestEntityTooLarge, api.ProblemTooLarge); !strings.Contains(p.Detail, "1000") {
			t.Errorf("a 413 names the limit: %q", p.Detail)
		}
	}
	if after := rowCounts(t, s); after != before {
		t.Errorf("refused uploads wrote: before %s, after %s", before, after)
	}
}

// templateOf reads the template of an upload route's type.
func templateOf(t *testing.T, s *server, route string) string {
	t.Helper()
	typ := strings.TrimSuffix(strings.TrimPrefix(route, "/api/v1/data/upload-"), "-csv")
	r := s.call(t, "GET", rTemplate, "/api/v1/data/upload-template/"+typ, nil)
	expect(t, r, http.StatusOK)
	return string(r.body)
}

// requestErrors sends route requests that are not uploads: each is refused.
func requestErrors(t *testing.T, s *server, route, file string) {
	t.Helper()
	for _, c := range []struct {
		what string
		body any
		want int
		typ  string
	}{
		{"JSON", `{"file":"x"}`, http.StatusUnsupportedMediaType, api.ProblemMediaType},
		{"no file", form{{"mode", "partial"}}, http.StatusBadRequest, api.ProblemMalformed},
		{"two files", form{{"file", file}, {"file", file}}, http.StatusBadRequest, api.ProblemMalformed},
		{"an unknown field", form{{"file", file}, {"format", "csv"}}, http.StatusBadRequest, api.ProblemMalformed},
		{"broken multipart", "--x\r\n", http.StatusBadRequest, api.ProblemMalformed},
	} {
		var hdr []string
		if b, ok := c.body.(string); ok && strings.HasPrefix(b, "--") {
			hdr = []string{"Content-Type", "multipart/form-data; boundary=x"}
		}
		expectProblem(t, s.call(t, "POST", route, route, c.body, hdr...), c.want, c.typ)
	}
}
