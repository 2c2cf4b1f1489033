// Package deploy_test keeps Tally's deployment artifacts (docker-compose.yml,
// deploy/Dockerfile, the Prometheus rules, the Grafana dashboard and the
// Kubernetes manifests) consistent with the code:
//
//   - every metric (and label) the rules, their unit tests and the dashboard
//     read is one the code registers, found by building the real collectors,
//     and the gauges read from PostgreSQL (the same figure from every
//     process) are combined with max or min, never summed;
//   - every environment variable given to a tally container is a setting of
//     internal/config;
//   - every command a container runs is a tally subcommand, and every
//     consumer group `tally consume` accepts is deployed (compose, Kubernetes
//     with its KEDA ScaledObject) and scraped;
//   - grace periods exceed TALLY_SHUTDOWN_TIMEOUT, probes and security
//     settings are in place, the image's ENTRYPOINT is in exec form.
//
// It also runs deploy/check.sh (docker-compose config, promtool, kubectl
// kustomize) when those tools are installed.
//
// The module has no YAML library, so the test reads the YAML files with a
// small parser of the block-style subset they are written in (see
// parseYAML); a file it cannot read fails the test rather than being skipped.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/notify"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/cli"
	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/relay"
	"github.com/tally-dev/tally/producers/scheduler"
	"github.com/tally-dev/tally/topics"
)

// root is the repository root, relative to this package's directory (where
// go test runs).
const root = ".."

func path(p string) string { return filepath.Join(root, filepath.FromSlash(p)) }

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(path(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readYAML(t *testing.T, p string) []*yNode {
	t.Helper()
	docs, err := parseYAML(readFile(t, p))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return docs
}

// ---------------------------------------------------------------------------
// What the code knows: metrics, settings, commands.

// metricSet maps a metric name to its label names.
type metricSet map[string]map[string]bool

// targetLabels are attached by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance"}

// lookup returns the labels of name, accepting the _bucket, _sum and _count
// series of a histogram (le is a label of _bucket).
func (ms metricSet) lookup(name string) (map[string]bool, bool) {
	if l, ok := ms[name]; ok {
		return l, true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if l, ok := ms[base]; ok {
				if suf == "_bucket" {
					l = mapsWith(l, "le")
				}
				return l, true
			}
		}
	}
	return nil, false
}

func mapsWith(m map[string]bool, extra ...string) map[string]bool {
	c := make(map[string]bool, len(m)+len(extra))
	for k := range m {
		c[k] = true
	}
	for _, k := range extra {
		c[k] = true
	}
	return c
}

// recorder is a Registerer that notes the name and labels of every metric a
// collector describes, then registers it with the real registry.
type recorder struct {
	reg     *prometheus.Registry
	metrics metricSet
}

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}\}$`)

func (r *recorder) note(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			// Drain, then report: the format of Desc.String is what this
			// test relies on to learn names without a scrape.
			for range ch {
			}
			return fmt.Errorf("cannot read metric descriptor %s", d)
		}
		labels := map[string]bool{}
		for _, kv := range strings.Split(m[2], ",") {
			if k, _, ok := strings.Cut(kv, "="); ok {
				labels[k] = true
			}
		}
		for _, l := range strings.Split(m[3], ",") {
			l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")")
			if l != "" {
				labels[l] = true
			}
		}
		r.metrics[m[1]] = labels
	}
	return nil
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.note(c); err != nil {
		return err
	}
	return r.reg.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// kafkaNamespace is the kprom namespace the CLI gives the Kafka client's
// metrics; exportedMetrics checks the CLI still uses it.
const kafkaNamespace = "tally_kafka"

// exportedMetrics builds the collectors a tally process registers (the
// registry of observe, the HTTP metrics, the relay's metrics, a consumer
// group member's metrics, the webhook and mail senders of the notify
// group's members and franz-go's kprom metrics, wired as internal/cli wires
// them) and returns what they describe. No database, broker or SMTP server
// is contacted.
func exportedMetrics(t *testing.T) metricSet {
	t.Helper()
	reg := observe.NewRegistry()
	rec := &recorder{reg: reg, metrics: metricSet{}}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = true
			}
		}
		rec.metrics[mf.GetName()] = labels
	}

	observe.NewHTTPMetrics(rec)

	// The CLI registers kprom under this namespace; a change there would
	// silently break the dashboard's Kafka panels.
	cliSrc := ""
	files, _ := filepath.Glob(path("internal/cli/*.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cliSrc += string(b)
	}
	if !strings.Contains(cliSrc, `kprom.NewMetrics("`+kafkaNamespace+`"`) {
		t.Errorf("internal/cli no longer calls kprom.NewMetrics(%q, ...): update kafkaNamespace, the dashboard and the rules", kafkaNamespace)
	}
	// Every tally_kafka_ series carries the client's id (tally-relay,
	// tally-<group>), which the dashboard groups by.
	if !strings.Contains(cliSrc, "kprom.WithClientLabel()") {
		t.Errorf("internal/cli no longer gives kprom WithClientLabel(): the dashboard's Kafka panels group by client_id")
	}
	kp := kprom.NewMetrics(kafkaNamespace, kprom.Registerer(rec), kprom.WithClientLabel())

	// pgxpool.New connects lazily; the relay only queries at scrape time.
	pool, err := pgxpool.New(context.Background(), "postgres://tally@127.0.0.1:1/tally?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := relay.New(pool,
		relay.WithRegisterer(rec),
		relay.WithKafkaOptions(kgo.SeedBrokers("127.0.0.1:1"), kgo.WithHooks(kp)),
	); err != nil {
		t.Fatal(err)
	}

	// The scheduler, as `tally scheduler` builds it.
	if _, err := scheduler.New(scheduler.Tasks(pool, scheduler.Settings{KPIEvery: time.Second, Notices: billing.DefaultNoticeSchedule, NotifyRetention: 90 * 24 * time.Hour}), scheduler.WithRegisterer(rec)); err != nil {
		t.Fatal(err)
	}

	// A member of a consumer group, as `tally consume revenue` builds it
	// (internal/cli startConsumer), with its own kprom instance as in that
	// process. Every group exports the same names, told apart by the const
	// label group. The lag collector reports nothing at scrape time without
	// owned partitions, but describes itself, which is what note reads.
	kc := kprom.NewMetrics(kafkaNamespace, kprom.Registerer(rec), kprom.WithClientLabel())
	member, err := consumer.New(pool, revenue.Group(),
		consumer.WithRegisterer(rec),
		consumer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		consumer.WithKafkaOptions(kgo.SeedBrokers("127.0.0.1:1"), kgo.WithHooks(kc)),
	)
	if err != nil {
		t.Fatal(err)
	}
	closeMember(t, member)

	// The senders every member of the notify group runs (internal/cli
	// startSenders): a webhook sender and, with TALLY_SMTP_ADDR, a mail
	// sender. Neither connects to anything before it runs.
	for _, s := range []string{"webhook.WithRegisterer(", "mail.WithRegisterer("} {
		if !strings.Contains(cliSrc, s) {
			t.Errorf("internal/cli no longer passes %s...) to its sender: the rules and the dashboard's Notifications row read its metrics", s)
		}
	}
	if _, err := webhook.NewSender(pool, webhook.WithRegisterer(rec)); err != nil {
		t.Fatal(err)
	}
	smtp, err := mail.NewSMTP("127.0.0.1:1", "Tally <t@example.com>")
	if err != nil {
		t.Fatal(err)
	}
	templates, err := mail.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mail.NewSender(pool, smtp, templates, mail.WithRegisterer(rec)); err != nil {
		t.Fatal(err)
	}

	// Prometheus' own per-target series.
	rec.metrics["up"] = map[string]bool{}

	for _, want := range []string{"tally_build_info", "tally_http_requests_total", "tally_relay_owned_shards", "tally_scheduler_runs_total",
		"tally_consumer_records_total", "tally_webhook_deliveries_total", "tally_webhook_endpoints_disabled_total",
		"tally_webhook_open_circuits", "tally_mail_messages_total", "tally_mail_pending_messages",
		kafkaNamespace + "_produce_bytes_total", kafkaNamespace + "_fetch_bytes_total"} {
		if _, ok := rec.metrics[want]; !ok {
			t.Fatalf("collecting metric names found no %s (found %d names): the test's collector wiring is out of date", want, len(rec.metrics))
		}
	}
	for name, labels := range map[string][]string{
		"tally_consumer_lag_records":                     {"group", "topic", "partition"},
		"tally_consumer_records_total":                   {"group", "topic", "outcome"},
		"tally_consumer_forwards_total":                  {"group", "to"},
		"tally_consumer_parked_records":                  {"group", "state"},
		"tally_consumer_parked_keys":                     {"group"},
		"tally_consumer_oldest_parked_timestamp_seconds": {"group"},
		"tally_webhook_deliveries_total":                 {"endpoint", "outcome"},
		"tally_webhook_endpoints_disabled_total":         {"cause"},
		"tally_mail_messages_total":                      {"kind", "outcome"},
		kafkaNamespace + "_connects_total":               {"client_id"},
	} {
		for _, l := range labels {
			if !rec.metrics[name][l] {
				t.Fatalf("%s has no label %s (labels %v): the test's collector wiring or the code changed", name, l, sortedKeys(rec.metrics[name]))
			}
		}
	}
	return rec.metrics
}

// closeMember stops a consumer group member that never ran. consumer.New
// starts a Kafka client that tries to join its group in the background (it
// never reaches the broker at 127.0.0.1:1); Run with a context already done
// goes straight to its shutdown, which closes that client. Should that ever
// block, the client is left behind (harmless in a test binary) rather than
// failing the test.
func closeMember(t *testing.T, member *consumer.Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- member.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Logf("stopping the consumer group member: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Log("the consumer group member did not stop within 10s; its Kafka client is left behind")
	}
}

// runtimeEnv are variables read by the Go runtime rather than by tally.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true}

func knownEnv() map[string]bool {
	env := map[string]bool{}
	for _, s := range config.Settings() {
		env[s.Env] = true
	}
	return env
}

func defaultShutdownTimeout() time.Duration { return config.Default().ShutdownTimeout }

// tallyHelp returns the usage `tally help` prints.
func tallyHelp(t *testing.T) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if st := cli.Main(context.Background(), []string{"help"}, func(string) string { return "" }, &out, &errOut); st != 0 {
		t.Fatalf("tally help: status %d: %s", st, errOut.String())
	}
	return out.String()
}

// knownCommands asks the CLI for its subcommands (`tally help`).
func knownCommands(t *testing.T) map[string]bool {
	t.Helper()
	help := tallyHelp(t)
	cmds := map[string]bool{}
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(line, "Commands:"):
			in = true
		case in && strings.HasPrefix(line, "  "):
			cmds[strings.Fields(line)[0]] = true
		case in && strings.TrimSpace(line) == "":
			in = len(cmds) == 0
		}
	}
	for _, c := range []string{"api", "relay", "scheduler", "consume", "migrate", "topics"} {
		if !cmds[c] {
			t.Fatalf("tally help does not list %q; usage was:\n%s", c, help)
		}
	}
	return cmds
}

// consumeLineRE reads the groups off the consume line of `tally help`:
// "  consume   consume <group>: run a member of a consumer group (revenue)".
var consumeLineRE = regexp.MustCompile(`^\s+consume\s.*\(([^()]*)\)\s*$`)

// knownGroups returns the consumer groups `tally consume` accepts, as
// `tally help` lists them on its consume line, and checks that list against
// the command itself: an unknown group is refused with status 2 and
// "unknown consumer group", a listed one is not (it is started with a
// context already done and an unreachable database, so it stops at once).
func knownGroups(t *testing.T) map[string]bool {
	t.Helper()
	help := tallyHelp(t)
	groups := map[string]bool{}
	for _, line := range strings.Split(help, "\n") {
		if m := consumeLineRE.FindStringSubmatch(line); m != nil {
			for _, g := range strings.Split(m[1], ",") {
				if g = strings.TrimSpace(g); g != "" {
					groups[g] = true
				}
			}
		}
	}
	if len(groups) == 0 {
		t.Fatalf("tally help lists no consumer groups on its consume line (want \"consume ... (group, ...)\"); usage was:\n%s", help)
	}
	consume := func(group string) (int, string) {
		env := map[string]string{
			"DATABASE_URL":    "postgres://tally@127.0.0.1:1/tally?sslmode=disable&connect_timeout=1",
			"KAFKA_BROKERS":   "127.0.0.1:1",
			"TALLY_HTTP_ADDR": "127.0.0.1:0",
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var errOut bytes.Buffer
		st := cli.Main(ctx, []string{"consume", group}, func(k string) string { return env[k] }, io.Discard, &errOut)
		return st, errOut.String()
	}
	if st, errOut := consume("frobnicate"); st != 2 || !strings.Contains(errOut, "unknown consumer group") {
		t.Fatalf("tally consume frobnicate: status %d, %q; want status 2 and \"unknown consumer group\" (the test's reading of the groups is out of date)", st, errOut)
	}
	for _, g := range sortedKeys(groups) {
		if st, errOut := consume(g); st == 2 {
			t.Fatalf("tally help lists consumer group %q, but `tally consume %s` refuses it: %s", g, g, errOut)
		}
	}
	return groups
}

// groupTopics are the topics each consumer group reads, for the checks of
// its ScaledObject (topic, maxReplicaCount) and replica counts. A group
// `tally consume` accepts that is missing here fails the tests that need it.
var groupTopics = map[string][]string{
	"revenue": revenue.Topics,
	"kpi":     kpi.Topics,
	"notify":  notify.Topics,
}

// groupPartitions returns the fewest partitions of a topic group reads: the
// most members that all own a partition.
func groupPartitions(group string) (int, error) {
	ts, ok := groupTopics[group]
	if !ok || len(ts) == 0 {
		return 0, fmt.Errorf("deploy_test.go does not know the topics of consumer group %s: add them to groupTopics", group)
	}
	n := -1
	for _, name := range ts {
		found := false
		for _, tp := range topics.Catalogue(topics.RetryDelays) {
			if tp.Name == name {
				found = true
				if n < 0 || int(tp.Partitions) < n {
					n = int(tp.Partitions)
				}
			}
		}
		if !found {
			return 0, fmt.Errorf("consumer group %s reads %s, which is not in the topic catalogue", group, name)
		}
	}
	return n, nil
}

// envAccepted runs `tally cmd -h` with env as its whole environment: the
// settings are parsed (and rejected with status 2) before the flags, so
// status 0 means tally accepts every value.
func envAccepted(cmd string, env map[string]string) error {
	var errOut bytes.Buffer
	if st := cli.Main(context.Background(), []string{cmd, "-h"}, func(k string) string { return env[k] }, io.Discard, &errOut); st != 0 {
		first, _, _ := strings.Cut(errOut.String(), "\n")
		return fmt.Errorf("tally %s rejects its environment (status %d): %s", cmd, st, first)
	}
	return nil
}

// checkCommand reports what is wrong with running tally with args; groups
// are the consumer groups `tally consume` accepts.
func checkCommand(args []string, cmds, groups map[string]bool) error {
	if len(args) == 0 {
		return fmt.Errorf("no subcommand (the image's default is `tally help`)")
	}
	if !cmds[args[0]] {
		return fmt.Errorf("%q is not a tally subcommand (have %v)", args[0], sortedKeys(cmds))
	}
	// `topics` has one subcommand (internal/cli runTopics).
	if args[0] == "topics" && (len(args) < 2 || args[1] != "apply") {
		return fmt.Errorf("`tally topics` needs `apply`, got %q", args)
	}
	// `consume` takes exactly one group (internal/cli runConsume); flags
	// after it are not parsed, and settings come from the environment.
	if args[0] == "consume" {
		if len(args) != 2 {
			return fmt.Errorf("`tally consume` takes exactly one consumer group (one of %v), got %q", sortedKeys(groups), args[1:])
		}
		if !groups[args[1]] {
			return fmt.Errorf("%q is not a consumer group `tally consume` accepts (have %v)", args[1], sortedKeys(groups))
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ---------------------------------------------------------------------------
// PromQL: which metrics and labels an expression uses.

var (
	tallyNameRE = regexp.MustCompile(`\btally_[a-z0-9_]*[a-z0-9]\b`)
	selectorRE  = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	matcherRE   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	groupingRE  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	rangeRE     = regexp.MustCompile(`\[([^\]]*)\]`)
)

// sharedGauges are read from PostgreSQL at scrape time, so every process
// that exports them (each relay, each member of the notify group) reports
// the same figure: summing them counts it once per process.
var sharedGauges = []string{
	"tally_outbox_pending_events",
	"tally_outbox_oldest_pending_created_timestamp_seconds",
	"tally_webhook_open_circuits",
	"tally_webhook_disabled_endpoints",
	"tally_mail_pending_messages",
}

// sharedGaugeUseRE is what must come right before a shared gauge: max or
// min (by ... allowed), directly or around a range function of the gauge.
var sharedGaugeUseRE = regexp.MustCompile(`\b(?:max|min)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*(?:(?:max_over_time|min_over_time|deriv)\s*\(\s*)?$`)

// checkSharedGauges reports the uses of a shared gauge that are not
// combined with max or min.
func checkSharedGauges(expr string) []string {
	var problems []string
	for _, g := range sharedGauges {
		for _, loc := range regexp.MustCompile(`\b`+g+`\b`).FindAllStringIndex(expr, -1) {
			if !sharedGaugeUseRE.MatchString(expr[:loc[0]]) {
				problems = append(problems, g+" is read from PostgreSQL, the same figure from every process: combine it with max() or min(), never sum() or per instance")
			}
		}
	}
	return problems
}

// checkPromQL reports metrics and labels of expr the code does not export.
// Selectors name their labels; grouping clauses (by, on, ...) may use any
// label of the metrics the expression reads.
func checkPromQL(expr string, ms metricSet) []string {
	problems := append(checkSeries(expr, ms), checkSharedGauges(expr)...)
	// "0 when none is pending": an age must drop the zeros first.
	const oldest = "tally_outbox_oldest_pending_created_timestamp_seconds"
	if strings.Contains(expr, oldest) && !strings.Contains(expr, oldest+" > 0") {
		problems = append(problems, oldest+" is 0 when nothing is pending: filter it with `> 0` before computing an age")
	}
	return problems
}

// checkSeries reports metrics and labels of a selector or expression that
// the code does not export.
func checkSeries(expr string, ms metricSet) []string {
	var problems []string
	allowed := map[string]bool{}
	for _, l := range targetLabels {
		allowed[l] = true
	}
	names := tallyNameRE.FindAllString(expr, -1)
	for _, sm := range selectorRE.FindAllStringSubmatch(expr, -1) {
		names = append(names, sm[1])
	}
	for _, n := range names {
		labels, ok := ms.lookup(n)
		if !ok {
			if strings.HasPrefix(n, "tally_") || n == "up" {
				problems = append(problems, fmt.Sprintf("metric %s is not exported by the code", n))
			}
			continue
		}
		for l := range labels {
			allowed[l] = true
		}
	}
	for _, sm := range selectorRE.FindAllStringSubmatch(expr, -1) {
		labels, ok := ms.lookup(sm[1])
		if !ok {
			continue
		}
		labels = mapsWith(labels, targetLabels...)
		for _, mm := range matcherRE.FindAllStringSubmatch(sm[2], -1) {
			if !labels[mm[1]] {
				problems = append(problems, fmt.Sprintf("%s has no label %q", sm[1], mm[1]))
			}
		}
	}
	for _, gm := range groupingRE.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(gm[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !allowed[l] {
				problems = append(problems, fmt.Sprintf("grouping by %q, a label none of the expression's metrics has", l))
			}
		}
	}
	return problems
}

func TestCheckSharedGauges(t *testing.T) {
	for expr, bad := range map[string]bool{
		"max(tally_mail_pending_messages) > 100":                                              false,
		"min(deriv(tally_mail_pending_messages[30m])) >= 0":                                   false,
		"max(max_over_time(tally_webhook_open_circuits[5m])) > 0":                             false,
		"(time() - min(tally_outbox_oldest_pending_created_timestamp_seconds > 0))":           false,
		"sum(tally_mail_pending_messages)":                                                    true,
		"tally_webhook_disabled_endpoints > 0":                                                true,
		"max(tally_outbox_pending_events) > 0 and on () sum(tally_outbox_pending_events) > 0": true,
	} {
		if got := len(checkSharedGauges(expr)) > 0; got != bad {
			t.Errorf("checkSharedGauges(%q) reports a problem: %v, want %v", expr, got, bad)
		}
	}
}

// ---------------------------------------------------------------------------
// Prometheus rules.

var requiredAlerts = []string{
	"OutboxBacklogStale", "OutboxBacklogGrowing", "RelayNotPublishing", "RelayErrors",
	"RelayShardsUnowned", "APIHighErrorRate", "APILatencyHigh", "TallyDown",
	"ConsumerLagHigh", "ConsumerNotProgressing", "ConsumerDeadLetters", "ConsumerDeadLettersGrowing",
	"ConsumerRetryRateHigh", "ConsumerParkedRecordsOld", "ConsumerParkedKeysHigh", "ConsumerRetryingBatches",
	"ConsumerEndToEndLatencyHigh", "ConsumerStale", "ConsumerGroupNoMembers",
	"WebhookEndpointDisabled", "WebhookCircuitsOpen", "WebhookDeliveriesFailing", "MailFailing", "MailBacklog",
}

// instanceGroupingRE finds an aggregation or a match that keeps or joins on
// instance.
var instanceGroupingRE = regexp.MustCompile(`\b(?:by|on)\s*\([^)]*\binstance\b[^)]*\)`)

type alertRule struct {
	name, expr, severity, summary, description string
}

func loadRules(t *testing.T) []alertRule {
	t.Helper()
	docs := readYAML(t, "deploy/prometheus/rules/tally.yml")
	if len(docs) != 1 {
		t.Fatalf("tally.yml: want one YAML document, got %d", len(docs))
	}
	var rules []alertRule
	for _, g := range docs[0].get("groups").items() {
		for _, r := range g.get("rules").items() {
			rules = append(rules, alertRule{
				name:        r.get("alert").str(),
				expr:        r.get("expr").str(),
				severity:    r.get("labels").get("severity").str(),
				summary:     r.get("annotations").get("summary").str(),
				description: r.get("annotations").get("description").str(),
			})
		}
	}
	if len(rules) == 0 {
		t.Fatal("tally.yml: no rules found")
	}
	return rules
}

func TestAlertRules(t *testing.T) {
	ms := exportedMetrics(t)
	rules := loadRules(t)
	seen := map[string]bool{}
	for _, r := range rules {
		if r.name == "" {
			t.Errorf("a rule without an alert name (expr %q): tally.yml holds alerts only", r.expr)
			continue
		}
		if seen[r.name] {
			t.Errorf("%s: defined twice", r.name)
		}
		seen[r.name] = true
		if r.expr == "" {
			t.Errorf("%s: no expr", r.name)
		}
		if r.severity != "critical" && r.severity != "warning" && r.severity != "info" {
			t.Errorf("%s: severity %q, want critical, warning or info", r.name, r.severity)
		}
		if r.summary == "" || len(r.description) < 40 {
			t.Errorf("%s: needs a summary and a description saying what to check", r.name)
		}
		for _, p := range checkPromQL(r.expr, ms) {
			t.Errorf("%s: %s", r.name, p)
		}
		// A group has any number of members, each reporting its own
		// partitions: consumer rules judge the group, not one member.
		if strings.Contains(r.expr, "tally_consumer_") {
			if !strings.Contains(r.expr, "by (group") {
				t.Errorf("%s: reads tally_consumer_* without aggregating by (group, ...): a group has several members", r.name)
			}
			if instanceGroupingRE.MatchString(r.expr) {
				t.Errorf("%s: aggregates consumer metrics by instance; judge the group (several members share its partitions)", r.name)
			}
		}
		// Metrics named in the annotations must exist too (a prefix such as
		// tally_kafka_* is not a name).
		for _, n := range tallyNameRE.FindAllString(r.summary+" "+r.description, -1) {
			if _, ok := ms.lookup(n); !ok && !strings.Contains(r.description, n+"_*") && !strings.Contains(r.description, n+"*") {
				t.Errorf("%s: its annotations name %s, which the code does not export", r.name, n)
			}
		}
	}
	for _, a := range requiredAlerts {
		if !seen[a] {
			t.Errorf("alert %s is missing from tally.yml", a)
		}
	}
}

func TestAlertRuleTests(t *testing.T) {
	ms := exportedMetrics(t)
	docs := readYAML(t, "deploy/prometheus/rules/tally_test.yml")
	if len(docs) != 1 {
		t.Fatalf("tally_test.yml: want one YAML document, got %d", len(docs))
	}
	doc := docs[0]
	if !slices.Contains(doc.get("rule_files").strs(), "tally.yml") {
		t.Errorf("tally_test.yml: rule_files must list tally.yml (relative to the test file)")
	}
	fires := map[string]bool{}
	quiet := map[string]bool{}
	for _, tc := range doc.get("tests").items() {
		name := tc.get("name").str()
		for _, s := range tc.get("input_series").items() {
			series := s.get("series").str()
			metric, _, _ := strings.Cut(series, "{")
			for _, p := range checkSeries(series, ms) {
				t.Errorf("test %q, series %s: %s", name, metric, p)
			}
		}
		for _, a := range tc.get("alert_rule_test").items() {
			alert := a.get("alertname").str()
			exp := a.get("exp_alerts")
			if len(exp.items()) > 0 {
				fires[alert] = true
			} else {
				quiet[alert] = true
			}
		}
	}
	// Every alert is shown firing and staying quiet. The quiet cases carry
	// the edges that matter: a stale backlog must not page early, nor an
	// empty outbox (whose oldest-timestamp gauge is 0) at all; a partition
	// changing hands counts once, one idle member among busy ones is not a
	// stuck group, a member that never committed is not stale since 1970,
	// records waiting in a retry tier are not lag, the group-wide gauges
	// read from PostgreSQL count once however many members report them,
	// resolved dead letters and old ones stop firing, a replaced member is
	// not a missing one.
	for _, r := range loadRules(t) {
		if !fires[r.name] {
			t.Errorf("no unit test shows %s firing", r.name)
		}
		if !quiet[r.name] {
			t.Errorf("no unit test shows %s staying quiet", r.name)
		}
	}
}

// ---------------------------------------------------------------------------
// Grafana.

func TestDashboard(t *testing.T) {
	ms := exportedMetrics(t)
	files, err := filepath.Glob(path("deploy/grafana/dashboards/*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in deploy/grafana/dashboards (%v)", err)
	}
	uids := map[string]string{}
	used := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		name := filepath.Base(f)
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: needs a stable uid and a title", name)
		}
		if prev, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %q also used by %s", name, d.UID, prev)
		}
		uids[d.UID] = name
		if d.ID != nil {
			t.Errorf("%s: id must be null (Grafana assigns it)", name)
		}
		if d.SchemaVersion < 36 {
			t.Errorf("%s: schemaVersion %d, want 36 or later", name, d.SchemaVersion)
		}
		hasDS := false
		for _, v := range d.Templating.List {
			if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
				hasDS = true
			}
			// label_values(metric, label) of a query variable must name a
			// metric and label the code exports.
			if q, ok := v.Query.(string); ok && v.Type == "query" {
				m := labelValuesRE.FindStringSubmatch(q)
				if m == nil {
					t.Errorf("%s: variable %s: query %q, want label_values(metric, label)", name, v.Name, q)
					continue
				}
				if labels, ok := ms.lookup(m[1]); !ok {
					t.Errorf("%s: variable %s: metric %s is not exported by the code", name, v.Name, m[1])
				} else if !labels[m[2]] {
					t.Errorf("%s: variable %s: %s has no label %q", name, v.Name, m[1], m[2])
				}
			}
		}
		if !hasDS {
			t.Errorf("%s: needs a template variable datasource (type datasource, query prometheus)", name)
		}
		ids := map[int]bool{}
		for _, p := range flatten(d.Panels) {
			where := fmt.Sprintf("%s: panel %q", name, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: duplicate panel id %d", where, p.ID)
			}
			ids[p.ID] = true
			if p.Type == "row" {
				continue
			}
			if p.Title == "" || p.Description == "" {
				t.Errorf("%s: needs a title and a description", where)
			}
			if p.FieldConfig.Defaults.Unit == "" {
				t.Errorf("%s: needs a unit", where)
			}
			if p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: datasource uid %q, want ${datasource}", where, p.Datasource.UID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no queries", where)
			}
			for _, tg := range p.Targets {
				if tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s, query %s: datasource uid %q, want ${datasource}", where, tg.RefID, tg.Datasource.UID)
				}
				for _, rm := range rangeRE.FindAllStringSubmatch(tg.Expr, -1) {
					if rm[1] != "$__rate_interval" {
						t.Errorf("%s, query %s: range [%s], want [$__rate_interval]", where, tg.RefID, rm[1])
					}
				}
				for _, prob := range checkPromQL(tg.Expr, ms) {
					t.Errorf("%s, query %s: %s", where, tg.RefID, prob)
				}
				for _, n := range tallyNameRE.FindAllString(tg.Expr, -1) {
					used[n] = true
				}
			}
		}
	}
	for _, m := range []string{
		"tally_outbox_pending_events",
		"tally_outbox_oldest_pending_created_timestamp_seconds",
		"tally_relay_events_published_total",
		"tally_relay_publish_latency_seconds_bucket",
		"tally_relay_owned_shards",
		"tally_relay_errors_total",
		"tally_http_requests_total",
		"tally_http_request_duration_seconds_bucket",
		"tally_consumer_records_total",
		"tally_consumer_lag_records",
		"tally_consumer_end_to_end_seconds_bucket",
		"tally_consumer_processing_seconds_bucket",
		"tally_consumer_last_processed_timestamp_seconds",
		"tally_consumer_batch_retries_total",
		"tally_consumer_fenced_total",
		"tally_consumer_rebalance_partitions_total",
		"tally_consumer_forwards_total",
		"tally_consumer_parked_records",
		"tally_consumer_parked_keys",
		"tally_consumer_oldest_parked_timestamp_seconds",
		"tally_webhook_deliveries_total",
		"tally_webhook_delivery_duration_seconds_bucket",
		"tally_webhook_open_circuits",
		"tally_webhook_disabled_endpoints",
		"tally_mail_messages_total",
		"tally_mail_send_duration_seconds_bucket",
		"tally_mail_pending_messages",
		kafkaNamespace + "_produce_bytes_total",
		kafkaNamespace + "_fetch_bytes_total",
	} {
		if !used[m] {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
}

var labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

type dashboard struct {
	ID            *int    `json:"id"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int     `json:"id"`
	Type        string  `json:"type"`
	Title       string  `json:"title"`
	Description string  `json:"description"`
	Datasource  dsRef   `json:"datasource"`
	Panels      []panel `json:"panels"` // a collapsed row's panels
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource dsRef  `json:"datasource"`
	} `json:"targets"`
}

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

func TestGrafanaProvisioning(t *testing.T) {
	ds := readYAML(t, "deploy/grafana/provisioning/datasources/prometheus.yml")[0]
	items := ds.get("datasources").items()
	if len(items) == 0 || items[0].get("type").str() != "prometheus" {
		t.Fatalf("datasources/prometheus.yml: want a prometheus datasource")
	}
	if u := items[0].get("url").str(); !strings.Contains(u, "prometheus:9090") {
		t.Errorf("datasource url %q does not point at the compose service prometheus:9090", u)
	}
	prov := readYAML(t, "deploy/grafana/provisioning/dashboards/tally.yml")[0]
	providers := prov.get("providers").items()
	if len(providers) == 0 {
		t.Fatal("dashboards/tally.yml: no providers")
	}
	dir := providers[0].get("options").get("path").str()
	compose := loadCompose(t)
	mounted := false
	for _, v := range compose.services["grafana"].get("volumes").strs() {
		src, dst, _ := strings.Cut(v, ":")
		dst, _, _ = strings.Cut(dst, ":")
		if dst == dir && filepath.Clean(src) == filepath.Clean("./deploy/grafana/dashboards") {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("the dashboard provider reads %s, but docker-compose.yml does not mount deploy/grafana/dashboards there", dir)
	}
}

// ---------------------------------------------------------------------------
// docker-compose.yml

type composeFile struct {
	doc      *yNode
	services map[string]*yNode
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	docs := readYAML(t, "docker-compose.yml")
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml: want one YAML document, got %d", len(docs))
	}
	svcs := docs[0].get("services")
	c := composeFile{doc: docs[0], services: map[string]*yNode{}}
	for _, k := range svcs.mapKeys() {
		c.services[k] = svcs.get(k)
	}
	return c
}

// isTally reports whether a compose service runs the tally image.
func isTally(svc *yNode) bool {
	return svc.get("build").get("dockerfile").str() == "deploy/Dockerfile"
}

// composeVarRE is a variable compose interpolates from the shell or .env:
// ${NAME}, ${NAME:-default} or ${NAME-default}.
var composeVarRE = regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}`)

// envOf returns a compose service's environment, in map or list form, as
// the containers get it when the shell and .env set nothing (every
// interpolated variable replaced by its default).
func envOf(svc *yNode) map[string]string {
	env := map[string]string{}
	e := svc.get("environment")
	for _, k := range e.mapKeys() {
		env[k] = composeVarRE.ReplaceAllString(e.get(k).str(), "$1")
	}
	for _, it := range e.items() {
		k, v, _ := strings.Cut(it.str(), "=")
		env[k] = composeVarRE.ReplaceAllString(v, "$1")
	}
	return env
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	known := knownEnv()
	cmds := knownCommands(t)
	groups := knownGroups(t)
	if c.doc.get("name") != nil {
		t.Errorf("docker-compose.yml: a top-level name: is rejected by docker-compose 1.29")
	}
	for _, s := range []string{"kafka", "postgres", "migrate", "topics", "api", "relay", "scheduler", "prometheus", "grafana"} {
		if c.services[s] == nil {
			t.Errorf("docker-compose.yml: no service %s", s)
		}
	}
	ran := map[string]bool{}
	svcArgs := map[string][]string{}
	for _, name := range sortedKeys(c.services) {
		svc := c.services[name]
		for _, dep := range append(svc.get("depends_on").mapKeys(), svc.get("depends_on").strs()...) {
			if c.services[dep] == nil {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
			switch cond := svc.get("depends_on").get(dep).get("condition").str(); cond {
			case "", "service_started", "service_healthy", "service_completed_successfully":
			default:
				t.Errorf("%s: depends_on %s: unknown condition %q", name, dep, cond)
			}
			if svc.get("depends_on").get(dep).get("condition").str() == "service_healthy" && c.services[dep].get("healthcheck") == nil {
				t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
		for _, v := range svc.get("volumes").strs() {
			if src, _, _ := strings.Cut(v, ":"); strings.HasPrefix(src, "./") {
				if _, err := os.Stat(path(src)); err != nil {
					t.Errorf("%s mounts %s, which does not exist", name, src)
				}
			}
		}
		if !isTally(svc) {
			continue
		}
		env := envOf(svc)
		for _, k := range sortedKeys(env) {
			if !known[k] && !runtimeEnv[k] {
				t.Errorf("%s: environment variable %s is not a tally setting (internal/config)", name, k)
			}
		}
		// A credential comes from the shell or .env, never the file.
		if v := svc.get("environment").get("TALLY_SMTP_PASSWORD").str(); v != "" && !regexp.MustCompile(`^\$\{TALLY_SMTP_PASSWORD:?-?\}$`).MatchString(v) {
			t.Errorf("%s: TALLY_SMTP_PASSWORD=%q: write \"${TALLY_SMTP_PASSWORD:-}\", so the password comes from the shell or .env", name, v)
		}
		if args, err := flowStrings(svc.get("command").str()); err == nil && len(args) > 0 {
			if err := envAccepted(args[0], env); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		args, err := flowStrings(svc.get("command").str())
		if err != nil {
			t.Errorf("%s: command: %v", name, err)
		} else if err := checkCommand(args, cmds, groups); err != nil {
			t.Errorf("%s: command %q: %v", name, args, err)
		} else {
			ran[strings.Join(args, " ")] = true
			svcArgs[name] = args
		}
		if args != nil && args[0] == "dev" {
			t.Errorf("%s runs `tally dev`, which embeds its own broker; compose runs each component alone", name)
		}
		if a := env["TALLY_HTTP_ADDR"]; a != "" {
			if h, _, err := net.SplitHostPort(a); err != nil || (h != "" && h != "0.0.0.0" && h != "::") {
				t.Errorf("%s: TALLY_HTTP_ADDR=%s is unreachable from other containers; listen on 0.0.0.0", name, a)
			}
		}
		shutdown := defaultShutdownTimeout()
		if v := env["TALLY_SHUTDOWN_TIMEOUT"]; v != "" {
			if shutdown, err = time.ParseDuration(v); err != nil {
				t.Errorf("%s: TALLY_SHUTDOWN_TIMEOUT=%q: %v", name, v, err)
			}
		}
		if g, err := time.ParseDuration(svc.get("stop_grace_period").str()); err != nil || g <= shutdown {
			t.Errorf("%s: stop_grace_period %q must exceed TALLY_SHUTDOWN_TIMEOUT (%s)", name, svc.get("stop_grace_period").str(), shutdown)
		}
		if u, err := url.Parse(env["DATABASE_URL"]); err != nil || c.services[u.Hostname()] == nil {
			t.Errorf("%s: DATABASE_URL does not point at a compose service", name)
		}
		for _, b := range strings.Split(env["KAFKA_BROKERS"], ",") {
			if h, _, err := net.SplitHostPort(b); err != nil || c.services[h] == nil {
				t.Errorf("%s: KAFKA_BROKERS %q is not a compose service's host:port", name, b)
			}
		}
	}
	want := []string{"migrate", "topics apply", "api", "relay", "scheduler"}
	for _, g := range sortedKeys(groups) {
		want = append(want, "consume "+g)
	}
	for _, w := range want {
		if !ran[w] {
			t.Errorf("no compose service runs `tally %s`", w)
		}
	}
	if r, _ := strconv.Atoi(c.services["relay"].get("deploy").get("replicas").str()); r < 2 {
		t.Errorf("relay: deploy.replicas %d, want 2 or more (relays share the outbox shards)", r)
	}
	// The relay and the consumer groups need the schema and the topics, and
	// both servers up.
	for _, name := range sortedKeys(svcArgs) {
		args := svcArgs[name]
		if args[0] != "relay" && args[0] != "consume" {
			continue
		}
		deps := c.services[name].get("depends_on")
		for dep, cond := range map[string]string{"migrate": "service_completed_successfully", "topics": "service_completed_successfully",
			"postgres": "service_healthy", "kafka": "service_healthy"} {
			if got := deps.get(dep).get("condition").str(); got != cond {
				t.Errorf("%s must wait for %s with condition %s (has %q)", name, dep, cond, got)
			}
		}
		if c.services[name].get("restart").str() == "no" || c.services[name].get("restart") == nil {
			t.Errorf("%s: a long-running component needs a restart policy (unless-stopped)", name)
		}
		if args[0] != "consume" {
			continue
		}
		// Members share the group's partitions: more would sit idle.
		parts, err := groupPartitions(args[1])
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if r := c.services[name].get("deploy").get("replicas").str(); r != "" {
			if n, err := strconv.Atoi(r); err != nil || n < 1 || n > parts {
				t.Errorf("%s: deploy.replicas %s, want 1 to %d (the partitions of the group's topics)", name, r, parts)
			}
		}
	}
	// The broker's internal listener is what the containers use.
	kafkaEnv := envOf(c.services["kafka"])
	for _, k := range []string{"KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LISTENERS",
		"KAFKA_ADVERTISED_LISTENERS", "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_INTER_BROKER_LISTENER_NAME",
		"KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
		"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"} {
		if kafkaEnv[k] == "" {
			t.Errorf("kafka: %s must be set (any KAFKA_* variable replaces the image's whole server.properties)", k)
		}
	}
	for _, name := range sortedKeys(c.services) {
		if svc := c.services[name]; isTally(svc) {
			for _, b := range strings.Split(envOf(svc)["KAFKA_BROKERS"], ",") {
				if !strings.Contains(kafkaEnv["KAFKA_ADVERTISED_LISTENERS"], "//"+b) {
					t.Errorf("%s: KAFKA_BROKERS %s is not one of kafka's advertised listeners", name, b)
				}
			}
		}
	}
}

// TestPrometheusScrape checks that Prometheus (deploy/prometheus) scrapes
// every long-running tally service of the compose file, each replica on its
// own, under the job name tally-<service> that TallyDown watches.
func TestPrometheusScrape(t *testing.T) {
	c := loadCompose(t)
	docs := readYAML(t, "deploy/prometheus/prometheus.yml")
	if len(docs) != 1 {
		t.Fatalf("prometheus.yml: want one YAML document, got %d", len(docs))
	}
	jobs := map[string]*yNode{}
	for _, sc := range docs[0].get("scrape_configs").items() {
		jobs[sc.get("job_name").str()] = sc
	}
	for _, name := range sortedKeys(c.services) {
		svc := c.services[name]
		if !isTally(svc) || svc.get("restart").str() == "no" {
			continue // one-shots (migrate, topics) serve no metrics for long
		}
		job := "tally-" + name
		sc := jobs[job]
		if sc == nil {
			t.Errorf("prometheus.yml has no job %s scraping the compose service %s", job, name)
			continue
		}
		_, port, err := net.SplitHostPort(envOf(svc)["TALLY_HTTP_ADDR"])
		if err != nil {
			t.Errorf("%s: TALLY_HTTP_ADDR: %v", name, err)
			continue
		}
		found := false
		for _, sd := range sc.get("dns_sd_configs").items() {
			names, _ := flowStrings(sd.get("names").str())
			if slices.Contains(append(names, sd.get("names").strs()...), name) && sd.get("port").str() == port {
				found = true
			}
		}
		if !found {
			t.Errorf("job %s: want dns_sd_configs with names [%q] and port %s, so every replica of %s is scraped", job, name, port, name)
		}
	}
}

// flowStrings decodes a YAML flow sequence of double-quoted strings, the
// form the commands are written in.
func flowStrings(s string) ([]string, error) {
	var out []string
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("want a flow sequence of double-quoted strings such as [\"relay\"], got %q", s)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Dockerfile

func TestDockerfile(t *testing.T) {
	src := strings.ReplaceAll(readFile(t, "deploy/Dockerfile"), "\\\n", " ")
	var froms, users []string
	var entrypoint, expose string
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			froms = append(froms, rest)
		case "USER":
			users = append(users, rest)
		case "ENTRYPOINT":
			entrypoint = strings.TrimSpace(rest)
		case "EXPOSE":
			expose = rest
		}
	}
	if len(froms) < 2 || !strings.HasPrefix(froms[0], "golang:") {
		t.Errorf("want a multi-stage build from golang:, got FROM %q", froms)
	}
	if final := froms[len(froms)-1]; !strings.HasPrefix(final, "gcr.io/distroless/static") || !strings.Contains(final, "nonroot") {
		t.Errorf("final stage FROM %q, want gcr.io/distroless/static-...:nonroot", final)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || len(ep) == 0 || ep[0] != "/tally" {
		t.Errorf("ENTRYPOINT %s: want exec form [\"/tally\"] so tally is PID 1 and gets SIGTERM", entrypoint)
	}
	if len(users) == 0 {
		t.Errorf("no USER: the image must not run as root")
	} else if u, _, _ := strings.Cut(users[len(users)-1], ":"); u == "0" || u == "root" {
		t.Errorf("USER %s: the image must not run as root", users[len(users)-1])
	} else if _, err := strconv.Atoi(u); err != nil {
		t.Errorf("USER %s: use a numeric uid, so Kubernetes' runAsNonRoot can verify it", users[len(users)-1])
	}
	if !strings.Contains(expose, "8080") {
		t.Errorf("EXPOSE %q, want 8080", expose)
	}
}

// ---------------------------------------------------------------------------
// Kubernetes

func TestKubernetes(t *testing.T) {
	known := knownEnv()
	cmds := knownCommands(t)
	groups := knownGroups(t)

	// Settings given through the generated ConfigMap: base/tally.env, and
	// each overlay's .env files merged over it.
	shutdown := defaultShutdownTimeout()
	envFiles, _ := filepath.Glob(path("deploy/k8s/base/*.env"))
	overlayFiles, _ := filepath.Glob(path("deploy/k8s/overlays/*/*.env"))
	if len(envFiles) == 0 {
		t.Fatal("no .env files in deploy/k8s/base")
	}
	readEnv := func(f string) map[string]string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok || !known[k] {
				t.Errorf("%s:%d: %q is not a tally setting (internal/config)", f, i+1, line)
			}
			if k == "DATABASE_URL" {
				t.Errorf("%s:%d: DATABASE_URL belongs in the Secret tally-database, not a ConfigMap", f, i+1)
			}
			if k == "TALLY_SMTP_PASSWORD" {
				t.Errorf("%s:%d: TALLY_SMTP_PASSWORD belongs in the Secret tally-smtp, not a ConfigMap", f, i+1)
			}
			env[k] = v
		}
		return env
	}
	baseEnv := map[string]string{}
	for _, f := range envFiles {
		maps.Copy(baseEnv, readEnv(f))
	}
	if v := baseEnv["TALLY_SHUTDOWN_TIMEOUT"]; v != "" {
		var err error
		if shutdown, err = time.ParseDuration(v); err != nil {
			t.Errorf("base TALLY_SHUTDOWN_TIMEOUT=%q: %v", v, err)
		}
	}
	envSets := map[string]map[string]string{"deploy/k8s/base": baseEnv}
	for _, f := range overlayFiles {
		dir := filepath.ToSlash(filepath.Dir(f))
		if envSets[dir] == nil {
			envSets[dir] = maps.Clone(baseEnv)
		}
		maps.Copy(envSets[dir], readEnv(f))
	}
	for dir, env := range envSets {
		if v := env["TALLY_SHUTDOWN_TIMEOUT"]; v != "" && v != baseEnv["TALLY_SHUTDOWN_TIMEOUT"] {
			t.Errorf("%s: overrides TALLY_SHUTDOWN_TIMEOUT; the grace periods are checked against the base's", dir)
		}
		for _, cmd := range []string{"api", "relay", "scheduler", "consume", "migrate", "topics"} {
			if err := envAccepted(cmd, env); err != nil {
				t.Errorf("%s: the ConfigMap's settings: %v", dir, err)
			}
		}
	}

	var files []string
	err := filepath.WalkDir(path("deploy/k8s"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	deployments := map[string]*yNode{}
	pdbs := map[string]*yNode{}
	scaledObjects := map[string]*yNode{}
	consumes := map[string]string{} // Deployment -> the group it runs
	ran := map[string]bool{}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		docs := readYAML(t, filepath.ToSlash(rel))
		isBase := strings.Contains(filepath.ToSlash(rel), "/base/")
		for _, doc := range docs {
			kind, name := doc.get("kind").str(), doc.get("metadata").get("name").str()
			where := fmt.Sprintf("%s: %s %s", rel, kind, name)
			switch kind {
			case "Deployment", "Job":
			case "PodDisruptionBudget":
				pdbs[name] = doc
				continue
			case "ScaledObject":
				if isBase {
					scaledObjects[name] = doc
				}
				continue
			default:
				continue
			}
			if !isBase {
				continue // overlay patches are partial
			}
			if kind == "Deployment" {
				deployments[name] = doc
			}
			pod := doc.get("spec").get("template").get("spec")
			if pod.get("securityContext").get("runAsNonRoot").str() != "true" {
				t.Errorf("%s: pod securityContext.runAsNonRoot must be true", where)
			}
			if kind == "Deployment" {
				g, _ := strconv.Atoi(pod.get("terminationGracePeriodSeconds").str())
				if time.Duration(g)*time.Second <= shutdown {
					t.Errorf("%s: terminationGracePeriodSeconds %d must exceed TALLY_SHUTDOWN_TIMEOUT (%s)", where, g, shutdown)
				}
				ann := doc.get("spec").get("template").get("metadata").get("annotations")
				if ann.get("prometheus.io/scrape").str() != "true" || ann.get("prometheus.io/port").str() != "8080" {
					t.Errorf("%s: needs prometheus.io/scrape and prometheus.io/port annotations on its pods", where)
				}
			}
			for _, c := range pod.get("containers").items() {
				cw := where + " container " + c.get("name").str()
				args, err := flowStrings(c.get("args").str())
				if err != nil {
					t.Errorf("%s: args: %v", cw, err)
				} else if err := checkCommand(args, cmds, groups); err != nil {
					t.Errorf("%s: args %q: %v", cw, args, err)
				} else {
					ran[strings.Join(args, " ")] = true
					if kind == "Deployment" && args[0] == "consume" {
						consumes[name] = args[1]
					}
				}
				if !strings.Contains(c.get("image").str(), "tally") {
					t.Errorf("%s: image %q, want the tally image", cw, c.get("image").str())
				}
				for _, e := range c.get("env").items() {
					n := e.get("name").str()
					if !known[n] && !runtimeEnv[n] {
						t.Errorf("%s: environment variable %s is not a tally setting (internal/config)", cw, n)
					}
					if n == "DATABASE_URL" {
						ref := e.get("valueFrom").get("secretKeyRef")
						if e.get("value") != nil || ref.get("name").str() != "tally-database" || ref.get("key").str() == "" {
							t.Errorf("%s: DATABASE_URL must come from secretKeyRef to the Secret tally-database", cw)
						}
					}
					if n == "TALLY_SMTP_PASSWORD" {
						ref := e.get("valueFrom").get("secretKeyRef")
						if e.get("value") != nil || ref.get("name").str() != "tally-smtp" || ref.get("key").str() == "" {
							t.Errorf("%s: TALLY_SMTP_PASSWORD must come from secretKeyRef to the Secret tally-smtp", cw)
						}
					}
				}
				if kind == "Deployment" || (len(args) > 0 && args[0] == "migrate") {
					hasDB := false
					for _, e := range c.get("env").items() {
						hasDB = hasDB || e.get("name").str() == "DATABASE_URL"
					}
					if !hasDB {
						t.Errorf("%s: no DATABASE_URL", cw)
					}
				}
				sc := c.get("securityContext")
				if sc.get("runAsNonRoot").str() != "true" || sc.get("readOnlyRootFilesystem").str() != "true" ||
					sc.get("allowPrivilegeEscalation").str() != "false" {
					t.Errorf("%s: securityContext needs runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false", cw)
				}
				if drop, _ := flowStrings(sc.get("capabilities").get("drop").str()); !slices.Contains(append(drop, sc.get("capabilities").get("drop").strs()...), "ALL") {
					t.Errorf("%s: securityContext.capabilities.drop must contain ALL", cw)
				}
				res := c.get("resources")
				if res.get("requests").get("cpu") == nil || res.get("requests").get("memory") == nil || res.get("limits").get("memory") == nil {
					t.Errorf("%s: needs cpu and memory requests and a memory limit", cw)
				}
				if kind != "Deployment" {
					continue
				}
				for probe, want := range map[string]string{"startupProbe": "", "readinessProbe": "/readyz", "livenessProbe": "/livez"} {
					p := c.get(probe)
					if p == nil {
						t.Errorf("%s: no %s", cw, probe)
					} else if got := p.get("httpGet").get("path").str(); want != "" && got != want {
						t.Errorf("%s: %s path %q, want %s", cw, probe, got, want)
					}
				}
			}
		}
	}
	want := []string{"migrate", "topics apply", "api", "relay", "scheduler"}
	for _, g := range sortedKeys(groups) {
		want = append(want, "consume "+g)
	}
	for _, w := range want {
		if !ran[w] {
			t.Errorf("no manifest runs `tally %s`", w)
		}
	}
	checkScaledObjects(t, deployments, consumes, scaledObjects)
	checkBrokerReplacements(t)
	for _, d := range []string{"tally-api", "tally-relay", "tally-scheduler"} {
		if deployments[d] == nil {
			t.Errorf("no Deployment %s in deploy/k8s/base", d)
			continue
		}
		if r := deployments[d].get("spec").get("replicas").str(); r != "2" {
			t.Errorf("Deployment %s: replicas %s, want 2", d, r)
		}
	}
	for name, d := range deployments {
		sel := d.get("spec").get("selector").get("matchLabels")
		found := false
		for _, p := range pdbs {
			ps := p.get("spec").get("selector").get("matchLabels")
			if fmt.Sprint(ps.flat()) == fmt.Sprint(sel.flat()) {
				found = true
				if p.get("spec").get("maxUnavailable").str() != "1" {
					t.Errorf("the PodDisruptionBudget of %s: want maxUnavailable: 1", name)
				}
			}
		}
		if !found {
			t.Errorf("Deployment %s has no PodDisruptionBudget with its selector", name)
		}
	}
}

// ---------------------------------------------------------------------------
// The CLI checks (deploy/check.sh), when the tools are installed.

func TestCheckScript(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: not running deploy/check.sh")
	}
	for _, tool := range []string{"bash", "promtool", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed; CI installs it and runs deploy/check.sh", tool)
		}
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if exec.Command("docker", "compose", "version").Run() != nil {
			t.Skip("neither docker-compose nor the docker compose plugin is installed; CI installs it and runs deploy/check.sh")
		}
	}
	cmd := exec.Command("bash", "deploy/check.sh")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deploy/check.sh: %v\n%s", err, out)
	}
	t.Logf("deploy/check.sh:\n%s", out)
}

// ---------------------------------------------------------------------------
// A reader for the block-style YAML subset the deployment files use: block
// mappings and sequences (indented or not under their key), plain, single-
// and double-quoted scalars, literal and folded block scalars, comments,
// anchors, aliases and merge keys (<<), and several documents. Flow
// collections ([...] and {...}) are kept as their source text; multi-line
// plain scalars are not supported and make parsing fail.

const (
	yEmpty = iota
	yMap
	ySeq
	yScalar
)

type yNode struct {
	kind  int
	keys  []string // mapping keys in order
	m     map[string]*yNode
	seq   []*yNode
	value string
}

// get returns the value of key in a mapping, or nil.
func (n *yNode) get(key string) *yNode {
	if n == nil || n.kind != yMap {
		return nil
	}
	return n.m[key]
}

// str returns a scalar's value ("" for anything else).
func (n *yNode) str() string {
	if n == nil || n.kind != yScalar {
		return ""
	}
	return n.value
}

// mapKeys returns a mapping's keys in order.
func (n *yNode) mapKeys() []string {
	if n == nil || n.kind != yMap {
		return nil
	}
	return n.keys
}

func (n *yNode) items() []*yNode {
	if n == nil || n.kind != ySeq {
		return nil
	}
	return n.seq
}

// strs returns the scalar items of a sequence.
func (n *yNode) strs() []string {
	var out []string
	for _, it := range n.items() {
		if it.kind == yScalar {
			out = append(out, it.value)
		}
	}
	return out
}

// flat returns a mapping of scalars as key=value strings, sorted.
func (n *yNode) flat() []string {
	var out []string
	if n != nil {
		for _, k := range n.keys {
			out = append(out, k+"="+n.m[k].str())
		}
	}
	sort.Strings(out)
	return out
}

func parseYAML(src string) ([]*yNode, error) {
	type frame struct {
		indent int
		n      *yNode
		isKey  bool
	}
	var docs []*yNode
	anchors := map[string]*yNode{}
	root := &yNode{}
	stack := []frame{{indent: -1, n: root}}

	var block *yNode // the block scalar being read
	var blockIndent int
	var blockLines []string
	var blockFolded, blockStrip bool
	endBlock := func() {
		minInd := -1
		for _, l := range blockLines {
			if strings.TrimSpace(l) != "" {
				if ind := len(l) - len(strings.TrimLeft(l, " ")); minInd < 0 || ind < minInd {
					minInd = ind
				}
			}
		}
		var b strings.Builder
		for i, l := range blockLines {
			if len(l) >= minInd && minInd >= 0 {
				l = l[minInd:]
			}
			if i > 0 {
				if blockFolded && l != "" && blockLines[i-1] != "" {
					b.WriteByte(' ')
				} else {
					b.WriteByte('\n')
				}
			}
			b.WriteString(l)
		}
		v := strings.TrimRight(b.String(), "\n")
		if !blockStrip {
			v += "\n"
		}
		block.value = v
		block = nil
	}

	lines := strings.Split(src, "\n")
	for i, raw := range lines {
		lineNo := i + 1
		line := strings.TrimRight(raw, " \t\r")
		ind := len(line) - len(strings.TrimLeft(line, " "))
		if block != nil {
			if strings.TrimSpace(line) == "" || ind > blockIndent {
				blockLines = append(blockLines, line)
				continue
			}
			endBlock()
		}
		line = stripComment(line)
		if strings.TrimSpace(line) == "" {
			continue
		}
		if strings.HasPrefix(line, "\t") || strings.Contains(line[:ind+1], "\t") {
			return nil, fmt.Errorf("line %d: tab in indentation", lineNo)
		}
		if line == "---" || strings.HasPrefix(line, "--- ") {
			if root.kind != yEmpty {
				docs = append(docs, root)
			}
			root = &yNode{}
			stack = []frame{{indent: -1, n: root}}
			continue
		}
		if strings.HasPrefix(line, "%") || line == "..." {
			continue
		}
		rest := line[ind:]
		isDash := rest == "-" || strings.HasPrefix(rest, "- ")
		for len(stack) > 1 {
			top := stack[len(stack)-1]
			if top.indent < ind {
				break
			}
			if top.indent == ind && isDash && top.isKey && (top.n.kind == yEmpty || top.n.kind == ySeq) {
				break // a sequence written at its key's indentation
			}
			stack = stack[:len(stack)-1]
		}
		col := ind
		parent := stack[len(stack)-1].n
		for rest == "-" || strings.HasPrefix(rest, "- ") {
			if parent.kind == yEmpty {
				parent.kind = ySeq
			}
			if parent.kind != ySeq {
				return nil, fmt.Errorf("line %d: a sequence item where a mapping continues", lineNo)
			}
			item := &yNode{}
			parent.seq = append(parent.seq, item)
			stack = append(stack, frame{indent: col, n: item})
			after := rest[1:]
			sp := len(after) - len(strings.TrimLeft(after, " "))
			col += 1 + sp
			rest = after[sp:]
			parent = item
		}
		if rest == "" {
			continue
		}
		key, val, isKV, err := splitKV(rest)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", lineNo, err)
		}
		target := parent
		if isKV {
			if parent.kind == yEmpty {
				parent.kind, parent.m = yMap, map[string]*yNode{}
			}
			if parent.kind != yMap {
				return nil, fmt.Errorf("line %d: a mapping key where a %s continues", lineNo, map[int]string{ySeq: "sequence", yScalar: "scalar"}[parent.kind])
			}
			if _, dup := parent.m[key]; dup && key != "<<" {
				return nil, fmt.Errorf("line %d: duplicate key %q", lineNo, key)
			}
			target = &yNode{}
		} else {
			if parent.kind != yEmpty {
				return nil, fmt.Errorf("line %d: unexpected scalar %q (multi-line plain scalars are not supported)", lineNo, rest)
			}
			val = rest
		}
		if strings.HasPrefix(val, "&") {
			name, after, _ := strings.Cut(val[1:], " ")
			anchors[name] = target
			val = strings.TrimSpace(after)
		}
		switch {
		case val == "":
		case strings.HasPrefix(val, "*"):
			a, ok := anchors[val[1:]]
			if !ok {
				return nil, fmt.Errorf("line %d: unknown alias %s", lineNo, val)
			}
			if isKV {
				target = a
			} else {
				*target = *a
			}
		case val[0] == '|' || val[0] == '>':
			target.kind = yScalar
			block, blockLines = target, nil
			blockIndent = ind
			if isKV {
				blockIndent = col
			}
			blockFolded = val[0] == '>'
			blockStrip = strings.Contains(val, "-")
		default:
			target.kind = yScalar
			if target.value, err = unquote(val); err != nil {
				return nil, fmt.Errorf("line %d: %v", lineNo, err)
			}
		}
		if isKV {
			if key == "<<" {
				// Several merge keys may appear; keep them all.
				merged := parent.m["<<"]
				if merged == nil {
					merged = &yNode{kind: ySeq}
					parent.keys = append(parent.keys, key)
					parent.m[key] = merged
				}
				merged.seq = append(merged.seq, target)
				continue
			}
			parent.keys = append(parent.keys, key)
			parent.m[key] = target
			stack = append(stack, frame{indent: col, n: target, isKey: true})
		}
	}
	if block != nil {
		endBlock()
	}
	if root.kind != yEmpty {
		docs = append(docs, root)
	}
	seen := map[*yNode]bool{}
	for _, d := range docs {
		resolveMerges(d, seen)
	}
	return docs, nil
}

// resolveMerges applies merge keys: the merged mappings' keys are added
// where the mapping does not set them itself.
func resolveMerges(n *yNode, seen map[*yNode]bool) {
	if n == nil || seen[n] {
		return
	}
	seen[n] = true
	for _, c := range n.seq {
		resolveMerges(c, seen)
	}
	if n.kind != yMap {
		return
	}
	for _, k := range n.keys {
		resolveMerges(n.m[k], seen)
	}
	merge, ok := n.m["<<"]
	if !ok {
		return
	}
	delete(n.m, "<<")
	n.keys = slices.DeleteFunc(n.keys, func(k string) bool { return k == "<<" })
	var sources []*yNode
	for _, s := range merge.seq {
		if s.kind == ySeq {
			sources = append(sources, s.seq...)
		} else {
			sources = append(sources, s)
		}
	}
	for _, s := range sources {
		if s.kind != yMap {
			continue
		}
		for _, k := range s.keys {
			if _, set := n.m[k]; !set {
				n.keys = append(n.keys, k)
				n.m[k] = s.m[k]
			}
		}
	}
}

// stripComment removes a # comment that is not inside quotes.
func stripComment(line string) string {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			if i == 0 || strings.ContainsRune(" \t[{,:-", rune(line[i-1])) {
				quote = c
			}
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return strings.TrimRight(line[:i], " \t")
		}
	}
	return line
}

// splitKV splits "key: value" (or "key:"); a quoted key may hold colons.
func splitKV(s string) (key, val string, ok bool, err error) {
	if s[0] == '[' || s[0] == '{' {
		return "", "", false, nil
	}
	end := -1
	if s[0] == '"' || s[0] == '\'' {
		q := strings.IndexByte(s[1:], s[0])
		if q < 0 {
			return "", "", false, fmt.Errorf("unterminated quote in %q", s)
		}
		if rest := s[q+2:]; strings.HasPrefix(rest, ":") && (len(rest) == 1 || rest[1] == ' ') {
			end = q + 2
		} else {
			return "", "", false, nil
		}
	} else {
		for i := 0; i < len(s); i++ {
			if s[i] == ':' && (i == len(s)-1 || s[i+1] == ' ') {
				end = i
				break
			}
		}
	}
	if end < 0 {
		return "", "", false, nil
	}
	key, err = unquote(strings.TrimSpace(s[:end]))
	return key, strings.TrimSpace(s[end+1:]), true, err
}

func unquote(v string) (string, error) {
	switch {
	case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
		return strconv.Unquote(v)
	case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
		return strings.ReplaceAll(v[1:len(v)-1], "''", "'"), nil
	case v[0] == '"' || v[0] == '\'':
		return "", fmt.Errorf("unterminated quote in %q", v)
	}
	return v, nil
}

func TestParseYAML(t *testing.T) {
	src := `
x-base: &base
  image: "tally:dev"   # a comment
  env: &env
    A: "1"
    B: '2'
svc:
  <<: *base
  env:
    <<: *env
    B: "3"
  list:
  - name: one
    value: "a: b # not a comment"
  - two
  args: ["x", "y"]
  expr: |
    first
      second
  folded: >-
    a
    b
---
second: doc
`
	docs, err := parseYAML(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[1].get("second").str() != "doc" {
		t.Fatalf("want two documents, got %d", len(docs))
	}
	svc := docs[0].get("svc")
	for _, c := range []struct{ got, want string }{
		{svc.get("image").str(), "tally:dev"},
		{svc.get("env").get("A").str(), "1"},
		{svc.get("env").get("B").str(), "3"},
		{docs[0].get("x-base").get("env").get("B").str(), "2"},
		{svc.get("list").items()[0].get("value").str(), "a: b # not a comment"},
		{svc.get("list").items()[1].str(), "two"},
		{svc.get("args").str(), `["x", "y"]`},
		{svc.get("expr").str(), "first\n  second\n"},
		{svc.get("folded").str(), "a b"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	for _, bad := range []string{"a:\n  - x\n  b: y\n", "a: 1\na: 2\n", "a: *nope\n"} {
		if _, err := parseYAML(bad); err == nil {
			t.Errorf("parseYAML(%q): no error", bad)
		}
	}
}

// checkScaledObjects checks the KEDA ScaledObjects of deploy/k8s/base
// against the Deployments of consumer groups (consumes maps a Deployment to
// the group it runs): each such Deployment leaves its replicas to exactly
// one ScaledObject, whose Kafka triggers read the group's Kafka group id and
// every topic it reads, and never scale past the partitions.
func checkScaledObjects(t *testing.T, deployments map[string]*yNode, consumes map[string]string, scaledObjects map[string]*yNode) {
	t.Helper()
	scaledBy := map[string][]string{}
	for _, name := range sortedKeys(scaledObjects) {
		so := scaledObjects[name]
		where := "ScaledObject " + name
		if v := so.get("apiVersion").str(); v != "keda.sh/v1alpha1" {
			t.Errorf("%s: apiVersion %q, want keda.sh/v1alpha1", where, v)
		}
		spec := so.get("spec")
		ref := spec.get("scaleTargetRef")
		target := ref.get("name").str()
		if k := ref.get("kind").str(); k != "" && k != "Deployment" {
			t.Errorf("%s: scaleTargetRef.kind %q, want Deployment", where, k)
		}
		group, ok := consumes[target]
		if !ok {
			t.Errorf("%s: scales %q, which is not a Deployment running `tally consume <group>`", where, target)
			continue
		}
		scaledBy[target] = append(scaledBy[target], name)
		parts, err := groupPartitions(group)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		lo, errLo := strconv.Atoi(spec.get("minReplicaCount").str())
		hi, errHi := strconv.Atoi(spec.get("maxReplicaCount").str())
		switch {
		case errLo != nil || lo < 1:
			// KEDA's documented trap: at 0, a group that never committed
			// has no lag to wake it.
			t.Errorf("%s: minReplicaCount %q, want 1 or more", where, spec.get("minReplicaCount").str())
		case errHi != nil || hi < lo || hi > parts:
			t.Errorf("%s: maxReplicaCount %q, want %d to %d (the partitions of group %s's topics)", where, spec.get("maxReplicaCount").str(), lo, parts, group)
		}
		covered := map[string]bool{}
		for i, tr := range spec.get("triggers").items() {
			if tr.get("type").str() != "kafka" {
				continue
			}
			tw := fmt.Sprintf("%s trigger %d", where, i)
			md := tr.get("metadata")
			if g := md.get("consumerGroup").str(); g != "tally."+group {
				t.Errorf("%s: consumerGroup %q, want %q (the Kafka group id of `tally consume %s`)", tw, g, "tally."+group, group)
			}
			topic := md.get("topic").str()
			if !slices.Contains(groupTopics[group], topic) {
				t.Errorf("%s: topic %q, want one of the topics group %s reads %v", tw, topic, group, groupTopics[group])
			}
			covered[topic] = true
			if n, err := strconv.Atoi(md.get("lagThreshold").str()); err != nil || n < 1 {
				t.Errorf("%s: lagThreshold %q, want a positive integer", tw, md.get("lagThreshold").str())
			}
			if n, err := strconv.Atoi(md.get("activationLagThreshold").str()); err != nil || n < 0 {
				t.Errorf("%s: activationLagThreshold %q, want an integer of 0 or more", tw, md.get("activationLagThreshold").str())
			}
			// A partition without a position in PostgreSQL is read from its
			// start, so its whole log is lag.
			if p := md.get("offsetResetPolicy").str(); p != "earliest" {
				t.Errorf("%s: offsetResetPolicy %q, want earliest", tw, p)
			}
			if a := md.get("allowIdleConsumers").str(); a != "" && a != "false" {
				t.Errorf("%s: allowIdleConsumers %q: members beyond the partitions would sit idle", tw, a)
			}
			if md.get("bootstrapServers").str() == "" {
				t.Errorf("%s: no bootstrapServers (kustomize replaces it with the ConfigMap's KAFKA_BROKERS)", tw)
			}
		}
		for _, topic := range groupTopics[group] {
			if !covered[topic] {
				t.Errorf("%s: no kafka trigger reads the lag of %s, which group %s reads", where, topic, group)
			}
		}
	}
	for _, d := range sortedKeys(consumes) {
		if r := deployments[d].get("spec").get("replicas"); r != nil {
			t.Errorf("Deployment %s: spec.replicas %s; leave it out, KEDA's ScaledObject owns it", d, r.str())
		}
		if n := len(scaledBy[d]); n != 1 {
			t.Errorf("Deployment %s (consumer group %s): %d ScaledObjects scale it %v, want exactly one", d, consumes[d], n, scaledBy[d])
		}
	}
}

// The replacement that gives KEDA's Kafka scaler the brokers of the
// ConfigMap (deploy/k8s/base/kustomization.yaml).
const (
	brokersSource = "data.KAFKA_BROKERS"
	brokersTarget = "spec.triggers.[type=kafka].metadata.bootstrapServers"
)

// hasBrokerReplacement reports whether a kustomization copies the
// ConfigMap's KAFKA_BROKERS into the ScaledObjects' Kafka triggers.
func hasBrokerReplacement(k *yNode) bool {
	for _, r := range k.get("replacements").items() {
		src := r.get("source")
		if src.get("kind").str() != "ConfigMap" || src.get("name").str() != "tally-config" || src.get("fieldPath").str() != brokersSource {
			continue
		}
		for _, tg := range r.get("targets").items() {
			if tg.get("select").get("kind").str() == "ScaledObject" && slices.Contains(tg.get("fieldPaths").strs(), brokersTarget) {
				return true
			}
		}
	}
	return false
}

// checkBrokerReplacements checks that the base, and every overlay that sets
// its own KAFKA_BROKERS, copies the ConfigMap's brokers into the KEDA
// triggers: a base's replacement sees only the base's ConfigMap.
func checkBrokerReplacements(t *testing.T) {
	t.Helper()
	if !hasBrokerReplacement(readYAML(t, "deploy/k8s/base/kustomization.yaml")[0]) {
		t.Errorf("deploy/k8s/base/kustomization.yaml: no replacement from ConfigMap tally-config %s to ScaledObject %s", brokersSource, brokersTarget)
	}
	overlays, _ := filepath.Glob(path("deploy/k8s/overlays/*/kustomization.yaml"))
	for _, f := range overlays {
		dir := filepath.Dir(f)
		envs, _ := filepath.Glob(filepath.Join(dir, "*.env"))
		sets := false
		for _, e := range envs {
			b, err := os.ReadFile(e)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				sets = sets || strings.HasPrefix(strings.TrimSpace(line), "KAFKA_BROKERS=")
			}
		}
		rel, _ := filepath.Rel(root, f)
		if sets && !hasBrokerReplacement(readYAML(t, filepath.ToSlash(rel))[0]) {
			t.Errorf("%s: sets KAFKA_BROKERS but does not repeat the base's replacement into the ScaledObjects (%s), so KEDA would read the base's brokers", rel, brokersTarget)
		}
	}
}

// TestKubernetesRendered renders the base and every overlay with kubectl
// kustomize and checks what KEDA is given against what the pods are given.
func TestKubernetesRendered(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed; CI installs it (kubectl kustomize renders offline)")
	}
	dirs := []string{path("deploy/k8s/base")}
	overlays, _ := filepath.Glob(path("deploy/k8s/overlays/*"))
	dirs = append(dirs, overlays...)
	for _, dir := range dirs {
		out, err := exec.Command(kubectl, "kustomize", dir).Output()
		if err != nil {
			t.Errorf("kubectl kustomize %s: %v", dir, err)
			continue
		}
		docs, err := parseYAML(string(out))
		if err != nil {
			t.Errorf("kubectl kustomize %s: reading its output: %v", dir, err)
			continue
		}
		var brokers []string
		deployments := map[string]*yNode{}
		var scaled []*yNode
		for _, d := range docs {
			switch d.get("kind").str() {
			case "ConfigMap":
				if strings.HasPrefix(d.get("metadata").get("name").str(), "tally-config") {
					brokers = append(brokers, d.get("data").get("KAFKA_BROKERS").str())
				}
			case "Deployment":
				deployments[d.get("metadata").get("name").str()] = d
			case "ScaledObject":
				scaled = append(scaled, d)
			}
		}
		if len(brokers) != 1 || brokers[0] == "" {
			t.Errorf("%s: want one tally-config ConfigMap with KAFKA_BROKERS, got %q", dir, brokers)
			continue
		}
		for _, so := range scaled {
			where := fmt.Sprintf("%s: ScaledObject %s", dir, so.get("metadata").get("name").str())
			target := deployments[so.get("spec").get("scaleTargetRef").get("name").str()]
			if target == nil {
				t.Errorf("%s: scaleTargetRef %q is not a Deployment of the rendering (a namePrefix/nameSuffix is not applied to it)", where, so.get("spec").get("scaleTargetRef").get("name").str())
			} else {
				if target.get("spec").get("replicas") != nil {
					t.Errorf("%s: its Deployment sets spec.replicas, which KEDA owns", where)
				}
				if a, b := target.get("metadata").get("namespace").str(), so.get("metadata").get("namespace").str(); a != b {
					t.Errorf("%s: namespace %q, its Deployment's %q", where, b, a)
				}
			}
			for _, tr := range so.get("spec").get("triggers").items() {
				if tr.get("type").str() != "kafka" {
					continue
				}
				if got := tr.get("metadata").get("bootstrapServers").str(); got != brokers[0] {
					t.Errorf("%s: bootstrapServers %q, but the pods' KAFKA_BROKERS is %q", where, got, brokers[0])
				}
			}
		}
	}
}
