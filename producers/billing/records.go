package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/money"
)

// StatusActive is the state of a sale or an expense until it is deleted
// (StatusDeleted), which is final.
const StatusActive = "active"

// maxExternalIDCh bounds an external_id.
const maxExternalIDCh = 200

// Lifecycle is what a sale and an expense share beyond their own fields:
// their state, the id a CSV import gave them, their version and times.
type Lifecycle struct {
	Status string `json:"status"`
	// ExternalID is the id the row had in the CSV file it was imported
	// from (its external_id column); empty for records made through the
	// JSON API. A record with a given external_id is imported once.
	ExternalID string     `json:"external_id,omitempty"`
	Version    int64      `json:"version"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	DeletedAt  *time.Time `json:"deleted_at,omitempty"`
}

// newLifecycle starts the lifecycle of a record created now.
func newLifecycle(p *problems, m Meta, externalID *string) Lifecycle {
	now := m.now()
	l := Lifecycle{Status: StatusActive, Version: 1, CreatedAt: now, UpdatedAt: now}
	if externalID != nil {
		if !plainText(*externalID, maxExternalIDCh) {
			p.add("external_id", "must be 1 to %d characters, not blank, without control characters", maxExternalIDCh)
		}
		l.ExternalID = *externalID
	}
	return l
}

// lifecycleColumns are the columns of a Lifecycle, in the order of scan.
const lifecycleColumns = `status, coalesce(external_id, ''), version, created_at, updated_at, deleted_at`

func (l *Lifecycle) scan() []any {
	return []any{&l.Status, &l.ExternalID, &l.Version, &l.CreatedAt, &l.UpdatedAt, &l.DeletedAt}
}

// utc puts the times read from PostgreSQL in UTC, as commands make them.
func (l *Lifecycle) utc() {
	l.CreatedAt, l.UpdatedAt = l.CreatedAt.UTC(), l.UpdatedAt.UTC()
	if l.DeletedAt != nil {
		*l.DeletedAt = l.DeletedAt.UTC()
	}
}

// nullable maps an absent optional text ("") to NULL.
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// kind is the shape of the commands on one kind of record (sales,
// expenses): rows that are created, patched and deleted, whose events carry
// the whole record after the change.
type kind[T comparable] struct {
	noun   string // "sale", in errors
	events string // the prefix of its event types, "tally.sale"
	// table and columns are what read selects, and scan reads them.
	table, columns string
	scan           func(pgx.Row) (T, error)
	id             func(*T) string
	life           func(*T) *Lifecycle
	insert         func(tx Tx, v *T)
	save           func(tx Tx, v *T)
}

// read reads the record id, locked when lock is set; no row is
// ErrNotFound.
func (k kind[T]) read(ctx context.Context, q Querier, id string, lock bool) (T, error) {
	sql := "SELECT " + k.columns + " FROM " + k.table + " WHERE id = $1"
	if lock {
		sql += " FOR NO KEY UPDATE"
	}
	v, err := k.scan(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return v, fmt.Errorf("%w: %s %q", ErrNotFound, k.noun, id)
	}
	if err != nil {
		return v, fmt.Errorf("reading %s: %w", k.noun, err)
	}
	k.life(&v).utc()
	return v, nil
}

// active reads a record that is not deleted (ErrGone otherwise), locked
// when lock is set.
func (k kind[T]) active(ctx context.Context, q Querier, id string, lock bool) (T, error) {
	v, err := k.read(ctx, q, id, lock)
	if err == nil && k.life(&v).Status == StatusDeleted {
		var zero T
		return zero, fmt.Errorf("%w: %s %q was deleted", ErrGone, k.noun, id)
	}
	return v, err
}

// create writes v, which newLifecycle began, and returns its created event.
func (k kind[T]) create(tx Tx, m Meta, v T) (T, []envelope.Event, error) {
	ev, err := k.event(m, "created", &v)
	if err != nil {
		var zero T
		return zero, nil, err
	}
	k.insert(tx, &v)
	return v, []envelope.Event{ev}, nil
}

// event returns the event of a change of v.
func (k kind[T]) event(m Meta, change string, v *T) (envelope.Event, error) {
	return m.event(k.events+"."+change+".v1", k.id(v), k.life(v).Version, "", *v)
}

// update patches the active record id: apply checks the patch and applies
// it to a copy. patchID is the id the patch names, if any (it cannot
// change); empty says the patch has no field. A patch that changes nothing
// returns the record as it is and no event.
func (k kind[T]) update(ctx context.Context, tx Tx, m Meta, id string, patchID *string, empty bool, apply func(*problems, *T)) (T, []envelope.Event, error) {
	var (
		p    problems
		zero T
	)
	if patchID != nil && *patchID != id {
		p.add("id", "cannot change")
	}
	if empty {
		p.add("", "give at least one field to change")
	}
	if err := p.err(); err != nil {
		return zero, nil, err
	}
	cur, err := k.active(ctx, tx, id, true)
	if err != nil {
		return zero, nil, err
	}
	next := cur
	apply(&p, &next)
	if err := p.err(); err != nil {
		return zero, nil, err
	}
	if next == cur {
		return cur, nil, nil
	}
	l := k.life(&next)
	l.Version++
	l.UpdatedAt = m.now()
	return k.saved(tx, m, "updated", next)
}

// remove deletes the active record id. Its row stays, marked deleted; the
// deleted event carries the record as it was, status deleted.
func (k kind[T]) remove(ctx context.Context, tx Tx, m Meta, id string) (T, []envelope.Event, error) {
	v, err := k.active(ctx, tx, id, true)
	if err != nil {
		return v, nil, err
	}
	now := m.now()
	l := k.life(&v)
	l.Status, l.DeletedAt, l.UpdatedAt = StatusDeleted, &now, now
	l.Version++
	return k.saved(tx, m, "deleted", v)
}

func (k kind[T]) saved(tx Tx, m Meta, change string, v T) (T, []envelope.Event, error) {
	ev, err := k.event(m, change, &v)
	if err != nil {
		var zero T
		return zero, nil, err
	}
	k.save(tx, &v)
	return v, []envelope.Event{ev}, nil
}

// setCurrency validates the currency of a new record or a patch and
// applies it to dst.
func setCurrency(p *problems, in *string, dst *string, creating bool) {
	switch {
	case in != nil:
		if _, err := money.ParseCurrency(*in); err != nil {
			p.add("currency", "must be an ISO 4217 code such as USD")
		}
		*dst = *in
	case creating:
		p.required("currency")
	}
}

// setAmount validates the amount of a new record or a patch and applies it
// to dst.
func setAmount(p *problems, in *int64, dst *int64, creating bool) {
	switch {
	case in != nil && *in < 0:
		p.add("amount", "must not be negative")
	case in != nil:
		*dst = *in
	case creating:
		p.required("amount")
	}
}

// checkOptionalText validates an optional text of a patch or a new record:
// 1 to max characters, or, in a patch, "" to remove it.
func checkOptionalText(p *problems, field, s string, max int, creating bool) {
	if s == "" && !creating {
		return
	}
	if !plainText(s, max) {
		p.add(field, "must be 1 to %d characters, not blank, without control characters", max)
	}
}
