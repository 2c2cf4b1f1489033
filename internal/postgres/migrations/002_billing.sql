-- The write model of customers, invoices and payments. version is the
-- aggregate's version: it goes up by one with each of its events and is the
-- events' ce_sequence.
CREATE TABLE customers (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    email      text        NOT NULL,
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE invoices (
    id          text        PRIMARY KEY,
    customer_id text        NOT NULL REFERENCES customers (id),
    currency    text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('open', 'paid', 'void', 'deleted')),
    issued_at   date        NOT NULL,
    due_at      date        NOT NULL CHECK (due_at >= issued_at),
    -- Lines are values of the invoice, always read and written with it.
    lines       jsonb       NOT NULL,
    subtotal    bigint      NOT NULL CHECK (subtotal >= 0),
    discount    bigint      NOT NULL CHECK (discount >= 0 AND discount <= subtotal),
    tax         bigint      NOT NULL CHECK (tax >= 0),
    total       bigint      NOT NULL CHECK (total = subtotal - discount + tax),
    amount_paid bigint      NOT NULL CHECK (amount_paid >= 0 AND amount_paid <= total),
    paid_at     date,
    voided_at   timestamptz,
    deleted_at  timestamptz,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX invoices_customer ON invoices (customer_id);

CREATE TABLE payments (
    id         text        PRIMARY KEY,
    invoice_id text        NOT NULL REFERENCES invoices (id),
    amount     bigint      NOT NULL CHECK (amount > 0),
    paid_at    date        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX payments_invoice ON payments (invoice_id, created_at);

-- Responses to POST requests that carried an Idempotency-Key, stored in the
-- transaction of the change, so a retry returns the first response and writes
-- nothing new.
CREATE TABLE idempotency_keys (
    key         text        PRIMARY KEY,
    fingerprint bytea       NOT NULL, -- hash of method, path and body
    status      int         NOT NULL,
    location    text        NOT NULL DEFAULT '',
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

---- create above / drop below ----

DROP TABLE idempotency_keys;
DROP TABLE payments;
DROP TABLE invoices;
DROP TABLE customers;
