package notify_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/notify"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/topics"
)

type obj = map[string]any

const stamp = "2025-03-01T09:00:00Z"

// event makes a valid event of typ about subject on its topic, at the
// subject's first version.
func event(t *testing.T, typ, subject string, payload obj) *kgo.Record {
	t.Helper()
	return eventAt(t, typ, subject, 1, payload)
}

// eventAt makes a valid event of typ about subject, at its version seq.
func eventAt(t *testing.T, typ, subject string, seq int64, payload obj) *kgo.Record {
	t.Helper()
	data, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := topics.Validate(typ, data); err != nil {
		t.Fatalf("%s: %v", typ, err)
	}
	topic, _ := topics.TopicOf(typ)
	e := envelope.Event{ID: envelope.NewID(), Type: typ, Source: "/test", Subject: subject, Time: time.Now().UTC(),
		Sequence: seq, CorrelationID: "c", Data: data}
	return e.Record(topic)
}

// applied waits until the group has applied n records of its main topics.
func applied(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int
		if err := pool.QueryRow(context.Background(), `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets
			WHERE group_id = 'notify' AND topic NOT LIKE '%.retry.%' AND next_offset > 0`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group applied %d of %d records", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeliveriesFollowFilters(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	ctx := context.Background()
	endpoint := func(types []string, disabled bool) string {
		e, err := webhook.CreateEndpoint(ctx, pool, webhook.NewEndpoint{URL: "https://hooks.example.com/", EventTypes: types, Disabled: disabled})
		if err != nil {
			t.Fatal(err)
		}
		return e.ID
	}
	all := endpoint([]string{"*"}, false)
	invoices := endpoint([]string{"tally.invoice.*"}, false)
	welcome := endpoint([]string{"tally.customer.created.v1"}, false)
	figures := endpoint([]string{"tally.revenue.*", "tally.kpi.calculated.v1"}, false)
	off := endpoint([]string{"*"}, true)

	recs := []*kgo.Record{
		event(t, "tally.customer.created.v1", "c1", obj{"id": "c1", "name": "Ada", "email": "ada@example.com",
			"created_at": stamp, "updated_at": stamp}),
		event(t, "tally.invoice.payment_received.v1", "i1", obj{"invoice_id": "i1", "customer_id": "c1", "payment_id": "p1",
			"currency": "USD", "amount": 500, "paid_at": "2025-03-02", "total": 1000, "amount_paid": 500, "amount_due": 500}),
		event(t, "tally.kpi.calculated.v1", "USD:2025-03:gross_sales", obj{"kpi": "gross_sales", "currency": "USD",
			"granularity": "month", "period": "2025-03", "start": "2025-03-01", "end": "2025-03-31", "value": 5000,
			"previous": nil, "version": 1}),
	}
	// Each record twice, as a relay that crashed after publishing sends it.
	cl := testenv.Client(t, seeds)
	if err := cl.ProduceSync(ctx, append(recs, recs...)...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	run := func() {
		c, err := consumer.New(pool, notify.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(seeds...)))
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); c.Run(cctx) }()
		applied(t, pool, 2*len(recs))
		cancel()
		<-done
	}
	run()

	want := map[string][]string{
		all:      {"tally.customer.created.v1", "tally.invoice.payment_received.v1", "tally.kpi.calculated.v1"},
		invoices: {"tally.invoice.payment_received.v1"},
		welcome:  {"tally.customer.created.v1"},
		figures:  {"tally.kpi.calculated.v1"},
		off:      nil,
	}
	check := func(when string) {
		t.Helper()
		for ep, types := range want {
			ds, err := webhook.ListDeliveries(ctx, pool, ep, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range ds {
				got = append(got, d.EventType)
				if d.Status != webhook.StatePending || d.WebhookID != webhook.MessageID(d.EventID, ep) {
					t.Errorf("%s: delivery %+v", when, d)
				}
			}
			slices.Sort(got) // the topics are read in no set order
			if !slices.Equal(got, types) {
				t.Errorf("%s: endpoint %s got %v; want %v", when, ep, got, types)
			}
		}
	}
	check("after each record was read twice")

	// Redelivered after they were applied (their marks deleted, as if a
	// replay from the start), the events write no second delivery: a
	// delivery is unique by event and endpoint.
	if _, err := pool.Exec(ctx, `DELETE FROM consumer_applied WHERE group_id = 'notify'; DELETE FROM consumer_offsets WHERE group_id = 'notify'`); err != nil {
		t.Fatal(err)
	}
	run()
	check("after every event was applied again")
}
