package consumer_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/topics"
)

// flakyEvents emits versions 1 to 5 of n keys, in rounds, where some fail
// on purpose: v2 of every third key once, v3 of every fifth key twice and,
// if poison is not empty, v2 of that key for ever.
func flakyEvents(em *emitter, n int, poison string) {
	for v := int64(1); v <= 5; v++ {
		for i, k := range keys(n) {
			name := "ok"
			switch {
			case k == poison && v == 2:
				name = "poison"
			case v == 2 && i%3 == 0:
				name = "fail1"
			case v == 3 && i%5 == 0:
				name = "fail2"
			}
			em.emit(k, v, name)
		}
	}
}

// A member killed (kill -9) right after each step of retrying a record
// commits: after parking it, after a retry attempt failed again, after a
// retried record and those behind it were applied; the relay stopped and
// restarted meanwhile; and every retry record and some events delivered
// twice. Nothing is lost, nothing applied twice, and each key's order holds.
func TestACrashBetweenAnyTwoStepsOfARetryLosesAndRepeatsNothing(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	seeds := cluster(t)
	cl := testenv.Client(t, seeds)
	em := &emitter{t: t, cl: cl}
	if err := createFlaky(pool); err != nil {
		t.Fatal(err)
	}
	dumpOnFailure(t, pool)
	stopRelay := startRelay(t, pool, seeds)
	flakyEvents(em, 30, "k007")

	state := func() (parked, laterVersions, effects int) {
		return count(t, pool, "SELECT count(*) FROM consumer_parked"),
			count(t, pool, "SELECT count(*) FROM consumer_parked WHERE version >= 2"),
			count(t, pool, "SELECT count(*) FROM effects")
	}
	steps := []struct {
		name string
		done func(p0, v0, e0 int) bool
	}{
		{"a record parked and forwarded", func(p0, _, _ int) bool { p, _, _ := state(); return p > p0 }},
		{"a retry failed again", func(_, v0, _ int) bool { _, v, _ := state(); return v > v0 }},
		{"a retried record applied", func(_, _, e0 int) bool { _, _, e := state(); return e > e0 }},
	}
	for round := range 6 {
		step := steps[round%len(steps)]
		p0, v0, e0 := state()
		child := startChild(t, url, seeds, true)
		deadline := time.Now().Add(20 * time.Second)
		for !step.done(p0, v0, e0) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		child.Process.Signal(syscall.SIGKILL)
		child.Wait()
		t.Logf("round %d: killed after %s", round, step.name)
		if round%2 == 1 {
			stopRelay()
			stopRelay = startRelay(t, pool, seeds)
		}
	}

	// A relay's duplicates: every retry record so far, and some events,
	// published again.
	retries := topicRecords(t, seeds, 1, topics.RetryTopic("test", 1), topics.RetryTopic("test", 2))
	var again []*kgo.Record
	for _, r := range retries {
		again = append(again, &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value, Headers: r.Headers})
	}
	for _, e := range em.events()[:40] {
		again = append(again, e.Record(topic))
	}
	produce(t, cl, again...)

	startMember(t, pool, newFlakyGroup(pool), seeds, consumer.WithRetryDelays(300*time.Millisecond, 300*time.Millisecond))
	waitFor(t, 60*time.Second, "every event applied or parked behind k007's poison", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") == len(em.events())-4
	})
	states := checkInvariants(t, pool, em.events())
	if states["dead"] != 1 || states["waiting"] != 3 || states["applied"] != len(em.events())-4 {
		t.Errorf("states %v, want all applied but k007's poison (dead) and the 3 events behind it", states)
	}
	t.Logf("%d retry records published twice", len(retries))
}

// PostgreSQL unreachable for a minute while records flow: the partitions
// block and retry in place. Nothing is parked, retried or dead-lettered,
// and everything is applied once the database is back.
func TestPostgresDownForAMinuteSendsNothingToTheDeadLetterQueue(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	purl, proxy := testenv.ProxiedURL(t, url)
	proxied, err := postgres.Open(context.Background(), purl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxied.Close)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	g := flakyGroup(t, pool)
	reg := prometheus.NewRegistry()
	startMember(t, proxied, g, seeds, consumer.WithRegisterer(reg), consumer.WithBatchSize(20),
		consumer.WithRetryDelays(200*time.Millisecond))

	ks := keys(20)
	v := int64(0)
	wave := func() {
		v++
		for i, k := range ks {
			name := "ok"
			if i%2 == 0 {
				name = "slow" // reads the database in the handler
			}
			em.emit(k, v, name)
		}
	}
	wave()
	waitFor(t, 30*time.Second, "the first wave", func() bool { return count(t, pool, "SELECT count(*) FROM effects") == len(ks) })

	proxy.Down()
	for end := time.Now().Add(time.Minute); time.Now().Before(end); {
		wave()
		time.Sleep(2 * time.Second)
	}
	proxy.Up()
	waitFor(t, 60*time.Second, "every event applied after the outage", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") == len(em.events())
	})
	states := checkInvariants(t, pool, em.events())
	if states["applied"] != len(em.events()) {
		t.Errorf("states %v, want every event applied", states)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_parked") +
		count(t, pool, "SELECT count(*) FROM outbox WHERE headers IS NOT NULL"); n != 0 {
		t.Errorf("%d records parked or forwarded because the database was down", n)
	}
	if r := sum(t, reg, "tally_consumer_batch_retries_total", ""); r == 0 {
		t.Error("no batch was retried in place: the outage was not felt")
	}
	t.Logf("%d events over %d waves, %v batches retried in place", len(em.events()), v,
		sum(t, reg, "tally_consumer_batch_retries_total", ""))
}

// Members leaving (one killed, one stopped) and joining while keys are
// parked and retry partitions paused waiting for their records to be due:
// nothing stays stuck, nothing is lost or applied twice, order holds.
func TestARebalanceWithParkedKeysAndPausedPartitionsLosesNothing(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	if err := createFlaky(pool); err != nil {
		t.Fatal(err)
	}
	dumpOnFailure(t, pool)
	startRelay(t, pool, seeds)
	delays := consumer.WithRetryDelays(time.Second, time.Second)
	child := startChild(t, url, seeds, true) // retries after 300ms
	a := startMember(t, pool, newFlakyGroup(pool), seeds, delays, consumer.WithBatchSize(10))
	flakyEvents(em, 40, "")
	// The child is killed once it holds partitions: killed in the midst of
	// joining, kfake (unlike Kafka) never times its membership out, and
	// the group waits for it until another member joins.
	waitFor(t, 30*time.Second, "both members holding partitions, and records parked", func() bool {
		return count(t, pool, "SELECT count(DISTINCT owner) FROM consumer_offsets") == 2 &&
			count(t, pool, "SELECT count(*) FROM consumer_parked WHERE state = 'retrying'") > 0
	})
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	startMember(t, pool, newFlakyGroup(pool), seeds, delays, consumer.WithBatchSize(10))
	waitFor(t, 30*time.Second, "records parked again", func() bool {
		return count(t, pool, "SELECT count(*) FROM consumer_parked WHERE state = 'retrying'") > 0
	})
	a.stop()
	for i, k := range keys(40) {
		name := "ok"
		if i%4 == 0 {
			name = "fail1"
		}
		em.emit(k, 6, name)
	}
	waitFor(t, 60*time.Second, "every event applied", func() bool {
		return count(t, pool, "SELECT count(*) FROM effects") == len(em.events())
	})
	states := checkInvariants(t, pool, em.events())
	if states["applied"] != len(em.events()) {
		t.Errorf("states %v, want every event applied", states)
	}
	if n := count(t, pool, "SELECT count(*) FROM consumer_parked") + count(t, pool, "SELECT count(*) FROM consumer_parked_keys"); n != 0 {
		t.Errorf("%d parked rows left", n)
	}
}
