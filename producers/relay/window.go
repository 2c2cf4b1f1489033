package relay

// window tracks the seqs of one shard handed to the producer, in the order
// produced, until every seq up to them is acknowledged. Kafka acknowledges
// partitions independently, so the acknowledgements of one shard, whose keys
// span partitions, arrive out of order.
type window struct {
	seqs []int64
	done []bool
	head int
}

func (w *window) push(seq int64) {
	if w.head > 0 && w.head == len(w.seqs) {
		w.reset()
	}
	w.seqs = append(w.seqs, seq)
	w.done = append(w.done, false)
}

// ack marks seq acknowledged and returns the last seq of the acknowledged
// prefix it completed, or 0 when the prefix did not move.
func (w *window) ack(seq int64) int64 {
	i := w.find(seq)
	if i < 0 {
		return 0
	}
	w.done[i] = true
	var last int64
	for w.head < len(w.seqs) && w.done[w.head] {
		last = w.seqs[w.head]
		w.head++
	}
	if w.head > 1024 && w.head*2 > len(w.seqs) {
		n := copy(w.seqs, w.seqs[w.head:])
		copy(w.done, w.done[w.head:])
		w.seqs, w.done, w.head = w.seqs[:n], w.done[:n], 0
	}
	return last
}

// find returns the index of seq among the unacknowledged seqs, or -1.
func (w *window) find(seq int64) int {
	lo, hi := w.head, len(w.seqs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if w.seqs[m] < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(w.seqs) && w.seqs[lo] == seq {
		return lo
	}
	return -1
}

func (w *window) reset() {
	w.seqs, w.done, w.head = w.seqs[:0], w.done[:0], 0
}
