package topics

import (
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// merged is a node's checks with those of its $refs and allOf folded in:
// what a sample must satisfy.
type merged struct {
	types    uint8
	props    map[string][]*check
	required []string
	leaves   []*check
}

func merge(k *check, m *merged) {
	m.leaves = append(m.leaves, k)
	if k.types != 0 {
		if m.types == 0 {
			m.types = k.types
		} else {
			m.types &= k.types
		}
	}
	for n, p := range k.props {
		m.props[n] = append(m.props[n], p)
	}
	m.required = append(m.required, k.required...)
	for _, a := range k.all {
		merge(a, m)
	}
}

// value is sc as json.Unmarshal decodes it.
func (sc scalar) value() any {
	switch sc.kind {
	case tBool:
		return sc.b
	case tNumber:
		return sc.f
	case tString:
		return sc.s
	}
	return nil
}

// candidates are the scalars a sample is made of: the first that passes
// every check of its node is taken.
var candidates = []any{"2025-03-01T09:00:00Z", "2025-03-01", "2025-03", "USD", "open", "c1", "1.00", "ada@example.com",
	float64(0), float64(1), float64(100), float64(-1), true, nil}

// sample makes a payload that ks, all together, accept.
func sample(t *testing.T, ks ...*check) any {
	t.Helper()
	m := &merged{props: map[string][]*check{}}
	for _, k := range ks {
		merge(k, m)
	}
	passes := func(v any) bool {
		for _, l := range m.leaves {
			if !l.valid(marshal(v)) {
				return false
			}
		}
		return true
	}
	for _, l := range m.leaves {
		if v := l.constant.value(); l.hasConst && passes(v) {
			return v
		}
		for _, e := range l.enum {
			if passes(e.value()) {
				return e.value()
			}
		}
	}
	if m.types == 0 || m.types&tObject != 0 {
		obj := map[string]any{}
		names := append(slices.Sorted(func(yield func(string) bool) {
			for n := range m.props {
				if !yield(n) {
					return
				}
			}
		}), m.required...)
		for _, n := range names {
			if _, done := obj[n]; !done {
				obj[n] = sample(t, m.props[n]...)
			}
		}
		if passes(obj) {
			return obj
		}
	}
	if m.types&tArray != 0 {
		var items []*check
		for _, l := range m.leaves {
			if l.items != nil {
				items = append(items, l.items)
			}
		}
		arr := []any{sample(t, items...)}
		if passes(arr) {
			return arr
		}
	}
	for _, c := range candidates {
		if passes(c) {
			return c
		}
	}
	t.Fatalf("no sample passes a node of types %b", m.types)
	return nil
}

// samples makes a valid payload of every event type, which both the fast
// check and the general validator must accept.
func samples(t *testing.T) map[string]any {
	t.Helper()
	out := map[string]any{}
	for typ, k := range fast {
		v := sample(t, k)
		if !k.valid(marshal(v)) {
			t.Fatalf("%s: the fast check refuses its own sample %v", typ, v)
		}
		if err := schemas[typ].Validate(v); err != nil {
			t.Fatalf("%s: the general validator refuses the sample %v: %v", typ, v, err)
		}
		out[typ] = v
	}
	return out
}

// replacements are what a payload's values are swapped for.
var replacements = []any{nil, true, false, float64(0), float64(-1), float64(1.5), float64(1e300), math.MaxInt64 * 2.0,
	"", "x", "USD", "usd", "2025-02-30", "2025-03-01", "2025-03-01T09:00:00Z", "2025-03-01T24:00:00Z",
	"2025-03-01t09:00:00z", "2025-03-01T09:00:00+01:00", "2025-03", "-1.5", "a.b_c", "é", map[string]any{}, []any{},
	[]any{map[string]any{}}, map[string]any{"x": float64(1)}}

// mutations calls fn with copies of v, each changed in one place: a value
// replaced, a key deleted, an unknown key added.
func mutations(v any, fn func(any)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			for _, r := range replacements {
				c := clone(v).(map[string]any)
				c[k] = r
				fn(c)
			}
			c := clone(v).(map[string]any)
			delete(c, k)
			fn(c)
			mutations(e, func(m any) {
				c := clone(v).(map[string]any)
				c[k] = m
				fn(c)
			})
		}
		c := clone(v).(map[string]any)
		c["unexpected"] = "x"
		fn(c)
	case []any:
		for i, e := range v {
			mutations(e, func(m any) {
				c := clone(v).([]any)
				c[i] = m
				fn(c)
			})
		}
		fn(append(clone(v).([]any), clone(v).([]any)...))
		fn([]any{})
	}
}

func marshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func clone(v any) any {
	b, _ := json.Marshal(v)
	var c any
	_ = json.Unmarshal(b, &c)
	return c
}

// TestFastCheckIsSound holds the fast check to what makes it safe: every
// payload it accepts, of every mutation of every type's sample, the
// general validator accepts too. And it refuses what the general
// validator accepts (which costs time, not correctness) only where it
// means to: a lower-case date-time and a number past 2^53.
func TestFastCheckIsSound(t *testing.T) {
	t.Parallel()
	tried, stricter := 0, 0
	for typ, v := range samples(t) {
		mutations(v, func(m any) {
			tried++
			b := marshal(m)
			fastOK, err := fast[typ].valid(b), schemas[typ].Validate(m)
			if fastOK && err != nil {
				t.Errorf("%s: the fast check accepts what the general validator refuses (%v):\n%s", typ, err, b)
			}
			if !fastOK && err == nil {
				stricter++
				if !strings.Contains(string(b), "t09:00:00z") && !strings.Contains(string(b), "e+300") &&
					!strings.Contains(string(b), "18446744073709552000") {
					t.Errorf("%s: the fast check refuses a payload the general validator accepts:\n%s", typ, b)
				}
			}
		})
	}
	if tried < 10000 {
		t.Errorf("only %d mutations tried", tried)
	}
	t.Logf("%d mutations, %d refused by the fast check alone", tried, stricter)
}

// FuzzFastCheckAgrees looks for payloads, of any shape, that the fast
// check accepts and the general validator refuses.
func FuzzFastCheckAgrees(f *testing.F) {
	types := slices.Sorted(func(yield func(string) bool) {
		for typ := range fast {
			if !yield(typ) {
				return
			}
		}
	})
	t := &testing.T{}
	for i, typ := range types {
		b, err := json.Marshal(sample(t, fast[typ]))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, i uint8, payload []byte) {
		typ := types[int(i)%len(types)]
		if !fast[typ].valid(payload) {
			return
		}
		var doc any
		if err := json.Unmarshal(payload, &doc); err != nil {
			t.Fatalf("%s: the fast check accepts what is not JSON (%v):\n%q", typ, err, payload)
		}
		if err := schemas[typ].Validate(doc); err != nil {
			t.Fatalf("%s: the fast check accepts what the general validator refuses (%v):\n%s", typ, err, payload)
		}
	})
}

// BenchmarkValidate validates a payload of an invoice event with five
// lines, as consumers do with each record.
func BenchmarkValidate(b *testing.B) {
	payload := []byte(`{"id":"inv_0001","customer_id":"cus_0001","currency":"USD","status":"open","issued_at":"2025-01-01","due_at":"2025-01-31",
		"lines":[` + strings.Repeat(`{"description":"Plan","amount":1000,"quantity":1,"total":1000,"service_period":{"start":"2025-01-01","end":"2025-12-31"}},`, 4) +
		`{"description":"Plan","amount":1000,"quantity":1,"total":1000}],
		"subtotal":5000,"discount":0,"tax":0,"total":5000,"amount_paid":0,"amount_due":5000,
		"created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z"}`)
	for b.Loop() {
		if err := Validate("tally.invoice.updated.v1", payload); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAtomsMatchLikeTheRegexp checks the byte-class matcher against the
// regexp on the schemas' simple patterns and a few more, over strings made
// of their alphabets: it may refuse a match (it does not backtrack), never
// accept a non-match.
func TestAtomsMatchLikeTheRegexp(t *testing.T) {
	t.Parallel()
	patterns := []string{`^[a-z][a-z0-9_.]*$`, `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`, `^[A-Z]{3}$`, `^[0-9]+[0-9]$`,
		`^a?b+c*$`, `^x\.y{2,3}$`, `^[-a]{1,2}$`}
	for _, p := range patterns {
		atoms := compileAtoms(p)
		if atoms == nil {
			t.Fatalf("%s did not compile to atoms", p)
		}
		re := regexp.MustCompile(p)
		inputs := []string{"", "a", "A", "USD", "usd", "US", "USDX", "a.b_c", "a-b", "9", "99", "-", "--a", "ab", "abbc", "xyy", "x.yy",
			"x.yyy", "x.yyyy", "é", "a\n", strings.Repeat("a", 64), strings.Repeat("a", 65)}
		for _, in := range inputs {
			if got, want := matchAtoms(atoms, []byte(in)), re.MatchString(in); got && !want {
				t.Errorf("%s: the atoms match %q, the regexp does not", p, in)
			}
		}
	}
	for _, p := range []string{`^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$`, `^-?[0-9]+(\.[0-9]+)?$`, `^[^a]$`, `a$`, `^a|b$`,
		// Read otherwise by the regexp: literal braces, a ] first in a
		// class, an escape in a class.
		`^a{01}$`, `^a{+1}$`, `^a{-1,2}$`, `^a{1,2000}$`, `^[]?a[b]$`, `^[!-\x30]$`, `^[a\]]$`} {
		if compileAtoms(p) != nil {
			t.Errorf("%s compiled to atoms; it is for the regexp", p)
		}
	}
	if !matchAtoms(compileAtoms(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`), []byte("inv_2025-03:01.a")) {
		t.Error("an id does not match the id pattern's atoms")
	}
}

// BenchmarkValidateSale validates a sale's payload, as an import does with
// each row.
func BenchmarkValidateSale(b *testing.B) {
	payload := []byte(`{"id":"sal_01JQ8Z7Y6X5W4V3T2S1R0Q9P8N","customer_id":"cus_0001","currency":"USD","amount":1999,"quantity":1,` +
		`"product":"Plan","date":"2025-03-01","refunded_amount":0,"status":"active","external_id":"row-1","version":1,` +
		`"created_at":"2025-03-01T09:00:00Z","updated_at":"2025-03-01T09:00:00Z"}`)
	for b.Loop() {
		if err := Validate("tally.sale.created.v1", payload); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDeepNestingGoesToTheGeneralValidator: the fast check reads a bounded
// depth, so a payload nested past it (valid JSON or not, closed or not)
// costs it no stack, and what json.Unmarshal refuses it never accepts.
func TestDeepNestingGoesToTheGeneralValidator(t *testing.T) {
	t.Parallel()
	base := `{"id":"c","name":"n","email":"a@b","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","x":`
	for name, payload := range map[string]string{
		"past json's limit":   base + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + "}",
		"unclosed, 1 MiB":     base + strings.Repeat(`{"x":[`, 1<<20/6),
		"within the bound":    base + strings.Repeat("[", 40) + strings.Repeat("]", 40) + "}",
		"just past the bound": base + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + "}",
	} {
		ok := fast["tally.customer.created.v1"].valid([]byte(payload))
		var doc any
		if ok && json.Unmarshal([]byte(payload), &doc) != nil {
			t.Errorf("%s: the fast check accepts what json.Unmarshal refuses", name)
		}
		if want := name == "within the bound"; ok != want {
			t.Errorf("%s: the fast check says %v, want %v", name, ok, want)
		}
	}
	if err := Validate("tally.customer.created.v1", []byte(base+strings.Repeat("[", 10001)+strings.Repeat("]", 10001)+"}")); err == nil {
		t.Error("Validate accepts a payload json.Unmarshal refuses")
	}
}

// TestFastCheckRefusesToCompileWhatItCannotHonour: an unknown keyword, an
// empty enum (which nothing passes) and a cycle of references either fail
// to compile or compile to a check that refuses.
func TestFastCheckRefusesToCompileWhatItCannotHonour(t *testing.T) {
	t.Parallel()
	for name, schema := range map[string]string{
		"unknown keyword": `{"oneOf": [{"type": "string"}]}`,
		"empty enum":      `{"enum": []}`,
	} {
		fsys := fstest.MapFS{"schemas/t.json": {Data: []byte(schema)}}
		if _, err := compileFast(fsys); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
	for _, schema := range []string{
		`{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}`,
		`{"$defs": {"a": {"type": "object", "$ref": "#/$defs/b"}, "b": {"minProperties": 0, "allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}`,
	} {
		if _, err := compileFast(fstest.MapFS{"schemas/t.json": {Data: []byte(schema)}}); err == nil {
			t.Errorf("a cycle of references compiled: %s", schema)
		}
	}
	// A recursive schema through properties compiles: each level is
	// deeper in the payload.
	tree := `{"$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"}`
	k, err := compileFast(fstest.MapFS{"schemas/t.json": {Data: []byte(tree)}})
	if err != nil {
		t.Fatalf("a tree: %v", err)
	}
	if !k["t"].valid([]byte(`{"child": {"child": {}}}`)) || k["t"].valid([]byte(`{"child": {"child": 1}}`)) {
		t.Error("the tree's check is wrong")
	}
}
