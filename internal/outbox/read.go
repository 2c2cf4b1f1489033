package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
)

// Record is one outbox row: an event, where it goes, and its position.
type Record struct {
	Shard int16
	Seq   int64
	Topic string
	Key   string
	Event envelope.Event
	// Forward is the whole record of a forward (QueueForwards), nil for an
	// event.
	Forward *kgo.Record
}

const columnsSQL = `o.shard, o.seq, o.topic, o.key, o.id, o.type, o.source, o.subject, o.sequence, o.time,
	o.correlation_id, o.causation_id, o.traceparent, o.payload, o.headers, o.record_key`

func scanRecord(rows pgx.Rows, r *Record) error {
	e := &r.Event
	var headers, key []byte
	if err := rows.Scan(&r.Shard, &r.Seq, &r.Topic, &r.Key, &e.ID, &e.Type, &e.Source, &e.Subject,
		&e.Sequence, &e.Time, &e.CorrelationID, &e.CausationID, &e.TraceParent, &e.Data, &headers, &key); err != nil {
		return err
	}
	if headers == nil {
		return nil
	}
	hs, err := envelope.UnmarshalHeaders(headers)
	if err != nil {
		return fmt.Errorf("the forward at shard %d seq %d: %w", r.Shard, r.Seq, err)
	}
	r.Forward = &kgo.Record{Topic: r.Topic, Key: key, Value: e.Data, Headers: hs}
	return nil
}

// Want asks Fetch for up to Limit records of Shard with seq > After.
type Want struct {
	Shard int16
	After int64
	Limit int
}

// Fetch reads what ws ask for in one query and returns the records in the
// order of ws, and in seq order within a shard. It reads them all before
// returning, so that a caller that is slow to use them (a producer waiting
// for Kafka) does not hold a snapshot open, which would hold back vacuum in
// the whole database.
func Fetch(ctx context.Context, q Querier, ws []Want) ([]*Record, error) {
	shards := make([]int16, len(ws))
	after := make([]int64, len(ws))
	limits := make([]int64, len(ws))
	n := 0
	for i, w := range ws {
		shards[i], after[i], limits[i] = w.Shard, w.After, int64(w.Limit)
		n += w.Limit
	}
	rows, err := q.Query(ctx, `
		SELECT `+columnsSQL+`
		FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS c(shard, after, lim, ord)
		CROSS JOIN LATERAL (
			SELECT * FROM outbox WHERE outbox.shard = c.shard AND outbox.seq > c.after ORDER BY seq LIMIT c.lim
		) o
		ORDER BY c.ord, o.seq`, shards, after, limits)
	if err != nil {
		return nil, fmt.Errorf("reading the outbox: %w", err)
	}
	defer rows.Close()
	recs := make([]*Record, 0, min(n, 4096))
	for rows.Next() {
		r := new(Record)
		if err := scanRecord(rows, r); err != nil {
			return nil, fmt.Errorf("reading the outbox: %w", err)
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the outbox: %w", err)
	}
	return recs, nil
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

// Prune deletes events of the given shards that the relay has published
// and that were written before cutoff, at most batch per shard per
// statement, until a statement deletes nothing, and returns how many it
// deleted. It never deletes an event the relay has not published. Each
// statement looks at the oldest batch events of a shard only, so an event
// newer than cutoff stops the shard's pruning until it ages: retention is a
// lower bound. Give each shard to one pruner at a time (the relay prunes the
// shards it owns), or concurrent pruners wait on each other's rows.
func Prune(ctx context.Context, q Querier, shards []int16, cutoff time.Time, batch int) (int64, error) {
	var total int64
	for {
		tag, err := q.Exec(ctx, `
			DELETE FROM outbox o USING (
				SELECT x.shard, x.seq FROM relay_cursors c
				CROSS JOIN LATERAL (
					SELECT shard, seq, time FROM outbox
					WHERE outbox.shard = c.shard AND outbox.seq <= c.position
					ORDER BY seq LIMIT $3
				) x
				WHERE c.shard = ANY($1) AND x.time < $2
			) d
			WHERE o.shard = d.shard AND o.seq = d.seq`, shards, cutoff, batch)
		if err != nil {
			return total, fmt.Errorf("pruning the outbox: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() == 0 {
			return total, nil
		}
	}
}
