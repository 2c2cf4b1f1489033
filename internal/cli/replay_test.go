package cli_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/tally-dev/tally/internal/cli"
	"github.com/tally-dev/tally/internal/testenv"
)

func TestReplayCommand(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	if _, err := pool.Exec(context.Background(), `INSERT INTO revenue_invoices (invoice_id, customer_id, currency, status,
		total, amount_paid, amount_due, last_sequence, last_event_at) VALUES ('stray', 'c', 'EUR', 'open', 1, 0, 1, 1, now())`); err != nil {
		t.Fatal(err)
	}
	tally := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"replay"}, args...), func(string) string { return "" }, &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, args := range [][]string{{}, {"nope"}, {"-from", "yesterday", "revenue"}, {"revenue", "extra"}} {
		if code, _, _ := tally(args...); code != 2 {
			t.Errorf("tally replay %q exited %d, want 2 (usage)", args, code)
		}
	}
	// The topic is empty: the rebuilt projection is, too.
	code, out, stderr := tally("-database-url", url, "-kafka-brokers", strings.Join(seeds, ","), "revenue")
	if code != 0 || !strings.Contains(out, "rebuilt revenue from 0 records") || !strings.Contains(out, "revenue_invoices 0 rows") ||
		!strings.Contains(stderr, "rebuilding revenue") {
		t.Errorf("tally replay revenue: %d\n%s%s", code, out, stderr)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM revenue_invoices`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d invoices in the projection after rebuilding it from an empty topic (%v)", n, err)
	}
}
