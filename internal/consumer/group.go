// Package consumer is the runtime every consumer group runs on (revenue,
// KPI, notify): effectively-once processing of Kafka records into
// PostgreSQL.
//
// Contract. A batch of records of one partition is applied in one
// PostgreSQL transaction, which also writes their idempotency marks (by
// ce_id) and the group's new position in the partition. A crash at any
// point therefore repeats nothing and loses nothing: on assignment a member
// resumes from the position stored in PostgreSQL, never from Kafka's
// committed offsets, which are committed after the fact only so that lag
// tools see progress. A member given a partition takes a new epoch for it,
// and every transaction checks its epoch as it commits, so a member that
// lost the partition (a zombie woken from a pause) applies nothing.
//
// Handlers are plain Go functions registered per event type (Handle). They
// receive the event, decoded and validated against its JSON Schema, and the
// transaction to write in. A record that cannot be decoded or validated, or
// whose type or version the catalogue does not know, is set aside in
// consumer_rejects with the reason; so is a record whose handler returns a
// Permanent error or panics. Any other error (the database down, a
// timeout) blocks the partition and is retried with back-off: nothing is
// skipped. Types the catalogue knows but the group has no handler for are
// passed over.
package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/topics"
)

// Tx is the transaction a handler writes in. Queue sends a write with the
// next statement or the commit (see postgres.Tx): a handler that only
// writes costs the batch no round trip.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Queue(sql string, args ...any)
}

// Event is an event a handler receives: the envelope, the payload decoded
// into T, and where the record was.
type Event[T any] struct {
	envelope.Event
	Payload   T
	Topic     string
	Partition int32
	Offset    int64
}

// ErrPermanent marks a handler error about the record itself: retrying
// cannot help, so the record is set aside and the partition moves on. Wrap
// it (Permanent) to say why.
var ErrPermanent = errors.New("permanent")

// Permanent wraps err as a permanent error.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// handler applies one decoded, validated event.
type handler func(ctx context.Context, tx Tx, ev *envelope.Event, topic string, partition int32, offset int64) error

// Group declares a consumer group: its name, the topics it reads and what
// it does with each event type.
type Group struct {
	name     string
	topics   []string
	handlers map[string]handler
}

// NewGroup declares the group name reading topics. Its Kafka group id is
// "tally." + name.
func NewGroup(name string, topics ...string) *Group {
	return &Group{name: name, topics: topics, handlers: make(map[string]handler)}
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Handle registers fn for events of type typ; their payload is decoded into
// T, which may declare only the fields fn needs. It panics if typ is not a
// type of the catalogue on one of the group's topics, or is registered
// twice: both are programming errors.
func Handle[T any](g *Group, typ string, fn func(context.Context, Tx, Event[T]) error) {
	topic, ok := topics.TopicOf(typ)
	if !ok {
		panic(fmt.Sprintf("consumer: group %s handles %s, which the catalogue does not know", g.name, typ))
	}
	found := false
	for _, t := range g.topics {
		found = found || t == topic
	}
	if !found {
		panic(fmt.Sprintf("consumer: group %s handles %s, but does not read its topic %s", g.name, typ, topic))
	}
	if _, dup := g.handlers[typ]; dup {
		panic(fmt.Sprintf("consumer: group %s handles %s twice", g.name, typ))
	}
	g.handlers[typ] = func(ctx context.Context, tx Tx, ev *envelope.Event, t string, p int32, o int64) error {
		e := Event[T]{Event: *ev, Topic: t, Partition: p, Offset: o}
		if err := json.Unmarshal(ev.Data, &e.Payload); err != nil {
			return Permanent(fmt.Errorf("decoding the %s payload: %w", typ, err))
		}
		return fn(ctx, tx, e)
	}
}
