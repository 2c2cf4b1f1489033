package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the package's queries run on: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	// ErrNotFound: no endpoint, or no delivery, has that id.
	ErrNotFound = errors.New("not found")
	// ErrDisabled: the endpoint is disabled, so a redelivery would never be
	// sent; enable it first.
	ErrDisabled = errors.New("endpoint disabled")
)

// RotationOverlap is how long a secret replaced by a new one still signs
// beside it, so that receivers can switch to the new one without
// refusing a message.
const RotationOverlap = 24 * time.Hour

// MaxEventTypes bounds an endpoint's filter.
const MaxEventTypes = 100

// pattern is an event-type filter entry: a type ("tally.invoice.paid.v1"),
// a prefix of one followed by * ("tally.invoice.*"), or * alone.
var pattern = regexp.MustCompile(`^(\*|[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(\.\*|\*)?)$`)

// CheckEventTypes returns an error naming the first entry of an endpoint's
// filter that is not a type or a prefix followed by *, or an empty filter.
func CheckEventTypes(types []string) error {
	if len(types) == 0 {
		return errors.New("must list at least one event type (* for all)")
	}
	if len(types) > MaxEventTypes {
		return fmt.Errorf("at most %d entries", MaxEventTypes)
	}
	for _, t := range types {
		if !pattern.MatchString(t) {
			return fmt.Errorf("%q is neither an event type (tally.invoice.paid.v1) nor a prefix followed by * (tally.invoice.*)", t)
		}
	}
	return nil
}

// Endpoint is a registered webhook endpoint. An event is delivered to it
// if its type matches an entry of EventTypes (see CheckEventTypes) while
// it is enabled.
type Endpoint struct {
	ID          string   `json:"id"`
	URL         string   `json:"url"`
	Description string   `json:"description"`
	EventTypes  []string `json:"event_types"`
	// Secret is given only when it was made or replaced by the request
	// answered: the API never shows it again.
	Secret string `json:"secret,omitempty"`
	// PreviousSecretExpiresAt is, during a rotation, when the secret
	// replaced stops signing beside the new one.
	PreviousSecretExpiresAt *time.Time `json:"previous_secret_expires_at"`
	Enabled                 bool       `json:"enabled"`
	// DisabledReason says why a disabled endpoint was disabled: by a
	// request, after a 410 Gone, or after failing for days.
	DisabledReason      *string    `json:"disabled_reason"`
	DisabledAt          *time.Time `json:"disabled_at"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	FailingSince        *time.Time `json:"failing_since"`
	CircuitOpenUntil    *time.Time `json:"circuit_open_until"`
	ThrottledUntil      *time.Time `json:"throttled_until"`
	CreatedAt           time.Time  `json:"created_at"`
	UpdatedAt           time.Time  `json:"updated_at"`
}

// NewEndpoint is what registering an endpoint takes. The caller checks the
// URL (Guard.CheckURL), the filter (CheckEventTypes) and the secret
// (CheckSecret); an empty Secret is made (NewSecret).
type NewEndpoint struct {
	URL         string
	Description string
	EventTypes  []string
	Secret      string
	Disabled    bool
}

// EndpointPatch changes the fields that are not nil, checked as for
// NewEndpoint. A new Secret starts a rotation: the one it replaces signs
// beside it for RotationOverlap. Enabling a disabled endpoint forgets its
// failures (breaker, throttle, the failing clock); disabling one records
// that a request did it.
type EndpointPatch struct {
	URL         *string
	Description *string
	EventTypes  []string
	Secret      *string
	Enabled     *bool
}

const endpointColumns = `id, url, description, event_types, previous_secret_expires_at, enabled, disabled_reason,
	disabled_at, consecutive_failures, failing_since, circuit_open_until, throttled_until, created_at, updated_at`

func scanEndpoint(row pgx.Row) (Endpoint, error) {
	var e Endpoint
	err := row.Scan(&e.ID, &e.URL, &e.Description, &e.EventTypes, &e.PreviousSecretExpiresAt, &e.Enabled,
		&e.DisabledReason, &e.DisabledAt, &e.ConsecutiveFailures, &e.FailingSince, &e.CircuitOpenUntil,
		&e.ThrottledUntil, &e.CreatedAt, &e.UpdatedAt)
	return e, err
}

func newEndpointID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "we_" + hex.EncodeToString(b)
}

// CreateEndpoint registers an endpoint; the answer holds its secret. It
// needs only QueryRow of a DB, so that it runs in any transaction.
func CreateEndpoint(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, n NewEndpoint) (Endpoint, error) {
	if n.Secret == "" {
		n.Secret = NewSecret()
	}
	var reason *string
	if n.Disabled {
		r := "disabled by request"
		reason = &r
	}
	e, err := scanEndpoint(db.QueryRow(ctx, `INSERT INTO webhook_endpoints (id, url, description, event_types, secret,
			enabled, disabled_reason, disabled_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $6 THEN NULL ELSE now() END)
		RETURNING `+endpointColumns, newEndpointID(), n.URL, n.Description, n.EventTypes, n.Secret, !n.Disabled, reason))
	if err != nil {
		return Endpoint{}, fmt.Errorf("registering a webhook endpoint: %w", err)
	}
	e.Secret = n.Secret
	return e, nil
}

// GetEndpoint returns endpoint id, or ErrNotFound.
func GetEndpoint(ctx context.Context, db DB, id string) (Endpoint, error) {
	e, err := scanEndpoint(db.QueryRow(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("%w: webhook endpoint %q", ErrNotFound, id)
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("reading webhook endpoint %q: %w", id, err)
	}
	return e, nil
}

// ListEndpoints returns at most limit endpoints whose id is after after
// ("" for the first), by id.
func ListEndpoints(ctx context.Context, db DB, after string, limit int) ([]Endpoint, error) {
	rows, err := db.Query(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints WHERE id > $1 ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("listing webhook endpoints: %w", err)
	}
	es, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Endpoint, error) { return scanEndpoint(r) })
	if err != nil {
		return nil, fmt.Errorf("listing webhook endpoints: %w", err)
	}
	return es, nil
}

// UpdateEndpoint applies p to endpoint id at now, or returns ErrNotFound.
func UpdateEndpoint(ctx context.Context, db DB, id string, p EndpointPatch, now time.Time) (Endpoint, error) {
	e, err := scanEndpoint(db.QueryRow(ctx, `UPDATE webhook_endpoints SET
			url = coalesce($2, url),
			description = coalesce($3, description),
			event_types = coalesce($4, event_types),
			previous_secret = CASE WHEN $5::text <> secret THEN secret ELSE previous_secret END,
			previous_secret_expires_at = CASE WHEN $5::text <> secret THEN $7::timestamptz ELSE previous_secret_expires_at END,
			secret = coalesce($5, secret),
			enabled = coalesce($6, enabled),
			disabled_reason = CASE WHEN $6 THEN NULL WHEN NOT $6 AND enabled THEN 'disabled by request' ELSE disabled_reason END,
			disabled_at = CASE WHEN $6 THEN NULL WHEN NOT $6 AND enabled THEN $8 ELSE disabled_at END,
			consecutive_failures = CASE WHEN $6 AND NOT enabled THEN 0 ELSE consecutive_failures END,
			failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END,
			circuit_open_until = CASE WHEN $6 AND NOT enabled THEN NULL ELSE circuit_open_until END,
			throttled_until = CASE WHEN $6 AND NOT enabled THEN NULL ELSE throttled_until END,
			updated_at = $8
		WHERE id = $1
		RETURNING `+endpointColumns,
		id, p.URL, p.Description, p.EventTypes, p.Secret, p.Enabled, now.Add(RotationOverlap), now))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("%w: webhook endpoint %q", ErrNotFound, id)
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("updating webhook endpoint %q: %w", id, err)
	}
	if p.Secret != nil {
		e.Secret = *p.Secret
	}
	return e, nil
}

// DeleteEndpoint removes endpoint id and its deliveries, or returns
// ErrNotFound. An attempt in flight finishes, and is not recorded.
func DeleteEndpoint(ctx context.Context, db DB, id string) error {
	tag, err := db.Exec(ctx, `DELETE FROM webhook_endpoints WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("deleting webhook endpoint %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: webhook endpoint %q", ErrNotFound, id)
	}
	return nil
}
