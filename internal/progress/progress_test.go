package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestLine(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		done, total int64
		want        string
	}{
		{0, 10, "[------------------------]   0% 0/10"},
		{5000, 10000, "[############------------]  50% 5,000/10,000"},
		{1234567, 1234567, "[########################] 100% 1,234,567/1,234,567"},
		{12, 10, "[########################] 100% 12/10"},
		{42, 0, "42"},
	} {
		if got := Line(c.done, c.total); got != c.want {
			t.Errorf("Line(%d, %d) = %q, want %q", c.done, c.total, got, c.want)
		}
	}
}

// Off a terminal the bar writes whole lines, not redraws, and few of them.
func TestBarOffATerminal(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	b := New(&buf, "rebuilding", "events")
	for i := int64(0); i <= 1000; i++ {
		b.Update(i, 1000)
	}
	b.Done(1000, 1000)
	out := buf.String()
	if strings.Contains(out, "\r") {
		t.Errorf("redraws off a terminal: %q", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "rebuilding [########################] 100% 1,000/1,000 events") {
		t.Errorf("wrote %q, want the first update and the final line", lines)
	}
}
