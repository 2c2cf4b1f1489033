package importer_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// completedEvents returns the statuses of import id's completed events.
func completedEvents(t *testing.T, pool *pgxpool.Pool, id string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT payload FROM outbox WHERE type = 'tally.import.completed.v1' AND key = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p []byte
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		var c struct{ Status, Failure string }
		if err := json.Unmarshal(p, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c.Status)
	}
	return out
}

func withCustomer(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := testenv.Pool(t)
	if _, err := pool.Exec(context.Background(), `INSERT INTO customers (id, name, email, version, created_at, updated_at)
		VALUES ('cus-1', 'Ada', 'ada@example.com', 1, now(), now())`); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestReapStaleFailsSilentImportsOnly(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	now := time.Now()
	if _, err := pool.Exec(ctx, `INSERT INTO imports (id, type, mode, status, filename, rows, processed, created, started_at, updated_at)
		VALUES ('imp_dead', 'sales', 'partial', 'running', 'dead.csv', 9000, 4000, 3990, $1, $2),
			('imp_alive', 'sales', 'partial', 'running', 'alive.csv', 9000, 2000, 2000, $1, $3),
			('imp_done', 'sales', 'partial', 'completed', 'done.csv', 10, 10, 10, $1, $2)`,
		now.Add(-time.Hour), now.Add(-10*time.Minute), now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	n, err := importer.ReapStale(ctx, pool, importer.StaleAfter, now)
	if err != nil || n != 1 {
		t.Fatalf("reaped %d (%v), want 1", n, err)
	}
	dead, err := importer.Get(ctx, pool, "imp_dead")
	if err != nil {
		t.Fatal(err)
	}
	if dead.Status != importer.StatusFailed || dead.Created != 3990 || dead.FinishedAt == nil ||
		!strings.Contains(dead.Failure, "no sign of the process importing it since") {
		t.Errorf("the silent import: %+v", dead)
	}
	if got := completedEvents(t, pool, "imp_dead"); len(got) != 1 || got[0] != importer.StatusFailed {
		t.Errorf("its completed events: %v, want one, failed", got)
	}
	for id, want := range map[string]string{"imp_alive": importer.StatusRunning, "imp_done": importer.StatusCompleted} {
		if r, err := importer.Get(ctx, pool, id); err != nil || r.Status != want || len(completedEvents(t, pool, id)) != 0 {
			t.Errorf("%s: %+v (%v), want %s and no event", id, r, err, want)
		}
	}
	if n, err := importer.ReapStale(ctx, pool, importer.StaleAfter, now); err != nil || n != 0 {
		t.Errorf("a second reaping failed %d (%v), want none", n, err)
	}
}

// An import reaped while its process still works on it (a process that was
// paused, say) commits nothing more, and ends with the reaper's event only.
func TestReapedImportCommitsNothingMore(t *testing.T) {
	t.Parallel()
	pool := withCustomer(t)
	ctx := context.Background()
	file, _, _ := salesFile(12000, "r-")
	f, err := importer.Check(strings.NewReader(file), "sales")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var once sync.Once
	var reapErr error
	rep, err := importer.New(pool, nil).Import(ctx, f, importer.Options{
		Meta: billing.Meta{Source: importer.Source, CorrelationID: "t"},
		Progress: func(done, total int64) {
			// After its first batch, the import is taken for dead.
			once.Do(func() { _, reapErr = importer.ReapStale(ctx, pool, -time.Hour, time.Now()) })
		}})
	if reapErr != nil {
		t.Fatal(reapErr)
	}
	if !errors.Is(err, importer.ErrReaped) {
		t.Fatalf("the reaped import returned %+v, %v; want ErrReaped", rep, err)
	}
	var id string
	if err := pool.QueryRow(ctx, `SELECT id FROM imports`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	stored, err := importer.Get(ctx, pool, id)
	if err != nil {
		t.Fatal(err)
	}
	sales := count(t, pool, "SELECT count(*) FROM sales")
	if stored.Status != importer.StatusFailed || sales != stored.Created || stored.Created == 0 || stored.Processed >= 12000 {
		t.Errorf("stored %+v with %d sales; want failed, with the sales of the batches committed before the reaping only", stored, sales)
	}
	if events := count(t, pool, "SELECT count(*) FROM outbox WHERE type = 'tally.sale.created.v1'"); events != sales {
		t.Errorf("%d created events for %d sales", events, sales)
	}
	if got := completedEvents(t, pool, id); len(got) != 1 || got[0] != importer.StatusFailed {
		t.Errorf("completed events %v, want the reaper's alone", got)
	}
}

// A live import's record is touched between its batches, so the reaper
// leaves it be however long one takes.
func TestHeartbeatKeepsASlowImportAlive(t *testing.T) {
	t.Parallel()
	pool := withCustomer(t)
	ctx := context.Background()
	file, _, _ := salesFile(4500, "h-")
	f, err := importer.Check(strings.NewReader(file), "sales")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var once sync.Once
	var reaped int
	var reapErr error
	rep, err := importer.New(pool, nil, importer.WithHeartbeat(20*time.Millisecond)).Import(ctx, f, importer.Options{
		Meta: billing.Meta{Source: importer.Source, CorrelationID: "t"},
		Progress: func(done, total int64) {
			once.Do(func() {
				// A batch that takes ten times the stale window.
				time.Sleep(500 * time.Millisecond)
				reaped, reapErr = importer.ReapStale(ctx, pool, 100*time.Millisecond, time.Now())
			})
		}})
	if err != nil || reapErr != nil || reaped != 0 {
		t.Fatalf("import %v, reaper %v, reaped %d; want a completed import, none reaped", err, reapErr, reaped)
	}
	if rep.Status != importer.StatusCompleted || len(completedEvents(t, pool, rep.ID)) != 1 {
		t.Errorf("report %+v", rep)
	}
}
