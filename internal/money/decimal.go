package money

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// symbols are the currency symbols ParseDecimal accepts, with the currency
// each stands for. A symbol is only checked against the caller's currency,
// never used to choose one, and the list is short on purpose: "$" is also the
// symbol of CAD, AUD, MXN and dozens more, and accepting it for them would
// let a USD file load into a CAD account without complaint, so "$" means USD
// only. "¥" is written for both yen and yuan, so it is accepted for either.
var symbols = [...]struct{ sym, code string }{
	{"$", "USD"},
	{"US$", "USD"},
	{"€", "EUR"},
	{"£", "GBP"},
	{"¥", "JPY"},
	{"¥", "CNY"},
	{"₹", "INR"},
	{"₩", "KRW"},
}

// maxQuote bounds how many bytes of an input an error message quotes, so a
// corrupt multi-gigabyte field cannot end up whole in a log line.
const maxQuote = 64

// ParseDecimal converts a human decimal string to integer minor units of c,
// exactly: ParseDecimal("1,234.56", USD) is 123456 and ParseDecimal("500",
// JPY) is 500.
//
// It is the boundary where text (CSV exports, form fields) becomes money, so
// it is strict: it accepts one spelling of an amount and rejects anything it
// would have to guess about. After ASCII spaces (U+0020 only) around the
// amount are trimmed, the grammar is
//
//	amount   = [sign] [symbol] integer ["." fraction]
//	sign     = "-" | "+"
//	integer  = digits | lead {"," digit digit digit}
//	lead     = 1 to 3 digits
//	fraction = 1 to c.Exponent() digits
//
// where a digit is ASCII 0-9 and leading zeros are allowed. The symbol, if
// present, must be c's: "$" or "US$" for USD, "€" for EUR, "£" for GBP, "¥"
// for JPY and CNY, "₹" for INR, "₩" for KRW; other currencies take none.
//
// Consequences worth knowing:
//
//   - More fraction digits than c.Exponent() fail with [ErrTooManyDecimals]
//     even when the extras are zeros: "1.230" is not a USD amount. Such text
//     comes from something that was not writing USD amounts (a unit price, an
//     FX rate, a float printed with %g), and accepting trailing zeros would
//     make that column valid on the rows that happen to end in 0 and invalid
//     on the rest, so a wrong feed would pass a sample and fail at random in
//     production. Judging the format, not the value, fails it on row one.
//   - A currency with exponent 0 accepts no '.' at all: "500.0" is
//     [ErrTooManyDecimals] for JPY, and "500." is [ErrSyntax] for every
//     currency, as is ".5".
//   - ',' is only a thousands separator, in groups of exactly three: "1,234"
//     is one thousand two hundred thirty-four and never 1.234, "1,23" is an
//     error, and a decimal-comma amount such as "1.234,56" fails rather than
//     being misread. Indian grouping ("₹1,00,000") is rejected too.
//   - The sign goes before the symbol ("-$5.00"). "$-5.00", "(5.00)", "5-",
//     "--5", exponents ("1e3"), "NaN", "Inf", hex, '_', inner spaces and
//     non-ASCII digits are all [ErrSyntax].
//   - "-0" and "-0.00" are 0.
//
// A failed parse returns 0 and an error wrapping [ErrEmpty], [ErrSyntax],
// [ErrTooManyDecimals], [ErrOverflow] (the value is outside int64 minor units,
// beyond ±92,233,720,368,547,758.07 for USD), or [ErrUnknownCurrency] if c is
// the zero Currency. With several problems, a syntax error is reported before
// too many decimals, and that before overflow. Messages quote at most 64 bytes
// of s and locate syntax errors by byte offset in s.
//
// ParseDecimal takes time linear in len(s) and allocates only to build an
// error.
func ParseDecimal(s string, c Currency) (int64, error) {
	if c.IsZero() {
		return 0, fmt.Errorf("%w: zero Currency for amount %s", ErrUnknownCurrency, quote(s))
	}
	lo, hi := 0, len(s)
	for lo < hi && s[lo] == ' ' {
		lo++
	}
	for hi > lo && s[hi-1] == ' ' {
		hi--
	}
	if lo == hi {
		return 0, fmt.Errorf("%w: %s", ErrEmpty, quote(s))
	}

	i := lo
	neg := s[i] == '-'
	if neg || s[i] == '+' {
		i++
	}
	symbol := false
	if i < hi && !isDigit(s[i]) {
		n, foreign := cutSymbol(s[i:hi], c)
		if foreign != "" {
			return 0, syntaxError(s, i, fmt.Sprintf("%q is not a symbol of %s", foreign, c.code))
		}
		i += n
		symbol = n > 0
	}
	if i == hi {
		return 0, syntaxError(s, i, "missing digits")
	}
	if !isDigit(s[i]) {
		switch {
		case s[i] == '(':
			return 0, syntaxError(s, i, "parenthesized negatives are not accepted, use a leading '-'")
		case s[i] != '-' && s[i] != '+':
			return 0, syntaxError(s, i, "expected a digit, found "+quoteRuneAt(s, i))
		case symbol:
			return 0, syntaxError(s, i, "the sign must come before the currency symbol")
		default:
			return 0, syntaxError(s, i, "more than one sign")
		}
	}

	// The magnitude is accumulated as uint64 against a sign-dependent limit,
	// because int64 has room for -(1<<63) but not for +(1<<63).
	acc := accumulator{limit: math.MaxInt64}
	if neg {
		acc.limit++
	}

	// groupAt is the offset of the ',' that opened the current digit group,
	// or -1 before the first ','; group counts the digits since then.
	groupAt, group := -1, 0
	for ; i < hi; i++ {
		b := s[i]
		if isDigit(b) {
			acc.push(b - '0')
			group++
			continue
		}
		if b != ',' {
			break
		}
		if groupAt >= 0 && group != 3 {
			return 0, syntaxError(s, groupAt, "',' must be followed by exactly 3 digits")
		}
		if groupAt < 0 && group > 3 {
			return 0, syntaxError(s, i, "more than 3 digits before the first ','")
		}
		groupAt, group = i, 0
	}
	if groupAt >= 0 && group != 3 {
		return 0, syntaxError(s, groupAt, "',' must be followed by exactly 3 digits")
	}

	frac := 0
	if i < hi && s[i] == '.' {
		dot := i
		for i++; i < hi && isDigit(s[i]); i++ {
			acc.push(s[i] - '0')
			frac++
		}
		if frac == 0 {
			return 0, syntaxError(s, dot, "'.' must be followed by a digit")
		}
	}
	if i < hi {
		return 0, syntaxError(s, i, "unexpected "+quoteRuneAt(s, i))
	}

	exp := int(c.exp)
	if frac > exp {
		return 0, fmt.Errorf("%w: %s has %d decimal places, %s allows %d", ErrTooManyDecimals, quote(s), frac, c.code, exp)
	}
	for ; frac < exp; frac++ {
		acc.push(0)
	}
	if acc.overflow {
		return 0, fmt.Errorf("%w: %s in %s", ErrOverflow, quote(s), c.code)
	}
	if neg {
		// Two's-complement negation, right for the magnitude 1<<63 too.
		return int64(-acc.n), nil
	}
	return int64(acc.n), nil
}

// accumulator builds the magnitude of an amount digit by digit. It records
// overflow instead of stopping the parse, so that a syntax error later in the
// input is still the one reported.
type accumulator struct {
	n, limit uint64
	overflow bool
}

func (a *accumulator) push(d byte) {
	if a.overflow || a.n > (a.limit-uint64(d))/10 {
		a.overflow = true
		return
	}
	a.n = a.n*10 + uint64(d)
}

// cutSymbol returns the length of the currency symbol at the start of s if it
// is one of c's; otherwise it returns 0 and the symbol of another currency
// found there, if any.
func cutSymbol(s string, c Currency) (n int, foreign string) {
	for _, e := range symbols {
		if !strings.HasPrefix(s, e.sym) {
			continue
		}
		if e.code == c.code {
			return len(e.sym), ""
		}
		foreign = e.sym
	}
	return 0, foreign
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

func syntaxError(s string, off int, reason string) error {
	return fmt.Errorf("%w: %s: %s at byte %d", ErrSyntax, quote(s), reason, off)
}

// quoteRuneAt names the character at s[i], so that a stray '€' or a
// full-width digit shows as itself rather than as its first byte.
func quoteRuneAt(s string, i int) string {
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size == 1 {
		return fmt.Sprintf("invalid UTF-8 byte %#02x", s[i])
	}
	return strconv.QuoteRune(r)
}

// quote quotes s for an error message, truncated to maxQuote bytes.
func quote(s string) string {
	if len(s) <= maxQuote {
		return strconv.Quote(s)
	}
	n := maxQuote
	// Back up to a rune boundary, if one is near, so the excerpt does not end
	// in half a character.
	for k := 1; k < utf8.UTFMax && !utf8.RuneStart(s[n]); k++ {
		n--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:n]), len(s))
}

// Format renders minor units of c as a plain decimal string: exactly
// c.Exponent() decimals after a '.', no grouping, no symbol, and a leading '-'
// for negatives. Format(-123456, USD) is "-1234.56", Format(5, JPY) is "5",
// and Format(1, BHD) is "0.001".
//
// The output is always accepted by [ParseDecimal], which returns minor again,
// for every int64 including math.MinInt64. The zero Currency formats as if its
// exponent were 0, since Format has no error to report it with.
func Format(minor int64, c Currency) string {
	// Work on the magnitude as uint64, which also holds -math.MinInt64.
	u := uint64(minor)
	if minor < 0 {
		u = -u
	}
	// The longest output is "-92233720368547758.08" (or the CLF and UYW
	// equivalent): 21 bytes.
	var buf [24]byte
	i := len(buf)
	for range c.exp {
		i--
		buf[i] = byte('0' + u%10)
		u /= 10
	}
	if c.exp > 0 {
		i--
		buf[i] = '.'
	}
	for {
		i--
		buf[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	if minor < 0 {
		i--
		buf[i] = '-'
	}
	return string(buf[i:])
}
