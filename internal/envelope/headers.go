package envelope

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
)

// jsonHeader is one record header as JSON: a value that is valid UTF-8
// without NUL (PostgreSQL's jsonb cannot hold NUL) is kept as text, any other
// as base64.
type jsonHeader struct {
	Key       string  `json:"key"`
	Value     *string `json:"value,omitempty"`
	ValueB64  []byte  `json:"value_base64,omitempty"`
	KeyBase64 []byte  `json:"key_base64,omitempty"`
}

// MarshalHeaders encodes record headers as a JSON array of
// {"key", "value"} objects, the form PostgreSQL stores them in (outbox
// forwards, parked records): readable in SQL, and exact, since keys and
// values that are not text are kept as base64 ("key_base64",
// "value_base64"). UnmarshalHeaders is its inverse.
func MarshalHeaders(hs []kgo.RecordHeader) []byte {
	out := make([]jsonHeader, len(hs))
	for i, h := range hs {
		if isText([]byte(h.Key)) {
			out[i].Key = h.Key
		} else {
			out[i].KeyBase64 = []byte(h.Key)
		}
		if isText(h.Value) {
			v := string(h.Value)
			out[i].Value = &v
		} else {
			out[i].ValueB64 = h.Value
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		panic(fmt.Sprintf("envelope: encoding headers: %v", err)) // strings and bytes always encode
	}
	return b
}

// ErrBadHeaders is returned by UnmarshalHeaders for input MarshalHeaders
// could not have produced.
var ErrBadHeaders = errors.New("envelope: malformed stored headers")

// UnmarshalHeaders decodes what MarshalHeaders encoded.
func UnmarshalHeaders(b []byte) ([]kgo.RecordHeader, error) {
	var in []jsonHeader
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadHeaders, err)
	}
	hs := make([]kgo.RecordHeader, len(in))
	for i, h := range in {
		switch {
		case h.KeyBase64 != nil:
			hs[i].Key = string(h.KeyBase64)
		default:
			hs[i].Key = h.Key
		}
		switch {
		case h.Value != nil && h.ValueB64 != nil:
			return nil, fmt.Errorf("%w: header %q has both value and value_base64", ErrBadHeaders, hs[i].Key)
		case h.Value != nil:
			hs[i].Value = []byte(*h.Value)
		case h.ValueB64 != nil:
			hs[i].Value = h.ValueB64
		}
	}
	return hs, nil
}

// isText reports whether b can be stored as JSON text in jsonb: valid UTF-8
// without NUL.
func isText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, c := range b {
		if c == 0 {
			return false
		}
	}
	return true
}
