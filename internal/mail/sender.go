package mail

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/mail"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/internal/dispatch"
)

// DefaultSchedule is the delays between the attempts of a message the
// server did not take, the first attempt being when it is queued: 1 min,
// 5 min, 30 min, 2 h, 6 h, 12 h, 24 h (about 45 h in all, before jitter).
// A reminder later than that is no longer worth sending.
var DefaultSchedule = []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

// Sender defaults.
const (
	DefaultConcurrency  = 4
	DefaultPollInterval = time.Second
)

// Sender sends the pending messages. Any number may run, in any number of
// processes: each claims due messages with FOR UPDATE SKIP LOCKED and takes
// a lease on them (the SMTP timeout and a margin) before sending, outside
// any transaction; a sender that dies lets the lease lapse and another
// sends again (see the package's gotcha).
//
// What an attempt's end means: the server took the message: sent. A
// permanent refusal (5xx), an address that is not one, or a template that
// cannot render the message's data: failed, at once. Anything else (the
// server down or busy, a 4xx, a customer whose address is not known yet):
// tried again after the schedule's next delay, jittered in [d/2, d], and
// failed after the last.
type Sender struct {
	pool        *pgxpool.Pool
	smtp        *SMTP
	templates   *Templates
	log         *slog.Logger
	schedule    []time.Duration
	jitter      func(time.Duration) time.Duration
	now         func() time.Time
	concurrency int
	poll        time.Duration
	lease       time.Duration
	reg         prometheus.Registerer
	m           *metrics
}

// SenderOpt configures a Sender.
type SenderOpt func(*Sender)

// WithSchedule sets the delays between attempts; default DefaultSchedule.
// A message is attempted at most len(delays)+1 times.
func WithSchedule(delays ...time.Duration) SenderOpt { return func(s *Sender) { s.schedule = delays } }

// WithJitter sets how a delay of the schedule is jittered; tests pass the
// identity.
func WithJitter(fn func(time.Duration) time.Duration) SenderOpt {
	return func(s *Sender) { s.jitter = fn }
}

// WithClock sets the clock that decides what is due; default time.Now.
func WithClock(now func() time.Time) SenderOpt { return func(s *Sender) { s.now = now } }

// WithConcurrency sets how many messages are sent at once at most;
// default DefaultConcurrency.
func WithConcurrency(n int) SenderOpt { return func(s *Sender) { s.concurrency = n } }

// WithPollInterval sets how often an idle sender looks for due messages;
// default DefaultPollInterval.
func WithPollInterval(d time.Duration) SenderOpt { return func(s *Sender) { s.poll = d } }

// WithLogger logs to l; default slog.Default().
func WithLogger(l *slog.Logger) SenderOpt { return func(s *Sender) { s.log = l } }

// WithRegisterer registers the sender's metrics (tally_mail_*) with r.
func WithRegisterer(r prometheus.Registerer) SenderOpt { return func(s *Sender) { s.reg = r } }

// NewSender returns a sender of pool's messages through smtp, rendered
// with templates.
func NewSender(pool *pgxpool.Pool, smtp *SMTP, templates *Templates, opts ...SenderOpt) (*Sender, error) {
	s := &Sender{pool: pool, smtp: smtp, templates: templates, log: slog.Default(), schedule: DefaultSchedule,
		jitter: func(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }, now: time.Now,
		concurrency: DefaultConcurrency, poll: DefaultPollInterval}
	for _, o := range opts {
		o(s)
	}
	if s.concurrency < 1 || s.poll <= 0 {
		return nil, errors.New("mail sender: concurrency and poll interval must be positive")
	}
	s.lease = smtp.timeout + 30*time.Second
	m, err := newMetrics(s.reg)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// claimed is a message claimed for an attempt.
type claimed struct {
	id       int64
	key      string
	kind     string
	data     []byte
	attempts int // with this one
	customer *string
	to       Address
	lease    time.Time // its leased_until: what the attempt's record is fenced by
}

// claimSQL leases at most $2 messages due at $1 until $3, the earliest due
// first, with their recipient's address.
const claimSQL = `
WITH picked AS (
	SELECT id, customer_id FROM mail_messages
	WHERE status = 'pending' AND next_attempt_at <= $1
	ORDER BY next_attempt_at, id
	LIMIT $2
	FOR UPDATE SKIP LOCKED
)
UPDATE mail_messages m SET leased_until = $3, next_attempt_at = $3, attempts = m.attempts + 1
FROM picked LEFT JOIN mail_contacts c ON c.customer_id = picked.customer_id
WHERE m.id = picked.id
RETURNING m.id, m.key, m.kind, m.data::text, m.attempts, m.customer_id,
	coalesce(m.to_name, c.name, ''), coalesce(m.to_email, c.email, '')`

func (s *Sender) claim(ctx context.Context, n int) ([]claimed, error) {
	now := s.now()
	lease := now.Add(s.lease).Truncate(time.Microsecond)
	rows, err := s.pool.Query(ctx, claimSQL, now, n, lease)
	if err != nil {
		return nil, fmt.Errorf("claiming mail messages: %w", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := r.Scan(&c.id, &c.key, &c.kind, &c.data, &c.attempts, &c.customer, &c.to.Name, &c.to.Email)
		c.lease = lease
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming mail messages: %w", err)
	}
	return cs, nil
}

// Run sends messages until ctx ends; messages in flight then are released
// to be sent again. It returns nil when ctx ends.
func (s *Sender) Run(ctx context.Context) error {
	return dispatch.Loop[claimed]{Concurrency: s.concurrency, Poll: s.poll, Claim: s.claim, Work: s.attempt, Every: s.gauge,
		OnError: func(err error) { s.log.Warn("mail: claiming messages", "err", err) }}.Run(ctx)
}

// permanent is an attempt's failure that trying again cannot mend.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// attempt sends c once and records what happened.
func (s *Sender) attempt(ctx context.Context, c claimed) {
	start := time.Now()
	err := s.send(ctx, c)
	if err != nil && ctx.Err() != nil {
		// Stopping cut the attempt short: release the message for the next
		// sender, as if it had not been claimed. (One the server took is
		// recorded sent, stopping or not.)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.pool.Exec(rctx, `UPDATE mail_messages SET leased_until = NULL, next_attempt_at = $2,
			attempts = attempts - 1 WHERE id = $1 AND status = 'pending' AND leased_until = $3`, c.id, s.now(), c.lease); err != nil {
			s.log.Warn("mail: releasing a message", "message", c.key, "err", err)
		}
		return
	}
	s.m.duration.Observe(time.Since(start).Seconds())
	outcome, next := "sent", (*time.Time)(nil)
	switch {
	case err == nil:
	case errors.As(err, new(permanent)) || errors.Is(err, ErrRejected) || c.attempts > len(s.schedule):
		outcome = "failed"
		s.log.Warn("mail: a message failed", "message", c.key, "kind", c.kind, "attempts", c.attempts, "err", err)
	default:
		outcome = "deferred"
		t := s.now().Add(s.jitter(s.schedule[c.attempts-1]))
		next = &t
	}
	s.m.messages.WithLabelValues(c.kind, outcome).Inc()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var q string
	var args []any
	switch outcome {
	// Each record is fenced by the attempt's lease: a sender that outlived
	// its lease (paused, its clock behind) while another claimed the
	// message again records nothing.
	case "sent":
		// A message cancelled while it was being sent went out all the same.
		q, args = `UPDATE mail_messages SET status = 'sent', leased_until = NULL, completed_at = $2, last_error = NULL
			WHERE id = $1 AND leased_until = $3`, []any{c.id, s.now(), c.lease}
	case "failed":
		q, args = `UPDATE mail_messages SET status = 'failed', leased_until = NULL, completed_at = $2, last_error = $3
			WHERE id = $1 AND status = 'pending' AND leased_until = $4`, []any{c.id, s.now(), err.Error(), c.lease}
	default:
		q, args = `UPDATE mail_messages SET leased_until = NULL, next_attempt_at = $2, last_error = $3
			WHERE id = $1 AND status = 'pending' AND leased_until = $4`, []any{c.id, *next, err.Error(), c.lease}
	}
	if _, err := s.pool.Exec(rctx, q, args...); err != nil {
		// The lease lapses and the message is sent again.
		s.log.Warn("mail: recording an attempt", "message", c.key, "err", err)
	}
}

// send renders, composes and sends c.
func (s *Sender) send(ctx context.Context, c claimed) error {
	if c.to.Email == "" {
		return fmt.Errorf("no address is known for customer %s yet", deref(c.customer))
	}
	to, err := mail.ParseAddress(c.to.Email)
	if err != nil {
		return permanent{fmt.Errorf("the recipient %q is not an address: %w", c.to.Email, err)}
	}
	to.Name = c.to.Name
	data, err := decodeData(c.data)
	if err != nil {
		return permanent{fmt.Errorf("reading the message's data: %w", err)}
	}
	from := s.smtp.From()
	sender := from.Name
	if sender == "" {
		sender = from.Address
	}
	subject, text, html, err := s.templates.Render(c.kind, View{To: Address{Name: to.Name, Email: to.Address}, From: sender, Data: data})
	if err != nil {
		return permanent{err}
	}
	msg, err := compose(from, *to, subject, text, html, messageID(c.key, from.Address), s.now())
	if err != nil {
		return permanent{err}
	}
	return s.smtp.Send(ctx, to.Address, msg)
}

// decodeData reads a message's data with its whole numbers as int64, not
// float64: templates compare them with literals ({{if eq .Data.n 0}}),
// which text/template refuses between a float and an int.
func decodeData(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var data map[string]any
	if err := d.Decode(&data); err != nil {
		return nil, err
	}
	var walk func(any) any
	walk = func(v any) any {
		switch v := v.(type) {
		case json.Number:
			if n, err := v.Int64(); err == nil {
				return n
			}
			f, _ := v.Float64()
			return f
		case map[string]any:
			for k, e := range v {
				v[k] = walk(e)
			}
		case []any:
			for i, e := range v {
				v[i] = walk(e)
			}
		}
		return v
	}
	walk(data)
	return data, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// messageID is the Message-ID of the message key from the address from:
// the same at every attempt, so that a copy sent twice is known as one.
func messageID(key, from string) string {
	sum := sha256.Sum256([]byte(key))
	domain := "tally.invalid"
	if i := strings.LastIndexByte(from, '@'); i >= 0 && i < len(from)-1 {
		domain = from[i+1:]
	}
	return "<" + hex.EncodeToString(sum[:16]) + "@" + domain + ">"
}

// gauge refreshes the gauge of pending messages.
func (s *Sender) gauge(ctx context.Context) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM mail_messages WHERE status = 'pending'`).Scan(&n); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("mail: counting pending messages", "err", err)
		}
		return
	}
	s.m.pending.Set(float64(n))
}

// metrics are a sender's Prometheus metrics.
type metrics struct {
	messages *prometheus.CounterVec
	duration prometheus.Histogram
	pending  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_mail_messages_total",
			Help: "Attempts to send email, by kind and outcome (sent; deferred: tried again later; failed: given up)."},
			[]string{"kind", "outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tally_mail_send_duration_seconds",
			Help:    "How long attempts to send email took, rendering and the SMTP conversation.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tally_mail_pending_messages",
			Help: "Email messages not yet sent, counted every ten polls."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.messages, m.duration, m.pending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering the mail metrics: %w", err)
		}
	}
	return m, nil
}
