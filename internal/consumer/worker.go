package consumer

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"
)

// worker applies the records of one partition, in order, for as long as
// the member holds the partition's epoch. The partition is one of the
// group's topics, or of one of its retry tiers.
type worker struct {
	r         *Runner
	topic     string
	partition int32
	tier      int // the retry tier the topic is, from 1; 0 for a topic of the group
	epoch     int64

	mu     sync.Mutex // guards the fields below
	queue  []queued
	next   int64 // position after the last applied record; -1: none yet
	high   int64 // the partition's high watermark, last seen
	paused bool  // fetching is paused

	kick    chan struct{} // cap 1: the queue grew or stop was asked
	stopped chan struct{}
	once    sync.Once
	done    chan struct{}
}

type queued struct {
	rec *kgo.Record
	at  time.Time
	// Records of a retry tier: what the record says is due, or why it
	// says nothing (it is then passed over).
	wake    wakeup
	wakeErr error
}

func newWorker(r *Runner, topic string, partition int32, tier int, epoch, next int64) *worker {
	return &worker{r: r, topic: topic, partition: partition, tier: tier, epoch: epoch, next: next, high: -1,
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
		if rec.Offset < from {
			continue
		}
		q := queued{rec: rec, at: now}
		if w.tier > 0 {
			q.wake, q.wakeErr = readWakeup(w.r.g.name, rec)
		}
		w.queue = append(w.queue, q)
		from = rec.Offset + 1
	}
	n := len(w.queue)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return n
}

// requeue puts records taken from the queue back at its front.
func (w *worker) requeue(qs []queued) {
	if len(qs) == 0 {
		return
	}
	w.mu.Lock()
	w.queue = append(append([]queued(nil), qs...), w.queue...)
	w.mu.Unlock()
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
// worker is stopped. Of a retry tier it returns only records that are due:
// while the first is not, it pauses the partition's fetching (the records
// behind it were forwarded later, so are due later) and sleeps.
func (w *worker) take(max int) []queued {
	for {
		if w.isStopped() {
			return nil
		}
		now := time.Now()
		w.mu.Lock()
		n := min(len(w.queue), max)
		if w.tier > 0 {
			for i := 0; i < n; i++ {
				if q := &w.queue[i]; q.wakeErr == nil && q.wake.notBefore.After(now) {
					n = i
					break
				}
			}
		}
		if n > 0 {
			batch := append([]queued(nil), w.queue[:n]...)
			w.queue = w.queue[n:]
			w.mu.Unlock()
			return batch
		}
		wait := time.Duration(-1)
		if len(w.queue) > 0 {
			wait = w.queue[0].wake.notBefore.Sub(now)
		}
		w.mu.Unlock()
		if wait < 0 {
			select {
			case <-w.kick:
			case <-w.stopped:
			}
			continue
		}
		w.r.pause(w)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-w.stopped:
		}
		t.Stop()
	}
}

func (w *worker) run() {
	defer close(w.done)
	for {
		batch := w.take(w.r.batch)
		if batch != nil && w.r.rebuild != nil {
			batch = w.r.rebuild.under(w, batch)
		}
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

// process applies batch: it parks the records that fail and applies the
// batch again without them, and retries in place, with back-off, while the
// database (or what a handler depends on) fails or the group is paused.
func (w *worker) process(batch []queued) error {
	failed := map[origin]failure{}
	strict := false
	bo := newBackoff()
	for {
		err := w.apply(batch, failed, strict)
		var rf *recordFailure
		switch {
		case err == nil:
			return nil
		case errors.As(err, &rf) && rf.class != environmental:
			if _, again := failed[rf.orig]; again {
				// Parking the record failed too: what fails is not the
				// record but the runtime's own writes.
				err = fmt.Errorf("parking %s/%d@%d: %w", rf.orig.topic, rf.orig.partition, rf.orig.offset, rf)
				break
			}
			failed[rf.orig] = rf.failure
			continue
		case isFenced(err):
			return err
		case isDataError(err) && !strict:
			// A queued write was refused, its error surfacing only at a
			// later statement: apply again, sending each record's
			// writes before the next record's, to learn whose it was.
			strict = true
			continue
		}
		d := bo.NextBackOff()
		if isPaused(err) {
			d = min(d, time.Second)
			w.r.log.Debug("the group is paused; waiting", "topic", w.topic, "partition", w.partition)
		} else {
			w.r.m.retries.Inc()
			w.r.log.Error("applying a batch failed; retrying in place", "topic", w.topic, "partition", w.partition,
				"from_offset", batch[0].rec.Offset, "err", err, "retry_in", d)
		}
		select {
		case <-time.After(d):
		case <-w.stopped:
			return fmt.Errorf("stopped while retrying: %w", err)
		}
	}
}

// apply applies batch in one transaction (see applyMain, applyRetry).
func (w *worker) apply(batch []queued, failed map[origin]failure, strict bool) error {
	if w.tier > 0 {
		return w.applyRetry(batch, failed, strict)
	}
	return w.applyMain(batch, failed, strict)
}

// SQLSTATEs consumer_advance raises: the partition's epoch is stale, or
// the group is paused (a rebuild is swapping its state in).
const (
	fencedCode = "TL001"
	pausedCode = "TL002"
)

func isFenced(err error) bool { return sqlState(err) == fencedCode }

func isPaused(err error) bool { return sqlState(err) == pausedCode }

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// isDataError reports a database refusing data (classes 22, data
// exception, and 23, integrity constraint violation).
func isDataError(err error) bool {
	c := sqlState(err)
	return len(c) == 5 && (c[:2] == "22" || c[:2] == "23")
}
