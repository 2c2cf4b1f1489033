package importer

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// MaxRowBytes bounds one row of a file (a record, which quoted fields may
// spread over several lines). A longer row makes the file malformed: a
// single stray quote would otherwise make the rest of the file one field,
// held in memory whole.
const MaxRowBytes = 64 << 10

// csvReadAhead is how far encoding/csv reads ahead of the record it
// returns: the size of its bufio.Reader.
const csvReadAhead = 4096

// FileError says why a file is not a CSV file of its type: a header that
// does not match, bytes that are not UTF-8, broken quoting, an overlong
// row. Nothing of such a file is written.
type FileError struct {
	Line   int    // the line of the file where the problem is (from 1); 0 when it is the file as a whole
	Reason string // what is wrong, for people
}

func (e *FileError) Error() string {
	if e.Line == 0 {
		return "malformed CSV file: " + e.Reason
	}
	return fmt.Sprintf("malformed CSV file at line %d: %s", e.Line, e.Reason)
}

// column is a column of a type of file.
type column struct {
	name     string
	required bool   // the header must name it (its values may still be empty where the type allows)
	doc      string // what it holds, for the README and the template's users
}

// errRowTooLong is what limiter answers past its limit.
var errRowTooLong = errors.New("row too long")

// limiter hands out bytes of r up to limit, which the reader moves after
// each record: so no record longer than MaxRowBytes is ever buffered, and
// a file whose rows are all shorter reads as if there were no limit.
type limiter struct {
	r          io.Reader
	pos, limit int64
}

func (l *limiter) Read(p []byte) (int, error) {
	if l.pos >= l.limit {
		return 0, errRowTooLong
	}
	if room := l.limit - l.pos; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.pos += int64(n)
	return n, err
}

// reader reads the records of a CSV file of one type: it checks the
// header, then returns each data row's values in the type's column order
// ("" for a column the file lacks). Blank rows and rows of empty fields
// are skipped.
//
// It is strict where guessing would corrupt data: the file must be UTF-8
// (a UTF-8 byte-order mark is allowed), quoting must follow RFC 4180, and
// a row may not exceed MaxRowBytes. Each of those is a *FileError. A row
// with the wrong number of fields is not: next reports it, for the caller
// to reject that row alone.
type reader struct {
	csv   *csv.Reader
	lim   *limiter
	cols  []int // for each column of the type, its field in the file, or -1
	width int   // fields per row, from the header
	line  int   // the line the last record started on (the header's is 1)
	end   int64 // the offset where the last record ended
	vals  []string
}

func newReader(r io.Reader, cols []column) (*reader, error) {
	lim := &limiter{r: r, limit: MaxRowBytes + csvReadAhead}
	c := csv.NewReader(lim)
	c.FieldsPerRecord = -1 // ragged rows are the caller's to reject, one by one
	c.ReuseRecord = true
	rd := &reader{csv: c, lim: lim, vals: make([]string, len(cols))}
	header, err := rd.read()
	if err == io.EOF {
		return nil, &FileError{Reason: "the file is empty; it needs a header row naming its columns"}
	}
	if err != nil {
		return nil, err
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\uFEFF")
	}
	rd.cols, err = matchHeader(header, cols)
	if err != nil {
		return nil, &FileError{Line: 1, Reason: err.Error()}
	}
	rd.width = len(header)
	return rd, nil
}

// matchHeader maps the type's columns to the header's fields. Names are
// matched without regard to case or surrounding spaces; every name must be
// a column of the type, named once, and every required column named.
func matchHeader(header []string, cols []column) ([]int, error) {
	at := make([]int, len(cols))
	for i := range at {
		at[i] = -1
	}
	var problems []string
	for f, h := range header {
		name := strings.ToLower(strings.TrimSpace(h))
		i := slices.IndexFunc(cols, func(c column) bool { return c.name == name })
		switch {
		case name == "":
			problems = append(problems, fmt.Sprintf("column %d has no name", f+1))
		case i < 0:
			problems = append(problems, fmt.Sprintf("unknown column %q", clip(h)))
		case at[i] >= 0:
			problems = append(problems, fmt.Sprintf("column %q is named twice", name))
		default:
			at[i] = f
		}
	}
	for i, c := range cols {
		if c.required && at[i] < 0 {
			problems = append(problems, fmt.Sprintf("missing column %q", c.name))
		}
	}
	if len(problems) > 0 {
		names := make([]string, len(cols))
		for i, c := range cols {
			names[i] = c.name
		}
		return nil, fmt.Errorf("the header does not match: %s (the columns are %s)", strings.Join(problems, "; "),
			strings.Join(names, ", "))
	}
	return at, nil
}

// read reads one record, checking what makes a file malformed.
func (rd *reader) read() ([]string, error) {
	rec, err := rd.csv.Read()
	var pe *csv.ParseError
	switch {
	case err == io.EOF:
		return nil, err
	case errors.Is(err, errRowTooLong):
		return nil, &FileError{Line: rd.line + 1, Reason: fmt.Sprintf(
			"a row starting here or below is longer than %d bytes (is a closing quote missing?)", MaxRowBytes)}
	case errors.As(err, &pe):
		return nil, &FileError{Line: pe.Line, Reason: fmt.Sprintf("%v (column %d); quote a field that holds a quote, a comma or a line break, and double its quotes",
			pe.Err, pe.Column)}
	case err != nil:
		return nil, fmt.Errorf("reading the file: %w", err)
	}
	line, _ := rd.csv.FieldPos(0)
	end := rd.csv.InputOffset()
	if end-rd.end > MaxRowBytes {
		return nil, &FileError{Line: line, Reason: fmt.Sprintf("the row is longer than %d bytes", MaxRowBytes)}
	}
	rd.line, rd.end = line, end
	rd.lim.limit = end + MaxRowBytes + csvReadAhead
	for _, f := range rec {
		if !utf8.ValidString(f) {
			reason := "the file is not UTF-8; save it as UTF-8"
			if line == 1 && (strings.HasPrefix(rec[0], "\xff\xfe") || strings.HasPrefix(rec[0], "\xfe\xff")) {
				reason = "the file is UTF-16; save it as UTF-8"
			}
			return nil, &FileError{Line: line, Reason: reason}
		}
	}
	return rec, nil
}

// next returns the next data row: its values in the type's column order,
// trimmed of spaces and valid until the next call; rd.line is its line.
// width is the number of its fields, which the caller compares to the
// header's. At the end it returns io.EOF.
func (rd *reader) next() (vals []string, width int, err error) {
	for {
		rec, err := rd.read()
		if err != nil {
			return nil, 0, err
		}
		blank := true
		for _, f := range rec {
			if strings.TrimSpace(f) != "" {
				blank = false
				break
			}
		}
		if blank {
			continue
		}
		for i, at := range rd.cols {
			rd.vals[i] = ""
			if at >= 0 && at < len(rec) {
				rd.vals[i] = strings.TrimSpace(rec[at])
			}
		}
		return rd.vals, len(rec), nil
	}
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
