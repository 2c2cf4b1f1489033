package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
)

func customerEvent(key string, seq int64, at time.Time) envelope.Event {
	typ := "tally.customer.updated.v1"
	if seq == 1 {
		typ = "tally.customer.created.v1"
	}
	return envelope.Event{
		ID: envelope.NewID(), Type: typ, Source: "/tally/test", Subject: key, Time: at,
		Sequence: seq, CorrelationID: "c",
		Data: fmt.Appendf(nil, `{"id":%q,"name":"n","email":"a@b.c","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z"}`, key),
	}
}

func write(t *testing.T, pool *pgxpool.Pool, evs ...envelope.Event) error {
	t.Helper()
	return pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		return outbox.Write(context.Background(), tx, evs...)
	})
}

func count(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestWriteRejectsInvalidEventsAndWritesNothing(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	now := time.Now()
	good := customerEvent("a", 1, now)
	for name, bad := range map[string]func(e *envelope.Event){
		"unknown type":     func(e *envelope.Event) { e.Type = "tally.customer.created.v9" },
		"payload":          func(e *envelope.Event) { e.Data = []byte(`{"id":"a"}`) },
		"not JSON":         func(e *envelope.Event) { e.Data = []byte(`{`) },
		"no subject":       func(e *envelope.Event) { e.Subject = "" },
		"sequence 0":       func(e *envelope.Event) { e.Sequence = 0 },
		"no correlation":   func(e *envelope.Event) { e.CorrelationID = "" },
		"payload too big":  func(e *envelope.Event) { e.Data = []byte(`"` + strings.Repeat("x", outbox.MaxPayloadBytes) + `"`) },
		"control in trace": func(e *envelope.Event) { e.TraceParent = "a\x00b" },
	} {
		e := customerEvent("b", 1, now)
		bad(&e)
		err := write(t, pool, good, e)
		if !errors.Is(err, outbox.ErrInvalidEvent) {
			t.Errorf("%s: error %v, want ErrInvalidEvent", name, err)
		}
	}
	if n := count(t, pool); n != 0 {
		t.Errorf("%d rows written by rejected writes", n)
	}
}

func TestSeqIsGaplessPerShardAcrossRollbacks(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	now := time.Now()
	if err := write(t, pool, customerEvent("k", 1, now), customerEvent("k", 2, now)); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Write(ctx, tx, customerEvent("k", 3, now)); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	if err := write(t, pool, customerEvent("k", 3, now)); err != nil {
		t.Fatal(err)
	}
	rows, _ := pool.Query(ctx, "SELECT seq, sequence FROM outbox WHERE shard = $1 ORDER BY seq", outbox.ShardOf("k"))
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]int64, error) {
		var v [2]int64
		return v, r.Scan(&v[0], &v[1])
	})
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{1, 1}, {2, 2}, {3, 3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("(seq, sequence) = %v, want %v: a rollback must give its seq back", got, want)
	}
}

// Writers that touch the same shards in opposite orders must not deadlock:
// Write takes shards in ascending order.
func TestMultiShardWritersDoNotDeadlock(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	var a, b string
	for i := 0; a == "" || b == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		switch {
		case a == "":
			a = k
		case outbox.ShardOf(k) != outbox.ShardOf(a):
			b = k
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			x, y := a, b
			if i%2 == 1 {
				x, y = b, a
			}
			errs <- write(t, pool, customerEvent(x, int64(i+1), time.Now()), customerEvent(y, int64(i+1), time.Now()))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent multi-shard write: %v", err)
		}
	}
	if n := count(t, pool); n != 80 {
		t.Errorf("%d rows, want 80", n)
	}
}

func TestFetchBacklogCursorsTrailAndPrune(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	for v := int64(1); v <= 5; v++ {
		at := old
		if v > 3 {
			at = time.Now()
		}
		if err := write(t, pool, customerEvent("k", v, at)); err != nil {
			t.Fatal(err)
		}
	}
	shard := outbox.ShardOf("k")

	pending, oldest, err := outbox.Backlog(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if pending != 5 || !oldest.Equal(old.Truncate(time.Microsecond)) {
		t.Errorf("backlog %d oldest %s, want 5 and %s", pending, oldest, old)
	}

	recs, err := outbox.Fetch(ctx, pool, []outbox.Want{{Shard: shard, After: 1, Limit: 3}})
	var seqs []int64
	for _, r := range recs {
		seqs = append(seqs, r.Seq)
		if r.Topic != "tally.customers.v1" || r.Key != "k" || r.Event.Subject != "k" {
			t.Errorf("record topic %q key %q", r.Topic, r.Key)
		}
	}
	if err != nil || fmt.Sprint(seqs) != "[2 3 4]" {
		t.Errorf("fetch after 1 limit 3: %v %v, want [2 3 4]", seqs, err)
	}

	if err := outbox.SaveCursors(ctx, pool, []int16{shard}, []int64{4}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.SaveCursors(ctx, pool, []int16{shard}, []int64{2}); err != nil {
		t.Fatal(err)
	}
	if pos, _ := outbox.Cursor(ctx, pool, shard); pos != 4 {
		t.Errorf("cursor %d after saving 4 then 2; cursors must not move back", pos)
	}
	pending, _, _ = outbox.Backlog(ctx, pool)
	if pending != 1 {
		t.Errorf("backlog %d with the cursor at 4 of 5", pending)
	}

	evs, err := outbox.Trail(ctx, pool, "tally.customers.v1", "k", 2, 10)
	if err != nil || len(evs) != 3 || evs[0].Sequence != 3 || evs[2].Sequence != 5 {
		t.Errorf("trail after version 2: %d events (%v), want versions 3..5", len(evs), err)
	}

	// Versions 1..3 are old; 4 is new; 5 is unpublished. Only 1..3 go.
	if n, err := outbox.Prune(ctx, pool, []int16{(shard + 1) % outbox.Shards}, time.Now().Add(-24*time.Hour), 2); err != nil || n != 0 {
		t.Errorf("pruning another shard deleted %d (%v)", n, err)
	}
	n, err := outbox.Prune(ctx, pool, []int16{shard}, time.Now().Add(-24*time.Hour), 2)
	if err != nil || n != 3 {
		t.Errorf("pruned %d (%v), want the 3 old published events", n, err)
	}
	evs, _ = outbox.Trail(ctx, pool, "tally.customers.v1", "k", 0, 10)
	if len(evs) != 2 || evs[0].Sequence != 4 {
		t.Errorf("after pruning, trail holds %d events starting at %d", len(evs), evs[0].Sequence)
	}
	n, _ = outbox.Prune(ctx, pool, []int16{shard}, time.Now().Add(time.Hour), 10)
	if n != 1 {
		t.Errorf("pruning everything published deleted %d, want 1 (version 5 is unpublished)", n)
	}
}

func TestNotifierWakesListeners(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "LISTEN "+outbox.Channel); err != nil {
		t.Fatal(err)
	}
	n := outbox.NewNotifier(pool, slog.Default())
	go n.Run(ctx)
	n.Notify()
	if _, err := conn.WaitForNotification(ctx); err != nil {
		t.Errorf("no notification after Notify: %v", err)
	}
}

// Queue checks every event of a bulk write (an import's batch) before it
// writes any, and writes them in order per key, at gapless positions per
// shard.
func TestQueueMany(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	now := time.Now()
	bulk := func(evs ...envelope.Event) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var b pgx.Batch
			if err := outbox.Queue(&b, evs...); err != nil {
				return err
			}
			return tx.SendBatch(ctx, &b).Close()
		})
	}
	badPayload := customerEvent("b", 1, now)
	badPayload.Data = []byte(`{"id":"b"}`)
	badEnvelope := customerEvent("c", 1, now)
	badEnvelope.CorrelationID = ""
	for name, evs := range map[string][]envelope.Event{
		"the first breaks its schema":         {badPayload, customerEvent("a", 1, now)},
		"a later one breaks its schema":       {customerEvent("a", 1, now), customerEvent("d", 1, now), badPayload},
		"a later event has no correlation id": {customerEvent("a", 1, now), badEnvelope},
	} {
		if err := bulk(evs...); !errors.Is(err, outbox.ErrInvalidEvent) {
			t.Errorf("%s: error %v, want ErrInvalidEvent", name, err)
		}
	}
	if n := count(t, pool); n != 0 {
		t.Fatalf("%d rows written by refused bulk writes", n)
	}
	var evs []envelope.Event
	for i := range 300 {
		evs = append(evs, customerEvent(fmt.Sprintf("k%d", i%100), int64(i/100+1), now))
	}
	if err := bulk(evs...); err != nil {
		t.Fatal(err)
	}
	if err := bulk(customerEvent("k0", 4, now)); err != nil {
		t.Fatal(err)
	}
	var gaps, disorder int
	err := pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM (SELECT shard, max(seq) - count(*) AS gap FROM outbox GROUP BY shard) g WHERE gap <> 0),
			(SELECT count(*) FROM (SELECT sequence, lag(sequence) OVER (PARTITION BY key ORDER BY seq) AS prev FROM outbox) o
				WHERE prev IS NOT NULL AND sequence <> prev + 1)`).Scan(&gaps, &disorder)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, pool); n != 301 || gaps != 0 || disorder != 0 {
		t.Errorf("%d rows, %d shards with gaps, %d events out of order; want 301, 0, 0", n, gaps, disorder)
	}
}
