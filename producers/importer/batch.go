package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/producers/billing"
)

// batch is up to batchRows rows of a file, as read: the records of the
// rows that decoded, with their lines and created events, and the errors
// of those that did not.
type batch[T any] struct {
	rows     int64 // data rows read
	records  []T
	lines    []int64
	events   []envelope.Event
	errs     []RowError
	rejected int64 // rows with errors
}

func (k kind[T]) columnList() []column { return k.columns }
func (k kind[T]) exampleRow() []string { return k.example }

// run reads the file's rows in batches and writes them: a goroutine reads
// and decodes batches while the writers write them, each batch in a
// transaction of its own when the pass stores (so writers overlap: one
// inserts its records while another holds the outbox's shards to append
// its events), or else one after the other in j.tx.
func (k kind[T]) run(ctx context.Context, j *job, store bool) error {
	rd, err := j.file.reader(k.columns)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 1
	if store {
		n = writers
	}
	batches := make(chan *batch[T], n)
	var readErr error
	go func() {
		defer close(batches)
		readErr = k.read(ctx, rd, j.opts.Meta, batches)
	}()
	var (
		wg       sync.WaitGroup
		once     sync.Once
		writeErr error
	)
	for range n {
		wg.Go(func() {
			for b := range batches {
				if ctx.Err() != nil {
					continue // drain, so that the reader ends
				}
				if err := k.write(ctx, j, b, store); err != nil {
					once.Do(func() { writeErr = err; cancel() })
				}
			}
		})
	}
	wg.Wait()
	if writeErr != nil {
		return writeErr
	}
	return readErr
}

// read sends the file's rows to out in batches until its end or ctx's.
func (k kind[T]) read(ctx context.Context, rd *reader, meta billing.Meta, out chan<- *batch[T]) error {
	for {
		meta.Now = time.Now()
		b := &batch[T]{records: make([]T, 0, batchRows), lines: make([]int64, 0, batchRows),
			events: make([]envelope.Event, 0, batchRows)}
		for b.rows < batchRows {
			vals, width, err := rd.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			b.rows++
			d := decoder{row: int64(rd.line)}
			if width != rd.width {
				d.fail("", CodeFieldCount, fmt.Sprintf("the row has %d fields, the header %d", width, rd.width))
			} else if r := k.decode(&d, meta, vals); len(d.errs) == 0 {
				ev, err := k.event(meta, r)
				if err != nil {
					return err
				}
				b.records, b.lines, b.events = append(b.records, r), append(b.lines, d.row), append(b.events, ev)
			}
			if len(d.errs) > 0 {
				b.errs = append(b.errs, d.errs...)
				b.rejected++
			}
		}
		if b.rows == 0 {
			return nil
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.rows < batchRows {
			return nil
		}
	}
}

// write writes a batch, retrying it should its transaction deadlock (two
// writers inserting the same external_ids in opposite orders).
func (k kind[T]) write(ctx context.Context, j *job, b *batch[T], store bool) error {
	for attempt := 1; ; attempt++ {
		err := k.writeOnce(ctx, j, b, store)
		var pe *pgconn.PgError
		if !store || attempt == 3 || !errors.As(err, &pe) || pe.Code != "40P01" {
			return err
		}
	}
}

// writeOnce writes a batch: its records in one statement, then, when the
// pass stores, the batch's row errors, the import's progress and the
// created events, and the commit, in one round trip. A pass that does not
// store writes in j.tx, which it rolls back at its end.
func (k kind[T]) writeOnce(ctx context.Context, j *job, b *batch[T], store bool) error {
	tx := j.tx
	if store {
		var err error
		if tx, err = postgres.Begin(ctx, j.im.pool); err != nil {
			return err
		}
		defer tx.Rollback(ctx)
	}
	outs, err := k.insert(ctx, tx, b.records)
	if err != nil {
		return fmt.Errorf("writing %d %s: %w", len(b.records), k.name, err)
	}
	t := tally{rows: b.rows, rejected: b.rejected}
	errs := slices.Clip(b.errs) // a retry starts again from the errors of the reading
	evs := make([]envelope.Event, 0, len(b.events))
	for i, o := range outs {
		switch re, rejected := k.rejects[o]; {
		case o == billing.Created:
			evs = append(evs, b.events[i])
			t.created++
		case o == billing.Duplicate:
			t.duplicates++
		case rejected:
			re.Row = b.lines[i]
			errs = append(errs, re)
			t.rejected++
		default:
			return fmt.Errorf("writing the %s of row %d: unexpected outcome %d", k.name, b.lines[i], o)
		}
	}
	j.reserve(&t, errs)
	if !store {
		j.add(&t, false)
		return nil
	}
	var last pgx.Batch
	j.queueProgress(&last, &t)
	if err := outbox.Queue(&last, evs...); err != nil {
		return fmt.Errorf("writing the events of %s: %w", k.name, err)
	}
	if err := tx.Commit(ctx, &last); err != nil {
		return fmt.Errorf("committing %d %s: %w", len(evs), k.name, reaped(err))
	}
	j.add(&t, true)
	if len(evs) > 0 {
		j.im.notify()
	}
	return nil
}
