package mail

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Errors of the message log; each wraps one of these, for errors.Is.
var (
	// ErrNotFound: no such message.
	ErrNotFound = errors.New("mail: not found")
	// ErrNotResendable: only a failed or cancelled message is sent again
	// on request; a pending one is on its way, and a sent one would carry
	// the Message-ID of the copy already delivered, which clients drop.
	ErrNotResendable = errors.New("mail: the message cannot be sent again")
)

// DB is what the log reads and writes through: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Record is a queued message, as the log shows it. Its recipient is To
// when it was queued with an address, or else the customer's at sending
// time.
type Record struct {
	ID            int64           `json:"id"`
	Key           string          `json:"key"`
	Kind          string          `json:"kind"`
	EventID       uuid.UUID       `json:"event_id"`
	To            *string         `json:"to"`
	CustomerID    *string         `json:"customer_id"`
	InvoiceID     *string         `json:"invoice_id"`
	Data          json.RawMessage `json:"data"`
	Status        string          `json:"status"`
	Attempts      int             `json:"attempts"`
	NextAttemptAt *time.Time      `json:"next_attempt_at"`
	LastError     *string         `json:"last_error"`
	CreatedAt     time.Time       `json:"created_at"`
	CompletedAt   *time.Time      `json:"completed_at"`
}

// Filter selects messages; empty fields select all.
type Filter struct {
	Status     string
	CustomerID string
	InvoiceID  string
	Kind       string
}

const recordColumns = `id, key, kind, event_id, to_email, customer_id, invoice_id, data::text, status, attempts,
	CASE WHEN status = 'pending' THEN next_attempt_at END, last_error, created_at, completed_at`

func scanRecord(r pgx.Row) (Record, error) {
	var m Record
	var data string
	err := r.Scan(&m.ID, &m.Key, &m.Kind, &m.EventID, &m.To, &m.CustomerID, &m.InvoiceID, &data, &m.Status, &m.Attempts,
		&m.NextAttemptAt, &m.LastError, &m.CreatedAt, &m.CompletedAt)
	m.Data = json.RawMessage(data)
	return m, err
}

// List returns at most limit messages f selects with ids above after,
// oldest first.
func List(ctx context.Context, db DB, f Filter, after int64, limit int) ([]Record, error) {
	rows, err := db.Query(ctx, `SELECT `+recordColumns+` FROM mail_messages
		WHERE id > $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR customer_id = $3) AND ($4 = '' OR invoice_id = $4)
			AND ($5 = '' OR kind = $5)
		ORDER BY id LIMIT $6`, after, f.Status, f.CustomerID, f.InvoiceID, f.Kind, limit)
	if err != nil {
		return nil, fmt.Errorf("listing mail messages: %w", err)
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Record, error) { return scanRecord(r) })
	if err != nil {
		return nil, fmt.Errorf("listing mail messages: %w", err)
	}
	return ms, nil
}

// Get returns message id, or an error wrapping ErrNotFound.
func Get(ctx context.Context, db DB, id int64) (Record, error) {
	m, err := scanRecord(db.QueryRow(ctx, `SELECT `+recordColumns+` FROM mail_messages WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, fmt.Errorf("%w: mail message %d", ErrNotFound, id)
	}
	if err != nil {
		return Record{}, fmt.Errorf("reading mail message %d: %w", id, err)
	}
	return m, nil
}

// Resend makes the failed or cancelled message id due at now, with a new
// round of attempts, and returns it; other states are ErrNotResendable.
func Resend(ctx context.Context, db DB, id int64, now time.Time) (Record, error) {
	m, err := scanRecord(db.QueryRow(ctx, `UPDATE mail_messages SET status = 'pending', attempts = 0, next_attempt_at = $2,
			leased_until = NULL, completed_at = NULL
		WHERE id = $1 AND status IN ('failed', 'cancelled') RETURNING `+recordColumns, id, now))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, err := Get(ctx, db, id)
		if err != nil {
			return Record{}, err
		}
		return Record{}, fmt.Errorf("%w: mail message %d is %s", ErrNotResendable, id, cur.Status)
	}
	if err != nil {
		return Record{}, fmt.Errorf("resending mail message %d: %w", id, err)
	}
	return m, nil
}

// Prune deletes at most limit messages that ended (sent, failed or
// cancelled) before before, the oldest first, and returns how many. Their
// keys go with them: an event applied again after that (which the consumer
// runtime's marks prevent) could queue its message again.
func Prune(ctx context.Context, db DB, before time.Time, limit int) (int64, error) {
	ct, err := db.Exec(ctx, `WITH old AS (
			SELECT id FROM mail_messages WHERE status <> 'pending' AND completed_at < $1 ORDER BY completed_at LIMIT $2)
		DELETE FROM mail_messages m USING old WHERE m.id = old.id AND m.status <> 'pending' AND m.completed_at < $1`, before, limit)
	if err != nil {
		return 0, fmt.Errorf("pruning mail messages: %w", err)
	}
	return ct.RowsAffected(), nil
}
