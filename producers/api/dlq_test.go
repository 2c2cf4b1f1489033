package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/producers/api"
	"github.com/tally-dev/tally/topics"
)

// parked is a record to park directly in consumer_parked.
type parked struct {
	group, key string
	ordered    bool
	eventType  string // "": a record that could not be read as an event
	value      []byte
	state      string
	tier       int        // retrying only
	failedAt   *time.Time // nil: not failed itself (waiting)
	errorClass string
}

// park inserts p (the consumer runtime that parks records is tested in
// internal/consumer), holding its key when it is an ordered head, and
// returns its id.
func park(t *testing.T, s *server, p parked) int64 {
	t.Helper()
	ctx := context.Background()
	var eventID any
	headers := `[{"key":"content-type","value":"application/json"},{"key":"tally-bin","value_base64":"AP8="}]`
	if p.eventType != "" {
		id := envelope.NewID().String()
		eventID = id
		headers = fmt.Sprintf(`[{"key":"ce_id","value":%q},{"key":"ce_type","value":%q},`+
			`{"key":"content-type","value":"application/json"},{"key":"tally-bin","value_base64":"AP8="}]`, id, p.eventType)
	}
	var notBefore any
	if p.tier > 0 {
		notBefore = time.Now().Add(time.Hour)
	}
	attempts, errText := 0, ""
	if p.failedAt != nil {
		attempts, errText = 3, "handler failed: "+p.state
	}
	var key any
	if p.key != "" {
		key = []byte(p.key)
	}
	var id int64
	err := s.pool.QueryRow(ctx, `INSERT INTO consumer_parked (group_id, topic, partition, "offset", record_time, key,
			ordered, event_id, event_type, headers, value, state, attempts, tier, not_before, error_class, error,
			first_failed_at, last_failed_at)
		VALUES ($1, 'tally.customers.v1', 0, (SELECT coalesce(max("offset"), 0) + 1 FROM consumer_parked), now(), $2,
			$3, $4::uuid, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $14)
		RETURNING id`,
		p.group, key, p.ordered, eventID, p.eventType, headers, p.value, p.state, attempts, p.tier, notBefore,
		p.errorClass, errText, p.failedAt).Scan(&id)
	if err != nil {
		t.Fatalf("parking %+v: %v", p, err)
	}
	if p.ordered && p.state != consumer.StateWaiting {
		if _, err := s.pool.Exec(ctx, `INSERT INTO consumer_parked_keys (group_id, topic, key)
			VALUES ($1, 'tally.customers.v1', $2) ON CONFLICT DO NOTHING`, p.group, []byte(p.key)); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func customerPayload(id, name string) string {
	return fmt.Sprintf(`{"id":%q,"name":%q,"email":"a@b.c","created_at":"2025-03-01T10:00:00Z","updated_at":"2025-03-02T10:00:00Z"}`, id, name)
}

// parkedPage lists the parked records of query.
func parkedPage(t *testing.T, s *server, query string) api.ParkedPage {
	t.Helper()
	var page api.ParkedPage
	if r := s.call(t, "GET", rDLQ, rDLQ+query, nil); expect(t, r, http.StatusOK) {
		r.decode(t, &page)
	}
	return page
}

func parkedIDs(page api.ParkedPage) []int64 {
	ids := []int64{}
	for _, p := range page.Data {
		ids = append(ids, p.ID)
	}
	return ids
}

// testDLQ lists, shows, replays, skips and purges records parked here
// directly.
func testDLQ(t *testing.T) {
	t.Parallel()
	s := newServer(t, defaultConfig)
	hourAgo := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	newYear := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	const upd, created = "tally.customer.updated.v1", "tally.customer.created.v1"

	// K: a dead head holding its key, a record waiting behind it. U: a dead
	// record that is not JSON and holds nothing. D: a dead record of
	// another group, failed long ago. R: a record retrying. S: a second
	// dead head with a record waiting behind it.
	headK := park(t, s, parked{group: "revenue", key: "K", ordered: true, eventType: upd, value: []byte(customerPayload("K", "Ada")),
		state: "dead", failedAt: &hourAgo, errorClass: "transient"})
	waitK := park(t, s, parked{group: "revenue", key: "K", ordered: true, eventType: upd, value: []byte(customerPayload("K", "Ada L.")),
		state: "waiting"})
	deadU := park(t, s, parked{group: "revenue", key: "U", eventType: "", value: []byte("\xff\x00not json"),
		state: "dead", failedAt: &hourAgo, errorClass: "permanent"})
	deadD := park(t, s, parked{group: "kpi", key: "D", eventType: created, value: []byte(customerPayload("D", "Dora")),
		state: "dead", failedAt: &newYear, errorClass: "permanent"})
	retryR := park(t, s, parked{group: "revenue", key: "R", ordered: true, eventType: upd, value: []byte(customerPayload("R", "Rae")),
		state: "retrying", tier: 2, failedAt: &hourAgo, errorClass: "transient"})
	headS := park(t, s, parked{group: "revenue", key: "S", ordered: true, eventType: upd, value: []byte(customerPayload("S", "Sam")),
		state: "dead", failedAt: &hourAgo, errorClass: "transient"})
	waitS := park(t, s, parked{group: "revenue", key: "S", ordered: true, eventType: upd, value: []byte(customerPayload("S", "Sam B.")),
		state: "waiting"})

	// Listing: the dead by default, filters, paging.
	page := parkedPage(t, s, "")
	if got := parkedIDs(page); !slices.Equal(got, []int64{headK, deadU, deadD, headS}) || page.HasMore {
		t.Errorf("the dead-letter queue lists %v (has_more %v), want the dead records %v", got, page.HasMore, []int64{headK, deadU, deadD, headS})
	}
	if len(page.Data) == 4 {
		k := page.Data[0]
		if k.Group != "revenue" || k.Key != "K" || k.EventType != upd || k.EventID == nil || k.State != "dead" ||
			k.Waiting != 1 || k.Attempts != 3 || k.ErrorClass != "transient" || k.LastFailedAt == nil ||
			!k.LastFailedAt.Equal(hourAgo) || k.Edited || k.Tier != 0 || k.NotBefore != nil {
			t.Errorf("the dead head of K is listed as %+v", k)
		}
		if u := page.Data[1]; u.EventID != nil || u.EventType != "" || u.Waiting != 0 {
			t.Errorf("a record that is not an event is listed as %+v", u)
		}
	}
	for _, c := range []struct {
		query string
		ids   []int64
		more  bool
	}{
		{"?limit=2", []int64{headK, deadU}, true},
		{"?limit=2&after=" + strconv.FormatInt(deadU, 10), []int64{deadD, headS}, false},
		{"?after=" + strconv.FormatInt(headS, 10), []int64{}, false},
		{"?group=kpi", []int64{deadD}, false},
		{"?type=" + created, []int64{deadD}, false},
		{"?state=waiting", []int64{waitK, waitS}, false},
		{"?state=dead,waiting&key=K", []int64{headK, waitK}, false},
		{"?state=retrying&state=waiting&state=retrying", []int64{waitK, retryR, waitS}, false},
		{"?state=retrying,waiting,dead,skipped&group=revenue&limit=6", []int64{headK, waitK, deadU, retryR, headS, waitS}, false},
		{"?since=2024-12-31T00:00:00Z&until=2025-01-02T00:00:00Z", []int64{deadD}, false},
		{"?since=2025-01-01T12:00:00%2B00:00", []int64{headK, deadU, deadD, headS}, false},
		{"?until=2025-01-01T12:00:00Z", []int64{}, false},
		{"?group=nobody&limit=1000", []int64{}, false},
	} {
		if p := parkedPage(t, s, c.query); !slices.Equal(parkedIDs(p), c.ids) || p.HasMore != c.more {
			t.Errorf("dlq%s lists %v, has_more %v; want %v, %v", c.query, parkedIDs(p), p.HasMore, c.ids, c.more)
		}
	}
	if p := parkedPage(t, s, "?state=retrying"); len(p.Data) != 1 || p.Data[0].Tier != 2 || p.Data[0].NotBefore == nil || p.Data[0].Waiting != 0 {
		t.Errorf("a retrying record is listed as %+v, want tier 2 and when it is due", p.Data)
	}
	for _, c := range []struct{ query, field string }{
		{"?state=bogus", "state"}, {"?state=dead,", "state"}, {"?state=", "state"}, {"?state=dead&state=Dead", "state"},
		{"?since=yesterday", "since"}, {"?until=2025-01-01", "until"}, {"?since=2025-01-01T00:00:00+01:00", "since"},
		{"?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", "until"},
		{"?after=-1", "after"}, {"?after=x", "after"}, {"?limit=0", "limit"}, {"?limit=1001", "limit"}, {"?limit=1.5", "limit"},
		{"?group=a&group=b", "group"}, {"?group=%01", "group"}, {"?type=%00", "type"},
	} {
		r := s.call(t, "GET", rDLQ, rDLQ+c.query, nil)
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Contains(fields(p), c.field) {
			t.Errorf("dlq%s: the errors %v do not name %s", c.query, p.Errors, c.field)
		}
	}
	r := s.call(t, "GET", rDLQ, rDLQ+"?limit=0&after=-1&state=x", nil)
	if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"after", "limit", "state"}) {
		t.Errorf("every invalid parameter is listed; errors %v", p.Errors)
	}

	// Showing: headers, and the payload as JSON or base64.
	var rec api.ParkedRecord
	if r := s.call(t, "GET", rParked, fmt.Sprintf("/v1/dlq/%d", headK), nil); expect(t, r, http.StatusOK) {
		r.decode(t, &rec)
	}
	var headers []map[string]string
	json.Unmarshal(rec.Headers, &headers)
	if rec.ID != headK || rec.Waiting != 1 || len(headers) != 4 || headers[1]["key"] != "ce_type" || headers[1]["value"] != upd ||
		headers[3]["key"] != "tally-bin" || headers[3]["value_base64"] != "AP8=" {
		t.Errorf("the head of K is shown as %+v with headers %s", rec.Parked, rec.Headers)
	}
	if !jsonEqual(rec.Payload, customerPayload("K", "Ada")) || rec.PayloadBase64 != nil || rec.EditedPayload != nil {
		t.Errorf("the head of K shows payload %s (base64 %q, edited %s), want its JSON as it is", rec.Payload, rec.PayloadBase64, rec.EditedPayload)
	}
	rec = api.ParkedRecord{}
	if r := s.call(t, "GET", rParked, fmt.Sprintf("/v1/dlq/%d", deadU), nil); expect(t, r, http.StatusOK) {
		r.decode(t, &rec)
	}
	if rec.Payload != nil || string(rec.PayloadBase64) != "\xff\x00not json" {
		t.Errorf("a payload that is not JSON is shown as %s, base64 %q; want it in base64", rec.Payload, rec.PayloadBase64)
	}
	expect(t, s.call(t, "HEAD", rParked, fmt.Sprintf("/v1/dlq/%d", waitK), nil), http.StatusOK)
	expectProblem(t, s.call(t, "GET", rParked, "/v1/dlq/999999", nil), http.StatusNotFound, api.ProblemNotFound)
	for _, id := range []string{"abc", "0", "-1", "1.0", "99999999999999999999"} {
		r := s.call(t, "GET", rParked, "/v1/dlq/"+id, nil)
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), []string{"id"}) {
			t.Errorf("/v1/dlq/%s: the errors %v do not name the id", id, p.Errors)
		}
	}
	// The actions' paths are theirs alone: GET /v1/dlq/replay is no record.
	for _, route := range []string{rReplay, rSkip, rPurge} {
		r := s.call(t, "GET", route, route, nil)
		expectProblem(t, r, http.StatusMethodNotAllowed, api.ProblemMethod)
		if r.header.Get("Allow") != "POST" {
			t.Errorf("GET %s: Allow is %q, want POST", route, r.header.Get("Allow"))
		}
	}

	// Actions: what they refuse.
	for _, c := range []struct {
		route  string
		body   any
		fields []string
	}{
		{rReplay, obj{"ids": []int64{headK}}, []string{"actor"}},
		{rSkip, obj{"actor": " ", "ids": []int64{headK}}, []string{"actor"}},
		{rPurge, obj{"actor": "a\u0001b", "ids": []int64{headK}}, []string{"actor"}},
		{rReplay, obj{"actor": "ops"}, []string{"ids"}},
		{rSkip, obj{"actor": "ops", "all": false, "ids": []int64{}}, []string{"ids"}},
		{rPurge, obj{}, []string{"actor", "ids"}},
		{rReplay, obj{"actor": "ops", "ids": []int64{0, -1, headK}}, []string{"ids[0]", "ids[1]"}},
		{rSkip, obj{"actor": "ops", "reason": "a\u0000b", "ids": []int64{headK}}, []string{"reason"}},
		{rPurge, obj{"actor": "ops", "group": "re\u0000venue"}, []string{"group"}},
		{rReplay, obj{"actor": "ops", "since": "yesterday", "until": "2025-01-01"}, []string{"since", "until"}},
		{rSkip, obj{"actor": "ops", "since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, []string{"until"}},
		// An edit names one record, valid for its type.
		{rReplay, obj{"actor": "ops", "ids": []int64{headK, headS}, "payload": obj{"id": "K"}}, []string{"payload"}},
		{rReplay, obj{"actor": "ops", "group": "revenue", "payload": json.RawMessage(customerPayload("K", "Ada"))}, []string{"payload"}},
		{rReplay, obj{"actor": "ops", "ids": []int64{deadD}, "payload": obj{"id": "D"}}, []string{"payload"}},
		{rReplay, obj{"actor": "ops", "ids": []int64{deadD}, "payload": "just a string"}, []string{"payload"}},
		{rReplay, obj{"actor": "ops", "ids": []int64{deadU}, "payload": json.RawMessage(customerPayload("U", "Ulla"))}, []string{"payload"}},
	} {
		r := s.call(t, "POST", c.route, c.route, c.body)
		if p := expectProblem(t, r, http.StatusUnprocessableEntity, api.ProblemValidation); !slices.Equal(fields(p), c.fields) {
			t.Errorf("POST %s %v: the errors %v, want %v", c.route, c.body, p.Errors, c.fields)
		}
	}
	for _, c := range []struct {
		route string
		body  string
	}{
		{rSkip, fmt.Sprintf(`{"actor":"ops","ids":[%d],"payload":{}}`, headS)}, // only a replay edits
		{rPurge, `{"actor":"ops","ids":[1],"state":"dead"}`},
		{rReplay, `{"actor":"ops","ids":[1],"all":1}`},
		{rReplay, `{"actor":"ops","ids":[1],"payload":{"a":}}`},
	} {
		expectProblem(t, s.call(t, "POST", c.route, c.route, c.body), http.StatusBadRequest, api.ProblemMalformed)
	}
	if n := count(t, s.pool, "SELECT count(*) FROM dlq_audit"); n != 0 {
		t.Fatalf("refused actions wrote %d audit rows", n)
	}
	if n := count(t, s.pool, "SELECT count(*) FROM consumer_parked WHERE state = 'dead'"); n != 4 {
		t.Fatalf("refused actions changed the dead records: %d are left, want 4", n)
	}

	// Replay with a corrected payload: back through the first retry tier
	// of the group, audited. The Idempotency-Key is no concern of it.
	edited := `{ "id": "K", "name": "Ada (fixed)", "email": "a@b.c", "created_at": "2025-03-01T10:00:00Z", "updated_at": "2025-03-02T10:00:00Z" }`
	replay := fmt.Sprintf(`{"actor":"ada@ops","reason":"name fixed","ids":[%d],"payload":%s}`, headK, edited)
	r = s.call(t, "POST", rReplay, rReplay, replay, "Idempotency-Key", "dlq-1")
	if expectJSON(t, r, map[string]int{"replayed": 1}) && r.header.Get("Idempotent-Replayed") != "" {
		t.Error("a replay was answered from an Idempotency-Key")
	}
	compact := `{"id":"K","name":"Ada (fixed)","email":"a@b.c","created_at":"2025-03-01T10:00:00Z","updated_at":"2025-03-02T10:00:00Z"}`
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked WHERE id = $1 AND state = 'retrying' AND tier = 1
		AND attempts = 0 AND edited_value = $2`, headK, []byte(compact)); n != 1 {
		t.Errorf("the replayed head of K is not retrying in tier 1 with its corrected payload")
	}
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE topic = $1 AND key = 'K' AND headers IS NOT NULL
		AND record_key = 'K'::bytea AND payload = $2`, topics.RetryTopic("revenue", 1), []byte(compact)); n != 1 {
		t.Errorf("%d records of K with the corrected payload in the outbox for %s, want 1", n, topics.RetryTopic("revenue", 1))
	}
	if n := count(t, s.pool, `SELECT count(*) FROM dlq_audit WHERE parked_id = $1 AND action = 'replay' AND actor = 'ada@ops'
		AND reason = 'name fixed' AND group_id = 'revenue' AND key = 'K'::bytea`, headK); n != 1 {
		t.Errorf("%d audit rows of the replay, want 1", n)
	}
	r = s.call(t, "POST", rReplay, rReplay, replay, "Idempotency-Key", "dlq-1")
	expectJSON(t, r, map[string]int{"replayed": 0})
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE topic = $1`, topics.RetryTopic("revenue", 1)); n != 1 {
		t.Errorf("a second replay of a record no longer dead wrote to the outbox (%d records)", n)
	}
	rec = api.ParkedRecord{}
	if r := s.call(t, "GET", rParked, fmt.Sprintf("/v1/dlq/%d", headK), nil); expect(t, r, http.StatusOK) {
		r.decode(t, &rec)
	}
	if rec.State != "retrying" || !rec.Edited || rec.Tier != 1 || !jsonEqual(rec.EditedPayload, compact) ||
		!jsonEqual(rec.Payload, customerPayload("K", "Ada")) {
		t.Errorf("the replayed head shows %+v, payload %s, edited payload %s", rec.Parked, rec.Payload, rec.EditedPayload)
	}
	// A payload of null is no payload.
	expectJSON(t, s.call(t, "POST", rReplay, rReplay, fmt.Sprintf(`{"actor":"ops","ids":[%d,%d],"payload":null}`, waitK, retryR)),
		map[string]int{"replayed": 0})

	// Skip: resolved without being applied; the record behind it follows.
	r = s.call(t, "POST", rSkip, rSkip, obj{"actor": "ops", "key": "S", "group": "revenue"})
	expectJSON(t, r, map[string]int{"skipped": 1})
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked WHERE id = $1 AND state = 'skipped'`, headS); n != 1 {
		t.Error("the skipped head of S is not skipped")
	}
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked WHERE id = $1 AND state = 'retrying' AND tier = 1`, waitS); n != 1 {
		t.Error("the record waiting behind a skipped head is not woken through the first retry tier")
	}
	if n := count(t, s.pool, `SELECT count(*) FROM outbox WHERE topic = $1 AND key = 'S' AND headers IS NOT NULL`,
		topics.RetryTopic("revenue", 1)); n != 1 {
		t.Errorf("%d records of S in the outbox for the first retry tier, want the one woken", n)
	}
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_applied a JOIN consumer_parked p ON p.event_id = a.event_id
		WHERE p.id = $1 AND a.group_id = 'revenue'`, headS); n != 1 {
		t.Error("the event of a skipped record does not count as applied")
	}
	expectJSON(t, s.call(t, "POST", rSkip, rSkip, obj{"actor": "ops", "ids": []int64{headS, waitS, retryR}}), map[string]int{"skipped": 0})
	if p := parkedPage(t, s, "?state=skipped"); !slices.Equal(parkedIDs(p), []int64{headS}) {
		t.Errorf("the skipped records are %v, want %v", parkedIDs(p), []int64{headS})
	}

	// An action waits for a rebuild of the group to end.
	if _, err := s.pool.Exec(context.Background(), `INSERT INTO consumer_rebuilds (group_id, owner) VALUES ('kpi', 'test')`); err != nil {
		t.Fatal(err)
	}
	for _, route := range []string{rReplay, rSkip, rPurge} {
		r := s.call(t, "POST", route, route, obj{"actor": "ops", "group": "kpi"})
		if p := expectProblem(t, r, http.StatusConflict, api.ProblemConflict); !strings.Contains(p.Detail, "kpi") {
			t.Errorf("POST %s during a rebuild: the detail %q does not name the group", route, p.Detail)
		}
	}
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked WHERE id = $1 AND state = 'dead'`, deadD); n != 1 {
		t.Error("an action refused during a rebuild changed the record")
	}
	if _, err := s.pool.Exec(context.Background(), `DELETE FROM consumer_rebuilds`); err != nil {
		t.Fatal(err)
	}

	// Purge: the records go, the audit trail stays.
	expectJSON(t, s.call(t, "POST", rPurge, rPurge, obj{"actor": "ops", "reason": "junk", "ids": []int64{deadU, headS, waitS}}),
		map[string]int{"purged": 2})
	expectJSON(t, s.call(t, "POST", rPurge, rPurge, obj{"actor": "ops", "group": "kpi", "all": true}), map[string]int{"purged": 1})
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked WHERE id = ANY($1)`, []int64{deadU, headS, deadD}); n != 0 {
		t.Errorf("%d purged records are still parked", n)
	}
	if n := count(t, s.pool, `SELECT count(*) FROM consumer_parked`); n != 4 {
		t.Errorf("%d records are parked after the purges, want the 4 not dead", n)
	}
	for id, want := range map[int64][]string{deadU: {"purge"}, headS: {"skip", "purge"}, deadD: {"purge"}, headK: {"replay"}} {
		var got []string
		if err := s.pool.QueryRow(context.Background(), `SELECT array_agg(action ORDER BY id) FROM dlq_audit WHERE parked_id = $1`,
			id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("the audit trail of record %d is %v, want %v", id, got, want)
		}
	}
	expectProblem(t, s.call(t, "GET", rParked, fmt.Sprintf("/v1/dlq/%d", deadU), nil), http.StatusNotFound, api.ProblemNotFound)
	expectJSON(t, s.call(t, "POST", rPurge, rPurge, obj{"actor": "ops", "all": true}), map[string]int{"purged": 0})
	if p := parkedPage(t, s, ""); len(p.Data) != 0 || p.HasMore {
		t.Errorf("the dead-letter queue lists %v after everything dead was acted on", parkedIDs(p))
	}

	// A full page of the most records a page holds still knows whether
	// more follow.
	if _, err := s.pool.Exec(context.Background(), `INSERT INTO consumer_parked (group_id, topic, partition, "offset",
			record_time, ordered, headers, state)
		SELECT 'bulk', 'tally.customers.v1', 1, n, now(), false, '[]', 'dead' FROM generate_series(1, 1001) n`); err != nil {
		t.Fatal(err)
	}
	first := int64(count(t, s.pool, `SELECT min(id) FROM consumer_parked WHERE group_id = 'bulk'`))
	for _, c := range []struct {
		query string
		n     int
		more  bool
	}{
		{"?group=bulk&limit=1000", 1000, true},
		{"?group=bulk&limit=1000&after=" + strconv.FormatInt(first, 10), 1000, false},
		{"?group=bulk&limit=999&after=" + strconv.FormatInt(first, 10), 999, true},
		{"?group=bulk", 100, true},
	} {
		if p := parkedPage(t, s, c.query); len(p.Data) != c.n || p.HasMore != c.more {
			t.Errorf("dlq%s lists %d records, has_more %v; want %d, %v", c.query, len(p.Data), p.HasMore, c.n, c.more)
		}
	}
}

// expectJSON reports an answer that is not 200 with body want.
func expectJSON(t *testing.T, r result, want any) bool {
	t.Helper()
	if !expect(t, r, http.StatusOK) {
		return false
	}
	b, _ := json.Marshal(want)
	if !jsonEqual(r.body, string(b)) {
		t.Errorf("answered %s, want %s", r.body, b)
		return false
	}
	return true
}

// jsonEqual reports whether got and want are the same JSON value.
func jsonEqual(got []byte, want string) bool {
	var g, w any
	return json.Unmarshal(got, &g) == nil && json.Unmarshal([]byte(want), &w) == nil && reflect.DeepEqual(g, w)
}
