// Package money represents amounts of money as integer counts of a currency's
// minor unit (cents of USD, yen, fils of BHD) and converts them to and from
// decimal text exactly.
//
// An amount is a plain int64 that the caller pairs with a [Currency]. There is
// deliberately no floating point anywhere: a float64 cannot hold 0.10, and a
// revenue ledger must be right to the cent. There is also no Money struct: an
// int64 stores, sorts and sums as itself, and the currency usually travels in
// a column or field of its own.
//
// The range is that of int64 minor units, ±92,233,720,368,547,758.07 for a
// two-decimal currency and ±922,337,203,685,477.5807 for CLF and UYW (the
// negative limit is one minor unit further). Every operation that could leave
// it ([ParseDecimal], [Add], [Sub], [Mul], [Sum]) returns [ErrOverflow]
// instead of wrapping around.
//
// Every error the package returns wraps one of its sentinel errors, so callers
// branch with [errors.Is]; the message adds which input was wrong and why.
package money

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

var (
	// ErrUnknownCurrency means a code is not a current ISO 4217 code with a
	// minor unit (see [ParseCurrency]), or the zero [Currency] was used where
	// a currency is required.
	ErrUnknownCurrency = errors.New("money: unknown currency")

	// ErrOverflow means the exact result does not fit in int64 minor units.
	// Nothing is clamped or wrapped: the operation has no result.
	ErrOverflow = errors.New("money: amount overflows int64 minor units")

	// ErrSyntax means text is not an amount in the grammar of
	// [ParseDecimal]. The wrapping error gives the byte offset and reason.
	ErrSyntax = errors.New("money: invalid decimal amount")

	// ErrTooManyDecimals means an otherwise well-formed amount has more
	// fraction digits than the currency's exponent, even if the extra digits
	// are zeros (see [ParseDecimal] for why).
	ErrTooManyDecimals = errors.New("money: more decimal places than the currency allows")

	// ErrEmpty means the amount text was empty or only spaces. It is separate
	// from ErrSyntax because a missing value is often handled differently
	// (as NULL, or as a required-field error) from a malformed one.
	ErrEmpty = errors.New("money: empty amount")
)

// Add returns a+b, or [ErrOverflow] if the sum does not fit in an int64.
func Add(a, b int64) (int64, error) {
	if b > 0 && a > math.MaxInt64-b || b < 0 && a < math.MinInt64-b {
		return 0, fmt.Errorf("%w: %d + %d", ErrOverflow, a, b)
	}
	return a + b, nil
}

// Sub returns a-b, or [ErrOverflow] if the difference does not fit in an
// int64. Note that Sub(0, math.MinInt64) overflows: the int64 range has one
// more negative value than positive ones.
func Sub(a, b int64) (int64, error) {
	if b < 0 && a > math.MaxInt64+b || b > 0 && a < math.MinInt64+b {
		return 0, fmt.Errorf("%w: %d - %d", ErrOverflow, a, b)
	}
	return a - b, nil
}

// Mul returns the amount a times the integer quantity n (a unit price times a
// seat count, say), or [ErrOverflow] if the product does not fit in an int64.
//
// There is no fractional variant on purpose: multiplying by a rate or a
// percentage needs a rounding rule, and that rule is a business decision
// that belongs to the caller, next to the code that documents it.
func Mul(a, n int64) (int64, error) {
	if a == 0 || n == 0 {
		return 0, nil
	}
	p := a * n
	// Dividing back detects every overflow but one: MinInt64 * -1 wraps to
	// MinInt64, and MinInt64 / -1 wraps back to it.
	if p/n != a || n == -1 && a == math.MinInt64 {
		return 0, fmt.Errorf("%w: %d * %d", ErrOverflow, a, n)
	}
	return p, nil
}

// Sum returns the sum of xs, 0 for none, or [ErrOverflow] if the total does
// not fit in an int64.
//
// Only the total has to fit: intermediate sums are exact, so the result does
// not depend on the order of xs, and Sum(math.MaxInt64, 1, -1) is
// math.MaxInt64 where chaining [Add] would fail on the first pair.
func Sum(xs ...int64) (int64, error) {
	// A 128-bit two's-complement accumulator cannot overflow for fewer than
	// 2^64 terms, each of magnitude at most 2^63.
	var hi int64
	var lo uint64
	for _, x := range xs {
		var carry uint64
		lo, carry = bits.Add64(lo, uint64(x), 0)
		hi += int64(carry) + x>>63 // x>>63 sign-extends x into the high word
	}
	if hi != int64(lo)>>63 {
		return 0, fmt.Errorf("%w: sum of %d amounts", ErrOverflow, len(xs))
	}
	return int64(lo), nil
}
