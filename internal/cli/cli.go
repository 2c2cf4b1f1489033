// Package cli is the tally command line: one binary whose subcommands run
// each component alone (so a deployment scales them independently) or, with
// `tally dev`, all of them in one process around an embedded Kafka broker.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/observe"
)

// Env is what a command runs with: its arguments, environment and streams.
type Env struct {
	Args   []string // after the subcommand name
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
}

type command struct {
	name, summary string
	run           func(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error
	// flags registers the command's own flags, beside the settings.
	flags func(*flag.FlagSet)
}

func commands() []command {
	return []command{
		{"dev", "run everything in one process with an embedded Kafka broker", runDev, nil},
		{"api", "serve the HTTP API", runAPI, nil},
		{"relay", "publish the outbox to Kafka", runRelay, nil},
		{"scheduler", "produce the time-driven events (the daily revenue recognition)", runScheduler, schedulerFlags},
		{"consume", "consume <group>: run a member of a consumer group (" + groupNames() + ")", runConsume, nil},
		{"migrate", "apply the database migrations", runMigrate, nil},
		{"replay", "replay <group>: rebuild a group's projections from its topics and swap them in", runReplay, replayFlags},
		{"dlq", "dlq list|show|replay|skip|purge: the records consumer groups parked, and what to do with the dead ones", runDLQ, nil},
		{"topics", "topics apply: create missing topics and report drift", runTopics, nil},
		{"import", "import <type> FILE: import a CSV file of sales, customers or expenses", runImport, importFlags},
		{"bench", "measure the speed targets against the local PostgreSQL and an embedded broker", runBench, benchFlags},
	}
}

// Main runs the tally command line with args (without the program name) and
// returns the exit status: 0, 1 for a failure, 2 for bad usage.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return boolToStatus(len(args) == 0)
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		cfg, rest, err := config.Load("tally "+c.name, args[1:], getenv, stderr, c.flags)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "tally %s: %v\n", c.name, err)
			return 2
		}
		log := observe.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat).With("component", c.name)
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		err = c.run(ctx, Env{Args: rest, Getenv: getenv, Stdout: stdout, Stderr: stderr}, cfg, log)
		var ue usageError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "tally %s: %v\n", c.name, err)
			return 2
		case err != nil:
			log.Error("stopped on error", "err", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "tally: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func boolToStatus(failed bool) int {
	if failed {
		return 2
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: tally <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nEvery setting is an environment variable with a matching flag; `tally <command> -h` lists them.")
}

// usageError is a mistake in the command line, answered with status 2.
type usageError struct{ error }
