package importer

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/money"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/producers/billing"
)

// decodeAll decodes every row of a file of kind k the way an import does,
// calling ok with the event of each row that decodes without error and
// bad with the errors of each row that does not.
func decodeAll[T any](t *testing.T, k kind[T], file string, ok func(envelope.Event), bad func([]RowError)) error {
	rd, err := newReader(strings.NewReader(file), k.columns)
	if err != nil {
		return err
	}
	m := billing.Meta{Source: "/tally/import", CorrelationID: "fuzz", CausationID: "fuzz", Now: time.Now()}
	for {
		vals, width, err := rd.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		d := decoder{row: int64(rd.line)}
		if width != rd.width {
			bad(nil)
			continue
		}
		r := k.decode(&d, m, vals)
		if len(d.errs) > 0 {
			bad(d.errs)
			continue
		}
		ev, err := k.event(m, r)
		if err != nil {
			t.Fatalf("row %d decoded, but its event cannot be made: %v", d.row, err)
		}
		ok(ev)
	}
}

// FuzzDecodeRow feeds arbitrary files to the row decoder of each type. It
// must never panic; a malformed file is a *FileError; every row it accepts
// makes an event that passes outbox.Check, its payload valid against its
// JSON Schema (an import whose events break it would fail, not skip the
// row); and every row it rejects says which column and why.
func FuzzDecodeRow(f *testing.F) {
	headers := []string{
		"external_id,customer_id,currency,amount,quantity,product,date\n",
		"external_id,id,name,email\n",
		"external_id,category,vendor,currency,amount,date,cost_of_goods_sold\n",
	}
	for _, seed := range []struct {
		kind uint8
		rows string
	}{
		{0, "o-1,cus-1,USD,\"1,234.56\",2,Pro plan,2025-03-14\n"},
		{0, "o-2,cus-1,JPY,¥500,,,2025-03-14\no-3,c,BHD,1.234,1000000,x,1900-01-01\n"},
		{0, "o-4,cus-1,USD,1e3,0,\" \",2025-02-30\n,,,,,,\n\"a\"\"b\",c,EUR,€-1,1,,2025-01-01\n"},
		{1, "crm-1,cus-1,Ada Lovelace,ada@example.com\n,,Bob,bob@example.com\n"},
		{1, "x,-bad,\"\",Ada <ada@example.com>\n"},
		{2, "b-1,inventory,Acme,USD,$1.00,2025-03-02,true\n,rent,,GBP,£2500,2025-03-01,no\n"},
		{2, "b-2,\x00,Acme,USD,1.00,2025-03-02,maybe\n"},
	} {
		f.Add(seed.kind, seed.rows)
	}
	f.Fuzz(func(t *testing.T, which uint8, rows string) {
		file := headers[int(which)%len(headers)] + rows
		ok := func(ev envelope.Event) {
			if err := outbox.Check(&ev); err != nil {
				t.Fatalf("an accepted row makes an invalid event: %v\npayload: %s", err, ev.Data)
			}
		}
		bad := func(errs []RowError) {
			for _, e := range errs {
				if e.Code == "" || e.Message == "" || e.Row < 2 {
					t.Fatalf("a row error without code, message or row: %+v", e)
				}
			}
		}
		var err error
		switch int(which) % len(headers) {
		case 0:
			err = decodeAll(t, sales, file, ok, bad)
		case 1:
			err = decodeAll(t, customers, file, ok, bad)
		default:
			err = decodeAll(t, expenses, file, ok, bad)
		}
		var fe *FileError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("reading a file from memory failed other than as a malformed file: %v", err)
		}
	})
}

// FuzzParseAmount: ParseAmount never panics, accepts only amounts it can
// give back exactly (money.Format of the result parses to the same minor
// units), never negative ones, and refuses with one of its codes.
func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"1,234.56", "$12.50", "-5", "1e3", "NaN", "", "1.234", "¥500", "92233720368547758.08", "0.001", "+1"} {
		f.Add(s, uint8(0))
	}
	codes := []string{billing.CodeRequired, CodeInvalidAmount, CodeTooManyDecimals, CodeAmountOutOfRange, CodeNegativeAmount}
	currencies := []money.Currency{money.MustCurrency("USD"), money.MustCurrency("JPY"), money.MustCurrency("BHD"),
		money.MustCurrency("EUR"), money.MustCurrency("CLF")}
	f.Fuzz(func(t *testing.T, s string, which uint8) {
		c := currencies[int(which)%len(currencies)]
		n, rerr := ParseAmount(s, c)
		if rerr != nil {
			if n != 0 || rerr.Message == "" || !slices.Contains(codes, rerr.Code) {
				t.Fatalf("ParseAmount(%q, %s) = %d, %+v", s, c, n, rerr)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseAmount(%q, %s) = %d, a negative amount", s, c, n)
		}
		back, err := ParseAmount(money.Format(n, c), c)
		if err != nil || back != n {
			t.Fatalf("ParseAmount(%q, %s) = %d, which formats as %q and parses back as %d, %v", s, c, n, money.Format(n, c), back, err)
		}
	})
}
