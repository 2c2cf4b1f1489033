package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/topics"
)

// Option configures a Runner.
type Option func(*Runner)

// WithKafkaOptions adds franz-go options (brokers, TLS, hooks such as kprom)
// to the group's client. The runner sets the group, topics, commit and
// rebalance behaviour itself.
func WithKafkaOptions(opts ...kgo.Opt) Option {
	return func(r *Runner) { r.kopts = append(r.kopts, opts...) }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(r *Runner) { r.log = l } }

// WithRegisterer registers the runner's metrics with reg (default: none).
func WithRegisterer(reg prometheus.Registerer) Option { return func(r *Runner) { r.reg = reg } }

// WithBatchSize sets the most records of a partition applied in one
// transaction (default 500).
func WithBatchSize(n int) Option { return func(r *Runner) { r.batch = n } }

// WithCommitInterval sets how often the positions applied are committed to
// Kafka, for lag tools (default 1s). Correctness never depends on them.
func WithCommitInterval(d time.Duration) Option { return func(r *Runner) { r.commitEvery = d } }

// WithRetryDelays sets the delays of the group's retry tiers, tier 1
// first (default topics.RetryDelays: 5s, 1m, 10m). Their number is the
// number of tiers a transiently failing record goes through before the
// dead-letter topic; the topics tally.<group>.retry.1 to .retry.<n> must
// exist (tally topics apply with the same TALLY_RETRY_DELAYS creates them).
func WithRetryDelays(ds ...time.Duration) Option {
	return func(r *Runner) { r.delays = ds }
}

// WithNotifier wakes relays after commits that forwarded records, so that
// retries and dead letters reach Kafka at once rather than at the relays'
// next poll (default: none).
func WithNotifier(n *outbox.Notifier) Option { return func(r *Runner) { r.notifier = n } }

// WithDrainTimeout bounds how long a stopping member, or one giving up a
// partition, waits for the batch in flight to commit (default 10s). What is
// not committed is applied by the partition's next owner.
func WithDrainTimeout(d time.Duration) Option { return func(r *Runner) { r.drain = d } }

// Runner runs one member of a consumer group. Several runners of the same
// group, in any processes, share its partitions.
type Runner struct {
	g           *Group
	pool        *pgxpool.Pool
	cl          *kgo.Client
	log         *slog.Logger
	reg         prometheus.Registerer
	kopts       []kgo.Opt
	batch       int
	commitEvery time.Duration
	drain       time.Duration
	delays      []time.Duration
	notifier    *outbox.Notifier
	member      string
	m           *metrics
	rebuild     *rebuildRun // set for a rebuild's runner: see Rebuild

	// mu guards workers. Lock order: Runner.mu before worker.mu.
	mu      sync.Mutex
	workers map[partitionKey]*worker
}

type partitionKey struct {
	topic     string
	partition int32
}

// New returns a member of group g that applies to pool.
func New(pool *pgxpool.Pool, g *Group, opts ...Option) (*Runner, error) {
	return newRunner(pool, g, nil, opts...)
}

// newRunner returns a member of g, or with rb a rebuild's runner (see
// Rebuild).
func newRunner(pool *pgxpool.Pool, g *Group, rb *rebuildRun, opts ...Option) (*Runner, error) {
	b := make([]byte, 6)
	rand.Read(b)
	r := &Runner{
		g: g, pool: pool, log: slog.Default(), batch: 500, commitEvery: time.Second, drain: 10 * time.Second,
		delays: topics.RetryDelays, member: g.name + "-" + hex.EncodeToString(b), workers: make(map[partitionKey]*worker),
		rebuild: rb,
	}
	for _, o := range opts {
		o(r)
	}
	if rb != nil {
		r.notifier = nil // the rebuild's outbox is never published
	}
	if r.batch < 1 || r.commitEvery <= 0 || r.drain <= 0 {
		return nil, errors.New("consumer: batch size, commit interval and drain timeout must be positive")
	}
	if len(r.delays) == 0 {
		return nil, errors.New("consumer: a group needs at least one retry tier")
	}
	for _, d := range r.delays {
		if d <= 0 {
			return nil, errors.New("consumer: retry delays must be positive")
		}
	}
	if len(g.topics) == 0 {
		return nil, fmt.Errorf("consumer: group %s reads no topic", g.name)
	}
	r.log = r.log.With("group", g.name)
	r.m = newMetrics(g.name, r)
	if r.reg != nil {
		if err := r.m.register(r.reg); err != nil {
			return nil, fmt.Errorf("registering consumer metrics: %w", err)
		}
	}
	kafkaGroup := "tally." + g.name
	if rb != nil {
		kafkaGroup += ".rebuild"
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.ClientID("tally-" + g.name),
		kgo.ConsumerGroup(kafkaGroup),
		kgo.ConsumeTopics(r.topics()...),
		kgo.DisableAutoCommit(),
		kgo.AdjustFetchOffsetsFn(r.adjust),
		kgo.OnPartitionsAssigned(r.assigned),
		kgo.OnPartitionsRevoked(r.revoked),
		kgo.OnPartitionsLost(r.lost),
		// A partition resumed (a retry tier's record come due, a queue
		// drained) joins the next fetch request, which waits for the one in
		// flight: a long wait of idle partitions would delay it by as much.
		kgo.FetchMaxWait(fetchMaxWait),
	}, r.kopts...)...)
	if err != nil {
		return nil, fmt.Errorf("creating Kafka client: %w", err)
	}
	r.cl = cl
	return r, nil
}

// fetchMaxWait bounds how long a fetch waits for records, and so how long
// a resumed partition waits for the fetch in flight to return (Kafka's
// default, 5s, would add up to that to every retry delay). It costs an idle
// member two fetch requests a second per broker.
const fetchMaxWait = 500 * time.Millisecond

// topics are what the group's members read: the group's topics and its
// retry tiers (a rebuild reads the group's topics only).
func (r *Runner) topics() []string {
	ts := slices.Clone(r.g.topics)
	if r.rebuild != nil {
		return ts
	}
	for n := range r.delays {
		ts = append(ts, topics.RetryTopic(r.g.name, n+1))
	}
	return ts
}

// tierOf returns the retry tier topic is, from 1, or 0 for a topic of the
// group.
func (r *Runner) tierOf(topic string) int {
	for n := range r.delays {
		if topic == topics.RetryTopic(r.g.name, n+1) {
			return n + 1
		}
	}
	return 0
}

// Run consumes until ctx ends, then stops fetching, lets the batches in
// flight commit (within the drain timeout), commits the positions to Kafka
// and leaves the group. It returns nil after a clean stop, and an error at
// once when a topic it reads or forwards to does not exist.
func (r *Runner) Run(ctx context.Context) error {
	if err := r.checkTopics(ctx); err != nil {
		r.cl.Close()
		if ctx.Err() != nil {
			return nil // stopped before it started: a clean stop
		}
		return err
	}
	done := make(chan struct{})
	go func() { defer close(done); r.commitLoop(ctx) }()
	for {
		fs := r.cl.PollRecords(ctx, 10_000)
		if ctx.Err() != nil || fs.IsClientClosed() {
			break
		}
		fs.EachError(func(t string, p int32, err error) {
			r.log.Warn("fetching", "topic", t, "partition", p, "err", err)
		})
		fs.EachPartition(r.dispatch)
	}
	<-done
	r.stopAll()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.drain)
	defer cancel()
	r.commitHints(cctx, r.cl, nil)
	r.cl.Close() // leaves the group; revoked runs with no partition left to stop
	return nil
}

// checkTopics fails if a topic the group reads or forwards to is missing:
// a forward to a missing topic would stall its outbox shard.
func (r *Runner) checkTopics(ctx context.Context) error {
	want := append(r.topics(), topics.DeadLetterTopic(r.g.name))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tds, err := kadm.NewClient(r.cl).ListTopics(ctx, want...)
	if err != nil {
		return fmt.Errorf("listing the group's topics: %w", err)
	}
	var missing []string
	for _, t := range want {
		if td, ok := tds[t]; !ok || td.Err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("consumer group %s: topics %s do not exist (tally topics apply creates them, for as many retry tiers as TALLY_RETRY_DELAYS has delays)",
			r.g.name, strings.Join(missing, ", "))
	}
	return nil
}

// Ping reports whether the member can reach a Kafka broker; with the
// database's own check, it is the member's readiness.
func (r *Runner) Ping(ctx context.Context) error { return r.cl.Ping(ctx) }

// dispatch hands a fetched partition's records to its worker. Records of a
// partition that is no longer ours are dropped: its new owner reads them
// again from the position in PostgreSQL.
func (r *Runner) dispatch(p kgo.FetchTopicPartition) {
	key := partitionKey{p.Topic, p.Partition}
	r.mu.Lock()
	w := r.workers[key]
	r.mu.Unlock()
	if w == nil {
		return
	}
	w.sawHighWatermark(p.HighWatermark)
	if len(p.Records) == 0 {
		return
	}
	if n := w.enqueue(p.Records); n >= 4*r.batch {
		// Bound memory: fetch no more of it until the worker catches up.
		r.pause(w)
	}
}

// pause stops fetching w's partition.
func (r *Runner) pause(w *worker) {
	if w.setPaused(true) {
		r.cl.PauseFetchPartitions(map[string][]int32{w.topic: {w.partition}})
	}
}

// resume lets a paused partition fetch again.
func (r *Runner) resume(w *worker) {
	if w.setPaused(false) {
		r.cl.ResumeFetchPartitions(map[string][]int32{w.topic: {w.partition}})
	}
}

// adjust takes the partitions just assigned: it bumps their epoch in
// PostgreSQL, starts their workers, and returns the positions stored there
// as the offsets to fetch from. A partition the group never applied starts
// at the beginning of the log.
func (r *Runner) adjust(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	r.log.Debug("taking partitions", "member", r.member, "partitions", len(offsets))
	for topic, parts := range offsets {
		for p := range parts {
			var next, epoch int64
			err := r.pool.QueryRow(ctx, `
				INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, epoch, owner, paused_until)
				VALUES ($1, $2, $3, -1, 1, $4, (SELECT max(paused_until) FROM consumer_offsets WHERE group_id = $1))
				ON CONFLICT (group_id, topic, partition)
				DO UPDATE SET epoch = consumer_offsets.epoch + 1, owner = excluded.owner, updated_at = now()
				RETURNING next_offset, epoch`, r.g.name, topic, p, r.member).Scan(&next, &epoch)
			if err != nil {
				return nil, fmt.Errorf("taking %s/%d: %w", topic, p, err)
			}
			if next >= 0 {
				parts[p] = kgo.NewOffset().At(next).WithEpoch(-1)
			} else {
				parts[p] = kgo.NewOffset().AtStart()
			}
			w := newWorker(r, topic, p, r.tierOf(topic), epoch, next)
			r.mu.Lock()
			if old := r.workers[partitionKey{topic, p}]; old != nil {
				old.stop() // a stale worker of an earlier assignment; its epoch is now fenced
			}
			r.workers[partitionKey{topic, p}] = w
			r.mu.Unlock()
			go w.run()
		}
	}
	return offsets, nil
}

// The group callbacks use the client they are given: the group may call
// them before New has stored its client.

func (r *Runner) assigned(_ context.Context, cl *kgo.Client, m map[string][]int32) {
	r.log.Debug("partitions assigned", "member", r.member, "partitions", m)
	r.m.rebalances.WithLabelValues("assigned").Add(float64(count(m)))
	// A partition paused before it was taken away stays paused when it
	// comes back, unless told otherwise.
	cl.ResumeFetchPartitions(m)
}

// revoked stops the workers of partitions moving elsewhere, lets their
// batch in flight commit, and commits their positions to Kafka while the
// group still allows it.
func (r *Runner) revoked(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	r.log.Debug("partitions revoked", "member", r.member, "partitions", m)
	if len(m) == 0 {
		return
	}
	r.m.rebalances.WithLabelValues("revoked").Add(float64(count(m)))
	hints := r.release(m)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.drain)
	defer cancel()
	r.commitHints(cctx, cl, hints)
	cl.ResumeFetchPartitions(m)
}

// lost stops the workers of partitions the group took away abruptly
// (session expired): commits to Kafka would fail, and the epoch already
// fences anything still in flight.
func (r *Runner) lost(_ context.Context, cl *kgo.Client, m map[string][]int32) {
	r.log.Debug("partitions lost", "member", r.member, "partitions", m)
	r.m.rebalances.WithLabelValues("lost").Add(float64(count(m)))
	r.release(m)
	cl.ResumeFetchPartitions(m)
}

// release stops and forgets the workers of m, waiting (within the drain
// timeout) for their batch in flight, and returns their positions.
func (r *Runner) release(m map[string][]int32) map[string]map[int32]kgo.EpochOffset {
	var ws []*worker
	r.mu.Lock()
	for topic, parts := range m {
		for _, p := range parts {
			key := partitionKey{topic, p}
			if w := r.workers[key]; w != nil {
				ws = append(ws, w)
				delete(r.workers, key)
			}
		}
	}
	r.mu.Unlock()
	return r.stopWorkers(ws)
}

// stopAll stops every worker, as the member leaves.
func (r *Runner) stopAll() {
	r.mu.Lock()
	var ws []*worker
	for key, w := range r.workers {
		ws = append(ws, w)
		delete(r.workers, key)
	}
	r.mu.Unlock()
	r.stopWorkers(ws)
}

func (r *Runner) stopWorkers(ws []*worker) map[string]map[int32]kgo.EpochOffset {
	for _, w := range ws {
		w.stop()
	}
	deadline := time.After(r.drain)
	hints := map[string]map[int32]kgo.EpochOffset{}
	for _, w := range ws {
		select {
		case <-w.done:
		case <-deadline:
			r.log.Warn("a partition's batch did not finish within the drain timeout; its next owner applies it",
				"topic", w.topic, "partition", w.partition)
		}
		if next := w.position(); next >= 0 {
			if hints[w.topic] == nil {
				hints[w.topic] = map[int32]kgo.EpochOffset{}
			}
			hints[w.topic][w.partition] = kgo.EpochOffset{Epoch: -1, Offset: next}
		}
	}
	return hints
}

// commitLoop commits the applied positions to Kafka every commit interval,
// for lag tools.
func (r *Runner) commitLoop(ctx context.Context) {
	t := time.NewTicker(r.commitEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, r.commitEvery)
		r.commitHints(cctx, r.cl, nil)
		cancel()
	}
}

// commitHints commits hints, or the positions of every worker when hints is
// nil, to Kafka, synchronously. Failures are logged and otherwise ignored:
// the positions that count are in PostgreSQL.
func (r *Runner) commitHints(ctx context.Context, cl *kgo.Client, hints map[string]map[int32]kgo.EpochOffset) {
	if hints == nil {
		hints = map[string]map[int32]kgo.EpochOffset{}
		r.mu.Lock()
		for key, w := range r.workers {
			if next := w.position(); next >= 0 {
				if hints[key.topic] == nil {
					hints[key.topic] = map[int32]kgo.EpochOffset{}
				}
				hints[key.topic][key.partition] = kgo.EpochOffset{Epoch: -1, Offset: next}
			}
		}
		r.mu.Unlock()
	}
	if len(hints) == 0 {
		return
	}
	cl.CommitOffsetsSync(ctx, hints, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
		if err != nil && ctx.Err() == nil {
			r.log.Debug("committing positions to Kafka (a hint only)", "err", err)
		}
	})
}

func count(m map[string][]int32) int {
	n := 0
	for _, ps := range m {
		n += len(ps)
	}
	return n
}

func newBackoff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 10 * time.Second
	bo.MaxElapsedTime = 0 // never give up: nothing may be skipped
	bo.Reset()
	return bo
}
