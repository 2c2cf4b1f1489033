package observe_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tally-dev/tally/internal/observe"
)

func get(t *testing.T, h http.Handler, path string, hdr ...string) (int, string) {
	t.Helper()
	r := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	var h observe.Health
	mux := http.NewServeMux()
	h.Register(mux, observe.NewRegistry())
	broken := errors.New("connection refused")
	var fail error
	h.Check("postgres", func(context.Context) error { return fail })

	if code, _ := get(t, mux, "/readyz"); code != 200 {
		t.Errorf("/readyz answered %d with every check passing", code)
	}
	fail = broken
	if code, body := get(t, mux, "/readyz"); code != 503 || !strings.Contains(body, "postgres: connection refused") {
		t.Errorf("/readyz answered %d %q with postgres failing; want 503 naming it", code, body)
	}
	if code, _ := get(t, mux, "/livez"); code != 200 {
		t.Errorf("/livez answered %d while a dependency fails; liveness must not depend on it", code)
	}
	fail = nil
	h.Drain()
	if code, body := get(t, mux, "/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/readyz answered %d %q while draining", code, body)
	}
	if code, body := get(t, mux, "/metrics"); code != 200 || !strings.Contains(body, "tally_build_info") {
		t.Errorf("/metrics answered %d without tally_build_info", code)
	}
}

func TestHTTPMetricsLabelRoutesNotPaths(t *testing.T) {
	t.Parallel()
	reg := observe.NewRegistry()
	m := observe.NewHTTPMetrics(reg)
	mux := http.NewServeMux()
	var seen string
	mux.HandleFunc("GET /v1/invoices/{id}", func(w http.ResponseWriter, r *http.Request) {
		seen = observe.TraceParent(r.Context())
		w.WriteHeader(http.StatusTeapot)
	})
	h := m.Wrap(observe.NewTracer(), mux, mux)
	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	get(t, h, "/v1/invoices/inv-1", "traceparent", incoming)
	get(t, h, "/v1/invoices/inv-2")
	get(t, h, "/nowhere")

	want := `
# HELP tally_http_requests_total HTTP requests by route and status code.
# TYPE tally_http_requests_total counter
tally_http_requests_total{code="404",route="unmatched"} 1
tally_http_requests_total{code="418",route="GET /v1/invoices/{id}"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tally_http_requests_total"); err != nil {
		t.Error(err)
	}
	if !strings.HasPrefix(seen, "00-") || !strings.Contains(seen, "-01") {
		t.Fatalf("handler saw traceparent %q", seen)
	}
	get(t, h, "/v1/invoices/inv-3", "traceparent", incoming)
	if !strings.HasPrefix(seen, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || seen == incoming {
		t.Errorf("traceparent in the handler %q: want the caller's trace with a new span", seen)
	}
}

func TestMetricNamesFollowPrometheusConventions(t *testing.T) {
	t.Parallel()
	reg := observe.NewRegistry()
	observe.NewHTTPMetrics(reg)
	problems, err := testutil.GatherAndLint(reg, "tally_build_info", "tally_http_requests_total", "tally_http_request_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}
