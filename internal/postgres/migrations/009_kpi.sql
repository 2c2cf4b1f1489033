-- The KPI group's projections (consumers/kpi), built only from events: the
-- facts the KPIs are computed from when they are asked for. last_sequence
-- is the ce_sequence of the last event applied to a row, so an older event
-- seen late changes nothing.

-- A sale as its last event left it; a deleted one stays, inactive, so a
-- late older event cannot bring it back.
CREATE TABLE kpi_sales (
    sale_id       text    PRIMARY KEY,
    customer_id   text    NOT NULL,
    currency      text    NOT NULL,
    day           date    NOT NULL,
    amount        bigint  NOT NULL,
    refunded      bigint  NOT NULL,
    active        boolean NOT NULL,
    last_sequence bigint  NOT NULL
);

CREATE INDEX kpi_sales_day ON kpi_sales (currency, day) WHERE active;
CREATE INDEX kpi_sales_customer ON kpi_sales (currency, customer_id, day) WHERE active;

CREATE TABLE kpi_expenses (
    expense_id    text    PRIMARY KEY,
    currency      text    NOT NULL,
    day           date    NOT NULL,
    category      text    NOT NULL,
    amount        bigint  NOT NULL,
    cogs          boolean NOT NULL,
    active        boolean NOT NULL,
    last_sequence bigint  NOT NULL
);

CREATE INDEX kpi_expenses_day ON kpi_expenses (currency, day) WHERE active;

-- An invoice, for receivables: closed_on is the day it was voided or
-- deleted, settled_on the day it was paid in full (it owes nothing from
-- then on).
CREATE TABLE kpi_invoices (
    invoice_id    text   PRIMARY KEY,
    currency      text   NOT NULL,
    issued_on     date   NOT NULL,
    due_on        date   NOT NULL,
    total         bigint NOT NULL,
    closed_on     date,
    settled_on    date,
    last_sequence bigint NOT NULL
);

CREATE INDEX kpi_invoices_issued ON kpi_invoices (currency, issued_on);

CREATE TABLE kpi_payments (
    invoice_id text   NOT NULL,
    payment_id text   NOT NULL,
    paid_on    date   NOT NULL,
    amount     bigint NOT NULL,
    PRIMARY KEY (invoice_id, payment_id)
);

-- Recognized revenue by day, from the revenue group's events: each event
-- adds to its days once (the runtime applies an event once).
CREATE TABLE kpi_revenue (
    currency text   NOT NULL,
    day      date   NOT NULL,
    amount   bigint NOT NULL,
    PRIMARY KEY (currency, day)
);

CREATE TABLE kpi_customers (
    customer_id   text   PRIMARY KEY,
    created_on    date   NOT NULL,
    last_sequence bigint NOT NULL
);

CREATE INDEX kpi_customers_created ON kpi_customers (created_on);

-- The days whose KPIs an event may have changed, for the publisher of
-- tally.kpi.calculated.v1 (the scheduler's task kpi.publish), which takes
-- and deletes them. No key: concurrent batches marking the same day must
-- not wait for each other; the publisher takes each day once.
CREATE TABLE kpi_dirty (
    currency text NOT NULL,
    day      date NOT NULL
);

-- The KPI values the publisher announced, by currency, granularity
-- (day, month), period (YYYY-MM-DD, YYYY-MM) and KPI. version counts the
-- changes of one value; seq orders every change (publishers commit one at
-- a time), for the live stream GET /v1/kpis/stream. Written by the
-- publisher alone, and not a projection of the group: a rebuild leaves it,
-- so only values that the rebuild changes are announced again.
CREATE TABLE kpi_values (
    currency    text        NOT NULL,
    granularity text        NOT NULL CHECK (granularity IN ('day', 'month')),
    period      text        NOT NULL,
    kpi         text        NOT NULL,
    value       jsonb       NOT NULL,
    version     bigint      NOT NULL,
    seq         bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (currency, granularity, period, kpi)
);

CREATE SEQUENCE kpi_values_seq;
CREATE UNIQUE INDEX kpi_values_by_seq ON kpi_values (seq);

---- create above / drop below ----

DROP TABLE kpi_values;
DROP SEQUENCE kpi_values_seq;
DROP TABLE kpi_dirty;
DROP TABLE kpi_customers;
DROP TABLE kpi_revenue;
DROP TABLE kpi_payments;
DROP TABLE kpi_invoices;
DROP TABLE kpi_expenses;
DROP TABLE kpi_sales;
