package money

import (
	"errors"
	"math"
	"math/big"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var (
	usd = MustCurrency("USD")
	eur = MustCurrency("EUR")
	gbp = MustCurrency("GBP")
	jpy = MustCurrency("JPY")
	cny = MustCurrency("CNY")
	inr = MustCurrency("INR")
	krw = MustCurrency("KRW")
	cad = MustCurrency("CAD")
	bhd = MustCurrency("BHD")
	clf = MustCurrency("CLF")
	uyw = MustCurrency("UYW")
)

var sentinels = []error{ErrUnknownCurrency, ErrOverflow, ErrSyntax, ErrTooManyDecimals, ErrEmpty}

type parseCase struct {
	in   string
	c    Currency
	want int64
	err  error
}

var parseCases = []parseCase{
	// The vectors from the design brief.
	{"1,234.56", usd, 123456, nil},
	{"$1,234.5", usd, 123450, nil},
	{"1234.565", usd, 0, ErrTooManyDecimals},
	{"500", jpy, 500, nil},
	{"1.234", bhd, 1234, nil},
	{"1e3", usd, 0, ErrSyntax},
	{"", usd, 0, ErrEmpty},
	{"abc", usd, 0, ErrSyntax},
	{"NaN", usd, 0, ErrSyntax},
	{"(12.00)", usd, 0, ErrSyntax},
	{"-0.01", usd, -1, nil},
	{"+5", usd, 500, nil},
	{"0.5", usd, 50, nil},
	{"-$5.00", usd, -500, nil},
	{"€5", usd, 0, ErrSyntax},

	// Spaces: only surrounding U+0020 is trimmed.
	{"   ", usd, 0, ErrEmpty},
	{"  12.34  ", usd, 1234, nil},
	{"\t12.34", usd, 0, ErrSyntax},
	{"12.34\n", usd, 0, ErrSyntax},
	{"1 000", usd, 0, ErrSyntax},
	{"- 5", usd, 0, ErrSyntax},
	{"$ 5", usd, 0, ErrSyntax},

	// Signs.
	{"-0", usd, 0, nil},
	{"-0.00", usd, 0, nil},
	{"+0", jpy, 0, nil},
	{"-", usd, 0, ErrSyntax},
	{"+", usd, 0, ErrSyntax},
	{"--5", usd, 0, ErrSyntax},
	{"+-5", usd, 0, ErrSyntax},
	{"5-", usd, 0, ErrSyntax},
	{"$-5.00", usd, 0, ErrSyntax},
	{"$+5.00", usd, 0, ErrSyntax},
	{"-$-5", usd, 0, ErrSyntax},

	// Symbols belong to one currency each ("¥" to two).
	{"US$5", usd, 500, nil},
	{"-US$1,000.01", usd, -100001, nil},
	{"US$5", eur, 0, ErrSyntax},
	{"$5", eur, 0, ErrSyntax},
	{"$5", cad, 0, ErrSyntax},
	{"€5", eur, 500, nil},
	{"£1.50", gbp, 150, nil},
	{"¥500", jpy, 500, nil},
	{"¥5.00", cny, 500, nil},
	{"₹1,000.50", inr, 100050, nil},
	{"₹1,00,000", inr, 0, ErrSyntax},
	{"₩1,000", krw, 1000, nil},
	{"£5", eur, 0, ErrSyntax},
	{"$", usd, 0, ErrSyntax},
	{"-$", usd, 0, ErrSyntax},
	{"$$5", usd, 0, ErrSyntax},
	{"5$", usd, 0, ErrSyntax},
	{"USD 5", usd, 0, ErrSyntax},

	// Thousands groups.
	{"1,234,567", usd, 123456700, nil},
	{"0,001", usd, 100, nil},
	{"007", usd, 700, nil},
	{"1,23", usd, 0, ErrSyntax},
	{"12,34,567", usd, 0, ErrSyntax},
	{",123", usd, 0, ErrSyntax},
	{"1,,234", usd, 0, ErrSyntax},
	{"1234,567", usd, 0, ErrSyntax},
	{"1,234,", usd, 0, ErrSyntax},
	{"1,2345", usd, 0, ErrSyntax},
	{"1,234.5,6", usd, 0, ErrSyntax},
	{"1.234,56", usd, 0, ErrSyntax},

	// Fractions.
	{"1.230", usd, 0, ErrTooManyDecimals},
	{"1.2", usd, 120, nil},
	{"500.", jpy, 0, ErrSyntax},
	{"500.", usd, 0, ErrSyntax},
	{"500.0", jpy, 0, ErrTooManyDecimals},
	{".5", usd, 0, ErrSyntax},
	{"1.x", usd, 0, ErrSyntax},
	{"1.23x", usd, 0, ErrSyntax},
	{"1.2.3", usd, 0, ErrSyntax},
	{"-0.001", bhd, -1, nil},
	{"1.2345", clf, 12345, nil},
	{"1.23456", clf, 0, ErrTooManyDecimals},
	{"0.0001", uyw, 1, nil},

	// Float and programming-language spellings.
	{"1E3", usd, 0, ErrSyntax},
	{"1.5e2", usd, 0, ErrSyntax},
	{"Inf", usd, 0, ErrSyntax},
	{"-Inf", usd, 0, ErrSyntax},
	{"Infinity", usd, 0, ErrSyntax},
	{"0x10", usd, 0, ErrSyntax},
	{"1_000", usd, 0, ErrSyntax},
	{"١٢٣", usd, 0, ErrSyntax}, // Arabic-Indic digits
	{"１２３", usd, 0, ErrSyntax}, // full-width digits
	{"\xff", usd, 0, ErrSyntax},

	// The int64 limits, exactly and one minor unit beyond.
	{"92233720368547758.07", usd, math.MaxInt64, nil},
	{"92,233,720,368,547,758.07", usd, math.MaxInt64, nil},
	{"92233720368547758.08", usd, 0, ErrOverflow},
	{"-92233720368547758.08", usd, math.MinInt64, nil},
	{"-$92,233,720,368,547,758.08", usd, math.MinInt64, nil},
	{"-92233720368547758.09", usd, 0, ErrOverflow},
	{"92233720368547758", usd, 9223372036854775800, nil},
	{"92233720368547759", usd, 0, ErrOverflow}, // overflows only when scaled to cents
	{"9223372036854775807", jpy, math.MaxInt64, nil},
	{"9223372036854775808", jpy, 0, ErrOverflow},
	{"-9223372036854775808", jpy, math.MinInt64, nil},
	{"-9223372036854775809", jpy, 0, ErrOverflow},
	{"000000000000000000000009223372036854775807", jpy, math.MaxInt64, nil},
	{"99999999999999999999999999", jpy, 0, ErrOverflow},
	{"922337203685477.5807", clf, math.MaxInt64, nil},
	{"-922337203685477.5808", uyw, math.MinInt64, nil},
	{"922337203685477.5808", uyw, 0, ErrOverflow},

	// With several problems, syntax beats too many decimals beats overflow.
	{"99999999999999999999999x", jpy, 0, ErrSyntax},
	{"99999999999999999999999.5", jpy, 0, ErrTooManyDecimals},
	{"1.234x", usd, 0, ErrSyntax},
}

func TestParseDecimal(t *testing.T) {
	t.Parallel()
	for _, tc := range parseCases {
		got, err := ParseDecimal(tc.in, tc.c)
		if tc.err != nil {
			if !errors.Is(err, tc.err) || got != 0 {
				t.Errorf("ParseDecimal(%q, %s) = %d, %v; want 0 and an error wrapping %v", tc.in, tc.c, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseDecimal(%q, %s) = %d, %v; want %d", tc.in, tc.c, got, err, tc.want)
		}
	}
}

func TestParseDecimalZeroCurrency(t *testing.T) {
	t.Parallel()
	if got, err := ParseDecimal("5", Currency{}); !errors.Is(err, ErrUnknownCurrency) {
		t.Errorf("ParseDecimal with the zero Currency = %d, %v; want an error wrapping ErrUnknownCurrency", got, err)
	}
}

func TestParseDecimalErrorMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		c    Currency
		want []string // substrings the message must contain
	}{
		{"1,23", usd, []string{`"1,23"`, "exactly 3 digits", "byte 1"}},
		{"12,34,567", usd, []string{"exactly 3 digits", "byte 2"}},
		{"1234,567", usd, []string{"more than 3 digits", "byte 4"}},
		{"1.230", usd, []string{`"1.230"`, "3 decimal places", "USD allows 2"}},
		{"€5", usd, []string{`"€" is not a symbol of USD`, "byte 0"}},
		{"$-5", usd, []string{"sign must come before the currency symbol"}},
		{"--5", usd, []string{"more than one sign"}},
		{"  1e3", usd, []string{`unexpected 'e' at byte 3`}},
		{"１２３", usd, []string{`expected a digit, found '１'`}},
		{"500.", jpy, []string{"'.' must be followed by a digit", "byte 3"}},
		{"9223372036854775808", jpy, []string{`"9223372036854775808"`, "in JPY"}},
		{"usd", usd, []string{`"usd"`}},
		{"(12.00)", usd, []string{"parenthesized negatives"}},
		{"5\xff", usd, []string{"invalid UTF-8 byte 0xff at byte 1"}},
	} {
		_, err := ParseDecimal(tc.in, tc.c)
		if err == nil {
			t.Errorf("ParseDecimal(%q, %s) succeeded; want an error", tc.in, tc.c)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseDecimal(%q, %s) error %q does not mention %q", tc.in, tc.c, err, w)
			}
		}
	}
}

func TestParseDecimalHugeInput(t *testing.T) {
	t.Parallel()
	// A corrupt field must not end up whole in an error message, whichever
	// error it produces.
	huge := strings.Repeat("9", 1<<20)
	for _, in := range []string{
		huge + "x",
		huge,
		"1." + huge,
		strings.Repeat("€", 1<<18),
		strings.Repeat(" ", 1<<20) + "?",
	} {
		_, err := ParseDecimal(in, usd)
		if err == nil {
			t.Errorf("ParseDecimal of a %d-byte input succeeded; want an error", len(in))
			continue
		}
		if n := len(err.Error()); n > 512 {
			t.Errorf("ParseDecimal of a %d-byte input: error message is %d bytes; want at most 512", len(in), n)
		}
	}
	// Leading zeros do not overflow, however many there are.
	if got, err := ParseDecimal(strings.Repeat("0", 1<<20)+"1.05", usd); err != nil || got != 105 {
		t.Errorf("ParseDecimal(<1 MiB of zeros>1.05, USD) = %d, %v; want 105", got, err)
	}
}

func TestQuoteTruncatesOnRuneBoundary(t *testing.T) {
	t.Parallel()
	// 63 ASCII bytes then a 3-byte rune straddling the 64-byte cut.
	s := strings.Repeat("a", 63) + "€€"
	got := quote(s)
	want := `"` + strings.Repeat("a", 63) + `"... (69 bytes)`
	if got != want {
		t.Errorf("quote(63 a's + €€) = %s; want %s (cut before the straddling rune)", got, want)
	}
}

// TestParseDecimalAllocs is not parallel: testing.AllocsPerRun counts every
// allocation in the process, including those of concurrently running tests.
func TestParseDecimalAllocs(t *testing.T) {
	for _, tc := range parseCases {
		if tc.err != nil {
			continue
		}
		n := testing.AllocsPerRun(100, func() {
			_, _ = ParseDecimal(tc.in, tc.c)
		})
		if n != 0 {
			t.Errorf("ParseDecimal(%q, %s) allocates %.0f times; want 0 on success", tc.in, tc.c, n)
		}
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		minor int64
		c     Currency
		want  string
	}{
		{-123456, usd, "-1234.56"},
		{5, jpy, "5"},
		{1, bhd, "0.001"},
		{0, usd, "0.00"},
		{0, jpy, "0"},
		{-1, usd, "-0.01"},
		{-10, usd, "-0.10"},
		{100, usd, "1.00"},
		{1, clf, "0.0001"},
		{-12345, uyw, "-1.2345"},
		{123456789, jpy, "123456789"},
		{-5, jpy, "-5"},
		{math.MaxInt64, usd, "92233720368547758.07"},
		{math.MinInt64, usd, "-92233720368547758.08"},
		{math.MinInt64, jpy, "-9223372036854775808"},
		{math.MinInt64, clf, "-922337203685477.5808"},
		{1234, Currency{}, "1234"},
	} {
		if got := Format(tc.minor, tc.c); got != tc.want {
			t.Errorf("Format(%d, %s) = %q; want %q", tc.minor, tc.c, got, tc.want)
		}
	}
}

var edgeValues = []int64{
	0, 1, -1, 9, -9, 10, -10, 99, -99, 100, -100, 101, -101, 999, 1000, 1001,
	123456789, -123456789, 1e15, -1e15,
	math.MaxInt64, math.MaxInt64 - 1, math.MinInt64, math.MinInt64 + 1,
	math.MaxInt32, math.MinInt32, math.MaxInt64 / 10, math.MinInt64 / 10,
}

func TestFormatRoundTrip(t *testing.T) {
	t.Parallel()
	for _, c := range currencies {
		for _, x := range edgeValues {
			s := Format(x, c)
			got, err := ParseDecimal(s, c)
			if err != nil || got != x {
				t.Errorf("ParseDecimal(Format(%d, %s)) = ParseDecimal(%q) = %d, %v; want %d", x, c, s, got, err, x)
			}
		}
	}
}

func TestAdd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b, want int64
		overflow   bool
	}{
		{1, 2, 3, false},
		{-1, -2, -3, false},
		{math.MaxInt64, 0, math.MaxInt64, false},
		{math.MaxInt64, 1, 0, true},
		{1, math.MaxInt64, 0, true},
		{math.MaxInt64, math.MaxInt64, 0, true},
		{math.MinInt64, 0, math.MinInt64, false},
		{math.MinInt64, -1, 0, true},
		{-1, math.MinInt64, 0, true},
		{math.MinInt64, math.MinInt64, 0, true},
		{math.MaxInt64, math.MinInt64, -1, false},
		{math.MinInt64, math.MaxInt64, -1, false},
		{math.MaxInt64 - 1, 1, math.MaxInt64, false},
		{math.MinInt64 + 1, -1, math.MinInt64, false},
	} {
		got, err := Add(tc.a, tc.b)
		if tc.overflow {
			if !errors.Is(err, ErrOverflow) {
				t.Errorf("Add(%d, %d) = %d, %v; want ErrOverflow", tc.a, tc.b, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("Add(%d, %d) = %d, %v; want %d", tc.a, tc.b, got, err, tc.want)
		}
	}
}

func TestSub(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b, want int64
		overflow   bool
	}{
		{3, 2, 1, false},
		{-3, 2, -5, false},
		{0, math.MaxInt64, -math.MaxInt64, false},
		{0, math.MinInt64, 0, true},
		{-1, math.MinInt64, math.MaxInt64, false},
		{-2, math.MaxInt64, 0, true},
		{-1, math.MaxInt64, math.MinInt64, false},
		{math.MaxInt64, -1, 0, true},
		{math.MinInt64, 1, 0, true},
		{math.MinInt64, math.MinInt64, 0, false},
		{math.MaxInt64, math.MaxInt64, 0, false},
		{math.MaxInt64, math.MinInt64, 0, true},
		{math.MinInt64, math.MaxInt64, 0, true},
	} {
		got, err := Sub(tc.a, tc.b)
		if tc.overflow {
			if !errors.Is(err, ErrOverflow) {
				t.Errorf("Sub(%d, %d) = %d, %v; want ErrOverflow", tc.a, tc.b, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("Sub(%d, %d) = %d, %v; want %d", tc.a, tc.b, got, err, tc.want)
		}
	}
}

func TestMul(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, n, want int64
		overflow   bool
	}{
		{1999, 3, 5997, false},
		{-1999, 3, -5997, false},
		{0, math.MinInt64, 0, false},
		{math.MinInt64, 0, 0, false},
		{math.MaxInt64, 1, math.MaxInt64, false},
		{math.MaxInt64, -1, -math.MaxInt64, false},
		{math.MinInt64, 1, math.MinInt64, false},
		{math.MinInt64, -1, 0, true},
		{-1, math.MinInt64, 0, true},
		{math.MaxInt64, 2, 0, true},
		{math.MinInt64, 2, 0, true},
		{math.MinInt64 / 2, 2, math.MinInt64, false},
		{math.MinInt64 / 2, -2, 0, true},
		{math.MaxInt64/2 + 1, 2, 0, true},
		{1 << 32, 1 << 31, 0, true},
		{3037000499, 3037000499, 9223372030926249001, false},
		{3037000500, 3037000500, 0, true},
		{-3037000500, 3037000500, 0, true},
	} {
		got, err := Mul(tc.a, tc.n)
		if tc.overflow {
			if !errors.Is(err, ErrOverflow) {
				t.Errorf("Mul(%d, %d) = %d, %v; want ErrOverflow", tc.a, tc.n, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("Mul(%d, %d) = %d, %v; want %d", tc.a, tc.n, got, err, tc.want)
		}
	}
}

func TestSum(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		xs       []int64
		want     int64
		overflow bool
	}{
		{nil, 0, false},
		{[]int64{5}, 5, false},
		{[]int64{1, 2, 3}, 6, false},
		{[]int64{math.MaxInt64, 1}, 0, true},
		{[]int64{math.MinInt64, -1}, 0, true},
		{[]int64{math.MaxInt64, 1, -1}, math.MaxInt64, false},
		{[]int64{math.MinInt64, -1, 1}, math.MinInt64, false},
		{[]int64{math.MaxInt64, math.MaxInt64, math.MinInt64, math.MinInt64}, -2, false},
		{[]int64{math.MaxInt64, math.MaxInt64, math.MaxInt64}, 0, true},
		{[]int64{math.MinInt64, math.MinInt64, math.MaxInt64, math.MaxInt64, 1}, -1, false},
		{[]int64{math.MinInt64, math.MinInt64, math.MaxInt64}, 0, true},
	} {
		got, err := Sum(tc.xs...)
		if tc.overflow {
			if !errors.Is(err, ErrOverflow) {
				t.Errorf("Sum(%v) = %d, %v; want ErrOverflow", tc.xs, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("Sum(%v) = %d, %v; want %d", tc.xs, got, err, tc.want)
		}
		// The result must not depend on the order of the terms.
		rev := slices.Clone(tc.xs)
		slices.Reverse(rev)
		if got2, err2 := Sum(rev...); got2 != got || (err2 == nil) != (err == nil) {
			t.Errorf("Sum(%v) = %d, %v but Sum(%v) = %d, %v; want the same result in any order", tc.xs, got, err, rev, got2, err2)
		}
	}
}

func TestParseCurrency(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code string
		exp  int
		ok   bool
	}{
		{"USD", 2, true},
		{"EUR", 2, true},
		{"JPY", 0, true},
		{"BHD", 3, true},
		{"CLF", 4, true},
		{"UYW", 4, true},
		{"UYI", 0, true},
		{"SLE", 2, true},
		{"VED", 2, true},
		{"ZWG", 2, true},
		{"XCG", 2, true},
		{"usd", 0, false},
		{"Usd", 0, false},
		{" USD", 0, false},
		{"USD ", 0, false},
		{"US", 0, false},
		{"USDX", 0, false},
		{"", 0, false},
		{"ABC", 0, false},
		{"HRK", 0, false}, // withdrawn 2023
		{"SLL", 0, false}, // replaced by SLE
		{"ZWL", 0, false}, // replaced by ZWG
		{"ANG", 0, false}, // replaced by XCG
		{"CUC", 0, false}, // withdrawn
		{"BGN", 0, false}, // replaced by EUR 2026
		{"XAU", 0, false}, // no minor unit
		{"XAG", 0, false},
		{"XPT", 0, false},
		{"XPD", 0, false},
		{"XDR", 0, false},
		{"XBA", 0, false},
		{"XBB", 0, false},
		{"XBC", 0, false},
		{"XBD", 0, false},
		{"XTS", 0, false},
		{"XXX", 0, false},
		{"XSU", 0, false},
		{"XUA", 0, false},
	} {
		c, err := ParseCurrency(tc.code)
		if !tc.ok {
			if !errors.Is(err, ErrUnknownCurrency) || !c.IsZero() {
				t.Errorf("ParseCurrency(%q) = %v, %v; want the zero Currency and ErrUnknownCurrency", tc.code, c, err)
			}
			continue
		}
		if err != nil || c.Code() != tc.code || c.String() != tc.code || c.Exponent() != tc.exp || c.IsZero() {
			t.Errorf("ParseCurrency(%q) = {%q, %d}, %v; want {%q, %d}", tc.code, c.Code(), c.Exponent(), err, tc.code, tc.exp)
		}
	}
}

func TestParseCurrencyErrorMessages(t *testing.T) {
	t.Parallel()
	_, err := ParseCurrency("usd")
	if err == nil || !strings.Contains(err.Error(), "upper case") {
		t.Errorf(`ParseCurrency("usd") error = %v; want it to say codes are upper case`, err)
	}
	_, err = ParseCurrency(strings.Repeat("u", 1<<20))
	if err == nil {
		t.Errorf("ParseCurrency of a 1 MiB code succeeded; want ErrUnknownCurrency")
	} else if n := len(err.Error()); n > 256 {
		t.Errorf("ParseCurrency of a 1 MiB code: error message is %d bytes; want at most 256", n)
	}
}

func TestMustCurrencyPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		err, _ := recover().(error)
		if !errors.Is(err, ErrUnknownCurrency) {
			t.Errorf("MustCurrency(%q) panicked with %v; want an error wrapping ErrUnknownCurrency", "XAU", err)
		}
	}()
	MustCurrency("XAU")
}

func TestZeroCurrency(t *testing.T) {
	t.Parallel()
	var c Currency
	if !c.IsZero() || c.Code() != "" || c.String() != "" || c.Exponent() != 0 {
		t.Errorf("zero Currency = {%q, %d, IsZero %t}; want {\"\", 0, IsZero true}", c.Code(), c.Exponent(), c.IsZero())
	}
	if usd.IsZero() {
		t.Errorf("USD.IsZero() = true; want false")
	}
	if usd != MustCurrency("USD") || usd == eur {
		t.Errorf("Currency == must hold exactly for equal codes")
	}
}

func TestCurrencyTable(t *testing.T) {
	t.Parallel()
	// ISO 4217 List One published 2026-01-01 has 165 distinct codes with a
	// numeric minor unit: 17 with 0 decimals, 139 with 2, 7 with 3, 2 with 4.
	wantByExp := map[int]int{0: 17, 2: 139, 3: 7, 4: 2}
	gotByExp := map[int]int{}
	for i, c := range currencies {
		if i > 0 && currencies[i-1].code >= c.code {
			t.Errorf("currencies[%d] = %s follows %s; want strictly ascending codes", i, c, currencies[i-1])
		}
		if len(c.code) != 3 || strings.Trim(c.code, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
			t.Errorf("currencies[%d] = %q; want three upper-case ASCII letters", i, c.code)
		}
		if c.exp < 0 || c.exp > 4 {
			t.Errorf("%s has exponent %d; want 0 to 4", c, c.exp)
		}
		if got, err := ParseCurrency(c.code); err != nil || got != c {
			t.Errorf("ParseCurrency(%q) = %v, %v; want the table entry", c.code, got, err)
		}
		gotByExp[c.Exponent()]++
	}
	if len(currencies) != 165 {
		t.Errorf("table has %d currencies; want 165", len(currencies))
	}
	for exp, n := range wantByExp {
		if gotByExp[exp] != n {
			t.Errorf("table has %d currencies with exponent %d; want %d", gotByExp[exp], exp, n)
		}
	}
	// The codes ISO gives an exponent other than 2, complete.
	for code, exp := range map[string]int{
		"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
		"RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
		"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
		"CLF": 4, "UYW": 4,
	} {
		if c, err := ParseCurrency(code); err != nil || c.Exponent() != exp {
			t.Errorf("ParseCurrency(%q) = %v (exponent %d), %v; want exponent %d", code, c, c.Exponent(), err, exp)
		}
	}
}

func TestSymbolsBelongToTable(t *testing.T) {
	t.Parallel()
	for _, e := range symbols {
		if _, err := ParseCurrency(e.code); err != nil {
			t.Errorf("symbol %q maps to %q: %v; want a known currency", e.sym, e.code, err)
		}
	}
}

// The fuzz oracle: an independent statement of the grammar as a regular
// expression (RE2's \d would also be ASCII-only, but [0-9] says so), and
// math/big for the value.
var (
	grammar      = regexp.MustCompile(`^ *([+-])?(US\$|\$|€|£|¥|₹|₩)?([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))? *$`)
	symbolOwners = map[string][]string{
		"$": {"USD"}, "US$": {"USD"}, "€": {"EUR"}, "£": {"GBP"},
		"¥": {"JPY", "CNY"}, "₹": {"INR"}, "₩": {"KRW"},
	}
	fuzzCurrencies = []Currency{usd, jpy, bhd, clf, eur, gbp, cny, inr, krw, cad}
	minInt64       = big.NewInt(math.MinInt64)
	maxInt64       = big.NewInt(math.MaxInt64)
)

// oracle returns what ParseDecimal(s, c) must return: the value, or the
// sentinel its error must wrap.
func oracle(s string, c Currency) (*big.Int, error) {
	if strings.Trim(s, " ") == "" {
		return nil, ErrEmpty
	}
	m := grammar.FindStringSubmatch(s)
	if m == nil {
		return nil, ErrSyntax
	}
	sign, sym, intPart, frac := m[1], m[2], m[3], m[4]
	if sym != "" && !slices.Contains(symbolOwners[sym], c.Code()) {
		return nil, ErrSyntax
	}
	if len(frac) > c.Exponent() {
		return nil, ErrTooManyDecimals
	}
	// The cleaned string: sign, digits, '.', digits.
	cleaned := strings.ReplaceAll(intPart, ",", "")
	if frac != "" {
		cleaned += "." + frac
	}
	if sign == "-" {
		cleaned = "-" + cleaned
	}
	r, ok := new(big.Rat).SetString(cleaned)
	if !ok {
		panic("oracle: big.Rat rejects " + cleaned)
	}
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(c.Exponent())), nil)
	r.Mul(r, new(big.Rat).SetInt(scale))
	if !r.IsInt() {
		panic("oracle: scaled value is not an integer: " + r.String())
	}
	v := r.Num()
	if v.Cmp(minInt64) < 0 || v.Cmp(maxInt64) > 0 {
		return nil, ErrOverflow
	}
	return v, nil
}

func FuzzParseDecimal(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.in, uint8(slices.Index(fuzzCurrencies, tc.c)))
	}
	f.Fuzz(func(t *testing.T, s string, ci uint8) {
		c := fuzzCurrencies[int(ci)%len(fuzzCurrencies)]
		got, err := ParseDecimal(s, c)

		if err != nil {
			if got != 0 {
				t.Errorf("ParseDecimal(%q, %s) = %d with error %v; want 0 on error", s, c, got, err)
			}
			if !slices.ContainsFunc(sentinels, func(e error) bool { return errors.Is(err, e) }) {
				t.Errorf("ParseDecimal(%q, %s) error %v wraps no sentinel", s, c, err)
			}
			if n := len(err.Error()); n > 512 {
				t.Errorf("ParseDecimal(%q, %s) error message is %d bytes; want at most 512", s, c, n)
			}
		} else {
			text := Format(got, c)
			again, err := ParseDecimal(text, c)
			if err != nil || again != got {
				t.Errorf("ParseDecimal(%q, %s) = %d, but ParseDecimal(Format(%d)) = ParseDecimal(%q) = %d, %v; want a round trip", s, c, got, got, text, again, err)
			}
		}

		want, wantErr := oracle(s, c)
		switch {
		case wantErr != nil && !errors.Is(err, wantErr):
			t.Errorf("ParseDecimal(%q, %s) = %d, %v; want an error wrapping %v", s, c, got, err, wantErr)
		case wantErr == nil && (err != nil || want.Int64() != got):
			t.Errorf("ParseDecimal(%q, %s) = %d, %v; want %s (big.Rat of the cleaned text times 10^%d)", s, c, got, err, want, c.Exponent())
		}
	})
}

func BenchmarkParseDecimal(b *testing.B) {
	for _, bm := range []struct {
		name, in string
		c        Currency
	}{
		{"Plain", "1234.56", usd},
		{"Grouped", "1,234,567.89", usd},
		{"SymbolMin", "-$92,233,720,368,547,758.08", usd},
		{"JPY", "500", jpy},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.in)))
			for b.Loop() {
				if _, err := ParseDecimal(bm.in, bm.c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkFormat(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Format(-123456789, usd)
	}
}
