package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/cli"
	"github.com/tally-dev/tally/internal/testenv"
)

// seedDLQ parks, as the revenue group would have: a dead record of key K
// with one waiting behind it, and a dead record of key L. It returns their
// ids.
func seedDLQ(t *testing.T, p *pgxpool.Pool) (k, waiting, l int64) {
	t.Helper()
	ctx := context.Background()
	payload := `{"id":"K","name":"n","email":"a@b.c","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}`
	headers := `[{"key":"ce_type","value":"tally.customer.updated.v1"},{"key":"ce_id","value":"0190a0b0-0000-7000-8000-000000000001"}]`
	insert := `INSERT INTO consumer_parked (group_id, topic, partition, "offset", record_time, key, ordered, event_id,
			event_type, headers, value, state, attempts, error_class, error, first_failed_at, last_failed_at)
		VALUES ('revenue', 'tally.customers.v1', 0, $1, now(), $2, true, $3, 'tally.customer.updated.v1', $4, $5, $6, $7,
			$8, $9, now(), now()) RETURNING id`
	scan := func(off int64, key, id, state string, attempts int, class, msg string) int64 {
		var n int64
		var eid any
		if id != "" {
			eid = id
		}
		if err := p.QueryRow(ctx, insert, off, []byte(key), eid, headers, []byte(payload), state, attempts, class, msg).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	k = scan(3, "K", "0190a0b0-0000-7000-8000-000000000001", "dead", 4, "transient", "boom\nsecond line")
	waiting = scan(5, "K", "0190a0b0-0000-7000-8000-000000000002", "waiting", 0, "", "")
	l = scan(7, "L", "", "dead", 1, "permanent", "poison")
	if _, err := p.Exec(ctx, `INSERT INTO consumer_parked_keys (group_id, topic, key) VALUES
		('revenue', 'tally.customers.v1', 'K'), ('revenue', 'tally.customers.v1', 'L')`); err != nil {
		t.Fatal(err)
	}
	return k, waiting, l
}

func TestDLQCommands(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	k, waiting, l := seedDLQ(t, pool)
	env := func(string) string { return "" }
	tally := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"dlq", "-database-url", url}, args...), env, &out, &errb)
		return code, out.String(), errb.String()
	}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	code, out, stderr := tally("list")
	if code != 0 || !strings.Contains(out, "ID") || strings.Count(out, "revenue") != 2 || !strings.Contains(out, "boom") ||
		strings.Contains(out, "second line") {
		t.Errorf("list: %d\n%s%s", code, out, stderr)
	}
	code, out, _ = tally("list", "-key", "K", "-state", "dead,waiting", "-json")
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("list -json printed %q: %v", line, err)
		}
		rows = append(rows, m)
	}
	if code != 0 || len(rows) != 2 || rows[0]["waiting"] != 1.0 || rows[1]["state"] != "waiting" {
		t.Errorf("list -key K -json: %d %v", code, rows)
	}
	code, out, _ = tally("show", strconv.FormatInt(k, 10))
	if code != 0 || !strings.Contains(out, `"email": "a@b.c"`) || !strings.Contains(out, "ce_type: tally.customer.updated.v1") ||
		!strings.Contains(out, "1 record(s) of its key behind it") {
		t.Errorf("show: %d\n%s", code, out)
	}
	if code, _, _ = tally("show", "999999"); code != 1 {
		t.Errorf("show of an unknown id exited %d, want 1", code)
	}

	// Bad input is refused before anything is done.
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"list", "-state", "lost"}, {"list", "-since", "yesterday"}, {"list", "-limit", "0"},
		{"replay"}, {"skip", "-actor", "", "-all"}, {"show"}, {"show", "x"}, {"replay", "-id", "-3"}, {"purge", "extra"},
	} {
		if code, _, _ := tally(args...); code != 2 {
			t.Errorf("tally dlq %q exited %d, want 2 (usage)", args, code)
		}
	}
	if count("SELECT count(*) FROM dlq_audit") != 0 {
		t.Fatal("a refused command acted")
	}

	code, out, stderr = tally("replay", "-id", strconv.FormatInt(k, 10), "-reason", "fixed the handler")
	if code != 0 || !strings.Contains(out, "replayed: 1 record(s)") {
		t.Errorf("replay: %d %s%s", code, out, stderr)
	}
	if count("SELECT count(*) FROM consumer_parked WHERE state = 'retrying' AND attempts = 0") != 1 ||
		count("SELECT count(*) FROM consumer_parked WHERE state = 'waiting' AND id = "+strconv.FormatInt(waiting, 10)) != 1 ||
		count("SELECT count(*) FROM outbox WHERE topic = 'tally.revenue.retry.1'") != 1 {
		t.Error("the replayed record was not sent back through the first retry tier")
	}
	code, out, _ = tally("skip", "-key", "L", "-actor", "ops@example", "-reason", "known bad")
	if code != 0 || !strings.Contains(out, "skipped: 1 record(s)") {
		t.Errorf("skip: %d %s", code, out)
	}
	if count("SELECT count(*) FROM consumer_parked_keys WHERE key = 'L'") != 0 {
		t.Error("skipping L's dead record did not release L")
	}
	code, out, _ = tally("purge", "-all")
	if code != 0 || !strings.Contains(out, "purged: 1 record(s)") {
		t.Errorf("purge -all: %d %s", code, out)
	}
	if count("SELECT count(*) FROM consumer_parked WHERE id = "+strconv.FormatInt(l, 10)) != 0 {
		t.Error("purge -all left L's skipped record")
	}
	if n := count("SELECT count(*) FROM dlq_audit"); n != 3 {
		t.Errorf("%d audited actions, want 3", n)
	}
	if n := count("SELECT count(*) FROM dlq_audit WHERE actor = 'ops@example' AND reason = 'known bad'"); n != 1 {
		t.Error("the skip's actor and reason are not in the audit trail")
	}
}
