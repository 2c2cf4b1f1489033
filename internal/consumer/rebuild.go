package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/progress"
)

// rebuildLease is how long a rebuild's lease (consumer_rebuilds) and its
// pause of the live group last unless renewed; a rebuild renews both six
// times as often, so only a dead one lets them lapse.
const rebuildLease = 30 * time.Second

// catchUpLag is how close to the live group a rebuild comes before it
// pauses the live group to take its last steps: a rebuild never passes the
// live group, so while the live group keeps applying it trails it by a
// little; the pause lasts the time it takes to apply this many records.
const catchUpLag = 2000

// catchUpTimeout bounds how long the live group stays paused while the
// rebuild takes its last steps to the live positions; past it, the live
// group resumes and the rebuild tries again.
const catchUpTimeout = 2 * time.Minute

// stateTables are the runtime's tables a rebuild keeps a shadow copy of:
// its positions, marks and parked records, and an outbox of its own, which
// swallows what the group's handlers and forwards write (those events were
// published when the live group wrote them).
var stateTables = []string{"consumer_offsets", "consumer_applied", "consumer_parked", "consumer_parked_keys",
	"outbox", "outbox_heads"}

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// Projections declares the tables the group's handlers write its
// projections to, parents first (Rebuild empties them children first and
// fills them parents first). It returns g.
func (g *Group) Projections(tables ...string) *Group {
	for _, t := range tables {
		if !identifier.MatchString(t) {
			panic(fmt.Sprintf("consumer: group %s declares projection %q, not a plain table name", g.name, t))
		}
	}
	g.tables = append(g.tables, tables...)
	return g
}

// RebuildConfig says how to rebuild.
type RebuildConfig struct {
	// From, when set, starts the rebuild at the first record of each
	// partition at or after this time instead of at the start of the
	// topics: the rebuilt projections then hold only what the records
	// since From make of them. Useful when older records are gone.
	From time.Time
	// Progress is where the progress bar goes (nil: nowhere).
	Progress io.Writer
}

// RebuildReport is what a rebuild did.
type RebuildReport struct {
	Applied int64            // records the rebuild read and applied or passed over
	Rows    map[string]int64 // rows of each projection table swapped in
	Parked  int64            // records parked in the rebuilt state (failed, or behind a failed one)
	Emitted int64            // events the handlers emitted for records the live group had not applied, published
	Paused  time.Duration    // how long the live group was paused
}

// Rebuild rebuilds group g's projections from its topics and swaps them
// in, with the group's state. It reads the topics from the start (or
// RebuildConfig.From) with a runner of its own, under its own Kafka group,
// into a shadow schema (tally_rebuild_<group>) holding empty copies of the
// declared projection tables and of the runtime's state, while the live
// group goes on. The rebuild never applies a record the live group has not
// applied yet; once it has caught up, the live group is paused (its
// members wait, see consumer_advance), the rebuild takes its last steps to
// the live positions, and one transaction replaces the projections and the
// parked records with the rebuilt ones; then the live group resumes. The
// result is what the live group would hold had it applied every record
// again, with the handlers as they are now, and the operators' decisions
// taken again: a record skipped or purged is passed over, one replayed with
// a corrected payload gets it.
//
// Records the rebuild parks are parked in the swapped-in state, retried
// by the live group (a fresh retry record each) or, dead, sent to the
// dead-letter topic unless already there. Events the handlers emit are not
// published again, except for the records the live group had not applied
// (it had them parked) and the rebuild did: those events are new. A record
// the live group applied and the rebuild parks is applied again when the
// live group retries it; a handler that emits with Emit gives its events
// the same ids as before, so consumers pass them over as duplicates.
//
// The gotchas. The handlers must write only the declared projections: a
// table they write that is not declared is the live one, written twice.
// The shadow copies keep the projections' columns, defaults, checks and
// indexes but not their foreign keys or triggers, which apply when the
// swap copies the rows back. A rebuild from a point after the start of the
// topics (From, or records gone by retention) cannot know what the records
// before it left parked: it refuses to run while the group holds parked
// records there (ErrParkedBeforeStart); replay, skip or purge them first.
//
// Only one rebuild of a group runs at a time (ErrRebuilding), and
// operators cannot act on the group's parked records meanwhile. Should the
// rebuild die, its lease and the pause lapse after rebuildLease and the
// live group goes on unchanged; a new rebuild starts afresh. opts configure
// the rebuild's runner (Kafka options, logger, batch size).
func Rebuild(ctx context.Context, pool *pgxpool.Pool, g *Group, rc RebuildConfig, opts ...Option) (RebuildReport, error) {
	rep := RebuildReport{Rows: map[string]int64{}}
	if len(g.tables) == 0 {
		return rep, fmt.Errorf("consumer: group %s declares no projection tables to rebuild", g.name)
	}
	if !identifier.MatchString(g.name) {
		return rep, fmt.Errorf("consumer: group name %q cannot name a schema", g.name)
	}
	kopts := Runner{log: slog.Default()}
	for _, o := range opts {
		o(&kopts)
	}
	host, _ := os.Hostname()
	rb := &rebuildRun{live: pool, group: g.name, topics: g.topics, from: rc.From, log: kopts.log, notifier: kopts.notifier,
		owner:  fmt.Sprintf("rebuild %d@%s %s", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339)),
		shadow: "tally_rebuild_" + g.name, caps: map[partitionKey]int64{}, parts: map[partitionKey]part{}}
	if err := pool.QueryRow(ctx, `SELECT current_schema(), current_setting('search_path')`).Scan(&rb.schema, &rb.searchPath); err != nil {
		return rep, fmt.Errorf("rebuilding %s: %w", g.name, err)
	}
	if err := rb.lease(ctx); err != nil {
		return rep, err
	}
	hctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	heartbeat := make(chan struct{})
	go func() { defer close(heartbeat); rb.heartbeat(hctx) }()
	defer func() {
		stopHeartbeat()
		<-heartbeat
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := rb.release(cctx); err != nil {
			rb.log.Warn("releasing the rebuild's lease; it lapses by itself", "group", g.name, "err", err)
		}
	}()

	if err := rb.readDecisions(ctx); err != nil {
		return rep, err
	}
	if err := rb.createShadow(ctx, g); err != nil {
		return rep, err
	}
	cl, err := kgo.NewClient(kopts.kopts...)
	if err != nil {
		return rep, fmt.Errorf("rebuilding %s: creating Kafka client: %w", g.name, err)
	}
	defer cl.Close()
	rb.adm = kadm.NewClient(cl)
	if err := rb.addPartitions(ctx); err != nil {
		return rep, err
	}
	if err := rb.checkParkedBeforeStart(ctx); err != nil {
		return rep, err
	}
	shadowPool, err := rb.shadowPool(ctx)
	if err != nil {
		return rep, err
	}
	defer shadowPool.Close()
	// A partition added meanwhile is found within seconds, not Kafka's
	// default five minutes: the rebuild cannot finish without it.
	runner, err := newRunner(shadowPool, g, rb, append([]Option{WithKafkaOptions(kgo.MetadataMaxAge(5 * time.Second))}, opts...)...)
	if err != nil {
		return rep, err
	}
	rctx, stopRunner := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- runner.Run(rctx) }()
	stop := func() error {
		stopRunner()
		return <-ran
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()

	bar := progress.New(rc.Progress, "rebuilding "+g.name, "records")
	var pausedAt time.Time
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case err := <-ran:
			stopped = true
			if err == nil {
				err = errors.New("the rebuild's runner stopped")
			}
			return rep, fmt.Errorf("rebuilding %s: %w", g.name, err)
		case <-tick.C:
		}
		if rb.lost.Load() {
			return rep, fmt.Errorf("rebuilding %s: the rebuild lost its lease; nothing was swapped", g.name)
		}
		pr, err := rb.progress(ctx, rb.live)
		if err != nil {
			return rep, err
		}
		bar.Update(pr.done, pr.total)
		rep.Applied = pr.done
		switch {
		case pausedAt.IsZero() && (pr.caughtUp || pr.total-pr.done <= catchUpLag):
			if err := rb.pause(ctx); err != nil {
				return rep, err
			}
			pausedAt = time.Now()
			rb.log.Info("the rebuild is near the live group; pausing it", "group", g.name, "rebuilt", pr.done, "of", pr.total)
		case !pausedAt.IsZero() && pr.caughtUp:
			// The live group is still: its positions are final, but for
			// a partition added since the rebuild began.
			if err := rb.addPartitions(ctx); err != nil {
				return rep, err
			}
			if pr, err = rb.progress(ctx, rb.live); err != nil || !pr.caughtUp {
				continue
			}
			stopped = true
			if err := stop(); err != nil {
				return rep, fmt.Errorf("rebuilding %s: stopping the rebuild's runner: %w", g.name, err)
			}
			rb.log.Info("the rebuild reached the live group; swapping its state in", "group", g.name, "paused_for", time.Since(pausedAt))
			if err := rb.swap(ctx, g, &rep); err != nil {
				return rep, err
			}
			rep.Paused = time.Since(pausedAt)
			bar.Done(pr.done, pr.total)
			return rep, nil
		case !pausedAt.IsZero() && time.Since(pausedAt) > catchUpTimeout:
			// Something holds the rebuild back: let the live group go on.
			rb.log.Warn("the rebuild did not reach the paused live group in time; resuming it", "group", g.name,
				"rebuilt", pr.done, "of", pr.total, "timeout", catchUpTimeout)
			if err := rb.unpause(ctx); err != nil {
				return rep, err
			}
			pausedAt = time.Time{}
		}
	}
}

// ErrParkedBeforeStart: a rebuild that starts after the start of the
// topics found parked records before its start, which it cannot rebuild.
var ErrParkedBeforeStart = errors.New("consumer: the group holds parked records before the rebuild's start")

// rebuildRun is a rebuild's state, shared with its runner's workers.
type rebuildRun struct {
	live       *pgxpool.Pool
	adm        *kadm.Client
	schema     string // the live group's schema
	searchPath string // the live sessions' search_path
	shadow     string // the rebuild's schema
	group      string
	topics     []string
	from       time.Time
	owner      string
	log        *slog.Logger
	notifier   *outbox.Notifier // wakes relays for what the swap publishes
	lost       atomic.Bool      // the lease was taken away

	// decisions are the operators' on the live group's parked records,
	// by where the record was read.
	decisions map[origin]decision
	// parts are the partitions the rebuild reads, with where it starts.
	parts map[partitionKey]part

	mu     sync.Mutex
	caps   map[partitionKey]int64 // the live group's positions, last read
	paused bool
}

type decision struct {
	skip bool   // skipped or purged: pass the record over
	edit []byte // replayed with this payload
}

func (rb *rebuildRun) shadowIdent() string { return pgx.Identifier{rb.shadow}.Sanitize() }

func (rb *rebuildRun) liveTable(t string) string { return pgx.Identifier{rb.schema, t}.Sanitize() }

func (rb *rebuildRun) shadowTable(t string) string { return pgx.Identifier{rb.shadow, t}.Sanitize() }

// lease takes the group's rebuild lease, unless another rebuild holds it.
func (rb *rebuildRun) lease(ctx context.Context) error {
	var holder string
	err := rb.live.QueryRow(ctx, `
		INSERT INTO consumer_rebuilds AS r (group_id, owner) VALUES ($1, $2)
		ON CONFLICT (group_id) DO UPDATE SET owner = excluded.owner, started_at = now(), heartbeat_at = now()
		WHERE r.heartbeat_at <= now() - $3::interval
		RETURNING owner`, rb.group, rb.owner, rebuildLease.String()).Scan(&holder)
	if errors.Is(err, pgx.ErrNoRows) {
		if err := rb.live.QueryRow(ctx, `SELECT owner FROM consumer_rebuilds WHERE group_id = $1`, rb.group).Scan(&holder); err != nil {
			holder = "another rebuild"
		}
		return fmt.Errorf("%w: %s, by %s", ErrRebuilding, rb.group, holder)
	}
	if err != nil {
		return fmt.Errorf("rebuilding %s: taking the lease: %w", rb.group, err)
	}
	return nil
}

// heartbeat renews the lease, and the pause while there is one. During the
// swap it waits for the swap's lock on the lease; the swap leaves the pause
// renewed behind it.
func (rb *rebuildRun) heartbeat(ctx context.Context) {
	t := time.NewTicker(rebuildLease / 6)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ct, err := rb.live.Exec(ctx, `UPDATE consumer_rebuilds SET heartbeat_at = now() WHERE group_id = $1 AND owner = $2`, rb.group, rb.owner)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			rb.log.Warn("renewing the rebuild's lease", "group", rb.group, "err", err)
			continue
		case ct.RowsAffected() == 0:
			rb.lost.Store(true)
			return
		}
		rb.mu.Lock()
		paused := rb.paused
		rb.mu.Unlock()
		if paused {
			if _, err := rb.live.Exec(ctx, `UPDATE consumer_offsets SET paused_until = now() + $2::interval
				WHERE group_id = $1 AND paused_until IS NOT NULL`, rb.group, rebuildLease.String()); err != nil && ctx.Err() == nil {
				rb.log.Warn("renewing the pause of the live group", "group", rb.group, "err", err)
			}
		}
	}
}

// release ends the rebuild: it resumes the live group and drops the shadow
// schema, as long as the lease is still this rebuild's (else they are
// another rebuild's now), and gives the lease up.
func (rb *rebuildRun) release(ctx context.Context) error {
	tx, err := rb.live.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var ours bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM consumer_rebuilds WHERE group_id = $1 AND owner = $2 FOR UPDATE)`,
		rb.group, rb.owner).Scan(&ours); err != nil || !ours {
		return err
	}
	var b pgx.Batch
	b.Queue(`UPDATE consumer_offsets SET paused_until = NULL WHERE group_id = $1 AND paused_until IS NOT NULL`, rb.group)
	b.Queue(`DROP SCHEMA IF EXISTS ` + rb.shadowIdent() + ` CASCADE`)
	b.Queue(`DELETE FROM consumer_rebuilds WHERE group_id = $1 AND owner = $2`, rb.group, rb.owner)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// readDecisions reads the operators' decisions on the group from the
// audit trail, once no action is under way (actions take the audit table
// first, and see the lease from then on).
func (rb *rebuildRun) readDecisions(ctx context.Context) error {
	rb.decisions = map[origin]decision{}
	tx, err := rb.live.Begin(ctx)
	if err != nil {
		return fmt.Errorf("rebuilding %s: %w", rb.group, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `LOCK TABLE dlq_audit IN SHARE MODE`); err != nil {
		return fmt.Errorf("rebuilding %s: %w", rb.group, err)
	}
	rows, err := tx.Query(ctx, `SELECT topic, partition, "offset", action, edited_value FROM dlq_audit
		WHERE group_id = $1 ORDER BY id`, rb.group)
	if err != nil {
		return fmt.Errorf("rebuilding %s: reading the audit trail: %w", rb.group, err)
	}
	defer rows.Close()
	for rows.Next() {
		var o origin
		var action string
		var edit []byte
		if err := rows.Scan(&o.topic, &o.partition, &o.offset, &action, &edit); err != nil {
			return fmt.Errorf("rebuilding %s: reading the audit trail: %w", rb.group, err)
		}
		d := rb.decisions[o]
		switch {
		case action == "skip" || action == "purge":
			d.skip = true
		case edit != nil:
			d.edit = edit
		}
		rb.decisions[o] = d
	}
	return rows.Err()
}

// createShadow makes the shadow schema afresh: empty copies of the
// projections and the runtime's tables, the outbox's heads, and the marks
// of the events operators skipped (so that a duplicate of one is passed
// over, as the live group does).
func (rb *rebuildRun) createShadow(ctx context.Context, g *Group) error {
	// One multi-statement string, sent by the simple protocol: statements
	// of a batch would be prepared before the tables they use exist.
	ddl := []string{`DROP SCHEMA IF EXISTS ` + rb.shadowIdent() + ` CASCADE`, `CREATE SCHEMA ` + rb.shadowIdent()}
	for _, t := range append(append([]string(nil), g.tables...), stateTables...) {
		ddl = append(ddl, `CREATE TABLE `+rb.shadowTable(t)+` (LIKE `+rb.liveTable(t)+` INCLUDING ALL)`)
	}
	ddl = append(ddl, `INSERT INTO `+rb.shadowTable("outbox_heads")+` (shard) SELECT generate_series(0, 63)`)
	if _, err := rb.live.Exec(ctx, strings.Join(ddl, ";\n")); err != nil {
		return fmt.Errorf("rebuilding %s: creating schema %s: %w", rb.group, rb.shadow, err)
	}
	if _, err := rb.live.Exec(ctx, `INSERT INTO `+rb.shadowTable("consumer_applied")+` (group_id, event_id)
		SELECT DISTINCT $1::text, event_id FROM dlq_audit
		WHERE group_id = $1 AND action IN ('skip', 'purge') AND event_id IS NOT NULL`, rb.group); err != nil {
		return fmt.Errorf("rebuilding %s: marking the events operators skipped: %w", rb.group, err)
	}
	return nil
}

// shadowPool returns a pool whose sessions find the shadow tables first.
func (rb *rebuildRun) shadowPool(ctx context.Context) (*pgxpool.Pool, error) {
	cfg := rb.live.Config()
	cfg.ConnConfig.RuntimeParams["search_path"] = rb.shadowIdent() + ", " + rb.searchPath
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("rebuilding %s: %w", rb.group, err)
	}
	return p, nil
}

// part is a partition the rebuild reads: where it starts, and where the
// log starts.
type part struct {
	start, logStart int64
}

// addPartitions finds the partitions of the group's topics the rebuild
// does not know yet, and where it starts in each: the start of the log,
// or with From the first record at or after it, but never past the live
// group's position (the rebuild must reach it). It stores each start as
// the shadow position.
func (rb *rebuildRun) addPartitions(ctx context.Context) error {
	starts, err := rb.adm.ListStartOffsets(ctx, rb.topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("rebuilding %s: listing the topics' start offsets: %w", rb.group, err)
	}
	var after kadm.ListedOffsets
	if !rb.from.IsZero() {
		if after, err = rb.adm.ListOffsetsAfterMilli(ctx, rb.from.UnixMilli(), rb.topics...); err == nil {
			err = after.Error()
		}
		if err != nil {
			return fmt.Errorf("rebuilding %s: listing offsets after %s: %w", rb.group, rb.from, err)
		}
	}
	live, err := rb.positions(ctx, rb.live, rb.liveTable("consumer_offsets"))
	if err != nil {
		return fmt.Errorf("rebuilding %s: reading the live positions: %w", rb.group, err)
	}
	var b pgx.Batch
	starts.Each(func(o kadm.ListedOffset) {
		k := partitionKey{o.Topic, o.Partition}
		if _, known := rb.parts[k]; known {
			return
		}
		p := part{start: o.Offset, logStart: o.Offset}
		if a, ok := after.Lookup(o.Topic, o.Partition); ok {
			p.start = max(a.Offset, o.Offset)
		}
		if l, ok := live[k]; ok {
			p.start = min(p.start, max(l, o.Offset))
		} else {
			p.start = o.Offset
		}
		rb.parts[k] = p
		b.Queue(`INSERT INTO `+rb.shadowTable("consumer_offsets")+` (group_id, topic, partition, next_offset, epoch, owner)
			VALUES ($1, $2, $3, $4, 0, 'rebuild')`, rb.group, o.Topic, o.Partition, p.start)
	})
	if b.Len() > 0 {
		if err := rb.live.SendBatch(ctx, &b).Close(); err != nil {
			return fmt.Errorf("rebuilding %s: storing the start offsets: %w", rb.group, err)
		}
	}
	return nil
}

// checkParkedBeforeStart refuses a rebuild that would start after records
// the live group holds parked: the rebuild would not know of them. No such
// record can appear later, as the live group parks only past its position.
func (rb *rebuildRun) checkParkedBeforeStart(ctx context.Context) error {
	var ts []string
	var ps []int32
	var ss []int64
	for k, p := range rb.parts {
		ts, ps, ss = append(ts, k.topic), append(ps, k.partition), append(ss, p.start)
	}
	var n int64
	var oldest *time.Time
	if err := rb.live.QueryRow(ctx, `SELECT count(*), min(p.parked_at) FROM consumer_parked p
		JOIN unnest($2::text[], $3::int[], $4::bigint[]) AS s(topic, partition, start)
		  ON p.topic = s.topic AND p.partition = s.partition AND p."offset" < s.start
		WHERE p.group_id = $1 AND p.state <> 'skipped'`, rb.group, ts, ps, ss).Scan(&n, &oldest); err != nil {
		return fmt.Errorf("rebuilding %s: looking for parked records before the start: %w", rb.group, err)
	}
	if n > 0 {
		return fmt.Errorf("%w: %d records of group %s, parked since %s, are before where the rebuild starts (-from, or the start of the topics' logs); replay, skip or purge them first (tally dlq list -group %s -state retrying,waiting,dead)",
			ErrParkedBeforeStart, n, rb.group, oldest.UTC().Format(time.RFC3339), rb.group)
	}
	return nil
}

// positions reads a group's positions from table (live or shadow
// consumer_offsets): the next offset to apply, by partition of the
// group's topics; -1 (nothing applied yet) is left out.
func (rb *rebuildRun) positions(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, table string) (map[partitionKey]int64, error) {
	rows, err := q.Query(ctx, `SELECT topic, partition, next_offset FROM `+table+`
		WHERE group_id = $1 AND topic = ANY($2) AND next_offset >= 0`, rb.group, rb.topics)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[partitionKey]int64{}
	for rows.Next() {
		var k partitionKey
		var n int64
		if err := rows.Scan(&k.topic, &k.partition, &n); err != nil {
			return nil, err
		}
		m[k] = n
	}
	return m, rows.Err()
}

// rebuildProgress is how far a rebuild is: records applied, the records it
// has to apply to reach the live group (which moves meanwhile), and
// whether it has reached it.
type rebuildProgress struct {
	done, total int64
	caughtUp    bool
}

// progress reads how far the rebuild and the live group are, through q: a
// pool, or the swap's transaction. A live position on a partition the
// rebuild does not know (one added since it began) holds it back.
func (rb *rebuildRun) progress(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (rebuildProgress, error) {
	var pr rebuildProgress
	live, err := rb.positions(ctx, q, rb.liveTable("consumer_offsets"))
	if err != nil {
		return pr, fmt.Errorf("rebuilding %s: reading the live positions: %w", rb.group, err)
	}
	rebuilt, err := rb.positions(ctx, q, rb.shadowTable("consumer_offsets"))
	if err != nil {
		return pr, fmt.Errorf("rebuilding %s: reading the rebuild's positions: %w", rb.group, err)
	}
	pr.caughtUp = true
	for k, l := range live {
		if _, known := rb.parts[k]; !known && l > 0 {
			pr.caughtUp = false
		}
	}
	for k, p := range rb.parts {
		l, ok := live[k]
		if !ok {
			l = p.logStart
		}
		l = max(l, p.start)
		s := rebuilt[k] // stored from the start
		pr.done += s - p.start
		pr.total += l - p.start
		pr.caughtUp = pr.caughtUp && s >= l
	}
	return pr, nil
}

// pause pauses the live group: its members' commits fail (TL002) and wait
// until the pause ends. The update waits for the commits in flight.
func (rb *rebuildRun) pause(ctx context.Context) error {
	rb.mu.Lock()
	rb.paused = true
	rb.mu.Unlock()
	if _, err := rb.live.Exec(ctx, `UPDATE consumer_offsets SET paused_until = now() + $2::interval WHERE group_id = $1`,
		rb.group, rebuildLease.String()); err != nil {
		return fmt.Errorf("rebuilding %s: pausing the live group: %w", rb.group, err)
	}
	return nil
}

// unpause resumes the live group.
func (rb *rebuildRun) unpause(ctx context.Context) error {
	rb.mu.Lock()
	rb.paused = false
	rb.mu.Unlock()
	if _, err := rb.live.Exec(ctx, `UPDATE consumer_offsets SET paused_until = NULL WHERE group_id = $1 AND paused_until IS NOT NULL`,
		rb.group); err != nil {
		return fmt.Errorf("rebuilding %s: resuming the live group: %w", rb.group, err)
	}
	return nil
}

// under returns the records of batch the live group has applied already
// (a rebuild never goes past it) and puts the rest back in w's queue. While
// there is none, it waits for the live group; it returns nil once w is
// stopped.
func (rb *rebuildRun) under(w *worker, batch []queued) []queued {
	key := partitionKey{w.topic, w.partition}
	for {
		rb.mu.Lock()
		limit, known := rb.caps[key]
		rb.mu.Unlock()
		if !known || batch[len(batch)-1].rec.Offset >= limit {
			var next *int64
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := rb.live.QueryRow(ctx, `SELECT max(next_offset) FROM `+rb.liveTable("consumer_offsets")+`
				WHERE group_id = $1 AND topic = $2 AND partition = $3`, rb.group, key.topic, key.partition).Scan(&next)
			cancel()
			if err != nil {
				w.r.log.Warn("reading the live group's position", "topic", key.topic, "partition", key.partition, "err", err)
			} else {
				limit = 0
				if next != nil {
					limit = *next
				}
				rb.mu.Lock()
				rb.caps[key] = limit
				rb.mu.Unlock()
			}
		}
		n := 0
		for n < len(batch) && batch[n].rec.Offset < limit {
			n++
		}
		if n > 0 {
			w.requeue(batch[n:])
			return batch[:n]
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-w.stopped:
			return nil
		}
	}
}

// decide returns rec as the operators left it: nil for a record they
// skipped or purged, a copy with their payload for one they replayed with
// a corrected one.
func (rb *rebuildRun) decide(rec *kgo.Record, o origin) *kgo.Record {
	d, ok := rb.decisions[o]
	switch {
	case !ok:
		return rec
	case d.skip:
		return nil
	case d.edit != nil:
		c := *rec
		c.Value = d.edit
		return &c
	}
	return rec
}

// swap replaces the live group's projections and state with the rebuilt
// ones, in one transaction, and resumes the live group after it commits:
// a transaction of the live group that began before the swap and read the
// state it replaces fails its commit (TL002) and runs again on the new one.
func (rb *rebuildRun) swap(ctx context.Context, g *Group, rep *RebuildReport) error {
	fail := func(err error) error { return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err) }
	tx, err := rb.live.Begin(ctx)
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The lease is held, not locked for update: the heartbeat keeps
	// renewing it, and another rebuild cannot end it.
	var ours bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM consumer_rebuilds WHERE group_id = $1 AND owner = $2
		AND heartbeat_at > now() - $3::interval FOR KEY SHARE)`, rb.group, rb.owner, rebuildLease.String()).Scan(&ours); err != nil {
		return fail(err)
	}
	if !ours {
		return fmt.Errorf("rebuilding %s: the rebuild's lease lapsed; nothing was swapped", rb.group)
	}
	// The pause, renewed and held to the commit: the live group's commits
	// fail meanwhile, even should the heartbeat fall behind.
	const pauseSQL = `UPDATE consumer_offsets SET paused_until = clock_timestamp() + $2::interval WHERE group_id = $1`
	if _, err := tx.Exec(ctx, pauseSQL, rb.group, rebuildLease.String()); err != nil {
		return fail(err)
	}
	pr, err := rb.progress(ctx, tx)
	if err != nil {
		return err
	}
	if !pr.caughtUp {
		return fmt.Errorf("rebuilding %s: the live group moved while paused (its pause lapsed?); nothing was swapped", rb.group)
	}

	// Dead letters the live group has already sent to the dead-letter
	// topic are not sent again.
	liveDead := map[origin]bool{}
	rows, err := tx.Query(ctx, `SELECT topic, partition, "offset" FROM `+rb.liveTable("consumer_parked")+`
		WHERE group_id = $1 AND state = 'dead'`, rb.group)
	if err != nil {
		return fail(err)
	}
	for rows.Next() {
		var o origin
		if err := rows.Scan(&o.topic, &o.partition, &o.offset); err != nil {
			rows.Close()
			return fail(err)
		}
		liveDead[o] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	// The events the handlers emitted for records the live group had not
	// applied, and the rebuild did, are new: they are published.
	rows, err = tx.Query(ctx, `SELECT o.id, o.type, o.source, o.subject, o.time, o.sequence, o.correlation_id,
			o.causation_id, o.traceparent, o.payload
		FROM `+rb.shadowTable("outbox")+` o
		WHERE o.type <> '' AND o.causation_id IN (
			SELECT s.event_id::text FROM `+rb.shadowTable("consumer_applied")+` s
			WHERE s.group_id = $1 AND NOT EXISTS (
				SELECT 1 FROM `+rb.liveTable("consumer_applied")+` l WHERE l.group_id = $1 AND l.event_id = s.event_id))
		ORDER BY o.shard, o.seq`, rb.group)
	if err != nil {
		return fail(err)
	}
	emitted, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (envelope.Event, error) {
		var e envelope.Event
		err := row.Scan(&e.ID, &e.Type, &e.Source, &e.Subject, &e.Time, &e.Sequence, &e.CorrelationID,
			&e.CausationID, &e.TraceParent, &e.Data)
		return e, err
	})
	if err != nil {
		return fail(err)
	}
	rep.Emitted = int64(len(emitted))

	var b pgx.Batch
	for i := len(g.tables) - 1; i >= 0; i-- {
		b.Queue(`DELETE FROM ` + rb.liveTable(g.tables[i]))
	}
	for _, t := range g.tables {
		b.Queue(`INSERT INTO ` + rb.liveTable(t) + ` SELECT * FROM ` + rb.shadowTable(t)).Exec(func(ct pgconn.CommandTag) error {
			rep.Rows[t] = ct.RowsAffected()
			return nil
		})
	}
	// The marks: the live ones (which know the events before the
	// rebuild's start too) and the rebuild's, but for the records the
	// rebuild parked. The anti-join halves the time ON CONFLICT alone
	// takes to find that most are there already.
	b.Queue(`INSERT INTO ` + rb.liveTable("consumer_applied") + ` SELECT s.* FROM ` + rb.shadowTable("consumer_applied") + ` s
		WHERE NOT EXISTS (SELECT 1 FROM ` + rb.liveTable("consumer_applied") + ` l WHERE l.group_id = s.group_id AND l.event_id = s.event_id)
		ON CONFLICT DO NOTHING`)
	b.Queue(`DELETE FROM `+rb.liveTable("consumer_applied")+` WHERE group_id = $1
		AND event_id IN (SELECT event_id FROM `+rb.shadowTable("consumer_parked")+` WHERE event_id IS NOT NULL)`, rb.group)
	// A rebuilt parked record takes a version past the live one's, so
	// that a retry record the live group sent for it is stale.
	b.Queue(`UPDATE `+rb.shadowTable("consumer_parked")+` s SET version = greatest(s.version, l.version)
		FROM `+rb.liveTable("consumer_parked")+` l
		WHERE l.group_id = $1 AND l.topic = s.topic AND l.partition = s.partition AND l."offset" = s."offset"`, rb.group)
	b.Queue(`DELETE FROM `+rb.liveTable("consumer_parked")+` WHERE group_id = $1 AND state <> 'skipped'`, rb.group)
	b.Queue(`INSERT INTO ` + rb.liveTable("consumer_parked") + ` SELECT * FROM ` + rb.shadowTable("consumer_parked")).Exec(func(ct pgconn.CommandTag) error {
		rep.Parked = ct.RowsAffected()
		return nil
	})
	b.Queue(`DELETE FROM `+rb.liveTable("consumer_parked_keys")+` WHERE group_id = $1`, rb.group)
	b.Queue(`INSERT INTO ` + rb.liveTable("consumer_parked_keys") + ` SELECT * FROM ` + rb.shadowTable("consumer_parked_keys"))
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fail(err)
	}

	// The rebuilt records still to retry get a retry record each; the
	// rebuilt dead letters the dead-letter topic lacks are sent there.
	rows, err = tx.Query(ctx, `UPDATE `+rb.liveTable("consumer_parked")+` p SET version = version + 1, not_before = now(), updated_at = now()
		WHERE group_id = $1 AND (state = 'retrying' OR state = 'dead')
		  AND id IN (SELECT id FROM `+rb.shadowTable("consumer_parked")+`)
		RETURNING p.state, p.tier, p.error_class, p.error, `+parkedColumns("p."), rb.group)
	if err != nil {
		return fail(err)
	}
	var fs []outbox.Forward
	now := time.Now()
	for rows.Next() {
		var state, class, msg string
		var tier int
		p, err := scanParked(rows, &state, &tier, &class, &msg)
		if err != nil {
			rows.Close()
			return fail(err)
		}
		f := &failure{transient, msg}
		if class == permanent.String() {
			f.class = permanent
		}
		first := now
		if p.firstFailed != nil {
			first = *p.firstFailed
		}
		switch {
		case state == StateRetrying:
			fs = append(fs, forwardOf(rb.group, p.record(), p.orig, tier, p.version, p.attempts, first, now, f, now))
		case !liveDead[p.orig]:
			fs = append(fs, forwardOf(rb.group, p.record(), p.orig, 0, p.version, p.attempts, first, now, f, now))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	var fb pgx.Batch
	if err := outbox.Queue(&fb, emitted...); err != nil {
		return fail(err)
	}
	if err := outbox.QueueForwards(&fb, fs...); err != nil {
		return fail(err)
	}
	fb.Queue(pauseSQL, rb.group, rebuildLease.String())
	if err := tx.SendBatch(ctx, &fb).Close(); err != nil {
		return fail(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("rebuilding %s: committing the swap: %w", rb.group, err)
	}
	if len(emitted)+len(fs) > 0 && rb.notifier != nil {
		rb.notifier.Notify()
	}
	return rb.unpause(ctx)
}
