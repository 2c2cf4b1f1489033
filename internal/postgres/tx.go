package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrRolledBack is returned by Commit when the server rolled the
// transaction back instead of committing it.
var ErrRolledBack = errors.New("postgres: the transaction was rolled back")

// Tx is a transaction on one pooled connection that spends as few round
// trips as it can. BEGIN travels with its first statement; writes given to
// Queue travel with the next statement; and Commit sends what is left with
// COMMIT. A change that only writes costs one round trip; one that reads,
// then writes, two (four with a plain transaction). On a small machine the
// round trips, not the statements, are what a commit mostly costs, on both
// sides of the connection.
//
// The gotchas: a queued write's error surfaces at the next statement, or at
// Commit, not at Queue (statements still run in the order given); and after
// any error the Tx refuses every further statement with that error, as the
// transaction can only be rolled back.
//
// A Tx is not safe for concurrent use. Call Rollback when done (deferred);
// after Commit it only returns the connection to the pool.
type Tx struct {
	conn    *pgxpool.Conn
	begun   bool               // BEGIN was sent
	pending []*pgx.QueuedQuery // queued writes, not yet sent
	err     error              // the first error; the transaction is lost
}

// Begin acquires a connection for a transaction; it sends nothing yet.
func Begin(ctx context.Context, pool *pgxpool.Pool) (*Tx, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquiring a connection: %w", err)
	}
	return &Tx{conn: conn}, nil
}

// Queue adds a write to be sent with the next statement or with Commit.
func (t *Tx) Queue(sql string, args ...any) {
	t.pending = append(t.pending, &pgx.QueuedQuery{SQL: sql, Arguments: args})
}

// lead returns a batch of what must precede the next statement: BEGIN for
// the first, and the queued writes. It is nil when there is nothing.
func (t *Tx) lead() *pgx.Batch {
	if t.begun && len(t.pending) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	if !t.begun {
		b.Queue("BEGIN")
		t.begun = true
	}
	b.QueuedQueries = append(b.QueuedQueries, t.pending...)
	t.pending = nil
	return b
}

// fail records err as the transaction's first error, unless it only says
// that a query found no row, which leaves the transaction intact.
func (t *Tx) fail(err error) error {
	if err != nil && t.err == nil && !errors.Is(err, pgx.ErrNoRows) {
		t.err = err
	}
	return err
}

// Exec runs one statement in the transaction.
func (t *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.err != nil {
		return pgconn.CommandTag{}, t.err
	}
	b := t.lead()
	if b == nil {
		tag, err := t.conn.Exec(ctx, sql, args...)
		return tag, t.fail(err)
	}
	var tag pgconn.CommandTag
	b.Queue(sql, args...).Exec(func(ct pgconn.CommandTag) error { tag = ct; return nil })
	err := t.conn.SendBatch(ctx, b).Close()
	return tag, t.fail(err)
}

// Err returns the first error the transaction met, after which it can only
// be rolled back; nil while it is intact.
func (t *Tx) Err() error { return t.err }

// Flush sends what is queued now, so that an error of a queued write
// surfaces here, where the caller knows what queued it. It costs a round
// trip when anything is queued, and nothing otherwise.
func (t *Tx) Flush(ctx context.Context) error {
	if t.err != nil {
		return t.err
	}
	b := t.lead()
	if b == nil {
		return nil
	}
	return t.fail(t.conn.SendBatch(ctx, b).Close())
}

// QueryRow runs a query of one row in the transaction. When something must
// precede it (BEGIN, queued writes), all of it is sent when Scan is called.
func (t *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return leadRow{t, ctx, sql, args}
}

type leadRow struct {
	t    *Tx
	ctx  context.Context
	sql  string
	args []any
}

func (r leadRow) Scan(dest ...any) error {
	t := r.t
	if t.err != nil {
		return t.err
	}
	b := t.lead()
	if b == nil {
		return t.fail(t.conn.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...))
	}
	b.Queue(r.sql, r.args...).QueryRow(func(row pgx.Row) error { return row.Scan(dest...) })
	return t.fail(t.conn.SendBatch(r.ctx, b).Close())
}

// Query runs a query in the transaction. What must precede it costs a
// round trip of its own; prefer QueryRow (an aggregate) after queued writes.
func (t *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.err != nil {
		return nil, t.err
	}
	if b := t.lead(); b != nil {
		if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
			return nil, t.fail(err)
		}
	}
	rows, err := t.conn.Query(ctx, sql, args...)
	return rows, t.fail(err)
}

// Commit sends the queued writes, the statements of b (which may be nil)
// and COMMIT in one round trip, and returns the first error of any of them,
// after which Rollback ends the transaction. The gotcha: callbacks queued on
// b run after the server has executed COMMIT, so an error they return
// cannot undo it; make a write that must not happen fail on the server.
func (t *Tx) Commit(ctx context.Context, b *pgx.Batch) error {
	if t.err != nil {
		return t.err
	}
	last := t.lead()
	if last == nil {
		last = &pgx.Batch{}
	}
	if b != nil {
		last.QueuedQueries = append(last.QueuedQueries, b.QueuedQueries...)
	}
	// COMMIT of a transaction that an earlier statement aborted answers
	// ROLLBACK, not an error.
	last.Queue("COMMIT").Exec(func(ct pgconn.CommandTag) error {
		if ct.String() != "COMMIT" {
			return ErrRolledBack
		}
		return nil
	})
	return t.fail(t.conn.SendBatch(ctx, last).Close())
}

// Rollback ends the transaction if it is still open and returns the
// connection to the pool. It is safe to call after Commit, and twice.
func (t *Tx) Rollback(ctx context.Context) {
	if t.conn == nil {
		return
	}
	if t.conn.Conn().PgConn().TxStatus() != 'I' {
		if _, err := t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); err != nil {
			// The pool discards a connection left in a transaction.
			t.conn.Conn().PgConn().Close(context.WithoutCancel(ctx))
		}
	}
	t.conn.Release()
	t.conn = nil
}
