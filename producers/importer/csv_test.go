package importer_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/tally-dev/tally/internal/money"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// endless is a file that never ends: a header, then one line of x forever.
type endless struct {
	header string
	read   int64
}

func (e *endless) Read(p []byte) (int, error) {
	n := 0
	for ; n < len(p) && e.read < int64(len(e.header)); n++ {
		p[n] = e.header[e.read]
		e.read++
	}
	for ; n < len(p); n++ {
		p[n] = 'x'
	}
	e.read += int64(len(p) - n)
	return len(p), nil
}

// A gigabyte line, or an endless one, is refused once it passes the bound:
// the reader never holds more than a row and its read-ahead.
func TestCheckBoundsTheRow(t *testing.T) {
	t.Parallel()
	for _, header := range []string{"", "external_id,customer_id,currency,amount,date\n", "external_id,customer_id,currency,amount,date\n\""} {
		src := &endless{header: header}
		_, err := importer.Check(src, "sales")
		var fe *importer.FileError
		if !errors.As(err, &fe) || !strings.Contains(fe.Reason, "longer than 65536 bytes") {
			t.Errorf("header %q: an endless line gave %v, want a FileError about the row's length", header, err)
		}
		if src.read > 2*importer.MaxRowBytes {
			t.Errorf("header %q: %d bytes read before refusing an endless line", header, src.read)
		}
	}
}

func TestCheckAcceptsWhatSpreadsheetsWrite(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what, file string
		rows       int64
	}{
		{"a byte-order mark, CRLF, any case and order", "\ufeffDate,Amount,Currency,Customer_ID\r\n2025-03-01,1.00,USD,c1\r\n", 1},
		{"blank rows and rows of empty fields", "customer_id,currency,amount,date\n\nc1,USD,1.00,2025-03-01\n,,,\n  , ,,\n", 1},
		{"no final line break", "customer_id,currency,amount,date\nc1,USD,1.00,2025-03-01", 1},
		{"a header alone", "customer_id,currency,amount,date\n", 0},
		{"ragged rows (rejected one by one later)", "customer_id,currency,amount,date\nc1,USD\nc1,USD,1,2,3\n", 2},
	} {
		f, err := importer.Check(strings.NewReader(c.file), "sales")
		if err != nil {
			t.Errorf("%s: %v", c.what, err)
			continue
		}
		if f.Rows() != c.rows {
			t.Errorf("%s: %d rows, want %d", c.what, f.Rows(), c.rows)
		}
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}
	if _, err := importer.Check(strings.NewReader("a\n"), "invoices"); !errors.Is(err, importer.ErrUnknownType) {
		t.Errorf("an unknown type gave %v", err)
	}
}

// A failing reader is the reader's failure, not the file's form.
func TestCheckReportsReadErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	_, err := importer.Check(io.MultiReader(strings.NewReader("customer_id,currency,amount,date\n"), errReader{boom}), "sales")
	var fe *importer.FileError
	if !errors.Is(err, boom) || errors.As(err, &fe) || errors.Is(err, importer.ErrCopy) {
		t.Errorf("a read error gave %v", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestParseAmount(t *testing.T) {
	t.Parallel()
	usd, jpy, bhd := money.MustCurrency("USD"), money.MustCurrency("JPY"), money.MustCurrency("BHD")
	for _, c := range []struct {
		in   string
		cur  money.Currency
		want int64
		code string
	}{
		{"1,234.56", usd, 123456, ""},
		{"$12.50", usd, 1250, ""},
		{"12", usd, 1200, ""},
		{"0.5", usd, 50, ""},
		{"500", jpy, 500, ""},
		{"¥500", jpy, 500, ""},
		{"1.234", bhd, 1234, ""},
		{"", usd, 0, billing.CodeRequired},
		{"   ", usd, 0, billing.CodeRequired},
		{"1.234", usd, 0, importer.CodeTooManyDecimals},
		{"1.230", usd, 0, importer.CodeTooManyDecimals},
		{"5.0", jpy, 0, importer.CodeTooManyDecimals},
		{"1e3", usd, 0, importer.CodeInvalidAmount},
		{"NaN", usd, 0, importer.CodeInvalidAmount},
		{"Inf", usd, 0, importer.CodeInvalidAmount},
		{"1.234,56", usd, 0, importer.CodeInvalidAmount},
		{"€5", usd, 0, importer.CodeInvalidAmount},
		{"(5.00)", usd, 0, importer.CodeInvalidAmount},
		{"0x10", usd, 0, importer.CodeInvalidAmount},
		{"-5.00", usd, 0, importer.CodeNegativeAmount},
		{"-0", usd, 0, ""},
		{"92233720368547758.07", usd, 9223372036854775807, ""},
		{"92233720368547758.08", usd, 0, importer.CodeAmountOutOfRange},
	} {
		got, rerr := importer.ParseAmount(c.in, c.cur)
		code := ""
		if rerr != nil {
			code = rerr.Code
			if rerr.Message == "" {
				t.Errorf("ParseAmount(%q, %s): an error without message", c.in, c.cur)
			}
		}
		if got != c.want || code != c.code {
			t.Errorf("ParseAmount(%q, %s) = %d, %q; want %d, %q", c.in, c.cur, got, code, c.want, c.code)
		}
	}
}

func TestCleanFilename(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"sales.csv":                       "sales.csv",
		"/home/ada/March sales.csv":       "March sales.csv",
		`C:\Users\ada\sales.csv`:          "sales.csv",
		"caf\xe9\n.csv":                   "caf?.csv",
		"":                                "",
		strings.Repeat("é", 300) + ".csv": strings.Repeat("é", 255),
	} {
		if got := importer.CleanFilename(in); got != want {
			t.Errorf("CleanFilename(%q) = %q, want %q", in, got, want)
		}
	}
}
