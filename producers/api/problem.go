package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tally-dev/tally/consumers/revenue"
	"github.com/tally-dev/tally/internal/consumer"
	"github.com/tally-dev/tally/internal/outbox"
	"github.com/tally-dev/tally/producers/billing"
)

// Problem is an RFC 9457 problem detail, the body of every error response
// (content type application/problem+json). Type is a stable URN naming the
// kind of problem; clients switch on it, not on Title or Detail.
type Problem struct {
	Type     string               `json:"type"`
	Title    string               `json:"title"`
	Status   int                  `json:"status"`
	Detail   string               `json:"detail,omitempty"`
	Instance string               `json:"instance,omitempty"`
	Errors   []billing.FieldError `json:"errors,omitempty"`
}

// Problem types.
const (
	ProblemMalformed        = "urn:tally:problem:malformed-request"
	ProblemValidation       = "urn:tally:problem:validation"
	ProblemNotFound         = "urn:tally:problem:not-found"
	ProblemGone             = "urn:tally:problem:gone"
	ProblemConflict         = "urn:tally:problem:conflict"
	ProblemIdempotencyReuse = "urn:tally:problem:idempotency-key-reused"
	ProblemTooLarge         = "urn:tally:problem:body-too-large"
	ProblemInvalidCSV       = "urn:tally:problem:invalid-csv"
	ProblemMediaType        = "urn:tally:problem:unsupported-media-type"
	ProblemMethod           = "urn:tally:problem:method-not-allowed"
	ProblemUnavailable      = "urn:tally:problem:unavailable"
	ProblemInternal         = "urn:tally:problem:internal"
)

const titleValidation = "The request is well-formed but some fields are invalid"

func writeProblem(w http.ResponseWriter, r *http.Request, p Problem) {
	if p.Title == "" {
		p.Title = http.StatusText(p.Status)
	}
	p.Instance = r.URL.Path
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

// problemOf maps a command's error to its problem; ok is false for errors
// that are not the client's (the caller answers 500 or 503).
func problemOf(err error) (p Problem, ok bool) {
	if p, ok := webhookProblem(err); ok {
		return p, true
	}
	if p, ok := mailProblem(err); ok {
		return p, true
	}
	var ve *billing.ValidationError
	switch {
	case errors.As(err, &ve):
		return Problem{Type: ProblemValidation, Status: http.StatusUnprocessableEntity,
			Title: titleValidation, Errors: ve.Fields}, true
	case errors.Is(err, consumer.ErrNoSelection):
		return fieldProblem("ids", noSelection), true
	case errors.Is(err, consumer.ErrBadEdit):
		return fieldProblem("payload", err.Error()), true
	case errors.Is(err, consumer.ErrNoActor):
		return fieldProblem("actor", "required: who takes the action, for the audit trail"), true
	case errors.Is(err, billing.ErrNotFound), errors.Is(err, revenue.ErrNotFound), errors.Is(err, consumer.ErrNotFound):
		return Problem{Type: ProblemNotFound, Status: http.StatusNotFound, Detail: err.Error()}, true
	case errors.Is(err, billing.ErrGone):
		return Problem{Type: ProblemGone, Status: http.StatusGone, Detail: err.Error()}, true
	case errors.Is(err, outbox.ErrTooLarge):
		return Problem{Type: ProblemTooLarge, Status: http.StatusRequestEntityTooLarge,
			Detail: "the change is too large to record as one event: " + err.Error()}, true
	case errors.Is(err, consumer.ErrRebuilding):
		return Problem{Type: ProblemConflict, Status: http.StatusConflict,
			Title: "The change is not allowed in the current state", Detail: err.Error() + "; act again once the rebuild is done"}, true
	case errors.Is(err, billing.ErrConflict):
		return Problem{Type: ProblemConflict, Status: http.StatusConflict,
			Title: "The change is not allowed in the current state", Detail: err.Error()}, true
	}
	return Problem{}, false
}

// fieldProblem is the validation problem of one invalid field.
func fieldProblem(field, message string) Problem {
	return Problem{Type: ProblemValidation, Status: http.StatusUnprocessableEntity, Title: titleValidation,
		Errors: []billing.FieldError{{Field: field, Message: message}}}
}
