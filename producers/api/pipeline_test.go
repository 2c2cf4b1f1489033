package api_test

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/relay"
)

// TestTwoRelaysAndConcurrentWritersKeepEachInvoiceInOrder has eight clients
// update and pay the same few invoices at once while two relays publish:
// on Kafka, each invoice's events must arrive exactly as its audit trail in
// PostgreSQL lists them, versions 1..n without a gap or a repeat.
func TestTwoRelaysAndConcurrentWritersKeepEachInvoiceInOrder(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	_, seeds := testenv.Kafka(t)
	s := serve(t, pool, defaultConfig)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	for range 2 {
		r, err := relay.New(pool, relay.WithKafkaOptions(kgo.SeedBrokers(seeds...)), relay.WithLogger(log),
			relay.WithRebalanceInterval(50*time.Millisecond), relay.WithBatchSize(20))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); r.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	s.call(t, "POST", rCustomers, "/v1/customers", map[string]any{"id": "c", "name": "Ada", "email": "ada@example.com"})
	ids := []string{"i0", "i1", "i2", "i3", "i4"}
	for _, id := range ids {
		s.call(t, "POST", rInvoices, "/v1/invoices", newInvoice(id, "c", 1_000_000))
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for n := range 40 {
				id := ids[rng.IntN(len(ids))]
				if n%2 == 0 {
					s.call(t, "PATCH", rInvoice, "/v1/invoices/"+id, map[string]any{"tax": rng.IntN(1000)})
				} else {
					r := s.call(t, "POST", rPayments, "/v1/invoices/"+id+"/payments", map[string]any{"amount": 1 + rng.IntN(100)})
					if r.status != http.StatusCreated {
						t.Errorf("payment answered %d", r.status)
					}
				}
			}
		})
	}
	wg.Wait()

	want := map[string][]envelope.Event{}
	total := 0
	for _, id := range ids {
		var inv billing.InvoiceWithPayments
		s.call(t, "GET", rInvoice, "/v1/invoices/"+id, nil).decode(t, &inv)
		evs, err := outbox.Trail(context.Background(), pool, "tally.invoices.v1", id, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(evs)) != inv.Version {
			t.Errorf("%s: %d events in the trail for version %d", id, len(evs), inv.Version)
		}
		want[id] = evs
		total += len(evs)
	}

	cl := testenv.Client(t, seeds, kgo.ConsumeTopics("tally.invoices.v1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := map[string][]envelope.Event{}
	for n := 0; n < total; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%d of %d events reached Kafka", n, total)
		}
		fs.EachRecord(func(r *kgo.Record) {
			e, err := envelope.Decode(r)
			if err != nil {
				t.Fatal(err)
			}
			got[e.Subject] = append(got[e.Subject], e)
			n++
		})
	}
	for _, id := range ids {
		g, w := got[id], want[id]
		if len(g) != len(w) {
			t.Errorf("%s: %d events on Kafka, %d in the trail (no failure happened, so no repeat is allowed)", id, len(g), len(w))
			continue
		}
		for i := range g {
			if g[i].ID != w[i].ID || g[i].Sequence != int64(i+1) {
				t.Errorf("%s: event %d on Kafka is %s v%d, the trail has %s v%d", id, i, g[i].ID, g[i].Sequence, w[i].ID, w[i].Sequence)
				break
			}
		}
	}
	var holders int
	err := pool.QueryRow(context.Background(), `SELECT count(DISTINCT pid) FROM pg_locks
		WHERE locktype = 'advisory' AND objsubid = 2 AND classid = $1::bigint::oid
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, 0x54_41_4c_01).Scan(&holders)
	if err != nil || holders != 2 {
		t.Errorf("%d sessions hold shards (%v); both relays must share them", holders, err)
	}
	t.Logf("%d events of %d invoices, written by 8 clients and published by 2 relays, in order", total, len(ids))
}
