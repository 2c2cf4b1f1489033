package envelope_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-dev/tally/internal/envelope"
)

func sample() envelope.Event {
	return envelope.Event{
		ID:            uuid.MustParse("01936c6f-8a7b-7c3e-9f2d-4a5b6c7d8e9f"),
		Type:          "tally.invoice.created.v1",
		Source:        "/tally/api",
		Subject:       "inv-1",
		Time:          time.Date(2025, 1, 2, 3, 4, 5, 678900000, time.UTC),
		Sequence:      3,
		CorrelationID: "corr-1",
		CausationID:   "cause-1",
		TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Data:          []byte(`{"id":"inv-1"}`),
	}
}

func header(r *kgo.Record, k string) (string, int) {
	var v string
	n := 0
	for _, h := range r.Headers {
		if h.Key == k {
			v, n = string(h.Value), n+1
		}
	}
	return v, n
}

func TestRecordCarriesTheBinaryBinding(t *testing.T) {
	t.Parallel()
	e := sample()
	r := e.Record("tally.invoices.v1")
	if r.Topic != "tally.invoices.v1" || string(r.Key) != "inv-1" || string(r.Value) != `{"id":"inv-1"}` {
		t.Fatalf("record topic %q key %q value %q: the key must be the subject and the value the payload", r.Topic, r.Key, r.Value)
	}
	want := map[string]string{
		"ce_specversion":   "1.0",
		"ce_id":            "01936c6f-8a7b-7c3e-9f2d-4a5b6c7d8e9f",
		"ce_source":        "/tally/api",
		"ce_type":          "tally.invoice.created.v1",
		"ce_time":          "2025-01-02T03:04:05.6789Z",
		"ce_subject":       "inv-1",
		"content-type":     "application/json",
		"ce_correlationid": "corr-1",
		"ce_causationid":   "cause-1",
		"ce_sequence":      "3",
		"traceparent":      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}
	for k, v := range want {
		got, n := header(r, k)
		if n != 1 || got != v {
			t.Errorf("header %s = %q (%d times), want %q once", k, got, n, v)
		}
	}
	if len(r.Headers) != len(want) {
		t.Errorf("%d headers, want %d", len(r.Headers), len(want))
	}
}

func TestOptionalHeadersAreOmittedWhenEmpty(t *testing.T) {
	t.Parallel()
	e := sample()
	e.CausationID, e.TraceParent = "", ""
	r := e.Record("t")
	for _, k := range []string{"ce_causationid", "traceparent"} {
		if _, n := header(r, k); n != 0 {
			t.Errorf("empty %s was sent as a header", k)
		}
	}
	got, err := envelope.Decode(r)
	if err != nil {
		t.Fatalf("decoding an event without optional headers: %v", err)
	}
	if got.CausationID != "" || got.TraceParent != "" {
		t.Errorf("decoded absent optional headers as %q, %q", got.CausationID, got.TraceParent)
	}
}

func TestDecodeRoundTrips(t *testing.T) {
	t.Parallel()
	e := sample()
	r := e.Record("t")
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: "x-other", Value: []byte("ignored")})
	got, err := envelope.Decode(r)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != e.ID || got.Type != e.Type || got.Source != e.Source || got.Subject != e.Subject ||
		!got.Time.Equal(e.Time) || got.Sequence != e.Sequence || got.CorrelationID != e.CorrelationID ||
		got.CausationID != e.CausationID || got.TraceParent != e.TraceParent || string(got.Data) != string(e.Data) {
		t.Errorf("decode(record(e)) = %+v, want %+v", got, e)
	}
	r.Value[0] = 'X'
	if got.Data[0] == 'X' {
		t.Error("Decode kept a reference to the record's value; it must copy")
	}
}

func TestDecodeRejectsMalformedRecords(t *testing.T) {
	t.Parallel()
	set := func(k, v string) func(*kgo.Record) {
		return func(r *kgo.Record) {
			for i := range r.Headers {
				if r.Headers[i].Key == k {
					r.Headers[i].Value = []byte(v)
				}
			}
		}
	}
	drop := func(k string) func(*kgo.Record) {
		return func(r *kgo.Record) {
			hs := r.Headers[:0]
			for _, h := range r.Headers {
				if h.Key != k {
					hs = append(hs, h)
				}
			}
			r.Headers = hs
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*kgo.Record)
		want error
	}{
		{"no id", drop("ce_id"), envelope.ErrMissingHeader},
		{"no type", drop("ce_type"), envelope.ErrMissingHeader},
		{"no source", drop("ce_source"), envelope.ErrMissingHeader},
		{"no time", drop("ce_time"), envelope.ErrMissingHeader},
		{"no subject", drop("ce_subject"), envelope.ErrMissingHeader},
		{"no sequence", drop("ce_sequence"), envelope.ErrMissingHeader},
		{"no specversion", drop("ce_specversion"), envelope.ErrMissingHeader},
		{"no correlation", drop("ce_correlationid"), envelope.ErrMissingHeader},
		{"spec 0.3", set("ce_specversion", "0.3"), envelope.ErrBadHeader},
		{"id not a uuid", set("ce_id", "abc"), envelope.ErrBadHeader},
		{"id without dashes", set("ce_id", "01936c6f8a7b7c3e9f2d4a5b6c7d8e9f"), envelope.ErrBadHeader},
		{"nil id", set("ce_id", "00000000-0000-0000-0000-000000000000"), envelope.ErrBadHeader},
		{"bad time", set("ce_time", "yesterday"), envelope.ErrBadHeader},
		{"sequence zero", set("ce_sequence", "0"), envelope.ErrBadHeader},
		{"sequence signed", set("ce_sequence", "+3"), envelope.ErrBadHeader},
		{"sequence padded", set("ce_sequence", "03"), envelope.ErrBadHeader},
		{"sequence text", set("ce_sequence", "three"), envelope.ErrBadHeader},
		{"type with spaces", set("ce_type", "tally invoice"), envelope.ErrBadHeader},
		{"xml content", set("content-type", "application/xml"), envelope.ErrBadHeader},
		{"key differs from subject", func(r *kgo.Record) { r.Key = []byte("other") }, envelope.ErrBadHeader},
		{"control character", set("ce_subject", "inv\n1"), envelope.ErrBadHeader},
		{"not utf-8", set("ce_source", "\xff"), envelope.ErrBadHeader},
		{"duplicate id", func(r *kgo.Record) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: "ce_id", Value: []byte("01936c6f-8a7b-7c3e-9f2d-4a5b6c7d8e90")})
		}, envelope.ErrDuplicateHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := sample()
			r := e.Record("t")
			tc.edit(r)
			_, err := envelope.Decode(r)
			if !errors.Is(err, tc.want) || !errors.Is(err, envelope.ErrInvalid) {
				t.Errorf("Decode error %v, want one wrapping %v and ErrInvalid", err, tc.want)
			}
		})
	}
}

func TestContentTypeMayCarryParameters(t *testing.T) {
	t.Parallel()
	e := sample()
	r := e.Record("t")
	for i := range r.Headers {
		if r.Headers[i].Key == "content-type" {
			r.Headers[i].Value = []byte("application/json; charset=utf-8")
		}
	}
	if _, err := envelope.Decode(r); err != nil {
		t.Errorf("application/json with a charset rejected: %v", err)
	}
}

func TestErrorsDoNotEchoHugeValues(t *testing.T) {
	t.Parallel()
	e := sample()
	r := e.Record("t")
	for i := range r.Headers {
		if r.Headers[i].Key == "ce_time" {
			r.Headers[i].Value = []byte(strings.Repeat("9", 1<<20))
		}
	}
	_, err := envelope.Decode(r)
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("a 1 MiB header gave an error of %d bytes; errors must stay short", len(err.Error()))
	}
}

func TestNewIDIsVersion7AndOrdered(t *testing.T) {
	t.Parallel()
	a, b := envelope.NewID(), envelope.NewID()
	if a.Version() != 7 || b.Version() != 7 {
		t.Fatalf("ids are versions %d and %d, want 7", a.Version(), b.Version())
	}
	if a.String() >= b.String() {
		t.Errorf("a later id %s does not sort after %s", b, a)
	}
}

func FuzzDecode(f *testing.F) {
	e := sample()
	base := e.Record("t")
	f.Add([]byte("inv-1"), "ce_sequence", []byte("3"), []byte(`{}`))
	f.Add([]byte("inv-1"), "ce_time", []byte("2025-01-02T03:04:05Z"), []byte(`{"a":1}`))
	f.Add([]byte(""), "ce_id", []byte("not-a-uuid"), []byte(nil))
	f.Add([]byte("x"), "ce_subject", []byte("x"), []byte("\xff"))
	f.Fuzz(func(t *testing.T, key []byte, hk string, hv []byte, value []byte) {
		r := &kgo.Record{Key: key, Value: value, Headers: append([]kgo.RecordHeader(nil), base.Headers...)}
		replaced := false
		for i := range r.Headers {
			if r.Headers[i].Key == hk {
				r.Headers[i].Value = hv
				replaced = true
			}
		}
		if !replaced {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: hk, Value: hv})
		}
		got, err := envelope.Decode(r)
		if err != nil {
			if !errors.Is(err, envelope.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// Whatever decodes must survive a round trip unchanged: the decoder
		// accepts only what the encoder could have produced.
		again, err := envelope.Decode(got.Record("t"))
		if err != nil {
			t.Fatalf("re-decoding a decoded event: %v", err)
		}
		if again.ID != got.ID || again.Sequence != got.Sequence || again.Subject != got.Subject ||
			!again.Time.Equal(got.Time) || again.Type != got.Type || string(again.Data) != string(got.Data) {
			t.Fatalf("round trip changed the event: %+v vs %+v", again, got)
		}
	})
}

func TestDerivedIDIsAStableUUIDv7(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123_456_789, time.UTC)
	a := envelope.DerivedID(at, "revenue", "0191c2d4-0000-7000-8000-000000000001", "0")
	if b := envelope.DerivedID(at, "revenue", "0191c2d4-0000-7000-8000-000000000001", "0"); a != b {
		t.Errorf("the same parts gave %s, then %s", a, b)
	}
	if a.Version() != 7 || a.Variant() != uuid.RFC4122 {
		t.Errorf("%s: version %d, variant %v, want a UUIDv7", a, a.Version(), a.Variant())
	}
	if sec, nsec := a.Time().UnixTime(); time.Unix(sec, nsec).UnixMilli() != at.UnixMilli() {
		t.Errorf("%s carries %v, want %v", a, time.Unix(sec, nsec).UTC(), at)
	}
	for _, parts := range [][]string{
		{"revenue", "0191c2d4-0000-7000-8000-000000000001", "1"},
		{"kpi", "0191c2d4-0000-7000-8000-000000000001", "0"},
		{"revenue0191c2d4-0000-7000-8000-000000000001", "", "0"},
	} {
		if envelope.DerivedID(at, parts...) == a {
			t.Errorf("%q gave the id of other parts", parts)
		}
	}
}
