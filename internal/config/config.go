// Package config holds every setting of every Tally component. Each setting is
// read from an environment variable and may be overridden by the flag of the
// same meaning; flags win over the environment, the environment wins over the
// default. The README lists them all (a test keeps it so).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	netmail "net/mail"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tally-dev/tally/internal/mail"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/topics"
)

// Config is the configuration of one tally process. The zero value is not
// useful; use Default or Load.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string (pgx syntax, so pool
	// settings such as pool_max_conns go in its query).
	DatabaseURL string
	// KafkaBrokers are the seed brokers. tally dev ignores it and talks to
	// its embedded broker.
	KafkaBrokers []string
	// HTTPAddr is where the API (for `tally api`) and the operational
	// endpoints /metrics, /livez and /readyz (for every component) listen.
	HTTPAddr string
	// DevKafkaAddr is where tally dev serves its embedded Kafka broker.
	DevKafkaAddr string
	// DataDir is where tally dev keeps the embedded broker's log.
	DataDir string

	LogLevel  slog.Level
	LogFormat string // "text" or "json"

	// EventRetention is how long published events stay in the outbox table,
	// which is also the audit trail. Zero keeps them forever.
	EventRetention time.Duration
	// IdempotencyTTL is how long an Idempotency-Key and its stored response
	// are kept.
	IdempotencyTTL time.Duration
	// MaxBodyBytes bounds the size of an HTTP request body.
	MaxBodyBytes int64

	// RelayBatchSize is the most events the relay reads per shard per query.
	RelayBatchSize int
	// RelayPollInterval is the relay's fallback poll when no notification
	// arrives; notifications, not this, keep latency low.
	RelayPollInterval time.Duration

	// SchedulerInterval is how often the scheduler runs each time-driven
	// job (the daily revenue recognition). A day's events are due from its
	// first run after midnight UTC.
	SchedulerInterval time.Duration
	// InvoiceNotices is when the scheduler sends open invoices' reminders
	// and overdue notices, in days from the due date.
	InvoiceNotices billing.NoticeSchedule
	// KPIPublishInterval is how often the scheduler announces the KPI
	// values that changed: the window a burst of events is coalesced in.
	KPIPublishInterval time.Duration

	// RetryDelays are the delays of a consumer group's retry tiers, tier 1
	// first; their number is the number of tiers, which tally topics apply
	// creates and consumers use.
	RetryDelays []time.Duration

	// TopicReplication is the replication factor tally topics apply asks
	// for; -1 takes the broker's default.
	TopicReplication int

	// WebhookAllow are the addresses, CIDR prefixes and host names webhook
	// endpoints may have although they are internal (loopback, private,
	// link-local...), which are refused otherwise: for tests and
	// on-premise receivers.
	WebhookAllow []string
	// WebhookTimeout bounds each webhook delivery attempt.
	WebhookTimeout time.Duration

	// SMTPAddr is the SMTP server email goes through (host:port); empty
	// sends no email, and the notify group queues none.
	SMTPAddr string
	// SMTPFrom is the sender of every message, with or without a display
	// name.
	SMTPFrom string
	// SMTPUsername and SMTPPassword, if set, authenticate with AUTH PLAIN.
	SMTPUsername, SMTPPassword string
	// SMTPTLS is the TLS mode: opportunistic, starttls, tls or none (see
	// internal/mail).
	SMTPTLS string
	// SMTPHelo is the name given in EHLO; empty takes the host's name.
	SMTPHelo string
	// MailTemplates is a directory whose KIND.txt and KIND.html replace the
	// built-in templates of that kind; empty keeps them all.
	MailTemplates string
	// NotifyRetention is how long webhook deliveries (with their attempts)
	// and email messages are kept after they ended; zero keeps them.
	NotifyRetention time.Duration
	// MailOperator is who is told, by email, that a webhook endpoint was
	// disabled; empty tells no one (the log and the alert still do).
	MailOperator string

	// ShutdownTimeout bounds a graceful stop after SIGTERM or SIGINT.
	ShutdownTimeout time.Duration
}

// Default returns the defaults, the values used when neither the environment
// nor a flag says otherwise.
func Default() Config {
	return Config{
		DatabaseURL:        "postgres://postgres@127.0.0.1:5432/tally?sslmode=disable",
		KafkaBrokers:       []string{"127.0.0.1:9092"},
		HTTPAddr:           "127.0.0.1:8080",
		DevKafkaAddr:       "127.0.0.1:9092",
		DataDir:            ".tally",
		LogLevel:           slog.LevelInfo,
		LogFormat:          "text",
		EventRetention:     0,
		IdempotencyTTL:     24 * time.Hour,
		MaxBodyBytes:       1 << 20,
		RelayBatchSize:     1000,
		RelayPollInterval:  time.Second,
		SchedulerInterval:  30 * time.Second,
		KPIPublishInterval: time.Second,
		InvoiceNotices:     slices.Clone(billing.DefaultNoticeSchedule),
		RetryDelays:        slices.Clone(topics.RetryDelays),
		TopicReplication:   -1,
		WebhookTimeout:     10 * time.Second,
		SMTPFrom:           "Tally <tally@localhost>",
		SMTPTLS:            mail.TLSOpportunistic,
		NotifyRetention:    90 * 24 * time.Hour,
		ShutdownTimeout:    20 * time.Second,
	}
}

// Setting describes one configuration knob: its environment variable, its
// flag and how it is parsed into a Config.
type Setting struct {
	Env   string
	Flag  string
	Usage string
	get   func(*Config) string
	set   func(*Config, string) error
}

// Settings lists every setting, in the order the README documents them.
func Settings() []Setting { return settings }

var settings = []Setting{
	{"DATABASE_URL", "database-url", "PostgreSQL connection string",
		func(c *Config) string { return c.DatabaseURL },
		func(c *Config, v string) error {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
				return errors.New("want a postgres:// URL")
			}
			c.DatabaseURL = v
			return nil
		}},
	{"KAFKA_BROKERS", "kafka-brokers", "comma-separated Kafka seed brokers (host:port)",
		func(c *Config) string { return strings.Join(c.KafkaBrokers, ",") },
		func(c *Config, v string) error {
			var bs []string
			for _, b := range strings.Split(v, ",") {
				b = strings.TrimSpace(b)
				if b == "" {
					continue
				}
				if err := checkAddr(b); err != nil {
					return err
				}
				bs = append(bs, b)
			}
			if len(bs) == 0 {
				return errors.New("want at least one host:port")
			}
			c.KafkaBrokers = bs
			return nil
		}},
	{"TALLY_HTTP_ADDR", "http-addr", "listen address of the API and of /metrics, /livez, /readyz",
		func(c *Config) string { return c.HTTPAddr },
		func(c *Config, v string) error { c.HTTPAddr = v; return checkAddr(v) }},
	{"TALLY_DEV_KAFKA_ADDR", "dev-kafka-addr", "listen address of the embedded Kafka broker of tally dev",
		func(c *Config) string { return c.DevKafkaAddr },
		func(c *Config, v string) error { c.DevKafkaAddr = v; return checkAddr(v) }},
	{"TALLY_DATA_DIR", "data-dir", "data folder of tally dev (the embedded broker's log)",
		func(c *Config) string { return c.DataDir },
		func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.DataDir = v
			return nil
		}},
	{"TALLY_LOG_LEVEL", "log-level", "debug, info, warn or error",
		func(c *Config) string { return strings.ToLower(c.LogLevel.String()) },
		func(c *Config, v string) error { return c.LogLevel.UnmarshalText([]byte(v)) }},
	{"TALLY_LOG_FORMAT", "log-format", "text or json",
		func(c *Config) string { return c.LogFormat },
		func(c *Config, v string) error {
			if v != "text" && v != "json" {
				return errors.New("want text or json")
			}
			c.LogFormat = v
			return nil
		}},
	{"TALLY_EVENT_RETENTION", "event-retention", "how long published events stay in PostgreSQL as the audit trail (0 keeps them forever)",
		func(c *Config) string { return c.EventRetention.String() },
		func(c *Config, v string) error { return parseDuration(v, 0, &c.EventRetention) }},
	{"TALLY_IDEMPOTENCY_TTL", "idempotency-ttl", "how long Idempotency-Key responses are kept",
		func(c *Config) string { return c.IdempotencyTTL.String() },
		func(c *Config, v string) error { return parseDuration(v, time.Minute, &c.IdempotencyTTL) }},
	{"TALLY_MAX_BODY_BYTES", "max-body-bytes", "largest accepted HTTP request body, in bytes",
		func(c *Config) string { return strconv.FormatInt(c.MaxBodyBytes, 10) },
		func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1024 {
				return errors.New("want an integer of at least 1024")
			}
			c.MaxBodyBytes = n
			return nil
		}},
	{"TALLY_RELAY_BATCH_SIZE", "relay-batch-size", "most events the relay reads per shard per query",
		func(c *Config) string { return strconv.Itoa(c.RelayBatchSize) },
		func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100000 {
				return errors.New("want an integer from 1 to 100000")
			}
			c.RelayBatchSize = n
			return nil
		}},
	{"TALLY_RELAY_POLL_INTERVAL", "relay-poll-interval", "relay's fallback poll when no notification arrives",
		func(c *Config) string { return c.RelayPollInterval.String() },
		func(c *Config, v string) error { return parseDuration(v, time.Millisecond, &c.RelayPollInterval) }},
	{"TALLY_SCHEDULER_INTERVAL", "scheduler-interval", "how often the scheduler runs each time-driven job",
		func(c *Config) string { return c.SchedulerInterval.String() },
		func(c *Config, v string) error { return parseDuration(v, time.Second, &c.SchedulerInterval) }},
	{"TALLY_INVOICE_NOTICES", "invoice-notices", "days from the due date on which the scheduler sends an open invoice's reminders (≤ 0) and overdue notices (> 0), comma-separated; none sends none",
		func(c *Config) string { return c.InvoiceNotices.String() },
		func(c *Config, v string) error {
			s, err := billing.ParseNoticeSchedule(v)
			c.InvoiceNotices = s
			return err
		}},
	{"TALLY_KPI_PUBLISH_INTERVAL", "kpi-publish-interval", "how often the scheduler announces the KPI values that changed (tally.kpi.calculated.v1)",
		func(c *Config) string { return c.KPIPublishInterval.String() },
		func(c *Config, v string) error { return parseDuration(v, 100*time.Millisecond, &c.KPIPublishInterval) }},
	{"TALLY_RETRY_DELAYS", "retry-delays", "comma-separated delays of the consumer groups' retry tiers, tier 1 first (their number is the number of tiers)",
		func(c *Config) string {
			ds := make([]string, len(c.RetryDelays))
			for i, d := range c.RetryDelays {
				ds[i] = d.String()
			}
			return strings.Join(ds, ",")
		},
		func(c *Config, v string) error {
			var ds []time.Duration
			for _, f := range strings.Split(v, ",") {
				var d time.Duration
				if err := parseDuration(strings.TrimSpace(f), 100*time.Millisecond, &d); err != nil {
					return fmt.Errorf("retry delay %q: %w", f, err)
				}
				ds = append(ds, d)
			}
			if len(ds) > 10 {
				return errors.New("want at most 10 tiers")
			}
			c.RetryDelays = ds
			return nil
		}},
	{"TALLY_TOPIC_REPLICATION", "topic-replication", "replication factor for tally topics apply (-1: the broker's default)",
		func(c *Config) string { return strconv.Itoa(c.TopicReplication) },
		func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n == 0 || n < -1 || n > 32767 {
				return errors.New("want -1 or a positive integer")
			}
			c.TopicReplication = n
			return nil
		}},
	{"TALLY_WEBHOOK_ALLOW", "webhook-allow", "comma-separated addresses, CIDR prefixes and host names webhook endpoints may reach although internal (loopback, private, link-local, metadata), which are refused otherwise",
		func(c *Config) string { return strings.Join(c.WebhookAllow, ",") },
		func(c *Config, v string) error {
			var as []string
			for _, a := range strings.Split(v, ",") {
				if a = strings.TrimSpace(a); a == "" {
					continue
				}
				if strings.Contains(a, "/") {
					if _, err := netip.ParsePrefix(a); err != nil {
						return err
					}
				}
				as = append(as, a)
			}
			c.WebhookAllow = as
			return nil
		}},
	{"TALLY_WEBHOOK_TIMEOUT", "webhook-timeout", "bound on each webhook delivery attempt (connection, request and response)",
		func(c *Config) string { return c.WebhookTimeout.String() },
		func(c *Config, v string) error { return parseDuration(v, 100*time.Millisecond, &c.WebhookTimeout) }},
	{"TALLY_SMTP_ADDR", "smtp-addr", "SMTP server (host:port) email is sent through; empty sends none",
		func(c *Config) string { return c.SMTPAddr },
		func(c *Config, v string) error {
			if err := checkAddr(v); err != nil {
				return err
			}
			c.SMTPAddr = v
			return nil
		}},
	{"TALLY_SMTP_FROM", "smtp-from", "sender of every email: an address, with or without a display name",
		func(c *Config) string { return c.SMTPFrom },
		func(c *Config, v string) error { return parseAddress(v, &c.SMTPFrom) }},
	{"TALLY_SMTP_USERNAME", "smtp-username", "user for SMTP AUTH PLAIN (only over TLS or to localhost); empty: no AUTH",
		func(c *Config) string { return c.SMTPUsername },
		func(c *Config, v string) error { c.SMTPUsername = v; return nil }},
	{"TALLY_SMTP_PASSWORD", "smtp-password", "password for SMTP AUTH PLAIN",
		func(c *Config) string { return "" },
		func(c *Config, v string) error { c.SMTPPassword = v; return nil }},
	{"TALLY_SMTP_TLS", "smtp-tls", "SMTP TLS mode: opportunistic (STARTTLS when offered), starttls (required), tls (implicit, port 465) or none",
		func(c *Config) string { return c.SMTPTLS },
		func(c *Config, v string) error {
			switch v {
			case mail.TLSOpportunistic, mail.TLSStartTLS, mail.TLSImplicit, mail.TLSNone:
				c.SMTPTLS = v
				return nil
			}
			return fmt.Errorf("want %s, %s, %s or %s", mail.TLSOpportunistic, mail.TLSStartTLS, mail.TLSImplicit, mail.TLSNone)
		}},
	{"TALLY_SMTP_HELO", "smtp-helo", "name given to the SMTP server in EHLO (relays may want a fully qualified domain name); empty: the host's name",
		func(c *Config) string { return c.SMTPHelo },
		func(c *Config, v string) error {
			if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r > '~' }) {
				return errors.New("want a host name: printable ASCII, no space")
			}
			c.SMTPHelo = v
			return nil
		}},
	{"TALLY_MAIL_TEMPLATES", "mail-templates", "directory whose KIND.txt and KIND.html (welcome, receipt, reminder, overdue, endpoint_disabled) replace the built-in email templates",
		func(c *Config) string { return c.MailTemplates },
		func(c *Config, v string) error { c.MailTemplates = v; return nil }},
	{"TALLY_MAIL_OPERATOR", "mail-operator", "address told by email when a webhook endpoint is disabled; empty: no one",
		func(c *Config) string { return c.MailOperator },
		func(c *Config, v string) error { return parseAddress(v, &c.MailOperator) }},
	{"TALLY_NOTIFY_RETENTION", "notify-retention", "how long the scheduler keeps webhook deliveries (and their attempts) and email messages after they ended; 0 keeps them",
		func(c *Config) string { return c.NotifyRetention.String() },
		func(c *Config, v string) error { return parseDuration(v, 0, &c.NotifyRetention) }},
	{"TALLY_SHUTDOWN_TIMEOUT", "shutdown-timeout", "bound on a graceful stop after SIGTERM",
		func(c *Config) string { return c.ShutdownTimeout.String() },
		func(c *Config, v string) error { return parseDuration(v, time.Second, &c.ShutdownTimeout) }},
}

// Load builds the configuration of a subcommand: defaults, then the
// environment (read through getenv), then the flags in args. extra, if not
// nil, registers the subcommand's own flags on the same flag set. It returns
// the remaining positional arguments. Errors name the variable or flag at
// fault.
func Load(name string, args []string, getenv func(string) string, usage io.Writer, extra func(*flag.FlagSet)) (Config, []string, error) {
	c := Default()
	for _, s := range settings {
		if v := getenv(s.Env); v != "" {
			if err := s.set(&c, v); err != nil {
				return c, nil, fmt.Errorf("environment variable %s=%q: %w", s.Env, v, err)
			}
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(usage)
	for _, s := range settings {
		fs.Func(s.Flag, fmt.Sprintf("%s (env %s, default %q)", s.Usage, s.Env, s.get(&c)), func(v string) error {
			return s.set(&c, v)
		})
	}
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return c, nil, err
	}
	return c, fs.Args(), nil
}

// parseAddress sets *dst to v, an email address with or without a display
// name.
func parseAddress(v string, dst *string) error {
	if _, err := netmail.ParseAddress(v); err != nil {
		return fmt.Errorf("want an email address: %w", err)
	}
	*dst = v
	return nil
}

func checkAddr(v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

func parseDuration(v string, min time.Duration, dst *time.Duration) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	if d < min {
		return fmt.Errorf("want at least %s", min)
	}
	*dst = d
	return nil
}
