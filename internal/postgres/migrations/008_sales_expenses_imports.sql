-- The write model of sales and expenses, and the record of CSV imports.
-- version is the aggregate's version, the ce_sequence of its events, as for
-- invoices. Rows are never deleted: a deleted sale or expense keeps its row,
-- marked deleted, so its id and audit trail remain.
--
-- external_id is the caller's id of a row that came from a CSV file; it is
-- what makes an import idempotent: a row whose external_id exists is a
-- duplicate and changes nothing. Rows made through the JSON API have none.

CREATE TABLE sales (
    id              text        PRIMARY KEY,
    -- An existing customer, checked by the writes as invoices check theirs
    -- (see migration 003 for why not a foreign key).
    customer_id     text        NOT NULL,
    currency        text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount >= 0), -- gross, in minor units
    quantity        bigint      NOT NULL CHECK (quantity >= 1),
    product         text,
    date            date        NOT NULL,
    refunded_amount bigint      NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    status          text        NOT NULL CHECK (status IN ('active', 'deleted')),
    external_id     text        UNIQUE,
    version         bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);

CREATE INDEX sales_customer ON sales (customer_id);

CREATE TABLE expenses (
    id                 text        PRIMARY KEY,
    category           text        NOT NULL,
    vendor             text,
    currency           text        NOT NULL,
    amount             bigint      NOT NULL CHECK (amount >= 0),
    date               date        NOT NULL,
    cost_of_goods_sold boolean     NOT NULL DEFAULT false,
    status             text        NOT NULL CHECK (status IN ('active', 'deleted')),
    external_id        text        UNIQUE,
    version            bigint      NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    deleted_at         timestamptz
);

ALTER TABLE customers ADD COLUMN external_id text UNIQUE;

-- A customer that has sales cannot be deleted either.
CREATE OR REPLACE FUNCTION customers_keep_invoiced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM invoices WHERE customer_id = OLD.id) THEN
        RAISE EXCEPTION 'customer % has invoices', OLD.id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM sales WHERE customer_id = OLD.id) THEN
        RAISE EXCEPTION 'customer % has sales', OLD.id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END
$$;

-- One CSV import that wrote (dry runs leave no trace). It is inserted
-- running when the import starts, its counts move with every batch the
-- import commits, and it ends completed or failed, with the import's
-- tally.import.completed.v1 event in the same transaction.
CREATE TABLE imports (
    id          text        PRIMARY KEY,
    type        text        NOT NULL CHECK (type IN ('sales', 'customers', 'expenses')),
    mode        text        NOT NULL CHECK (mode IN ('partial', 'all_or_nothing')),
    status      text        NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    filename    text        NOT NULL DEFAULT '',
    rows        bigint      NOT NULL DEFAULT 0, -- data rows in the file
    processed   bigint      NOT NULL DEFAULT 0, -- of which handled so far
    created     bigint      NOT NULL DEFAULT 0,
    duplicates  bigint      NOT NULL DEFAULT 0,
    rejected    bigint      NOT NULL DEFAULT 0,
    errors      bigint      NOT NULL DEFAULT 0, -- row errors, of which import_errors keeps the first ones
    failure     text        NOT NULL DEFAULT '', -- why a failed import failed
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz
);

-- The first row errors of an import (the importer stops keeping them at a
-- cap; imports.errors has the total).
CREATE TABLE import_errors (
    import_id text   NOT NULL REFERENCES imports (id),
    n         int    NOT NULL, -- order of the error within the import
    row       bigint NOT NULL,
    "column"  text   NOT NULL,
    code      text   NOT NULL,
    message   text   NOT NULL,
    PRIMARY KEY (import_id, n)
);

---- create above / drop below ----

DROP TABLE import_errors;
DROP TABLE imports;
CREATE OR REPLACE FUNCTION customers_keep_invoiced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM invoices WHERE customer_id = OLD.id) THEN
        RAISE EXCEPTION 'customer % has invoices', OLD.id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END
$$;
ALTER TABLE customers DROP COLUMN external_id;
DROP TABLE expenses;
DROP TABLE sales;
