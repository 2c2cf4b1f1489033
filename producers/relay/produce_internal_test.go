package relay

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
)

// A read planned before the relay lost and retook a shard must not move the
// shard's new position: its rows come from the old, further position, and
// taking them would skip everything in between.
func TestProduceIgnoresReadsOfAReplacedShard(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	r, err := New(pool, WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.client.Close()
	rec := func(seq int64) *outbox.Record {
		return &outbox.Record{Shard: 7, Seq: seq, Topic: "tally.customers.v1", Key: "k", Event: envelope.Event{
			ID: envelope.NewID(), Type: "tally.customer.created.v1", Source: "/t", Subject: "k", Sequence: 1, CorrelationID: "c",
			Data: []byte(`{}`)}}
	}
	old := &shard{id: 7, readPos: 5000, ackPos: 3000}
	retaken := &shard{id: 7, readPos: 3000, ackPos: 3000, savedPos: 3000}
	r.shards[7] = retaken

	r.produce(context.Background(), rec(4600), old)
	if retaken.readPos != 3000 || retaken.inflight != 0 {
		t.Fatalf("a row of the old read moved the retaken shard to %d (%d in flight)", retaken.readPos, retaken.inflight)
	}
	r.produce(context.Background(), rec(3001), retaken)
	if retaken.readPos != 3001 || retaken.inflight != 1 {
		t.Errorf("the next row of the shard's own read was not taken: read %d, %d in flight", retaken.readPos, retaken.inflight)
	}
	if n := testutil.ToFloat64(r.m.errors.WithLabelValues("gap")); n != 0 {
		t.Errorf("%v gaps counted on contiguous rows", n)
	}
	r.produce(context.Background(), rec(3005), retaken)
	if n := testutil.ToFloat64(r.m.errors.WithLabelValues("gap")); n != 1 {
		t.Errorf("%v gaps counted after skipping 3002..3004, want 1", n)
	}
	if err := r.client.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}
