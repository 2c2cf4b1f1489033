package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/postgres"
)

type storedResponse struct {
	fingerprint []byte
	status      int
	location    string
	body        []byte
}

// claimKey reserves key in tx. It returns nil when the key is new or its
// stored response is older than ttl (the caller goes on and stores its
// response with queueStoreKey as it commits), or the response stored by an
// earlier request. A concurrent request with the same key blocks in the
// INSERT until the first commits or rolls back, which is what serialises
// retries. Expiry does not wait for ExpireKeys: a key past its TTL is simply
// taken again.
func claimKey(ctx context.Context, tx *postgres.Tx, key string, fp []byte, ttl time.Duration) (*storedResponse, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (key, fingerprint, status, body)
		VALUES ($1, $2, 0, '')
		ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, status = 0, location = '', body = '',
			created_at = now()
		WHERE idempotency_keys.created_at < now() - $3::interval`, key, fp, ttl)
	if err != nil {
		return nil, fmt.Errorf("claiming idempotency key: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil, nil
	}
	var s storedResponse
	err = tx.QueryRow(ctx, `SELECT fingerprint, status, location, body FROM idempotency_keys WHERE key = $1`, key).
		Scan(&s.fingerprint, &s.status, &s.location, &s.body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("idempotency key %q vanished while being read", key)
	}
	if err != nil {
		return nil, fmt.Errorf("reading idempotency key: %w", err)
	}
	if len(s.body) == 0 {
		s.body = nil
	}
	return &s, nil
}

// queueStoreKey queues the storing of a claimed key's response on b.
func queueStoreKey(b *pgx.Batch, key string, status int, location string, body []byte) {
	if body == nil {
		body = []byte{}
	}
	b.Queue(`UPDATE idempotency_keys SET status = $2, location = $3, body = $4 WHERE key = $1`,
		key, status, location, body)
}

// ExpireKeys deletes stored Idempotency-Key responses older than ttl, every
// interval, until ctx ends.
func ExpireKeys(ctx context.Context, pool *pgxpool.Pool, ttl, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		tag, err := pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval`, ttl)
		if err != nil && ctx.Err() == nil {
			log.Warn("expiring idempotency keys", "err", err)
		} else if n := tag.RowsAffected(); n > 0 {
			log.Debug("expired idempotency keys", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
