package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/relay"
	"github.com/tally-dev/tally/topics"
)

// flakyGroup is the test group whose handlers fail on purpose, by the
// name in the payload:
//
//	failN   fails (transiently) its first N attempts, counted outside the
//	        handler's transaction so that a rollback does not undo the count
//	broken  fails transiently until its key is in table fixed
//	poison  fails permanently
//	slow    reads the database first (and so fails with it)
//	emit    emits two tally.invoice.payment_received.v1 events, keyed by its key
//	emit-then-fail  emits them, then fails permanently
//
// Anything else is applied: a row in effects. A broken record, once fixed,
// also emits an event.
func flakyGroup(t testing.TB, pool *pgxpool.Pool) *consumer.Group {
	t.Helper()
	if err := createFlaky(pool); err != nil {
		t.Fatal(err)
	}
	return newFlakyGroup(pool)
}

func createFlaky(pool *pgxpool.Pool) error {
	if err := createEffects(pool); err != nil {
		return err
	}
	_, err := pool.Exec(context.Background(), `
		CREATE TABLE IF NOT EXISTS tries (event_id uuid PRIMARY KEY, n int NOT NULL);
		CREATE TABLE IF NOT EXISTS fixed (key text PRIMARY KEY)`)
	return err
}

func newFlakyGroup(pool *pgxpool.Pool) *consumer.Group {
	g := consumer.NewGroup("test", topic)
	apply := func(ctx context.Context, tx consumer.Tx, e consumer.Event[customer]) error {
		name := e.Payload.Name
		switch {
		case strings.HasPrefix(name, "fail"):
			n, _ := strconv.Atoi(name[4:])
			var tries int
			if err := pool.QueryRow(ctx, `INSERT INTO tries (event_id, n) VALUES ($1, 1)
				ON CONFLICT (event_id) DO UPDATE SET n = tries.n + 1 RETURNING n`, e.ID).Scan(&tries); err != nil {
				return consumer.Environmental(err)
			}
			if tries <= n {
				return fmt.Errorf("failing attempt %d of %d on purpose", tries, n)
			}
		case name == "broken":
			var fixed bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fixed WHERE key = $1)`, e.Subject).Scan(&fixed); err != nil {
				return err
			}
			if !fixed {
				return errors.New("broken until fixed")
			}
			if err := e.Emit("tally.invoice.payment_received.v1", e.Subject, e.Sequence, map[string]any{
				"invoice_id": e.Subject, "customer_id": "c", "payment_id": "fixed", "currency": "EUR",
				"amount": 100, "paid_at": "2026-01-01", "total": 100, "amount_paid": 100, "amount_due": 0,
			}); err != nil {
				return err
			}
		case name == "poison":
			return consumer.Permanent(errors.New("the name is poison"))
		case name == "emit" || name == "emit-then-fail":
			for i := range 2 {
				if err := e.Emit("tally.invoice.payment_received.v1", e.Subject, e.Sequence*10+int64(i), map[string]any{
					"invoice_id": e.Subject, "customer_id": "c", "payment_id": fmt.Sprint(i), "currency": "EUR",
					"amount": 100, "paid_at": "2026-01-01", "total": 200, "amount_paid": 100 * (i + 1), "amount_due": 100 - 100*i,
				}); err != nil {
					return err
				}
			}
			if name == "emit-then-fail" {
				return consumer.Permanent(errors.New("failing after emitting"))
			}
		case name == "slow":
			var one int
			if err := tx.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
				return err
			}
		}
		tx.Queue(`INSERT INTO effects (event_id, key, sequence) VALUES ($1, $2, $3)`, e.ID, e.Subject, e.Sequence)
		return nil
	}
	consumer.Handle(g, "tally.customer.created.v1", apply)
	consumer.Handle(g, "tally.customer.updated.v1", apply)
	return g
}

// startRelay publishes the outbox (the group's forwards) to Kafka until t
// ends.
func startRelay(t testing.TB, pool *pgxpool.Pool, seeds []string) (stop func()) {
	t.Helper()
	r, err := relay.New(pool,
		relay.WithKafkaOptions(kgo.SeedBrokers(seeds...), kgo.MetadataMinAge(100*time.Millisecond)),
		relay.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))),
		relay.WithPollInterval(100*time.Millisecond),
		relay.WithRebalanceInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// notifier returns an outbox notifier running until t ends.
func notifier(t testing.TB, pool *pgxpool.Pool) *outbox.Notifier {
	n := outbox.NewNotifier(pool, slog.Default())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// emitter produces events and remembers them, in order.
type emitter struct {
	t   testing.TB
	cl  *kgo.Client
	mu  sync.Mutex
	evs []envelope.Event
}

func (em *emitter) emit(key string, seq int64, name string) envelope.Event {
	em.t.Helper()
	e := event(key, seq, name)
	produce(em.t, em.cl, e.Record(topic))
	em.mu.Lock()
	em.evs = append(em.evs, e)
	em.mu.Unlock()
	return e
}

func (em *emitter) events() []envelope.Event {
	em.mu.Lock()
	defer em.mu.Unlock()
	return append([]envelope.Event(nil), em.evs...)
}

// checkInvariants checks, after a scenario, that every event produced was
// applied exactly once or is parked (retrying, waiting or dead) or was
// skipped, and never both; that each key's events were applied in the order
// produced; and that no key has an event applied after one of its events
// still parked. It returns how many events are in each state.
func checkInvariants(t testing.TB, pool *pgxpool.Pool, evs []envelope.Event) map[string]int {
	t.Helper()
	_, times := applied(t, pool)
	parked := map[string]string{}
	rows, err := pool.Query(context.Background(), `SELECT event_id::text, state FROM consumer_parked WHERE event_id IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			t.Fatal(err)
		}
		if parked[id] != "" {
			t.Errorf("event %s is parked twice", id)
		}
		parked[id] = state
	}
	rows.Close()
	states := map[string]int{}
	lastApplied := map[string]int64{}
	firstPending := map[string]int64{}
	order, _ := applied(t, pool)
	for _, e := range evs {
		id := e.ID.String()
		n, state := times[id], parked[id]
		switch {
		case n > 1:
			t.Errorf("%s v%d applied %d times", e.Subject, e.Sequence, n)
		case n == 1 && state != "":
			t.Errorf("%s v%d applied and %s", e.Subject, e.Sequence, state)
		case n == 0 && state == "":
			t.Errorf("%s v%d neither applied nor parked: lost", e.Subject, e.Sequence)
		case n == 1:
			states["applied"]++
			lastApplied[e.Subject] = max(lastApplied[e.Subject], e.Sequence)
		default:
			states[state]++
			if state != consumer.StateSkipped && (firstPending[e.Subject] == 0 || e.Sequence < firstPending[e.Subject]) {
				firstPending[e.Subject] = e.Sequence
			}
		}
	}
	for key, seqs := range order {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Errorf("%s: applied versions %v, out of the order produced", key, seqs)
				break
			}
		}
	}
	for key, p := range firstPending {
		if lastApplied[key] > p {
			t.Errorf("%s: v%d applied while v%d is still parked", key, lastApplied[key], p)
		}
	}
	return states
}

// dumpOnFailure logs, should t fail, what a stuck scenario leaves behind:
// the parked records and the group's positions.
func dumpOnFailure(t *testing.T, pool *pgxpool.Pool) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, q := range []string{
			`SELECT id, topic, partition, "offset", key, state, version, attempts, tier, not_before, error FROM consumer_parked ORDER BY id`,
			`SELECT topic, partition, next_offset, epoch, owner, paused_until FROM consumer_offsets ORDER BY topic, partition`,
			`SELECT group_id, topic, key FROM consumer_parked_keys`,
			`SELECT c.shard, c.position, h.head FROM relay_cursors c JOIN outbox_heads h USING (shard) WHERE c.position <> h.head`,
		} {
			rows, err := pool.Query(context.Background(), q)
			if err != nil {
				t.Logf("%s: %v", q, err)
				continue
			}
			for rows.Next() {
				vs, _ := rows.Values()
				t.Logf("%v", vs)
			}
			rows.Close()
		}
	})
}

// forwards sums tally_consumer_forwards_total to a destination.
func forwards(t *testing.T, reg *prometheus.Registry, to string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tally_consumer_forwards_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "to" && l.GetValue() == to {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// gauge returns the value of a gauge in reg, of the series with that
// state label when state is not empty (-1 when absent).
func gauge(t *testing.T, reg *prometheus.Registry, name, state string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := state == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == "state" && l.GetValue() == state)
			}
			if match {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// topicRecords reads every record of the topics from the start until it
// has want of them (or a timeout).
func topicRecords(t *testing.T, seeds []string, want int, ts ...string) []*kgo.Record {
	t.Helper()
	cl := testenv.Client(t, seeds, kgo.ConsumeTopics(ts...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d records of %v, want %d", len(recs), ts, want)
		}
		recs = append(recs, fs.Records()...)
	}
	return recs
}

func header(rec *kgo.Record, key string) string {
	for _, h := range rec.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func effectsOf(t testing.TB, pool *pgxpool.Pool, key string) []int64 {
	t.Helper()
	order, _ := applied(t, pool)
	return order[key]
}

func TestARetriedRecordHoldsItsKeyWhileOthersFlow(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	g := flakyGroup(t, pool)
	startRelay(t, pool, seeds)
	reg := prometheus.NewRegistry()
	startMember(t, pool, g, seeds, consumer.WithRegisterer(reg), consumer.WithBatchSize(10),
		consumer.WithRetryDelays(time.Second, time.Second, time.Second), consumer.WithNotifier(notifier(t, pool)))

	others := keys(20)
	em.emit("K", 1, "ok")
	failing := em.emit("K", 2, "fail2")
	for v := int64(1); v <= 3; v++ {
		for _, k := range others {
			em.emit(k, v, "ok")
		}
		em.emit("K", v+2, "ok")
	}
	waitFor(t, 30*time.Second, "K's five events", func() bool { return len(effectsOf(t, pool, "K")) == 5 })

	if got := effectsOf(t, pool, "K"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Errorf("K applied %v, want [1 2 3 4 5]", got)
	}
	// Other keys did not wait for K's retries: all were applied before
	// K's second event was.
	var late int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM effects o
		WHERE o.key <> 'K' AND o.n > (SELECT n FROM effects WHERE key = 'K' AND sequence = 2)`).Scan(&late); err != nil {
		t.Fatal(err)
	}
	if late > 0 {
		t.Errorf("%d events of other keys were applied after K's retried event: the retry delayed them", late)
	}
	if r1, r2, d := forwards(t, reg, "retry.1"), forwards(t, reg, "retry.2"), forwards(t, reg, "dlq"); r1 != 1 || r2 != 1 || d != 0 {
		t.Errorf("forwards: %v to retry.1, %v to retry.2, %v to the DLQ; want 1, 1, 0", r1, r2, d)
	}
	states := checkInvariants(t, pool, em.events())
	if states["applied"] != len(em.events()) {
		t.Errorf("states %v, want every event applied", states)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_parked") + count(t, pool, "SELECT count(*) FROM consumer_parked_keys"); n != 0 {
		t.Errorf("%d parked rows left after the retry succeeded", n)
	}

	// The retry records carry what Kafka tools need to know.
	recs := topicRecords(t, seeds, 2, topics.RetryTopic("test", 1), topics.RetryTopic("test", 2))
	for _, rec := range recs {
		tier := strings.TrimPrefix(rec.Topic, "tally.test.retry.")
		want := map[string]string{
			consumer.HeaderOriginalTopic: topic, consumer.HeaderGroup: "test", consumer.HeaderAttempts: tier,
			consumer.HeaderRetryTier: tier, consumer.HeaderErrorClass: "transient", envelope.HeaderID: failing.ID.String(),
			consumer.HeaderError: "failing attempt " + tier + " of 2 on purpose",
		}
		for k, v := range want {
			if got := header(rec, k); got != v {
				t.Errorf("%s: header %s = %q, want %q", rec.Topic, k, got, v)
			}
		}
		if string(rec.Key) != "K" || string(rec.Value) != string(failing.Data) {
			t.Errorf("%s: the record is not K's failing event: key %q", rec.Topic, rec.Key)
		}
		for _, k := range []string{consumer.HeaderOriginalPartition, consumer.HeaderOriginalOffset} {
			if _, err := strconv.ParseInt(header(rec, k), 10, 64); err != nil {
				t.Errorf("%s: header %s = %q", rec.Topic, k, header(rec, k))
			}
		}
		for _, k := range []string{consumer.HeaderFirstFailure, consumer.HeaderLastFailure, consumer.HeaderNotBefore} {
			if _, err := time.Parse(time.RFC3339, header(rec, k)); err != nil {
				t.Errorf("%s: header %s = %q is not a time", rec.Topic, k, header(rec, k))
			}
		}
	}
}

func TestADeadLetterHoldsItsKeyUntilReplayedOrSkipped(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	g := flakyGroup(t, pool)
	startRelay(t, pool, seeds)
	reg := prometheus.NewRegistry()
	startMember(t, pool, g, seeds, consumer.WithRegisterer(reg),
		consumer.WithRetryDelays(200*time.Millisecond, 200*time.Millisecond), consumer.WithNotifier(notifier(t, pool)))

	em.emit("K", 1, "ok")
	broken := em.emit("K", 2, "broken")
	em.emit("J", 1, "ok")
	poison := em.emit("J", 2, "poison")
	for v := int64(1); v <= 3; v++ {
		for _, k := range keys(5) {
			em.emit(k, v, "ok")
		}
	}
	em.emit("K", 3, "ok")
	em.emit("K", 4, "ok")
	em.emit("J", 3, "ok")
	waitFor(t, 30*time.Second, "K's and J's failing events in the dead-letter queue", func() bool {
		return count(t, pool, "SELECT count(*) FROM consumer_parked WHERE state = 'dead'") == 2 &&
			count(t, pool, "SELECT count(*) FROM effects WHERE key LIKE 'k%'") == 15
	})
	if k, j := effectsOf(t, pool, "K"), effectsOf(t, pool, "J"); fmt.Sprint(k, j) != "[1] [1]" {
		t.Errorf("applied K %v and J %v, want only their first events while the second are dead", k, j)
	}
	states := checkInvariants(t, pool, em.events())
	if states["dead"] != 2 || states["waiting"] != 3 {
		t.Errorf("states %v, want 2 dead and 3 waiting behind them", states)
	}
	if d, w, k := gauge(t, reg, "tally_consumer_parked_records", "dead"), gauge(t, reg, "tally_consumer_parked_records", "waiting"),
		gauge(t, reg, "tally_consumer_parked_keys", ""); d != 2 || w != 3 || k != 2 {
		t.Errorf("metrics say %v dead, %v waiting, %v keys parked; want 2, 3, 2", d, w, k)
	}
	if at := gauge(t, reg, "tally_consumer_oldest_parked_timestamp_seconds", ""); time.Since(time.Unix(int64(at), 0)) > time.Minute {
		t.Errorf("the oldest parked record's timestamp is %v", at)
	}

	// The dead-letter topic has both, with their history.
	dlq := topicRecords(t, seeds, 2, topics.DeadLetterTopic("test"))
	byID := map[string]*kgo.Record{}
	for _, rec := range dlq {
		byID[header(rec, envelope.HeaderID)] = rec
	}
	for _, c := range []struct {
		e               envelope.Event
		attempts, class string
	}{{broken, "3", "transient"}, {poison, "1", "permanent"}} {
		rec := byID[c.e.ID.String()]
		if rec == nil {
			t.Fatalf("%s v2 is not in the dead-letter topic", c.e.Subject)
		}
		if a, cl := header(rec, consumer.HeaderAttempts), header(rec, consumer.HeaderErrorClass); a != c.attempts || cl != c.class {
			t.Errorf("%s v2 in the DLQ after %s attempts, class %s; want %s, %s", c.e.Subject, a, cl, c.attempts, c.class)
		}
		if header(rec, consumer.HeaderOriginalTopic) != topic || header(rec, consumer.HeaderNotBefore) != "" ||
			string(rec.Value) != string(c.e.Data) || string(rec.Key) != c.e.Subject {
			t.Errorf("%s v2's dead letter is not the original record with its history", c.e.Subject)
		}
	}

	ctx := context.Background()
	listed, err := consumer.List(ctx, pool, consumer.Filter{Group: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 2 || listed[0].Waiting+listed[1].Waiting != 3 {
		t.Fatalf("listed %+v, want the 2 dead records with 3 waiting behind them", listed)
	}
	if got, err := consumer.List(ctx, pool, consumer.Filter{Key: "J", Type: "tally.customer.updated.v1"}); err != nil || len(got) != 1 || got[0].Error == "" {
		t.Errorf("listing by key and type: %+v, %v", got, err)
	}

	// Fixed, K's record is replayed: it and the two behind it apply, in order.
	if _, err := pool.Exec(ctx, `INSERT INTO fixed VALUES ('K')`); err != nil {
		t.Fatal(err)
	}
	if n, err := consumer.Replay(ctx, pool, consumer.Filter{Key: "K"}, nil, consumer.Action{Actor: "test", Reason: "fixed"}); err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	waitFor(t, 20*time.Second, "K's replayed events", func() bool { return len(effectsOf(t, pool, "K")) == 4 })
	if got := effectsOf(t, pool, "K"); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("K applied %v, want [1 2 3 4]", got)
	}

	// J's poison is skipped: the record behind it applies, the poison never.
	if n, err := consumer.Skip(ctx, pool, consumer.Filter{IDs: []int64{idOf(listed, "J")}}, consumer.Action{Actor: "test", Reason: "bad data"}); err != nil || n != 1 {
		t.Fatalf("skip: %d, %v", n, err)
	}
	waitFor(t, 20*time.Second, "J's event behind the skipped one", func() bool { return len(effectsOf(t, pool, "J")) == 2 })
	if got := effectsOf(t, pool, "J"); fmt.Sprint(got) != "[1 3]" {
		t.Errorf("J applied %v, want [1 3]", got)
	}
	states = checkInvariants(t, pool, em.events())
	if states["skipped"] != 1 || states["applied"] != len(em.events())-1 {
		t.Errorf("states %v, want everything applied but J's skipped event", states)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_parked_keys"); n != 0 {
		t.Errorf("%d keys still parked", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM dlq_audit WHERE actor = 'test'"); n != 2 {
		t.Errorf("%d audited actions, want 2", n)
	}

	// A duplicate of the skipped event later is passed over.
	produce(t, em.cl, poison.Record(topic))
	em.emit("J", 4, "ok")
	waitFor(t, 20*time.Second, "J's next event", func() bool { return len(effectsOf(t, pool, "J")) == 3 })
	checkInvariants(t, pool, em.events())

	// Purge removes the skipped record, keeping the audit.
	if n, err := consumer.Purge(ctx, pool, consumer.Filter{All: true}, consumer.Action{Actor: "test"}); err != nil || n != 1 {
		t.Errorf("purge: %d, %v", n, err)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_parked"); n != 0 {
		t.Errorf("%d parked records after the purge", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM dlq_audit WHERE action = 'purge'"); n != 1 {
		t.Errorf("%d purges audited, want 1", n)
	}
}

func idOf(ps []consumer.Parked, key string) int64 {
	for _, p := range ps {
		if p.Key == key {
			return p.ID
		}
	}
	return 0
}
