package consumer

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/topics"
)

// item is a record as a batch transaction sees it.
type item struct {
	rec    *kgo.Record // what is applied: the record read, or a parked record's copy
	at     time.Time   // when it reached the worker
	orig   origin
	ev     envelope.Event
	bad    error // why it cannot be applied at all: a permanent failure
	handle handler
	row    *parkedRow // the retry path's: where the record is parked
}

// prepare decodes and validates rec, first read at orig, and finds its
// handler. A type the group has no handler for is left without one.
func (g *Group) prepare(rec *kgo.Record, orig origin) item {
	it := item{rec: rec, orig: orig}
	ev, err := envelope.Decode(rec)
	if err != nil {
		it.bad = err
		return it
	}
	it.ev = ev
	topic, known := topics.TopicOf(ev.Type)
	switch {
	case !known:
		it.bad = fmt.Errorf("unknown event type or version %q", ev.Type)
	case topic != orig.topic:
		it.bad = fmt.Errorf("event type %s belongs on %s, not %s", ev.Type, topic, orig.topic)
	case g.handlers[ev.Type] == nil:
	default:
		if err := topics.Validate(ev.Type, ev.Data); err != nil {
			it.bad = err
			return it
		}
		it.handle = g.handlers[ev.Type]
	}
	return it
}

// ignored reports a record the group passes over: a type it has no
// handler for. Such a record changes nothing, so it never waits for its
// key either.
func (it *item) ignored(failed map[origin]failure) bool {
	_, f := failed[it.orig]
	return it.bad == nil && it.handle == nil && !f
}

// keyOf names a key for the maps of a batch: a group's key is its topic's.
func keyOf(topic string, key []byte) string { return topic + "\x00" + string(key) }

// marks plans the idempotency marks of a batch: the ids of the records it
// will apply, with their keys. A record that failed, and every later record
// of its key, is not applied in this transaction; hold returns the key a
// record holds, or "" for one that holds none.
func marks(items []item, failed map[origin]failure, hold func(*item) string) (ids []uuid.UUID, keys [][]byte) {
	held := map[string]bool{}
	seen := map[uuid.UUID]bool{}
	for i := range items {
		it := &items[i]
		k := hold(it)
		_, isFailed := failed[it.orig]
		switch {
		case it.ignored(failed):
		case k != "" && held[k]:
		case it.bad != nil || isFailed:
			if k != "" {
				held[k] = true
			}
		case !seen[it.ev.ID]:
			seen[it.ev.ID] = true
			ids = append(ids, it.ev.ID)
			var key []byte
			if k != "" {
				key = it.rec.Key
			}
			keys = append(keys, key)
		}
	}
	return ids, keys
}

// markSQL takes the parked keys among $3 FOR SHARE, so that no retry
// worker can release one of them before this transaction parks records
// behind it, and marks the events $4 applied, but for those of a parked
// key ($5). It returns the parked keys, then the ids newly marked.
const markSQL = `
WITH held AS (
	SELECT key FROM consumer_parked_keys
	WHERE group_id = $1 AND topic = $2 AND key = ANY($3::bytea[])
	FOR SHARE
), marked AS (
	INSERT INTO consumer_applied (group_id, event_id)
	SELECT $1, c.id FROM unnest($4::uuid[], $5::bytea[]) AS c(id, key)
	WHERE c.key IS NULL OR c.key NOT IN (SELECT key FROM held)
	ON CONFLICT DO NOTHING
	RETURNING event_id
)
SELECT key, NULL::uuid FROM held UNION ALL SELECT NULL, event_id FROM marked`

// applyMain applies a batch of a topic of the group in one transaction:
// idempotency marks, handlers, parked records and their forwards, and the
// new position, checked against the epoch as it commits. The records in
// failed are parked with their failure instead of applied; so is every
// record of a parked key. In strict mode each record's writes are sent
// before the next record's, so that a refused write names its record.
func (w *worker) applyMain(batch []queued, failed map[origin]failure, strict bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.r.drain)
	defer cancel()
	g := w.r.g
	items := make([]item, len(batch))
	for i, q := range batch {
		rec, orig := q.rec, origin{q.rec.Topic, q.rec.Partition, q.rec.Offset}
		if w.r.rebuild != nil {
			rec = w.r.rebuild.decide(rec, orig)
		}
		if rec == nil {
			// Skipped by an operator: passed over, as a type without a
			// handler is.
			items[i] = item{rec: q.rec, orig: orig}
		} else {
			items[i] = g.prepare(rec, orig)
		}
		items[i].at = q.at
	}
	hold := func(it *item) string {
		if g.unordered || len(it.rec.Key) == 0 {
			return ""
		}
		return keyOf(w.topic, it.rec.Key)
	}
	var lock [][]byte
	locked := map[string]bool{}
	for i := range items {
		if k := hold(&items[i]); k != "" && !locked[k] {
			locked[k] = true
			lock = append(lock, items[i].rec.Key)
		}
	}
	ids, idKeys := marks(items, failed, hold)

	tx, err := postgres.Begin(ctx, w.r.pool)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	held := map[string]bool{}
	fresh := map[uuid.UUID]bool{}
	if len(ids) > 0 || len(lock) > 0 {
		rows, err := tx.Query(ctx, markSQL, g.name, w.topic, lock, ids, idKeys)
		if err != nil {
			return err
		}
		for rows.Next() {
			var key []byte
			var id *uuid.UUID
			if err := rows.Scan(&key, &id); err != nil {
				rows.Close()
				return err
			}
			if id != nil {
				fresh[*id] = true
			} else {
				held[keyOf(w.topic, key)] = true
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}

	t := &txn{w: w, ctx: ctx, tx: tx, now: time.Now(), strict: strict}
	if err := t.loadState(items); err != nil {
		return err
	}
	for i := range items {
		it := &items[i]
		k := hold(it)
		f, isFailed := failed[it.orig]
		switch {
		case it.ignored(failed):
			t.counts[ignored]++
			continue
		case k != "" && held[k]:
			t.parkBehind(it)
		case it.bad != nil:
			t.park(it, failure{permanent, errorText(it.bad.Error())})
		case isFailed:
			t.park(it, f)
		case !fresh[it.ev.ID]:
			t.counts[duplicate]++
			continue
		default:
			delete(fresh, it.ev.ID) // a repeat later in this batch is a duplicate
			if err := t.call(it); err != nil {
				return err
			}
			t.counts[applied]++
			t.applied = append(t.applied, it)
			continue
		}
		// Parked: later records of its key wait behind it.
		if k != "" {
			held[k] = true
		}
		if err := t.flush(it); err != nil {
			return err
		}
	}
	return t.commit(batch[len(batch)-1].rec.Offset)
}

// txn is what a batch transaction has done so far.
type txn struct {
	w        *worker
	ctx      context.Context
	tx       *postgres.Tx
	now      time.Time
	strict   bool
	state    any              // the group's batch state (Group.BatchState)
	emitted  []envelope.Event // by the handlers, in order
	forwards []outbox.Forward
	tiers    []int // of the forwards: the retry tier, or 0 for the dead-letter topic
	counts   [outcomes]int
	applied  []*item
}

// loadState loads the group's batch state for the items with a handler,
// if the group declares one.
func (t *txn) loadState(items []item) error {
	load := t.w.r.g.load
	if load == nil {
		return nil
	}
	var subjects []string
	seen := map[string]bool{}
	for i := range items {
		if it := &items[i]; it.handle != nil && !seen[it.ev.Subject] {
			seen[it.ev.Subject] = true
			subjects = append(subjects, it.ev.Subject)
		}
	}
	if len(subjects) == 0 {
		return nil
	}
	st, err := load(t.ctx, t.tx, subjects)
	if err != nil {
		return fmt.Errorf("loading the batch state: %w", err)
	}
	t.state = st
	return nil
}

// call runs it's handler. A failure of the record is returned as a
// recordFailure; any other error as it is.
func (t *txn) call(it *item) error {
	m := &scope{group: t.w.r.g.name, cause: &it.ev, state: t.state}
	err := call(t.ctx, it.handle, t.tx, &it.ev, it.rec, m)
	if err == nil && t.strict {
		err = t.tx.Flush(t.ctx)
	}
	if err == nil {
		t.emitted = append(t.emitted, m.out...)
		return nil
	}
	txErr := t.tx.Err()
	if isDataError(txErr) && !t.strict {
		// Maybe an earlier record's queued write: learn whose.
		return txErr
	}
	c := classify(err, txErr)
	if c == environmental {
		return err
	}
	return &recordFailure{it.orig, failure{c, errorText(err.Error())}}
}

// flush sends a parked record's writes at once in strict mode, so that a
// refused one is known to be the runtime's own.
func (t *txn) flush(it *item) error {
	if !t.strict {
		return nil
	}
	if err := t.tx.Flush(t.ctx); err != nil {
		return &recordFailure{it.orig, failure{environmental, errorText(err.Error())}}
	}
	return nil
}

// call runs a handler, turning a panic into a permanent failure: a bug on
// one record must not crash the member or stall the partition.
func call(ctx context.Context, h handler, tx Tx, ev *envelope.Event, rec *kgo.Record, m *scope) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = Permanent(fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
		}
	}()
	return h(ctx, tx, ev, rec, m)
}

const insertParkedSQL = `
INSERT INTO consumer_parked (group_id, topic, partition, "offset", record_time, key, ordered, event_id, event_type,
	headers, value, state, version, attempts, tier, not_before, error_class, error, first_failed_at, last_failed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19)`

// park parks a record read from a topic of the group after its first
// failure, holds its key if it has one to hold, and forwards it to the
// first retry tier or the dead-letter topic.
func (t *txn) park(it *item, f failure) {
	r := t.w.r
	state, tier := r.disposition(f, 1)
	notBefore := t.retryAt(tier)
	ordered := !r.g.unordered && len(it.rec.Key) > 0
	t.tx.Queue(insertParkedSQL, r.g.name, it.orig.topic, it.orig.partition, it.orig.offset, it.rec.Timestamp,
		it.rec.Key, ordered, eventID(it), eventType(it), envelope.MarshalHeaders(it.rec.Headers), it.rec.Value,
		state, 1, 1, tier, notBefore, f.class.String(), f.err, t.now)
	if ordered {
		t.tx.Queue(`INSERT INTO consumer_parked_keys (group_id, topic, key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			r.g.name, it.orig.topic, it.rec.Key)
	}
	t.forward(forwardOf(r.g.name, it.rec, it.orig, tier, 1, 1, t.now, t.now, &f, derefTime(notBefore)), tier)
}

// parkBehind parks a record behind the parked head of its key.
func (t *txn) parkBehind(it *item) {
	r := t.w.r
	t.tx.Queue(insertParkedSQL, r.g.name, it.orig.topic, it.orig.partition, it.orig.offset, it.rec.Timestamp,
		it.rec.Key, true, eventID(it), eventType(it), envelope.MarshalHeaders(it.rec.Headers), it.rec.Value,
		"waiting", 0, 0, 0, nil, "", "", nil)
	t.counts[parked]++
}

// retryAt returns when an attempt in tier is due, or nil for the
// dead-letter queue (tier 0).
func (t *txn) retryAt(tier int) *time.Time {
	if tier == 0 {
		return nil
	}
	at := t.now.Add(t.w.r.delays[tier-1])
	return &at
}

func (t *txn) forward(f outbox.Forward, tier int) {
	t.forwards = append(t.forwards, f)
	t.tiers = append(t.tiers, tier)
	if tier > 0 {
		t.counts[retried]++
	} else {
		t.counts[dead]++
	}
}

// commit queues the events the handlers emitted, the forwards and the new
// position, commits, and counts.
func (t *txn) commit(last int64) error {
	w := t.w
	if save := w.r.g.save; save != nil && t.state != nil {
		if err := save(t.ctx, t.tx, t.state); err != nil {
			return fmt.Errorf("saving the batch state: %w", err)
		}
	}
	var b pgx.Batch
	outbox.QueueChecked(&b, t.emitted...)
	if err := outbox.QueueForwards(&b, t.forwards...); err != nil {
		return err
	}
	b.Queue("SELECT consumer_advance($1, $2, $3, $4, $5)", w.r.g.name, w.topic, w.partition, w.epoch, last+1)
	if err := t.tx.Commit(t.ctx, &b); err != nil {
		return err
	}
	now := time.Now()
	w.mu.Lock()
	w.next = last + 1
	w.mu.Unlock()
	if len(t.emitted)+len(t.forwards) > 0 && w.r.notifier != nil {
		w.r.notifier.Notify()
	}
	w.r.m.observe(w.topic, t.counts, t.tiers, t.applied, now)
	return nil
}

// eventID is a record's ce_id for consumer_parked, NULL when it could not
// be decoded.
func eventID(it *item) any {
	if it.ev.ID == uuid.Nil {
		return nil
	}
	return it.ev.ID
}

// eventType is a record's type for consumer_parked: ce_type, even from a
// record that could not be decoded, so operators can filter by it.
func eventType(it *item) string {
	if it.ev.Type != "" {
		return it.ev.Type
	}
	for _, h := range it.rec.Headers {
		if h.Key == envelope.HeaderType {
			return errorText(clip(string(h.Value), 200))
		}
	}
	return ""
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
