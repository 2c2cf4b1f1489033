package money

import (
	"fmt"
	"slices"
	"strings"
)

// Currency is an ISO 4217 currency: its alphabetic code and minor-unit exponent.
//
// Non-zero values come only from [ParseCurrency] and [MustCurrency], so every
// non-zero Currency is one of the package's table entries and two Currency
// values are equal with == exactly when their codes are equal.
//
// The zero Currency is "no currency": [Currency.IsZero] reports it, its code
// is empty, and [ParseDecimal] rejects it with [ErrUnknownCurrency] rather
// than guessing an exponent.
type Currency struct {
	code string
	exp  int8
}

// ParseCurrency returns the currency whose ISO 4217 alphabetic code is code.
//
// code must be exactly an upper-case three-letter code that is current in
// ISO 4217 List One and has a minor unit. Anything else fails with an error
// wrapping [ErrUnknownCurrency], notably:
//
//   - lower or mixed case ("usd"): there is one spelling, so that a code read
//     from a file can be compared, keyed and joined on as is;
//   - surrounding spaces (" USD"): trim at the boundary that introduced them;
//   - withdrawn codes (HRK, ANG, BGN, ...): amounts in them are historical and
//     need a deliberate conversion, not a silent pass;
//   - codes without a minor unit (XAU, XAG, XPT, XPD, XDR, XSU, XUA, XBA to
//     XBD, XTS, XXX): they have no integer amounts.
func ParseCurrency(code string) (Currency, error) {
	if c, ok := lookupCurrency(code); ok {
		return c, nil
	}
	// The length check keeps ToUpper from copying a pathologically long input.
	if len(code) == 3 {
		if _, ok := lookupCurrency(strings.ToUpper(code)); ok {
			return Currency{}, fmt.Errorf("%w: %s (codes are upper case)", ErrUnknownCurrency, quote(code))
		}
	}
	return Currency{}, fmt.Errorf("%w: %s", ErrUnknownCurrency, quote(code))
}

// MustCurrency is like [ParseCurrency] but panics if code is not a known
// currency. It is meant for tests and package-level variables, where the code
// is a literal and a typo should fail at startup.
func MustCurrency(code string) Currency {
	c, err := ParseCurrency(code)
	if err != nil {
		panic(err)
	}
	return c
}

// lookupCurrency binary-searches the table; it does not allocate.
func lookupCurrency(code string) (Currency, bool) {
	if len(code) != 3 {
		return Currency{}, false
	}
	i, ok := slices.BinarySearchFunc(currencies[:], code, func(c Currency, code string) int {
		return strings.Compare(c.code, code)
	})
	if !ok {
		return Currency{}, false
	}
	return currencies[i], true
}

// Code returns the ISO 4217 alphabetic code, such as "USD", or "" for the
// zero Currency.
func (c Currency) Code() string { return c.code }

// Exponent returns the number of decimal places of c's minor unit: n minor
// units are n / 10^Exponent() major units. It is 0 for JPY, 2 for USD, 3 for
// BHD and 4 for CLF and UYW, and 0 for the zero Currency.
//
// The value is ISO's, which is not always display practice: ISO gives HUF
// and IDR two decimals although prices are shown in whole units, and MGA and
// MRU two although their subunits are fifths. Amounts are kept at ISO's
// exponent because bank and payment formats (ISO 20022 among them) state
// amounts against it; how many decimals to show a person is a presentation
// decision.
func (c Currency) Exponent() int { return int(c.exp) }

// IsZero reports whether c is the zero Currency, which is not a currency.
func (c Currency) IsZero() bool { return c.code == "" }

// String returns the code, so a Currency prints as "USD" with %v and %s.
func (c Currency) String() string { return c.code }
