package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
)

// Latency writes rate events per second, one per transaction as the API
// does, for d, and measures each event's time from its writer's commit
// returning to Kafka acknowledging it to the relay. The first second is
// warm-up and not counted. It returns the sorted latencies.
func Latency(ctx context.Context, serverURL string, rate int, d time.Duration, log *slog.Logger) ([]time.Duration, error) {
	db, err := newDatabase(ctx, serverURL, 16)
	if err != nil {
		return nil, err
	}
	defer db.drop()
	c, err := devkafka.Ephemeral(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()

	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		acked     = map[string]time.Time{}
	)
	hook := &ackHook{onAck: func(r *kgo.Record, at time.Time) {
		for _, h := range r.Headers {
			if h.Key == envelope.HeaderID {
				mu.Lock()
				acked[string(h.Value)] = at
				mu.Unlock()
			}
		}
	}}
	stop, err := startRelay(db.pool, c, hook, log)
	if err != nil {
		return nil, err
	}
	defer stop()
	notifier := outbox.NewNotifier(db.pool, log)
	nctx, ncancel := context.WithCancel(ctx)
	defer ncancel()
	go notifier.Run(nctx)

	// Open loop: a pacer hands out work at the rate, so a slow commit does
	// not lower the offered load.
	work := make(chan int, rate)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	warm := time.Now().Add(time.Second)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				ev := customerEvent(fmt.Sprintf("cus_%06d", i), 1)
				err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error { return outbox.Write(ctx, tx, ev) })
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				at := time.Now()
				notifier.Notify()
				if at.After(warm) {
					mu.Lock()
					committed[ev.ID.String()] = at
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
		return nil, fmt.Errorf("writing events: %w", err)
	default:
	}
	// Give the last events time to be acknowledged.
	for range 100 {
		mu.Lock()
		missing := 0
		for id := range committed {
			if _, ok := acked[id]; !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, len(committed))
	for id, at := range committed {
		ack, ok := acked[id]
		if !ok {
			return nil, fmt.Errorf("event %s was committed but never acknowledged", id)
		}
		lat = append(lat, max(ack.Sub(at), 0))
	}
	slices.Sort(lat)
	return lat, nil
}

func customerEvent(id string, seq int64) envelope.Event {
	now := time.Now().UTC()
	return envelope.Event{
		ID: envelope.NewID(), Type: "tally.customer.created.v1", Source: "/tally/loadgen", Subject: id, Time: now,
		Sequence: seq, CorrelationID: "loadgen",
		Data: fmt.Appendf(nil, `{"id":%q,"name":"Load Generator","email":"load@example.com","created_at":%q,"updated_at":%q}`,
			id, now.Format(time.RFC3339Nano), now.Format(time.RFC3339Nano)),
	}
}
