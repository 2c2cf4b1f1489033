// Package envelope is Tally's event envelope: CloudEvents 1.0 in Kafka binary
// mode. The record key is the aggregate id, the value is the JSON payload,
// and every other attribute travels in a header:
//
//	ce_specversion   "1.0"
//	ce_id            UUIDv7, unique per event; duplicates from a relay restart carry the same id
//	ce_source        URI-reference of the producer, e.g. "/tally/api"
//	ce_type          tally.<entity>.<change>.v<major>
//	ce_time          RFC 3339 UTC time the event was written
//	ce_subject       the aggregate id (equal to the record key)
//	content-type     application/json
//	ce_correlationid the id shared by everything one request or job caused (never empty)
//	ce_causationid   the id of the message that caused this one (may be absent)
//	ce_sequence      the aggregate's version after this event, a decimal integer ≥ 1
//	traceparent      W3C trace context (may be absent)
//
// Decode is the inverse of Headers and rejects anything that Headers could not
// have produced, so a consumer can set malformed records aside with a reason.
package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names and fixed values of the binary binding.
const (
	SpecVersion = "1.0"
	ContentType = "application/json"

	HeaderSpecVersion   = "ce_specversion"
	HeaderID            = "ce_id"
	HeaderSource        = "ce_source"
	HeaderType          = "ce_type"
	HeaderTime          = "ce_time"
	HeaderSubject       = "ce_subject"
	HeaderContentType   = "content-type"
	HeaderCorrelationID = "ce_correlationid"
	HeaderCausationID   = "ce_causationid"
	HeaderSequence      = "ce_sequence"
	HeaderTraceParent   = "traceparent"
)

// Sentinel errors of Decode and Validate. Every error they return wraps
// ErrInvalid and usually one of the more specific ones.
var (
	ErrInvalid         = errors.New("envelope: invalid event")
	ErrMissingHeader   = errors.New("envelope: missing header")
	ErrDuplicateHeader = errors.New("envelope: duplicate header")
	ErrBadHeader       = errors.New("envelope: malformed header")
)

// Event is one domain event with its envelope attributes.
type Event struct {
	ID            uuid.UUID
	Type          string
	Source        string
	Subject       string
	Time          time.Time
	Sequence      int64
	CorrelationID string
	CausationID   string
	TraceParent   string
	// Data is the JSON payload. Its schema is the type's, in topics/.
	Data []byte
}

// NewID returns a new UUIDv7 event id: time-ordered, so ids of one
// aggregate's events sort in the order they were made.
func NewID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// DerivedID returns the UUIDv7 event id of an event derived from others:
// its time is at (to the millisecond) and its remaining 74 bits a SHA-256
// of parts, so deriving the same event again (the same parts, the same
// time) gives the same id, and consumers pass the second as a duplicate.
// The parts must name the event uniquely, such as a cause's id, who
// derives and the event's rank among those derived from the cause.
func DerivedID(at time.Time, parts ...string) uuid.UUID {
	h := sha256.New()
	for _, p := range parts {
		// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
		binary.Write(h, binary.BigEndian, uint32(len(p)))
		h.Write([]byte(p))
	}
	var u uuid.UUID
	copy(u[6:], h.Sum(nil))
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	return u
}

// Validate checks the attributes a producer must set; it does not look at
// Data (topics validates payloads against their schemas).
func (e *Event) Validate() error {
	switch {
	case e.ID == uuid.Nil:
		return invalid(ErrBadHeader, "%s is the nil UUID", HeaderID)
	case e.Type == "" || !isToken(e.Type):
		return invalid(ErrBadHeader, "%s %q is not a type name", HeaderType, e.Type)
	case e.Source == "" || !printable(e.Source):
		return invalid(ErrBadHeader, "%s %q is empty or not printable", HeaderSource, e.Source)
	case e.Subject == "" || !printable(e.Subject):
		return invalid(ErrBadHeader, "%s %q is empty or not printable", HeaderSubject, e.Subject)
	case e.Time.IsZero():
		return invalid(ErrBadHeader, "%s is zero", HeaderTime)
	case e.Sequence < 1:
		return invalid(ErrBadHeader, "%s %d is below 1", HeaderSequence, e.Sequence)
	case e.CorrelationID == "":
		return invalid(ErrBadHeader, "%s is empty", HeaderCorrelationID)
	case !printable(e.CorrelationID) || !printable(e.CausationID) || !printable(e.TraceParent):
		return invalid(ErrBadHeader, "correlation, causation or trace header not printable")
	}
	return nil
}

// Headers returns the record headers of e in binary mode.
func (e *Event) Headers() []kgo.RecordHeader {
	hs := make([]kgo.RecordHeader, 0, 11)
	add := func(k, v string) { hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderSpecVersion, SpecVersion)
	add(HeaderID, e.ID.String())
	add(HeaderSource, e.Source)
	add(HeaderType, e.Type)
	add(HeaderTime, e.Time.UTC().Format(time.RFC3339Nano))
	add(HeaderSubject, e.Subject)
	add(HeaderContentType, ContentType)
	add(HeaderCorrelationID, e.CorrelationID)
	if e.CausationID != "" {
		add(HeaderCausationID, e.CausationID)
	}
	add(HeaderSequence, strconv.FormatInt(e.Sequence, 10))
	if e.TraceParent != "" {
		add(HeaderTraceParent, e.TraceParent)
	}
	return hs
}

// Record returns the Kafka record of e for topic: key = subject, value = data.
func (e *Event) Record(topic string) *kgo.Record {
	return &kgo.Record{
		Topic:   topic,
		Key:     []byte(e.Subject),
		Value:   e.Data,
		Headers: e.Headers(),
	}
}

// Decode reads an event from a record in binary mode. It copies what it keeps,
// so the record may be reused. Unknown headers are ignored; a repeated
// envelope header, a missing required one, a key that differs from
// ce_subject, or a content type other than JSON is an error.
func Decode(r *kgo.Record) (Event, error) {
	var (
		e    Event
		seen [11]bool
	)
	for _, h := range r.Headers {
		i := headerIndex(h.Key)
		if i < 0 {
			continue
		}
		if seen[i] {
			return Event{}, invalid(ErrDuplicateHeader, "%s", h.Key)
		}
		seen[i] = true
		v := h.Value
		if !utf8.Valid(v) {
			return Event{}, invalid(ErrBadHeader, "%s is not UTF-8", h.Key)
		}
		switch h.Key {
		case HeaderSpecVersion:
			if string(v) != SpecVersion {
				return Event{}, invalid(ErrBadHeader, "%s %q is not %q", h.Key, clip(v), SpecVersion)
			}
		case HeaderID:
			id, err := uuid.ParseBytes(v)
			if err != nil || len(v) != 36 {
				return Event{}, invalid(ErrBadHeader, "%s %q is not a UUID", h.Key, clip(v))
			}
			e.ID = id
		case HeaderSource:
			e.Source = string(v)
		case HeaderType:
			e.Type = string(v)
		case HeaderTime:
			t, err := time.Parse(time.RFC3339Nano, string(v))
			if err != nil {
				return Event{}, invalid(ErrBadHeader, "%s %q is not RFC 3339", h.Key, clip(v))
			}
			e.Time = t
		case HeaderSubject:
			e.Subject = string(v)
		case HeaderContentType:
			if !bytes.Equal(v, []byte(ContentType)) && !bytes.HasPrefix(v, []byte(ContentType+";")) {
				return Event{}, invalid(ErrBadHeader, "%s %q is not %s", h.Key, clip(v), ContentType)
			}
		case HeaderCorrelationID:
			e.CorrelationID = string(v)
		case HeaderCausationID:
			e.CausationID = string(v)
		case HeaderSequence:
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || strconv.FormatInt(n, 10) != string(v) {
				return Event{}, invalid(ErrBadHeader, "%s %q is not a decimal integer", h.Key, clip(v))
			}
			e.Sequence = n
		case HeaderTraceParent:
			e.TraceParent = string(v)
		}
	}
	for _, req := range [...]string{HeaderSpecVersion, HeaderID, HeaderSource, HeaderType, HeaderTime, HeaderSubject, HeaderCorrelationID, HeaderSequence} {
		if !seen[headerIndex(req)] {
			return Event{}, invalid(ErrMissingHeader, "%s", req)
		}
	}
	if string(r.Key) != e.Subject {
		return Event{}, invalid(ErrBadHeader, "record key %q differs from %s %q", clip(r.Key), HeaderSubject, clip([]byte(e.Subject)))
	}
	if err := e.Validate(); err != nil {
		return Event{}, err
	}
	e.Data = bytes.Clone(r.Value)
	return e, nil
}

func headerIndex(k string) int {
	switch k {
	case HeaderSpecVersion:
		return 0
	case HeaderID:
		return 1
	case HeaderSource:
		return 2
	case HeaderType:
		return 3
	case HeaderTime:
		return 4
	case HeaderSubject:
		return 5
	case HeaderContentType:
		return 6
	case HeaderCorrelationID:
		return 7
	case HeaderCausationID:
		return 8
	case HeaderSequence:
		return 9
	case HeaderTraceParent:
		return 10
	}
	return -1
}

func invalid(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %w: %s", ErrInvalid, kind, fmt.Sprintf(format, args...))
}

// clip bounds what of a header value ends up in an error message.
func clip(v []byte) string {
	if len(v) > 64 {
		return string(v[:64]) + "…"
	}
	return string(v)
}

// isToken reports whether s is a dotted lower-case name such as
// tally.invoice.created.v1.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// printable reports whether s is valid UTF-8 without control characters, so
// it is safe as a header value and in logs.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
