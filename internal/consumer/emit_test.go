package consumer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/testenv"
)

// emitted is an event a handler emitted, as the outbox holds it.
type emitted struct {
	id                  uuid.UUID
	subject, causation  string
	correlation, source string
	sequence            int64
}

func emittedEvents(t *testing.T, pool *pgxpool.Pool) []emitted {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id, subject, causation_id, correlation_id, source, sequence
		FROM outbox WHERE type = 'tally.invoice.payment_received.v1' ORDER BY shard, seq`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (emitted, error) {
		var e emitted
		return e, r.Scan(&e.id, &e.subject, &e.causation, &e.correlation, &e.source, &e.sequence)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// What a handler emits is written with the record's effects, caused by
// the record's event, under ids derived from it: a duplicate of the event
// emits nothing again, and a handler that fails after emitting emits
// nothing.
func TestEmittedEventsTravelWithTheirCause(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	startMember(t, pool, flakyGroup(t, pool), seeds)
	cause := em.emit("E", 1, "emit")
	em.emit("F", 1, "emit-then-fail")
	produce(t, em.cl, cause.Record(topic)) // a duplicate from the relay
	em.emit("E", 2, "ok")
	waitFor(t, 20*time.Second, "E's second event applied and F dead", func() bool {
		return len(effectsOf(t, pool, "E")) == 2 && count(t, pool, `SELECT count(*) FROM consumer_parked WHERE state = 'dead'`) == 1
	})
	got := emittedEvents(t, pool)
	if len(got) != 2 {
		t.Fatalf("%d events emitted, want E's two: %+v", len(got), got)
	}
	for i, e := range got {
		want := envelope.DerivedID(cause.Time, "test", cause.ID.String(), string(rune('0'+i)))
		if e.id != want || e.subject != "E" || e.causation != cause.ID.String() || e.correlation != cause.CorrelationID ||
			e.source != "/tally/consumer/test" || e.sequence != 10+int64(i) {
			t.Errorf("emitted event %d: %+v, want id %s caused by %s, correlated as it, from the group", i, e, want, cause.ID)
		}
	}
}

// A rebuild publishes what the handlers emit for a record the live group
// had not applied (it was dead, and is fixed now), and nothing again for
// the records the live group applied. A rebuild from a time after a dead
// letter is refused: it could not know of it.
func TestARebuildPublishesOnlyWhatIsNew(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	em := &emitter{t: t, cl: testenv.Client(t, seeds)}
	g := flakyGroup(t, pool).Projections("effects")
	startRelay(t, pool, seeds)
	fast := consumer.WithRetryDelays(50*time.Millisecond, 50*time.Millisecond)
	startMember(t, pool, g, seeds, fast, consumer.WithNotifier(notifier(t, pool)))
	ctx := context.Background()
	em.emit("E", 1, "emit")
	em.emit("B", 1, "ok")
	em.emit("B", 2, "broken")
	em.emit("B", 3, "ok")
	waitFor(t, 20*time.Second, "B's broken record dead and E's emitted", func() bool {
		return count(t, pool, `SELECT count(*) FROM consumer_parked WHERE state = 'dead'`) == 1 && len(emittedEvents(t, pool)) == 2
	})
	time.Sleep(10 * time.Millisecond) // the start of the rebuild is after the dead letter
	_, err := consumer.Rebuild(ctx, pool, g, consumer.RebuildConfig{From: time.Now()},
		consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...), kgo.FetchMaxWait(200*time.Millisecond)))
	if !errors.Is(err, consumer.ErrParkedBeforeStart) {
		t.Fatalf("a rebuild starting after a dead letter: %v, want ErrParkedBeforeStart", err)
	}

	if _, err := pool.Exec(ctx, `INSERT INTO fixed VALUES ('B')`); err != nil {
		t.Fatal(err)
	}
	rep, err := consumer.Rebuild(ctx, pool, g, consumer.RebuildConfig{},
		consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...), kgo.FetchMaxWait(200*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Emitted != 1 || rep.Parked != 0 {
		t.Errorf("the rebuild published %d events and parked %d records, want B's fixed one published and none parked", rep.Emitted, rep.Parked)
	}
	got := emittedEvents(t, pool)
	if len(got) != 3 || got[0].subject+got[1].subject+got[2].subject != "EEB" {
		t.Errorf("emitted after the rebuild: %+v, want E's two, then B's fixed one", got)
	}
	if v := effectsOf(t, pool, "B"); len(v) != 3 {
		t.Errorf("B's effects after the rebuild: %v, want v1, v2, v3", v)
	}
	states := checkInvariants(t, pool, em.events())
	if states["applied"] != 4 {
		t.Errorf("states %v, want all four applied", states)
	}
}
