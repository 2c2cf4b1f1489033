package consumer

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a record.
const (
	applied   = iota // its handler ran
	duplicate        // its ce_id was applied before
	ignored          // a type the group does not handle
	parked           // parked behind a failed record of its key
	retried          // failed, forwarded to a retry tier
	dead             // failed, forwarded to the dead-letter topic
	stale            // a retry record that no longer names a parked record's pending attempt
	outcomes
)

var outcomeNames = [outcomes]string{"applied", "duplicate", "ignored", "parked", "retried", "dead", "stale"}

type metrics struct {
	processed  *prometheus.CounterVec
	forwards   *prometheus.CounterVec
	processing prometheus.Histogram
	endToEnd   *prometheus.HistogramVec
	last       prometheus.Gauge
	rebalances *prometheus.CounterVec
	retries    prometheus.Counter
	fenced     prometheus.Counter
	lag        *lagCollector
	parked     *parkedCollector
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(group string, r *Runner) *metrics {
	l := prometheus.Labels{"group": group}
	return &metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_consumer_records_total", ConstLabels: l,
			Help: "Records a consumer group processed, by topic and outcome (applied, duplicate, ignored, parked, retried, dead, stale).",
		}, []string{"topic", "outcome"}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_consumer_forwards_total", ConstLabels: l,
			Help: "Failed records a consumer group forwarded, by destination: a retry tier (retry.1, retry.2, ...) or the dead-letter topic (dlq).",
		}, []string{"to"}),
		processing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_consumer_processing_seconds", ConstLabels: l, Buckets: latencyBuckets,
			NativeHistogramBucketFactor: 1.1,
			Help:                        "Time from a record reaching its partition's worker (or, parked, being woken) to the commit of its effects.",
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
		parked: &parkedCollector{r: r,
			records: prometheus.NewDesc("tally_consumer_parked_records",
				"Records the group has parked, by state: retrying (waiting in a retry tier), waiting (behind a failed record of their key), dead (the dead-letter queue: its depth) and skipped. Read from PostgreSQL at scrape time: every member reports the group's figures.",
				[]string{"state"}, l),
			keys: prometheus.NewDesc("tally_consumer_parked_keys",
				"Keys the group holds parked: their later records wait behind a failed one. Read from PostgreSQL at scrape time.",
				nil, l),
			oldest: prometheus.NewDesc("tally_consumer_oldest_parked_timestamp_seconds",
				"When the group's oldest record still retrying, waiting or dead was parked, as a Unix timestamp; absent when there is none. Read from PostgreSQL at scrape time.",
				nil, l)},
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.processed, m.forwards, m.processing, m.endToEnd, m.last, m.rebalances,
		m.retries, m.fenced, m.lag, m.parked} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// observe records a committed batch of topic: its outcomes, the tiers of
// its failure forwards (0: the dead-letter topic) and the latencies of the
// records it applied.
func (m *metrics) observe(topic string, counts [outcomes]int, tiers []int, applied []*item, now time.Time) {
	for o, n := range counts {
		if n > 0 {
			m.processed.WithLabelValues(topic, outcomeNames[o]).Add(float64(n))
		}
	}
	for _, tier := range tiers {
		to := "dlq"
		if tier > 0 {
			to = "retry." + strconv.Itoa(tier)
		}
		m.forwards.WithLabelValues(to).Inc()
	}
	for _, it := range applied {
		m.processing.Observe(now.Sub(it.at).Seconds())
		m.endToEnd.WithLabelValues(it.orig.topic).Observe(now.Sub(it.ev.Time).Seconds())
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

// parkedCollector reports what the group has parked in PostgreSQL at
// scrape time. A scrape that cannot read it (the database down) reports
// none of it, rather than failing the whole scrape.
type parkedCollector struct {
	r                     *Runner
	records, keys, oldest *prometheus.Desc
}

func (c *parkedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.records
	ch <- c.keys
	ch <- c.oldest
}

func (c *parkedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rows, err := c.r.pool.Query(ctx, `
		SELECT s.state, coalesce(p.n, 0), p.oldest
		FROM unnest(ARRAY['retrying', 'waiting', 'dead', 'skipped']) AS s(state)
		LEFT JOIN (
			SELECT state, count(*) AS n, min(parked_at) FILTER (WHERE state <> 'skipped') AS oldest
			FROM consumer_parked WHERE group_id = $1 GROUP BY state
		) p USING (state)
		UNION ALL
		SELECT '', count(*), NULL FROM consumer_parked_keys WHERE group_id = $1`, c.r.g.name)
	if err != nil {
		c.r.log.Debug("reading parked records for metrics", "err", err)
		return
	}
	defer rows.Close()
	var oldest *time.Time
	var ms []prometheus.Metric
	for rows.Next() {
		var state string
		var n float64
		var at *time.Time
		if err := rows.Scan(&state, &n, &at); err != nil {
			c.r.log.Debug("reading parked records for metrics", "err", err)
			return
		}
		if state == "" {
			ms = append(ms, prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, n))
			continue
		}
		ms = append(ms, prometheus.MustNewConstMetric(c.records, prometheus.GaugeValue, n, state))
		if at != nil && (oldest == nil || at.Before(*oldest)) {
			oldest = at
		}
	}
	if rows.Err() != nil {
		return
	}
	if oldest != nil {
		ms = append(ms, prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, float64(oldest.UnixNano())/1e9))
	}
	for _, m := range ms {
		ch <- m
	}
}
