package topics

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed schemas/*.json
var schemaFS embed.FS

const schemaBase = "https://schemas.tally.invalid/"

// Sentinel errors of Validate.
var (
	// ErrUnknownType: the catalogue has no schema for the event type (or
	// this version of it).
	ErrUnknownType = errors.New("topics: unknown event type")
	// ErrInvalidPayload: the payload is not JSON or breaks its type's schema.
	ErrInvalidPayload = errors.New("topics: payload does not match its schema")
)

// schemas holds the compiled schema of each event type. Compiling at init
// makes a broken schema file fail every test and every start, not the first
// write of that type.
var schemas = mustCompile()

// fast holds each event type's fast check (see check), compiled from the
// same files.
var fast = func() map[string]*check {
	m, err := compileFast(schemaFS)
	if err != nil {
		panic(fmt.Sprintf("topics: %v", err))
	}
	return m
}()

func mustCompile() map[string]*jsonschema.Schema {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	c.DefaultDraft(jsonschema.Draft2020)
	files, err := fs.Glob(schemaFS, "schemas/*.json")
	if err != nil {
		panic(err)
	}
	for _, f := range files {
		b, err := schemaFS.ReadFile(f)
		if err != nil {
			panic(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			panic(fmt.Sprintf("topics: schema %s: %v", f, err))
		}
		if err := c.AddResource(schemaBase+path.Base(f), doc); err != nil {
			panic(fmt.Sprintf("topics: schema %s: %v", f, err))
		}
	}
	m := make(map[string]*jsonschema.Schema)
	for _, f := range files {
		name := path.Base(f)
		if name == "common.json" {
			continue
		}
		s, err := c.Compile(schemaBase + name)
		if err != nil {
			panic(fmt.Sprintf("topics: schema %s: %v", f, err))
		}
		m[strings.TrimSuffix(name, ".json")] = s
	}
	return m
}

// Validate checks payload against the schema of event type typ. A valid
// payload costs a few microseconds (the fast check, see check); an invalid
// one is decoded and run through the general JSON Schema validator, whose
// error it returns.
func Validate(typ string, payload []byte) error {
	s, ok := schemas[typ]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownType, typ)
	}
	// The fast check accepts almost every valid payload, reading its bytes
	// once; what it refuses, the general validator decides and explains.
	if fast[typ].valid(payload) {
		return nil
	}
	// Numbers decode as float64, not json.Number: the validator checks a
	// json.Number for integer-ness with a big.Rat, which is slow. A float64
	// tells integers from fractions the same way for every amount Tally
	// writes; a value past 2^53 is still an integer there, and decoding it
	// into int64 afterwards catches what the schema would not.
	var doc any
	if err := json.Unmarshal(payload, &doc); err != nil {
		return fmt.Errorf("%w: %s: not JSON: %v", ErrInvalidPayload, typ, err)
	}
	if err := s.Validate(doc); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidPayload, typ, err)
	}
	return nil
}

// Schema returns the raw JSON Schema document of event type typ.
func Schema(typ string) ([]byte, bool) {
	if _, ok := schemas[typ]; !ok {
		return nil, false
	}
	b, err := schemaFS.ReadFile("schemas/" + typ + ".json")
	return b, err == nil
}
