// Package outbox is the transactional outbox: Write appends events in the
// transaction of the change that caused them, and the rest of the package is
// what the relay and the audit trail read back.
//
// Ordering contract. Rows are spread over Shards shards by a hash of the
// record key. Within a shard, seq is gapless and follows commit order,
// because Write takes the shard's row in outbox_heads and holds it until the
// caller's transaction ends: a later writer of the shard waits, and a rollback
// gives its numbers back. A reader that remembers the last seq it handled in
// each shard therefore never skips a committed event, however long a
// transaction ran, and reads only what is new.
//
// The gotcha: from Write to commit, other writers of the same shard wait.
// Call Write last, right before committing, and keep that stretch short;
// better, Queue the events and send them with COMMIT.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/topics"
)

// Shards is the number of outbox shards. It is fixed by the schema: changing
// it would move keys between shards and break their order across the change.
const Shards = 64

// Channel is the PostgreSQL notification channel that wakes relays.
const Channel = "tally_outbox"

// MaxPayloadBytes bounds an event's payload so that its record, headers
// included, fits Kafka's default max.message.bytes (1 MiB). Rejecting it at
// write time keeps an unpublishable record from ever blocking its shard.
const MaxPayloadBytes = 900 << 10

// Errors of Queue and Write about the events themselves (as opposed to
// database errors). Both wrap ErrInvalidEvent.
var (
	ErrInvalidEvent = errors.New("outbox: invalid event")
	// ErrTooLarge: a payload exceeds MaxPayloadBytes.
	ErrTooLarge = fmt.Errorf("%w: payload too large", ErrInvalidEvent)
)

// Querier is what the read functions need: a pool, a connection or a
// transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ShardOf returns the shard of a record key (FNV-1a, stable forever).
func ShardOf(key string) int16 {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int16(h.Sum32() % Shards)
}

// insertSQL claims n positions of a shard and writes the events at them.
// Should the shard have no head row, seq is NULL and the statement fails on
// the server, failing the transaction, rather than writing nothing.
const insertSQL = `
WITH h AS (
	UPDATE outbox_heads SET head = head + $2::bigint WHERE shard = $1 RETURNING head - $2::bigint AS base
)
INSERT INTO outbox (shard, seq, topic, key, id, type, source, subject, sequence, time,
                    correlation_id, causation_id, traceparent, payload)
SELECT $1, (SELECT base FROM h) + e.ord, e.topic, e.key, e.id, e.type, e.source, e.subject, e.sequence, e.time,
       e.correlation_id, e.causation_id, e.traceparent, e.payload
FROM unnest($3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::bigint[],
               $10::timestamptz[], $11::text[], $12::text[], $13::text[], $14::bytea[])
        WITH ORDINALITY AS e(topic, key, id, type, source, subject, sequence, time,
                             correlation_id, causation_id, traceparent, payload, ord)`

// Write appends evs to the outbox in tx, each to its type's topic, keyed by
// its subject: Queue, then send. Call it last before committing.
func Write(ctx context.Context, tx pgx.Tx, evs ...envelope.Event) error {
	var b pgx.Batch
	if err := Queue(&b, evs...); err != nil || b.Len() == 0 {
		return err
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("writing events to the outbox: %w", err)
	}
	return nil
}

// Queue validates evs and queues their writes on b, for a caller that sends
// them with the last statements of its transaction (postgres.Tx.Commit sends
// them with COMMIT, holding the shards for a single round trip). It
// validates every event (envelope attributes, payload size, payload against
// its type's JSON Schema) before queueing any, so an invalid event writes
// nothing. Events of one key keep the order given.
//
// Shards are taken in ascending order, so two transactions writing to
// several shards cannot deadlock on them.
func Queue(b *pgx.Batch, evs ...envelope.Event) error {
	for i := range evs {
		if err := Check(&evs[i]); err != nil {
			return err
		}
	}
	QueueChecked(b, evs...)
	return nil
}

// QueueChecked is Queue for events that passed Check.
func QueueChecked(b *pgx.Batch, evs ...envelope.Event) {
	type row struct {
		shard int16
		topic string
		ev    *envelope.Event
	}
	rows := make([]row, len(evs))
	for i := range evs {
		ev := &evs[i]
		topic, _ := topics.TopicOf(ev.Type)
		rows[i] = row{ShardOf(ev.Subject), topic, ev}
	}
	slices.SortStableFunc(rows, func(a, b row) int { return int(a.shard) - int(b.shard) })

	for lo := 0; lo < len(rows); {
		hi := lo + 1
		for hi < len(rows) && rows[hi].shard == rows[lo].shard {
			hi++
		}
		var c columns
		for _, r := range rows[lo:hi] {
			c.add(r.topic, r.ev)
		}
		b.Queue(insertSQL, rows[lo].shard, int64(hi-lo), c.topic, c.key, c.id, c.typ, c.source, c.subject,
			c.sequence, c.time, c.correlation, c.causation, c.trace, c.payload)
		lo = hi
	}
}

// Check validates ev as Queue does: its envelope attributes, its payload's
// size, and its payload against its type's JSON Schema.
func Check(ev *envelope.Event) error {
	if err := checkEnvelope(ev); err != nil {
		return err
	}
	if err := topics.Validate(ev.Type, ev.Data); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	return nil
}

// checkEnvelope is Check but for the schema of the payload.
func checkEnvelope(ev *envelope.Event) error {
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if len(ev.Data) > MaxPayloadBytes {
		return fmt.Errorf("%w: %s payload is %d bytes, more than %d", ErrTooLarge, ev.Type, len(ev.Data), MaxPayloadBytes)
	}
	if _, ok := topics.TopicOf(ev.Type); !ok {
		return fmt.Errorf("%w: no topic for type %q", ErrInvalidEvent, ev.Type)
	}
	return nil
}

// columns holds one shard's events as the column arrays insertSQL unnests.
type columns struct {
	topic, key, typ, source, subject, correlation, causation, trace []string
	id                                                              [][16]byte // not []uuid.UUID, which pgx encodes through its text
	sequence                                                        []int64
	time                                                            []time.Time
	payload                                                         [][]byte
}

func (c *columns) add(topic string, ev *envelope.Event) {
	c.topic = append(c.topic, topic)
	c.key = append(c.key, ev.Subject)
	c.id = append(c.id, ev.ID)
	c.typ = append(c.typ, ev.Type)
	c.source = append(c.source, ev.Source)
	c.subject = append(c.subject, ev.Subject)
	c.sequence = append(c.sequence, ev.Sequence)
	c.time = append(c.time, ev.Time)
	c.correlation = append(c.correlation, ev.CorrelationID)
	c.causation = append(c.causation, ev.CausationID)
	c.trace = append(c.trace, ev.TraceParent)
	c.payload = append(c.payload, ev.Data)
}
