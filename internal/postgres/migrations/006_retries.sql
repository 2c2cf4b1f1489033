-- Retries, key parking and the dead-letter queue of the consumer runtime
-- (internal/consumer). PostgreSQL decides; Kafka carries: a record that fails
-- is parked here, and its forward to a retry tier or to the dead-letter topic
-- is an outbox row, both written in the transaction that advances the
-- group's position, so nothing is lost or applied twice between the two.

-- A forward is a whole Kafka record, not an event the outbox makes headers
-- for: its headers (the original's plus the retry ones, as a JSON array of
-- {"key", "value" | "value_base64"}) and its key, verbatim. Events leave both
-- NULL.
ALTER TABLE outbox ADD COLUMN headers jsonb, ADD COLUMN record_key bytea;

-- Records a group could not apply yet: failed and waiting for their next
-- attempt (retrying), given up on (dead: the dead-letter queue), queued
-- behind a failed record of the same key (waiting), or resolved by an
-- operator without being applied (skipped). A record leaves the table when
-- it is applied; a purge deletes it.
CREATE TABLE consumer_parked (
    id              bigserial   PRIMARY KEY, -- increasing in parking order: a key's records queue by id
    group_id        text        NOT NULL,
    -- Where the record was first read: a topic of the group, not a retry tier.
    topic           text        NOT NULL,
    partition       int         NOT NULL,
    "offset"        bigint      NOT NULL,
    record_time     timestamptz NOT NULL,
    key             bytea,       -- NULL for a record without a key
    -- Whether the record holds its key: later records of the key wait
    -- behind it. False for a group with unordered retries and for records
    -- without a key.
    ordered         boolean     NOT NULL,
    event_id        uuid,        -- ce_id, when the record could be decoded
    event_type      text        NOT NULL DEFAULT '',
    headers         jsonb       NOT NULL, -- the record's headers, as outbox.headers
    value           bytea,
    edited_value    bytea,       -- an operator's corrected payload, used instead of value
    state           text        NOT NULL CHECK (state IN ('retrying', 'dead', 'waiting', 'skipped')),
    -- Bumped by every forward; a retry record naming an older version is
    -- stale (a duplicate, or overtaken by an operator) and is passed over.
    version         int         NOT NULL DEFAULT 0,
    attempts        int         NOT NULL DEFAULT 0, -- handler attempts that failed
    tier            int         NOT NULL DEFAULT 0, -- retry tier of the pending attempt (retrying)
    not_before      timestamptz, -- when the pending attempt is due (retrying)
    error_class     text        NOT NULL DEFAULT '',
    error           text        NOT NULL DEFAULT '',
    first_failed_at timestamptz,
    last_failed_at  timestamptz,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, topic, partition, "offset")
);

CREATE INDEX consumer_parked_state ON consumer_parked (group_id, state, parked_at);
-- A key's queue, head first.
CREATE INDEX consumer_parked_queue ON consumer_parked (group_id, topic, key, id) WHERE ordered AND state <> 'skipped';

-- The keys a group has parked: while a row exists, every record of the key
-- the group reads is parked behind the key's head. The row is also the
-- key's lock: the partition worker takes it FOR SHARE to park a record, the
-- retry worker and operators FOR UPDATE to release one, so a record is never
-- parked behind a head that was just released.
CREATE TABLE consumer_parked_keys (
    group_id   text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea       NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, key)
);

-- Every operator action on parked records (tally dlq, /v1/dlq): who did
-- what to which record, and why. It survives a purge of the record.
CREATE TABLE dlq_audit (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('replay', 'skip', 'purge')),
    reason     text        NOT NULL DEFAULT '',
    parked_id  bigint      NOT NULL,
    group_id   text        NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    "offset"   bigint      NOT NULL,
    key        bytea,
    event_id   uuid,
    event_type text        NOT NULL DEFAULT '',
    -- A replay's corrected payload: a rebuild of the group applies it in
    -- place of the original, as the group did.
    edited_value bytea
);

CREATE INDEX dlq_audit_group ON dlq_audit (group_id, at);

-- Records set aside before retries existed become dead letters. They never
-- held their keys, and do not start to.
INSERT INTO consumer_parked (group_id, topic, partition, "offset", record_time, key, ordered, headers, value,
                             state, attempts, error_class, error, first_failed_at, last_failed_at, parked_at)
SELECT group_id, topic, partition, "offset", created_at, key, false, headers, value,
       'dead', 1, 'permanent', reason, created_at, created_at, created_at
FROM consumer_rejects;

DROP TABLE consumer_rejects;

-- A group being rebuilt (tally replay) is paused while its rebuilt state is
-- swapped in: consumer_advance refuses to move a partition paused until a
-- time still to come (SQLSTATE TL002), so its members wait. The pause is a
-- lease the rebuild renews: should the rebuild die, it lapses.
ALTER TABLE consumer_offsets ADD COLUMN paused_until timestamptz;

-- Rebuilds running (tally replay), one per group at most: a lease renewed
-- while the rebuild lives. Operators' actions on the group's parked records
-- wait for it to end, since the rebuilt state would not know of them.
CREATE TABLE consumer_rebuilds (
    group_id     text        PRIMARY KEY,
    owner        text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION consumer_advance(g text, t text, p int, e bigint, next bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE consumer_offsets SET next_offset = next, updated_at = now()
    WHERE group_id = g AND topic = t AND partition = p AND epoch = e
      AND (paused_until IS NULL OR paused_until <= clock_timestamp());
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM consumer_offsets WHERE group_id = g AND topic = t AND partition = p AND epoch = e;
    IF FOUND THEN
        RAISE EXCEPTION 'consumer group % is paused (a rebuild is swapping its state in)', g USING ERRCODE = 'TL002';
    END IF;
    RAISE EXCEPTION 'consumer group % lost partition %/% (epoch %)', g, t, p, e USING ERRCODE = 'TL001';
END
$$;

---- create above / drop below ----

CREATE OR REPLACE FUNCTION consumer_advance(g text, t text, p int, e bigint, next bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE consumer_offsets SET next_offset = next, updated_at = now()
    WHERE group_id = g AND topic = t AND partition = p AND epoch = e;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer group % lost partition %/% (epoch %)', g, t, p, e USING ERRCODE = 'TL001';
    END IF;
END
$$;
DROP TABLE consumer_rebuilds;
ALTER TABLE consumer_offsets DROP COLUMN paused_until;
CREATE TABLE consumer_rejects (
    id          bigserial   PRIMARY KEY,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    headers     jsonb       NOT NULL,
    value       bytea,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, topic, partition, "offset")
);
INSERT INTO consumer_rejects (group_id, topic, partition, "offset", key, headers, value, reason, created_at)
SELECT group_id, topic, partition, "offset", key, headers, value, error, parked_at
FROM consumer_parked WHERE state = 'dead';
DROP TABLE dlq_audit;
DROP TABLE consumer_parked_keys;
DROP TABLE consumer_parked;
ALTER TABLE outbox DROP COLUMN record_key, DROP COLUMN headers;
