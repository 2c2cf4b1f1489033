// Package relay publishes the outbox to Kafka.
//
// Guarantees. Every committed event is published at least once; duplicates
// (after a crash, a lost connection or a failed produce) carry the same ce_id.
// The events of one key reach their partition in commit order: a consumer
// that skips what it has seen reads each key's events in commit order. The
// one exception is a produce error Kafka does not retry (an authorization
// failure, a policy violation): the shard then republishes from its last
// acknowledged event, and a record that was already in flight behind the
// failed one may land before that republication. Its ce_sequence is then
// ahead of what the consumer has applied, and the consumer waits for the gap
// to be filled, which the republication does.
//
// Any number of relays may run against one database: the outbox's shards
// are divided among them, each shard owned by one relay at a time through a
// PostgreSQL advisory lock held on a dedicated connection, so a relay that
// dies (kill -9, a dropped connection) frees its shards at once and the
// survivors take them over from the stored cursors. A relay notices that it
// lost that connection within a few seconds at most (every query on it has
// a deadline); until then it may still publish what it reads, so two relays
// can publish a shard for that long: more duplicates, never a loss, and each
// relay's output for a key still in order.
//
// How it works. A relay reads each owned shard by position (seq > the last
// seq it handed to Kafka), in one query across shards, and produces every
// event asynchronously through one idempotent franz-go producer. Reads are
// sized to fit the producer's buffer and fully read before producing, so a
// slow Kafka never holds a database snapshot open. A shard's cursor only
// moves over the contiguous prefix Kafka has acknowledged. When a read comes
// back short the shard sleeps until a PostgreSQL notification (see
// outbox.Notifier) or the fallback poll says there may be more, so an idle
// relay costs nothing and a busy one never waits for a poll.
//
// Lock order: Relay.producing before Relay.mu. mu is never held across a
// database or Kafka call; producing (read) is held across the producer's
// Produce, which never waits for room (reads fit the producer's buffer).
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/outbox"
)

// Advisory lock classes (the first key of the two-key form). The second key
// is the shard for lockShard and a random member id for lockMember.
const (
	lockShard  int32 = 0x54_41_4c_01
	lockMember int32 = 0x54_41_4c_02
)

// Option configures a Relay.
type Option func(*Relay)

// WithBatchSize sets the most events read per shard per query (default 1000).
// Up to two batches per shard are in flight to Kafka at once.
func WithBatchSize(n int) Option { return func(r *Relay) { r.batch = n } }

// WithPollInterval sets the fallback poll (default 1s): how long a relay that
// missed a notification may take to notice new events.
func WithPollInterval(d time.Duration) Option { return func(r *Relay) { r.poll = d } }

// WithRebalanceInterval sets how often a relay counts its peers and takes or
// gives up shards (default 1s). A relay that died is noticed at once through
// its locks; this bounds how long its shards stay unowned.
func WithRebalanceInterval(d time.Duration) Option { return func(r *Relay) { r.rebalance = d } }

// WithDrainTimeout bounds how long a stopping relay waits for Kafka to
// acknowledge what it has in flight (default 10s); what is not acknowledged
// by then is published again by the shard's next owner. Keep it below the
// process's shutdown timeout.
func WithDrainTimeout(d time.Duration) Option { return func(r *Relay) { r.drain = d } }

// WithRetention makes the relay delete published events written more than
// d ago, checking every hour; the outbox is also the audit trail, so this is
// how long it lasts. Zero, the default, keeps events forever. Unpublished
// events are never deleted.
func WithRetention(d time.Duration) Option { return func(r *Relay) { r.retention = d } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(r *Relay) { r.log = l } }

// WithRegisterer registers the relay's metrics with reg (default: none).
func WithRegisterer(reg prometheus.Registerer) Option { return func(r *Relay) { r.reg = reg } }

// WithKafkaOptions adds franz-go options (brokers, TLS, hooks such as kprom)
// to the relay's producer. The relay sets its own linger and client id.
func WithKafkaOptions(opts ...kgo.Opt) Option {
	return func(r *Relay) { r.kopts = append(r.kopts, opts...) }
}

// Relay publishes outbox events to Kafka. Create it with New and start it
// with Run.
type Relay struct {
	pool      *pgxpool.Pool
	client    *kgo.Client
	log       *slog.Logger
	reg       prometheus.Registerer
	kopts     []kgo.Opt
	batch     int
	poll      time.Duration
	rebalance time.Duration
	retention time.Duration
	drain     time.Duration
	m         *metrics

	wake  chan struct{} // cap 1: something may be readable
	gen   atomic.Uint64 // bumped by every notification and poll
	ready atomic.Bool

	// producing is held (read) by produce from its check of the shard to
	// the producer's Produce; abandon takes it (write) between marking the
	// shards given up and aborting the producer's records, so that no
	// record checked before can be buffered after the abort and land ahead
	// of the records it aborted.
	producing sync.RWMutex

	mu     sync.Mutex
	shards map[int16]*shard
}

// shard is the relay's state of one owned shard, guarded by Relay.mu.
type shard struct {
	id        int16
	readPos   int64  // last seq handed to the producer
	ackPos    int64  // every seq <= ackPos is acknowledged by Kafka
	savedPos  int64  // position stored in relay_cursors
	win       window // seqs handed to the producer and not yet behind ackPos
	inflight  int    // records whose promise has not run
	draining  bool   // being given up: read nothing more
	err       error  // first produce error since the last rewind
	failures  int
	retryAt   time.Time
	exhausted uint64 // gen at which a read of this shard came back short
}

// New returns a relay that reads pool's outbox and produces to the brokers
// given through WithKafkaOptions (kgo.SeedBrokers).
func New(pool *pgxpool.Pool, opts ...Option) (*Relay, error) {
	r := &Relay{
		pool:      pool,
		log:       slog.Default(),
		batch:     1000,
		poll:      time.Second,
		rebalance: time.Second,
		drain:     10 * time.Second,
		wake:      make(chan struct{}, 1),
		shards:    make(map[int16]*shard),
	}
	for _, o := range opts {
		o(r)
	}
	if r.batch < 1 || r.poll <= 0 || r.rebalance <= 0 || r.drain <= 0 || r.retention < 0 {
		return nil, errors.New("relay: batch size, poll, rebalance and drain durations must be positive, retention not negative")
	}
	r.m = newMetrics(pool)
	if r.reg != nil {
		if err := r.m.register(r.reg); err != nil {
			return nil, fmt.Errorf("registering relay metrics: %w", err)
		}
	}
	kopts := append([]kgo.Opt{
		kgo.ClientID("tally-relay"),
		// Lingering would add its whole delay to every event's latency at low
		// rates; under load, records batch up behind the request in flight.
		kgo.ProducerLinger(0),
		// plan keeps the records in flight within this, so a produce never
		// waits for room.
		kgo.MaxBufferedRecords(r.maxBuffered()),
	}, r.kopts...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("creating Kafka producer: %w", err)
	}
	r.client = cl
	return r, nil
}

// maxInflight bounds the records of one shard handed to the producer and
// not yet acknowledged.
func (r *Relay) maxInflight() int { return 2 * r.batch }

// maxBuffered is the producer's buffer, which bounds the records of all
// shards in flight together.
func (r *Relay) maxBuffered() int { return max(64*r.batch, 10_000) }

// Ready reports whether the relay holds its membership in PostgreSQL and so
// can own shards.
func (r *Relay) Ready() bool { return r.ready.Load() }

// Run publishes until ctx ends, then stops reading, waits for what is in
// flight to be acknowledged, saves its cursors, gives up its shards and
// closes its producer. It returns nil after a clean stop.
func (r *Relay) Run(ctx context.Context) error {
	defer r.client.Close()
	// Records handed to the producer outlive ctx, so that a stopping relay
	// delivers them instead of failing them; but only for the drain
	// timeout, so that a stop while Kafka is unreachable still ends.
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer pcancel()
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(r.drain, pcancel) })
	defer stopDrain()

	var wg sync.WaitGroup
	pumpDone := make(chan struct{})
	wg.Add(3)
	if r.retention > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); r.prune(ctx, time.Hour) }()
	}
	go func() { defer wg.Done(); r.listen(ctx) }()
	go func() { defer wg.Done(); defer close(pumpDone); r.pump(ctx, pctx) }()
	go func() { defer wg.Done(); r.saveLoop(ctx, pumpDone) }()
	r.own(ctx, pumpDone)
	wg.Wait()
	return nil
}

func (r *Relay) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// notified records that new events may be readable in any shard.
func (r *Relay) notified() {
	r.gen.Add(1)
	r.signal()
}

// listen turns PostgreSQL notifications into wake-ups, reconnecting as
// needed. Notifications are hints; the poll in pump is the safety net.
func (r *Relay) listen(ctx context.Context) {
	bo := newBackoff()
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, bo)
		if ctx.Err() != nil {
			return
		}
		r.m.errors.WithLabelValues("listen").Inc()
		d := bo.NextBackOff()
		r.log.Warn("relay notification listener failed; the poll covers meanwhile", "err", err, "retry_in", d)
		sleep(ctx, d)
	}
}

func (r *Relay) listenOnce(ctx context.Context, bo backoff.BackOff) error {
	conn, err := r.connect(ctx, "tally-relay-listen")
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+outbox.Channel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	bo.Reset()
	r.notified() // anything committed while we were not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("waiting for notifications: %w", err)
		}
		r.notified()
	}
}

// pump reads owned shards and hands their events to the producer, under
// pctx, until ctx ends.
func (r *Relay) pump(ctx, pctx context.Context) {
	poll := time.NewTimer(r.poll)
	defer poll.Stop()
	bo := newBackoff()
	for {
		// The poll runs while busy too: one shard with a backlog must not
		// postpone it for shards that were read to their end.
		select {
		case <-poll.C:
			poll.Reset(r.poll)
			r.notified()
		default:
		}
		p := r.plan()
		if len(p.wants) == 0 {
			var retry <-chan time.Time
			if p.retryIn > 0 {
				retry = time.After(p.retryIn)
			}
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
			case <-retry:
			case <-poll.C:
				poll.Reset(r.poll)
				r.notified()
			}
			continue
		}
		recs, err := outbox.Fetch(ctx, r.pool, p.wants)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.m.errors.WithLabelValues("read").Inc()
			d := bo.NextBackOff()
			r.log.Error("relay reading the outbox", "err", err, "retry_in", d)
			sleep(ctx, d)
			continue
		}
		bo.Reset()
		var counts [outbox.Shards]int
		for _, rec := range recs {
			counts[rec.Shard]++
			r.produce(pctx, rec, p.shards[rec.Shard])
		}
		r.mu.Lock()
		for _, w := range p.wants {
			if s := p.shards[w.Shard]; r.shards[w.Shard] == s && counts[w.Shard] < w.Limit {
				s.exhausted = p.gen
			}
		}
		r.mu.Unlock()
	}
}

// read is what the pump is about to read, with the state object of each
// shard as it was when planned: rows of a shard that was given up and taken
// again meanwhile (after a lost lock connection) belong to a read from its
// old position and must not move its new one.
type read struct {
	wants   []outbox.Want
	shards  [outbox.Shards]*shard
	gen     uint64
	retryIn time.Duration
}

// plan picks the shards worth reading now: owned, not draining or failed,
// with room in flight, and not known to be read to the end since the last
// notification. The reads fit in the producer's buffer, so producing never
// blocks. It also rewinds failed shards whose retry is due, and says how
// long until the next one is.
func (r *Relay) plan() read {
	p := read{gen: r.gen.Load()}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	budget := r.maxBuffered()
	for _, s := range r.shards {
		budget -= s.inflight
	}
	for _, s := range r.shards {
		if s.draining || budget <= 0 {
			continue
		}
		if s.err != nil {
			if s.inflight > 0 {
				continue
			}
			if wait := s.retryAt.Sub(now); wait > 0 {
				if p.retryIn == 0 || wait < p.retryIn {
					p.retryIn = wait
				}
				continue
			}
			// Everything after the failed record goes again; what of it
			// Kafka already has becomes a duplicate with the same ce_id.
			s.readPos, s.err, s.exhausted = s.ackPos, nil, 0
			s.win.reset()
		}
		if s.exhausted == p.gen {
			continue
		}
		room := min(r.maxInflight()-s.inflight, r.batch, budget)
		if room <= 0 {
			continue
		}
		budget -= room
		p.wants = append(p.wants, outbox.Want{Shard: s.id, After: s.readPos, Limit: room})
		p.shards[s.id] = s
	}
	return p
}

// produce hands one event to the producer, unless its shard was given up,
// taken again or failed since it was planned: then whoever reads the shard
// next reads the event again.
func (r *Relay) produce(ctx context.Context, rec *outbox.Record, planned *shard) {
	r.producing.RLock()
	defer r.producing.RUnlock()
	r.mu.Lock()
	s := r.shards[rec.Shard]
	if s != planned || s.draining || s.err != nil || rec.Seq <= s.readPos {
		r.mu.Unlock()
		return
	}
	gap := rec.Seq - s.readPos - 1
	s.readPos = rec.Seq
	s.win.push(rec.Seq)
	s.inflight++
	r.mu.Unlock()

	if gap > 0 {
		// Positions are gapless by construction; rows were deleted
		// outside the outbox's contract. What is gone cannot be
		// published; say so rather than stall the shard for ever.
		r.m.errors.WithLabelValues("gap").Inc()
		r.log.Error("relay found events missing from the outbox", "shard", rec.Shard, "missing", gap,
			"before_seq", rec.Seq)
	}
	kr := rec.Forward
	if kr == nil {
		kr = rec.Event.Record(rec.Topic)
		kr.Key = []byte(rec.Key)
	}
	written := rec.Event.Time
	r.client.Produce(ctx, kr, func(kr *kgo.Record, err error) {
		r.acked(s, rec.Seq, kr.Topic, written, err)
	})
}

// acked runs in the producer's promise goroutine, serially.
func (r *Relay) acked(s *shard, seq int64, topic string, written time.Time, err error) {
	r.mu.Lock()
	s.inflight--
	first := false
	if err == nil {
		s.ackPos = max(s.ackPos, s.win.ack(seq))
		s.failures = 0
	} else if s.err == nil {
		first = true
		s.err = err
		s.failures++
		s.retryAt = time.Now().Add(retryDelay(s.failures))
	}
	wakeNeeded := s.inflight == 0 || s.inflight == r.maxInflight()/2
	id, failures, retryAt := s.id, s.failures, s.retryAt
	r.mu.Unlock()

	if err != nil {
		r.m.errors.WithLabelValues("produce").Inc()
		if first {
			r.log.Error("relay producing an event; its shard rewinds and retries", "shard", id, "seq", seq,
				"topic", topic, "err", err, "failures", failures, "retry_in", time.Until(retryAt).Round(time.Millisecond))
		}
	} else {
		r.m.published.WithLabelValues(topic).Inc()
		r.m.latency.Observe(time.Since(written).Seconds())
	}
	if wakeNeeded || err != nil {
		r.signal()
	}
}

func retryDelay(failures int) time.Duration {
	d := 100 * time.Millisecond << min(failures-1, 8)
	return min(d, 30*time.Second)
}

// saveLoop stores acknowledged positions every few milliseconds, so a crash
// repeats little, and once more after the pump stopped.
func (r *Relay) saveLoop(ctx context.Context, pumpDone <-chan struct{}) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-pumpDone:
			return // own saves the last positions while giving shards up
		}
		if err := r.save(ctx); err != nil && ctx.Err() == nil {
			r.m.errors.WithLabelValues("cursor").Inc()
			r.log.Warn("relay saving cursors", "err", err)
		}
	}
}

// save stores the acknowledged position of every shard that moved.
func (r *Relay) save(ctx context.Context) error {
	var ids []int16
	var pos []int64
	r.mu.Lock()
	for _, s := range r.shards {
		if s.ackPos > s.savedPos {
			ids, pos = append(ids, s.id), append(pos, s.ackPos)
		}
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := outbox.SaveCursors(ctx, r.pool, ids, pos); err != nil {
		return err
	}
	r.mu.Lock()
	for i, id := range ids {
		if s := r.shards[id]; s != nil {
			s.savedPos = max(s.savedPos, pos[i])
		}
	}
	r.mu.Unlock()
	return nil
}

// prune deletes published events older than the retention every interval,
// in the shards this relay owns, so that relays never prune the same rows.
func (r *Relay) prune(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var owned []int16
		r.mu.Lock()
		for id, s := range r.shards {
			if !s.draining {
				owned = append(owned, id)
			}
		}
		r.mu.Unlock()
		n, err := outbox.Prune(ctx, r.pool, owned, time.Now().Add(-r.retention), 1000)
		switch {
		case err != nil && ctx.Err() == nil:
			r.m.errors.WithLabelValues("prune").Inc()
			r.log.Warn("relay pruning the outbox", "err", err)
		case n > 0:
			r.log.Info("relay pruned published events past their retention", "deleted", n, "retention", r.retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func newBackoff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.MaxElapsedTime = 0 // never give up: the relay must not stop publishing
	bo.Reset()            // the constructor computed its first delay from the defaults
	return bo
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// connect opens a dedicated connection, named so operators (and tests) can
// tell the relay's sessions apart in pg_stat_activity.
func (r *Relay) connect(ctx context.Context, name string) (*pgx.Conn, error) {
	cfg := r.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = name
	return pgx.ConnectConfig(ctx, cfg)
}

func randomMember() int32 { return rand.Int32N(1<<31 - 1) }
