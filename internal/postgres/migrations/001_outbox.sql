-- The outbox: every event Tally produces, written in the transaction of the
-- change that caused it. It is also the audit trail: the relay never deletes
-- rows; rows older than TALLY_EVENT_RETENTION that the relay has published are
-- pruned.
--
-- Rows are spread over 64 shards by a hash of the record key. Within a shard,
-- seq is gapless and in commit order: a writer takes the shard's row in
-- outbox_heads, which it holds until it commits, so no later writer of that
-- shard can commit before it, and a rollback returns its numbers. The relay
-- can therefore read a shard by position (seq > cursor) and never skip a row,
-- however long a transaction runs, and its reads cost the same whatever
-- history is kept.
CREATE TABLE outbox_heads (
    shard smallint PRIMARY KEY CHECK (shard BETWEEN 0 AND 63),
    head  bigint   NOT NULL DEFAULT 0 -- seq of the shard's last committed event
) WITH (fillfactor = 50); -- room for HOT updates of these hot rows

INSERT INTO outbox_heads (shard) SELECT generate_series(0, 63);

CREATE TABLE outbox (
    shard          smallint    NOT NULL,
    seq            bigint      NOT NULL,
    topic          text        NOT NULL,
    key            text        NOT NULL,
    id             uuid        NOT NULL, -- ce_id
    type           text        NOT NULL, -- ce_type
    source         text        NOT NULL, -- ce_source
    subject        text        NOT NULL, -- ce_subject
    sequence       bigint      NOT NULL, -- ce_sequence, the aggregate's version
    time           timestamptz NOT NULL, -- ce_time
    correlation_id text        NOT NULL,
    causation_id   text        NOT NULL DEFAULT '',
    traceparent    text        NOT NULL DEFAULT '',
    payload        bytea       NOT NULL,
    PRIMARY KEY (shard, seq)
);

-- The audit trail of one aggregate, in order (a key lives in one shard).
CREATE INDEX outbox_aggregate ON outbox (topic, key, seq);

-- The relay's position in each shard: every event with seq <= position has
-- been acknowledged by Kafka. It only moves forward.
CREATE TABLE relay_cursors (
    shard      smallint    PRIMARY KEY CHECK (shard BETWEEN 0 AND 63),
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO relay_cursors (shard) SELECT generate_series(0, 63);

---- create above / drop below ----

DROP TABLE relay_cursors;
DROP TABLE outbox;
DROP TABLE outbox_heads;
