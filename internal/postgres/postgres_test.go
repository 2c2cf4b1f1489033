package postgres_test

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/testenv"
)

func TestEnsureDatabaseThenMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := fmt.Sprintf("tally_test_ensure_%d", time.Now().UnixNano())
	u, err := neturl.Parse(testenv.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	url := u.String()
	t.Cleanup(func() {
		admin, err := pgx.Connect(context.Background(), testenv.ServerURL())
		if err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})

	for range 2 { // the second call finds it and does nothing
		if err := postgres.EnsureDatabase(ctx, url); err != nil {
			t.Fatalf("EnsureDatabase: %v", err)
		}
	}
	from, to, err := postgres.Migrate(ctx, url)
	if err != nil || from != 0 || to < 2 {
		t.Fatalf("first migration from %d to %d: %v", from, to, err)
	}
	again, to2, err := postgres.Migrate(ctx, url)
	if err != nil || again != to || to2 != to {
		t.Errorf("second migration from %d to %d (%v); want a no-op at %d", again, to2, err, to)
	}
	pool, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var shards int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox_heads JOIN relay_cursors USING (shard)").Scan(&shards); err != nil || shards != 64 {
		t.Errorf("%d shards seeded (%v), want 64 with a head and a cursor each", shards, err)
	}
}

func TestOpenNamesTheServerItCannotReach(t *testing.T) {
	t.Parallel()
	_, err := postgres.Open(context.Background(), "postgres://nobody:secret@127.0.0.1:1/x?connect_timeout=2")
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v: want one naming the server and never the password", err)
	}
	if _, err := postgres.Open(context.Background(), "::not a url"); err == nil {
		t.Error("a malformed URL opened")
	}
}

// Invoices refer to customers without a foreign key (migration 003): the
// invoice writes look the customer up, and a customer with invoices cannot
// be deleted.
func TestInvoicedCustomersCannotBeDeleted(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
		INSERT INTO customers VALUES ('c1', 'A', 'a@b.c', 1, now(), now()), ('c2', 'B', 'b@b.c', 1, now(), now());
		INSERT INTO invoices (id, customer_id, currency, status, issued_at, due_at, lines, subtotal, discount, tax,
			total, amount_paid, version, created_at, updated_at)
		VALUES ('i1', 'c1', 'USD', 'open', '2025-01-01', '2025-01-31', '[]', 0, 0, 0, 0, 0, 1, now(), now())`)
	if err != nil {
		t.Fatal(err)
	}
	var pe *pgconn.PgError
	if _, err := pool.Exec(ctx, "DELETE FROM customers WHERE id = 'c1'"); !errors.As(err, &pe) || pe.Code != "23503" {
		t.Errorf("deleting an invoiced customer: %v, want a foreign key violation", err)
	}
	if _, err := pool.Exec(ctx, "DELETE FROM customers WHERE id = 'c2'"); err != nil {
		t.Errorf("deleting a customer without invoices: %v", err)
	}
}

// Migration 012 gives the customers made before email existed their
// addresses, and every migration since steps down and up again.
func TestMailContactsBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.DatabaseURL(t)
	if _, _, err := postgres.MigrateTo(ctx, url, 11); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO customers (id, name, email, version, created_at, updated_at)
		VALUES ('c1', 'Ada', 'ada@example.com', 3, now(), now())`); err != nil {
		t.Fatal(err)
	}
	if _, to, err := postgres.Migrate(ctx, url); err != nil || to < 12 {
		t.Fatalf("migrating up again: to %d, %v", to, err)
	}
	var name, email string
	var seq int64
	if err := conn.QueryRow(ctx, `SELECT name, email, sequence FROM mail_contacts WHERE customer_id = 'c1'`).Scan(&name, &email, &seq); err != nil ||
		name != "Ada" || email != "ada@example.com" || seq != 3 {
		t.Errorf("the contact: %q %q %d (%v), want Ada, ada@example.com, 3", name, email, seq, err)
	}
}
