package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
)

func TestTxCommitsAndRollsBack(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE t (k int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// A first Exec, more statements, and a batch sent with COMMIT.
	tx, err := postgres.Begin(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := tx.Exec(ctx, "INSERT INTO t VALUES (1, 'a')"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("first exec: %v %v", tag, err)
	}
	var v string
	if err := tx.QueryRow(ctx, "SELECT v FROM t WHERE k = 1").Scan(&v); err != nil || v != "a" {
		t.Fatalf("reading its own write: %q %v", v, err)
	}
	var b pgx.Batch
	b.Queue("INSERT INTO t VALUES (2, 'b')")
	if err := tx.Commit(ctx, &b); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	if n := count(); n != 2 {
		t.Errorf("%d rows after commit, want 2", n)
	}

	// A first QueryRow finding nothing, then a failing statement in the
	// commit batch: nothing is written, and the error is the statement's.
	tx, _ = postgres.Begin(ctx, pool)
	err = tx.QueryRow(ctx, "SELECT v FROM t WHERE k = 99 FOR UPDATE").Scan(&v)
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("first QueryRow of nothing: %v, want pgx.ErrNoRows", err)
	}
	b = pgx.Batch{}
	b.Queue("INSERT INTO t VALUES (3, 'c')")
	b.Queue("INSERT INTO t VALUES (1, 'dup')")
	var pe *pgconn.PgError
	if err := tx.Commit(ctx, &b); !errors.As(err, &pe) || pe.Code != "23505" {
		t.Errorf("commit with a duplicate: %v, want a unique violation", err)
	}
	tx.Rollback(ctx)
	if n := count(); n != 2 {
		t.Errorf("%d rows after a failed commit, want 2", n)
	}

	// A statement that failed earlier (its error ignored) makes Commit
	// report that error rather than commit.
	tx, _ = postgres.Begin(ctx, pool)
	tx.Exec(ctx, "INSERT INTO t VALUES (1, 'dup')")
	if err := tx.Commit(ctx, nil); !errors.As(err, &pe) || pe.Code != "23505" {
		t.Errorf("commit after a failed statement: %v, want the statement's error", err)
	}
	tx.Rollback(ctx)

	// Commit alone begins and commits; Query may come first; the pool's
	// connections stay usable throughout.
	tx, _ = postgres.Begin(ctx, pool)
	rows, err := tx.Query(ctx, "SELECT k FROM t ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	ks, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || len(ks) != 2 {
		t.Errorf("query as the first statement: %v %v", ks, err)
	}
	b = pgx.Batch{}
	b.Queue("INSERT INTO t VALUES (4, 'd')")
	if err := tx.Commit(ctx, &b); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	tx, _ = postgres.Begin(ctx, pool)
	b = pgx.Batch{}
	b.Queue("INSERT INTO t VALUES (5, 'e')")
	if err := tx.Commit(ctx, &b); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	if n := count(); n != 4 {
		t.Errorf("%d rows, want 4", n)
	}
	tx, _ = postgres.Begin(ctx, pool)
	tx.Rollback(ctx) // nothing was sent: nothing to undo
	tx.Rollback(ctx) // and twice is harmless
}

func TestTxQueuedWritesTravelWithTheNextStatement(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE t (k int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	tx, _ := postgres.Begin(ctx, pool)
	tx.Queue("INSERT INTO t VALUES (1)")
	tx.Queue("INSERT INTO t VALUES (2)")
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
		t.Errorf("a read after two queued writes counts %d (%v), want 2", n, err)
	}
	tx.Queue("INSERT INTO t VALUES (3)")
	if err := tx.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n)
	if n != 3 {
		t.Errorf("%d rows committed, want 3", n)
	}

	// A queued write that fails reports at the next statement, and
	// nothing of the transaction is kept.
	tx, _ = postgres.Begin(ctx, pool)
	tx.Queue("INSERT INTO t VALUES (4)")
	tx.Queue("INSERT INTO t VALUES (1)")
	var pe *pgconn.PgError
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (5)"); !errors.As(err, &pe) || pe.Code != "23505" {
		t.Errorf("the statement after a failing queued write: %v, want its unique violation", err)
	}
	tx.Rollback(ctx)
	pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n)
	if n != 3 {
		t.Errorf("%d rows after a failed transaction, want 3", n)
	}
}

// After a statement fails, nothing more is sent: a first statement that
// never reached the server must not leave later ones to autocommit.
func TestTxRefusesStatementsAfterAnError(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE t (k int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	tx, _ := postgres.Begin(ctx, pool)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tx.Exec(canceled, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("an Exec under a canceled context succeeded")
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); err == nil {
		t.Error("the Tx ran a statement after an error")
	}
	if err := tx.Commit(ctx, nil); err == nil {
		t.Error("the Tx committed after an error")
	}
	tx.Rollback(ctx)
	var n int
	pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n)
	if n != 0 {
		t.Errorf("%d rows kept from a failed transaction", n)
	}

	// Finding no row is not an error of the transaction.
	tx, _ = postgres.Begin(ctx, pool)
	var k int
	if err := tx.QueryRow(ctx, "SELECT k FROM t WHERE k = 9").Scan(&k); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	tx.Queue("INSERT INTO t VALUES (3)")
	if err := tx.Commit(ctx, nil); err != nil {
		t.Errorf("commit after a query that found nothing: %v", err)
	}
	tx.Rollback(ctx)
}
