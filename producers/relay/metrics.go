package relay

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/internal/outbox"
)

type metrics struct {
	published *prometheus.CounterVec
	latency   prometheus.Histogram
	errors    *prometheus.CounterVec
	owned     prometheus.Gauge
	members   prometheus.Gauge
	backlog   *backlogCollector
}

func newMetrics(pool *pgxpool.Pool) *metrics {
	return &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_relay_events_published_total",
			Help: "Events the relay published and Kafka acknowledged, by topic.",
		}, []string{"topic"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                        "tally_relay_publish_latency_seconds",
			Help:                        "Time from an event's ce_time (its write, just before commit) to Kafka's acknowledgement.",
			Buckets:                     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
			NativeHistogramBucketFactor: 1.1,
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_relay_errors_total",
			Help: "Relay failures by stage: read, produce, cursor, listen, ownership, prune, gap.",
		}, []string{"stage"}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_relay_owned_shards",
			Help: "Outbox shards this relay owns.",
		}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_relay_members",
			Help: "Relays sharing the outbox, as this relay last counted them.",
		}),
		backlog: &backlogCollector{pool: pool},
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.published, m.latency, m.errors, m.owned, m.members, m.backlog} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var (
	pendingDesc = prometheus.NewDesc("tally_outbox_pending_events",
		"Committed events the relays have not published yet.", nil, nil)
	oldestDesc = prometheus.NewDesc("tally_outbox_oldest_pending_created_timestamp_seconds",
		"Write time of the oldest unpublished event, as a Unix timestamp; 0 when none is pending.", nil, nil)
)

// backlogCollector measures the outbox backlog at scrape time, so the figure
// is never stale and costs nothing between scrapes.
type backlogCollector struct{ pool *pgxpool.Pool }

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- oldestDesc
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pending, oldest, err := outbox.Backlog(ctx, c.pool)
	if err != nil {
		err = errors.Join(errors.New("measuring the outbox backlog"), err)
		ch <- prometheus.NewInvalidMetric(pendingDesc, err)
		ch <- prometheus.NewInvalidMetric(oldestDesc, err)
		return
	}
	var ts float64
	if !oldest.IsZero() {
		ts = float64(oldest.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(pending))
	ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, ts)
}
