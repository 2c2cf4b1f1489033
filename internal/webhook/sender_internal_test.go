package webhook

import (
	"strings"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"120":                           2 * time.Minute,
		" 7 ":                           7 * time.Second,
		"0":                             0,
		"-5":                            0,
		"soon":                          0,
		"Sat, 01 Mar 2025 12:00:30 GMT": 30 * time.Second,
		"Sat, 01 Mar 2025 11:00:00 GMT": 0,
		"999999999":                     maxThrottle,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

func TestOutcomes(t *testing.T) {
	for _, c := range []struct {
		r    result
		want outcome
	}{
		{result{status: 200}, outcomeSucceeded},
		{result{status: 299}, outcomeSucceeded},
		{result{status: 301}, outcomeFailed},
		{result{status: 410}, outcomeGone},
		{result{status: 429}, outcomeThrottled},
		{result{status: 503}, outcomeFailed},
		{result{status: 503, wait: time.Second}, outcomeThrottled},
		{result{status: 500, wait: time.Second}, outcomeFailed},
		{result{err: "timeout"}, outcomeFailed},
	} {
		if got := c.r.outcome(); got != c.want {
			t.Errorf("%+v: %s, want %s", c.r, got, c.want)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate(strings.Repeat("é", 600)); len(got) != 1024 || !strings.HasSuffix(got, "é") {
		t.Errorf("cut to %d bytes", len(got))
	}
	if got := truncate("a\xff\xfeb"); got != "a?b" {
		t.Errorf("binary kept as %q", got)
	}
}
