package relay_test

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/relay"
)

// TestMain doubles as a relay process for the kill -9 test: with
// TALLY_RELAY_CHILD_DB set, the test binary runs a relay until killed.
func TestMain(m *testing.M) {
	if db := os.Getenv("TALLY_RELAY_CHILD_DB"); db != "" {
		runChild(db, strings.Split(os.Getenv("TALLY_RELAY_CHILD_SEEDS"), ","))
		return
	}
	os.Exit(m.Run())
}

func runChild(db string, seeds []string) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	pool, err := postgres.Open(ctx, db)
	if err != nil {
		os.Exit(2)
	}
	r, err := relay.New(pool, relay.WithKafkaOptions(kgo.SeedBrokers(seeds...)), relay.WithBatchSize(5))
	if err != nil {
		os.Exit(2)
	}
	os.Stdout.WriteString("relay started\n")
	r.Run(ctx)
}

// slowProduce makes the broker take d over every produce request, so a test
// can interfere while a backlog drains.
func slowProduce(c *kfake.Cluster, d time.Duration) {
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		time.Sleep(d)
		return nil, nil, false
	})
}

// waitPublished waits until at least n events of topic are on the broker.
func waitPublished(t *testing.T, c *kfake.Cluster, n int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var total int64
		for _, p := range c.PartitionInfos(topic) {
			total += p.HighWatermark
		}
		if total >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d events published within %s", n, within)
}

func TestRelayKilledMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	c, seeds := testenv.Kafka(t)
	ks := keys("k", 40)
	for _, k := range ks {
		writeVersions(t, pool, k, 1, 25)
	}
	total := int64(len(ks) * 25)
	// With 5 events per shard per read and 10 in flight, each produce
	// request carries a few hundred events; slowed down, the drain takes
	// long enough to be interrupted.
	slowProduce(c, 30*time.Millisecond)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TALLY_RELAY_CHILD_DB="+url, "TALLY_RELAY_CHILD_SEEDS="+strings.Join(seeds, ","))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitPublished(t, c, total/3, 30*time.Second)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	var pub int64
	for _, p := range c.PartitionInfos(topic) {
		pub += p.HighWatermark
	}
	if pub >= total {
		t.Fatalf("the relay published all %d events before it was killed; the test proves nothing", total)
	}

	startRelay(t, context.Background(), pool, seeds)
	got := consume(t, seeds, topic, int(total), 60*time.Second)
	dups := checkOrder(t, got, ks, 25, false)
	t.Logf("killed after %d of %d events; %d duplicates after restart", pub, total, dups)
}

func TestRelayRecoversFromKilledConnections(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	c, seeds := testenv.Kafka(t)
	ks := keys("k", 40)
	for _, k := range ks {
		writeVersions(t, pool, k, 1, 25)
	}
	total := int64(len(ks) * 25)
	slowProduce(c, 3*time.Millisecond)
	startRelay(t, context.Background(), pool, seeds, relay.WithBatchSize(50))
	waitPublished(t, c, total/3, 30*time.Second)

	// Every session of the relay goes: its lock, its listener, its reads.
	var killed int
	err := pool.QueryRow(context.Background(), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed)
	if err != nil {
		t.Fatal(err)
	}
	if killed < 2 {
		t.Fatalf("terminated %d sessions, want the relay's lock and listen sessions at least", killed)
	}
	got := consume(t, seeds, topic, int(total), 60*time.Second)
	dups := checkOrder(t, got, ks, 25, false)
	t.Logf("terminated %d sessions mid-drain; %d duplicates", killed, dups)
}

func TestRelayPublishesLongTransactionThatCommitsLast(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	ctx := context.Background()
	startRelay(t, ctx, pool, seeds)

	// Two keys of the same shard: the long transaction writes first and
	// holds the shard, so the later writer must wait for it and publishing
	// keeps commit order; and a key of another shard, which must not wait.
	long, same, other := "long", "", ""
	for i := 0; same == "" || other == ""; i++ {
		k := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		switch {
		case same == "" && outbox.ShardOf(k) == outbox.ShardOf(long):
			same = k
		case other == "" && outbox.ShardOf(k) != outbox.ShardOf(long):
			other = k
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Write(ctx, tx, customerEvent(long, 1)); err != nil {
		t.Fatal(err)
	}
	sameDone := make(chan struct{})
	go func() { defer close(sameDone); writeVersions(t, pool, same, 1, 1) }()
	writeVersions(t, pool, other, 1, 1)
	first := consume(t, seeds, topic, 1, 10*time.Second)
	if len(first[other]) != 1 || len(first[long]) != 0 || len(first[same]) != 0 {
		t.Fatalf("before the long transaction commits, want only %s published, got %v", other, first)
	}
	select {
	case <-sameDone:
		t.Fatal("a writer of the same shard committed while the long transaction held it")
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	<-sameDone
	got := consume(t, seeds, topic, 3, 10*time.Second)
	for _, k := range []string{long, same, other} {
		if len(got[k]) != 1 {
			t.Errorf("%s: %d events on Kafka, want 1", k, len(got[k]))
		}
	}
}

func TestRelaysShareShardsAndTakeOverFromADeadOne(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	ctx := context.Background()
	stops := []func(){
		startRelay(t, ctx, pool, seeds),
		startRelay(t, ctx, pool, seeds),
		startRelay(t, ctx, pool, seeds),
	}
	holders := func() map[int]int {
		rows, err := pool.Query(ctx, `SELECT pid, count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND objsubid = 2 AND classid = $1::bigint::oid
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY pid`, 0x54_41_4c_01)
		if err != nil {
			t.Fatal(err)
		}
		m, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct{ pid, n int }, error) {
			var v struct{ pid, n int }
			return v, r.Scan(&v.pid, &v.n)
		})
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]int{}
		for _, v := range m {
			out[v.pid] = v.n
		}
		return out
	}
	waitFor(t, 15*time.Second, "three relays owning 22, 22 and 20 shards", func() bool {
		h := holders()
		total := 0
		for _, n := range h {
			total += n
			if n > 22 {
				return false
			}
		}
		return len(h) == 3 && total == outbox.Shards
	})
	stops[0]()
	waitFor(t, 15*time.Second, "two relays owning 32 shards each", func() bool {
		h := holders()
		return len(h) == 2 && h[firstKey(h)] == 32
	})
	ks := keys("k", 30)
	var wg sync.WaitGroup
	for _, k := range ks {
		wg.Go(func() { writeVersions(t, pool, k, 1, 4) })
	}
	wg.Wait()
	got := consume(t, seeds, topic, 120, 30*time.Second)
	if dups := checkOrder(t, got, ks, 4, false); dups != 0 {
		t.Errorf("%d duplicates after a graceful stop", dups)
	}
}

func firstKey(m map[int]int) int {
	for k := range m {
		return k
	}
	return 0
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRelayRetriesFailedProducesInOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		err      *kerr.Error
		lastOnly bool
	}{
		{"retriable", kerr.NotLeaderForPartition, false},
		{"not retriable", kerr.TopicAuthorizationFailed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, _ := testenv.Pool(t)
			c, seeds := testenv.Kafka(t)
			ks := keys("k", 10)
			for _, k := range ks {
				writeVersions(t, pool, k, 1, 10)
			}
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: tc.err, Count: 3})
			startRelay(t, context.Background(), pool, seeds)
			got := consume(t, seeds, topic, 100, 30*time.Second)
			if h.Hits() != 3 {
				t.Errorf("the fault hit %d produce requests, want 3", h.Hits())
			}
			checkOrder(t, got, ks, 10, tc.lastOnly)
		})
	}
}

// A relay asked to stop while Kafka answers nothing still stops, within its
// drain timeout, and what it could not deliver is published later.
func TestRelayStopsWhileKafkaHangs(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	c, seeds := testenv.Kafka(t)
	writeVersions(t, pool, "k", 1, 3)
	release := make(chan struct{})
	var parked atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		parked.Add(1)
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	stop := startRelay(t, context.Background(), pool, seeds, relay.WithDrainTimeout(300*time.Millisecond))
	waitFor(t, 10*time.Second, "a produce request parked at the broker", func() bool { return parked.Load() > 0 })
	began := time.Now()
	stop()
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("stopping took %s with a 300ms drain timeout", took)
	}
	close(release)
	startRelay(t, context.Background(), pool, seeds)
	got := consume(t, seeds, topic, 3, 20*time.Second)
	checkOrder(t, got, []string{"k"}, 3, false)
}
