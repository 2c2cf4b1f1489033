package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tally-dev/tally/internal/cli"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/producers/importer"
)

func TestImportCommand(t *testing.T) {
	t.Parallel()
	pool, url := testenv.Pool(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tally := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"import", "-database-url", url}, args...),
			func(string) string { return "" }, &out, &errb)
		return code, out.String(), errb.String()
	}
	customers := file("customers.csv", "external_id,id,name,email\ncrm-1,cus-1,Ada,ada@example.com\n")
	sales := file("sales.csv", "external_id,customer_id,currency,amount,date\no-1,cus-1,USD,\"1,234.56\",2025-03-01\n"+
		"o-2,cus-1,USD,1.234,2025-03-01\no-3,nobody,USD,1.00,2025-03-01\n")

	if code, out, errs := tally("customers", customers); code != 0 || !strings.Contains(out, "completed: 1 rows, 1 created") {
		t.Fatalf("importing customers: %d\n%s%s", code, out, errs)
	}
	code, out, errs := tally("sales", sales)
	if code != 0 || !strings.Contains(out, "3 rows, 1 created, 0 duplicates, 2 rejected") ||
		!strings.Contains(out, "row 3, amount: too_many_decimals") || !strings.Contains(out, "row 4, customer_id: unknown_customer") {
		t.Errorf("importing sales: %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "importing sales.csv") || !strings.Contains(errs, "3/3 rows") {
		t.Errorf("no progress on stderr: %q", errs)
	}
	if code, out, _ := tally("sales", sales); code != 0 || !strings.Contains(out, "0 created, 1 duplicates, 2 rejected") {
		t.Errorf("importing sales again: %d\n%s", code, out)
	}
	var amount int64
	if err := pool.QueryRow(context.Background(), "SELECT amount FROM sales WHERE external_id = 'o-1'").Scan(&amount); err != nil || amount != 123456 {
		t.Errorf("o-1 is %d cents (%v), want 123456", amount, err)
	}

	// all_or_nothing fails on the bad rows; a dry run reports as JSON.
	if code, out, _ := tally("-mode", "all_or_nothing", "sales", sales); code != 1 || !strings.Contains(out, "failed") {
		t.Errorf("an all_or_nothing import of bad rows: %d\n%s", code, out)
	}
	code, out, _ = tally("-dry-run", "-json", "sales", sales)
	var rep importer.Report
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || !rep.DryRun || rep.Duplicates != 1 || rep.ID != "" {
		t.Errorf("a dry run as JSON: %d, %v\n%s", code, err, out)
	}

	// A malformed file fails; usage mistakes are status 2.
	if code, _, errs := tally("sales", file("bad.csv", "customer,amount\n")); code != 1 || !strings.Contains(errs, `unknown column`) {
		t.Errorf("a malformed file: %d\n%s", code, errs)
	}
	for _, args := range [][]string{{"invoices", sales}, {"sales"}, {"-mode", "some", "sales", sales}} {
		if code, _, _ := tally(args...); code != 2 {
			t.Errorf("tally import %v: status %d, want 2", args, code)
		}
	}
}
