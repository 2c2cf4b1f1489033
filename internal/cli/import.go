package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tally-dev/tally/internal/config"
	"github.com/tally-dev/tally/internal/envelope"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/internal/postgres"
	"github.com/tally-dev/tally/internal/progress"
	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// importOpts are tally import's own flags.
var importOpts struct {
	mode   string
	dryRun bool
	json   bool
}

func importFlags(fs *flag.FlagSet) {
	fs.StringVar(&importOpts.mode, "mode", importer.Partial, "partial (write the rows that pass) or all_or_nothing (write nothing if any row fails)")
	fs.BoolVar(&importOpts.dryRun, "dry-run", false, "validate and report, writing nothing")
	fs.BoolVar(&importOpts.json, "json", false, "print the report as JSON")
}

// importErrorsShown is how many row errors the summary lists.
const importErrorsShown = 20

// runImport is `tally import [flags] <type> FILE`: a CSV import straight
// into the database, as POST /api/v1/data/upload-<type>-csv does it, with a
// progress bar on stderr and the report on stdout. It fails (status 1) when
// the file is malformed or the import failed; rejected rows of a partial
// import are in the report, not a failure.
func runImport(ctx context.Context, e Env, cfg config.Config, log *slog.Logger) error {
	types := importer.Types()
	if len(e.Args) != 2 || !slices.Contains(types, e.Args[0]) {
		return usageError{fmt.Errorf("usage: tally import [-mode partial|all_or_nothing] [-dry-run] [-json] [flags] <type> FILE; types: %s",
			strings.Join(types, ", "))}
	}
	if importOpts.mode != importer.Partial && importOpts.mode != importer.AllOrNothing {
		return usageError{fmt.Errorf("-mode %q: want %s or %s", importOpts.mode, importer.Partial, importer.AllOrNothing)}
	}
	typ, path := e.Args[0], e.Args[1]
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	file, err := importer.Check(f, typ)
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	defer file.Close()

	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	notifier := outbox.NewNotifier(pool, log)
	nctx, stop := context.WithCancel(ctx)
	defer stop()
	go notifier.Run(nctx)

	label := "importing"
	if importOpts.dryRun {
		label = "checking"
	}
	bar := progress.New(e.Stderr, label+" "+filepath.Base(path), "rows")
	id := envelope.NewID().String()
	rep, err := importer.New(pool, notifier.Notify).Import(ctx, file, importer.Options{
		Mode: importOpts.mode, DryRun: importOpts.dryRun, Filename: importer.CleanFilename(path),
		Meta:     billing.Meta{Source: importer.Source, CorrelationID: id, CausationID: id},
		Progress: bar.Update,
	})
	if err != nil {
		return err
	}
	bar.Done(rep.Processed, rep.Rows)
	if importOpts.json {
		enc := json.NewEncoder(e.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printImport(e, path, rep)
	}
	if rep.Status == importer.StatusFailed {
		return errors.New(rep.Failure)
	}
	return nil
}

// printImport writes a report for people.
func printImport(e Env, path string, rep importer.Report) {
	what := "import " + rep.ID
	if rep.DryRun {
		what = "dry run"
	}
	fmt.Fprintf(e.Stdout, "%s of %s (%s, %s): %s: %d rows, %d created, %d duplicates, %d rejected\n",
		what, path, rep.Type, rep.Mode, rep.Status, rep.Rows, rep.Created, rep.Duplicates, rep.Rejected)
	for i, re := range rep.Errors {
		if i == importErrorsShown {
			break
		}
		col := re.Column
		if col == "" {
			col = "(row)"
		}
		fmt.Fprintf(e.Stdout, "  row %d, %s: %s: %s\n", re.Row, col, re.Code, re.Message)
	}
	if more := rep.ErrorsTotal - int64(min(len(rep.Errors), importErrorsShown)); more > 0 {
		fmt.Fprintf(e.Stdout, "  and %d more errors", more)
		if rep.ID != "" {
			fmt.Fprintf(e.Stdout, " (the first %d at GET /v1/imports/%s)", importer.MaxReportedErrors, rep.ID)
		}
		fmt.Fprintln(e.Stdout)
	}
}
