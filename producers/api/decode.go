package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// readBody reads a JSON request body, at most max bytes. It answers the
// client itself (413, 415, 400) and returns ok false when the body cannot
// be used. An empty body is allowed only when emptyOK.
func readBody(w http.ResponseWriter, r *http.Request, max int64, emptyOK bool) (body []byte, ok bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeProblem(w, r, Problem{Type: ProblemTooLarge, Status: http.StatusRequestEntityTooLarge,
			Detail: fmt.Sprintf("the body exceeds %d bytes", tooBig.Limit)})
		return nil, false
	case err != nil:
		writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest, Detail: "reading the body: " + err.Error()})
		return nil, false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if emptyOK {
			return nil, true
		}
		writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest, Detail: "the body must be a JSON object"})
		return nil, false
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		writeProblem(w, r, Problem{Type: ProblemMediaType, Status: http.StatusUnsupportedMediaType,
			Detail: "send the body as application/json"})
		return nil, false
	}
	return body, true
}

// decode unmarshals body strictly into v: one JSON object, no unknown
// fields, no trailing data, and values of the right JSON type. It answers
// 400 itself on failure.
func decode(w http.ResponseWriter, r *http.Request, body []byte, v any) bool {
	if len(body) == 0 {
		return true
	}
	if err := strictUnmarshal(body, v); err != nil {
		writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest,
			Title: "The body is not valid JSON of the expected shape", Detail: err.Error()})
		return false
	}
	return true
}

func strictUnmarshal(body []byte, v any) error {
	if b := bytes.TrimSpace(body); len(b) == 0 || b[0] != '{' {
		return errors.New("the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describe(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

// describe turns encoding/json's errors into messages about the request.
func describe(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ):
		want := typ.Type.String()
		switch {
		case strings.Contains(want, "int"):
			want = "an integer (money is in minor units, e.g. 1050 for 10.50 USD)"
		case strings.Contains(want, "string"):
			want = "a string"
		case strings.Contains(want, "[]"):
			want = "an array"
		default:
			want = "an object"
		}
		return fmt.Errorf("field %s must be %s, not a JSON %s", typ.Field, want, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the JSON body ends early")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return err
}
