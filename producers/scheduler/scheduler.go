// Package scheduler produces Tally's time-driven events: what becomes true
// because a day passed rather than because someone changed something, such
// as the daily recognition of deferred revenue. Each task runs at start and
// then every interval; a run writes its events through the outbox in the
// transactions that record what it did, so a repeated run, or two
// schedulers running at once, emits nothing twice. Running several
// schedulers is therefore safe, and only buys availability.
//
// A task that fails is logged and counted, and runs again at the next tick;
// it never stops the scheduler or the other tasks.
package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/consumers/kpi"
	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/internal/webhook"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// Task is one time-driven producer. Run does what is due at now and returns
// how many events it wrote to the outbox. Every is how often it runs; zero
// takes the scheduler's interval (WithInterval).
type Task struct {
	Name  string
	Every time.Duration
	Run   func(ctx context.Context, now time.Time) (events int, err error)
}

// Settings are what Tasks builds the tasks with.
type Settings struct {
	// KPIEvery is kpi.publish's interval.
	KPIEvery time.Duration
	// Notices is when invoice.notices sends reminders and overdue notices,
	// in days from the due date.
	Notices billing.NoticeSchedule
	// NotifyRetention is how long notify.retention keeps webhook deliveries
	// and email messages after they ended; zero keeps them for ever (and
	// runs no notify.retention).
	NotifyRetention time.Duration
}

// pruneChunk and pruneChunks bound one notify.retention run: at most
// pruneChunks statements deleting pruneChunk rows each, per table, so that
// a first run over years of history does not hold the database for long;
// the next run goes on.
const (
	pruneChunk  = 5000
	pruneChunks = 20
)

// Tasks returns the tasks of Tally on pool.
//
//   - revenue.announce: tally.revenue.recognized.v1 for the service days
//     through today (UTC) that the revenue ledger has not announced
//     (revenue.Announce), every interval.
//   - invoice.notices: the reminders and overdue notices of open invoices
//     that s.Notices makes due by today (billing.SendNotices), every
//     interval.
//   - import.reap: fails the CSV imports whose process stopped, silent for
//     importer.StaleAfter, with their tally.import.completed.v1
//     (importer.ReapStale), every interval.
//   - kpi.publish: tally.kpi.calculated.v1 for the KPI values that the
//     KPI group's latest events changed (kpi.Publish), every s.KPIEvery:
//     the window in which a burst of events is coalesced into one
//     announcement per KPI and period.
//   - notify.retention: deletes the webhook deliveries (with their
//     attempts) and the email messages that ended more than
//     s.NotifyRetention ago (webhook.Prune, mail.Prune), every interval;
//     none with a zero retention.
func Tasks(pool *pgxpool.Pool, s Settings) []Task {
	tasks := []Task{{
		Name: "revenue.announce",
		Run: func(ctx context.Context, now time.Time) (int, error) {
			rep, err := revenue.Announce(ctx, pool, date.Of(now), 0)
			return rep.Recognized + rep.Restated, err
		},
	}, {
		Name: "invoice.notices",
		Run: func(ctx context.Context, now time.Time) (int, error) {
			rep, err := billing.SendNotices(ctx, pool, s.Notices, date.Of(now), 0)
			return rep.Reminders + rep.Overdue, err
		},
	}, {
		Name: "import.reap",
		Run: func(ctx context.Context, now time.Time) (int, error) {
			return importer.ReapStale(ctx, pool, importer.StaleAfter, now)
		},
	}, {
		Name:  "kpi.publish",
		Every: s.KPIEvery,
		Run: func(ctx context.Context, _ time.Time) (int, error) {
			rep, err := kpi.Publish(ctx, pool, 0)
			return rep.Changes, err
		},
	}}
	if s.NotifyRetention > 0 {
		tasks = append(tasks, Task{Name: "notify.retention", Run: func(ctx context.Context, now time.Time) (int, error) {
			before := now.Add(-s.NotifyRetention)
			for _, prune := range []func() (int64, error){
				func() (int64, error) { return webhook.Prune(ctx, pool, before, pruneChunk) },
				func() (int64, error) { return mail.Prune(ctx, pool, before, pruneChunk) },
			} {
				for range pruneChunks {
					n, err := prune()
					if err != nil {
						return 0, err
					}
					if n < pruneChunk {
						break
					}
				}
			}
			return 0, nil
		}})
	}
	return tasks
}

// Scheduler runs tasks on an interval. Create it with New.
type Scheduler struct {
	tasks    []Task
	interval time.Duration
	log      *slog.Logger
	notify   func()
	now      func() time.Time
	m        *metrics
}

// Opt configures a Scheduler.
type Opt func(*Scheduler)

// WithInterval sets how often each task runs; default 30 s. A run that takes
// longer than the interval is followed by the next at once, never by two.
func WithInterval(d time.Duration) Opt { return func(s *Scheduler) { s.interval = d } }

// WithLogger sets the logger; default slog.Default().
func WithLogger(l *slog.Logger) Opt { return func(s *Scheduler) { s.log = l } }

// WithNotify sets what is called after a run wrote events, to wake the
// relay (outbox.Notifier.Notify); default nothing, and the relay finds the
// events at its next poll.
func WithNotify(fn func()) Opt { return func(s *Scheduler) { s.notify = fn } }

// WithRegisterer registers the scheduler's metrics with r; default none.
func WithRegisterer(r prometheus.Registerer) Opt {
	return func(s *Scheduler) { s.m = newMetrics(r) }
}

// WithClock sets the clock; default time.Now. Tests use it to let days
// pass.
func WithClock(now func() time.Time) Opt { return func(s *Scheduler) { s.now = now } }

// New returns a Scheduler of tasks.
func New(tasks []Task, opts ...Opt) (*Scheduler, error) {
	s := &Scheduler{tasks: tasks, interval: 30 * time.Second, log: slog.Default(), notify: func() {}, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.interval <= 0 {
		return nil, fmt.Errorf("scheduler: the interval must be positive, not %v", s.interval)
	}
	for _, t := range s.tasks {
		if t.Every < 0 {
			return nil, fmt.Errorf("scheduler: task %s: a negative interval %v", t.Name, t.Every)
		}
	}
	if len(s.tasks) == 0 {
		return nil, errors.New("scheduler: no tasks")
	}
	if s.m == nil {
		s.m = newMetrics(nil)
	}
	for _, t := range s.tasks {
		s.m.init(t.Name)
	}
	return s, nil
}

// Run runs every task now and then every its interval, each on its own,
// until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, t := range s.tasks {
		every := cmp.Or(t.Every, s.interval)
		wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				s.runTask(ctx, t)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// Once runs every task once, one after the other, and returns the failures
// joined (each wrapped with its task's name).
func (s *Scheduler) Once(ctx context.Context) error {
	var errs []error
	for _, t := range s.tasks {
		if err := s.runTask(ctx, t); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Scheduler) runTask(ctx context.Context, t Task) error {
	began := time.Now()
	n, err := t.Run(ctx, s.now())
	took := time.Since(began)
	s.m.duration.WithLabelValues(t.Name).Observe(took.Seconds())
	s.m.events.WithLabelValues(t.Name).Add(float64(n))
	if n > 0 {
		s.notify()
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopping: not a failure of the task
		}
		s.m.runs.WithLabelValues(t.Name, "error").Inc()
		s.log.Error("scheduled task failed; it runs again at the next tick", "task", t.Name, "events", n, "err", err)
		return fmt.Errorf("task %s: %w", t.Name, err)
	}
	s.m.runs.WithLabelValues(t.Name, "ok").Inc()
	s.m.lastSuccess.WithLabelValues(t.Name).Set(float64(time.Now().UnixMilli()) / 1e3)
	if n > 0 {
		s.log.Info("scheduled task ran", "task", t.Name, "events", n, "took", took)
	}
	return nil
}

type metrics struct {
	runs        *prometheus.CounterVec
	events      *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	lastSuccess *prometheus.GaugeVec
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_scheduler_runs_total",
			Help: "Runs of each scheduled task, by outcome (ok, error)."}, []string{"task", "outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_scheduler_events_total",
			Help: "Events scheduled tasks wrote to the outbox."}, []string{"task"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tally_scheduler_run_duration_seconds",
			Help:    "How long a run of a scheduled task took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"task"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_scheduler_last_success_timestamp_seconds",
			Help: "When each scheduled task last ran without error (Unix time)."}, []string{"task"}),
	}
	if r != nil {
		r.MustRegister(m.runs, m.events, m.duration, m.lastSuccess)
	}
	return m
}

// init makes a task's series exist before its first run, so rate() and
// absent() see them from the start.
func (m *metrics) init(task string) {
	m.runs.WithLabelValues(task, "ok")
	m.runs.WithLabelValues(task, "error")
	m.events.WithLabelValues(task)
	m.duration.WithLabelValues(task)
}
