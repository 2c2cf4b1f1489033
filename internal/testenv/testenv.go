// Package testenv gives each test its own PostgreSQL database and its own
// Kafka cluster (kfake on a real TCP port), so tests run in parallel and talk
// to both over their real wire protocols.
//
// The server is TALLY_TEST_DATABASE_URL, or the local one (127.0.0.1:5432,
// user postgres). Databases are copied from a template migrated once per
// schema, which is much faster than migrating each one.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/postgres"
)

// ServerURL is the PostgreSQL server tests use, with database "postgres".
func ServerURL() string {
	if u := os.Getenv("TALLY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// DatabaseURL creates a fresh, migrated database for t, dropped when t ends,
// and returns its URL.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		t.Fatalf("connecting to the test PostgreSQL server (is it running?): %v", err)
	}
	defer admin.Close(ctx)
	tmpl, err := template(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	name := "tally_test_" + randomHex(6)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl)); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, ServerURL())
		if err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
		}
	})
	return urlFor(t, name)
}

// Pool returns a pool on a fresh, migrated database for t.
func Pool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := DatabaseURL(t)
	pool, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}

// template returns the template database of the current schema, creating and
// migrating it if this is the first test to need it. An advisory lock keeps
// test binaries running in parallel from racing.
func template(ctx context.Context, admin *pgx.Conn) (string, error) {
	name := "tally_template_" + postgres.Fingerprint()
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(7363001)"); err != nil {
		return "", fmt.Errorf("locking template: %w", err)
	}
	defer admin.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7363001)")
	var ok bool
	err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&ok)
	if err != nil || ok {
		return name, err
	}
	// A template left half-made by a killed run is rebuilt.
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("creating template: %w", err)
	}
	u, err := withDatabase(ServerURL(), name)
	if err != nil {
		return "", err
	}
	if _, _, err := postgres.Migrate(ctx, u); err != nil {
		return "", fmt.Errorf("migrating template: %w", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE true"); err != nil {
		return "", err
	}
	return name, nil
}

func urlFor(t testing.TB, db string) string {
	u, err := withDatabase(ServerURL(), db)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func withDatabase(server, db string) (string, error) {
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		return "", err
	}
	pw := ""
	if cfg.Password != "" {
		pw = ":" + cfg.Password
	}
	return fmt.Sprintf("postgres://%s%s@%s:%d/%s?sslmode=disable", cfg.User, pw, cfg.Host, cfg.Port, db), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Kafka starts a one-broker kfake cluster for t with Tally's topics, and
// returns it and its seed addresses.
func Kafka(t testing.TB, opts ...kfake.Opt) (*kfake.Cluster, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := devkafka.Ephemeral(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

// Client returns a Kafka client for tests, closed when t ends. The short
// metadata age makes retries after injected faults quick.
func Client(t testing.TB, seeds []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.FetchMaxWait(250 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}
