package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
)

// The audit trail outlives publication: the relay deletes an event only
// once it is published and past the retention.
func TestPruneKeepsTheTrailForTheRetention(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	write := func(key string, at time.Time) {
		ev := envelope.Event{ID: envelope.NewID(), Type: "tally.customer.created.v1", Source: "/t", Subject: key,
			Time: at, Sequence: 1, CorrelationID: "c",
			Data: fmt.Appendf(nil, `{"id":%q,"name":"n","email":"a@b.c","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z"}`, key)}
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.Write(ctx, tx, ev) }); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-72 * time.Hour)
	write("old-published", old)
	write("new-published", time.Now())
	write("old-unpublished", old)
	for _, k := range []string{"old-published", "new-published"} {
		s := outbox.ShardOf(k)
		if err := outbox.SaveCursors(ctx, pool, []int16{s}, []int64{1}); err != nil {
			t.Fatal(err)
		}
	}
	if outbox.ShardOf("old-unpublished") == outbox.ShardOf("old-published") || outbox.ShardOf("old-unpublished") == outbox.ShardOf("new-published") {
		t.Fatal("test keys share a shard; pick others")
	}
	r, err := New(pool, WithRetention(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer r.client.Close()
	// The relay prunes the shards it owns: all of them, as if alone.
	for i := range int16(outbox.Shards) {
		r.shards[i] = &shard{id: i}
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.prune(pctx, 10*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows, _ := pool.Query(ctx, "SELECT key FROM outbox ORDER BY key")
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(keys) == "[new-published old-unpublished]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox holds %v; want only the new and the unpublished events kept", keys)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
}
