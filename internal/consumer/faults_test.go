package consumer_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/topics"
)

// TestMain doubles as a member process for the kill -9 tests: with
// TALLY_CONSUMER_CHILD_DB set, the test binary runs a member until killed.
func TestMain(m *testing.M) {
	if db := os.Getenv("TALLY_CONSUMER_CHILD_DB"); db != "" {
		runChild(db, strings.Split(os.Getenv("TALLY_CONSUMER_CHILD_SEEDS"), ","))
		return
	}
	os.Exit(m.Run())
}

// runChild runs a member of the test group, or of the flaky group (with
// retry delays of 300ms) when TALLY_CONSUMER_CHILD_FLAKY is set.
func runChild(db string, seeds []string) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	pool, err := postgres.Open(ctx, db)
	if err != nil {
		os.Exit(2)
	}
	g, delays := newTestGroup(), topics.RetryDelays
	if os.Getenv("TALLY_CONSUMER_CHILD_FLAKY") != "" {
		g, delays = newFlakyGroup(pool), []time.Duration{300 * time.Millisecond, 300 * time.Millisecond}
	}
	// Kafka commits an hour apart: a kill always lands after PostgreSQL
	// committed and before Kafka did.
	r, err := consumer.New(pool, g, consumer.WithKafkaOptions(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, fastFailover...)...),
		consumer.WithCommitInterval(time.Hour), consumer.WithBatchSize(20), consumer.WithRetryDelays(delays...))
	if err != nil {
		os.Exit(2)
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

// startChild starts a member in another process, of the flaky group if
// flaky; the test's cleanup kills it.
func startChild(t *testing.T, url string, seeds []string, flaky bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), "TALLY_CONSUMER_CHILD_DB="+url, "TALLY_CONSUMER_CHILD_SEEDS="+strings.Join(seeds, ","))
	if flaky {
		cmd.Env = append(cmd.Env, "TALLY_CONSUMER_CHILD_FLAKY=1")
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestKilledAfterPostgresCommitBeforeKafkaCommitAppliesNothingTwice(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	evs := versions(t, cl, keys(50), 1, 20)
	child := startChild(t, url, seeds, false)
	waitFor(t, 30*time.Second, "the child to apply some events", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") >= 200
	})
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	before := count(t, pool, "SELECT count(*) FROM effects")
	if before >= len(evs) {
		t.Fatalf("the child applied all %d events before it was killed; the test proves nothing", len(evs))
	}
	if lag := kafkaCommitted(t, seeds); lag > 0 {
		t.Fatalf("Kafka has %d committed; the kill was to land before any Kafka commit", lag)
	}

	reg := prometheus.NewRegistry()
	startMember(t, pool, g, seeds, consumer.WithRegisterer(reg))
	waitFor(t, 30*time.Second, "every event applied", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") >= len(evs)
	})
	checkExactlyOnce(t, pool, evs)
	if n := records(t, reg, "duplicate"); n != 0 {
		t.Errorf("the restarted member met %v duplicates: it did not resume from the position in PostgreSQL", n)
	}
	t.Logf("killed after %d of %d events", before, len(evs))
}

// kafkaCommitted sums the test group's offsets committed in Kafka.
func kafkaCommitted(t *testing.T, seeds []string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(testenv.Client(t, seeds)).FetchOffsets(ctx, "tally.test")
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Err == nil && o.At > 0 {
			sum += o.At
		}
	})
	return sum
}

// records sums tally_consumer_records_total of an outcome in reg.
func records(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	return sum(t, reg, "tally_consumer_records_total", outcome)
}

// sum adds up the series of a counter in reg, those with that outcome
// label when outcome is not empty.
func sum(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := outcome == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == "outcome" && l.GetValue() == outcome)
			}
			if match {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func TestTheSameEventTwiceIsAppliedOnce(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	evs := versions(t, cl, keys(10), 1, 3)
	// A relay republishing after a crash: every event again, the same
	// ce_id at a later offset, adjacent and far apart.
	var again []*kgo.Record
	for _, e := range evs {
		again = append(again, e.Record(topic), e.Record(topic))
	}
	produce(t, cl, again...)
	reg := prometheus.NewRegistry()
	startMember(t, pool, g, seeds, consumer.WithRegisterer(reg), consumer.WithBatchSize(7))
	waitFor(t, 30*time.Second, "every record processed", func() bool {
		return records(t, reg, "applied")+records(t, reg, "duplicate") >= 90
	})
	checkExactlyOnce(t, pool, evs)
	if a, d := records(t, reg, "applied"), records(t, reg, "duplicate"); a != 30 || d != 60 {
		t.Errorf("%v applied and %v duplicates, want 30 and 60", a, d)
	}
}

func TestBadRecordsGoToTheDeadLetterQueueAndThePartitionFlows(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	g := testGroup(t, pool)
	// Everything on one partition, each bad record with a key of its own.
	rec := func(e envelope.Event, f func(*envelope.Event)) *kgo.Record {
		if f != nil {
			f(&e)
		}
		return e.Record(topic)
	}
	recs := []*kgo.Record{
		rec(event("g", 1, "fine"), nil),
		{Topic: topic, Key: []byte("b0"), Value: []byte("\x00\xff not an event")},
		rec(event("b1", 2, "x"), func(e *envelope.Event) { e.Data = []byte(`{"id":"b1"}`) }),
		rec(event("b2", 2, "x"), func(e *envelope.Event) { e.Type = "tally.customer.created.v9" }),
		rec(event("b3", 2, "x"), func(e *envelope.Event) { e.Type = "tally.invoice.voided.v1" }),
		rec(event("b4", 2, "poison"), nil),
		rec(event("b5", 2, "panic"), nil),
		rec(event("b6", 2, "bad data"), nil),
		rec(event("g", 2, "fine"), nil),
		rec(event("b4", 3, "fine"), nil), // behind the poison of its key: waits
		rec(event("g", 3, "fine"), nil),
	}
	for _, r := range recs {
		r.Partition = 0
	}
	produce(t, cl, recs...)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(100))
	waitFor(t, 30*time.Second, "the good events after the bad ones", func() bool {
		return count(t, pool, "SELECT count(*) FROM consumer_offsets WHERE next_offset = 11") == 1
	})
	order, _ := applied(t, pool)
	if got := order["g"]; fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("applied %v of the good key, want [1 2 3]", got)
	}
	want := []string{"missing header", "topics: payload does not match its schema", "unknown event type or version",
		"belongs on tally.invoices.v1", "the name is poison", "panic: a handler bug", "null value in column"}
	rows, err := pool.Query(context.Background(), `SELECT "offset", state, error_class, error FROM consumer_parked
		WHERE state <> 'waiting' ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for rows.Next() {
		var off int64
		var state, class, reason string
		rows.Scan(&off, &state, &class, &reason)
		if state != "dead" || class != "permanent" {
			t.Errorf("the record at %d is %s (%s), want dead (permanent)", off, state, class)
		}
		reasons = append(reasons, reason)
	}
	if len(reasons) != len(want) {
		t.Fatalf("%d records in the dead-letter queue, want %d: %q", len(reasons), len(want), reasons)
	}
	for i, w := range want {
		if !strings.Contains(reasons[i], w) {
			t.Errorf("dead letter %d says %q, want it to mention %q", i, clip(reasons[i]), w)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM consumer_parked WHERE state = 'waiting' AND key = 'b4' AND "offset" = 9`); n != 1 {
		t.Error("b4's record after its poison is not waiting behind it")
	}
	if n := count(t, pool, "SELECT count(*) FROM outbox WHERE topic = 'tally.test.dlq' AND headers IS NOT NULL"); n != len(want) {
		t.Errorf("%d forwards to the dead-letter topic in the outbox, want %d", n, len(want))
	}
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// A member that lost its partition while it held a batch must not commit
// that batch: its epoch is stale, so its effects roll back.
func TestAZombieAppliesNothing(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	if err := createEffects(pool); err != nil {
		t.Fatal(err)
	}
	holding := make(chan struct{})
	release := make(chan struct{})
	var held atomic.Bool
	g := consumer.NewGroup("test", topic)
	consumer.Handle(g, "tally.customer.created.v1", func(ctx context.Context, tx consumer.Tx, e consumer.Event[customer]) error {
		tx.Queue(`INSERT INTO effects (event_id, key, sequence) VALUES ($1, $2, $3)`, e.ID, e.Subject, e.Sequence)
		if held.CompareAndSwap(false, true) {
			close(holding)
			<-release // the member stalls here, as in a long GC pause
		}
		return nil
	})
	reg := prometheus.NewRegistry()
	startMember(t, pool, g, seeds, consumer.WithRegisterer(reg), consumer.WithBatchSize(1000))
	e := event("z", 1, "zombie")
	produce(t, cl, e.Record(topic))
	<-holding
	// Meanwhile another member is given the partition: it takes a new epoch.
	if _, err := pool.Exec(context.Background(), `UPDATE consumer_offsets SET epoch = epoch + 1, owner = 'other'
		WHERE group_id = 'test'`); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, 10*time.Second, "the zombie's batch to be refused", func() bool {
		return sum(t, reg, "tally_consumer_fenced_total", "") == 1
	})
	if n := count(t, pool, "SELECT count(*) FROM effects"); n != 0 {
		t.Errorf("the zombie applied %d effects", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_applied"); n != 0 {
		t.Errorf("the zombie marked %d events applied", n)
	}
}

// PostgreSQL dropping every session mid-stream (as a restart does): the
// member retries in place, skips nothing and repeats nothing.
func TestPostgresGoingAwayMidStreamSkipsNothing(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(20))
	var evs []envelope.Event
	ks := keys(20)
	for v := int64(1); v <= 15; v++ {
		evs = append(evs, versions(t, cl, ks, v, v)...)
		if v%5 == 0 {
			var n int
			if err := pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(30 * time.Millisecond)
	}
	// The test's own queries share the pool whose sessions were killed:
	// one may meet a dead connection, once.
	waitFor(t, 60*time.Second, "every event applied", func() bool {
		var n int
		err := pool.QueryRow(context.Background(), "SELECT count(*) FROM effects").Scan(&n)
		return err == nil && n >= len(evs)
	})
	pool.Reset()
	checkExactlyOnce(t, pool, evs)
}

// Two members, a third joining, one killed (kill -9, another process),
// all while events flow: every event is applied exactly once and in order.
func TestMembersJoiningAndDyingLoseAndRepeatNothing(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	ks := keys(60)

	var mu sync.Mutex
	var evs []envelope.Event
	stop := make(chan struct{})
	flowing := make(chan struct{})
	go func() {
		defer close(flowing)
		for v := int64(1); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			batch := versions(t, cl, ks, v, v)
			mu.Lock()
			evs = append(evs, batch...)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	child := startChild(t, url, seeds, false)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(25))
	time.Sleep(1500 * time.Millisecond)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(25))
	time.Sleep(1500 * time.Millisecond)
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	time.Sleep(time.Second)
	close(stop)
	<-flowing

	mu.Lock()
	all := append([]envelope.Event(nil), evs...)
	mu.Unlock()
	// A killed member's partitions go to the others once its session
	// times out (six seconds, kfake's minimum).
	waitFor(t, 60*time.Second, "every event applied", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") >= len(all)
	})
	checkExactlyOnce(t, pool, all)
	if owners := count(t, pool, "SELECT count(DISTINCT owner) FROM consumer_offsets"); owners < 2 {
		t.Errorf("%d members held partitions; the test meant to share them", owners)
	}
	t.Logf("%d events over %d keys", len(all), len(ks))
}

// A member stopped while events flow finishes its batch, commits and leaves
// within its drain timeout; the member that stays takes over, and nothing is
// lost or repeated.
func TestAGracefulStopLosesAndRepeatsNothing(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	g := testGroup(t, pool)
	ks := keys(40)
	a := startMember(t, pool, g, seeds, consumer.WithBatchSize(10), consumer.WithDrainTimeout(2*time.Second))
	startMember(t, pool, g, seeds, consumer.WithBatchSize(10))
	var evs []envelope.Event
	for v := int64(1); v <= 20; v++ {
		evs = append(evs, versions(t, cl, ks, v, v)...)
		if v == 10 {
			began := time.Now()
			a.stop()
			if took := time.Since(began); took > 5*time.Second {
				t.Errorf("a graceful stop took %s with a 2s drain timeout", took)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, "every event applied", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") >= len(evs)
	})
	checkExactlyOnce(t, pool, evs)
}
