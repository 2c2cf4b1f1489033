package consumer_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/testenv"
)

// tally is the batch state of TestBatchStateIsLoadedAndSavedOnceABatch's
// group: per key, its last name and how many events it applied.
type tally struct {
	byKey   map[string]*keyTally
	changed []string
}

type keyTally struct {
	name    string
	applied int
}

// The batch state is loaded once a batch, shared by the batch's events of
// a key, and saved once a batch; a batch run again after a failed record
// starts from the state as saved, not as the failed attempt left it.
func TestBatchStateIsLoadedAndSavedOnceABatch(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Pool(t)
	seeds := cluster(t)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE names (key text PRIMARY KEY, name text NOT NULL,
		applied int NOT NULL, saves int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	g := consumer.NewGroup("test", topic).BatchState(
		func(ctx context.Context, tx consumer.Tx, keys []string) (any, error) {
			rows, err := tx.Query(ctx, `SELECT key, name, applied FROM names WHERE key = ANY($1)`, keys)
			if err != nil {
				return nil, err
			}
			s := &tally{byKey: map[string]*keyTally{}}
			var k string
			var kt keyTally
			_, err = pgx.ForEachRow(rows, []any{&k, &kt.name, &kt.applied}, func() error {
				c := kt
				s.byKey[k] = &c
				return nil
			})
			return s, err
		},
		func(ctx context.Context, tx consumer.Tx, state any) error {
			s := state.(*tally)
			for _, k := range s.changed {
				kt := s.byKey[k]
				tx.Queue(`INSERT INTO names (key, name, applied, saves) VALUES ($1, $2, $3, 1)
					ON CONFLICT (key) DO UPDATE SET name = excluded.name, applied = excluded.applied, saves = names.saves + 1`,
					k, kt.name, kt.applied)
			}
			return nil
		})
	apply := func(ctx context.Context, tx consumer.Tx, e consumer.Event[customer]) error {
		if e.Payload.Name == "poison" {
			return consumer.Permanent(fmt.Errorf("the name is poison"))
		}
		s := e.BatchState().(*tally)
		kt := s.byKey[e.Subject]
		if kt == nil {
			kt = &keyTally{}
			s.byKey[e.Subject] = kt
		}
		if !slices.Contains(s.changed, e.Subject) {
			s.changed = append(s.changed, e.Subject)
		}
		kt.name = e.Payload.Name
		kt.applied++
		return nil
	}
	consumer.Handle(g, "tally.customer.created.v1", apply)
	consumer.Handle(g, "tally.customer.updated.v1", apply)

	// Each key's ten versions one after the other, so that a batch of 50
	// holds all of a key's, or its versions straddle two batches. k005's
	// fifth is poison: it and what follows it of k005 are parked.
	var recs []*kgo.Record
	for _, k := range keys(20) {
		for v := int64(1); v <= 10; v++ {
			name := fmt.Sprintf("n%d", v)
			if k == "k005" && v == 5 {
				name = "poison"
			}
			e := event(k, v, name)
			recs = append(recs, e.Record(topic))
		}
	}
	produce(t, testenv.Client(t, seeds), recs...)
	startMember(t, pool, g, seeds, consumer.WithBatchSize(50))
	waitFor(t, 30*time.Second, "every record applied or parked", func() bool {
		return count(t, pool, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = 'test' AND topic = '`+topic+`' AND next_offset > 0`) == len(recs)
	})
	rows, err := pool.Query(context.Background(), `SELECT key, name, applied, saves FROM names ORDER BY key`)
	if err != nil {
		t.Fatal(err)
	}
	var k, name string
	var n, saves int
	seen := 0
	if _, err := pgx.ForEachRow(rows, []any{&k, &name, &n, &saves}, func() error {
		seen++
		want, wantName := 10, "n10"
		if k == "k005" {
			want, wantName = 4, "n4"
		}
		if n != want || name != wantName {
			t.Errorf("%s: applied %d, name %s; want %d, %s", k, n, name, want, wantName)
		}
		if saves < 1 || saves > 2 {
			t.Errorf("%s saved %d times; its ten events are in one batch or two", k, saves)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if seen != 20 {
		t.Errorf("%d keys saved, want 20", seen)
	}
}
