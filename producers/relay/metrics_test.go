package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/relay"
)

// gauge sums the series of a gauge or counter; a metric with no series yet
// (a vector never set) reads as -1.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			found = true
			switch {
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			}
		}
	}
	if !found {
		return -1
	}
	return sum
}

func TestRelayMetrics(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	before := time.Now()
	writeVersions(t, pool, "m", 1, 10)
	reg := prometheus.NewRegistry()
	r, err := relay.New(pool, relay.WithRegisterer(reg),
		relay.WithKafkaOptions(kgo.SeedBrokers(seeds...)), relay.WithRebalanceInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// The backlog is measured from the database, before the relay runs.
	if n := gauge(t, reg, "tally_outbox_pending_events"); n != 10 {
		t.Errorf("pending %v before publishing, want 10", n)
	}
	if ts := gauge(t, reg, "tally_outbox_oldest_pending_created_timestamp_seconds"); ts < float64(before.Unix())-1 || ts > float64(time.Now().Unix())+1 {
		t.Errorf("oldest pending at %v, want the first write's time around %d", ts, before.Unix())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	consume(t, seeds, topic, 10, 20*time.Second)
	waitFor(t, 10*time.Second, "the published counter to reach 10", func() bool {
		return gauge(t, reg, "tally_relay_events_published_total") == 10
	})
	waitFor(t, 10*time.Second, "the backlog to empty", func() bool {
		return gauge(t, reg, "tally_outbox_pending_events") == 0 &&
			gauge(t, reg, "tally_outbox_oldest_pending_created_timestamp_seconds") == 0
	})
	waitFor(t, 10*time.Second, "a lone relay to own all 64 shards", func() bool {
		return gauge(t, reg, "tally_relay_owned_shards") == 64
	})
	if n := testutil.CollectAndCount(reg, "tally_relay_publish_latency_seconds"); n != 1 {
		t.Errorf("latency histogram exported %d series", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "tally_") {
			t.Errorf("metric %s: %s", p.Metric, p.Text)
		}
	}
}
