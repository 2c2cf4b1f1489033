package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

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
// the live positions, and one transaction replaces the projections, the
// idempotency marks and the parked records with the rebuilt ones and
// resumes the live group. The result is what the live group holds had it
// applied every record again, with the handlers as they are now, and the
// operators' decisions taken again: a record skipped or purged is passed
// over, one replayed with a corrected payload gets it.
//
// Records the rebuild parks are parked in the swapped-in state, retried
// by the live group (a fresh retry record each) or, dead, sent to the
// dead-letter topic unless already there. Events the handlers emit and
// forwards are not published again: the live group published them.
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
	host, _ := os.Hostname()
	rb := &rebuildRun{live: pool, group: g.name, owner: fmt.Sprintf("rebuild %d@%s %s", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339)),
		shadow: "tally_rebuild_" + g.name, caps: map[partitionKey]int64{}}
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&rb.schema); err != nil {
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
		rb.unpause(cctx)
		pool.Exec(cctx, `DROP SCHEMA IF EXISTS `+rb.shadowIdent()+` CASCADE`)
		pool.Exec(cctx, `DELETE FROM consumer_rebuilds WHERE group_id = $1 AND owner = $2`, g.name, rb.owner)
	}()

	if err := rb.readDecisions(ctx); err != nil {
		return rep, err
	}
	if err := rb.createShadow(ctx, g); err != nil {
		return rep, err
	}
	var kopts Runner
	for _, o := range opts {
		o(&kopts)
	}
	cl, err := kgo.NewClient(kopts.kopts...)
	if err != nil {
		return rep, fmt.Errorf("rebuilding %s: creating Kafka client: %w", g.name, err)
	}
	parts, err := rb.partitions(ctx, cl, g.topics, rc.From)
	cl.Close()
	if err != nil {
		return rep, err
	}
	shadowPool, err := rb.shadowPool(ctx)
	if err != nil {
		return rep, err
	}
	defer shadowPool.Close()
	runner, err := newRunner(shadowPool, g, rb, opts...)
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
		done, total, caughtUp, err := rb.progress(ctx, shadowPool, parts)
		if err != nil {
			return rep, err
		}
		bar.Update(done, total)
		rep.Applied = done
		switch {
		case pausedAt.IsZero() && (caughtUp || total-done <= catchUpLag):
			if err := rb.pause(ctx); err != nil {
				return rep, err
			}
			pausedAt = time.Now()
		case !pausedAt.IsZero() && caughtUp:
			// The live group is still: its positions are final.
			done, total, caughtUp, err = rb.progress(ctx, shadowPool, parts)
			if err != nil || !caughtUp {
				continue
			}
			stopped = true
			if err := stop(); err != nil {
				return rep, fmt.Errorf("rebuilding %s: stopping the rebuild's runner: %w", g.name, err)
			}
			if _, _, caughtUp, err = rb.progress(ctx, shadowPool, parts); err != nil || !caughtUp {
				return rep, fmt.Errorf("rebuilding %s: the rebuild moved after it stopped (%v)", g.name, err)
			}
			if err := rb.swap(ctx, g, &rep); err != nil {
				return rep, err
			}
			rep.Paused = time.Since(pausedAt)
			bar.Done(done, total)
			return rep, nil
		case !pausedAt.IsZero() && time.Since(pausedAt) > catchUpTimeout:
			// Something holds the rebuild back: let the live group go on.
			rb.unpause(ctx)
			pausedAt = time.Time{}
		}
	}
}

// rebuildRun is a rebuild's state, shared with its runner's workers.
type rebuildRun struct {
	live   *pgxpool.Pool
	schema string // the live group's schema
	shadow string // the rebuild's
	group  string
	owner  string

	// decisions are the operators' on the live group's parked records,
	// by where the record was read.
	decisions map[origin]decision

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
		rb.live.QueryRow(ctx, `SELECT owner FROM consumer_rebuilds WHERE group_id = $1`, rb.group).Scan(&holder)
		return fmt.Errorf("%w: %s, by %s", ErrRebuilding, rb.group, holder)
	}
	if err != nil {
		return fmt.Errorf("rebuilding %s: taking the lease: %w", rb.group, err)
	}
	return nil
}

// heartbeat renews the lease, and the pause while there is one.
func (rb *rebuildRun) heartbeat(ctx context.Context) {
	t := time.NewTicker(rebuildLease / 6)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rb.live.Exec(ctx, `UPDATE consumer_rebuilds SET heartbeat_at = now() WHERE group_id = $1 AND owner = $2`, rb.group, rb.owner)
		rb.mu.Lock()
		paused := rb.paused
		rb.mu.Unlock()
		if paused {
			rb.live.Exec(ctx, `UPDATE consumer_offsets SET paused_until = now() + $2::interval
				WHERE group_id = $1 AND paused_until IS NOT NULL`, rb.group, rebuildLease.String())
		}
	}
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
	cfg.ConnConfig.RuntimeParams["search_path"] = rb.shadow + ", " + rb.schema
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("rebuilding %s: %w", rb.group, err)
	}
	return p, nil
}

// part is a partition the rebuild reads, with where it starts and where
// its log starts.
type part struct {
	key             partitionKey
	start, logStart int64
}

// partitions returns the partitions of topics and where the rebuild
// starts in each: the start of the log, or with from the first record at
// or after it, but never past the live group's position (the rebuild must
// reach it). A start other than the log's is stored as the shadow
// position.
func (rb *rebuildRun) partitions(ctx context.Context, cl *kgo.Client, topics []string, from time.Time) ([]part, error) {
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("rebuilding %s: listing the topics' start offsets: %w", rb.group, err)
	}
	var after kadm.ListedOffsets
	if !from.IsZero() {
		if after, err = adm.ListOffsetsAfterMilli(ctx, from.UnixMilli(), topics...); err == nil {
			err = after.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("rebuilding %s: listing offsets after %s: %w", rb.group, from, err)
		}
	}
	var parts []part
	var b pgx.Batch
	starts.Each(func(o kadm.ListedOffset) {
		p := part{key: partitionKey{o.Topic, o.Partition}, start: o.Offset, logStart: o.Offset}
		if a, ok := after.Lookup(o.Topic, o.Partition); ok && !from.IsZero() {
			p.start = max(a.Offset, o.Offset)
			b.Queue(`INSERT INTO `+rb.shadowTable("consumer_offsets")+` (group_id, topic, partition, next_offset, epoch, owner)
				SELECT $1, $2, $3, least($4::bigint, greatest(coalesce(
					(SELECT next_offset FROM `+rb.liveTable("consumer_offsets")+` WHERE group_id = $1 AND topic = $2 AND partition = $3), -1), $5::bigint)),
					0, 'rebuild'`, rb.group, o.Topic, o.Partition, p.start, o.Offset)
		}
		parts = append(parts, p)
	})
	if b.Len() > 0 {
		if err := rb.live.SendBatch(ctx, &b).Close(); err != nil {
			return nil, fmt.Errorf("rebuilding %s: storing the start offsets: %w", rb.group, err)
		}
	}
	return parts, nil
}

// progress reads how far the rebuild and the live group are: records
// applied by the rebuild, the records it has to apply to reach the live
// group (which moves meanwhile), and whether it has reached it.
func (rb *rebuildRun) progress(ctx context.Context, shadow *pgxpool.Pool, parts []part) (done, total int64, caughtUp bool, err error) {
	read := func(p *pgxpool.Pool, table string) (map[partitionKey]int64, error) {
		rows, err := p.Query(ctx, `SELECT topic, partition, next_offset FROM `+table+` WHERE group_id = $1`, rb.group)
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
	live, err := read(rb.live, rb.liveTable("consumer_offsets"))
	if err != nil {
		return 0, 0, false, fmt.Errorf("rebuilding %s: reading the live positions: %w", rb.group, err)
	}
	rebuilt, err := read(shadow, rb.shadowTable("consumer_offsets"))
	if err != nil {
		return 0, 0, false, fmt.Errorf("rebuilding %s: reading the rebuild's positions: %w", rb.group, err)
	}
	caughtUp = true
	for _, p := range parts {
		// -1 and no row both mean nothing applied: the start of the log.
		l, ok := live[p.key]
		if !ok || l < 0 {
			l = p.logStart
		}
		s, ok := rebuilt[p.key]
		if !ok || s < 0 {
			s = p.start
		}
		l = max(l, p.start)
		done += s - p.start
		total += l - p.start
		caughtUp = caughtUp && s >= l
	}
	return done, total, caughtUp, nil
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

func (rb *rebuildRun) unpause(ctx context.Context) {
	rb.mu.Lock()
	paused := rb.paused
	rb.paused = false
	rb.mu.Unlock()
	if paused {
		rb.live.Exec(ctx, `UPDATE consumer_offsets SET paused_until = NULL WHERE group_id = $1`, rb.group)
	}
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
			err := rb.live.QueryRow(context.Background(), `SELECT max(next_offset) FROM `+rb.liveTable("consumer_offsets")+`
				WHERE group_id = $1 AND topic = $2 AND partition = $3`, rb.group, key.topic, key.partition).Scan(&next)
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
// ones and resumes the live group, in one transaction.
func (rb *rebuildRun) swap(ctx context.Context, g *Group, rep *RebuildReport) error {
	tx, err := rb.live.Begin(ctx)
	if err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var ours bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM consumer_rebuilds WHERE group_id = $1 AND owner = $2
		AND heartbeat_at > now() - $3::interval FOR UPDATE)`, rb.group, rb.owner, rebuildLease.String()).Scan(&ours); err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	if !ours {
		return fmt.Errorf("rebuilding %s: the rebuild's lease lapsed; nothing was swapped", rb.group)
	}
	// Dead letters the live group has already sent to the dead-letter
	// topic are not sent again.
	liveDead := map[origin]bool{}
	rows, err := tx.Query(ctx, `SELECT topic, partition, "offset" FROM consumer_parked WHERE group_id = $1 AND state = 'dead'`, rb.group)
	if err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	for rows.Next() {
		var o origin
		if err := rows.Scan(&o.topic, &o.partition, &o.offset); err != nil {
			rows.Close()
			return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
		}
		liveDead[o] = true
	}
	rows.Close()

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
	b.Queue(`DELETE FROM consumer_applied WHERE group_id = $1`, rb.group)
	b.Queue(`INSERT INTO consumer_applied SELECT * FROM ` + rb.shadowTable("consumer_applied"))
	b.Queue(`DELETE FROM consumer_parked WHERE group_id = $1 AND state <> 'skipped'`, rb.group)
	b.Queue(`INSERT INTO consumer_parked SELECT * FROM ` + rb.shadowTable("consumer_parked")).Exec(func(ct pgconn.CommandTag) error {
		rep.Parked = ct.RowsAffected()
		return nil
	})
	b.Queue(`DELETE FROM consumer_parked_keys WHERE group_id = $1`, rb.group)
	b.Queue(`INSERT INTO consumer_parked_keys SELECT * FROM ` + rb.shadowTable("consumer_parked_keys"))
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}

	// The rebuilt records still to retry get a retry record each; the
	// rebuilt dead letters the dead-letter topic lacks are sent there.
	rows, err = tx.Query(ctx, `UPDATE consumer_parked p SET version = version + 1, not_before = now(), updated_at = now()
		WHERE group_id = $1 AND (state = 'retrying' OR state = 'dead')
		  AND id IN (SELECT id FROM `+rb.shadowTable("consumer_parked")+`)
		RETURNING p.state, p.tier, p.error_class, p.error, `+parkedColumns("p."), rb.group)
	if err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	var fs []outbox.Forward
	now := time.Now()
	for rows.Next() {
		var state, class, msg string
		var tier int
		p, err := scanParked(rows, &state, &tier, &class, &msg)
		if err != nil {
			rows.Close()
			return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
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
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	var fb pgx.Batch
	if err := outbox.QueueForwards(&fb, fs...); err != nil {
		return err
	}
	fb.Queue(`UPDATE consumer_offsets SET paused_until = NULL WHERE group_id = $1`, rb.group)
	if err := tx.SendBatch(ctx, &fb).Close(); err != nil {
		return fmt.Errorf("rebuilding %s: swapping: %w", rb.group, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("rebuilding %s: committing the swap: %w", rb.group, err)
	}
	rb.mu.Lock()
	rb.paused = false
	rb.mu.Unlock()
	return nil
}
