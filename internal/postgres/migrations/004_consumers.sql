-- The consumer runtime's state. A group's position in each partition lives
-- here, not in Kafka: a record's effects, its idempotency mark and the new
-- position commit in one transaction, so a crash repeats nothing and loses
-- nothing. Kafka's committed offsets are only a hint for lag tools.
--
-- epoch fences members: a member that is given a partition bumps it, and
-- every transaction that advances the position names the epoch it was
-- given; a member that lost the partition meanwhile (a zombie) names an old
-- one, fails, and applies nothing.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    next_offset bigint      NOT NULL, -- next offset to apply; -1: none applied yet
    epoch       bigint      NOT NULL,
    owner       text        NOT NULL, -- the member that holds the epoch, for operators
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- consumer_advance moves a partition's position if the caller still holds
-- the epoch, and fails the transaction otherwise (SQLSTATE TL001), so that
-- a fenced member's effects are rolled back with it.
CREATE FUNCTION consumer_advance(g text, t text, p int, e bigint, next bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE consumer_offsets SET next_offset = next, updated_at = now()
    WHERE group_id = g AND topic = t AND partition = p AND epoch = e;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer group % lost partition %/% (epoch %)', g, t, p, e USING ERRCODE = 'TL001';
    END IF;
END
$$;

-- Idempotency marks: the events each group has applied, by ce_id, so a
-- duplicate (a relay republishing after a crash) is recognised.
CREATE TABLE consumer_applied (
    group_id   text        NOT NULL,
    event_id   uuid        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, event_id)
);

-- Records a group set aside instead of applying: undecodable, invalid
-- against their schema, of a type the group does not know, or refused by a
-- handler as permanently wrong. Kept whole (raw bytes), with the reason.
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

---- create above / drop below ----

DROP TABLE consumer_rejects;
DROP TABLE consumer_applied;
DROP FUNCTION consumer_advance(text, text, int, bigint, bigint);
DROP TABLE consumer_offsets;
