package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/notify"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/api"
)

// Backlogs are the groups ConsumeBacklog measures, each with what fills
// its backlog: the revenue group with invoice events (fillTopic), the KPI
// group with sale events (fillSales), the notify group, with email on and
// three webhook endpoints, with customers and their payments (fillNotify).
var Backlogs = map[string]struct {
	Group   func() *consumer.Group
	fill    func(ctx context.Context, c *kfake.Cluster, n int) error
	prepare func(ctx context.Context, pool *pgxpool.Pool) error // before the group starts; nil: nothing
}{
	"revenue": {revenue.Group, fillTopic, nil},
	"kpi":     {kpi.Group, fillSales, nil},
	"notify":  {func() *consumer.Group { return notify.Group(notify.WithMail()) }, fillNotify, endpoints},
}

// endpoints registers the notify backlog's webhook endpoints: one for
// every event, one for the invoices', one for the welcomes.
func endpoints(ctx context.Context, pool *pgxpool.Pool) error {
	for _, types := range [][]string{{"*"}, {"tally.invoice.*"}, {"tally.customer.created.v1"}} {
		if _, err := webhook.CreateEndpoint(ctx, pool, webhook.NewEndpoint{URL: "https://hooks.example.com/", EventTypes: types}); err != nil {
			return fmt.Errorf("registering a webhook endpoint: %w", err)
		}
	}
	return nil
}

// fillNotify produces n events: of every five, a customer's creation
// (tally.customers.v1) and four payments of its invoice (tally.invoices.v1),
// the last settling it. Each makes two or three webhook deliveries and an
// email.
func fillNotify(ctx context.Context, c *kfake.Cluster, n int) error {
	return produceAll(ctx, c, n, func(i int) (*kgo.Record, error) {
		k, step := i/5, int64(i%5)
		cus, inv := fmt.Sprintf("cus_%08d", k), fmt.Sprintf("inv_%08d", k)
		if step == 0 {
			ev := envelope.Event{ID: envelope.NewID(), Type: "tally.customer.created.v1", Source: "/tally/loadgen", Subject: cus,
				Time: stampTime, Sequence: 1, CorrelationID: "loadgen", Data: fmt.Appendf(nil,
					`{"id":%q,"name":"Customer %d","email":"c%d@example.com","created_at":%q,"updated_at":%q}`, cus, k, k, stamp, stamp)}
			return ev.Record("tally.customers.v1"), nil
		}
		ev := envelope.Event{ID: envelope.NewID(), Type: "tally.invoice.payment_received.v1", Source: "/tally/loadgen", Subject: inv,
			Time: stampTime, Sequence: step + 1, CorrelationID: "loadgen", Data: fmt.Appendf(nil,
				`{"invoice_id":%q,"customer_id":%q,"payment_id":"pay_%08d_%d","currency":"USD","amount":3000,"paid_at":"2025-03-10",`+
					`"total":12000,"amount_paid":%d,"amount_due":%d}`, inv, cus, k, step, 3000*step, 12000-3000*step)}
		return ev.Record("tally.invoices.v1"), nil
	})
}

// ConsumeBacklog measures how fast one member of group (a key of Backlogs)
// applies a backlog of n events already on Kafka (5 versions of each
// aggregate), and returns events per second.
func ConsumeBacklog(ctx context.Context, serverURL, group string, n int, log *slog.Logger) (float64, error) {
	b, ok := Backlogs[group]
	if !ok {
		return 0, fmt.Errorf("no backlog benchmark of group %q", group)
	}
	db, err := newDatabase(ctx, serverURL, 32)
	if err != nil {
		return 0, err
	}
	defer db.drop()
	c, err := devkafka.Ephemeral(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := b.fill(ctx, c, n); err != nil {
		return 0, fmt.Errorf("filling the topic: %w", err)
	}
	if b.prepare != nil {
		if err := b.prepare(ctx, db.pool); err != nil {
			return 0, err
		}
	}
	began := time.Now()
	stop, err := applyBacklog(ctx, db, c, b.Group(), n, log)
	if err != nil {
		return 0, err
	}
	defer stop()
	elapsed := time.Since(began)
	rate := float64(n) / elapsed.Seconds()
	log.Info("the group applied the backlog", "group", group, "events", n, "seconds", elapsed.Seconds(), "events_per_second", int(rate))
	return rate, nil
}

// RebuildFigures are what one rebuild of the revenue group measured.
type RebuildFigures struct {
	Rate   float64       // records rebuilt per second, from the start of Rebuild to the swap
	Paused time.Duration // how long the live group was paused
}

// RebuildBacklog measures a rebuild (tally replay) of the revenue group
// from n invoice events on Kafka, which a live member has applied and keeps
// running through the rebuild.
func RebuildBacklog(ctx context.Context, serverURL string, n int, log *slog.Logger) (RebuildFigures, error) {
	db, err := newDatabase(ctx, serverURL, 32)
	if err != nil {
		return RebuildFigures{}, err
	}
	defer db.drop()
	c, err := devkafka.Ephemeral(ctx)
	if err != nil {
		return RebuildFigures{}, err
	}
	defer c.Close()
	if err := fillTopic(ctx, c, n); err != nil {
		return RebuildFigures{}, fmt.Errorf("filling the topic: %w", err)
	}
	stop, err := applyBacklog(ctx, db, c, revenue.Group(), n, log)
	if err != nil {
		return RebuildFigures{}, err
	}
	defer stop()
	began := time.Now()
	rep, err := consumer.Rebuild(ctx, db.pool, revenue.Group(), consumer.RebuildConfig{},
		consumer.WithKafkaOptions(kgo.SeedBrokers(c.ListenAddrs()...)), consumer.WithLogger(log))
	if err != nil {
		return RebuildFigures{}, err
	}
	elapsed := time.Since(began)
	if rep.Applied != int64(n) || rep.Rows["revenue_invoices"] != int64(n/5) {
		return RebuildFigures{}, fmt.Errorf("the rebuild read %d of %d records and swapped in %d of %d invoices",
			rep.Applied, n, rep.Rows["revenue_invoices"], n/5)
	}
	f := RebuildFigures{Rate: float64(n) / elapsed.Seconds(), Paused: rep.Paused}
	log.Info("the revenue group was rebuilt", "events", n, "seconds", elapsed.Seconds(), "events_per_second", int(f.Rate),
		"paused", rep.Paused)
	return f, nil
}

// applyBacklog starts a member of g and returns once it has applied the n
// records on the cluster; stop stops the member.
func applyBacklog(ctx context.Context, db *database, c *kfake.Cluster, g *consumer.Group, n int, log *slog.Logger) (stop func(), err error) {
	r, err := consumer.New(db.pool, g, consumer.WithKafkaOptions(kgo.SeedBrokers(c.ListenAddrs()...)),
		consumer.WithLogger(log))
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	began := time.Now()
	go func() { defer close(done); r.Run(cctx) }()
	stop = func() { cancel(); <-done }
	for {
		var applied int64
		if err := db.pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE next_offset > 0`).Scan(&applied); err != nil {
			stop()
			return nil, err
		}
		if applied >= int64(n) {
			return stop, nil
		}
		if time.Since(began) > 10*time.Minute {
			stop()
			return nil, fmt.Errorf("the group applied %d of %d events in 10 minutes", applied, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fillTopic produces n invoice events to tally.invoices.v1, 5 versions of
// each invoice in order (a customer per invoice; the updates change the tax).
func fillTopic(ctx context.Context, c *kfake.Cluster, n int) error {
	return produceAll(ctx, c, n, func(i int) (*kgo.Record, error) {
		inv := fmt.Sprintf("inv_%08d", i/5)
		version := int64(i%5 + 1)
		typ := "tally.invoice.updated.v1"
		if version == 1 {
			typ = "tally.invoice.created.v1"
		}
		ev := envelope.Event{ID: envelope.NewID(), Type: typ, Source: "/tally/loadgen", Subject: inv, Time: stampTime,
			Sequence: version, CorrelationID: "loadgen", Data: fmt.Appendf(nil, `{"id":%q,"customer_id":"cus_%06d",`+
				`"currency":"USD","status":"open","issued_at":"2025-01-01","due_at":"2025-01-31","lines":[{"description":`+
				`"Pro plan, yearly","amount":12000,"quantity":1,"total":12000,"service_period":{"start":"2025-01-01",`+
				`"end":"2025-12-31"}}],"subtotal":12000,"discount":0,"tax":%d,"total":%d,"amount_paid":0,"amount_due":%d,`+
				`"created_at":%q,"updated_at":%q}`, inv, i/5%1000, version, 12000+version, 12000+version, stamp, stamp)}
		return ev.Record("tally.invoices.v1"), nil
	})
}

// The time the backlogs' events carry.
var (
	stampTime = time.Now().UTC()
	stamp     = stampTime.Format(time.RFC3339Nano)
)

// produceAll produces the n records rec makes to c and waits for them.
func produceAll(ctx context.Context, c *kfake.Cluster, n int, rec func(i int) (*kgo.Record, error)) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	var (
		mu    sync.Mutex
		first error
	)
	for i := range n {
		r, err := rec(i)
		if err != nil {
			return err
		}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				first = cmpOr(first, err)
				mu.Unlock()
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	return first
}

// fillSales produces n sale events to tally.sales.v1, 5 versions of each
// sale in order: created, then refunds growing by 1.00, over 1,000
// customers and the days of 2025.
func fillSales(ctx context.Context, c *kfake.Cluster, n int) error {
	return produceAll(ctx, c, n, func(i int) (*kgo.Record, error) {
		id := fmt.Sprintf("sale_%08d", i/5)
		version := int64(i%5 + 1)
		typ := "tally.sale.updated.v1"
		if version == 1 {
			typ = "tally.sale.created.v1"
		}
		day := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, (i/5)%365).Format(time.DateOnly)
		ev := envelope.Event{ID: envelope.NewID(), Type: typ, Source: "/tally/loadgen", Subject: id, Time: stampTime,
			Sequence: version, CorrelationID: "loadgen", Data: fmt.Appendf(nil, `{"id":%q,"customer_id":"cus_%06d",`+
				`"currency":"USD","amount":12000,"quantity":1,"date":%q,"refunded_amount":%d,"status":"active",`+
				`"created_at":%q,"updated_at":%q}`, id, (i/5)%1000, day, (version-1)*100, stamp, stamp)}
		return ev.Record("tally.sales.v1"), nil
	})
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ProjectionLatency creates rate invoices per second through the HTTP API
// for d, with the relay and a member of the revenue group running, and
// measures each invoice's time from its creation's response (the commit) to
// the revenue projection's commit of it. The first second is warm-up. It
// returns the sorted latencies.
func ProjectionLatency(ctx context.Context, serverURL string, rate int, d time.Duration, log *slog.Logger) ([]time.Duration, error) {
	db, err := newDatabase(ctx, serverURL, 32)
	if err != nil {
		return nil, err
	}
	defer db.drop()
	c, err := devkafka.Ephemeral(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stopRelay, err := startRelay(db.pool, c, &ackHook{}, log)
	if err != nil {
		return nil, err
	}
	defer stopRelay()
	r, err := consumer.New(db.pool, revenue.Group(), consumer.WithKafkaOptions(kgo.SeedBrokers(c.ListenAddrs()...)),
		consumer.WithLogger(log))
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(cctx) }()
	defer func() { cancel(); <-done }()
	notifier := outbox.NewNotifier(db.pool, log)
	go notifier.Run(cctx)

	mux := http.NewServeMux()
	api.New(db.pool, notifier, log, api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Hour}).Register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: observe.NewHTTPMetrics(observe.NewRegistry()).Wrap(observe.NewTracer(), mux, api.Handler(mux))}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	if err := post(client, base+"/v1/customers", `{"id":"c","name":"Customer","email":"c@example.com"}`); err != nil {
		return nil, err
	}

	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		errs      = make(chan error, 1)
		wg        sync.WaitGroup
	)
	work := make(chan int, rate)
	warm := time.Now().Add(time.Second)
	for range 32 {
		wg.Go(func() {
			for i := range work {
				id := fmt.Sprintf("inv-%07d", i)
				body := fmt.Sprintf(`{"id":%q,"customer_id":"c","currency":"USD","issued_at":"2025-01-01",`+
					`"due_at":"2025-01-31","lines":[{"description":"Pro plan","amount":12000}]}`, id)
				resp, err := client.Post(base+"/v1/invoices", "application/json", bytes.NewReader([]byte(body)))
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						err = fmt.Errorf("creating an invoice answered %d", resp.StatusCode)
					}
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				if at := time.Now(); at.After(warm) {
					mu.Lock()
					committed[id] = at
					mu.Unlock()
				}
			}
		})
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	deadline := time.Now().Add(d + time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		<-tick.C
		work <- i
	}
	tick.Stop()
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	// The projection stamps updated_at with the time of its statement, in
	// the transaction that commits it.
	var lat []time.Duration
	for range 500 {
		rows, err := db.pool.Query(ctx, `SELECT invoice_id, updated_at FROM revenue_invoices`)
		if err != nil {
			return nil, err
		}
		seen := map[string]time.Time{}
		for rows.Next() {
			var id string
			var at time.Time
			if err := rows.Scan(&id, &at); err != nil {
				return nil, err
			}
			seen[id] = at
		}
		rows.Close()
		lat = lat[:0]
		missing := 0
		for id, at := range committed {
			p, ok := seen[id]
			if !ok {
				missing++
				continue
			}
			lat = append(lat, max(p.Sub(at), 0))
		}
		if missing == 0 {
			slices.Sort(lat)
			return lat, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("invoices created but never projected")
}
