package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/devkafka"
	"github.com/tally-dev/tally/internal/postgres"
)

// runDev runs Tally on its embedded default: it creates and migrates the
// database, starts the embedded broker, applies the topics, and runs the
// API, the relay, the scheduler and a member of every consumer group in one
// process.
func runDev(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	if err := postgres.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	if _, _, err := postgres.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	kafkaDir := filepath.Join(cfg.DataDir, "kafka")
	broker, err := devkafka.Start(cfg.DevKafkaAddr, kafkaDir, e.Stderr)
	if err != nil {
		return err
	}
	defer broker.Close() // persists the broker's state
	brokers := broker.ListenAddrs()
	rep, err := applyTopics(ctx, brokers, cfg.RetryDelays, -1)
	if err != nil {
		return err
	}
	if len(rep.Created) > 0 {
		log.Info("created topics", "count", len(rep.Created))
	}
	for _, d := range rep.Drift {
		log.Warn("topic drift", "drift", d.String())
	}

	return run(ctx, cfg, log, func(p *process) (http.Handler, error) {
		h, err := startAPI(p)
		if err != nil {
			return nil, err
		}
		if err := startRelay(p, brokers); err != nil {
			return nil, err
		}
		if err := startScheduler(p); err != nil {
			return nil, err
		}
		for name := range groups {
			if err := startConsumer(p, name, brokers); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(e.Stdout, `Tally is running (tally dev). Ctrl-C stops it.
  API         http://%[1]s   (OpenAPI document at /openapi.json)
  metrics     http://%[1]s/metrics   health: /livez /readyz
  Kafka       %[2]s   (embedded kfake broker, data in %[3]s)
  PostgreSQL  %[4]s
  Consumers   %[5]s   (e.g. the revenue projection at /v1/revenue/invoices/{id})
  Scheduler   every %[6]s   (the daily revenue recognition; reports at /v1/revenue/waterfall)
  Watch the events:  kcat -b %[2]s -C -t tally.invoices.v1 -f '%%k %%h %%s\n'
`, cfg.HTTPAddr, brokers[0], kafkaDir, redactURL(cfg.DatabaseURL), groupNames(), cfg.SchedulerInterval)
		return h, nil
	})
}

// redactURL hides the password of a database URL.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable URL)"
	}
	return p.Redacted()
}
