package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/testenv"
)

// effectSet returns the effects as "key vN id" lines, sorted, and checks
// that each key's were applied in order.
func effectSet(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id::text, key, sequence FROM effects ORDER BY n`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	last := map[string]int64{}
	for rows.Next() {
		var id, key string
		var seq int64
		if err := rows.Scan(&id, &key, &seq); err != nil {
			t.Fatal(err)
		}
		if seq <= last[key] {
			t.Errorf("%s: v%d applied after v%d", key, seq, last[key])
		}
		last[key] = seq
		out = append(out, fmt.Sprintf("%s v%d %s", key, seq, id))
	}
	slices.Sort(out)
	return out
}

// parkedSet returns the parked records as "state key offset" lines, sorted.
func parkedSet(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT state, key, "offset" FROM consumer_parked`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var state string
		var key []byte
		var off int64
		if err := rows.Scan(&state, &key, &off); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s %d", state, key, off))
	}
	slices.Sort(out)
	return out
}

// The live group applies events, some of which fail and are handled by
// operators (one replayed with a corrected payload, one skipped, one left
// dead with records waiting behind it); then its projection is damaged,
// and a rebuild from the start of the topic, while events keep flowing,
// gives back exactly what the live group held, and the live group goes on.
func TestARebuildFromTheStartEqualsTheLiveState(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	g := flakyGroup(t, pool).Projections("effects")
	startRelay(t, pool, seeds)
	fast := consumer.WithRetryDelays(100*time.Millisecond, 100*time.Millisecond)
	startMember(t, pool, g, seeds, fast, consumer.WithBatchSize(20), consumer.WithNotifier(notifier(t, pool)))

	ctx := context.Background()
	for v := int64(1); v <= 4; v++ {
		for i, k := range keys(20) {
			name := "ok"
			if v == 2 && i%4 == 0 {
				name = "fail1"
			}
			em.emit(k, v, name)
		}
		switch v {
		case 2:
			em.emit("K", 1, "ok")
			em.emit("K", 2, "broken")
			em.emit("J", 1, "ok")
			em.emit("J", 2, "poison")
			em.emit("L", 1, "ok")
			em.emit("L", 2, "poison")
		case 3:
			em.emit("K", 3, "ok")
			em.emit("J", 3, "ok")
			em.emit("L", 3, "ok")
		}
	}
	waitFor(t, 30*time.Second, "three dead letters", func() bool {
		return count(t, pool, "SELECT count(*) FROM consumer_parked WHERE state = 'dead'") == 3 &&
			count(t, pool, "SELECT count(*) FROM effects WHERE key LIKE 'k%'") == 80
	})
	dead, err := consumer.List(ctx, pool, consumer.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	corrected := event("K", 2, "corrected").Data
	act := consumer.Action{Actor: "test"}
	if n, err := consumer.Replay(ctx, pool, consumer.Filter{IDs: []int64{idOf(dead, "K")}}, corrected, act); err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if n, err := consumer.Skip(ctx, pool, consumer.Filter{Key: "J"}, act); err != nil || n != 1 {
		t.Fatalf("skip: %d, %v", n, err)
	}
	waitFor(t, 20*time.Second, "K and J applied past their dead letters", func() bool {
		return len(effectsOf(t, pool, "K")) == 3 && len(effectsOf(t, pool, "J")) == 2
	})
	live, liveParked := effectSet(t, pool), parkedSet(t, pool)
	if states := checkInvariants(t, pool, em.events()); states["dead"] != 1 || states["waiting"] != 1 || states["skipped"] != 1 {
		t.Fatalf("states %v before the rebuild, want L's dead letter with one waiting, and J's skipped one", states)
	}

	// A bug damages the projection.
	if _, err := pool.Exec(ctx, `DELETE FROM effects WHERE key IN ('k001', 'K');
		INSERT INTO effects (event_id, key, sequence) VALUES (gen_random_uuid(), 'k002', 1000000)`); err != nil {
		t.Fatal(err)
	}

	// Events keep flowing while the group is rebuilt.
	var flowing sync.WaitGroup
	stop := make(chan struct{})
	flowing.Add(1)
	go func() {
		defer flowing.Done()
		for v := int64(5); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			for _, k := range keys(20) {
				em.emit(k, v, "ok")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var bar bytes.Buffer
	rep, err := consumer.Rebuild(ctx, pool, g, consumer.RebuildConfig{Progress: &bar},
		consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...), kgo.FetchMaxWait(200*time.Millisecond)), consumer.WithBatchSize(50))
	close(stop)
	flowing.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuilt: %+v\n%s", rep, bar.String())
	if !strings.Contains(bar.String(), "100%") {
		t.Errorf("the progress bar never reached 100%%: %q", bar.String())
	}

	// The live group goes on from the swapped-in state: every event but
	// L's dead letter and those behind it applied once, in order.
	all := em.events()
	waitFor(t, 30*time.Second, "the events of the rebuild's time applied", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") == len(all)-3
	})
	got := effectSet(t, pool)
	for _, e := range live {
		if !slices.Contains(got, e) {
			t.Errorf("the rebuild lost %s", e)
		}
	}
	if slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "k002 v1000000") }) {
		t.Error("the damage survived the rebuild")
	}
	states := checkInvariants(t, pool, all)
	if states["dead"] != 1 || states["waiting"] != 1 || states["skipped"] != 1 || states["applied"] != len(all)-3 {
		t.Errorf("states %v, want L's dead letter with one waiting, J's skipped one, and the rest applied", states)
	}
	if got := parkedSet(t, pool); !slices.Equal(got, liveParked) {
		t.Errorf("parked after the rebuild %v, before %v", got, liveParked)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_offsets WHERE paused_until IS NOT NULL") +
		count(t, pool, "SELECT count(*) FROM consumer_rebuilds") +
		count(t, pool, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tally_rebuild_%'"); n != 0 {
		t.Errorf("the rebuild left %d pauses, leases or schemas behind", n)
	}

	// Operators act on the rebuilt dead letter as on the live one.
	if n, err := consumer.Skip(ctx, pool, consumer.Filter{Key: "L"}, act); err != nil || n != 1 {
		t.Fatalf("skip after the rebuild: %d, %v", n, err)
	}
	waitFor(t, 20*time.Second, "L's event behind its skipped one", func() bool { return len(effectsOf(t, pool, "L")) == 2 })
}

// One rebuild of a group at a time, and no operator action meanwhile.
func TestARebuildHoldsALease(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	g := flakyGroup(t, pool).Projections("effects")
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO consumer_rebuilds (group_id, owner) VALUES ('test', 'someone else');
		INSERT INTO consumer_parked (group_id, topic, partition, "offset", record_time, key, ordered, headers, state)
		VALUES ('test', 'tally.customers.v1', 0, 0, now(), 'K', false, '[]', 'dead')`); err != nil {
		t.Fatal(err)
	}
	_, err := consumer.Rebuild(ctx, pool, g, consumer.RebuildConfig{}, consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if !errors.Is(err, consumer.ErrRebuilding) || !strings.Contains(err.Error(), "someone else") {
		t.Errorf("a second rebuild: %v, want ErrRebuilding naming the first", err)
	}
	if _, err := consumer.Skip(ctx, pool, consumer.Filter{All: true}, consumer.Action{Actor: "test"}); !errors.Is(err, consumer.ErrRebuilding) {
		t.Errorf("a skip during a rebuild: %v, want ErrRebuilding", err)
	}
	// A lease that lapsed (its rebuild died) is taken over.
	if _, err := pool.Exec(ctx, `UPDATE consumer_rebuilds SET heartbeat_at = now() - interval '1 minute'`); err != nil {
		t.Fatal(err)
	}
	if _, err := consumer.Rebuild(ctx, pool, g, consumer.RebuildConfig{}, consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...))); err != nil {
		t.Errorf("a rebuild after a lapsed lease: %v", err)
	}
	if n, err := consumer.Skip(ctx, pool, consumer.Filter{All: true}, consumer.Action{Actor: "test"}); err != nil || n != 0 {
		// The rebuild replaced the group's parked records with its own:
		// none, as the topic is empty.
		t.Errorf("a skip after the rebuild: %d, %v", n, err)
	}
}
