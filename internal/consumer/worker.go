package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/topics"
)

// worker applies the records of one partition, in order, for as long as
// the member holds the partition's epoch.
type worker struct {
	r         *Runner
	topic     string
	partition int32
	epoch     int64

	mu     sync.Mutex // guards the fields below
	queue  []queued
	next   int64 // position after the last applied record; -1: none yet
	high   int64 // the partition's high watermark, last seen
	paused bool

	kick    chan struct{} // cap 1: the queue grew or stop was asked
	stopped chan struct{}
	once    sync.Once
	done    chan struct{}
}

type queued struct {
	rec *kgo.Record
	at  time.Time
}

func newWorker(r *Runner, topic string, partition int32, epoch, next int64) *worker {
	return &worker{r: r, topic: topic, partition: partition, epoch: epoch, next: next, high: -1,
		kick: make(chan struct{}, 1), stopped: make(chan struct{}), done: make(chan struct{})}
}

// enqueue queues records to apply. Records before the position (fetched
// for an earlier assignment of the partition) are dropped: applying them
// again would change nothing but move the position back.
func (w *worker) enqueue(recs []*kgo.Record) int {
	now := time.Now()
	w.mu.Lock()
	from := w.next
	if n := len(w.queue); n > 0 {
		from = w.queue[n-1].rec.Offset + 1
	}
	for _, rec := range recs {
		if rec.Offset >= from {
			w.queue = append(w.queue, queued{rec, now})
			from = rec.Offset + 1
		}
	}
	n := len(w.queue)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return n
}

func (w *worker) sawHighWatermark(hw int64) {
	w.mu.Lock()
	w.high = max(w.high, hw)
	w.mu.Unlock()
}

// setPaused records whether the partition's fetching is paused and reports
// whether that changed.
func (w *worker) setPaused(p bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := w.paused != p
	w.paused = p
	return changed
}

func (w *worker) position() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// lag is how many records of the partition are not applied yet, or -1 when
// unknown.
func (w *worker) lag() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.high < 0 || w.next < 0 {
		return -1
	}
	return max(w.high-w.next, 0)
}

// stop asks the worker to finish the batch in hand and return.
func (w *worker) stop() { w.once.Do(func() { close(w.stopped) }) }

func (w *worker) isStopped() bool {
	select {
	case <-w.stopped:
		return true
	default:
		return false
	}
}

// take waits for records and returns up to max of them, or nil once the
// worker is stopped.
func (w *worker) take(max int) []queued {
	for {
		if w.isStopped() {
			return nil
		}
		w.mu.Lock()
		if n := min(len(w.queue), max); n > 0 {
			batch := append([]queued(nil), w.queue[:n]...)
			w.queue = w.queue[n:]
			w.mu.Unlock()
			return batch
		}
		w.mu.Unlock()
		select {
		case <-w.kick:
		case <-w.stopped:
		}
	}
}

func (w *worker) run() {
	defer close(w.done)
	for {
		batch := w.take(w.r.batch)
		if batch == nil {
			return
		}
		if err := w.process(batch); err != nil {
			// Fenced, or stopped while the database was failing: the
			// partition's next owner applies from the stored position.
			if isFenced(err) {
				w.r.log.Warn("partition taken by another member; stopping its worker", "topic", w.topic, "partition", w.partition)
				w.r.m.fenced.Inc()
			}
			return
		}
		w.mu.Lock()
		backlog := len(w.queue)
		w.mu.Unlock()
		if backlog < w.r.batch {
			w.r.resume(w)
		}
	}
}

// process applies batch, retrying in place while the database fails, and
// setting aside the records whose handler fails permanently.
func (w *worker) process(batch []queued) error {
	reject := map[int64]string{}
	bo := newBackoff()
	for {
		err := w.apply(batch, reject)
		var pf *permanentFailure
		switch {
		case err == nil:
			return nil
		case errors.As(err, &pf):
			// Apply again with that record set aside; the records before
			// it did nothing wrong, and this transaction rolled back.
			reject[pf.offset] = pf.reason
			continue
		case isFenced(err):
			return err
		case isDataError(err):
			// A write refused the data, possibly a queued one whose error
			// surfaced only later: find the record by applying one at a
			// time, and set it aside.
			if len(batch) == 1 {
				reject[batch[0].rec.Offset] = "handler: " + err.Error()
				continue
			}
			for i := range batch {
				if err := w.process(batch[i : i+1]); err != nil {
					return err
				}
			}
			return nil
		}
		w.r.m.retries.Inc()
		d := bo.NextBackOff()
		w.r.log.Error("applying a batch failed; retrying in place", "topic", w.topic, "partition", w.partition,
			"from_offset", batch[0].rec.Offset, "err", err, "retry_in", d)
		select {
		case <-time.After(d):
		case <-w.stopped:
			return fmt.Errorf("stopped while retrying: %w", err)
		}
	}
}

// permanentFailure is a handler's permanent error (or panic) on one record.
type permanentFailure struct {
	offset int64
	reason string
}

func (p *permanentFailure) Error() string { return p.reason }

// fencedCode is the SQLSTATE consumer_advance raises for a stale epoch.
const fencedCode = "TL001"

func isFenced(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == fencedCode
}

// isDataError reports a database refusing a handler's data (classes 22,
// data exception, and 23, integrity constraint violation): retrying the
// same record cannot help.
func isDataError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code[:2] == "22" || pe.Code[:2] == "23")
}

// item is a record as the batch sees it.
type item struct {
	q      queued
	ev     envelope.Event
	reason string // set aside, and why
	handle handler
}

// apply applies batch in one transaction: idempotency marks, handlers,
// rejects, and the new position, checked against the epoch as it commits.
// Records whose offset is in reject are set aside with that reason.
func (w *worker) apply(batch []queued, reject map[int64]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.r.drain)
	defer cancel()
	g := w.r.g
	items := make([]item, len(batch))
	var ids []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for i, q := range batch {
		it := &items[i]
		it.q = q
		if reason, ok := reject[q.rec.Offset]; ok {
			it.reason = reason
			continue
		}
		ev, err := envelope.Decode(q.rec)
		if err != nil {
			it.reason = err.Error()
			continue
		}
		it.ev = ev
		topic, known := topics.TopicOf(ev.Type)
		switch {
		case !known:
			it.reason = fmt.Sprintf("unknown event type or version %q", ev.Type)
			continue
		case topic != q.rec.Topic:
			it.reason = fmt.Sprintf("event type %s belongs on %s, not %s", ev.Type, topic, q.rec.Topic)
			continue
		}
		h := g.handlers[ev.Type]
		if h == nil {
			continue // a type the group does not need
		}
		if err := topics.Validate(ev.Type, ev.Data); err != nil {
			it.reason = err.Error()
			continue
		}
		it.handle = h
		if !seen[ev.ID] {
			seen[ev.ID] = true
			ids = append(ids, ev.ID)
		}
	}

	tx, err := postgres.Begin(ctx, w.r.pool)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	fresh := map[uuid.UUID]bool{}
	if len(ids) > 0 {
		rows, err := tx.Query(ctx, `INSERT INTO consumer_applied (group_id, event_id)
			SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id`, g.name, ids)
		if err != nil {
			return err
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		for _, id := range got {
			fresh[id] = true
		}
	}
	var counts [outcomes]int
	for i := range items {
		it := &items[i]
		rec := it.q.rec
		switch {
		case it.reason != "":
			if err := queueReject(tx, g.name, rec, it.reason); err != nil {
				return err
			}
			counts[rejected]++
		case it.handle == nil:
			counts[ignored]++
		case !fresh[it.ev.ID]:
			counts[duplicate]++
		default:
			delete(fresh, it.ev.ID) // a repeat later in this batch is a duplicate
			if err := call(ctx, it.handle, tx, &it.ev, rec); err != nil {
				if errors.Is(err, ErrPermanent) {
					return &permanentFailure{rec.Offset, "handler: " + err.Error()}
				}
				return err
			}
			counts[applied]++
		}
	}
	last := batch[len(batch)-1].rec.Offset
	var commit pgx.Batch
	commit.Queue("SELECT consumer_advance($1, $2, $3, $4, $5)", g.name, w.topic, w.partition, w.epoch, last+1)
	if err := tx.Commit(ctx, &commit); err != nil {
		return err
	}

	now := time.Now()
	w.mu.Lock()
	w.next = last + 1
	w.mu.Unlock()
	w.r.m.observe(w.topic, counts, items, now)
	return nil
}

// call runs a handler, turning a panic into a permanent failure: a bug on
// one record must not crash the member or stall the partition.
func call(ctx context.Context, h handler, tx Tx, ev *envelope.Event, rec *kgo.Record) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = Permanent(fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
		}
	}()
	return h(ctx, tx, ev, rec.Topic, rec.Partition, rec.Offset)
}

// queueReject sets rec aside, whole, with the reason. Seen again (after a
// crash), it is not stored twice.
func queueReject(tx *postgres.Tx, group string, rec *kgo.Record, reason string) error {
	type header struct {
		Key         string `json:"key"`
		Value       string `json:"value,omitempty"`
		ValueBase64 []byte `json:"value_base64,omitempty"`
	}
	hs := make([]header, len(rec.Headers))
	for i, h := range rec.Headers {
		hs[i].Key = text(h.Key)
		if utf8.Valid(h.Value) && !bytes.ContainsRune(h.Value, 0) {
			hs[i].Value = string(h.Value)
		} else {
			hs[i].ValueBase64 = h.Value
		}
	}
	hj, err := json.Marshal(hs)
	if err != nil {
		return err
	}
	tx.Queue(`INSERT INTO consumer_rejects (group_id, topic, partition, "offset", key, headers, value, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
		group, rec.Topic, rec.Partition, rec.Offset, rec.Key, hj, rec.Value, text(clip(reason, 2000)))
	return nil
}

// text makes s storable as PostgreSQL text: valid UTF-8, without NUL.
func text(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\ufffd"), "\x00", "\\0")
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
