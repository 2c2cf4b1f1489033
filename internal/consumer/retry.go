package consumer

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/internal/postgres"
)

// applyRetry applies a batch of a retry tier in one transaction. Each
// record of the tier wakes the parked record it names, if the record is
// still parked at the version it names (else the wake-up is stale: a
// duplicate, or overtaken by an operator). A woken record that now succeeds
// leaves the table, and the records waiting behind it follow, in order, in
// the same transaction (up to a batch of them; a further one is woken
// through the first tier at once). One that fails again goes to the next
// tier or the dead-letter topic, and the records behind it keep waiting.
func (w *worker) applyRetry(batch []queued, failed map[origin]failure, strict bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.r.drain)
	defer cancel()
	g := w.r.g

	type keyRef struct {
		topic string
		key   []byte
	}
	var wakes []wakeup
	var locks []keyRef
	for _, q := range batch {
		if q.wakeErr != nil {
			w.r.log.Warn("passing over a record of a retry tier that names no parked record", "topic", w.topic,
				"partition", w.partition, "offset", q.rec.Offset, "err", q.wakeErr)
			continue
		}
		wakes = append(wakes, q.wake)
		if len(q.rec.Key) > 0 {
			locks = append(locks, keyRef{q.wake.orig.topic, q.rec.Key})
		}
	}
	// Keys are locked in one order everywhere, so that two workers (or an
	// operator) locking several cannot deadlock.
	slices.SortFunc(locks, func(a, b keyRef) int {
		if c := strings.Compare(a.topic, b.topic); c != 0 {
			return c
		}
		return bytes.Compare(a.key, b.key)
	})
	locks = slices.CompactFunc(locks, func(a, b keyRef) bool { return a.topic == b.topic && bytes.Equal(a.key, b.key) })

	tx, err := postgres.Begin(ctx, w.r.pool)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	t := &txn{w: w, ctx: ctx, tx: tx, now: time.Now(), strict: strict}
	t.counts[stale] = len(batch) - len(wakes)

	var heads []*parkedRow
	if len(wakes) > 0 {
		if len(locks) > 0 {
			lt := make([]string, len(locks))
			lk := make([][]byte, len(locks))
			for i, l := range locks {
				lt[i], lk[i] = l.topic, l.key
			}
			if _, err := tx.Exec(ctx, `SELECT 1 FROM consumer_parked_keys
				WHERE group_id = $1 AND (topic, key) IN (SELECT * FROM unnest($2::text[], $3::bytea[]))
				ORDER BY topic, key FOR UPDATE`, g.name, lt, lk); err != nil {
				return err
			}
		}
		if heads, err = w.loadHeads(ctx, tx, wakes); err != nil {
			return err
		}
		t.counts[stale] += len(wakes) - len(heads)
	}

	// The records to apply: each head, then the records waiting behind it.
	var items []item
	more := map[string]*parkedRow{} // the next record behind a key, beyond this batch
	var keys []*parkedRow           // the heads that hold a key, in order
	followers, err := w.loadFollowers(ctx, tx, heads)
	if err != nil {
		return err
	}
	for i, h := range heads {
		items = append(items, w.rowItem(h))
		if !h.ordered || len(h.key) == 0 {
			continue
		}
		k := keyOf(h.orig.topic, h.key)
		keys = append(keys, h)
		fs := followers[i]
		if len(fs) > w.r.batch {
			more[k] = fs[w.r.batch]
			fs = fs[:w.r.batch]
		}
		for _, f := range fs {
			items = append(items, w.rowItem(f))
		}
	}
	hold := func(it *item) string {
		if !it.row.ordered || len(it.row.key) == 0 {
			return ""
		}
		return keyOf(it.orig.topic, it.row.key)
	}

	fresh := map[uuid.UUID]bool{}
	if ids, _ := marks(items, failed, hold); len(ids) > 0 {
		rows, err := tx.Query(ctx, `INSERT INTO consumer_applied (group_id, event_id)
			SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id`, g.name, ids)
		if err != nil {
			return err
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		for _, id := range got {
			fresh[id] = true
		}
	}

	if err := t.loadState(items); err != nil {
		return err
	}
	held := map[string]bool{}
	for i := range items {
		it := &items[i]
		k := hold(it)
		f, isFailed := failed[it.orig]
		switch {
		case k != "" && held[k]:
			continue // it keeps waiting
		case it.ignored(failed):
			t.resolve(it)
			t.counts[ignored]++
			continue
		case it.bad != nil:
			t.parkAgain(it, failure{permanent, errorText(it.bad.Error())})
		case isFailed:
			t.parkAgain(it, f)
		case !fresh[it.ev.ID]:
			t.resolve(it)
			t.counts[duplicate]++
			continue
		default:
			delete(fresh, it.ev.ID)
			if err := t.call(it); err != nil {
				return err
			}
			t.resolve(it)
			t.counts[applied]++
			t.applied = append(t.applied, it)
			continue
		}
		if k != "" {
			held[k] = true
		}
		if err := t.flush(it); err != nil {
			return err
		}
	}
	// A key whose records were all applied is released, or its next
	// record woken.
	for _, h := range keys {
		k := keyOf(h.orig.topic, h.key)
		switch {
		case held[k]:
		case more[k] != nil:
			// Not a retry: no failure headers, and not counted as one.
			t.forwards = append(t.forwards, wake(tx.Queue, g.name, more[k], t.now))
		default:
			tx.Queue(releaseKeySQL, g.name, h.orig.topic, h.key)
		}
	}
	return t.commit(batch[len(batch)-1].rec.Offset)
}

// loadHeads locks and returns the parked records wakes name that are
// still parked at the version named, in the order of wakes, each once.
func (w *worker) loadHeads(ctx context.Context, tx *postgres.Tx, wakes []wakeup) ([]*parkedRow, error) {
	topics := make([]string, len(wakes))
	parts := make([]int32, len(wakes))
	offs := make([]int64, len(wakes))
	for i, wk := range wakes {
		topics[i], parts[i], offs[i] = wk.orig.topic, wk.orig.partition, wk.orig.offset
	}
	rows, err := tx.Query(ctx, `SELECT `+parkedColumns("p.")+` FROM consumer_parked p
		WHERE p.group_id = $1 AND (p.topic, p.partition, p."offset") IN (SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[]))
		FOR UPDATE`, w.r.g.name, topics, parts, offs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byOrigin := map[origin]*parkedRow{}
	for rows.Next() {
		p, err := scanParked(rows)
		if err != nil {
			return nil, err
		}
		byOrigin[p.orig] = p
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var heads []*parkedRow
	for _, wk := range wakes {
		p := byOrigin[wk.orig]
		if p == nil || p.state != "retrying" || p.version != wk.version {
			continue
		}
		heads = append(heads, p)
		delete(byOrigin, wk.orig) // a duplicate wake-up later in the batch is stale
	}
	return heads, nil
}

// loadFollowers returns, for each head that holds its key, the records
// waiting behind it, in order, at most a batch and one of them.
func (w *worker) loadFollowers(ctx context.Context, tx *postgres.Tx, heads []*parkedRow) ([][]*parkedRow, error) {
	out := make([][]*parkedRow, len(heads))
	var topics []string
	var keys [][]byte
	var idx []int32
	for i, h := range heads {
		if h.ordered && len(h.key) > 0 {
			topics = append(topics, h.orig.topic)
			keys = append(keys, h.key)
			idx = append(idx, int32(i))
		}
	}
	if len(idx) == 0 {
		return out, nil
	}
	rows, err := tx.Query(ctx, `SELECT h.i, `+parkedColumns("f.")+`
		FROM unnest($2::text[], $3::bytea[], $4::int[]) AS h(topic, key, i)
		CROSS JOIN LATERAL (
			SELECT * FROM consumer_parked p
			WHERE p.group_id = $1 AND p.topic = h.topic AND p.key = h.key AND p.ordered AND p.state = 'waiting'
			ORDER BY p.id LIMIT $5
		) f
		ORDER BY h.i, f.id`, w.r.g.name, topics, keys, idx, w.r.batch+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var i int32
		p, err := scanParked(rows, &i)
		if err != nil {
			return nil, err
		}
		out[i] = append(out[i], p)
	}
	return out, rows.Err()
}

// rowItem prepares a parked record for the retry path.
func (w *worker) rowItem(p *parkedRow) item {
	it := w.r.g.prepare(p.record(), p.orig)
	it.row = p
	it.at = time.Now()
	return it
}

// parkAgain records another failure of a parked record (a head, or a
// record that was waiting behind one) and forwards it to its next tier or
// the dead-letter topic.
func (t *txn) parkAgain(it *item, f failure) {
	r, p := t.w.r, it.row
	attempts, version := p.attempts+1, p.version+1
	state, tier := r.disposition(f, attempts)
	notBefore := t.retryAt(tier)
	first := t.now
	if p.firstFailed != nil {
		first = *p.firstFailed
	}
	t.tx.Queue(`UPDATE consumer_parked SET state = $2, tier = $3, version = $4, attempts = $5, not_before = $6,
			error_class = $7, error = $8, first_failed_at = $9, last_failed_at = $10, event_id = coalesce(event_id, $11),
			updated_at = now()
		WHERE id = $1`, p.id, state, tier, version, attempts, notBefore, f.class.String(), f.err, first, t.now, eventID(it))
	t.forward(forwardOf(r.g.name, it.rec, it.orig, tier, version, attempts, first, t.now, &f, derefTime(notBefore)), tier)
}

// resolve removes a parked record that was applied (or needed no
// applying).
func (t *txn) resolve(it *item) {
	t.tx.Queue(`DELETE FROM consumer_parked WHERE id = $1`, it.row.id)
}
