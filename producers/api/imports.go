package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tally-dev/tally/producers/billing"
	"github.com/tally-dev/tally/producers/importer"
)

// DefaultMaxImportBytes bounds an uploaded CSV file when Config does not.
const DefaultMaxImportBytes = 1 << 30

// idleTimeout is how long an upload may stall, and how long its answer may
// take to write, whatever the server's own timeouts: a large import runs
// for minutes, longer than they allow a request.
const idleTimeout = time.Minute

// upload serves POST /api/v1/data/upload-<typ>-csv: a multipart/form-data
// body whose part "file" is the CSV file, and the import's settings as
// query parameters or form fields (mode, dry_run). The file is streamed
// into importer.Check, which copies it to a temporary file as it checks
// it; form fields may come before or after it.
func (a *API) upload(typ string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		opts := importer.Options{Meta: meta(r)}
		opts.Meta.Source = importer.Source
		settings := r.URL.Query()
		if fe := importSettings(settings, &opts); fe != nil {
			writeProblem(w, r, validationProblem(*fe))
			return
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
			writeProblem(w, r, Problem{Type: ProblemMediaType, Status: http.StatusUnsupportedMediaType,
				Detail: `send the file as multipart/form-data, in a part named "file"`})
			return
		}
		rc := http.NewResponseController(w)
		r.Body = &stallGuard{r: http.MaxBytesReader(w, r.Body, a.cfg.maxImportBytes()), rc: rc}
		mr, err := r.MultipartReader()
		if err != nil {
			writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest, Detail: "reading the multipart body: " + err.Error()})
			return
		}
		file, name, form, err := readUpload(mr, typ)
		if file != nil {
			defer file.Close()
		}
		if err != nil {
			a.uploadFailed(w, r, err)
			return
		}
		rc.SetReadDeadline(time.Time{}) // the body is read; a stalled import is not the client's
		opts.Filename = importer.CleanFilename(name)
		for k, vs := range form {
			settings[k] = vs
		}
		if fe := importSettings(settings, &opts); fe != nil {
			writeProblem(w, r, validationProblem(*fe))
			return
		}
		rep, err := a.importer.Import(r.Context(), file, opts)
		rc.SetWriteDeadline(time.Now().Add(idleTimeout))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if opts.DryRun {
			writeJSON(w, http.StatusOK, rep)
			return
		}
		w.Header().Set("Location", "/v1/imports/"+url.PathEscape(rep.ID))
		writeJSON(w, http.StatusCreated, rep)
	}
}

// readUpload reads the parts of an upload: the file, checked, its name,
// and the form fields.
func readUpload(mr *multipart.Reader, typ string) (file *importer.File, name string, form url.Values, err error) {
	form = url.Values{}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return file, "", nil, fmt.Errorf("reading the multipart body: %w", err)
		}
		switch field := part.FormName(); field {
		case "file":
			if file != nil {
				return file, "", nil, errors.New(`the body has more than one part named "file"; upload one file at a time`)
			}
			if file, err = importer.Check(part, typ); err != nil {
				return nil, "", nil, err
			}
			name = part.FileName()
		case "mode", "dry_run":
			v, err := io.ReadAll(io.LimitReader(part, 64))
			if err != nil {
				return file, "", nil, fmt.Errorf("reading the multipart body: %w", err)
			}
			form.Set(field, string(v))
		default:
			return file, "", nil, fmt.Errorf("unexpected form field %q: the fields are file, mode and dry_run", field)
		}
	}
	if file == nil {
		return nil, "", nil, errors.New(`the body has no part named "file"`)
	}
	return file, name, form, nil
}

// uploadFailed answers an upload whose body could not be read: the
// client's fault, but for importer.ErrCopy.
func (a *API) uploadFailed(w http.ResponseWriter, r *http.Request, err error) {
	var (
		fe     *importer.FileError
		tooBig *http.MaxBytesError
	)
	switch {
	case errors.As(err, &fe):
		writeProblem(w, r, Problem{Type: ProblemInvalidCSV, Status: http.StatusUnprocessableEntity,
			Title: "The file is not a CSV file of this type", Detail: fe.Error() + "; nothing was imported"})
	case errors.As(err, &tooBig):
		writeProblem(w, r, Problem{Type: ProblemTooLarge, Status: http.StatusRequestEntityTooLarge,
			Detail: fmt.Sprintf("the upload exceeds %d bytes", tooBig.Limit)})
	case errors.Is(err, importer.ErrCopy):
		a.fail(w, r, err)
	default:
		writeProblem(w, r, Problem{Type: ProblemMalformed, Status: http.StatusBadRequest, Detail: err.Error()})
	}
}

// importSettings reads mode and dry_run into opts.
func importSettings(q url.Values, opts *importer.Options) *billing.FieldError {
	switch m := q.Get("mode"); m {
	case "", importer.Partial, importer.AllOrNothing:
		opts.Mode = m
	default:
		return &billing.FieldError{Field: "mode", Message: "must be partial or all_or_nothing"}
	}
	switch d := strings.ToLower(q.Get("dry_run")); d {
	case "", "false", "0":
		opts.DryRun = false
	case "true", "1":
		opts.DryRun = true
	default:
		return &billing.FieldError{Field: "dry_run", Message: "must be true or false"}
	}
	return nil
}

func validationProblem(fe billing.FieldError) Problem {
	return Problem{Type: ProblemValidation, Status: http.StatusUnprocessableEntity, Title: titleValidation,
		Errors: []billing.FieldError{fe}}
}

// template serves GET /api/v1/data/upload-template/{data_type}.
func (a *API) template(w http.ResponseWriter, r *http.Request) {
	typ := r.PathValue("data_type")
	b, err := importer.Template(typ)
	if errors.Is(err, importer.ErrUnknownType) {
		writeProblem(w, r, Problem{Type: ProblemNotFound, Status: http.StatusNotFound,
			Detail: fmt.Sprintf("no template %q; the data types are %s", typ, strings.Join(importer.Types(), ", "))})
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s.csv"`, typ))
	w.Write(b)
}

func (c Config) maxImportBytes() int64 {
	if c.MaxImportBytes > 0 {
		return c.MaxImportBytes
	}
	return DefaultMaxImportBytes
}

// errStalled: an upload sent nothing for idleTimeout.
var errStalled = fmt.Errorf("the upload stalled for %s", idleTimeout)

// stallGuard reads an upload's body with a read deadline that moves with
// every read, so that a long upload is not cut by the server's
// ReadTimeout while a stalled one still ends.
type stallGuard struct {
	r  io.ReadCloser
	rc *http.ResponseController
}

func (g *stallGuard) Read(p []byte) (int, error) {
	g.rc.SetReadDeadline(time.Now().Add(idleTimeout))
	n, err := g.r.Read(p)
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return n, errStalled
	}
	return n, err
}

func (g *stallGuard) Close() error { return g.r.Close() }
