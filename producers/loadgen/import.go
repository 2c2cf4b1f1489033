package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/tally-dev/tally/producers/importer"
)

// ImportFigures are the figures of one CSV import.
type ImportFigures struct {
	Rate   float64 // rows imported per second, from the first byte posted to the report
	PeakMB float64 // the peak resident memory of this process meanwhile
}

// Import measures a CSV import of rows sales through the HTTP endpoint, as
// a client uploads it: the file is generated in a temporary directory,
// streamed as multipart/form-data to POST /api/v1/data/upload-sales-csv
// served as `tally api` serves it (its timeouts included), and imported
// in mode partial; the server's timeouts are those of tally api, which the
// upload outlasts. The relay does not run: it would publish the events
// afterwards. Peak memory is this process's (API, importer and client
// together), reset before the upload (Linux: /proc/self/clear_refs).
func Import(ctx context.Context, serverURL string, rows int, log *slog.Logger) (ImportFigures, error) {
	db, err := newDatabase(ctx, serverURL, 16)
	if err != nil {
		return ImportFigures{}, err
	}
	defer db.drop()
	const customers = 1000
	if _, err := db.pool.Exec(ctx, `INSERT INTO customers (id, name, email, version, created_at, updated_at)
		SELECT 'cus-' || i, 'Customer ' || i, 'c' || i || '@example.com', 1, now(), now()
		FROM generate_series(0, $1 - 1) i`, customers); err != nil {
		return ImportFigures{}, fmt.Errorf("creating customers: %w", err)
	}
	dir, err := os.MkdirTemp("", "tally-bench-import-*")
	if err != nil {
		return ImportFigures{}, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "sales.csv")
	if err := writeSales(path, rows, customers); err != nil {
		return ImportFigures{}, fmt.Errorf("writing %s: %w", path, err)
	}

	base, stop, err := serveAPI(ctx, db.pool, log)
	if err != nil {
		return ImportFigures{}, err
	}
	defer stop()

	runtime.GC()
	debug.FreeOSMemory()
	// Writing 5 to clear_refs resets the kernel's high-water mark (Linux).
	peak := peakSampler(os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil)
	start := time.Now()
	rep, err := postFile(ctx, base+"/api/v1/data/upload-sales-csv", path)
	elapsed := time.Since(start)
	if err != nil {
		return ImportFigures{}, err
	}
	if rep.Created != int64(rows) || rep.Status != importer.StatusCompleted {
		return ImportFigures{}, fmt.Errorf("the import of %d rows reported %s, %d created, %d rejected: %v",
			rows, rep.Status, rep.Created, rep.Rejected, rep.Errors)
	}
	f := ImportFigures{Rate: float64(rows) / elapsed.Seconds(), PeakMB: peak()}
	log.Info("imported sales through the API", "rows", rows, "seconds", elapsed.Seconds(), "per_second", int(f.Rate),
		"import_seconds", rep.FinishedAt.Sub(rep.StartedAt).Seconds(), "peak_mb", f.PeakMB)
	return f, nil
}

// writeSales writes a sales file of n rows over customers customers.
func writeSales(path string, n, customers int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.WriteString("external_id,customer_id,currency,amount,quantity,product,date\n")
	for i := range n {
		fmt.Fprintf(w, "order-%d,cus-%d,USD,\"%d,%03d.%02d\",%d,Plan %d,2025-%02d-%02d\n",
			i, i%customers, i%50, i%1000, i%100, i%5+1, i%20, i%12+1, i%28+1)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// postFile streams the file at path to url as the part "file" of a
// multipart/form-data body, and decodes the report.
func postFile(ctx context.Context, url, path string) (importer.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return importer.Report{}, err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("file", filepath.Base(path))
		if err == nil {
			_, err = io.Copy(part, f)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, pr)
	if err != nil {
		return importer.Report{}, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return importer.Report{}, fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return importer.Report{}, fmt.Errorf("POST %s: reading the answer: %w", url, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return importer.Report{}, fmt.Errorf("POST %s answered %d: %s", url, resp.StatusCode, body)
	}
	var rep importer.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return importer.Report{}, fmt.Errorf("POST %s: decoding the report: %w", url, err)
	}
	return rep, nil
}

// peakSampler returns a function that gives the peak resident memory, in
// MB, since it was made: the highest of samples taken every 50 ms, and,
// when hwm says the kernel's high-water mark was reset, that mark (VmHWM).
func peakSampler(hwm bool) func() float64 {
	stop := make(chan struct{})
	done := make(chan float64)
	go func() {
		high := 0.0
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			high = max(high, status("VmRSS"))
			select {
			case <-stop:
				if hwm {
					high = max(high, status("VmHWM"))
				}
				done <- high
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(stop); return <-done }
}

// status reads a field of /proc/self/status in MB (0 where there is none).
func status(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		name, value, ok := strings.Cut(string(line), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 64)
		if err != nil {
			return 0
		}
		return kb / 1024
	}
	return 0
}
