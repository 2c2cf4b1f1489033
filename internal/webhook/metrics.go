package webhook

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a sender's Prometheus metrics.
type metrics struct {
	// deliveries counts attempts by endpoint and outcome: succeeded,
	// failed (retried later, or the delivery failed), throttled, gone.
	deliveries *prometheus.CounterVec
	// latency is how long attempts took, answered or not.
	latency prometheus.Histogram
	// openCircuits and disabled are the endpoints whose circuit is open,
	// and the disabled ones, counted every ten polls.
	openCircuits prometheus.Gauge
	disabled     prometheus.Gauge
	// disabledTotal counts the endpoints the sender disabled, by cause:
	// gone (a 410) or failing (for days).
	disabledTotal *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_webhook_deliveries_total",
			Help: "Webhook delivery attempts, by endpoint and outcome (succeeded, failed, throttled, gone)."},
			[]string{"endpoint", "outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_webhook_delivery_duration_seconds",
			Help:    "How long webhook delivery attempts took, from the request to the response body read (or the error).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		openCircuits: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_webhook_open_circuits",
			Help: "Enabled webhook endpoints whose circuit breaker is open: none of their deliveries is tried until the cool-down ends."}),
		disabled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_webhook_disabled_endpoints",
			Help: "Disabled webhook endpoints: by request, after a 410 Gone, or after failing for days."}),
		disabledTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_webhook_endpoints_disabled_total",
			Help: "Webhook endpoints the sender disabled, by cause (gone: answered 410; failing: every attempt failed for days)."},
			[]string{"cause"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.latency, m.openCircuits, m.disabled, m.disabledTotal} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering the webhook metrics: %w", err)
		}
	}
	return m, nil
}
