package importer

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

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

// run reads the file's rows in batches and writes each: a goroutine reads
// and decodes the next batch while the current one is written.
func (k kind[T]) run(ctx context.Context, j *job, store bool) error {
	rd, err := j.file.reader(k.columns)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *batch[T], 1)
	var readErr error
	go func() {
		defer close(batches)
		readErr = k.read(ctx, rd, j.opts.Meta, batches)
	}()
	var writeErr error
	for b := range batches {
		if writeErr != nil {
			continue // drain, so the reader ends
		}
		if writeErr = k.write(ctx, j, b, store); writeErr != nil {
			cancel()
			continue
		}
		if j.opts.Progress != nil {
			j.opts.Progress(j.rep.Processed, j.rep.Rows)
		}
	}
	if writeErr != nil {
		return writeErr
	}
	return readErr
}

// read sends the file's rows to out in batches until its end or ctx's.
func (k kind[T]) read(ctx context.Context, rd *reader, meta billing.Meta, out chan<- *batch[T]) error {
	for {
		meta.Now = time.Now()
		b := &batch[T]{}
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

// write writes a batch: its records in one statement, then, when the pass
// stores, the import's progress, the batch's row errors and the created
// events, and the commit, in one round trip. A pass that does not store
// writes in j.tx, which it rolls back at its end.
func (k kind[T]) write(ctx context.Context, j *job, b *batch[T], store bool) error {
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
	r := &j.rep
	evs := make([]envelope.Event, 0, len(b.events))
	for i, o := range outs {
		switch {
		case o == billing.Created:
			evs = append(evs, b.events[i])
			r.Created++
		case o == billing.Duplicate:
			r.Duplicates++
		case k.rejected != nil:
			col, code, msg := k.rejected(o)
			b.errs = append(b.errs, RowError{Row: b.lines[i], Column: col, Code: code, Message: msg})
			b.rejected++
		default:
			return fmt.Errorf("writing the %s of row %d: unexpected outcome %d", k.name, b.lines[i], o)
		}
	}
	r.Processed += b.rows
	r.Rejected += b.rejected
	j.reject(b.errs)
	if !store {
		return nil
	}
	var last pgx.Batch
	j.queueProgress(&last)
	if err := outbox.QueueBulk(&last, evs...); err != nil {
		return fmt.Errorf("writing the events of %s: %w", k.name, err)
	}
	if err := tx.Commit(ctx, &last); err != nil {
		return fmt.Errorf("committing %d %s: %w", len(evs), k.name, err)
	}
	if len(evs) > 0 {
		j.im.notify()
	}
	return nil
}
