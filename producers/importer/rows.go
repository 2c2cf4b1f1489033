package importer

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/money"
	"github.com/tally-dev/tally/producers/billing"
)

// RowError is one problem of one row of a file. A row with any is
// rejected: nothing of it is written.
type RowError struct {
	// Row is the line of the file where the row starts, the header being
	// line 1, as a spreadsheet numbers rows.
	Row     int64  `json:"row"`
	Column  string `json:"column"` // "" for the row as a whole
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Codes of RowError, beside billing.CodeRequired (an empty value where one
// is needed) and billing.CodeInvalid (a value the column cannot hold).
const (
	// CodeFieldCount: the row has more or fewer fields than the header.
	CodeFieldCount = "field_count"
	// CodeInvalidAmount: not a decimal amount: letters, an exponent
	// ("1e3"), NaN, a misplaced sign, separator or symbol, a symbol of
	// another currency.
	CodeInvalidAmount = "invalid_amount"
	// CodeTooManyDecimals: more decimals than the currency has ("1.234"
	// for USD, "5.0" for JPY).
	CodeTooManyDecimals = "too_many_decimals"
	// CodeAmountOutOfRange: beyond what int64 minor units hold.
	CodeAmountOutOfRange = "amount_out_of_range"
	// CodeNegativeAmount: amounts are never negative (a refund is a sale's
	// refunded_amount).
	CodeNegativeAmount = "negative_amount"
	// CodeUnknownCustomer: the sale's customer_id names no customer.
	CodeUnknownCustomer = "unknown_customer"
	// CodeIDTaken: the customer's id belongs to another customer.
	CodeIDTaken = "id_taken"
)

// ParseAmount converts an amount of a CSV file, a human decimal such as
// "1,234.56" or "$12.50", to minor units of c, exactly, by the grammar of
// money.ParseDecimal; an amount must not be negative. The error is a
// RowError without Row and Column: CodeRequired for an empty amount,
// CodeInvalidAmount, CodeTooManyDecimals, CodeAmountOutOfRange or
// CodeNegativeAmount.
func ParseAmount(s string, c money.Currency) (int64, *RowError) {
	n, err := money.ParseDecimal(s, c)
	code := ""
	switch {
	case err == nil && n < 0:
		return 0, &RowError{Code: CodeNegativeAmount, Message: "must not be negative"}
	case err == nil:
		return n, nil
	case errors.Is(err, money.ErrEmpty):
		code = billing.CodeRequired
	case errors.Is(err, money.ErrTooManyDecimals):
		code = CodeTooManyDecimals
	case errors.Is(err, money.ErrOverflow):
		code = CodeAmountOutOfRange
	default:
		code = CodeInvalidAmount
	}
	return 0, &RowError{Code: code, Message: strings.TrimPrefix(err.Error(), "money: ")}
}

// decoder turns one row's values into a billing input, collecting the
// row's errors.
type decoder struct {
	row  int64
	errs []RowError
}

func (d *decoder) fail(col, code, msg string) {
	d.errs = append(d.errs, RowError{Row: d.row, Column: col, Code: code, Message: msg})
}

// text is an optional text: absent when empty.
func text(v string) *string {
	if v == "" {
		return nil
	}
	return &v
}

// amount parses the amount v of column col in the currency code (already
// trimmed). An empty amount is left to the validation of the record, which
// reports it as required; an amount in an unknown currency is taken as 0,
// as the row is rejected for its currency.
func (d *decoder) amount(col, v, code string) *int64 {
	if v == "" {
		return nil
	}
	var n int64
	c, err := money.ParseCurrency(code)
	if err != nil {
		return &n
	}
	n, rerr := ParseAmount(v, c)
	if rerr != nil {
		d.fail(col, rerr.Code, rerr.Message)
	}
	return &n
}

// integer parses an optional whole number.
func (d *decoder) integer(col, v string) *int64 {
	if v == "" {
		return nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		d.fail(col, billing.CodeInvalid, "must be a whole number")
		return nil
	}
	return &n
}

// boolean parses an optional true/false, yes/no or 1/0 (any case).
func (d *decoder) boolean(col, v string) *bool {
	var b bool
	switch strings.ToLower(v) {
	case "":
		return nil
	case "true", "yes", "1":
		b = true
	case "false", "no", "0":
	default:
		d.fail(col, billing.CodeInvalid, "must be true or false (or yes/no, 1/0)")
		return nil
	}
	return &b
}

// validated adds the field errors of the record's validation; the fields
// of billing's inputs are named as the columns are.
func (d *decoder) validated(err error) {
	var ve *billing.ValidationError
	if errors.As(err, &ve) {
		for _, f := range ve.Fields {
			d.fail(f.Field, f.Code, f.Message)
		}
	} else if err != nil {
		d.fail("", billing.CodeInvalid, err.Error())
	}
}

// kind is a type of file: its columns, how a row becomes a record, and how
// records are written and announced.
type kind[T any] struct {
	name    string
	columns []column
	example []string // the template's example row
	// decode makes the record of one row's values (in columns' order),
	// adding the row's errors to d.
	decode func(d *decoder, m billing.Meta, v []string) T
	insert func(ctx context.Context, q billing.Querier, records []T) ([]billing.Outcome, error)
	event  func(m billing.Meta, record T) (envelope.Event, error)
	// rejects are the errors of the rows the insert refused, by outcome
	// (other than Created and Duplicate); Row is left to fill.
	rejects map[billing.Outcome]RowError
}

// Column indexes of each kind's values.
const (
	saleExternalID = iota
	saleCustomerID
	saleCurrency
	saleAmount
	saleQuantity
	saleProduct
	saleDate
)

const (
	customerExternalID = iota
	customerID
	customerName
	customerEmail
)

const (
	expenseExternalID = iota
	expenseCategory
	expenseVendor
	expenseCurrency
	expenseAmount
	expenseDate
	expenseCOGS
)

const (
	externalIDDoc = "your id of the row: a row whose external_id was imported before is a duplicate, skipped (1 to 200 characters; optional, but without it a file imported twice is imported twice)"
	amountDoc     = "a decimal amount in the currency's units, such as 1,234.56 or $12.50 (the symbol must be the currency's; no exponents, no more decimals than the currency has)"
	dateDoc       = "YYYY-MM-DD"
)

var sales = kind[billing.Sale]{
	name: "sales",
	columns: []column{
		{"external_id", false, externalIDDoc},
		{"customer_id", true, "the id of an existing customer"},
		{"currency", true, "ISO 4217 code, such as USD"},
		{"amount", true, "the gross amount of the sale: " + amountDoc},
		{"quantity", false, "how many items (default 1)"},
		{"product", false, "what was sold (optional)"},
		{"date", true, dateDoc},
	},
	example: []string{"order-1001", "cus-1", "USD", "1,234.56", "2", "Pro plan", "2025-03-14"},
	decode: func(d *decoder, m billing.Meta, v []string) billing.Sale {
		s, err := billing.NewSale(m, billing.SaleInput{
			ExternalID: text(v[saleExternalID]), CustomerID: text(v[saleCustomerID]), Currency: text(v[saleCurrency]),
			Amount:   d.amount("amount", v[saleAmount], v[saleCurrency]),
			Quantity: d.integer("quantity", v[saleQuantity]), Product: text(v[saleProduct]), Date: text(v[saleDate]),
		})
		d.validated(err)
		return s
	},
	insert: billing.InsertSales,
	event:  billing.SaleCreated,
	rejects: map[billing.Outcome]RowError{
		billing.UnknownCustomer: {Column: "customer_id", Code: CodeUnknownCustomer, Message: "no customer has this id"},
	},
}

var customers = kind[billing.Customer]{
	name: "customers",
	columns: []column{
		{"external_id", false, externalIDDoc},
		{"id", false, "the id to give the customer (optional: one is made when empty), which sales files name"},
		{"name", true, "1 to 200 characters"},
		{"email", true, "a plain address such as ada@example.com"},
	},
	example: []string{"crm-42", "cus-1", "Ada Lovelace", "ada@example.com"},
	decode: func(d *decoder, m billing.Meta, v []string) billing.Customer {
		c, err := billing.NewCustomer(m, billing.CustomerInput{
			ExternalID: text(v[customerExternalID]), ID: text(v[customerID]),
			Name: text(v[customerName]), Email: text(v[customerEmail]),
		})
		d.validated(err)
		return c
	},
	insert: billing.InsertCustomers,
	event:  billing.CustomerCreated,
	rejects: map[billing.Outcome]RowError{
		billing.IDTaken: {Column: "id", Code: CodeIDTaken, Message: "another customer has this id"},
	},
}

var expenses = kind[billing.Expense]{
	name: "expenses",
	columns: []column{
		{"external_id", false, externalIDDoc},
		{"category", true, "such as rent or inventory, 1 to 100 characters"},
		{"vendor", false, "who was paid (optional)"},
		{"currency", true, "ISO 4217 code, such as USD"},
		{"amount", true, amountDoc},
		{"date", true, dateDoc},
		{"cost_of_goods_sold", false, "true if it is a cost of goods sold, false (the default) for an operating expense; also yes/no, 1/0"},
	},
	example: []string{"bill-77", "inventory", "Acme Supplies", "USD", "$1,200.00", "2025-03-02", "true"},
	decode: func(d *decoder, m billing.Meta, v []string) billing.Expense {
		e, err := billing.NewExpense(m, billing.ExpenseInput{
			ExternalID: text(v[expenseExternalID]), Category: text(v[expenseCategory]), Vendor: text(v[expenseVendor]),
			Currency: text(v[expenseCurrency]), Amount: d.amount("amount", v[expenseAmount], v[expenseCurrency]),
			Date: text(v[expenseDate]), CostOfGoodsSold: d.boolean("cost_of_goods_sold", v[expenseCOGS]),
		})
		d.validated(err)
		return e
	},
	insert: billing.InsertExpenses,
	event:  billing.ExpenseCreated,
}
