package consumer

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a record.
const (
	applied   = iota // its handler ran
	duplicate        // its ce_id was applied before
	rejected         // set aside in consumer_rejects
	ignored          // a type the group does not handle
	outcomes
)

var outcomeNames = [outcomes]string{"applied", "duplicate", "rejected", "ignored"}

type metrics struct {
	processed  *prometheus.CounterVec
	processing prometheus.Histogram
	endToEnd   *prometheus.HistogramVec
	last       prometheus.Gauge
	rebalances *prometheus.CounterVec
	retries    prometheus.Counter
	fenced     prometheus.Counter
	lag        *lagCollector
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(group string, r *Runner) *metrics {
	l := prometheus.Labels{"group": group}
	return &metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_consumer_records_total", ConstLabels: l,
			Help: "Records a consumer group processed, by topic and outcome (applied, duplicate, rejected, ignored).",
		}, []string{"topic", "outcome"}),
		processing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_consumer_processing_seconds", ConstLabels: l, Buckets: latencyBuckets,
			NativeHistogramBucketFactor: 1.1,
			Help:                        "Time from a record reaching its partition's worker to the commit of its batch.",
		}),
		endToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_consumer_end_to_end_seconds", ConstLabels: l, Buckets: latencyBuckets,
			NativeHistogramBucketFactor: 1.1,
			Help:                        "Time from an event's ce_time to the commit of its effects.",
		}, []string{"topic"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_consumer_last_processed_timestamp_seconds", ConstLabels: l,
			Help: "When the group last committed a batch, as a Unix timestamp.",
		}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_consumer_rebalance_partitions_total", ConstLabels: l,
			Help: "Partitions assigned to, revoked from or lost by this member.",
		}, []string{"kind"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_consumer_batch_retries_total", ConstLabels: l,
			Help: "Batches retried in place because the database or a handler failed for a reason other than the record.",
		}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_consumer_fenced_total", ConstLabels: l,
			Help: "Batches refused because another member had taken the partition.",
		}),
		lag: &lagCollector{r: r, desc: prometheus.NewDesc("tally_consumer_lag_records",
			"Records of a partition this member owns that are not applied yet (high watermark minus position).",
			[]string{"topic", "partition"}, l)},
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.processed, m.processing, m.endToEnd, m.last, m.rebalances,
		m.retries, m.fenced, m.lag} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// observe records a committed batch.
func (m *metrics) observe(topic string, counts [outcomes]int, items []item, now time.Time) {
	for o, n := range counts {
		if n > 0 {
			m.processed.WithLabelValues(topic, outcomeNames[o]).Add(float64(n))
		}
	}
	e2e := m.endToEnd.WithLabelValues(topic)
	for i := range items {
		m.processing.Observe(now.Sub(items[i].q.at).Seconds())
		if t := items[i].ev.Time; !t.IsZero() {
			e2e.Observe(now.Sub(t).Seconds())
		}
	}
	m.last.Set(float64(now.UnixNano()) / 1e9)
}

// lagCollector reports the lag of the partitions the member owns at scrape
// time, so a partition given up leaves no stale series behind.
type lagCollector struct {
	r    *Runner
	desc *prometheus.Desc
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	for key, w := range c.r.workers {
		if lag := w.lag(); lag >= 0 {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(lag),
				key.topic, strconv.Itoa(int(key.partition)))
		}
	}
}
