package importer_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

func TestSpeed(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("ROWS"))
	if n == 0 {
		t.Skip()
	}
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	for i := range 1000 {
		pool.Exec(ctx, `INSERT INTO customers (id, name, email, version, created_at, updated_at) VALUES ($1, 'n', 'a@b.c', 1, now(), now())`, fmt.Sprintf("cus-%d", i))
	}
	path := filepath.Join(t.TempDir(), "sales.csv")
	f, _ := os.Create(path)
	w := bufio.NewWriter(f)
	w.WriteString("external_id,customer_id,currency,amount,quantity,product,date\n")
	for i := range n {
		fmt.Fprintf(w, "ord-%d,cus-%d,USD,\"%d.%02d\",%d,Widget %d,2025-%02d-%02d\n", i, i%1000, i%5000, i%100, i%5+1, i%50, i%12+1, i%28+1)
	}
	w.Flush()
	f.Close()
	f, _ = os.Open(path)
	start := time.Now()
	file, err := importer.Check(f, "sales")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("check %v", time.Since(start))
	im := importer.New(pool, nil)
	rep, err := im.Import(ctx, file, importer.Options{Meta: billing.Meta{Source: "/tally/import", CorrelationID: "c", CausationID: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("%+v", rep.Created)
	t.Logf("%d rows in %v: %.0f rows/s", n, el, float64(n)/el.Seconds())
}
