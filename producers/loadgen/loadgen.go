// Package loadgen generates load on Tally and measures it: the figures of
// `tally bench` (and so of `make bench`). Each benchmark brings its own
// database on the given PostgreSQL server and its own embedded Kafka broker,
// so runs are independent and repeatable.
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/producers/relay"
)

// Figure is one measured value.
type Figure struct {
	Name  string
	Value float64
	Unit  string
}

func (f Figure) String() string { return fmt.Sprintf("BENCH %s %.6g %s", f.Name, f.Value, f.Unit) }

// Median returns the median of xs (the mean of the middle two for an even
// count).
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Percentile returns the p-th percentile (0..100) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)-1))
	return sorted[i]
}

// database is a scratch database on a server, dropped by drop.
type database struct {
	url  string
	pool *pgxpool.Pool
	drop func()
}

// newDatabase creates and migrates a scratch database next to the one in
// serverURL. maxConns sizes its pool.
func newDatabase(ctx context.Context, serverURL string, maxConns int) (*database, error) {
	cfg, err := pgx.ParseConfig(serverURL)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 5)
	rand.Read(b)
	name := "tally_bench_" + hex.EncodeToString(b)
	url := replaceDatabase(serverURL, cfg.Database, name)
	if err := postgres.EnsureDatabase(ctx, url); err != nil {
		return nil, err
	}
	drop := func() {
		cfg := cfg.Copy()
		cfg.Database = "postgres"
		c, err := pgx.ConnectConfig(context.Background(), cfg)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		// Flush what this benchmark wrote now, so that the next one does
		// not pay for it in a checkpoint (a no-op without the privilege).
		c.Exec(context.Background(), "CHECKPOINT")
	}
	if _, _, err := postgres.Migrate(ctx, url); err != nil {
		drop()
		return nil, err
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	pool, err := postgres.Open(ctx, url+fmt.Sprintf("%spool_max_conns=%d", sep, maxConns))
	if err != nil {
		drop()
		return nil, err
	}
	return &database{url: url, pool: pool, drop: func() { pool.Close(); drop() }}, nil
}

func replaceDatabase(url, from, to string) string {
	if i := strings.LastIndex(url, "/"+from); i >= 0 {
		return url[:i] + "/" + to + url[i+1+len(from):]
	}
	return url
}

// ackHook sees every record the relay's producer finishes.
type ackHook struct {
	mu    sync.Mutex
	n     int
	want  int
	done  chan struct{}
	onAck func(r *kgo.Record, at time.Time)
}

func (h *ackHook) OnProduceRecordUnbuffered(r *kgo.Record, err error) {
	if err != nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.onAck != nil {
		h.onAck(r, now)
	}
	h.n++
	if h.n == h.want && h.done != nil {
		close(h.done)
	}
}

// startRelay runs a relay on pool publishing to c until the returned stop.
func startRelay(pool *pgxpool.Pool, c *kfake.Cluster, hook *ackHook, log *slog.Logger) (stop func(), err error) {
	r, err := relay.New(pool,
		relay.WithKafkaOptions(kgo.SeedBrokers(c.ListenAddrs()...), kgo.WithHooks(hook)),
		relay.WithLogger(log))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	return func() { cancel(); <-done }, nil
}
