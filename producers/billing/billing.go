// Package billing is the write model of customers, invoices and payments,
// sales and expenses: validation, the invoice state machine, their rows in
// PostgreSQL and the events each change emits. Every command runs in the
// caller's transaction and returns the events of its change; the caller
// writes them to the outbox last and commits, so rows and events commit
// together (see outbox.Write).
//
// Commands lock the aggregate's row first (or insert it), so the events of
// one aggregate are in commit order and their ce_sequence, the aggregate's
// version, goes up by one per event.
package billing

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/internal/envelope"
)

// Sentinel errors of the commands. ValidationError is the fourth kind.
var (
	// ErrNotFound: no aggregate has that id.
	ErrNotFound = errors.New("not found")
	// ErrGone: the invoice was deleted.
	ErrGone = errors.New("deleted")
	// ErrConflict: the change is not allowed in the aggregate's state
	// (paying a void invoice, overpaying, updating a paid one) or the id is
	// taken. The wrapping error says which.
	ErrConflict = errors.New("conflict")
)

// FieldError is one invalid field of a request; Field is a JSON path such
// as lines[2].amount.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
	// Code classifies the error for machines: CodeRequired or CodeInvalid.
	// The CSV importer reports it with each row error; the JSON API leaves
	// it out, as its clients switch on the problem's type.
	Code string `json:"-"`
}

// Codes of FieldError.
const (
	CodeRequired = "required" // the field is missing
	CodeInvalid  = "invalid"  // the field has a value it must not have
)

// ValidationError lists every invalid field of a request.
type ValidationError struct {
	Fields []FieldError
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid request: ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Field + ": " + f.Message)
	}
	return b.String()
}

// problems accumulates field errors.
type problems []FieldError

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, FieldError{field, fmt.Sprintf(format, args...), CodeInvalid})
}

func (p *problems) required(field string) {
	*p = append(*p, FieldError{field, "is required", CodeRequired})
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Fields: p}
}

// Meta is what the envelope of a command's events says beyond the change
// itself: who produced it, what it belongs to, when.
type Meta struct {
	Source        string // ce_source, e.g. "/tally/api"
	CorrelationID string
	CausationID   string // the request or message that caused the change
	TraceParent   string
	Now           time.Time
}

// now is m.Now in UTC at PostgreSQL's precision, so what a command returns
// equals what a later read returns.
func (m Meta) now() time.Time { return m.Now.UTC().Truncate(time.Microsecond) }

func (m Meta) event(typ, subject string, seq int64, causation string, payload any) (envelope.Event, error) {
	data, err := json.Marshal(payload)
	if err != nil {
		return envelope.Event{}, fmt.Errorf("encoding %s payload: %w", typ, err)
	}
	if causation == "" {
		causation = m.CausationID
	}
	return envelope.Event{
		ID: envelope.NewID(), Type: typ, Source: m.Source, Subject: subject, Time: m.now(),
		Sequence: seq, CorrelationID: m.CorrelationID, CausationID: causation, TraceParent: m.TraceParent,
		Data: data,
	}, nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)

// checkID validates a caller-chosen id, or makes one with prefix.
func checkID(p *problems, id *string, prefix string) string {
	if id == nil {
		return NewID(prefix)
	}
	if !idPattern.MatchString(*id) {
		p.add("id", "must be 1 to 64 letters, digits or _ . : -, starting with a letter or digit")
	}
	return *id
}

// NewID returns prefix_ and the hex of a UUIDv7, so ids sort by creation.
func NewID(prefix string) string {
	u, err := uuid.NewV7()
	if err != nil {
		rand.Read(u[:])
	}
	return prefix + "_" + hex.EncodeToString(u[:])
}

// Explain turns a database error that is really the client's into the
// command error it means: a taken id is ErrConflict, an unknown customer a
// ValidationError. Commands queue their writes (see Tx), so these errors
// can surface as late as the commit; callers pass every error of a change,
// the commit's included, through Explain. Other errors are returned as
// they are.
func Explain(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	key := keyValue(pe.Detail)
	switch pe.ConstraintName {
	case "customers_pkey":
		return fmt.Errorf("%w: customer %q already exists", ErrConflict, key)
	case "invoices_pkey":
		return fmt.Errorf("%w: invoice %q already exists", ErrConflict, key)
	case "payments_pkey":
		return fmt.Errorf("%w: payment %q already exists", ErrConflict, key)
	case "sales_pkey":
		return fmt.Errorf("%w: sale %q already exists", ErrConflict, key)
	case "expenses_pkey":
		return fmt.Errorf("%w: expense %q already exists", ErrConflict, key)
	}
	if pe.Code == "23502" && (pe.TableName == "invoices" || pe.TableName == "sales") && pe.ColumnName == "customer_id" {
		return &ValidationError{[]FieldError{{"customer_id", "no such customer", CodeInvalid}}}
	}
	switch pe.Code {
	case "23514", "22021", "22P05": // a check the commands should have made; text PostgreSQL cannot store
		return &ValidationError{[]FieldError{{"", "the database refused a value: " + pe.Message, CodeInvalid}}}
	}
	return err
}

// keyValue reads the value out of a constraint violation's detail, such as
// `Key (id)=(inv-1) already exists.`
func keyValue(detail string) string {
	_, rest, ok := strings.Cut(detail, ")=(")
	if !ok {
		return ""
	}
	if i := strings.LastIndex(rest, ")"); i >= 0 {
		return rest[:i]
	}
	return rest
}
