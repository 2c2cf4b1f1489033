package kpi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/testenv"
)

// running is a member of the KPI group on a broker of its own.
type running struct {
	cl       *kgo.Client
	produced int
}

func runGroup(t *testing.T, pool *pgxpool.Pool) *running {
	t.Helper()
	_, seeds := testenv.Kafka(t)
	c, err := consumer.New(pool, kpi.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &running{cl: testenv.Client(t, seeds)}
}

// apply produces h's events from the nth on and waits until the group
// applied them.
func (r *running) apply(t *testing.T, pool *pgxpool.Pool, h *history, from int) {
	t.Helper()
	var recs []*kgo.Record
	for i := from; i < len(h.evs); i++ {
		recs = append(recs, h.evs[i].Record(h.tops[i]))
	}
	if err := r.cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	r.produced += len(recs)
	waitApplied(t, pool, r.produced)
}

// calculated returns the tally.kpi.calculated.v1 events in the outbox of
// subject, in order.
func calculated(t *testing.T, pool *pgxpool.Pool, subject string) []kpi.Calculated {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT payload FROM outbox WHERE type = 'tally.kpi.calculated.v1'
		AND subject = $1 ORDER BY sequence`, subject)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []kpi.Calculated
	for rows.Next() {
		var raw []byte
		var c kpi.Calculated
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func publish(t *testing.T, pool *pgxpool.Pool) kpi.PublishReport {
	t.Helper()
	rep, err := kpi.Publish(context.Background(), pool, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// Each change of a KPI's value is announced once, however many events
// made it: a burst of a thousand sales is one announcement per KPI and
// period; a run with nothing new announces nothing.
func TestPublishAnnouncesEachChangeOnceCoalesced(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	g := runGroup(t, pool)
	h := march(t)
	g.apply(t, pool, h, 0)
	if rep := publish(t, pool); rep.Days == 0 || rep.Changes == 0 {
		t.Fatalf("the first run: %+v; want the marked days' KPIs announced", rep)
	}
	got := calculated(t, pool, "USD:2025-03:gross_sales")
	if len(got) != 1 || string(got[0].Value) != "40000" || string(got[0].Previous) != "null" || got[0].Version != 1 ||
		got[0].Granularity != kpi.Month || got[0].Start.String() != "2025-03-01" || got[0].End.String() != "2025-03-31" {
		t.Errorf("March's gross sales announced as %+v", got)
	}
	if got := calculated(t, pool, "USD:2025-03:gross_margin"); len(got) != 1 || string(got[0].Value) != `"0.6923"` {
		t.Errorf("March's gross margin announced as %+v", got)
	}
	if got := calculated(t, pool, "USD:2025-03-05:new_customers"); len(got) != 1 || string(got[0].Value) != "1" {
		t.Errorf("March 5's new customers announced as %+v", got)
	}
	if rep := publish(t, pool); rep != (kpi.PublishReport{}) {
		t.Errorf("a run with nothing new: %+v", rep)
	}

	// A burst of 1,000 sales of 1.00 on March 31, by new customers.
	n := len(h.evs)
	for i := range 1000 {
		id := fmt.Sprintf("b%04d", i)
		h.sale(id, "c1", "USD", "2025-03-31", 100, 0, "")
	}
	g.apply(t, pool, h, n)
	rep := publish(t, pool)
	if rep.Days != 1 {
		t.Errorf("the burst marked %d days; want March 31 alone", rep.Days)
	}
	got = calculated(t, pool, "USD:2025-03:gross_sales")
	if len(got) != 2 || string(got[1].Value) != "140000" || string(got[1].Previous) != "40000" || got[1].Version != 2 {
		t.Errorf("after the burst, March's gross sales were announced as %+v; want one more announcement, 140000", got)
	}
	if got := calculated(t, pool, "USD:2025-03-31:orders"); len(got) != 1 || string(got[0].Value) != "1000" {
		t.Errorf("March 31's orders announced as %+v", got)
	}
	// What did not change is not announced again.
	if got := calculated(t, pool, "USD:2025-03:cogs"); len(got) != 1 {
		t.Errorf("March's COGS, unchanged by the burst, announced %d times", len(got))
	}
	// Every value kept was announced, at its version.
	var unannounced int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM kpi_values v WHERE NOT EXISTS (
		SELECT 1 FROM outbox o WHERE o.type = 'tally.kpi.calculated.v1'
			AND o.subject = v.currency || ':' || v.period || ':' || v.kpi AND o.sequence = v.version)`).Scan(&unannounced); err != nil {
		t.Fatal(err)
	}
	if unannounced != 0 {
		t.Errorf("%d KPI values kept were never announced", unannounced)
	}
}

// Two publishers at once announce each change once.
func TestConcurrentPublishersAnnounceOnce(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	g := runGroup(t, pool)
	g.apply(t, pool, march(t), 0)
	var wg sync.WaitGroup
	var reps [2]kpi.PublishReport
	for i := range reps {
		wg.Go(func() {
			var err error
			if reps[i], err = kpi.Publish(context.Background(), pool, 3); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var dups int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM (SELECT subject, sequence FROM outbox
		WHERE type = 'tally.kpi.calculated.v1' GROUP BY 1, 2 HAVING count(*) > 1) d`).Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if dups != 0 || reps[0].Changes+reps[1].Changes == 0 {
		t.Errorf("two publishers: %+v; %d versions announced twice", reps, dups)
	}
	if got := calculated(t, pool, "USD:2025-03:gross_sales"); len(got) != 1 {
		t.Errorf("March's gross sales announced %d times", len(got))
	}
}
