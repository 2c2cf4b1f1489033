package importer_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// salesFile is a file of n sales rows in which every 100th row has a bad
// amount and, in each block of 2,000 rows (an import's batch), the ids
// x<k> and y<k> come twice: first x then y in one block, y then x in the
// next, so that two writers insert them in opposite orders.
func salesFile(n int, prefix string) (file string, bad, repeats int) {
	var b strings.Builder
	b.WriteString("external_id,customer_id,currency,amount,date\n")
	for i := range n {
		ext, amount := fmt.Sprintf("%s%d", prefix, i), "1.00"
		switch block, at := i/2000, i%2000; {
		case at == 10 || at == 1990:
			first, second := "x", "y"
			if block%2 == 1 {
				first, second = second, first
			}
			if at == 1990 {
				first = second
			}
			ext = fmt.Sprintf("%s%s%d", prefix, first, block/2)
			repeats++
		case i%100 == 0:
			amount = "1.001"
			bad++
		}
		fmt.Fprintf(&b, "%s,cus-1,USD,%s,2025-03-01\n", ext, amount)
	}
	return b.String(), bad, repeats
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// An import of many batches, written two at a time, counts every row once,
// keeps its errors in row order, stores what it reports, and writes one
// event per created row.
func TestImportOfManyBatches(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO customers (id, name, email, version, created_at, updated_at)
		VALUES ('cus-1', 'Ada', 'ada@example.com', 1, now(), now())`); err != nil {
		t.Fatal(err)
	}
	const n = 9000
	file, bad, repeats := salesFile(n, "o-")
	// Of each x/y pair written twice, the second occurrence is a duplicate.
	dups := int64(repeats / 2)
	im := importer.New(pool, nil)
	var (
		mu    sync.Mutex
		dones []int64
	)
	meta := billing.Meta{Source: importer.Source, CorrelationID: "t", CausationID: "t"}
	f, err := importer.Check(strings.NewReader(file), "sales")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := im.Import(ctx, f, importer.Options{Meta: meta, Filename: "many.csv", Progress: func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if total != n {
			t.Errorf("progress of %d rows, want %d", total, n)
		}
		dones = append(dones, done)
	}})
	if err != nil {
		t.Fatal(err)
	}
	created := int64(n) - int64(bad) - dups
	if rep.Rows != n || rep.Created != created || rep.Duplicates != dups || rep.Rejected != int64(bad) || rep.ErrorsTotal != int64(bad) {
		t.Errorf("report %+v; want %d rows, %d created, %d duplicates, %d rejected", rep, n, created, dups, bad)
	}
	if !slices.IsSortedFunc(rep.Errors, func(a, b importer.RowError) int { return int(a.Row - b.Row) }) || len(rep.Errors) != bad {
		t.Errorf("%d errors, not in row order: %v", len(rep.Errors), rep.Errors)
	}
	if len(dones) != n/2000+1 || !slices.IsSorted(dones) || dones[len(dones)-1] != n {
		t.Errorf("progress %v; want one call per batch, rising to %d", dones, n)
	}
	if got := count(t, pool, "SELECT count(*) FROM sales"); got != created {
		t.Errorf("%d sales, want %d", got, created)
	}
	if got := count(t, pool, "SELECT count(*) FROM outbox WHERE type = 'tally.sale.created.v1' AND source = $1", importer.Source); got != created {
		t.Errorf("%d created events, want %d", got, created)
	}
	stored, err := importer.Get(ctx, pool, rep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Created != rep.Created || stored.Duplicates != rep.Duplicates || stored.Processed != n ||
		!slices.Equal(stored.Errors, rep.Errors) || stored.Filename != "many.csv" || stored.Status != importer.StatusCompleted {
		t.Errorf("stored %+v; want what was reported, %+v", stored, rep)
	}

	// all_or_nothing on the same rows, under new ids: nothing is written.
	file, _, _ = salesFile(n, "n-")
	f2, err := importer.Check(strings.NewReader(file), "sales")
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	rep, err = im.Import(ctx, f2, importer.Options{Meta: meta, Mode: importer.AllOrNothing})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != importer.StatusFailed || rep.Created != 0 || rep.Rejected != int64(bad) {
		t.Errorf("all_or_nothing: %+v", rep)
	}
	if got := count(t, pool, "SELECT count(*) FROM sales"); got != created {
		t.Errorf("%d sales after a failed all_or_nothing import, want the %d from before", got, created)
	}
	if stored, err := importer.Get(ctx, pool, rep.ID); err != nil || len(stored.Errors) != bad || stored.Status != importer.StatusFailed {
		t.Errorf("the failed import is stored as %+v, %v", stored, err)
	}
}
