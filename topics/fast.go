package topics

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// A fast check is the schema of one event type compiled for the common
// case, a valid payload: a tree of plain checks that reads the payload's
// bytes without decoding them into anything, several times cheaper than
// decoding them and running the general validator, which spent most of a
// consumer's CPU. It is sound for acceptance only: what it accepts, the
// general validator accepts (FuzzFastCheckAgrees holds it to that), and
// what it refuses goes to the general validator, which decides and words
// the error. So it may be stricter where exactness would cost (formats),
// never looser, and it refuses to compile a keyword it does not know.
type check struct {
	all      []*check // $ref and allOf: each must hold too
	types    uint8    // bits of jsonType; 0: any
	props    map[string]*check
	required []string
	closed   bool // additionalProperties: false
	items    *check
	minItems int
	minLen   int
	maxLen   int // -1: none
	pattern  *regexp.Regexp
	// atoms is pattern as a sequence of byte classes, when it is that
	// simple (see compileAtoms); nil leaves it to the regexp.
	atoms    []atom
	enum     []scalar
	hasConst bool
	constant scalar
	// requiredBit is each required property's bit in the mask of those
	// an object has.
	requiredBit map[string]uint64
	// hasOwn is false for a check that only refers to others.
	hasOwn   bool
	min, max float64 // ±Inf: none
	exclMin  float64 // -Inf: none
	format   string
}

const (
	tNull uint8 = 1 << iota
	tBool
	tInteger
	tNumber // includes integers
	tString
	tArray
	tObject
)

var typeBits = map[string]uint8{"null": tNull, "boolean": tBool, "integer": tInteger, "number": tNumber | tInteger,
	"string": tString, "array": tArray, "object": tObject}

// scalar is a const or enum value: the fast check compares scalars only.
type scalar struct {
	kind uint8 // tNull, tBool, tNumber or tString
	b    bool
	f    float64
	s    string
}

func toScalar(v any) (scalar, error) {
	switch v := v.(type) {
	case nil:
		return scalar{kind: tNull}, nil
	case bool:
		return scalar{kind: tBool, b: v}, nil
	case float64:
		return scalar{kind: tNumber, f: v}, nil
	case string:
		return scalar{kind: tString, s: v}, nil
	}
	return scalar{}, fmt.Errorf("a const or enum value that is not a scalar: %v", v)
}

// fastCompiler compiles the schema files' documents, each node once.
type fastCompiler struct {
	docs  map[string]any // file name: document
	nodes map[string]*check
}

// compileFast compiles the fast check of every event type from fsys's
// schemas/*.json.
func compileFast(fsys fs.FS) (map[string]*check, error) {
	files, err := fs.Glob(fsys, "schemas/*.json")
	if err != nil {
		return nil, err
	}
	c := &fastCompiler{docs: map[string]any{}, nodes: map[string]*check{}}
	for _, f := range files {
		b, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, err
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		c.docs[path.Base(f)] = doc
	}
	out := map[string]*check{}
	done := map[*check]*check{}
	for name := range c.docs {
		if name == "common.json" {
			continue
		}
		k, err := c.ref(name, "")
		if err != nil {
			return nil, fmt.Errorf("fast check of %s: %w", name, err)
		}
		k = collapse(k, done)
		if err := acyclic(k, map[*check]bool{}, map[*check]bool{}); err != nil {
			return nil, fmt.Errorf("fast check of %s: %w", name, err)
		}
		out[strings.TrimSuffix(name, ".json")] = k
	}
	return out, nil
}

// acyclic fails a check that refers to itself through $ref and allOf
// alone: reading a value, it would never end. (Through properties and
// items it may: each level reads a level deeper, and depth is bounded.)
// path holds the checks of the $ref and allOf chain being followed, done
// those looked at whole.
func acyclic(k *check, path, done map[*check]bool) error {
	if path[k] {
		return fmt.Errorf("a cycle of $ref or allOf")
	}
	if done[k] {
		return nil
	}
	path[k] = true
	for _, a := range k.all {
		if err := acyclic(a, path, done); err != nil {
			return err
		}
	}
	delete(path, k)
	done[k] = true
	for _, p := range k.props {
		if err := acyclic(p, map[*check]bool{}, done); err != nil {
			return err
		}
	}
	if k.items != nil {
		return acyclic(k.items, map[*check]bool{}, done)
	}
	return nil
}

// collapse replaces each check that only refers to one other by that
// other, through the tree, and marks the checks with constraints of their
// own: a $ref read twice at every level would read a payload's leaves
// 2^depth times.
func collapse(k *check, done map[*check]*check) *check {
	if c, ok := done[k]; ok {
		return c
	}
	k.hasOwn = k.types != 0 || k.props != nil || k.required != nil || k.closed || k.items != nil || k.minItems > 0 ||
		k.minLen > 0 || k.maxLen >= 0 || k.pattern != nil || k.enum != nil || k.hasConst ||
		!math.IsInf(k.min, -1) || !math.IsInf(k.max, 1) || !math.IsInf(k.exclMin, -1) || k.format != ""
	done[k] = k // a cycle of references stops here, uncollapsed
	if !k.hasOwn && len(k.all) == 1 {
		c := collapse(k.all[0], done)
		done[k] = c
		return c
	}
	for i, a := range k.all {
		k.all[i] = collapse(a, done)
	}
	for n, p := range k.props {
		k.props[n] = collapse(p, done)
	}
	if k.items != nil {
		k.items = collapse(k.items, done)
	}
	return k
}

// ref compiles the node at JSON pointer ptr of file.
func (c *fastCompiler) ref(file, ptr string) (*check, error) {
	key := file + "#" + ptr
	if k, ok := c.nodes[key]; ok {
		return k, nil // compiled, or being compiled (a cycle): filled in by then
	}
	doc, ok := c.docs[file]
	if !ok {
		return nil, fmt.Errorf("no schema file %s", file)
	}
	node := doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		if tok == "" {
			continue
		}
		m, ok := node.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: pointer %s leaves the document", file, ptr)
		}
		if node, ok = m[strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")]; !ok {
			return nil, fmt.Errorf("%s: no %s", file, ptr)
		}
	}
	k := &check{}
	c.nodes[key] = k
	if err := c.fill(k, file, node); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return k, nil
}

func (c *fastCompiler) fill(k *check, file string, node any) error {
	m, ok := node.(map[string]any)
	if !ok {
		return fmt.Errorf("a schema that is not an object")
	}
	k.maxLen, k.min, k.max, k.exclMin = -1, math.Inf(-1), math.Inf(1), math.Inf(-1)
	sub := func(v any) (*check, error) {
		s := &check{}
		return s, c.fill(s, file, v)
	}
	num := func(v any) (float64, error) {
		f, ok := v.(float64)
		if !ok {
			return 0, fmt.Errorf("a bound that is not a number: %v", v)
		}
		return f, nil
	}
	for kw, v := range m {
		var err error
		switch kw {
		case "$schema", "$id", "title", "description", "$defs":
		case "$ref":
			ref, _ := v.(string)
			f, ptr, _ := strings.Cut(ref, "#")
			if f == "" {
				f = file
			}
			var r *check
			if r, err = c.ref(f, ptr); err == nil {
				k.all = append(k.all, r)
			}
		case "allOf":
			for _, s := range v.([]any) {
				var r *check
				if r, err = sub(s); err != nil {
					break
				}
				k.all = append(k.all, r)
			}
		case "type":
			names, ok := v.([]any)
			if !ok {
				names = []any{v}
			}
			for _, n := range names {
				b, ok := typeBits[fmt.Sprint(n)]
				if !ok {
					return fmt.Errorf("type %v", n)
				}
				k.types |= b
			}
		case "properties":
			k.props = map[string]*check{}
			for name, s := range v.(map[string]any) {
				if k.props[name], err = sub(s); err != nil {
					break
				}
			}
		case "required":
			k.requiredBit = map[string]uint64{}
			for _, n := range v.([]any) {
				if _, dup := k.requiredBit[n.(string)]; dup || len(k.required) == 64 {
					return fmt.Errorf("required: a duplicate, or more than 64")
				}
				k.requiredBit[n.(string)] = uint64(1) << len(k.required)
				k.required = append(k.required, n.(string))
			}
		case "additionalProperties":
			if b, ok := v.(bool); !ok || b {
				return fmt.Errorf("additionalProperties other than false")
			}
			k.closed = true
		case "items":
			k.items, err = sub(v)
		case "minItems":
			var f float64
			f, err = num(v)
			k.minItems = int(f)
		case "minLength":
			var f float64
			f, err = num(v)
			k.minLen = int(f)
		case "maxLength":
			var f float64
			f, err = num(v)
			k.maxLen = int(f)
		case "pattern":
			if k.pattern, err = regexp.Compile(v.(string)); err == nil {
				k.atoms = compileAtoms(v.(string))
			}
		case "enum":
			if len(v.([]any)) == 0 {
				return fmt.Errorf("an empty enum, which nothing passes")
			}
			for _, e := range v.([]any) {
				var sc scalar
				if sc, err = toScalar(e); err != nil {
					break
				}
				k.enum = append(k.enum, sc)
			}
		case "const":
			k.hasConst = true
			k.constant, err = toScalar(v)
		case "minimum":
			k.min, err = num(v)
		case "maximum":
			k.max, err = num(v)
		case "exclusiveMinimum":
			k.exclMin, err = num(v)
		case "format":
			k.format = v.(string)
			if k.format != "date" && k.format != "date-time" {
				return fmt.Errorf("format %q", k.format)
			}
		default:
			return fmt.Errorf("keyword %q, which the fast check does not know", kw)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", kw, err)
		}
	}
	return nil
}

// valid reports whether payload is one JSON value that passes k, and
// nothing else. It reads the bytes once per check applied to a value (a
// $ref read again for its target), building nothing: what it cannot be
// sure of (an escaped string it would have to copy, a number past 2^53, a
// duplicate key) it refuses, for the general validator to decide.
func (k *check) valid(payload []byte) bool {
	s := scanner{b: payload}
	s.space()
	if !s.value(k) {
		return false
	}
	s.space()
	return s.i == len(s.b)
}

// scanner reads JSON at i of b.
type scanner struct {
	b     []byte
	i     int
	depth int // objects and arrays open around i
}

// maxDepth bounds the nesting the fast check reads: the schemas nest a few
// levels, and a deeper payload (json.Unmarshal refuses past 10,000; a
// recursion without bound would exhaust the stack) is the general
// validator's to refuse.
const maxDepth = 64

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value reads one value and checks it against k, and the checks k refers
// to, each reading it again from its start.
func (s *scanner) value(k *check) bool {
	start := s.i
	for j, a := range k.all {
		s.i = start
		if !s.value(a) {
			return false
		}
		if j == len(k.all)-1 && !k.hasOwn {
			return true
		}
	}
	s.i = start
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{' || c == '[':
		if s.depth == maxDepth {
			return false
		}
		s.depth++
		ok := false
		if c == '{' {
			ok = s.object(k)
		} else {
			ok = s.array(k)
		}
		s.depth--
		return ok
	case c == '"':
		str, ok := s.str()
		return ok && k.str(str)
	case c == 't':
		return s.literal("true") && k.scalar(tBool, scalar{kind: tBool, b: true})
	case c == 'f':
		return s.literal("false") && k.scalar(tBool, scalar{kind: tBool})
	case c == 'n':
		return s.literal("null") && k.scalar(tNull, scalar{kind: tNull})
	case c == '-' || c >= '0' && c <= '9':
		f, ok := s.number()
		return ok && k.number(f)
	}
	return false
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// str reads a string without escapes, of valid UTF-8 and no control
// character, and returns its content.
func (s *scanner) str() ([]byte, bool) {
	s.i++ // the quote
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// number reads a number of the JSON grammar; one that float64 cannot hold
// exactly as an integer (past 2^53) or at all is refused.
func (s *scanner) number() (float64, bool) {
	start := s.i
	if s.b[s.i] == '-' {
		s.i++
	}
	intStart := s.i
	switch {
	case s.i < len(s.b) && s.b[s.i] == '0':
		s.i++
	case s.i < len(s.b) && s.b[s.i] >= '1' && s.b[s.i] <= '9':
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
	default:
		return 0, false
	}
	intEnd := s.i
	plain := true
	if s.i < len(s.b) && s.b[s.i] == '.' {
		plain = false
		s.i++
		if !s.digits() {
			return 0, false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		plain = false
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			return 0, false
		}
	}
	if plain && intEnd-intStart <= 15 {
		var n int64
		for _, c := range s.b[intStart:intEnd] {
			n = n*10 + int64(c-'0')
		}
		if s.b[start] == '-' {
			n = -n
		}
		return float64(n), true
	}
	f, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
	if err != nil || math.Abs(f) >= 1<<53 {
		return 0, false
	}
	return f, true
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func (s *scanner) object(k *check) bool {
	if k.types != 0 && k.types&tObject == 0 {
		return false
	}
	if k.hasConst || k.enum != nil {
		return false
	}
	s.i++ // {
	var seen uint64
	s.space()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return seen == k.requiredMask()
	}
	for {
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return false
		}
		name, ok := s.str()
		if !ok {
			return false
		}
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.space()
		if bit, ok := k.requiredBit[string(name)]; ok {
			if seen&bit != 0 {
				return false // a duplicate key
			}
			seen |= bit
		}
		p, known := k.props[string(name)]
		switch {
		case known:
			if !s.value(p) {
				return false
			}
		case k.closed:
			return false
		default:
			if !s.value(anything) {
				return false
			}
		}
		if more, ok := s.next('}'); !ok || !more {
			return ok && seen == k.requiredMask()
		}
	}
}

// next reads what follows a member of an object or an array: a comma
// (more) or its end.
func (s *scanner) next(end byte) (more, ok bool) {
	s.space()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		return true, true
	case end:
		s.i++
		return false, true
	}
	return false, false
}

func (s *scanner) array(k *check) bool {
	if k.types != 0 && k.types&tArray == 0 || k.hasConst || k.enum != nil {
		return false
	}
	s.i++ // [
	items := k.items
	if items == nil {
		items = anything
	}
	n := 0
	s.space()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return n >= k.minItems
	}
	for {
		s.space()
		if !s.value(items) {
			return false
		}
		n++
		if more, ok := s.next(']'); !ok || !more {
			return ok && n >= k.minItems
		}
	}
}

// anything is the check of a value no schema constrains.
var anything = &check{maxLen: -1, min: math.Inf(-1), max: math.Inf(1), exclMin: math.Inf(-1)}

func (k *check) requiredMask() uint64 { return uint64(1)<<len(k.required) - 1 }

func (k *check) scalar(t uint8, v scalar) bool {
	if k.types != 0 && k.types&t == 0 {
		return false
	}
	return k.matches(v)
}

// matches reports whether v is k's const and one of its enum, if it has
// them.
func (k *check) matches(v scalar) bool {
	if k.hasConst && k.constant != v {
		return false
	}
	if k.enum != nil && !slices.Contains(k.enum, v) {
		return false
	}
	return true
}

func (k *check) number(f float64) bool {
	integer := f == math.Trunc(f)
	if k.types != 0 && k.types&tNumber == 0 && !(integer && k.types&tInteger != 0) {
		return false
	}
	return f >= k.min && f <= k.max && f > k.exclMin && k.matches(scalar{kind: tNumber, f: f})
}

func (k *check) str(v []byte) bool {
	if k.types != 0 && k.types&tString == 0 {
		return false
	}
	if k.minLen > 0 || k.maxLen >= 0 {
		n := utf8.RuneCount(v)
		if n < k.minLen || (k.maxLen >= 0 && n > k.maxLen) {
			return false
		}
	}
	if k.atoms != nil {
		if !matchAtoms(k.atoms, v) {
			return false
		}
	} else if k.pattern != nil && !k.pattern.Match(v) {
		return false
	}
	switch k.format {
	case "date":
		if !isDate(v) {
			return false
		}
	case "date-time":
		if !isDateTime(v) {
			return false
		}
	}
	return (!k.hasConst && k.enum == nil) || k.matches(scalar{kind: tString, s: string(v)})
}

// isDate accepts the RFC 3339 full-date, YYYY-MM-DD, of a real day.
func isDate(s []byte) bool {
	if len(s) != 10 || s[4] != '-' || s[7] != '-' || !digits(s[:4]) || !digits(s[5:7]) || !digits(s[8:]) {
		return false
	}
	y, m, d := atoi(s[:4]), atoi(s[5:7]), atoi(s[8:])
	return m >= 1 && m <= 12 && d >= 1 && d <= time.Date(y, time.Month(m)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// isDateTime accepts the usual RFC 3339 date-time: upper-case T, seconds,
// an optional fraction, Z or a ±hh:mm offset, no leap second; rarer valid
// forms are left to the general validator.
func isDateTime(s []byte) bool {
	if len(s) < 20 || s[10] != 'T' || !isDate(s[:10]) || s[13] != ':' || s[16] != ':' ||
		!digits(s[11:13]) || !digits(s[14:16]) || !digits(s[17:19]) ||
		atoi(s[11:13]) > 23 || atoi(s[14:16]) > 59 || atoi(s[17:19]) > 59 {
		return false
	}
	rest := s[19:]
	if rest[0] == '.' {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 1 {
			return false
		}
		rest = rest[i:]
	}
	if len(rest) == 1 && rest[0] == 'Z' {
		return true
	}
	return len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':' && digits(rest[1:3]) && digits(rest[4:6]) &&
		atoi(rest[1:3]) <= 23 && atoi(rest[4:6]) <= 59
}

func digits(s []byte) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(s) > 0
}

func atoi(s []byte) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// atom is a byte class repeated from min to max times (max -1: no bound).
type atom struct {
	in       [256]bool
	min, max int
}

// compileAtoms compiles a pattern of the form ^(class quantifier?)*$, a
// class being [...] of ranges and bytes (ASCII, not negated), an escaped
// byte or a plain one, a quantifier *, +, ?, {n} or {m,n}; nil for
// anything else (groups, alternations, anchors elsewhere), which the
// regexp then matches.
func compileAtoms(p string) []atom {
	if len(p) < 2 || p[0] != '^' || p[len(p)-1] != '$' || strings.HasSuffix(p, `\$`) {
		return nil
	}
	p = p[1 : len(p)-1]
	atoms := []atom{}
	for i := 0; i < len(p); {
		var a atom
		switch c := p[i]; {
		case c == '[':
			j := strings.IndexByte(p[i:], ']')
			// Refused: a negated class, and one whose ] comes first (a
			// literal ] to the regexp).
			if j < 0 || i+1 < len(p) && (p[i+1] == '^' || p[i+1] == ']') {
				return nil
			}
			set := p[i+1 : i+j]
			if strings.ContainsAny(set, "\\[") || strings.IndexFunc(set, func(r rune) bool { return r >= 0x80 }) >= 0 {
				return nil
			}
			for k := 0; k < len(set); k++ {
				lo := set[k]
				if k+2 < len(set) && set[k+1] == '-' {
					if set[k+2] < lo {
						return nil
					}
					for b := int(lo); b <= int(set[k+2]); b++ {
						a.in[b] = true
					}
					k += 2
					continue
				}
				a.in[lo] = true
			}
			i += j + 1
		case c == '\\' && i+1 < len(p) && strings.IndexByte(`.-+*?()[]{}|^$\/`, p[i+1]) >= 0:
			a.in[p[i+1]] = true
			i += 2
		case strings.IndexByte(`.+*?()[]{}|^$\`, c) >= 0 || c >= 0x80:
			return nil
		default:
			a.in[c] = true
			i++
		}
		a.min, a.max = 1, 1
		if i < len(p) {
			switch p[i] {
			case '*':
				a.min, a.max = 0, -1
				i++
			case '+':
				a.max = -1
				i++
			case '?':
				a.min = 0
				i++
			case '{':
				j := strings.IndexByte(p[i:], '}')
				if j < 0 {
					return nil
				}
				lo, hi, two := strings.Cut(p[i+1:i+j], ",")
				m, ok1 := count(lo)
				n, ok2 := count(hi)
				if !two {
					n, ok2 = m, true
				}
				if !ok1 || !ok2 || m > n {
					return nil
				}
				a.min, a.max = m, n
				i += j + 1
			}
		}
		atoms = append(atoms, a)
	}
	return atoms
}

// count reads a repetition count as the regexp does: decimal digits, no
// sign, no leading zero, at most 1000.
func count(s string) (int, bool) {
	if s == "" || len(s) > 4 || s[0] == '0' && len(s) > 1 || !digits([]byte(s)) {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n <= 1000
}

// matchAtoms matches v against atoms greedily, without backtracking: a
// match it finds is one of the regexp's; one it misses (a class that
// needed to leave a byte to the next) is refused, for the general
// validator to decide.
func matchAtoms(atoms []atom, v []byte) bool {
	i := 0
	for _, a := range atoms {
		n := 0
		for i < len(v) && a.in[v[i]] && (a.max < 0 || n < a.max) {
			i++
			n++
		}
		if n < a.min {
			return false
		}
	}
	return i == len(v)
}
