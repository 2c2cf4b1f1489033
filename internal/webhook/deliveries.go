package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Delivery states.
const (
	// StatePending: not yet delivered; NextAttemptAt says when it is due.
	StatePending = "pending"
	// StateSucceeded: an attempt was answered 2xx.
	StateSucceeded = "succeeded"
	// StateFailed: the retries ran out, or the endpoint answered 410 Gone.
	StateFailed = "failed"
)

// Delivery is one event for one endpoint.
type Delivery struct {
	ID         int64     `json:"id"`
	EndpointID string    `json:"endpoint_id"`
	EventID    uuid.UUID `json:"event_id"`
	EventType  string    `json:"event_type"`
	EventTime  time.Time `json:"event_time"`
	// WebhookID is the webhook-id header of every attempt (MessageID).
	WebhookID string          `json:"webhook_id"`
	Payload   json.RawMessage `json:"payload"`
	Status    string          `json:"status"`
	// Attempts counts the attempts since the delivery was written, or
	// since its last manual redelivery; the log keeps them all.
	Attempts      int        `json:"attempts"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	LastError     *string    `json:"last_error"`
	CreatedAt     time.Time  `json:"created_at"`
	CompletedAt   *time.Time `json:"completed_at"`
}

// Attempt is one attempt to send a delivery.
type Attempt struct {
	AttemptedAt time.Time `json:"attempted_at"`
	// StatusCode is the HTTP status answered; nil when there was no answer
	// (a timeout, a refused or forbidden address).
	StatusCode *int  `json:"status_code"`
	DurationMS int64 `json:"duration_ms"`
	// Response is the start of the response body, at most 1 KiB.
	Response string  `json:"response"`
	Error    *string `json:"error"`
}

// DeliveryWithAttempts is a delivery and its log, oldest attempt first.
type DeliveryWithAttempts struct {
	Delivery
	AttemptLog []Attempt `json:"attempt_log"`
}

// MessageID is the webhook-id of event eventID's delivery to endpoint: the
// same at every attempt, and for a manual redelivery, so receivers dedupe
// on it, and derived from the pair alone, so it needs no storage.
func MessageID(eventID uuid.UUID, endpoint string) string {
	h := sha256.New()
	h.Write(eventID[:])
	h.Write([]byte(endpoint))
	return "msg_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// body is the payload sent, in the Standard Webhooks form: the event's
// type, its time and its data.
func body(typ string, at time.Time, data json.RawMessage) ([]byte, error) {
	return json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp string          `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{typ, at.UTC().Format(time.RFC3339Nano), data})
}

const deliveryColumns = `id, endpoint_id, event_id, event_type, event_time, payload, status, attempts,
	CASE WHEN status = 'pending' THEN next_attempt_at END, last_error, created_at, completed_at`

func scanDelivery(row pgx.Row) (Delivery, error) {
	var d Delivery
	err := row.Scan(&d.ID, &d.EndpointID, &d.EventID, &d.EventType, &d.EventTime, &d.Payload, &d.Status, &d.Attempts,
		&d.NextAttemptAt, &d.LastError, &d.CreatedAt, &d.CompletedAt)
	d.WebhookID = MessageID(d.EventID, d.EndpointID)
	return d, err
}

// ListDeliveries returns at most limit deliveries of endpoint whose id is
// after after, oldest first, or ErrNotFound for an unknown endpoint.
func ListDeliveries(ctx context.Context, db DB, endpoint string, after int64, limit int) ([]Delivery, error) {
	rows, err := db.Query(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries
		WHERE endpoint_id = $1 AND id > $2 ORDER BY id LIMIT $3`, endpoint, after, limit)
	if err != nil {
		return nil, fmt.Errorf("listing the deliveries of webhook endpoint %q: %w", endpoint, err)
	}
	ds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) { return scanDelivery(r) })
	if err != nil {
		return nil, fmt.Errorf("listing the deliveries of webhook endpoint %q: %w", endpoint, err)
	}
	if len(ds) == 0 {
		if _, err := GetEndpoint(ctx, db, endpoint); err != nil {
			return nil, err
		}
	}
	return ds, nil
}

// GetDelivery returns delivery id with its attempts, or ErrNotFound.
func GetDelivery(ctx context.Context, db DB, id int64) (DeliveryWithAttempts, error) {
	d, err := scanDelivery(db.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return DeliveryWithAttempts{}, fmt.Errorf("%w: webhook delivery %d", ErrNotFound, id)
	}
	if err != nil {
		return DeliveryWithAttempts{}, fmt.Errorf("reading webhook delivery %d: %w", id, err)
	}
	rows, err := db.Query(ctx, `SELECT attempted_at, status_code, duration_ms, response, error
		FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id`, id)
	if err != nil {
		return DeliveryWithAttempts{}, fmt.Errorf("reading the attempts of webhook delivery %d: %w", id, err)
	}
	as, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Attempt])
	if err != nil {
		return DeliveryWithAttempts{}, fmt.Errorf("reading the attempts of webhook delivery %d: %w", id, err)
	}
	return DeliveryWithAttempts{Delivery: d, AttemptLog: append([]Attempt{}, as...)}, nil
}

// redeliverSQL makes the deliveries it selects due at $1, as new: pending,
// no attempt yet in this round. One in flight keeps its lease, so it is
// not sent twice at once.
const redeliverSQL = `UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, last_error = NULL,
	completed_at = NULL, next_attempt_at = greatest($1, coalesce(d.leased_until, $1))`

// Redeliver sends delivery id again, from the start of the retry
// schedule, whatever its state: ErrNotFound if there is no such delivery,
// ErrDisabled if its endpoint is disabled.
func Redeliver(ctx context.Context, db DB, id int64, now time.Time) (Delivery, error) {
	d, err := scanDelivery(db.QueryRow(ctx, `WITH r AS (`+redeliverSQL+`
		FROM webhook_endpoints e WHERE d.id = $2 AND e.id = d.endpoint_id AND e.enabled
		RETURNING d.*) SELECT `+deliveryColumns+` FROM r`, now, id))
	if errors.Is(err, pgx.ErrNoRows) {
		var enabled bool
		err := db.QueryRow(ctx, `SELECT e.enabled FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
			WHERE d.id = $1`, id).Scan(&enabled)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return Delivery{}, fmt.Errorf("%w: webhook delivery %d", ErrNotFound, id)
		case err != nil:
			return Delivery{}, fmt.Errorf("redelivering webhook delivery %d: %w", id, err)
		}
		return Delivery{}, fmt.Errorf("%w: webhook delivery %d is for a disabled endpoint", ErrDisabled, id)
	}
	if err != nil {
		return Delivery{}, fmt.Errorf("redelivering webhook delivery %d: %w", id, err)
	}
	return d, nil
}

// RedeliverRange sends again the deliveries of endpoint written in [since,
// until) that failed, and with succeeded those that succeeded too, and
// returns how many. Errors as Redeliver's.
func RedeliverRange(ctx context.Context, db DB, endpoint string, since, until time.Time, succeeded bool, now time.Time) (int, error) {
	e, err := GetEndpoint(ctx, db, endpoint)
	if err != nil {
		return 0, err
	}
	if !e.Enabled {
		return 0, fmt.Errorf("%w: webhook endpoint %q", ErrDisabled, endpoint)
	}
	states := []string{StateFailed}
	if succeeded {
		states = append(states, StateSucceeded)
	}
	tag, err := db.Exec(ctx, redeliverSQL+` WHERE d.endpoint_id = $2 AND d.created_at >= $3 AND d.created_at < $4
		AND d.status = ANY($5)`, now, endpoint, since, until, states)
	if err != nil {
		return 0, fmt.Errorf("redelivering the deliveries of webhook endpoint %q: %w", endpoint, err)
	}
	return int(tag.RowsAffected()), nil
}

// Prune deletes at most limit deliveries that ended (succeeded or failed)
// before before, the oldest first, with their attempts, and returns how
// many. A delivery redelivered meanwhile, even while Prune runs, is
// pending again, and kept.
func Prune(ctx context.Context, db DB, before time.Time, limit int) (int64, error) {
	ct, err := db.Exec(ctx, `WITH old AS (
			SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND completed_at < $1 ORDER BY completed_at LIMIT $2)
		DELETE FROM webhook_deliveries d USING old WHERE d.id = old.id AND d.status <> 'pending' AND d.completed_at < $1`, before, limit)
	if err != nil {
		return 0, fmt.Errorf("pruning webhook deliveries: %w", err)
	}
	return ct.RowsAffected(), nil
}
