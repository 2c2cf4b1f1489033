package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/postgres"
)

// replayFrom is tally replay's -from.
var replayFrom string

func replayFlags(fs *flag.FlagSet) {
	fs.StringVar(&replayFrom, "from", "", "start at the first record at or after this RFC 3339 time, not at the start of the topics")
}

// runReplay is `tally replay [flags] <group>`: rebuild a group's
// projections from its topics and swap them in (consumer.Rebuild).
func runReplay(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if len(e.Args) != 1 {
		return usageError{fmt.Errorf("usage: tally replay [-from TIME] [flags] <group>; groups: %s", groupNames())}
	}
	name := e.Args[0]
	if groups[name] == nil {
		return usageError{fmt.Errorf("unknown consumer group %q; groups: %s", name, groupNames())}
	}
	var rc consumer.RebuildConfig
	if replayFrom != "" {
		t, err := parseTime("from", replayFrom)
		if err != nil {
			return err
		}
		rc.From = t
	}
	rc.Progress = e.Stderr
	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	began := time.Now()
	rep, err := consumer.Rebuild(ctx, pool, groups[name](cfg), rc,
		consumer.WithKafkaOptions(kgo.SeedBrokers(cfg.KafkaBrokers...)),
		consumer.WithLogger(log),
		consumer.WithRetryDelays(cfg.RetryDelays...))
	if err != nil {
		return err
	}
	tables := make([]string, 0, len(rep.Rows))
	for t, n := range rep.Rows {
		tables = append(tables, fmt.Sprintf("%s %d rows", t, n))
	}
	slices.Sort(tables)
	fmt.Fprintf(e.Stdout, "rebuilt %s from %d records in %s (live group paused %s): %s; %d records parked\n",
		name, rep.Applied, time.Since(began).Round(time.Millisecond), rep.Paused.Round(time.Millisecond),
		strings.Join(tables, ", "), rep.Parked)
	return nil
}
