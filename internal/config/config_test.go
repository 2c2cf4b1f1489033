package config_test

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsMatchTheIssue(t *testing.T) {
	t.Parallel()
	c, _, err := config.Load("t", nil, env(nil), io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:8080" || c.DevKafkaAddr != "127.0.0.1:9092" || c.DataDir != ".tally" {
		t.Errorf("defaults http %q dev kafka %q data dir %q", c.HTTPAddr, c.DevKafkaAddr, c.DataDir)
	}
	if c.EventRetention != 0 {
		t.Errorf("default retention %s: the audit trail must be kept unless told otherwise", c.EventRetention)
	}
}

func TestFlagsOverrideEnvironmentOverridesDefaults(t *testing.T) {
	t.Parallel()
	e := env(map[string]string{
		"TALLY_HTTP_ADDR":       "0.0.0.0:9000",
		"KAFKA_BROKERS":         "a:1, b:2,,",
		"TALLY_EVENT_RETENTION": "720h",
		"TALLY_LOG_LEVEL":       "debug",
	})
	c, rest, err := config.Load("t", []string{"-http-addr", "127.0.0.1:7000", "extra"}, e, io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:7000" {
		t.Errorf("flag did not win over the environment: %q", c.HTTPAddr)
	}
	if strings.Join(c.KafkaBrokers, "|") != "a:1|b:2" {
		t.Errorf("brokers %q, want a:1 and b:2", c.KafkaBrokers)
	}
	if c.EventRetention != 720*time.Hour || c.LogLevel.String() != "DEBUG" {
		t.Errorf("retention %s level %s from the environment", c.EventRetention, c.LogLevel)
	}
	if len(rest) != 1 || rest[0] != "extra" {
		t.Errorf("positional arguments %q", rest)
	}
}

func TestBadValuesNameTheirSetting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, value string }{
		{"DATABASE_URL", "mysql://x"},
		{"KAFKA_BROKERS", "nohost"},
		{"KAFKA_BROKERS", " , "},
		{"TALLY_HTTP_ADDR", "8080"},
		{"TALLY_HTTP_ADDR", "host:99999"},
		{"TALLY_LOG_LEVEL", "loud"},
		{"TALLY_LOG_FORMAT", "xml"},
		{"TALLY_EVENT_RETENTION", "-1h"},
		{"TALLY_EVENT_RETENTION", "forever"},
		{"TALLY_IDEMPOTENCY_TTL", "1s"},
		{"TALLY_MAX_BODY_BYTES", "10"},
		{"TALLY_RELAY_BATCH_SIZE", "0"},
		{"TALLY_RELAY_POLL_INTERVAL", "0s"},
		{"TALLY_SCHEDULER_INTERVAL", "10ms"},
		{"TALLY_KPI_PUBLISH_INTERVAL", "1ms"},
		{"TALLY_INVOICE_NOTICES", "-3,x"},
		{"TALLY_INVOICE_NOTICES", "1,1"},
		{"TALLY_TOPIC_REPLICATION", "0"},
		{"TALLY_SHUTDOWN_TIMEOUT", "1ms"},
		{"TALLY_SMTP_ADDR", "smtp.example.com"},
		{"TALLY_SMTP_FROM", "billing"},
		{"TALLY_SMTP_TLS", "ssl"},
		{"TALLY_SMTP_HELO", "mail.example.com\r\nRCPT TO:<x@evil>"},
		{"TALLY_MAIL_OPERATOR", "ops at example"},
		{"TALLY_DATA_DIR", ""},
	} {
		if tc.value == "" {
			// An empty variable means unset; only the flag can be empty.
			_, _, err := config.Load("t", []string{"-data-dir", ""}, env(nil), io.Discard, nil)
			if err == nil {
				t.Errorf("-data-dir \"\" accepted")
			}
			continue
		}
		_, _, err := config.Load("t", nil, env(map[string]string{tc.env: tc.value}), io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), tc.env) {
			t.Errorf("%s=%q: error %v, want one naming %s", tc.env, tc.value, err, tc.env)
		}
	}
}

func TestUnknownFlagIsAnError(t *testing.T) {
	t.Parallel()
	if _, _, err := config.Load("t", []string{"-nope"}, env(nil), io.Discard, nil); err == nil {
		t.Error("an unknown flag was accepted")
	}
}

// The README is where operators look; every setting must be there.
func TestReadmeListsEverySetting(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range config.Settings() {
		if !strings.Contains(string(b), "`"+s.Env+"`") || !strings.Contains(string(b), "-"+s.Flag) {
			t.Errorf("README.md does not document %s (flag -%s)", s.Env, s.Flag)
		}
	}
}
