package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/topics"
)

// States of a parked record.
const (
	StateRetrying = "retrying" // failed; its next attempt waits in a retry tier
	StateDead     = "dead"     // given up on: the dead-letter queue
	StateWaiting  = "waiting"  // parked behind a failed record of its key
	StateSkipped  = "skipped"  // resolved by an operator without being applied
)

// Errors of the operator functions.
var (
	// ErrNotFound: no parked record has the id asked for.
	ErrNotFound = errors.New("consumer: no such parked record")
	// ErrNoSelection: an operator action named no record and did not ask
	// for all of them.
	ErrNoSelection = errors.New("consumer: select records by id or filter, or ask for all")
	// ErrBadEdit: an edited payload is not valid for the record's type, or
	// was given for more than one record.
	ErrBadEdit = errors.New("consumer: edited payload refused")
	// ErrNoActor: an operator action must say who takes it.
	ErrNoActor = errors.New("consumer: an operator action needs an actor")
	// ErrRebuilding: a group of the records selected is being rebuilt
	// (Rebuild); act again when the rebuild is done.
	ErrRebuilding = errors.New("consumer: the group is being rebuilt")
)

// Filter selects parked records for the operator functions. Its zero
// value selects nothing for an action (ErrNoSelection) unless All is set;
// for List it selects the dead-letter queue of every group.
type Filter struct {
	IDs    []int64
	Group  string
	States []string // List only; default: dead. Actions pick the states they apply to.
	Type   string   // ce_type
	Key    string   // the record key
	Since  time.Time
	Until  time.Time // with Since: when the record last failed (or was parked)
	All    bool      // an action on every record the other fields select
	After  int64     // List only: records with a higher id (paging)
	Limit  int       // List only: at most this many (default 100, at most 1000)
}

// selects reports whether f names records for an action.
func (f *Filter) selects() bool {
	return f.All || len(f.IDs) > 0 || f.Group != "" || f.Type != "" || f.Key != "" || !f.Since.IsZero() || !f.Until.IsZero()
}

// where returns f as SQL conditions on consumer_parked aliased p, with
// args numbered after those in args.
func (f *Filter) where(states []string, args []any) (string, []any) {
	var conds []string
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	conds = append(conds, "p.state = ANY("+arg(states)+"::text[])")
	if len(f.IDs) > 0 {
		conds = append(conds, "p.id = ANY("+arg(f.IDs)+"::bigint[])")
	}
	if f.Group != "" {
		conds = append(conds, "p.group_id = "+arg(f.Group))
	}
	if f.Type != "" {
		conds = append(conds, "p.event_type = "+arg(f.Type))
	}
	if f.Key != "" {
		conds = append(conds, "p.key = "+arg([]byte(f.Key)))
	}
	if !f.Since.IsZero() {
		conds = append(conds, "coalesce(p.last_failed_at, p.parked_at) >= "+arg(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "coalesce(p.last_failed_at, p.parked_at) < "+arg(f.Until))
	}
	return strings.Join(conds, " AND "), args
}

// Parked is a parked record as operators see it.
type Parked struct {
	ID            int64      `json:"id"`
	Group         string     `json:"group"`
	Topic         string     `json:"topic"`
	Partition     int32      `json:"partition"`
	Offset        int64      `json:"offset"`
	Key           string     `json:"key"`
	EventID       *uuid.UUID `json:"event_id"`
	EventType     string     `json:"event_type"`
	State         string     `json:"state"`
	Attempts      int        `json:"attempts"`
	Tier          int        `json:"tier,omitempty"`
	NotBefore     *time.Time `json:"not_before,omitempty"`
	ErrorClass    string     `json:"error_class"`
	Error         string     `json:"error"`
	FirstFailedAt *time.Time `json:"first_failed_at"`
	LastFailedAt  *time.Time `json:"last_failed_at"`
	ParkedAt      time.Time  `json:"parked_at"`
	Edited        bool       `json:"edited"`
	Waiting       int        `json:"waiting"` // records of its key parked behind it

	// Show only.
	Headers     []kgo.RecordHeader `json:"-"`
	Value       []byte             `json:"-"`
	EditedValue []byte             `json:"-"`
}

const listColumns = `p.id, p.group_id, p.topic, p.partition, p."offset", p.key, p.event_id, p.event_type, p.state,
	p.attempts, p.tier, p.not_before, p.error_class, p.error, p.first_failed_at, p.last_failed_at, p.parked_at,
	p.edited_value IS NOT NULL,
	CASE WHEN p.ordered AND p.state IN ('retrying', 'dead') THEN (
		SELECT count(*) FROM consumer_parked w
		WHERE w.group_id = p.group_id AND w.topic = p.topic AND w.key = p.key AND w.ordered AND w.state = 'waiting'
	) ELSE 0 END`

func scanListed(rows pgx.Rows, extra ...any) (Parked, error) {
	var p Parked
	var key []byte
	err := rows.Scan(append([]any{&p.ID, &p.Group, &p.Topic, &p.Partition, &p.Offset, &key, &p.EventID, &p.EventType,
		&p.State, &p.Attempts, &p.Tier, &p.NotBefore, &p.ErrorClass, &p.Error, &p.FirstFailedAt, &p.LastFailedAt,
		&p.ParkedAt, &p.Edited, &p.Waiting}, extra...)...)
	p.Key = string(key)
	return p, err
}

// List returns the parked records f selects, oldest first.
func List(ctx context.Context, q outbox.Querier, f Filter) ([]Parked, error) {
	states := f.States
	if len(states) == 0 {
		states = []string{StateDead}
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	where, args := f.where(states, nil)
	args = append(args, f.After, limit)
	rows, err := q.Query(ctx, `SELECT `+listColumns+` FROM consumer_parked p WHERE `+where+
		fmt.Sprintf(` AND p.id > $%d ORDER BY p.id LIMIT $%d`, len(args)-1, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing parked records: %w", err)
	}
	defer rows.Close()
	out := []Parked{}
	for rows.Next() {
		p, err := scanListed(rows)
		if err != nil {
			return nil, fmt.Errorf("listing parked records: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing parked records: %w", err)
	}
	return out, nil
}

// Show returns one parked record, with its headers and payload.
func Show(ctx context.Context, q outbox.Querier, id int64) (Parked, error) {
	rows, err := q.Query(ctx, `SELECT `+listColumns+`, p.headers, p.value, p.edited_value FROM consumer_parked p
		WHERE p.id = $1`, id)
	if err != nil {
		return Parked{}, fmt.Errorf("reading parked record %d: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return Parked{}, fmt.Errorf("reading parked record %d: %w", id, err)
		}
		return Parked{}, ErrNotFound
	}
	var headers []byte
	var p Parked
	var value, edited []byte
	p, err = scanListed(rows, &headers, &value, &edited)
	if err != nil {
		return Parked{}, fmt.Errorf("reading parked record %d: %w", id, err)
	}
	p.Value, p.EditedValue = value, edited
	if p.Headers, err = envelope.UnmarshalHeaders(headers); err != nil {
		return Parked{}, fmt.Errorf("reading parked record %d: %w", id, err)
	}
	return p, nil
}

// Action is an operator's action on parked records: who takes it and why,
// for the audit trail.
type Action struct {
	Actor  string
	Reason string
}

// Replay sends the dead records f selects back through the first retry
// tier of their group, due at once, their attempts counted anew: the
// group's members apply them, and the records waiting behind them, in
// order, or park them again if they fail again. edited, when not nil,
// replaces the payload of the one record selected (the original is kept);
// it must be valid for the record's type. It returns how many records it
// replayed.
func Replay(ctx context.Context, pool *pgxpool.Pool, f Filter, edited []byte, a Action) (int, error) {
	return act(ctx, pool, f, a, "replay", []string{StateDead}, func(tx pgx.Tx, b *pgx.Batch, rows []*actRow, now time.Time) error {
		if edited != nil {
			if len(rows) != 1 {
				return fmt.Errorf("%w: an edit applies to exactly one record, and %d are selected", ErrBadEdit, len(rows))
			}
			if err := topics.Validate(rows[0].eventType, edited); err != nil {
				return fmt.Errorf("%w: %w", ErrBadEdit, err)
			}
		}
		var fs []outbox.Forward
		for _, r := range rows {
			version := r.version + 1
			b.Queue(`UPDATE consumer_parked SET state = 'retrying', tier = 1, version = $2, attempts = 0, not_before = $3,
				edited_value = coalesce($4, edited_value), updated_at = now() WHERE id = $1`, r.id, version, now, edited)
			rec := r.record()
			if edited != nil {
				rec.Value = edited
			}
			fs = append(fs, forwardOf(r.group, rec, r.orig, 1, version, 0, now, now, nil, now))
			r.edited = edited
		}
		return outbox.QueueForwards(b, fs...)
	})
}

// Skip resolves the dead records f selects without applying them: they
// stay listed as skipped, their events count as applied (a duplicate
// arriving later is passed over), and the records waiting behind them
// follow. It returns how many records it skipped.
func Skip(ctx context.Context, pool *pgxpool.Pool, f Filter, a Action) (int, error) {
	return act(ctx, pool, f, a, "skip", []string{StateDead}, func(tx pgx.Tx, b *pgx.Batch, rows []*actRow, now time.Time) error {
		for _, r := range rows {
			b.Queue(`UPDATE consumer_parked SET state = 'skipped', updated_at = now() WHERE id = $1`, r.id)
		}
		return resolved(ctx, tx, b, rows, now)
	})
}

// Purge deletes the dead or skipped records f selects, payload and all
// (the audit trail keeps who, when, why and where the record was, not its
// bytes); a purged dead record is resolved as by Skip. It returns how many
// records it purged.
func Purge(ctx context.Context, pool *pgxpool.Pool, f Filter, a Action) (int, error) {
	return act(ctx, pool, f, a, "purge", []string{StateDead, StateSkipped}, func(tx pgx.Tx, b *pgx.Batch, rows []*actRow, now time.Time) error {
		var dead []*actRow
		for _, r := range rows {
			b.Queue(`DELETE FROM consumer_parked WHERE id = $1`, r.id)
			if r.state == StateDead {
				dead = append(dead, r)
			}
		}
		return resolved(ctx, tx, b, dead, now)
	})
}

// actRow is a parked record an action works on.
type actRow struct {
	parkedRow
	group     string
	eventID   *uuid.UUID
	eventType string
	edited    []byte // a replay's corrected payload
}

// act runs an operator action in one transaction: it locks the keys of
// the records f selects in states, then the records (the order the
// workers lock in), lets do queue its changes, audits each record, and
// commits.
func act(ctx context.Context, pool *pgxpool.Pool, f Filter, a Action, action string, states []string,
	do func(pgx.Tx, *pgx.Batch, []*actRow, time.Time) error) (int, error) {
	if !f.selects() {
		return 0, ErrNoSelection
	}
	if strings.TrimSpace(a.Actor) == "" {
		return 0, ErrNoActor
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The audit lock first: a rebuild starting reads the audit trail once
	// no action is under way, and every later action sees its lease.
	if _, err := tx.Exec(ctx, `LOCK TABLE dlq_audit IN ROW EXCLUSIVE MODE`); err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	// The keys of the records selected in any state they can reach the
	// states acted on from (a retrying record turns dead, a waiting one
	// retrying), so that a record a worker changes meanwhile has its key
	// locked too: the worker holds it, and this waits for it.
	lockWhere, lockArgs := f.where([]string{StateRetrying, StateWaiting, StateDead}, nil)
	rows, err := tx.Query(ctx, `SELECT k.group_id, k.topic, k.key FROM consumer_parked_keys k
		WHERE (k.group_id, k.topic, k.key) IN (SELECT p.group_id, p.topic, p.key FROM consumer_parked p WHERE `+lockWhere+`)
		ORDER BY k.group_id, k.topic, k.key FOR UPDATE`, lockArgs...)
	if err != nil {
		return 0, fmt.Errorf("%s: locking keys: %w", action, err)
	}
	locked := map[string]bool{}
	for rows.Next() {
		var g, t string
		var k []byte
		if err := rows.Scan(&g, &t, &k); err != nil {
			rows.Close()
			return 0, fmt.Errorf("%s: locking keys: %w", action, err)
		}
		locked[g+"\x00"+keyOf(t, k)] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("%s: locking keys: %w", action, err)
	}
	where, args := f.where(states, nil)
	rows, err = tx.Query(ctx, `SELECT p.group_id, p.event_id, p.event_type, `+parkedColumns("p.")+`
		FROM consumer_parked p WHERE `+where+` ORDER BY p.id FOR UPDATE`, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	var sel []*actRow
	for rows.Next() {
		r := new(actRow)
		p, err := scanParked(rows, &r.group, &r.eventID, &r.eventType)
		if err != nil {
			rows.Close()
			return 0, fmt.Errorf("%s: %w", action, err)
		}
		r.parkedRow = *p
		// A record of a key parked since the keys were locked is left to
		// the next action: it was not there when this one began.
		if r.state != StateSkipped && r.ordered && len(r.key) > 0 && !locked[r.group+"\x00"+keyOf(r.orig.topic, r.key)] {
			continue
		}
		sel = append(sel, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	if len(sel) == 0 {
		return 0, nil
	}
	groups := make([]string, len(sel))
	for i, r := range sel {
		groups[i] = r.group
	}
	var rebuilding []string
	if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(group_id), '{}') FROM consumer_rebuilds
		WHERE group_id = ANY($1) AND heartbeat_at > now() - $2::interval`, groups, rebuildLease.String()).Scan(&rebuilding); err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	if len(rebuilding) > 0 {
		return 0, fmt.Errorf("%w: %s", ErrRebuilding, strings.Join(rebuilding, ", "))
	}
	var b pgx.Batch
	now := time.Now()
	if err := do(tx, &b, sel, now); err != nil {
		return 0, err
	}
	for _, r := range sel {
		b.Queue(`INSERT INTO dlq_audit (actor, action, reason, parked_id, group_id, topic, partition, "offset", key,
				event_id, event_type, edited_value)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			a.Actor, action, a.Reason, r.id, r.group, r.orig.topic, r.orig.partition, r.orig.offset, r.key,
			r.eventID, r.eventType, r.edited)
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return 0, fmt.Errorf("%s: %w", action, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("%s: committing: %w", action, err)
	}
	return len(sel), nil
}

// resolved queues what follows dead records resolved without being
// applied: their events marked applied, and their keys released, each to
// the first record waiting behind it (woken through the first retry tier
// at once) or freed.
func resolved(ctx context.Context, tx pgx.Tx, b *pgx.Batch, rows []*actRow, now time.Time) error {
	var fs []outbox.Forward
	for _, r := range rows {
		if r.eventID != nil {
			b.Queue(`INSERT INTO consumer_applied (group_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, r.group, *r.eventID)
		}
		if !r.ordered || len(r.key) == 0 {
			continue
		}
		rows, err := tx.Query(ctx, `SELECT `+parkedColumns("p.")+` FROM consumer_parked p
			WHERE p.group_id = $1 AND p.topic = $2 AND p.key = $3 AND p.ordered AND p.state = 'waiting'
			ORDER BY p.id LIMIT 1`, r.group, r.orig.topic, r.key)
		if err != nil {
			return fmt.Errorf("finding the record behind %d: %w", r.id, err)
		}
		var next *parkedRow
		for rows.Next() {
			if next, err = scanParked(rows); err != nil {
				break
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		if err != nil {
			return fmt.Errorf("finding the record behind %d: %w", r.id, err)
		}
		if next == nil {
			b.Queue(releaseKeySQL, r.group, r.orig.topic, r.key)
			continue
		}
		fs = append(fs, wake(func(sql string, args ...any) { b.Queue(sql, args...) }, r.group, next, now))
	}
	return outbox.QueueForwards(b, fs...)
}
