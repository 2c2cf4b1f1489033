package date_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/date"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"2025-01-31", "2024-02-29", "0001-01-01", "9999-12-31"} {
		d, err := date.Parse(s)
		if err != nil || d.String() != s {
			t.Errorf("Parse(%q) = %v, %v; want it back unchanged", s, d, err)
		}
	}
	for _, s := range []string{"", "2025-02-29", "2025-13-01", "2025-1-1", "2025-01-01T00:00:00Z", "20250101", " 2025-01-01", "2025/01/01"} {
		if _, err := date.Parse(s); !errors.Is(err, date.ErrSyntax) {
			t.Errorf("Parse(%q) error %v, want ErrSyntax", s, err)
		}
	}
}

func TestOfUsesUTC(t *testing.T) {
	t.Parallel()
	tokyo := time.FixedZone("JST", 9*3600)
	if d := date.Of(time.Date(2025, 1, 1, 3, 0, 0, 0, tokyo)); d.String() != "2024-12-31" {
		t.Errorf("03:00 in Tokyo on 2025-01-01 is %s UTC, want 2024-12-31", d)
	}
}

func TestArithmeticAndJSON(t *testing.T) {
	t.Parallel()
	a, b := date.New(2024, 2, 28), date.New(2024, 3, 1)
	if b.DaysSince(a) != 2 || !a.Before(b) || b.Before(a) {
		t.Errorf("day arithmetic across 2024-02-29 is wrong")
	}
	var v struct{ D date.Date }
	if err := json.Unmarshal([]byte(`{"D":"2025-03-04"}`), &v); err != nil || v.D != date.New(2025, 3, 4) {
		t.Errorf("unmarshal: %v %v", v.D, err)
	}
	if err := json.Unmarshal([]byte(`{"D":"2025-03-32"}`), &v); err == nil {
		t.Error("unmarshal accepted 2025-03-32")
	}
	out, _ := json.Marshal(v)
	if string(out) != `{"D":"2025-03-04"}` {
		t.Errorf("marshal: %s", out)
	}
}
