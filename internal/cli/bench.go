package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/producers/loadgen"
)

var bench struct {
	count    int
	events   int
	history  int
	rate     int
	duration time.Duration
	clients  int
	only     string
	rows     int
	profile  string
}

func benchFlags(fs *flag.FlagSet) {
	fs.IntVar(&bench.count, "count", 5, "runs of each benchmark; the figure printed is their median")
	fs.IntVar(&bench.events, "events", 500_000, "backlog the relay drains")
	fs.IntVar(&bench.history, "history", 2_000_000, "published events kept before the backlog in the second drain figure (0 skips it)")
	fs.IntVar(&bench.rate, "rate", 1000, "events per second of the latency benchmark")
	fs.DurationVar(&bench.duration, "duration", 10*time.Second, "length of one run of the latency and API benchmarks")
	fs.IntVar(&bench.clients, "clients", 16, "concurrent HTTP clients of the API benchmark")
	fs.StringVar(&bench.only, "only", "", "run one benchmark: drain, latency, api, consume (the revenue group), kpi, notify, rebuild, projection or import")
	fs.IntVar(&bench.rows, "rows", 1_000_000, "rows of the sales CSV file the import benchmark uploads")
	fs.StringVar(&bench.profile, "cpuprofile", "", "write a CPU profile of this process (API, relay, consumers; not PostgreSQL) over every run to this file")
}

// runBench measures the speed targets of the outbox, the relay and the API.
// Each benchmark uses a scratch database on the DATABASE_URL server and an
// embedded broker. It prints one `BENCH <name> <value> <unit>` line per
// figure, each the median of -count runs.
func runBench(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	if bench.count < 1 || bench.events < 1 || bench.history < 0 || bench.rate < 1 || bench.clients < 1 || bench.rows < 1 ||
		bench.duration < time.Second {
		return usageError{fmt.Errorf("-count, -events, -rate, -clients, -rows must be positive and -duration at least 1s")}
	}
	switch bench.only {
	case "", "drain", "latency", "api", "consume", "rebuild", "projection", "import", "kpi", "notify":
	default:
		return usageError{fmt.Errorf("-only %q: want drain, latency, api, consume, kpi, notify, rebuild, projection or import", bench.only)}
	}
	if bench.profile != "" {
		f, err := os.Create(bench.profile)
		if err != nil {
			return fmt.Errorf("creating the CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("starting the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	emit := func(f loadgen.Figure) { fmt.Fprintln(e.Stdout, f) }
	if bench.only == "" || bench.only == "latency" {
		var p50, p99, p999 []float64
		for range bench.count {
			lat, err := loadgen.Latency(ctx, cfg.DatabaseURL, bench.rate, bench.duration, log)
			if err != nil {
				return fmt.Errorf("latency benchmark: %w", err)
			}
			p50 = append(p50, ms(loadgen.Percentile(lat, 50)))
			p99 = append(p99, ms(loadgen.Percentile(lat, 99)))
			p999 = append(p999, ms(loadgen.Percentile(lat, 99.9)))
			log.Info("commit-to-Kafka latency", "events", len(lat), "p50_ms", p50[len(p50)-1], "p99_ms", p99[len(p99)-1])
		}
		emit(loadgen.Figure{Name: "commit_to_kafka_p50", Value: loadgen.Median(p50), Unit: "ms"})
		emit(loadgen.Figure{Name: "commit_to_kafka_p99", Value: loadgen.Median(p99), Unit: "ms"})
		emit(loadgen.Figure{Name: "commit_to_kafka_p999", Value: loadgen.Median(p999), Unit: "ms"})
	}
	if bench.only == "" || bench.only == "api" {
		var rates []float64
		for range bench.count {
			r, err := loadgen.APICreate(ctx, cfg.DatabaseURL, bench.clients, bench.duration, log)
			if err != nil {
				return fmt.Errorf("API benchmark: %w", err)
			}
			rates = append(rates, r)
		}
		emit(loadgen.Figure{Name: "api_invoice_create_rate", Value: loadgen.Median(rates), Unit: "invoices/s"})
	}
	if bench.only == "" || bench.only == "projection" {
		var p50, p99 []float64
		for range bench.count {
			lat, err := loadgen.ProjectionLatency(ctx, cfg.DatabaseURL, bench.rate, bench.duration, log)
			if err != nil {
				return fmt.Errorf("projection latency benchmark: %w", err)
			}
			p50 = append(p50, ms(loadgen.Percentile(lat, 50)))
			p99 = append(p99, ms(loadgen.Percentile(lat, 99)))
			log.Info("API-commit-to-projection latency", "invoices", len(lat), "p50_ms", p50[len(p50)-1], "p99_ms", p99[len(p99)-1])
		}
		emit(loadgen.Figure{Name: "commit_to_projection_p50", Value: loadgen.Median(p50), Unit: "ms"})
		emit(loadgen.Figure{Name: "commit_to_projection_p99", Value: loadgen.Median(p99), Unit: "ms"})
	}
	for _, g := range []string{"revenue", "kpi", "notify"} {
		only := map[string]string{"revenue": "consume", "kpi": "kpi", "notify": "notify"}[g]
		if bench.only != "" && bench.only != only {
			continue
		}
		var rates []float64
		for range bench.count {
			r, err := loadgen.ConsumeBacklog(ctx, cfg.DatabaseURL, g, bench.events, log)
			if err != nil {
				return fmt.Errorf("%s benchmark: %w", only, err)
			}
			rates = append(rates, r)
		}
		emit(loadgen.Figure{Name: g + "_apply_rate", Value: loadgen.Median(rates), Unit: "events/s"})
	}
	if bench.only == "" || bench.only == "rebuild" {
		var rates, paused []float64
		for range bench.count {
			f, err := loadgen.RebuildBacklog(ctx, cfg.DatabaseURL, bench.events, log)
			if err != nil {
				return fmt.Errorf("rebuild benchmark: %w", err)
			}
			rates = append(rates, f.Rate)
			paused = append(paused, ms(f.Paused))
		}
		emit(loadgen.Figure{Name: "revenue_rebuild_rate", Value: loadgen.Median(rates), Unit: "events/s"})
		emit(loadgen.Figure{Name: "revenue_rebuild_live_pause", Value: loadgen.Median(paused), Unit: "ms"})
	}
	if bench.only == "" || bench.only == "import" {
		var rates, peaks []float64
		for range bench.count {
			f, err := loadgen.Import(ctx, cfg.DatabaseURL, bench.rows, log)
			if err != nil {
				return fmt.Errorf("import benchmark: %w", err)
			}
			rates = append(rates, f.Rate)
			peaks = append(peaks, f.PeakMB)
		}
		emit(loadgen.Figure{Name: "import_rows_rate", Value: loadgen.Median(rates), Unit: "rows/s"})
		emit(loadgen.Figure{Name: "import_peak_rss", Value: loadgen.Median(peaks), Unit: "MB"})
	}
	// The drains go last: filling their backlogs writes gigabytes of WAL.
	if bench.only == "" || bench.only == "drain" {
		rates, err := loadgen.Drain(ctx, cfg.DatabaseURL, bench.events, 0, bench.count, log)
		if err != nil {
			return fmt.Errorf("drain benchmark: %w", err)
		}
		emit(loadgen.Figure{Name: "relay_drain_rate", Value: loadgen.Median(rates), Unit: "events/s"})
		if bench.history > 0 {
			rates, err := loadgen.Drain(ctx, cfg.DatabaseURL, bench.events, bench.history, bench.count, log)
			if err != nil {
				return fmt.Errorf("drain benchmark with history: %w", err)
			}
			emit(loadgen.Figure{Name: "relay_drain_rate_with_history", Value: loadgen.Median(rates), Unit: "events/s"})
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
