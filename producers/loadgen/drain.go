package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
)

// Drain measures how fast one relay publishes a backlog of n events already
// committed to the outbox, runs times over the same backlog (each run with
// a new broker and the relay's cursors reset), and returns events per second
// of each run. With history > 0, that many events precede the backlog,
// already published, as a long-lived outbox keeps them for its audit trail;
// the rate should not depend on it.
func Drain(ctx context.Context, serverURL string, n, history, runs int, log *slog.Logger) ([]float64, error) {
	db, err := newDatabase(ctx, serverURL, 8)
	if err != nil {
		return nil, err
	}
	defer db.drop()
	if history > 0 {
		if err := fillBacklog(ctx, db, history, "old"); err != nil {
			return nil, fmt.Errorf("filling the history: %w", err)
		}
		if _, err := db.pool.Exec(ctx, "UPDATE relay_cursors c SET position = h.head FROM outbox_heads h WHERE c.shard = h.shard"); err != nil {
			return nil, err
		}
	}
	if err := fillBacklog(ctx, db, n, "new"); err != nil {
		return nil, fmt.Errorf("filling the backlog: %w", err)
	}
	rows, err := db.pool.Query(ctx, "SELECT shard, position FROM relay_cursors")
	if err != nil {
		return nil, err
	}
	start := map[int16]int64{}
	for rows.Next() {
		var s int16
		var p int64
		if err := rows.Scan(&s, &p); err != nil {
			return nil, err
		}
		start[s] = p
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var rates []float64
	for range runs {
		for s, p := range start {
			if _, err := db.pool.Exec(ctx, "UPDATE relay_cursors SET position = $2 WHERE shard = $1", s, p); err != nil {
				return nil, err
			}
		}
		c, err := devkafka.Ephemeral(ctx)
		if err != nil {
			return nil, err
		}
		hook := &ackHook{want: n, done: make(chan struct{})}
		began := time.Now()
		stop, err := startRelay(db.pool, c, hook, log)
		if err != nil {
			c.Close()
			return nil, err
		}
		select {
		case <-hook.done:
		case <-ctx.Done():
		case <-time.After(10 * time.Minute):
			err = fmt.Errorf("the relay did not drain %d events within 10 minutes", n)
		}
		elapsed := time.Since(began)
		stop()
		c.Close()
		if err != nil || ctx.Err() != nil {
			return nil, fmt.Errorf("%w%w", err, ctx.Err())
		}
		rates = append(rates, float64(n)/elapsed.Seconds())
		log.Info("drained the backlog", "events", n, "history", history, "seconds", elapsed.Seconds(), "events_per_second", int(float64(n)/elapsed.Seconds()))
	}
	return rates, nil
}

// fillBacklog copies n invoice events, 5 per invoice, straight into the
// outbox after what it holds, and moves the shard heads past them, as n
// committed writes would. prefix keeps the invoices of two fills apart.
func fillBacklog(ctx context.Context, db *database, n int, prefix string) error {
	heads := make([]int64, outbox.Shards)
	hr, err := db.pool.Query(ctx, "SELECT shard, head FROM outbox_heads")
	if err != nil {
		return err
	}
	for hr.Next() {
		var s int16
		var h int64
		if err := hr.Scan(&s, &h); err != nil {
			return err
		}
		heads[s] = h
	}
	if err := hr.Err(); err != nil {
		return err
	}
	now := time.Now().UTC()
	stamp := now.Format(time.RFC3339Nano)
	i := 0
	// Rows are made as COPY asks for them, so memory stays flat however
	// large the fill.
	next := func() ([]any, error) {
		inv := fmt.Sprintf("inv_%s_%08d", prefix, i/5)
		shard := outbox.ShardOf(inv)
		heads[shard]++
		version := int64(i%5 + 1)
		payload := fmt.Appendf(nil, `{"id":%q,"customer_id":"cus_%06d","currency":"USD","status":"open","issued_at":"2025-01-01",`+
			`"due_at":"2025-01-31","lines":[{"description":"Pro plan, yearly","amount":12000,"quantity":1,"total":12000,`+
			`"service_period":{"start":"2025-01-01","end":"2025-12-31"}}],"subtotal":12000,"discount":0,"tax":1000,`+
			`"total":13000,"amount_paid":0,"amount_due":13000,"version":%d,"created_at":%q,"updated_at":%q}`,
			inv, i%1000, version, stamp, stamp)
		typ := "tally.invoice.updated.v1"
		if version == 1 {
			typ = "tally.invoice.created.v1"
		}
		i++
		return []any{shard, heads[shard], "tally.invoices.v1", inv, envelope.NewID(), typ,
			"/tally/loadgen", inv, version, now, "loadgen", "", "", payload}, nil
	}
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"shard", "seq", "topic", "key", "id", "type", "source",
		"subject", "sequence", "time", "correlation_id", "causation_id", "traceparent", "payload"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			return next()
		}))
	if err != nil {
		return err
	}
	shards := make([]int16, outbox.Shards)
	for i := range shards {
		shards[i] = int16(i)
	}
	if _, err := tx.Exec(ctx, `UPDATE outbox_heads h SET head = v.head
		FROM unnest($1::smallint[], $2::bigint[]) AS v(shard, head) WHERE h.shard = v.shard`, shards, heads); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	_, err = db.pool.Exec(ctx, "VACUUM ANALYZE outbox")
	return err
}
