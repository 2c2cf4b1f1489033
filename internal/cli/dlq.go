package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/postgres"
)

const dlqUsage = `usage: tally dlq <list|show|replay|skip|purge> [flags]
  list   [-group G] [-state S,...] [-type T] [-key K] [-since T] [-until T] [-after ID] [-limit N] [-json]
  show   ID [-json]
  replay (-id ID ... | -group G | -type T | -key K | -since T | -until T | -all) [-payload FILE] [-reason R] [-actor A]
  skip   (selection as for replay) [-reason R] [-actor A]
  purge  (selection as for replay) [-reason R] [-actor A]
Settings such as -database-url go before the subcommand.`

// runDLQ is `tally dlq`: the operators' view of the records consumer
// groups parked, and their actions on the dead ones.
func runDLQ(ctx context.Context, e Env, cfg config.Config, _ *slog.Logger) error {
	if len(e.Args) == 0 {
		return usageError{errors.New(dlqUsage)}
	}
	sub, args := e.Args[0], e.Args[1:]
	fs := flag.NewFlagSet("tally dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	var (
		f         consumer.Filter
		states    string
		asJSON    bool
		payload   string
		a         consumer.Action
		since, to string
	)
	selection := func() {
		fs.Func("id", "a record's id (repeatable)", func(v string) error {
			id, err := strconv.ParseInt(v, 10, 64)
			if err != nil || id < 1 {
				return errors.New("want a positive integer")
			}
			f.IDs = append(f.IDs, id)
			return nil
		})
		fs.StringVar(&f.Group, "group", "", "consumer group")
		fs.StringVar(&f.Type, "type", "", "event type (ce_type)")
		fs.StringVar(&f.Key, "key", "", "record key (the aggregate id)")
		fs.StringVar(&since, "since", "", "last failed at or after this RFC 3339 time")
		fs.StringVar(&to, "until", "", "last failed before this RFC 3339 time")
	}
	actor := func() {
		fs.BoolVar(&f.All, "all", false, "every record the other flags select (required when none does)")
		fs.StringVar(&a.Reason, "reason", "", "why, for the audit trail")
		fs.StringVar(&a.Actor, "actor", defaultActor(e), "who acts, for the audit trail")
	}
	switch sub {
	case "list":
		selection()
		fs.StringVar(&states, "state", "dead", "states, comma-separated: retrying, waiting, dead, skipped")
		fs.Int64Var(&f.After, "after", 0, "only records with a higher id (paging)")
		fs.IntVar(&f.Limit, "limit", 100, "at most this many records (1 to 1000)")
		fs.BoolVar(&asJSON, "json", false, "one JSON object per line")
	case "show":
		fs.BoolVar(&asJSON, "json", false, "as JSON")
	case "replay":
		selection()
		actor()
		fs.StringVar(&payload, "payload", "", "file holding a corrected JSON payload for the one record selected (- for standard input)")
	case "skip", "purge":
		selection()
		actor()
	default:
		return usageError{fmt.Errorf("unknown dlq subcommand %q\n%s", sub, dlqUsage)}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	var err error
	if f.Since, err = parseTime("since", since); err != nil {
		return err
	}
	if f.Until, err = parseTime("until", to); err != nil {
		return err
	}
	if sub == "list" {
		for _, s := range strings.Split(states, ",") {
			switch s = strings.TrimSpace(s); s {
			case consumer.StateRetrying, consumer.StateWaiting, consumer.StateDead, consumer.StateSkipped:
				f.States = append(f.States, s)
			default:
				return usageError{fmt.Errorf("-state %q: want retrying, waiting, dead or skipped", s)}
			}
		}
		if f.Limit < 1 || f.Limit > 1000 {
			return usageError{errors.New("-limit: want 1 to 1000")}
		}
	}
	if sub == "show" && fs.NArg() != 1 {
		return usageError{errors.New("usage: tally dlq show ID [-json]")}
	}
	if sub != "show" && fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}

	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	var n int
	switch sub {
	case "list":
		ps, err := consumer.List(ctx, pool, f)
		if err != nil {
			return err
		}
		return printParked(e.Stdout, ps, asJSON)
	case "show":
		id, err := strconv.ParseInt(fs.Arg(0), 10, 64)
		if err != nil {
			return usageError{fmt.Errorf("record id %q: want an integer", fs.Arg(0))}
		}
		p, err := consumer.Show(ctx, pool, id)
		if err != nil {
			return err
		}
		return showParked(e.Stdout, p, asJSON)
	case "replay":
		var edited []byte
		if payload != "" {
			if edited, err = readPayload(payload); err != nil {
				return err
			}
		}
		n, err = consumer.Replay(ctx, pool, f, edited, a)
	case "skip":
		n, err = consumer.Skip(ctx, pool, f, a)
	case "purge":
		n, err = consumer.Purge(ctx, pool, f, a)
	}
	if errors.Is(err, consumer.ErrNoSelection) || errors.Is(err, consumer.ErrNoActor) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "%s: %d record(s)\n", map[string]string{"replay": "replayed", "skip": "skipped", "purge": "purged"}[sub], n)
	return nil
}

// defaultActor names who runs the command: the OS user at the host.
func defaultActor(e Env) string {
	user := e.Getenv("USER")
	if user == "" {
		user = "unknown"
	}
	host, _ := os.Hostname()
	return user + "@" + host
}

func parseTime(flagName, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, usageError{fmt.Errorf("-%s %q: want an RFC 3339 time such as 2026-11-22T10:00:00Z", flagName, v)}
	}
	return t, nil
}

func readPayload(name string) ([]byte, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20+1))
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the payload: %w", err)
	}
	if !json.Valid(b) {
		return nil, usageError{fmt.Errorf("the payload in %s is not JSON", name)}
	}
	return b, nil
}

func printParked(w io.Writer, ps []consumer.Parked, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, p := range ps {
			if err := enc.Encode(p); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tGROUP\tSTATE\tTYPE\tKEY\tATTEMPTS\tWAITING\tLAST FAILED\tERROR")
	for _, p := range ps {
		last := "-"
		if p.LastFailedAt != nil {
			last = p.LastFailedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", p.ID, p.Group, p.State, orDash(p.EventType),
			orDash(printable(p.Key, 40)), p.Attempts, p.Waiting, last, orDash(printable(firstLine(p.Error), 60)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ps) == 0 {
		fmt.Fprintln(w, "(none)")
	}
	return nil
}

func showParked(w io.Writer, p consumer.Parked, asJSON bool) error {
	if asJSON {
		type shown struct {
			consumer.Parked
			Headers json.RawMessage `json:"headers"`
			Value   []byte          `json:"value_base64"`
			Edited  []byte          `json:"edited_value_base64,omitempty"`
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(shown{p, envelope.MarshalHeaders(p.Headers), p.Value, p.EditedValue})
	}
	fmt.Fprintf(w, "record %d of group %s: %s after %d attempt(s)\n", p.ID, p.Group, p.State, p.Attempts)
	fmt.Fprintf(w, "  read from  %s partition %d offset %d\n", p.Topic, p.Partition, p.Offset)
	fmt.Fprintf(w, "  key        %s\n", printable(p.Key, 200))
	if p.EventID != nil {
		fmt.Fprintf(w, "  event      %s %s\n", p.EventType, p.EventID)
	}
	if p.Error != "" {
		fmt.Fprintf(w, "  error      %s: %s\n", p.ErrorClass, p.Error)
	}
	if p.Waiting > 0 {
		fmt.Fprintf(w, "  waiting    %d record(s) of its key behind it\n", p.Waiting)
	}
	fmt.Fprintln(w, "headers:")
	for _, h := range p.Headers {
		fmt.Fprintf(w, "  %s: %s\n", printable(h.Key, 100), printable(string(h.Value), 200))
	}
	fmt.Fprintln(w, "payload:")
	fmt.Fprintln(w, indentJSON(p.Value))
	if p.EditedValue != nil {
		fmt.Fprintln(w, "edited payload (used instead):")
		fmt.Fprintln(w, indentJSON(p.EditedValue))
	}
	return nil
}

// indentJSON shows a payload: indented when it is JSON, quoted otherwise.
func indentJSON(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) == nil {
		out, _ := json.MarshalIndent(v, "  ", "  ")
		return "  " + string(out)
	}
	return "  " + strconv.Quote(string(b))
}

// printable keeps terminal output safe: invalid UTF-8 and control
// characters quoted, at most n bytes.
func printable(s string, n int) string {
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		s = strconv.Quote(s)
	}
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return s
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
