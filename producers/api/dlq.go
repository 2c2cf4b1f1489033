package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/producers/billing"
)

// The dead-letter queue over HTTP (/v1/dlq): the records consumer groups
// parked, and the operators' actions on the dead ones. It serves the
// functions `tally dlq` runs (internal/consumer), which audit each action.
// The actions take no Idempotency-Key: they are idempotent by nature (a
// record that is no longer dead is not replayed, skipped or purged again).

const (
	defaultDLQLimit = 100
	maxDLQLimit     = 1000 // consumer.List answers at most this many
	maxActorChars   = 200
	maxReasonChars  = 1000
)

// parkedStates are the states of parked records, as a client names them.
var parkedStates = []string{consumer.StateRetrying, consumer.StateWaiting, consumer.StateDead, consumer.StateSkipped}

// ParkedPage is a page of parked records, oldest first.
type ParkedPage struct {
	Data    []consumer.Parked `json:"data"`
	HasMore bool              `json:"has_more"`
}

// ParkedRecord is one parked record with its headers and payload. A
// payload that is JSON (valid UTF-8) is given as it is, any other as
// base64; a record without a value has neither.
type ParkedRecord struct {
	consumer.Parked
	// Headers, as envelope.MarshalHeaders writes them: [{"key", "value"}],
	// with "key_base64" or "value_base64" for what is not text. It shadows
	// consumer.Parked's Headers, which JSON leaves out.
	Headers             json.RawMessage `json:"headers"`
	Payload             json.RawMessage `json:"payload,omitempty"`
	PayloadBase64       []byte          `json:"payload_base64,omitempty"`
	EditedPayload       json.RawMessage `json:"edited_payload,omitempty"`
	EditedPayloadBase64 []byte          `json:"edited_payload_base64,omitempty"`
}

// parkedAction is the body of an action on parked records: who acts and
// why, and which records.
type parkedAction struct {
	Actor  string  `json:"actor"`
	Reason string  `json:"reason"`
	IDs    []int64 `json:"ids"`
	Group  string  `json:"group"`
	Type   string  `json:"type"`
	Key    string  `json:"key"`
	Since  string  `json:"since"`
	Until  string  `json:"until"`
	All    bool    `json:"all"`
}

// parkedReplay is the body of a replay: an action that may also replace
// the payload of the one record it selects.
type parkedReplay struct {
	parkedAction
	Payload json.RawMessage `json:"payload"`
}

// fieldErrors collects the invalid fields of a request.
type fieldErrors []billing.FieldError

func (fe *fieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, billing.FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// answer writes the validation problem of fe, if it lists any field, and
// reports whether it did.
func (fe fieldErrors) answer(w http.ResponseWriter, r *http.Request) bool {
	if len(fe) == 0 {
		return false
	}
	writeProblem(w, r, Problem{Type: ProblemValidation, Status: http.StatusUnprocessableEntity,
		Title: titleValidation, Errors: fe})
	return true
}

// listParked serves GET /v1/dlq: the parked records the query selects,
// paged by id.
func (a *API) listParked(w http.ResponseWriter, r *http.Request) {
	f, errs := parkedQuery(r.URL.Query())
	if errs.answer(w, r) {
		return
	}
	limit := f.Limit
	f.Limit = limit + 1
	ps, err := consumer.List(r.Context(), a.pool, f)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page := ParkedPage{Data: ps}
	switch {
	case len(ps) > limit:
		page.Data, page.HasMore = ps[:limit], true
	case len(ps) == limit && limit+1 > maxDLQLimit:
		// List answers at most maxDLQLimit records, so a full page of that
		// many says nothing of the next: look for one record after it.
		f.After, f.Limit = ps[len(ps)-1].ID, 1
		next, err := consumer.List(r.Context(), a.pool, f)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		page.HasMore = len(next) > 0
	}
	for i := range page.Data {
		inUTC(&page.Data[i])
	}
	writeJSON(w, http.StatusOK, page)
}

// parkedQuery reads the query of GET /v1/dlq, listing every invalid
// parameter.
func parkedQuery(q url.Values) (consumer.Filter, fieldErrors) {
	f := consumer.Filter{Limit: defaultDLQLimit}
	var errs fieldErrors
	for _, name := range []string{"group", "type", "key", "since", "until", "after", "limit"} {
		if len(q[name]) > 1 {
			errs.add(name, "must be given at most once")
		}
	}
	for _, v := range q["state"] {
		for _, s := range strings.Split(v, ",") {
			if !slices.Contains(parkedStates, s) {
				errs.add("state", "%q is not a state: want retrying, waiting, dead or skipped (comma-separated, or repeated)", s)
			} else if !slices.Contains(f.States, s) {
				f.States = append(f.States, s)
			}
		}
	}
	f.Group, f.Type, f.Key = q.Get("group"), q.Get("type"), q.Get("key")
	checkName(&errs, "group", f.Group)
	checkName(&errs, "type", f.Type)
	f.Since = timestamp(&errs, "since", q.Get("since"))
	f.Until = timestamp(&errs, "until", q.Get("until"))
	checkPeriod(&errs, f)
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			errs.add("after", "must be a non-negative integer (the id of the last record of the previous page)")
		}
		f.After = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDLQLimit {
			errs.add("limit", "must be an integer from 1 to %d", maxDLQLimit)
		}
		f.Limit = n
	}
	return f, errs
}

// showParked serves GET /v1/dlq/{id}: one parked record, with its headers
// and payload.
func (a *API) showParked(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		fieldErrors{{Field: "id", Message: "must be a positive integer (a parked record's id)"}}.answer(w, r)
		return
	}
	p, err := consumer.Show(r.Context(), a.pool, id)
	if err != nil {
		a.fail(w, r, fmt.Errorf("%w: %d", err, id))
		return
	}
	inUTC(&p)
	rec := ParkedRecord{Parked: p, Headers: envelope.MarshalHeaders(p.Headers)}
	rec.Payload, rec.PayloadBase64 = payload(p.Value)
	rec.EditedPayload, rec.EditedPayloadBase64 = payload(p.EditedValue)
	writeJSON(w, http.StatusOK, rec)
}

// payload returns a record value as JSON when it is JSON, else as bytes
// for base64; neither when there is no value.
func payload(v []byte) (json.RawMessage, []byte) {
	switch {
	case len(v) == 0:
		return nil, nil
	case utf8.Valid(v) && json.Valid(v):
		return v, nil
	}
	return nil, v
}

// inUTC gives p's timestamps in UTC, as the API writes every timestamp.
func inUTC(p *consumer.Parked) {
	p.ParkedAt = p.ParkedAt.UTC()
	for _, t := range []**time.Time{&p.NotBefore, &p.FirstFailedAt, &p.LastFailedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
}

// parkedActionFunc is one of the actions on parked records.
type parkedActionFunc func(ctx context.Context, f consumer.Filter, edited []byte, act consumer.Action) (int, error)

// actOnParked serves an action on parked records (POST /v1/dlq/replay,
// skip, purge), answering {done: how many records it acted on}. Only a
// replay (edits) takes a payload.
func (a *API) actOnParked(done string, edits bool, act parkedActionFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r, a.cfg.MaxBodyBytes, false)
		if !ok {
			return
		}
		var in parkedReplay
		var into any = &in.parkedAction
		if edits {
			into = &in
		}
		if !decode(w, r, body, into) {
			return
		}
		f, errs := in.filter()
		var edited []byte
		if p := bytes.TrimSpace(in.Payload); len(p) > 0 && string(p) != "null" { // null counts as absent
			var b bytes.Buffer
			json.Compact(&b, p) // cannot fail: decode read it as JSON
			edited = b.Bytes()
		}
		if errs.answer(w, r) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		n, err := act(ctx, f, edited, consumer.Action{Actor: in.Actor, Reason: in.Reason})
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if n > 0 {
			a.notifier.Notify() // replays and released keys wrote forwards to the outbox
		}
		writeJSON(w, http.StatusOK, map[string]int{done: n})
	}
}

// filter checks an action's fields, listing every invalid one, and returns
// the records it selects.
func (in *parkedAction) filter() (consumer.Filter, fieldErrors) {
	var errs fieldErrors
	if !plainText(in.Actor, maxActorChars, false) {
		errs.add("actor", "required: who takes the action, for the audit trail; 1 to %d characters, not blank, without control characters", maxActorChars)
	}
	if in.Reason != "" && !plainText(in.Reason, maxReasonChars, true) {
		errs.add("reason", "must be at most %d characters, without control characters other than tabs and line breaks", maxReasonChars)
	}
	for i, id := range in.IDs {
		if id < 1 {
			errs.add(fmt.Sprintf("ids[%d]", i), "must be a positive integer (a parked record's id)")
		}
	}
	f := consumer.Filter{IDs: in.IDs, Group: in.Group, Type: in.Type, Key: in.Key, All: in.All}
	checkName(&errs, "group", f.Group)
	checkName(&errs, "type", f.Type)
	f.Since = timestamp(&errs, "since", in.Since)
	f.Until = timestamp(&errs, "until", in.Until)
	checkPeriod(&errs, f)
	if !in.All && len(in.IDs) == 0 && in.Group == "" && in.Type == "" && in.Key == "" && in.Since == "" && in.Until == "" {
		errs.add("ids", noSelection)
	}
	return f, errs
}

const noSelection = "select the records: give ids, or a filter (group, type, key, since, until), or all: true for every dead record"

// plainText reports whether s is valid UTF-8 of 1 to max characters, not
// blank, without control characters (tabs and line breaks allowed when
// lines).
func plainText(s string, max int, lines bool) bool {
	if !utf8.ValidString(s) || strings.TrimSpace(s) == "" || utf8.RuneCountInString(s) > max {
		return false
	}
	for _, c := range s {
		if unicode.IsControl(c) && !(lines && (c == '\t' || c == '\n' || c == '\r')) {
			return false
		}
	}
	return true
}

// checkName checks a filter on a name (a group, an event type): text
// without control characters, which PostgreSQL text would refuse (NUL) or
// no name holds.
func checkName(errs *fieldErrors, field, v string) {
	if v != "" && !plainText(v, 255, false) {
		errs.add(field, "must be at most 255 characters, without control characters")
	}
}

// timestamp parses an RFC 3339 timestamp; "" is the zero time.
func timestamp(errs *fieldErrors, field, v string) time.Time {
	if v == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		errs.add(field, "must be an RFC 3339 timestamp such as 2025-03-01T10:00:00Z (in a query, write + as %%2B)")
	}
	return t
}

func checkPeriod(errs *fieldErrors, f consumer.Filter) {
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		errs.add("until", "must be later than since")
	}
}
