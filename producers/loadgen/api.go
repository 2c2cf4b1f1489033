package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/producers/api"
)

// APICreate measures invoice creation through the HTTP API, with the relay
// publishing meanwhile as in a deployment: clients concurrent clients post
// invoices for d over keep-alive connections. It returns invoices created per
// second. The clients run in this process and share its CPUs with the API,
// the relay, the broker and PostgreSQL.
func APICreate(ctx context.Context, serverURL string, clients int, d time.Duration, log *slog.Logger) (float64, error) {
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
	stop, err := startRelay(db.pool, c, &ackHook{}, log)
	if err != nil {
		return 0, err
	}
	defer stop()
	base, stopAPI, err := serveAPI(ctx, db.pool, log)
	if err != nil {
		return 0, err
	}
	defer stopAPI()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}}
	const customers = 1000
	for i := range customers {
		body := fmt.Sprintf(`{"id":"cus-%d","name":"Customer %d","email":"c%d@example.com"}`, i, i, i)
		if err := post(client, base+"/v1/customers", body); err != nil {
			return 0, err
		}
	}

	var created atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	end := start.Add(d)
	for w := range clients {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				body := fmt.Sprintf(`{"customer_id":"cus-%d","currency":"USD","issued_at":"2025-01-01","due_at":"2025-01-31",`+
					`"lines":[{"description":"Pro plan","amount":12000,"service_period":{"start":"2025-01-01","end":"2025-12-31"}},`+
					`{"description":"Seats","amount":500,"quantity":%d}],"discount":1000,"tax":950}`, (w*7919+i)%customers, i%20+1)
				if err := post(client, base+"/v1/invoices", body); err != nil {
					errs <- err
					return
				}
				created.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	rate := float64(created.Load()) / elapsed.Seconds()
	log.Info("created invoices through the API", "invoices", created.Load(), "seconds", elapsed.Seconds(), "per_second", int(rate))
	return rate, nil
}

// serveAPI serves the API on pool, wired as `tally api` wires it (metrics,
// tracing and the server's timeouts included), with a notifier waking
// relays, until stop. It returns the API's base URL.
func serveAPI(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	notifier := outbox.NewNotifier(pool, log)
	nctx, ncancel := context.WithCancel(ctx)
	go notifier.Run(nctx)
	mux := http.NewServeMux()
	api.New(pool, notifier, log, api.Config{MaxBodyBytes: 1 << 20, IdempotencyTTL: time.Hour}).Register(mux)
	handler := observe.NewHTTPMetrics(observe.NewRegistry()).Wrap(observe.NewTracer(), mux, api.Handler(mux))
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close(); ncancel() }, nil
}

func post(c *http.Client, url, body string) error {
	resp, err := c.Post(url, "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST %s answered %d: %s", url, resp.StatusCode, b)
	}
	return nil
}
