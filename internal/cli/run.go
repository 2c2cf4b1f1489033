package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/notify"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/observe"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/producers/relay"
	"github.com/tally-dev/tally/producers/scheduler"
	"github.com/tally-dev/tally/topics"
)

// process is what the long-running components of one tally process share:
// a pool, one registry, one health, one HTTP server for their endpoints, and
// the context that stops them.
type process struct {
	cfg    config.Config
	log    *slog.Logger
	reg    *prometheus.Registry
	health *observe.Health
	mux    *http.ServeMux
	pool   *pgxpool.Pool
	notify *outbox.Notifier // wakes relays after commits that wrote to the outbox; nil until needed
	ctx    context.Context  // the components'; ends when the process drains
	stop   context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// run opens the database, lets start add components to the process, and
// serves until ctx ends or a component fails. start returns the process's
// HTTP handler.
func run(ctx context.Context, cfg config.Config, log *slog.Logger, start func(*process) (http.Handler, error)) error {
	p := &process{cfg: cfg, log: log, reg: observe.NewRegistry(), health: &observe.Health{},
		mux: http.NewServeMux(), errs: make(chan error, 8)}
	p.health.Register(p.mux, p.reg)
	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	p.health.Check("postgres", pool.Ping)
	p.pool = pool
	p.ctx, p.stop = context.WithCancel(context.Background())
	defer p.stop()
	h, err := start(p)
	if err != nil {
		p.stop()
		p.wg.Wait()
		return err
	}
	return p.serve(ctx, h)
}

// goRun runs fn until the process drains; a failure of fn stops the
// process.
func (p *process) goRun(name string, fn func(context.Context) error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := fn(p.ctx); err != nil {
			p.errs <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// serve listens on the HTTP address and serves until ctx ends or a
// component fails, then drains: readiness turns false, the server stops
// taking requests and finishes those in flight, and the components stop,
// all within the shutdown timeout.
func (p *process) serve(ctx context.Context, handler http.Handler) error {
	ln, err := net.Listen("tcp", p.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", p.cfg.HTTPAddr, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var failure error
	select {
	case <-ctx.Done():
		p.log.Info("stopping")
	case failure = <-p.errs:
		p.log.Error("a component failed; stopping", "err", failure)
	case err := <-served:
		failure = fmt.Errorf("serving HTTP: %w", err)
	}
	p.health.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		p.log.Warn("HTTP shutdown", "err", err)
	}
	p.stop()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		return errors.Join(failure, errors.New("components did not stop within the shutdown timeout"))
	}
	return failure
}

// notifier returns the process's outbox notifier, starting it at the first
// call. Components are started one after the other, so this needs no lock.
func (p *process) notifier() *outbox.Notifier {
	if p.notify == nil {
		p.notify = outbox.NewNotifier(p.pool, p.log)
		p.goRun("notifier", func(ctx context.Context) error { p.notify.Run(ctx); return nil })
	}
	return p.notify
}

// startAPI registers the API on the process's mux and starts what it
// needs; it returns the handler to serve.
func startAPI(p *process) (http.Handler, error) {
	g, err := webhookGuard(p.cfg)
	if err != nil {
		return nil, err
	}
	a := api.New(p.pool, p.notifier(), p.log, api.Config{MaxBodyBytes: p.cfg.MaxBodyBytes, IdempotencyTTL: p.cfg.IdempotencyTTL,
		WebhookGuard: g})
	a.Register(p.mux)
	p.goRun("idempotency expiry", func(ctx context.Context) error {
		api.ExpireKeys(ctx, p.pool, p.cfg.IdempotencyTTL, time.Minute, p.log)
		return nil
	})
	m := observe.NewHTTPMetrics(p.reg)
	return m.Wrap(observe.NewTracer(), p.mux, api.Handler(p.mux)), nil
}

// startRelay starts a relay publishing to brokers.
func startRelay(p *process, brokers []string) error {
	kp := kprom.NewMetrics("tally_kafka", kprom.Registry(p.reg), kprom.WithClientLabel())
	r, err := relay.New(p.pool,
		relay.WithKafkaOptions(kgo.SeedBrokers(brokers...), kgo.WithHooks(kp)),
		relay.WithLogger(p.log.With("component", "relay")),
		relay.WithRegisterer(p.reg),
		relay.WithBatchSize(p.cfg.RelayBatchSize),
		relay.WithPollInterval(p.cfg.RelayPollInterval),
		relay.WithRetention(p.cfg.EventRetention),
		// Half the shutdown timeout leaves the other half to the rest.
		relay.WithDrainTimeout(p.cfg.ShutdownTimeout/2),
	)
	if err != nil {
		return err
	}
	p.health.Check("relay", func(context.Context) error {
		if !r.Ready() {
			return errors.New("not yet a member of the relay group")
		}
		return nil
	})
	p.goRun("relay", r.Run)
	return nil
}

// startScheduler starts the scheduler of time-driven events.
func startScheduler(p *process) error {
	s, err := newScheduler(p.pool, p.cfg, p.log, p.reg, p.notifier().Notify)
	if err != nil {
		return err
	}
	p.goRun("scheduler", s.Run)
	return nil
}

func newScheduler(pool *pgxpool.Pool, cfg config.Config, log *slog.Logger, reg prometheus.Registerer, notify func()) (*scheduler.Scheduler, error) {
	return scheduler.New(scheduler.Tasks(pool, scheduler.Settings{KPIEvery: cfg.KPIPublishInterval, Notices: cfg.InvoiceNotices,
		NotifyRetention: cfg.NotifyRetention}),
		scheduler.WithInterval(cfg.SchedulerInterval),
		scheduler.WithLogger(log.With("component", "scheduler")),
		scheduler.WithRegisterer(reg),
		scheduler.WithNotify(notify))
}

// schedulerOnce is tally scheduler's -once.
var schedulerOnce bool

func schedulerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&schedulerOnce, "once", false, "run each task once and exit (status 1 if one failed), e.g. from cron, instead of serving")
}

// runScheduler is `tally scheduler [-once]`.
func runScheduler(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	if schedulerOnce {
		pool, err := postgres.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		// The relay finds the events at its next poll.
		s, err := newScheduler(pool, cfg, log, nil, func() {})
		if err != nil {
			return err
		}
		return s.Once(ctx)
	}
	return run(ctx, cfg, log, func(p *process) (http.Handler, error) {
		log.Info("scheduling", "interval", cfg.SchedulerInterval, "metrics", "http://"+cfg.HTTPAddr+"/metrics")
		return p.mux, startScheduler(p)
	})
}

// groups are the consumer groups `tally consume` runs, by name.
var groups = map[string]func(config.Config) *consumer.Group{
	"revenue": func(config.Config) *consumer.Group { return revenue.Group() },
	"kpi":     func(config.Config) *consumer.Group { return kpi.Group() },
	"notify": func(cfg config.Config) *consumer.Group {
		if cfg.SMTPAddr == "" {
			return notify.Group()
		}
		return notify.Group(notify.WithMail())
	},
}

func groupNames() string {
	names := make([]string, 0, len(groups))
	for n := range groups {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// startConsumer starts a member of the group name. A member of notify
// also runs a webhook sender and, with an SMTP server, a mail sender,
// which send the deliveries and messages the group writes: senders share
// them, so scaling the group scales the sending too.
func startConsumer(p *process, name string, brokers []string) error {
	kp := kprom.NewMetrics("tally_kafka", kprom.Registry(p.reg), kprom.WithClientLabel())
	r, err := consumer.New(p.pool, groups[name](p.cfg),
		consumer.WithKafkaOptions(kgo.SeedBrokers(brokers...), kgo.WithHooks(kp)),
		consumer.WithLogger(p.log.With("component", "consume")),
		consumer.WithRegisterer(p.reg),
		consumer.WithDrainTimeout(p.cfg.ShutdownTimeout/2),
		consumer.WithRetryDelays(p.cfg.RetryDelays...),
		consumer.WithNotifier(p.notifier()),
	)
	if err != nil {
		return err
	}
	p.health.Check("kafka ("+name+")", r.Ping)
	p.goRun("consumer "+name, r.Run)
	if name == "notify" {
		return startSenders(p)
	}
	return nil
}

// webhookGuard is the SSRF guard of the configuration's allow-list.
func webhookGuard(cfg config.Config) (*webhook.Guard, error) {
	return webhook.NewGuard(webhook.WithAllow(cfg.WebhookAllow...))
}

// startSenders starts a webhook sender and, with an SMTP server, a mail
// sender; the webhook sender then tells the operator, if there is one, of
// each endpoint it disables.
func startSenders(p *process) error {
	g, err := webhookGuard(p.cfg)
	if err != nil {
		return err
	}
	opts := []webhook.SenderOpt{webhook.WithGuard(g), webhook.WithTimeout(p.cfg.WebhookTimeout),
		webhook.WithLogger(p.log.With("component", "webhooks")), webhook.WithRegisterer(p.reg)}
	if p.cfg.SMTPAddr != "" {
		ms, err := newMailSender(p)
		if err != nil {
			return err
		}
		p.goRun("mail sender", ms.Run)
		if p.cfg.MailOperator != "" {
			opts = append(opts, webhook.WithOnDisable(tellOperator(p.cfg.MailOperator)))
		}
	}
	s, err := webhook.NewSender(p.pool, opts...)
	if err != nil {
		return err
	}
	p.goRun("webhook sender", s.Run)
	return nil
}

// newMailSender builds the mail sender of the configuration.
func newMailSender(p *process) (*mail.Sender, error) {
	t, err := mail.LoadTemplates(p.cfg.MailTemplates)
	if err != nil {
		return nil, err
	}
	opts := []mail.SMTPOpt{mail.WithTLS(p.cfg.SMTPTLS), mail.WithHelo(p.cfg.SMTPHelo)}
	if p.cfg.SMTPUsername != "" {
		opts = append(opts, mail.WithAuth(p.cfg.SMTPUsername, p.cfg.SMTPPassword))
	}
	c, err := mail.NewSMTP(p.cfg.SMTPAddr, p.cfg.SMTPFrom, opts...)
	if err != nil {
		return nil, err
	}
	return mail.NewSender(p.pool, c, t, mail.WithLogger(p.log.With("component", "mail")), mail.WithRegisterer(p.reg))
}

// tellOperator queues, with an endpoint's disabling, the email that tells
// operator of it.
func tellOperator(operator string) func(context.Context, pgx.Tx, webhook.Disabled) error {
	return func(ctx context.Context, tx pgx.Tx, d webhook.Disabled) error {
		b := &pgx.Batch{}
		err := mail.Queue(mail.QueueFunc(func(sql string, args ...any) { b.Queue(sql, args...) }), mail.Message{
			Key: "endpoint_disabled:" + d.ID + ":" + d.At.UTC().Format(time.RFC3339Nano), Kind: mail.KindEndpointDisabled,
			EventID: uuid.NewSHA1(uuid.NameSpaceURL, []byte("tally:webhook-endpoint-disabled:"+d.ID+":"+d.At.String())),
			To:      mail.Address{Email: operator},
			Data: map[string]any{"endpoint_id": d.ID, "url": d.URL, "reason": d.Reason,
				"disabled_at": d.At.UTC().Format(time.RFC3339)},
		}, d.At)
		if err != nil {
			return err
		}
		return tx.SendBatch(ctx, b).Close()
	}
}

func runConsume(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if len(e.Args) != 1 {
		return usageError{fmt.Errorf("usage: tally consume <group> [flags]; groups: %s", groupNames())}
	}
	name := e.Args[0]
	if groups[name] == nil {
		return usageError{fmt.Errorf("unknown consumer group %q; groups: %s", name, groupNames())}
	}
	return run(ctx, cfg, log, func(p *process) (http.Handler, error) {
		log.Info("consuming", "group", name, "brokers", cfg.KafkaBrokers, "metrics", "http://"+cfg.HTTPAddr+"/metrics")
		return p.mux, startConsumer(p, name, cfg.KafkaBrokers)
	})
}

func runAPI(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	return run(ctx, cfg, log, func(p *process) (http.Handler, error) {
		log.Info("serving the API", "addr", cfg.HTTPAddr)
		return startAPI(p)
	})
}

func runRelay(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	return run(ctx, cfg, log, func(p *process) (http.Handler, error) {
		log.Info("relaying the outbox", "brokers", cfg.KafkaBrokers, "metrics", "http://"+cfg.HTTPAddr+"/metrics")
		return p.mux, startRelay(p, cfg.KafkaBrokers)
	})
}

func runMigrate(ctx context.Context, e Env, cfg config.Config, _ *slog.Logger) error {
	if err := noArgs(e.Args); err != nil {
		return err
	}
	from, to, err := postgres.Migrate(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(e.Stdout, "schema is up to date (version %d)\n", to)
	} else {
		fmt.Fprintf(e.Stdout, "migrated the schema from version %d to %d\n", from, to)
	}
	return nil
}

func runTopics(ctx context.Context, e Env, cfg config.Config, _ *slog.Logger) error {
	if len(e.Args) != 1 || e.Args[0] != "apply" {
		return usageError{errors.New("usage: tally topics apply [flags]")}
	}
	rep, err := applyTopics(ctx, cfg.KafkaBrokers, cfg.RetryDelays, cfg.TopicReplication)
	if err != nil {
		return err
	}
	printReport(e, rep, len(topics.Catalogue(cfg.RetryDelays)))
	return nil
}

func applyTopics(ctx context.Context, brokers []string, retryDelays []time.Duration, replication int) (topics.Report, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return topics.Report{}, fmt.Errorf("creating Kafka client: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return topics.Apply(ctx, kadm.NewClient(cl), topics.Catalogue(retryDelays), int16(replication))
}

func printReport(e Env, rep topics.Report, catalogued int) {
	for _, t := range rep.Created {
		fmt.Fprintf(e.Stdout, "created %s\n", t)
	}
	for _, d := range rep.Drift {
		fmt.Fprintf(e.Stdout, "drift: %s\n", d)
	}
	fmt.Fprintf(e.Stdout, "%d topics in the catalogue, %d created, %d drifted\n", catalogued, len(rep.Created), len(rep.Drift))
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", args)}
	}
	return nil
}
