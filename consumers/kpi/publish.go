package kpi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/date"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
)

// PublishSource is the ce_source of what Publish emits.
const PublishSource = "/tally/scheduler/kpi"

// publishLock is the advisory lock Publish holds for each transaction, so
// that publishers commit one at a time and kpi_values.seq grows in commit
// order: a reader of the changes after a seq misses none.
const publishLock = 7_346_001

// Calculated is the payload of tally.kpi.calculated.v1: a KPI of a period
// took a new value.
type Calculated struct {
	KPI         string          `json:"kpi"`
	Currency    string          `json:"currency"`
	Granularity string          `json:"granularity"`
	Period      string          `json:"period"`
	Start       date.Date       `json:"start"`
	End         date.Date       `json:"end"`
	Value       json.RawMessage `json:"value"`    // an integer, a decimal string or null
	Previous    json.RawMessage `json:"previous"` // the value announced before, null for the first
	Version     int64           `json:"version"`  // 1 for the first value of the KPI and period
}

// PublishReport is what one Publish run did.
type PublishReport struct {
	Days    int // days taken from kpi_dirty
	Changes int // KPI values that changed, each announced
}

// Publish announces, in tally.kpi.calculated.v1 through the outbox, the
// KPI values that changed on the days the group marked since the last run
// (kpi_dirty), and on their months: each KPI of each such day and month is
// computed once a run, however many events touched it, and announced only
// if its value differs from the one announced before (kpi_values, written
// in the same transaction). Days are taken batch at a time (default 200 a
// transaction). The event's key (subject) is currency:period:kpi, its
// ce_sequence the value's version, its id derived from both, so a
// transaction that is repeated announces the same ids.
//
// Receivables, and whether a customer is new, depend on earlier days too:
// a payment or a first order dated in the past changes the later periods'
// values without marking them; they are announced when a later event marks
// them, and are right in Get whenever it is asked.
func Publish(ctx context.Context, pool *pgxpool.Pool, batch int) (PublishReport, error) {
	if batch <= 0 {
		batch = 200
	}
	var rep PublishReport
	for {
		n, changes, err := publishBatch(ctx, pool, batch)
		rep.Days += n
		rep.Changes += changes
		if err != nil {
			return rep, fmt.Errorf("publishing KPIs: %w", err)
		}
		if n < batch {
			return rep, nil
		}
	}
}

type dirtyDay struct {
	currency string
	day      date.Date
}

func publishBatch(ctx context.Context, pool *pgxpool.Pool, batch int) (days, changes int, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", publishLock); err != nil {
		return 0, 0, err
	}
	// Marks of one day may be many; a batch takes every mark of its days.
	rows, err := tx.Query(ctx, `
		WITH days AS (SELECT DISTINCT currency, day FROM (SELECT currency, day FROM kpi_dirty LIMIT $1 * 8) d LIMIT $1)
		DELETE FROM kpi_dirty k USING days WHERE k.currency = days.currency AND k.day = days.day
		RETURNING k.currency, k.day`, batch)
	if err != nil {
		return 0, 0, err
	}
	seen := map[dirtyDay]bool{}
	byCurrency := map[string][]Period{}
	var d dirtyDay
	_, err = pgx.ForEachRow(rows, []any{&d.currency, &d.day}, func() error {
		if seen[d] {
			return nil
		}
		seen[d] = true
		ps := byCurrency[d.currency]
		ps = append(ps, Period{Period: d.day.String(), Start: d.day, End: d.day})
		m := d.day.MonthStart()
		month := Period{Period: m.Time().Format("2006-01"), Start: m, End: nextMonth(m).AddDays(-1)}
		if !slices.ContainsFunc(ps, func(p Period) bool { return p.Period == month.Period }) {
			ps = append(ps, month)
		}
		byCurrency[d.currency] = ps
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if len(seen) == 0 {
		return 0, 0, nil
	}
	var b pgx.Batch
	var evs []envelope.Event
	for _, cur := range slices.Sorted(maps.Keys(byCurrency)) {
		ps := byCurrency[cur]
		if err := compute(ctx, tx, cur, ps); err != nil {
			return 0, 0, err
		}
		known, err := announced(ctx, tx, cur, ps)
		if err != nil {
			return 0, 0, err
		}
		for i := range ps {
			p := &ps[i]
			granularity := Day
			if p.Start != p.End {
				granularity = Month
			}
			values := p.Values()
			for _, k := range slices.Sorted(maps.Keys(values)) {
				raw, err := json.Marshal(values[k])
				if err != nil {
					return 0, 0, err
				}
				was, ok := known[p.Period+"\x00"+k]
				if ok && bytes.Equal(was.value, raw) {
					continue
				}
				if !ok && string(raw) == "null" {
					continue // nothing to say yet
				}
				version := was.version + 1
				subject := cur + ":" + p.Period + ":" + k
				c := Calculated{KPI: k, Currency: cur, Granularity: granularity, Period: p.Period, Start: p.Start, End: p.End,
					Value: raw, Previous: cmpOr(was.value, json.RawMessage("null")), Version: version}
				data, err := json.Marshal(c)
				if err != nil {
					return 0, 0, err
				}
				ev := envelope.Event{ID: envelope.DerivedID(p.Start.Time(), "kpi-publisher", subject, strconv.FormatInt(version, 10)),
					Type: "tally.kpi.calculated.v1", Source: PublishSource, Subject: subject, Time: time.Now().UTC(),
					Sequence: version, CorrelationID: "kpi-publisher", Data: data}
				if err := outbox.Check(&ev); err != nil {
					return 0, 0, fmt.Errorf("announcing %s: %w", subject, err)
				}
				evs = append(evs, ev)
				b.Queue(`INSERT INTO kpi_values (currency, granularity, period, kpi, value, version, seq, updated_at)
					VALUES ($1, $2, $3, $4, $5, $6, nextval('kpi_values_seq'), now())
					ON CONFLICT (currency, granularity, period, kpi) DO UPDATE SET value = excluded.value,
						version = excluded.version, seq = excluded.seq, updated_at = excluded.updated_at`,
					cur, granularity, p.Period, k, raw, version)
			}
		}
	}
	outbox.QueueChecked(&b, evs...)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return 0, 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, 0, err
	}
	return len(seen), len(evs), nil
}

type known struct {
	value   json.RawMessage
	version int64
}

// announced returns the values announced of ps's KPIs in currency, by
// period and KPI (joined by a NUL).
func announced(ctx context.Context, tx pgx.Tx, currency string, ps []Period) (map[string]known, error) {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Period
	}
	rows, err := tx.Query(ctx, `SELECT period, kpi, value, version FROM kpi_values WHERE currency = $1 AND period = ANY($2)`,
		currency, names)
	if err != nil {
		return nil, err
	}
	out := map[string]known{}
	var period, kpi string
	var k known
	_, err = pgx.ForEachRow(rows, []any{&period, &kpi, &k.value, &k.version}, func() error {
		out[period+"\x00"+kpi] = known{value: slices.Clone(k.value), version: k.version}
		return nil
	})
	return out, err
}

func cmpOr(a, b json.RawMessage) json.RawMessage {
	if a != nil {
		return a
	}
	return b
}

// Change is one announced change of a KPI value, as GET /v1/kpis/stream
// sends it.
type Change struct {
	Seq         int64           `json:"seq"` // orders every change; the stream's event id
	Currency    string          `json:"currency"`
	Granularity string          `json:"granularity"`
	Period      string          `json:"period"`
	KPI         string          `json:"kpi"`
	Value       json.RawMessage `json:"value"`
	Version     int64           `json:"version"`
	At          time.Time       `json:"at"`
}

// Changes returns up to limit changes after seq after, oldest first,
// those of currency and granularity only when they are not "".
func Changes(ctx context.Context, q Querier, after int64, currency, granularity string, limit int) ([]Change, error) {
	rows, err := q.Query(ctx, `SELECT seq, currency, granularity, period, kpi, value, version, updated_at FROM kpi_values
		WHERE seq > $1 AND ($2 = '' OR currency = $2) AND ($3 = '' OR granularity = $3) ORDER BY seq LIMIT $4`,
		after, currency, granularity, limit)
	if err != nil {
		return nil, fmt.Errorf("reading KPI changes: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Change, error) {
		var c Change
		err := r.Scan(&c.Seq, &c.Currency, &c.Granularity, &c.Period, &c.KPI, &c.Value, &c.Version, &c.At)
		return c, err
	})
}

// LastChange returns the seq of the latest change, 0 for none.
func LastChange(ctx context.Context, q Querier) (int64, error) {
	rows, err := q.Query(ctx, `SELECT coalesce(max(seq), 0) FROM kpi_values`)
	if err != nil {
		return 0, fmt.Errorf("reading KPI changes: %w", err)
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowTo[int64])
}
