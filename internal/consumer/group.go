// Package consumer is the runtime every consumer group runs on (revenue,
// KPI, notify): effectively-once processing of Kafka records into
// PostgreSQL, with retry tiers, key parking and a dead-letter queue.
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
// transaction to write in. Types the catalogue knows but the group has no
// handler for are passed over.
//
// Failures. What a handler's error means is its class (see ErrPermanent):
// a record that fails transiently is parked in PostgreSQL and forwarded to
// the group's first retry tier (tally.<group>.retry.1), whose records the
// same members read again after the tier's delay, then to the next tiers,
// and at last to the dead-letter topic (tally.<group>.dlq); a record that
// fails permanently, or cannot be decoded or validated, or is of a type or
// version the catalogue does not know, goes to the dead-letter topic at
// once. Either forward is an outbox row written in the transaction that
// parks the record and advances the position: there is no dual write. An
// environmental failure (the database or a dependency down) parks nothing:
// the partition blocks and retries in place with back-off.
//
// Order. While a record of key K is parked (retrying or dead), every later
// record of K is parked behind it, in order, and other keys keep flowing;
// when the head is applied, or an operator replays or skips it, the records
// behind it are applied in order. A group declared Unordered parks no key:
// a failing record retries on its own and later records of its key go on.
// The parked records are the dead-letter queue operators work on (List,
// Replay, Skip, Purge); PostgreSQL, not the topics, is authoritative.
package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
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
	scope     *scope
}

// BatchState returns what the group's batch-state loader (see
// Group.BatchState) returned for the batch e is applied in, or nil for a
// group without one.
func (e Event[T]) BatchState() any { return e.scope.state }

// Emit writes an event that e caused to the outbox, in the transaction
// that applies e: it is published if that transaction commits, after the
// group's earlier emissions, and never if it does not. typ is its type
// (its topic is the catalogue's), subject its aggregate id and record key,
// sequence the aggregate's version after it, payload what json.Marshal
// makes of it, valid against the type's schema.
//
// The event's correlation id and trace context are e's, its causation id
// e's id, and its id is derived from e's, the group's name and the number
// of events emitted for e before it (envelope.DerivedID, at e's time):
// applying e again (a rebuild, a retry of a record that was applied) gives
// the same ids, which consumers pass over as duplicates. Emit in the same
// order for the same e.
//
// An event that cannot be written (unknown type, invalid payload) is an
// error of the handler's own, returned as permanent.
func (e Event[T]) Emit(typ, subject string, sequence int64, payload any) error {
	data, err := json.Marshal(payload)
	if err != nil {
		return Permanent(fmt.Errorf("emitting %s: encoding the payload: %w", typ, err))
	}
	return e.scope.emit(typ, subject, sequence, data)
}

// scope is what one handler call sees beyond its event: the batch's state,
// and what it emits.
type scope struct {
	group string
	cause *envelope.Event
	state any
	out   []envelope.Event
}

func (m *scope) emit(typ, subject string, sequence int64, data []byte) error {
	ev := envelope.Event{
		ID:            envelope.DerivedID(m.cause.Time, m.group, m.cause.ID.String(), strconv.Itoa(len(m.out))),
		Type:          typ,
		Source:        "/tally/consumer/" + m.group,
		Subject:       subject,
		Time:          time.Now().UTC(),
		Sequence:      sequence,
		CorrelationID: m.cause.CorrelationID,
		CausationID:   m.cause.ID.String(),
		TraceParent:   m.cause.TraceParent,
		Data:          data,
	}
	// Checked now, so that the handler learns of it; queued at the commit
	// (outbox.QueueChecked), so that the shards' heads are held briefly.
	if err := outbox.Check(&ev); err != nil {
		return Permanent(fmt.Errorf("emitting %s: %w", typ, err))
	}
	m.out = append(m.out, ev)
	return nil
}

// Error classes. A handler's error that wraps neither is transient for
// its record: the record goes through the retry tiers. A database error a
// handler returns is classified by what the database said: a data
// exception (SQLSTATE class 22), a NOT NULL or CHECK violation is
// permanent; another integrity constraint violation (class 23: a foreign
// or unique key) transient, as another record may mend it; a lost
// connection, a timeout or any other server error environmental. A panic
// in a handler is permanent.
var (
	// ErrPermanent marks a failure of the record itself that no retry can
	// mend: the record goes to the dead-letter queue at once. Wrap it with
	// Permanent to say why.
	ErrPermanent = errors.New("permanent")
	// ErrEnvironmental marks a failure of what the handler depends on (a
	// service down, a circuit open), not of the record: the partition
	// blocks and retries the batch in place with back-off, and nothing is
	// parked or forwarded. Wrap it with Environmental.
	ErrEnvironmental = errors.New("environmental")
)

// Permanent wraps err as a permanent error.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// Environmental wraps err as an environmental error.
func Environmental(err error) error { return fmt.Errorf("%w: %w", ErrEnvironmental, err) }

// handler applies one decoded, validated event, read at rec, in scope m.
type handler func(ctx context.Context, tx Tx, ev *envelope.Event, rec *kgo.Record, m *scope) error

// Group declares a consumer group: its name, the topics it reads and what
// it does with each event type.
type Group struct {
	name      string
	topics    []string
	handlers  map[string]handler
	unordered bool
	tables    []string // its projections, parents first (Projections)
	load      func(ctx context.Context, tx Tx, subjects []string) (any, error)
	save      func(ctx context.Context, tx Tx, state any) error
}

// NewGroup declares the group name reading topics. Its Kafka group id is
// "tally." + name.
func NewGroup(name string, topics ...string) *Group {
	return &Group{name: name, topics: topics, handlers: make(map[string]handler)}
}

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// Unordered declares that the order of a key's events does not matter to
// the group: a failing record retries on its own and later records of its
// key are applied meanwhile. By default a group keeps each key's order
// through retries by parking the key. It returns g.
func (g *Group) Unordered() *Group {
	g.unordered = true
	return g
}

// BatchState declares state the group's handlers share within a batch:
// before they run on a batch, load is called once, in the batch's
// transaction, with the subjects (aggregate ids, each once, in order) of
// the events they are about to receive, and what it returns is
// Event.BatchState for each of them. A group that reads a row per
// aggregate reads them all in one query so, instead of one a record.
//
// Handlers may change the state as they apply events (a later event of
// the same aggregate in the batch sees the change); it lives as long as
// the transaction: a batch that is run again (after a failure) loads it
// afresh. save, if not nil, is called once after the batch's last handler,
// before the commit, with the state as the handlers left it: writes made
// there are made once a batch rather than once an event (an aggregate's
// row changed by several of its events is written once). An error of load
// or save is taken for the database's: the batch is retried in place,
// with back-off. Gotcha: a write of save cannot be blamed on one record,
// so one the database refuses (a constraint) retries the batch until the
// group is fixed; validate in the handlers, which can fail their record.
// It returns g.
func (g *Group) BatchState(load func(ctx context.Context, tx Tx, subjects []string) (any, error),
	save func(ctx context.Context, tx Tx, state any) error) *Group {
	g.load, g.save = load, save
	return g
}

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
	g.handlers[typ] = func(ctx context.Context, tx Tx, ev *envelope.Event, rec *kgo.Record, m *scope) error {
		e := Event[T]{Event: *ev, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, scope: m}
		if err := json.Unmarshal(ev.Data, &e.Payload); err != nil {
			return Permanent(fmt.Errorf("decoding the %s payload: %w", typ, err))
		}
		return fn(ctx, tx, e)
	}
}
