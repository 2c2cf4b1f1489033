package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/topics"
)

// Headers of retry and dead-letter records, besides the original record's
// own (ce_* and the rest, kept as they were). Values are text: decimal
// integers, RFC 3339 times (UTC, milliseconds), names. A record forwarded
// again carries fresh values, never a second copy.
const (
	HeaderOriginalTopic     = "tally-original-topic"     // where the group first read the record
	HeaderOriginalPartition = "tally-original-partition" //
	HeaderOriginalOffset    = "tally-original-offset"    //
	HeaderOriginalTimestamp = "tally-original-timestamp" // the original record's timestamp
	HeaderGroup             = "tally-group"              // the consumer group that failed it
	HeaderAttempts          = "tally-attempts"           // failed attempts so far
	HeaderFirstFailure      = "tally-first-failure"      // time of the first failed attempt
	HeaderLastFailure       = "tally-last-failure"       // time of the last one
	HeaderErrorClass        = "tally-error-class"        // transient or permanent
	HeaderError             = "tally-error"              // the last error, at most MaxErrorBytes
	HeaderRetryTier         = "tally-retry-tier"         // retry records: the tier, from 1
	HeaderNotBefore         = "tally-not-before"         // retry records: when the attempt is due
	HeaderParkedVersion     = "tally-parked-version"     // retry records: the parked row's version
)

// MaxErrorBytes bounds the error message kept in a header and in PostgreSQL.
const MaxErrorBytes = 1024

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// class is what a failure means for its record.
type class int

const (
	transient     class = iota // the retry tiers, then the dead-letter queue
	permanent                  // the dead-letter queue at once
	environmental              // nothing parked: block and retry in place
)

func (c class) String() string {
	switch c {
	case permanent:
		return "permanent"
	case environmental:
		return "environmental"
	}
	return "transient"
}

// classify tells what a handler's error means. txErr is the first error
// the handler's transaction met, if any: a handler that swallowed or
// rewrapped a database error is still judged by it.
func classify(err, txErr error) class {
	switch {
	case errors.Is(err, ErrPermanent):
		return permanent
	case errors.Is(err, ErrEnvironmental):
		return environmental
	}
	if txErr != nil {
		err = txErr
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code[:2] == "22", pe.Code == "23502", pe.Code == "23514":
			// A data exception, a NULL or a value out of bounds: the
			// record's data is wrong, and will stay so.
			return permanent
		case pe.Code[:2] == "23":
			// A missing row it refers to, or a row it collides with:
			// another record may mend that.
			return transient
		}
		return environmental
	}
	if txErr != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// The connection failed, or the batch ran out of time.
		return environmental
	}
	return transient
}

// origin is where the group first read a record: its identity in
// consumer_parked.
type origin struct {
	topic     string
	partition int32
	offset    int64
}

// failure is why a record is parked.
type failure struct {
	class class
	err   string
}

// recordFailure is the error apply returns when one record failed: the
// batch is applied again with the record parked.
type recordFailure struct {
	orig origin
	failure
}

func (f *recordFailure) Error() string {
	return fmt.Sprintf("%s/%d@%d failed (%s): %s", f.orig.topic, f.orig.partition, f.orig.offset, f.class, f.err)
}

// parkedRow is a record parked by the group, as the retry path reads it.
type parkedRow struct {
	id          int64
	orig        origin
	recordTime  time.Time
	key         []byte
	ordered     bool
	headers     []kgo.RecordHeader
	value       []byte // the operator's edited payload, if any
	state       string
	version     int
	attempts    int
	firstFailed *time.Time
}

// parkedColumns lists the columns scanParked reads, of the table aliased
// prefix (such as "p.").
func parkedColumns(prefix string) string {
	return strings.NewReplacer("$.", prefix).Replace(`$.id, $.topic, $.partition, $."offset", $.record_time, $.key,
		$.ordered, $.headers, coalesce($.edited_value, $.value), $.state, $.version, $.attempts, $.first_failed_at`)
}

// scanParked reads a row of parkedColumns, after the columns into which
// first are scanned.
func scanParked(rows pgx.Rows, first ...any) (*parkedRow, error) {
	p := new(parkedRow)
	var headers []byte
	dest := append(first, &p.id, &p.orig.topic, &p.orig.partition, &p.orig.offset, &p.recordTime, &p.key, &p.ordered,
		&headers, &p.value, &p.state, &p.version, &p.attempts, &p.firstFailed)
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	hs, err := envelope.UnmarshalHeaders(headers)
	if err != nil {
		return nil, fmt.Errorf("parked record %d: %w", p.id, err)
	}
	p.headers = hs
	return p, nil
}

// record rebuilds the Kafka record the group first read.
func (p *parkedRow) record() *kgo.Record {
	return &kgo.Record{Topic: p.orig.topic, Partition: p.orig.partition, Offset: p.orig.offset,
		Key: p.key, Value: p.value, Headers: p.headers, Timestamp: p.recordTime}
}

// wakeup is what a retry record says: which parked record is due, when.
type wakeup struct {
	orig      origin
	version   int
	notBefore time.Time
}

// readWakeup reads the retry headers of a record of a retry tier of group.
func readWakeup(group string, rec *kgo.Record) (wakeup, error) {
	var w wakeup
	var seen int
	for _, h := range rec.Headers {
		v := string(h.Value)
		var err error
		switch h.Key {
		case HeaderGroup:
			if v != group {
				return w, fmt.Errorf("a retry record of group %q", v)
			}
		case HeaderOriginalTopic:
			w.orig.topic = v
		case HeaderOriginalPartition:
			var n int64
			n, err = strconv.ParseInt(v, 10, 32)
			w.orig.partition = int32(n)
		case HeaderOriginalOffset:
			w.orig.offset, err = strconv.ParseInt(v, 10, 64)
		case HeaderParkedVersion:
			w.version, err = strconv.Atoi(v)
		case HeaderNotBefore:
			w.notBefore, err = time.Parse(time.RFC3339Nano, v)
		default:
			continue
		}
		if err != nil {
			return w, fmt.Errorf("header %s %q: %w", h.Key, clip(v, 64), err)
		}
		seen++
	}
	if seen != 6 || w.orig.topic == "" {
		return w, fmt.Errorf("not a retry record: %d of its 6 retry headers", seen)
	}
	return w, nil
}

// disposition is where a failed record goes next: a retry tier (from 1),
// or the dead-letter queue (tier 0).
func (r *Runner) disposition(f failure, attempts int) (state string, tier int) {
	if f.class == permanent || attempts > len(r.delays) {
		return "dead", 0
	}
	return "retrying", attempts
}

// forwardOf builds the forward of a record group parked to tier (0: the
// dead-letter topic). f is the failure that sends it there; nil for a
// record woken because the records ahead of it were resolved.
func forwardOf(group string, rec *kgo.Record, orig origin, tier, version, attempts int, first, now time.Time,
	f *failure, notBefore time.Time) outbox.Forward {
	hs := make([]kgo.RecordHeader, 0, len(rec.Headers)+13)
	for _, h := range rec.Headers {
		if !strings.HasPrefix(h.Key, "tally-") {
			hs = append(hs, h)
		}
	}
	add := func(k, v string) { hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderOriginalTopic, orig.topic)
	add(HeaderOriginalPartition, strconv.Itoa(int(orig.partition)))
	add(HeaderOriginalOffset, strconv.FormatInt(orig.offset, 10))
	add(HeaderOriginalTimestamp, rec.Timestamp.UTC().Format(timeLayout))
	add(HeaderGroup, group)
	add(HeaderAttempts, strconv.Itoa(attempts))
	if f != nil {
		add(HeaderFirstFailure, first.UTC().Format(timeLayout))
		add(HeaderLastFailure, now.UTC().Format(timeLayout))
		add(HeaderErrorClass, f.class.String())
		add(HeaderError, f.err)
	}
	topic := topics.DeadLetterTopic(group)
	if tier > 0 {
		topic = topics.RetryTopic(group, tier)
		add(HeaderRetryTier, strconv.Itoa(tier))
		add(HeaderNotBefore, notBefore.UTC().Format(timeLayout))
		add(HeaderParkedVersion, strconv.Itoa(version))
	}
	return outbox.Forward{Topic: topic, Key: rec.Key, Value: rec.Value, Headers: hs, Source: "/tally/consumer/" + group}
}

// wake queues, through queue, what makes p (the first record waiting
// behind a head that was just resolved) the head of its key, due at once,
// and returns its forward to the first retry tier.
func wake(queue func(sql string, args ...any), group string, p *parkedRow, now time.Time) outbox.Forward {
	version := p.version + 1
	queue(`UPDATE consumer_parked SET state = 'retrying', tier = 1, version = $2, not_before = $3, updated_at = now()
		WHERE id = $1`, p.id, version, now)
	return forwardOf(group, p.record(), p.orig, 1, version, p.attempts, now, now, nil, now)
}

// releaseKeySQL frees a key whose parked records are all resolved.
const releaseKeySQL = `DELETE FROM consumer_parked_keys WHERE group_id = $1 AND topic = $2 AND key = $3`

// errorText is an error message as kept: valid UTF-8 without NUL (so
// PostgreSQL text and header readers take it), at most MaxErrorBytes.
func errorText(s string) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\ufffd"), "\x00", "\\0")
	if len(s) <= MaxErrorBytes {
		return s
	}
	cut := MaxErrorBytes - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
