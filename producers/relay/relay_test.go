package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/relay"
)

const topic = "tally.customers.v1"

// customerEvent is a schema-valid event of customer key at version seq.
func customerEvent(key string, seq int64) envelope.Event {
	typ := "tally.customer.updated.v1"
	if seq == 1 {
		typ = "tally.customer.created.v1"
	}
	now := time.Now().UTC()
	return envelope.Event{
		ID: envelope.NewID(), Type: typ, Source: "/tally/test", Subject: key, Time: now,
		Sequence: seq, CorrelationID: "corr-" + key,
		Data: fmt.Appendf(nil, `{"id":%q,"name":"n%d","email":"a@b.c","created_at":%q,"updated_at":%q}`,
			key, seq, now.Format(time.RFC3339Nano), now.Format(time.RFC3339Nano)),
	}
}

// writeVersions writes versions from..to of key, one transaction each.
func writeVersions(t testing.TB, pool *pgxpool.Pool, key string, from, to int64) {
	t.Helper()
	ctx := context.Background()
	for v := from; v <= to; v++ {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return outbox.Write(ctx, tx, customerEvent(key, v))
		})
		if err != nil {
			t.Fatalf("writing %s v%d: %v", key, v, err)
		}
	}
}

func startRelay(t testing.TB, ctx context.Context, pool *pgxpool.Pool, seeds []string, opts ...relay.Option) (stop func()) {
	t.Helper()
	r, err := relay.New(pool, append([]relay.Option{
		relay.WithKafkaOptions(kgo.SeedBrokers(seeds...), kgo.MetadataMinAge(100*time.Millisecond)),
		relay.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		relay.WithPollInterval(200 * time.Millisecond),
		relay.WithRebalanceInterval(100 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("relay did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// seen is what a consumer read of one topic, per key, in partition order.
type seen map[string][]envelope.Event

// consume reads topic from the start until want distinct events arrived or
// the deadline passes.
func consume(t testing.TB, seeds []string, topic string, want int, within time.Duration) seen {
	t.Helper()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(topic))
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	got := seen{}
	ids := map[string]bool{}
	for len(ids) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("got %d of %d distinct events within %s", len(ids), want, within)
		}
		fs.EachError(func(t2 string, p int32, err error) { t.Fatalf("fetching %s/%d: %v", t2, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			e, err := envelope.Decode(r)
			if err != nil {
				t.Fatalf("decoding record at %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
			}
			got[e.Subject] = append(got[e.Subject], e)
			ids[e.ID.String()] = true
		})
	}
	return got
}

// checkOrder asserts that every version 1..n of each key reached Kafka, in
// order, and that every repeat is an exact earlier event; it returns the
// number of repeats. Read as a consumer that skips what it has seen, the
// first occurrences must be in order. After a produce error Kafka does not
// retry, a record already in flight behind the failed one may land before
// the failed one's retry; then only the last occurrences, which come from
// the rewound republication, are in order, and the caller says so with
// lastOnly.
func checkOrder(t testing.TB, got seen, keys []string, n int64, lastOnly bool) (dups int) {
	t.Helper()
	for _, k := range keys {
		evs := got[k]
		if lastOnly {
			evs = lastOccurrences(evs)
		}
		first := map[string]envelope.Event{}
		next := int64(1)
		for _, e := range evs {
			if prev, ok := first[e.ID.String()]; ok {
				if prev.Sequence != e.Sequence || prev.Type != e.Type || string(prev.Data) != string(e.Data) {
					t.Errorf("%s: ce_id %s came back as a different event", k, e.ID)
				}
				dups++
				continue
			}
			first[e.ID.String()] = e
			if e.Sequence != next {
				t.Errorf("%s: got version %d where %d was due (order broken)", k, e.Sequence, next)
				return dups
			}
			next++
		}
		if next != n+1 {
			t.Errorf("%s: got versions up to %d, want %d", k, next-1, n)
		}
		dups += len(got[k]) - len(evs)
	}
	return dups
}

// lastOccurrences keeps the last occurrence of each event, in order.
func lastOccurrences(evs []envelope.Event) []envelope.Event {
	last := map[string]int{}
	for i, e := range evs {
		last[e.ID.String()] = i
	}
	var out []envelope.Event
	for i, e := range evs {
		if last[e.ID.String()] == i {
			out = append(out, e)
		}
	}
	return out
}

func keys(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = prefix + strconv.Itoa(i)
	}
	return ks
}

func TestRelayPublishesEveryEventInOrderWithHeaders(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	ks := keys("c", 20)
	for _, k := range ks {
		writeVersions(t, pool, k, 1, 5)
	}
	startRelay(t, context.Background(), pool, seeds)
	got := consume(t, seeds, topic, 100, 30*time.Second)
	if dups := checkOrder(t, got, ks, 5, false); dups != 0 {
		t.Errorf("%d duplicates without any failure", dups)
	}
	e := got["c3"][0]
	if e.Type != "tally.customer.created.v1" || e.Source != "/tally/test" || e.CorrelationID != "corr-c3" {
		t.Errorf("first event of c3 has type %q source %q correlation %q", e.Type, e.Source, e.CorrelationID)
	}
}
