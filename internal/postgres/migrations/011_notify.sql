-- Webhooks (internal/webhook) and the notify group (consumers/notify): the
-- endpoints registered over HTTP, the deliveries the group writes for each
-- event an endpoint subscribes to, and the log of every attempt to send
-- one.

-- An endpoint. event_types are exact event types or prefixes ending in *
-- (tally.invoice.*, or * for every type). previous_secret signs beside
-- secret until previous_secret_expires_at, so that a receiver can switch
-- without downtime. The breaker's and the throttle's state are here, where
-- every worker sees them: consecutive_failures counts failed attempts since
-- the last success, circuit_open_until holds deliveries back after too many,
-- throttled_until after a 429, failing_since starts the clock that disables
-- an endpoint failing for days (disabled_reason says why).
CREATE TABLE webhook_endpoints (
    id                         text        PRIMARY KEY,
    url                        text        NOT NULL,
    description                text        NOT NULL DEFAULT '',
    event_types                text[]      NOT NULL CHECK (cardinality(event_types) > 0),
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    enabled                    boolean     NOT NULL DEFAULT true,
    disabled_reason            text,
    disabled_at                timestamptz,
    consecutive_failures       integer     NOT NULL DEFAULT 0,
    failing_since              timestamptz,
    circuit_open_until         timestamptz,
    throttled_until            timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- webhook_type_matches reports whether an endpoint's filter takes an event
-- type: a pattern is the type itself, or a prefix of it followed by *.
CREATE FUNCTION webhook_type_matches(patterns text[], typ text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1 FROM unnest(patterns) AS p
        WHERE p = typ OR (right(p, 1) = '*' AND starts_with(typ, left(p, -1)))
    )
$$;

-- A delivery: one event for one endpoint, at most once ((event_id,
-- endpoint_id) is unique, so an event the group sees again adds nothing).
-- payload is the event's data; the body sent is built from it, the type
-- and event_time. attempts counts the attempts of the current round (a
-- manual redelivery starts a new one); leased_until marks an attempt in
-- flight, whose worker owns the row until then (a worker that dies lets
-- the lease lapse, and the delivery is tried again).
CREATE TABLE webhook_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     text        NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    event_time      timestamptz NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (event_id, endpoint_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (endpoint_id, created_at);

-- Every attempt to send a delivery: the HTTP status (none when the request
-- failed), how long it took, the start of the response body (at most
-- 1 KiB) and the error.
CREATE TABLE webhook_attempts (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    duration_ms  bigint      NOT NULL,
    response     text        NOT NULL DEFAULT '',
    error        text
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

---- create above / drop below ----

DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP FUNCTION webhook_type_matches(text[], text);
DROP TABLE webhook_endpoints;
