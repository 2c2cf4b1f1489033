package consumer

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Records before the position, or repeated, come from an earlier fetch of
// the partition; the worker keeps only what follows its position.
func TestEnqueueKeepsOnlyWhatFollowsThePosition(t *testing.T) {
	t.Parallel()
	w := newWorker(&Runner{}, "t", 0, 0, 1, 10)
	recs := func(offsets ...int64) []*kgo.Record {
		var rs []*kgo.Record
		for _, o := range offsets {
			rs = append(rs, &kgo.Record{Offset: o})
		}
		return rs
	}
	w.enqueue(recs(5, 9, 10, 11))
	w.enqueue(recs(11, 12, 14))
	var got []int64
	for _, q := range w.queue {
		got = append(got, q.rec.Offset)
	}
	want := []int64{10, 11, 12, 14}
	if len(got) != len(want) {
		t.Fatalf("queued %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("queued %v, want %v", got, want)
		}
	}
	fresh := newWorker(&Runner{}, "t", 0, 0, 1, -1)
	fresh.enqueue(recs(0, 1))
	if len(fresh.queue) != 2 {
		t.Errorf("a partition never applied took %d of 2 records", len(fresh.queue))
	}
}
