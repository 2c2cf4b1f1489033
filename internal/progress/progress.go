// Package progress draws the progress of long operator commands (a
// rebuild, an import) on a terminal: one line redrawn in place, or, when the
// output is not a terminal (a log file, CI), a line every few seconds.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Bar reports done out of total units of work. It is not safe for
// concurrent use.
type Bar struct {
	w       io.Writer
	label   string
	unit    string
	tty     bool
	start   time.Time
	last    time.Time
	started bool
}

// New returns a bar that writes to w (nil: nowhere), labelled, counting
// units ("events", "rows").
func New(w io.Writer, label, unit string) *Bar {
	if w == nil {
		w = io.Discard
	}
	b := &Bar{w: w, label: label, unit: unit, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			b.tty = true
		}
	}
	return b
}

// Update shows done of total (total 0: unknown), at most every 100ms on a
// terminal and every 5s elsewhere.
func (b *Bar) Update(done, total int64) {
	now := time.Now()
	every := 5 * time.Second
	if b.tty {
		every = 100 * time.Millisecond
	}
	if b.started && now.Sub(b.last) < every {
		return
	}
	b.started, b.last = true, now
	b.draw(done, total, now)
}

// Done shows the final figures and ends the line.
func (b *Bar) Done(done, total int64) {
	b.draw(done, total, time.Now())
	if b.tty {
		fmt.Fprintln(b.w)
	}
}

func (b *Bar) draw(done, total int64, now time.Time) {
	elapsed := now.Sub(b.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	line := fmt.Sprintf("%s %s %s", b.label, Line(done, total), b.unit)
	if rate > 0 {
		line += fmt.Sprintf(", %s/s", thousands(int64(rate)))
		if total > done {
			line += fmt.Sprintf(", %s left", (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second))
		}
	}
	if b.tty {
		fmt.Fprintf(b.w, "\r%s\x1b[K", line)
	} else {
		fmt.Fprintln(b.w, line)
	}
}

// Line renders done of total as "[#####-----]  50% 5,000/10,000".
func Line(done, total int64) string {
	if total <= 0 {
		return thousands(done)
	}
	frac := min(max(float64(done)/float64(total), 0), 1)
	const width = 24
	filled := int(frac * width)
	return fmt.Sprintf("[%s%s] %3.0f%% %s/%s", strings.Repeat("#", filled), strings.Repeat("-", width-filled),
		frac*100, thousands(done), thousands(total))
}

// thousands writes n with comma separators.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
