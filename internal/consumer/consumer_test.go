package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/topics"
)

const topic = "tally.customers.v1"

// customer is what the test group reads of a customer event.
type customer struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// testGroup records every event it applies in effects, with the order it
// applied them in, so a test can see double applications and order.
func testGroup(t testing.TB, pool *pgxpool.Pool) *consumer.Group {
	t.Helper()
	if err := createEffects(pool); err != nil {
		t.Fatal(err)
	}
	return newTestGroup()
}

func createEffects(pool *pgxpool.Pool) error {
	_, err := pool.Exec(context.Background(), `CREATE TABLE IF NOT EXISTS effects (
		n bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, sequence bigint NOT NULL)`)
	return err
}

func newTestGroup() *consumer.Group {
	g := consumer.NewGroup("test", topic)
	apply := func(ctx context.Context, tx consumer.Tx, e consumer.Event[customer]) error {
		switch e.Payload.Name {
		case "poison":
			return consumer.Permanent(fmt.Errorf("the name is poison"))
		case "panic":
			panic("a handler bug")
		case "bad data":
			// A write the database refuses, queued: its error surfaces
			// only at the commit, with the record unknown.
			tx.Queue(`INSERT INTO effects (event_id, key, sequence) VALUES ($1, $2, NULL)`, e.ID, e.Subject)
			return nil
		}
		tx.Queue(`INSERT INTO effects (event_id, key, sequence) VALUES ($1, $2, $3)`, e.ID, e.Subject, e.Sequence)
		return nil
	}
	consumer.Handle(g, "tally.customer.created.v1", apply)
	consumer.Handle(g, "tally.customer.updated.v1", apply)
	return g
}

func event(key string, seq int64, name string) envelope.Event {
	typ := "tally.customer.updated.v1"
	if seq == 1 {
		typ = "tally.customer.created.v1"
	}
	now := time.Now().UTC()
	return envelope.Event{
		ID: envelope.NewID(), Type: typ, Source: "/tally/test", Subject: key, Time: now, Sequence: seq,
		CorrelationID: "c",
		Data: fmt.Appendf(nil, `{"id":%q,"name":%q,"email":"a@b.c","created_at":%q,"updated_at":%q}`,
			key, name, now.Format(time.RFC3339Nano), now.Format(time.RFC3339Nano)),
	}
}

// cluster starts a Kafka cluster for t with Tally's topics and those of
// the test group, and returns its seed addresses.
func cluster(t testing.TB, opts ...kfake.Opt) []string {
	t.Helper()
	_, seeds := testenv.Kafka(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := topics.Apply(ctx, kadm.NewClient(testenv.Client(t, seeds)), topics.GroupTopics("test", topics.RetryDelays), -1); err != nil {
		t.Fatal(err)
	}
	return seeds
}

func produce(t testing.TB, cl *kgo.Client, recs ...*kgo.Record) {
	t.Helper()
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// versions produces versions from..to of each key, in order, and returns
// the events.
func versions(t testing.TB, cl *kgo.Client, keys []string, from, to int64) []envelope.Event {
	t.Helper()
	var evs []envelope.Event
	var recs []*kgo.Record
	for v := from; v <= to; v++ {
		for _, k := range keys {
			e := event(k, v, fmt.Sprintf("n%d", v))
			evs = append(evs, e)
			recs = append(recs, e.Record(topic))
		}
	}
	produce(t, cl, recs...)
	return evs
}

func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("k%03d", i)
	}
	return ks
}

// fastFailover lets the group notice a killed member after six seconds
// (kfake's shortest session) instead of the default 45, and bounds a
// rebalance that waits for a member killed in its midst to 10 seconds
// instead of 60.
var fastFailover = []kgo.Opt{kgo.SessionTimeout(6 * time.Second), kgo.HeartbeatInterval(500 * time.Millisecond),
	kgo.RebalanceTimeout(10 * time.Second)}

// testLogLevel is the members' log level: errors, or what
// TALLY_TEST_LOG_LEVEL says (debug shows rebalances).
func testLogLevel() slog.Level {
	var l slog.Level
	if l.UnmarshalText([]byte(os.Getenv("TALLY_TEST_LOG_LEVEL"))) != nil {
		return slog.LevelError
	}
	return l
}

type member struct {
	r    *consumer.Runner
	stop func()
}

func startMember(t testing.TB, pool *pgxpool.Pool, g *consumer.Group, seeds []string, opts ...consumer.Option) *member {
	t.Helper()
	r, err := consumer.New(pool, g, append([]consumer.Option{
		consumer.WithKafkaOptions(append([]kgo.Opt{kgo.SeedBrokers(seeds...), kgo.MetadataMinAge(100 * time.Millisecond),
			kgo.FetchMaxWait(200 * time.Millisecond)}, fastFailover...)...),
		consumer.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel()}))),
		consumer.WithCommitInterval(100 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("member: %v", err)
		}
	}()
	var once sync.Once
	m := &member{r: r}
	m.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("member did not stop within 30s")
			}
		})
	}
	t.Cleanup(m.stop)
	return m
}

// applied returns, per key, the sequences applied in application order,
// and how many times each event was applied.
func applied(t testing.TB, pool *pgxpool.Pool) (map[string][]int64, map[string]int) {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT event_id::text, key, sequence FROM effects ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	order := map[string][]int64{}
	times := map[string]int{}
	for rows.Next() {
		var id, key string
		var seq int64
		if err := rows.Scan(&id, &key, &seq); err != nil {
			t.Fatal(err)
		}
		order[key] = append(order[key], seq)
		times[id]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return order, times
}

func count(t testing.TB, pool *pgxpool.Pool, sql string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkExactlyOnce asserts every event of evs was applied exactly once and
// each key's versions in order.
func checkExactlyOnce(t testing.TB, pool *pgxpool.Pool, evs []envelope.Event) {
	t.Helper()
	order, times := applied(t, pool)
	for _, e := range evs {
		if n := times[e.ID.String()]; n != 1 {
			t.Errorf("%s v%d applied %d times", e.Subject, e.Sequence, n)
		}
	}
	for k, seqs := range order {
		for i, s := range seqs {
			if s != int64(i+1) {
				t.Errorf("%s: applied versions %v, want 1..%d in order", k, seqs, len(seqs))
				break
			}
		}
	}
}

func TestGroupAppliesEveryEventOnceInOrder(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	evs := versions(t, cl, keys(30), 1, 10)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(50))
	waitFor(t, 30*time.Second, "300 effects", func() bool { return count(t, pool, "SELECT count(*) FROM effects") >= 300 })
	checkExactlyOnce(t, pool, evs)
}
