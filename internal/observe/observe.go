// Package observe is Tally's observability: structured logs, Prometheus
// metrics, W3C trace context and the /metrics, /livez and /readyz endpoints
// every component serves.
package observe

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// NewLogger returns a logger writing format ("text" or "json") to w.
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// NewRegistry returns a registry with the Go runtime and process collectors
// and tally_build_info.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	version, goVersion := "devel", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tally_build_info",
		Help:        "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goVersion},
	})
	info.Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), info)
	return reg
}

// Propagator reads and writes W3C traceparent and tracestate.
var Propagator = propagation.TraceContext{}

// NewTracer returns a tracer whose spans carry real trace and span ids, so
// the traceparent of a request reaches the events it causes and the
// consumers that handle them. Spans are not exported anywhere yet.
func NewTracer() trace.Tracer {
	return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample()))).Tracer("tally")
}

// TraceParent returns the W3C traceparent of the span in ctx, or "".
func TraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	Propagator.Inject(ctx, c)
	return c["traceparent"]
}

// HTTPMetrics instruments handlers with request counts and latencies by
// route (the ServeMux pattern that matched, never the raw path, so ids do
// not explode the label space).
type HTTPMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewHTTPMetrics registers the HTTP metrics with reg.
func NewHTTPMetrics(reg prometheus.Registerer) *HTTPMetrics {
	m := &HTTPMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_http_requests_total",
			Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                        "tally_http_request_duration_seconds",
			Help:                        "HTTP request latency by route.",
			Buckets:                     []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
			NativeHistogramBucketFactor: 1.1,
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

// Wrap instruments next, which serves the routes of mux: the route of a
// request is the mux pattern that matches it. It also starts a server span,
// continuing the caller's trace when the request carries a traceparent.
func (m *HTTPMetrics) Wrap(tracer trace.Tracer, mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		_, route := mux.Handler(r)
		if route == "" {
			route = "unmatched"
		}
		ctx := Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(ctx))
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Health answers /livez and /readyz. Liveness only says the process serves
// HTTP: it must not depend on PostgreSQL or Kafka, or an outage of either
// would make an orchestrator restart every replica at once. Readiness runs
// every registered check and is false while the process drains.
type Health struct {
	mu       sync.Mutex
	checks   []check
	draining atomic.Bool
}

type check struct {
	name string
	fn   func(context.Context) error
}

// Check adds a readiness check.
func (h *Health) Check(name string, fn func(context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, check{name, fn})
}

// Drain makes readiness fail from now on, so load balancers stop sending
// work before the process stops.
func (h *Health) Drain() { h.draining.Store(true) }

// Register adds /livez, /readyz and /metrics (from g) to mux.
func (h *Health) Register(mux *http.ServeMux, g prometheus.Gatherer) {
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", h.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true}))
}

func (h *Health) ready(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "draining\n")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h.mu.Lock()
	checks := append([]check(nil), h.checks...)
	h.mu.Unlock()
	var errs []error
	for _, c := range checks {
		if err := c.fn(ctx); err != nil {
			errs = append(errs, errors.New(c.name+": "+err.Error()))
		}
	}
	if err := errors.Join(errs...); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, err.Error()+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}
