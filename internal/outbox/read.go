package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/envelope"
)

// Record is one outbox row: an event, where it goes, and its position.
type Record struct {
	Shard int16
	Seq   int64
	Topic string
	Key   string
	Event envelope.Event
}

const columnsSQL = `o.shard, o.seq, o.topic, o.key, o.id, o.type, o.source, o.subject, o.sequence, o.time,
	o.correlation_id, o.causation_id, o.traceparent, o.payload`

func scanRecord(rows pgx.Rows, r *Record) error {
	e := &r.Event
	return rows.Scan(&r.Shard, &r.Seq, &r.Topic, &r.Key, &e.ID, &e.Type, &e.Source, &e.Subject,
		&e.Sequence, &e.Time, &e.CorrelationID, &e.CausationID, &e.TraceParent, &e.Data)
}

// Want asks Fetch for up to Limit records of Shard with seq > After.
type Want struct {
	Shard int16
	After int64
	Limit int
}

// Fetch reads what ws ask for in one query and calls fn with each record,
// in seq order within a shard. It stops at fn's first error and returns it.
// fn may keep the record, its payload included.
func Fetch(ctx context.Context, q Querier, ws []Want, fn func(*Record) error) error {
	shards := make([]int16, len(ws))
	after := make([]int64, len(ws))
	limits := make([]int64, len(ws))
	for i, w := range ws {
		shards[i], after[i], limits[i] = w.Shard, w.After, int64(w.Limit)
	}
	rows, err := q.Query(ctx, `
		SELECT `+columnsSQL+`
		FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS c(shard, after, lim)
		CROSS JOIN LATERAL (
			SELECT * FROM outbox WHERE outbox.shard = c.shard AND outbox.seq > c.after ORDER BY seq LIMIT c.lim
		) o`, shards, after, limits)
	if err != nil {
		return fmt.Errorf("reading the outbox: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r := new(Record)
		if err := scanRecord(rows, r); err != nil {
			return fmt.Errorf("reading the outbox: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the outbox: %w", err)
	}
	return nil
}

// Cursor returns the relay's position in shard: every event with a lower or
// equal seq has been published.
func Cursor(ctx context.Context, q Querier, shard int16) (int64, error) {
	var pos int64
	if err := q.QueryRow(ctx, "SELECT position FROM relay_cursors WHERE shard = $1", shard).Scan(&pos); err != nil {
		return 0, fmt.Errorf("reading the cursor of shard %d: %w", shard, err)
	}
	return pos, nil
}

// SaveCursors moves the relay's positions forward; a position lower than the
// stored one is ignored, so a slow or fenced relay cannot move one back.
func SaveCursors(ctx context.Context, q Querier, shards []int16, positions []int64) error {
	_, err := q.Exec(ctx, `
		UPDATE relay_cursors c SET position = v.position, updated_at = now()
		FROM unnest($1::smallint[], $2::bigint[]) AS v(shard, position)
		WHERE c.shard = v.shard AND c.position < v.position`, shards, positions)
	if err != nil {
		return fmt.Errorf("saving relay cursors: %w", err)
	}
	return nil
}

// Backlog returns how many committed events the relay has not published yet
// and when the oldest of them was written (zero when there is none). Its cost
// is one index probe per shard, whatever the history.
func Backlog(ctx context.Context, q Querier) (pending int64, oldest time.Time, err error) {
	var t *time.Time
	err = q.QueryRow(ctx, `
		SELECT coalesce(sum(h.head - c.position), 0)::bigint, min(o.time)
		FROM outbox_heads h
		JOIN relay_cursors c USING (shard)
		LEFT JOIN outbox o ON o.shard = h.shard AND o.seq = c.position + 1`).Scan(&pending, &t)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("measuring the outbox backlog: %w", err)
	}
	if t != nil {
		oldest = *t
	}
	return pending, oldest, nil
}

// Trail returns the events of one aggregate (a key of a topic), oldest
// first, after the aggregate version after, at most limit of them. It reads
// PostgreSQL, so it answers whether or not the relay has published them.
func Trail(ctx context.Context, q Querier, topic, key string, after int64, limit int) ([]envelope.Event, error) {
	rows, err := q.Query(ctx, `
		SELECT `+columnsSQL+` FROM outbox o
		WHERE o.topic = $1 AND o.key = $2 AND o.sequence > $3
		ORDER BY o.seq LIMIT $4`, topic, key, after, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the audit trail: %w", err)
	}
	defer rows.Close()
	var evs []envelope.Event
	for rows.Next() {
		var r Record
		if err := scanRecord(rows, &r); err != nil {
			return nil, fmt.Errorf("reading the audit trail: %w", err)
		}
		evs = append(evs, r.Event)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the audit trail: %w", err)
	}
	return evs, nil
}

// Prune deletes published events written before cutoff, at most batch per
// shard per round, until a round deletes nothing, and returns how many it
// deleted. It never deletes an event the relay has not published. Within a
// shard it stops at the first event newer than cutoff, so an event may
// outlive its retention while an older-looking one waits behind it.
func Prune(ctx context.Context, q Querier, cutoff time.Time, batch int) (int64, error) {
	var total int64
	for {
		tag, err := q.Exec(ctx, `
			DELETE FROM outbox o USING (
				SELECT x.shard, x.seq FROM relay_cursors c
				CROSS JOIN LATERAL (
					SELECT shard, seq, time FROM outbox
					WHERE outbox.shard = c.shard AND outbox.seq <= c.position
					ORDER BY seq LIMIT $2
				) x
				WHERE x.time < $1
			) d
			WHERE o.shard = d.shard AND o.seq = d.seq`, cutoff, batch)
		if err != nil {
			return total, fmt.Errorf("pruning the outbox: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() == 0 {
			return total, nil
		}
	}
}
