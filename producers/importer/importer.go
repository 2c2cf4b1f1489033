// Package importer loads CSV files of sales, customers and expenses into
// Tally: each row becomes a record and its created event, written through
// the outbox in the transaction that writes the row, as the API writes
// them; the import ends with tally.import.completed.v1 and its report.
//
// An import reads its file twice and holds neither in memory. Check reads
// it once, for its form (a header that matches the type, UTF-8, RFC 4180
// quoting, rows of at most MaxRowBytes), copying it to a temporary file
// unless it is one already: a malformed file is refused whole, before
// anything is written. Import then reads it again, row by row, in batches
// of a few thousand, two written at a time: each batch is validated, its
// records written with one statement, their events appended to the outbox
// with a few more, and the batch committed with the import's progress. So a
// row is written with its event or not at all, however the import ends.
//
// Rows are idempotent by their external_id: a row whose external_id exists
// (imported before, or earlier in the file) is a duplicate and changes
// nothing, so importing a file twice creates nothing the second time. A row
// that fails validation (a bad amount, an unknown customer, a row of the
// wrong width) is rejected and reported with its row, column, code and
// message. In mode partial, the rows that pass are written; in mode
// all_or_nothing, the whole file is first validated as a dry run (inside a
// transaction that is rolled back), and written only if no row fails.
//
// The gotchas. Rows without external_id are not idempotent. A dry run
// writes its rows in a transaction it rolls back, to count duplicates
// exactly; meanwhile a concurrent import of the same external_ids waits for
// it. An all_or_nothing import that validated whole is then written batch
// by batch, like a partial one: should the database fail midway, the rows
// of the batches committed stay (the import is failed, and importing the
// file again completes it).
package importer

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/producers/billing"
)

// Source is the ce_source of the events imports write.
const Source = "/tally/import"

// Import modes.
const (
	Partial      = "partial"        // write the rows that pass, reject the others
	AllOrNothing = "all_or_nothing" // write nothing if any row fails
)

// Import states.
const (
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
)

// MaxReportedErrors bounds the row errors a report lists; ErrorsTotal
// counts them all.
const MaxReportedErrors = 1000

// batchRows is how many rows an import writes per transaction: enough that
// per-statement costs vanish, few enough that a batch holds the outbox
// shards (see outbox) only for a moment.
const batchRows = 2000

// Errors of Check and Import beside *FileError.
var (
	// ErrUnknownType: no such type of file.
	ErrUnknownType = errors.New("importer: unknown type; want sales, customers or expenses")
	// ErrCopy: Check could not copy the file to its temporary file (the
	// disk is full, say); the fault is not the file's.
	ErrCopy = errors.New("importer: copying the file")
)

// runner is a kind of any record type.
type runner interface {
	columnList() []column
	exampleRow() []string
	run(ctx context.Context, j *job, store bool) error
}

var kinds = map[string]runner{"sales": sales, "customers": customers, "expenses": expenses}

// Types are the types of file, sorted.
func Types() []string {
	ts := make([]string, 0, len(kinds))
	for t := range kinds {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

func kindOf(typ string) (runner, error) {
	k, ok := kinds[typ]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	return k, nil
}

// File is a CSV file of one type whose form Check approved, ready to be
// imported (more than once, if need be). Close it when done.
type File struct {
	typ  string
	f    *os.File
	temp bool  // f is Check's copy, removed by Close
	rows int64 // data rows
}

// Rows returns the number of data rows of the file (the header and blank
// rows are not).
func (f *File) Rows() int64 { return f.rows }

// Close closes the file and removes Check's copy of it.
func (f *File) Close() error {
	err := f.f.Close()
	if f.temp {
		err = errors.Join(err, os.Remove(f.f.Name()))
	}
	return err
}

// Check reads r to its end and checks that it is a well-formed CSV file of
// type typ (*FileError otherwise). Unless r is a regular file (which must
// then not change until the import ends), it is copied to a temporary file
// in os.TempDir as it is read: memory stays flat however large the file,
// and disk holds one copy of it.
func Check(r io.Reader, typ string) (*File, error) {
	k, err := kindOf(typ)
	if err != nil {
		return nil, err
	}
	if f, ok := r.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			start, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, fmt.Errorf("checking %s: %w", f.Name(), err)
			}
			rows, err := count(f, k.columnList())
			if err != nil {
				return nil, err
			}
			if _, err := f.Seek(start, io.SeekStart); err != nil {
				return nil, fmt.Errorf("checking %s: %w", f.Name(), err)
			}
			return &File{typ: typ, f: f, rows: rows}, nil
		}
	}
	tmp, err := os.CreateTemp("", "tally-import-*.csv")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCopy, err)
	}
	file := &File{typ: typ, f: tmp, temp: true}
	c := &copier{r: r, w: bufio.NewWriterSize(tmp, 64<<10)}
	rows, err := count(c, k.columnList())
	if c.err != nil {
		err = c.err
	}
	if err == nil {
		if err = c.w.Flush(); err != nil {
			err = fmt.Errorf("%w to %s: %w", ErrCopy, tmp.Name(), err)
		}
	}
	if err != nil {
		file.Close()
		return nil, err
	}
	file.rows = rows
	return file, nil
}

// copier copies what is read from r to w, telling the errors of w (ErrCopy)
// from those of r.
type copier struct {
	r   io.Reader
	w   *bufio.Writer
	err error // the first error of w
}

func (c *copier) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		if _, werr := c.w.Write(p[:n]); werr != nil {
			c.err = fmt.Errorf("%w: %w", ErrCopy, werr)
			return n, c.err
		}
	}
	return n, err
}

// count reads a file through, returning its data rows or why it is
// malformed. It reads r to its end even after the last row.
func count(r io.Reader, cols []column) (int64, error) {
	rd, err := newReader(r, cols)
	if err != nil {
		return 0, err
	}
	n := int64(0)
	for {
		_, _, err := rd.next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		n++
	}
}

// reader opens the file for a pass over its rows.
func (f *File) reader(cols []column) (*reader, error) {
	if _, err := f.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewinding the file: %w", err)
	}
	return newReader(bufio.NewReaderSize(f.f, 64<<10), cols)
}

// Options are an import's settings.
type Options struct {
	Mode     string // Partial (the default when empty) or AllOrNothing
	DryRun   bool   // validate and report, write nothing
	Filename string // the file's name, for the report (see CleanFilename)
	// Meta makes the envelope of the events: their source, correlation
	// and causation ids and trace (Now is ignored: each batch is stamped
	// when it is read).
	Meta billing.Meta
	// Progress, when set, is called after each batch with the rows done
	// and the file's rows, one call at a time.
	Progress func(done, total int64)
}

// CleanFilename makes a name given with a file fit for a report: its base
// name, valid UTF-8 without control characters, at most 255 characters.
func CleanFilename(name string) string {
	name = strings.ToValidUTF8(filepath.Base(strings.ReplaceAll(name, "\\", "/")), "?")
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, name)
	if name == "." || name == "/" {
		return ""
	}
	if r := []rune(name); len(r) > 255 {
		name = string(r[:255])
	}
	return name
}

// Report is what an import did, as Import returns it and Get reads it.
type Report struct {
	ID         string `json:"id,omitempty"` // none for a dry run, which leaves no trace
	Type       string `json:"type"`
	Status     string `json:"status"`
	Mode       string `json:"mode"`
	DryRun     bool   `json:"dry_run"`
	Filename   string `json:"filename,omitempty"`
	Rows       int64  `json:"rows"`      // data rows of the file
	Processed  int64  `json:"processed"` // of which read so far
	Created    int64  `json:"created"`
	Duplicates int64  `json:"duplicates"`
	Rejected   int64  `json:"rejected"` // rows with errors
	// Errors are the first MaxReportedErrors row errors found, in row
	// order; ErrorsTotal counts them all (a row may have several).
	Errors      []RowError `json:"errors"`
	ErrorsTotal int64      `json:"errors_total"`
	Failure     string     `json:"failure,omitempty"` // why a failed import failed
	StartedAt   time.Time  `json:"started_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
}

// Importer imports files into the database of its pool.
type Importer struct {
	pool      *pgxpool.Pool
	notify    func()
	heartbeat time.Duration
}

// Liveness of imports. While its process works on it, a running import's
// record is touched every Heartbeat, by its batches or, between them (a
// slow upload), on its own. ReapStale fails an import untouched for
// StaleAfter: its process died (or lost the database for that long), and
// it would otherwise stay running for ever. A process that comes back to
// an import reaped meanwhile commits nothing more of it (ErrReaped).
const (
	Heartbeat  = 30 * time.Second
	StaleAfter = 5 * time.Minute
)

// ErrReaped: the import was failed by ReapStale while this process still
// worked on it; nothing more of it is written.
var ErrReaped = errors.New("importer: the import was failed as stale (no sign of life for longer than StaleAfter)")

// Opt configures an Importer.
type Opt func(*Importer)

// WithHeartbeat sets how often a running import's record is touched;
// default Heartbeat. Keep it well under the StaleAfter that ReapStale is
// given.
func WithHeartbeat(d time.Duration) Opt { return func(im *Importer) { im.heartbeat = d } }

// writers is how many batches an import writes at once, each on a
// connection of its own.
const writers = 2

// New returns an Importer writing to pool. notify, when set, is called
// after each commit that wrote events, to wake relays (outbox.Notifier).
func New(pool *pgxpool.Pool, notify func(), opts ...Opt) *Importer {
	if notify == nil {
		notify = func() {}
	}
	im := &Importer{pool: pool, notify: notify, heartbeat: Heartbeat}
	for _, o := range opts {
		o(im)
	}
	return im
}

// job is one import under way.
type job struct {
	im   *Importer
	opts Options
	file *File
	tx   *postgres.Tx // the transaction of a pass that does not store

	mu       sync.Mutex // guards what follows, which the writers of a pass share
	rep      Report
	reserved int        // places taken among the MaxReportedErrors kept errors
	unstored []RowError // kept errors of a pass that did not store, for finish to store
}

// tally is what one batch adds to an import.
type tally struct {
	rows, created, duplicates, rejected, errors int64
	kept                                        []RowError // its errors within MaxReportedErrors
	first                                       int        // the place of kept[0] among them
}

// reserve sorts a batch's errors by row and takes their places among the
// kept errors, as far as there are places.
func (j *job) reserve(t *tally, errs []RowError) {
	slices.SortStableFunc(errs, func(a, b RowError) int { return cmp.Compare(a.Row, b.Row) })
	t.errors = int64(len(errs))
	j.mu.Lock()
	defer j.mu.Unlock()
	t.first = j.reserved
	t.kept = errs[:min(len(errs), MaxReportedErrors-j.reserved)]
	j.reserved += len(t.kept)
}

// add adds a batch to the report: once it is committed, or, in a pass
// that does not store, at once (its errors are then finish's to store).
func (j *job) add(t *tally, stored bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r := &j.rep
	r.Processed += t.rows
	r.Created += t.created
	r.Duplicates += t.duplicates
	r.Rejected += t.rejected
	r.ErrorsTotal += t.errors
	r.Errors = append(r.Errors, t.kept...)
	if !stored {
		j.unstored = append(j.unstored, t.kept...)
	}
	if j.opts.Progress != nil {
		j.opts.Progress(r.Processed, r.Rows)
	}
}

// Import imports f and returns its report. Rows the file rejects are in
// the report, not errors; an error says the import could not be carried
// out (the database failed, ctx ended): a dry run then wrote nothing, and
// an import is marked failed (best effort), the batches it committed
// staying.
func (im *Importer) Import(ctx context.Context, f *File, opts Options) (Report, error) {
	k, err := kindOf(f.typ)
	if err != nil {
		return Report{}, err
	}
	if opts.Mode == "" {
		opts.Mode = Partial
	}
	if opts.Mode != Partial && opts.Mode != AllOrNothing {
		return Report{}, fmt.Errorf("importer: unknown mode %q; want %s or %s", opts.Mode, Partial, AllOrNothing)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	j := &job{im: im, opts: opts, file: f, rep: Report{Type: f.typ, Status: StatusRunning, Mode: opts.Mode,
		DryRun: opts.DryRun, Filename: opts.Filename, Rows: f.rows, Errors: []RowError{}, StartedAt: now, UpdatedAt: now}}
	if opts.DryRun {
		if err := j.pass(ctx, k, false); err != nil {
			return Report{}, err
		}
		j.judge()
		return j.finished(), nil
	}
	j.rep.ID = billing.NewID("imp")
	if _, err := im.pool.Exec(ctx, `INSERT INTO imports (id, type, mode, status, filename, rows, started_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, now())`, j.rep.ID, j.rep.Type, j.rep.Mode, j.rep.Status, j.rep.Filename,
		j.rep.Rows, j.rep.StartedAt); err != nil {
		return Report{}, fmt.Errorf("recording the import: %w", err)
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	beating := make(chan struct{})
	go func() { defer close(beating); j.beat(rctx, cancel) }()
	err = j.run(rctx, k)
	cancel(nil)
	<-beating
	if errors.Is(err, ErrReaped) || errors.Is(context.Cause(rctx), ErrReaped) {
		// ReapStale recorded its end, and its completed event.
		return Report{}, fmt.Errorf("import %s: %w", j.rep.ID, ErrReaped)
	}
	if err != nil {
		j.rep.Failure = err.Error()
		// Record the failure even if ctx ended, but not forever.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
		defer cancel()
		err = fmt.Errorf("import %s: %w", j.rep.ID, err)
	}
	rep := j.finished()
	if ferr := j.finish(ctx); ferr != nil {
		return Report{}, errors.Join(err, ferr)
	}
	return rep, err
}

// beat touches the import's record every heartbeat until ctx ends, and
// cancels the import with ErrReaped if it finds it reaped.
func (j *job) beat(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(j.im.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ct, err := j.im.pool.Exec(ctx, `UPDATE imports SET updated_at = now() WHERE id = $1 AND status = 'running'`, j.rep.ID)
		if err == nil && ct.RowsAffected() == 0 {
			cancel(ErrReaped)
			return
		}
		// An error (the database away) is the next beat's to mend: the
		// import stays alive for StaleAfter.
	}
}

// reaped makes the error of a transaction that import_running failed
// (SQLSTATE TL002) ErrReaped.
func reaped(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "TL002" {
		return fmt.Errorf("%w: %v", ErrReaped, pe.Message)
	}
	return err
}

// finishTimeout bounds the recording of an import's failure.
const finishTimeout = 10 * time.Second

// run carries out an import that stores.
func (j *job) run(ctx context.Context, k runner) error {
	if j.opts.Mode == AllOrNothing {
		if err := j.pass(ctx, k, false); err != nil {
			return err
		}
		if j.judge() {
			return nil
		}
		j.rep.Processed, j.rep.Created, j.rep.Duplicates = 0, 0, 0
		j.reserved, j.unstored = 0, nil
	}
	return j.pass(ctx, k, true)
}

// judge fails an all_or_nothing import whose check pass rejected rows: it
// creates nothing. It reports whether it did.
func (j *job) judge() bool {
	if j.opts.Mode != AllOrNothing || j.rep.Rejected == 0 {
		return false
	}
	j.rep.Failure = fmt.Sprintf("%d of the %d rows were rejected, so none was imported (mode %s)",
		j.rep.Rejected, j.rep.Rows, AllOrNothing)
	j.rep.Created = 0
	return true
}

// pass reads the file's rows once. A pass that stores commits each batch;
// one that does not (a dry run, the check of all_or_nothing) writes them in
// one transaction that it rolls back, so its counts are exact.
func (j *job) pass(ctx context.Context, k runner, store bool) error {
	if !store {
		tx, err := postgres.Begin(ctx, j.im.pool)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		j.tx = tx
		defer func() { j.tx = nil }()
	}
	return k.run(ctx, j, store)
}

// finished completes the report of an import that ends now.
func (j *job) finished() Report {
	slices.SortStableFunc(j.rep.Errors, func(a, b RowError) int { return cmp.Compare(a.Row, b.Row) })
	now := time.Now().UTC().Truncate(time.Microsecond)
	j.rep.UpdatedAt, j.rep.FinishedAt = now, &now
	j.rep.Status = StatusCompleted
	if j.rep.Failure != "" {
		j.rep.Status = StatusFailed
	}
	return j.rep
}

// completed is the payload of tally.import.completed.v1.
type completed struct {
	ID         string    `json:"id"`
	Type       string    `json:"type"`
	Status     string    `json:"status"`
	Mode       string    `json:"mode"`
	DryRun     bool      `json:"dry_run"`
	Filename   string    `json:"filename,omitempty"`
	Rows       int64     `json:"rows"`
	Created    int64     `json:"created"`
	Duplicates int64     `json:"duplicates"`
	Rejected   int64     `json:"rejected"`
	Errors     int64     `json:"errors"`
	Failure    string    `json:"failure,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
}

// finish records the end of an import, the errors it has not stored and
// its tally.import.completed.v1, in one transaction.
func (j *job) finish(ctx context.Context) error {
	r := j.rep
	payload, err := json.Marshal(completed{ID: r.ID, Type: r.Type, Status: r.Status, Mode: r.Mode, Filename: r.Filename,
		Rows: r.Rows, Created: r.Created, Duplicates: r.Duplicates, Rejected: r.Rejected, Errors: r.ErrorsTotal,
		Failure: r.Failure, StartedAt: r.StartedAt, FinishedAt: *r.FinishedAt})
	if err != nil {
		return fmt.Errorf("encoding the import's completed event: %w", err)
	}
	m := j.opts.Meta
	ev := envelope.Event{ID: envelope.NewID(), Type: "tally.import.completed.v1", Source: m.Source, Subject: r.ID,
		Time: *r.FinishedAt, Sequence: 1, CorrelationID: m.CorrelationID, CausationID: m.CausationID,
		TraceParent: m.TraceParent, Data: payload}
	tx, err := postgres.Begin(ctx, j.im.pool)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var b pgx.Batch
	b.Queue(`SELECT import_running($1)`, r.ID)
	queueErrors(&b, r.ID, 0, j.unstored)
	b.Queue(`UPDATE imports SET status = $2, failure = $3, processed = $4, created = $5, duplicates = $6,
			rejected = $7, errors = $8, updated_at = $9, finished_at = $9
		WHERE id = $1`,
		r.ID, r.Status, r.Failure, r.Processed, r.Created, r.Duplicates, r.Rejected, r.ErrorsTotal, r.FinishedAt)
	if err := outbox.Queue(&b, ev); err != nil {
		return err
	}
	if err := tx.Commit(ctx, &b); err != nil {
		return fmt.Errorf("recording the end of import %s: %w", r.ID, reaped(err))
	}
	j.im.notify()
	return nil
}

// queueProgress queues the storing of what a batch adds to its import:
// its counts and its kept errors.
func (j *job) queueProgress(b *pgx.Batch, t *tally) {
	b.Queue(`SELECT import_running($1)`, j.rep.ID)
	queueErrors(b, j.rep.ID, t.first, t.kept)
	b.Queue(`UPDATE imports SET processed = processed + $2, created = created + $3, duplicates = duplicates + $4,
			rejected = rejected + $5, errors = errors + $6, updated_at = now()
		WHERE id = $1`, j.rep.ID, t.rows, t.created, t.duplicates, t.rejected, t.errors)
}

// queueErrors queues the storing of errs, the errors of import id from the
// first-th on.
func queueErrors(b *pgx.Batch, id string, first int, errs []RowError) {
	if len(errs) == 0 {
		return
	}
	n, row := make([]int32, len(errs)), make([]int64, len(errs))
	col, code, msg := make([]string, len(errs)), make([]string, len(errs)), make([]string, len(errs))
	for i, e := range errs {
		n[i], row[i], col[i], code[i], msg[i] = int32(first+i), e.Row, e.Column, e.Code, e.Message
	}
	b.Queue(`INSERT INTO import_errors (import_id, n, row, "column", code, message)
		SELECT $1, * FROM unnest($2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[])`,
		id, n, row, col, code, msg)
}

// Get reads the report of import id; ErrNotFound (billing's) if there is
// none. Its errors are the first MaxReportedErrors.
func Get(ctx context.Context, q billing.Querier, id string) (Report, error) {
	r := Report{ID: id, Errors: []RowError{}}
	err := q.QueryRow(ctx, `SELECT type, status, mode, filename, rows, processed, created, duplicates, rejected,
			errors, failure, started_at, updated_at, finished_at
		FROM imports WHERE id = $1`, id).Scan(&r.Type, &r.Status, &r.Mode, &r.Filename, &r.Rows, &r.Processed,
		&r.Created, &r.Duplicates, &r.Rejected, &r.ErrorsTotal, &r.Failure, &r.StartedAt, &r.UpdatedAt, &r.FinishedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Report{}, fmt.Errorf("%w: import %q", billing.ErrNotFound, id)
	}
	if err != nil {
		return Report{}, fmt.Errorf("reading import %q: %w", id, err)
	}
	r.StartedAt, r.UpdatedAt = r.StartedAt.UTC(), r.UpdatedAt.UTC()
	if r.FinishedAt != nil {
		*r.FinishedAt = r.FinishedAt.UTC()
	}
	rows, err := q.Query(ctx, `SELECT row, "column", code, message FROM import_errors
		WHERE import_id = $1 ORDER BY row, n LIMIT $2`, id, MaxReportedErrors)
	if err != nil {
		return Report{}, fmt.Errorf("reading the errors of import %q: %w", id, err)
	}
	r.Errors, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (RowError, error) {
		var e RowError
		return e, row.Scan(&e.Row, &e.Column, &e.Code, &e.Message)
	})
	if err != nil {
		return Report{}, fmt.Errorf("reading the errors of import %q: %w", id, err)
	}
	return r, nil
}

// Template returns a CSV template of type typ: its header, every column,
// and an example row, which imports as it is (a sales template's example
// names customer cus-1, which must exist).
func Template(typ string) ([]byte, error) {
	k, err := kindOf(typ)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	cols := k.columnList()
	header := make([]string, len(cols))
	for i, c := range cols {
		header[i] = c.name
	}
	w.Write(header)
	w.Write(k.exampleRow())
	w.Flush()
	return b.Bytes(), w.Error()
}

// ReaperSource is the ce_source of the completed events of reaped imports.
const ReaperSource = "/tally/scheduler/imports"

// ReapStale fails, at now, each import still running whose record was not
// touched for staleAfter (see Heartbeat), by the database's clock, which
// touches them: its counts stay those of the
// batches it committed, and its tally.import.completed.v1 (status failed)
// is written with it, so the imports of a process that died end as those
// of one that failed. It returns how many it failed.
func ReapStale(ctx context.Context, pool *pgxpool.Pool, staleAfter time.Duration, now time.Time) (int, error) {
	now = now.UTC().Truncate(time.Microsecond)
	tx, err := postgres.Begin(ctx, pool)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, `UPDATE imports SET status = 'failed', updated_at = $1, finished_at = $1,
			failure = 'no sign of the process importing it since ' || to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') ||
				': it stopped before the end (the batches it committed stay; importing the file again completes it)'
		WHERE status = 'running' AND updated_at < now() - make_interval(secs => $2)
		RETURNING id, type, mode, filename, rows, created, duplicates, rejected, errors, failure, started_at`, now, staleAfter.Seconds())
	if err != nil {
		return 0, fmt.Errorf("failing stale imports: %w", err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (envelope.Event, error) {
		c := completed{Status: StatusFailed, FinishedAt: now}
		if err := r.Scan(&c.ID, &c.Type, &c.Mode, &c.Filename, &c.Rows, &c.Created, &c.Duplicates, &c.Rejected, &c.Errors,
			&c.Failure, &c.StartedAt); err != nil {
			return envelope.Event{}, err
		}
		payload, err := json.Marshal(c)
		if err != nil {
			return envelope.Event{}, err
		}
		return envelope.Event{ID: envelope.NewID(), Type: "tally.import.completed.v1", Source: ReaperSource, Subject: c.ID,
			Time: now, Sequence: 1, CorrelationID: envelope.NewID().String(), Data: payload}, nil
	})
	if err != nil {
		return 0, fmt.Errorf("failing stale imports: %w", err)
	}
	if len(evs) == 0 {
		return 0, nil
	}
	var b pgx.Batch
	if err := outbox.Queue(&b, evs...); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx, &b); err != nil {
		return 0, fmt.Errorf("failing stale imports: %w", err)
	}
	return len(evs), nil
}
