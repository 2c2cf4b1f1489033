package scheduler_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/scheduler"
)

func TestTasksRunAtStartAndEveryInterval(t *testing.T) {
	t.Parallel()
	var good, bad atomic.Int32
	notified := make(chan struct{}, 100)
	reg := prometheus.NewRegistry()
	s, err := scheduler.New([]scheduler.Task{
		{Name: "bad", Run: func(context.Context, time.Time) (int, error) {
			bad.Add(1)
			return 0, errors.New("the database is on fire")
		}},
		{Name: "good", Run: func(context.Context, time.Time) (int, error) {
			good.Add(1)
			return 2, nil
		}},
	}, scheduler.WithInterval(20*time.Millisecond), scheduler.WithRegisterer(reg),
		scheduler.WithNotify(func() { notified <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	// The first run is at once; then ticks. A failing task stops neither the
	// scheduler nor the task after it.
	deadline := time.After(10 * time.Second)
	for good.Load() < 3 {
		select {
		case <-deadline:
			t.Fatalf("after 10 s the good task ran %d times; want a run every 20 ms", good.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v after its context ended; want nil", err)
	}
	runs := good.Load()
	if bad.Load() < runs-1 {
		t.Errorf("the failing task ran %d times, the good one %d: a failure must not stop it from running again", bad.Load(), runs)
	}
	if len(notified) != int(runs) {
		t.Errorf("notified %d times for %d runs that wrote events", len(notified), runs)
	}
	if got := value(t, reg, `tally_scheduler_runs_total{outcome="ok",task="good"}`); got != float64(runs) {
		t.Errorf("tally_scheduler_runs_total{task=good,outcome=ok} is %v, want %d", got, runs)
	}
	// A run the stop cut short is no failure of the task.
	if got, n := value(t, reg, `tally_scheduler_runs_total{outcome="error",task="bad"}`), float64(bad.Load()); got != n && got != n-1 {
		t.Errorf("tally_scheduler_runs_total{task=bad,outcome=error} is %v, want %v (or one less, the run the stop cut short)", got, n)
	}
	if got := value(t, reg, `tally_scheduler_events_total{task="good"}`); got != float64(2*runs) {
		t.Errorf("tally_scheduler_events_total{task=good} is %v, want %d", got, 2*runs)
	}
	if got := value(t, reg, `tally_scheduler_last_success_timestamp_seconds{task="good"}`); time.Since(time.Unix(int64(got), 0)) > time.Minute {
		t.Errorf("the good task's last success is %v, not just now", got)
	}
	if n := testutil.CollectAndCount(reg, "tally_scheduler_last_success_timestamp_seconds"); n != 1 {
		t.Errorf("%d last-success series; only the task that succeeded has one", n)
	}
}

func TestOnceReportsEachFailedTask(t *testing.T) {
	t.Parallel()
	s, err := scheduler.New([]scheduler.Task{
		{Name: "a", Run: func(context.Context, time.Time) (int, error) { return 0, errors.New("boom") }},
		{Name: "b", Run: func(context.Context, time.Time) (int, error) { return 0, nil }},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Once(context.Background()); err == nil || !strings.Contains(err.Error(), "task a: boom") {
		t.Errorf("Once returned %v; want the failure of task a named", err)
	}
	if _, err := scheduler.New(nil); err == nil {
		t.Error("a scheduler without tasks was created")
	}
	if _, err := scheduler.New([]scheduler.Task{{Name: "x"}}, scheduler.WithInterval(0)); err == nil {
		t.Error("a scheduler with a zero interval was created")
	}
}

// The revenue task announces each day of an invoice once, as days pass,
// with two schedulers running at once.
func TestTheRevenueTaskAnnouncesEachDayOnce(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	// A ledger of 3.00 over 2026-01-01..03, written directly: the ledger
	// itself is tested in consumers/revenue.
	if _, err := pool.Exec(ctx, `INSERT INTO revenue_ledger (invoice_id, customer_id, history, version, last_sequence)
		VALUES ('i1', 'c1', '{"customer_id":"c1","payments":[],"versions":[{"seq":1,"event_id":"e1","status":"open","effective":"2026-01-01",
		"terms":{"currency":"USD","issued":"2026-01-01","net":300,"total":300,"lines":[{"net":300,"start":"2026-01-01","end":"2026-01-03"}]}}]}', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	var now atomic.Pointer[time.Time]
	set := func(s string) {
		d, err := time.Parse(time.DateOnly, s)
		if err != nil {
			t.Fatal(err)
		}
		d = d.Add(23 * time.Hour)
		now.Store(&d)
	}
	clock := func() time.Time { return *now.Load() }
	var ss [2]*scheduler.Scheduler
	for i := range ss {
		var err error
		if ss[i], err = scheduler.New(scheduler.Tasks(pool, scheduler.Settings{KPIEvery: time.Second, Notices: billing.DefaultNoticeSchedule, NotifyRetention: 90 * 24 * time.Hour}), scheduler.WithClock(clock)); err != nil {
			t.Fatal(err)
		}
	}
	for _, day := range []string{"2025-12-31", "2026-01-01", "2026-01-01", "2026-01-02", "2026-01-05", "2026-01-06"} {
		set(day)
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Go(func() {
				if err := s.Once(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	rows, err := pool.Query(ctx, `SELECT payload FROM outbox WHERE type = 'tally.revenue.recognized.v1' ORDER BY shard, seq`)
	if err != nil {
		t.Fatal(err)
	}
	days := map[string]int64{}
	var sum int64
	events := 0
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		var r revenue.Recognized
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		events++
		sum += r.Amount
		for _, d := range r.Days {
			if _, dup := days[d.Date.String()]; dup {
				t.Errorf("%s announced twice", d.Date)
			}
			days[d.Date.String()] = d.Amount
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"2026-01-01": 100, "2026-01-02": 100, "2026-01-03": 100}
	if len(days) != 3 || days["2026-01-01"] != 100 || days["2026-01-02"] != 100 || days["2026-01-03"] != 100 || sum != 300 {
		t.Errorf("announced %v (sum %d); want %v", days, sum, want)
	}
	if events != 3 {
		t.Errorf("%d recognized events; want one for each of the three runs that found days due", events)
	}
}

// value returns the value of the counter or gauge series, spelled
// name{label="value",...} with the labels in name order.
func value(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			if mf.GetName()+"{"+strings.Join(ls, ",")+"}" == series {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s", series)
	return 0
}

func TestNotifyRetention(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	ctx := context.Background()
	now := time.Now()
	old, recent := now.Add(-100*24*time.Hour), now.Add(-time.Hour)
	if _, err := pool.Exec(ctx, `INSERT INTO webhook_endpoints (id, url, event_types, secret) VALUES ('we_1', 'https://hooks.example.com/', '{*}', 'whsec_x')`); err != nil {
		t.Fatal(err)
	}
	delivery := func(status string, completed *time.Time) {
		t.Helper()
		if _, err := pool.Exec(ctx, `WITH d AS (INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, event_time, payload, status, completed_at, created_at)
				VALUES ('we_1', gen_random_uuid(), 'tally.customer.created.v1', $3, '{}', $1, $2, $3) RETURNING id)
			INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, duration_ms) SELECT id, $3, 200, 5 FROM d`,
			status, completed, old); err != nil {
			t.Fatal(err)
		}
	}
	message := func(key, status string, completed *time.Time) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO mail_messages (key, kind, event_id, to_email, data, status, completed_at, created_at, next_attempt_at)
			VALUES ($1, 'welcome', gen_random_uuid(), 'a@example.com', '{}', $2, $3, $4, $4)`, key, status, completed, old); err != nil {
			t.Fatal(err)
		}
	}
	delivery("succeeded", &old)
	delivery("failed", &old)
	delivery("pending", nil)
	delivery("succeeded", &recent)
	message("old-sent", "sent", &old)
	message("old-cancelled", "cancelled", &old)
	message("old-pending", "pending", nil)
	message("recent-sent", "sent", &recent)

	find := func(s scheduler.Settings) *scheduler.Task {
		for _, task := range scheduler.Tasks(pool, s) {
			if task.Name == "notify.retention" {
				return &task
			}
		}
		return nil
	}
	if find(scheduler.Settings{KPIEvery: time.Second}) != nil {
		t.Error("a zero retention runs notify.retention")
	}
	task := find(scheduler.Settings{KPIEvery: time.Second, NotifyRetention: 90 * 24 * time.Hour})
	if task == nil {
		t.Fatal("no notify.retention task")
	}
	if _, err := task.Run(ctx, now); err != nil {
		t.Fatal(err)
	}
	var deliveries, attempts, messages int
	var kept []string
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM webhook_deliveries), (SELECT count(*) FROM webhook_attempts),
			(SELECT count(*) FROM mail_messages), (SELECT array_agg(key ORDER BY key) FROM mail_messages)`).
		Scan(&deliveries, &attempts, &messages, &kept); err != nil {
		t.Fatal(err)
	}
	if deliveries != 2 || attempts != 2 || messages != 2 || strings.Join(kept, ",") != "old-pending,recent-sent" {
		t.Errorf("kept %d deliveries, %d attempts, messages %v; want the pending and the recent ones", deliveries, attempts, kept)
	}
}
