-- The revenue group's projection of each invoice (consumers/revenue). It is
-- built only from events; last_sequence is the ce_sequence of the last
-- event applied, so an older event seen late changes nothing.
CREATE TABLE revenue_invoices (
    invoice_id    text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    currency      text        NOT NULL,
    status        text        NOT NULL,
    total         bigint      NOT NULL,
    amount_paid   bigint      NOT NULL,
    amount_due    bigint      NOT NULL,
    last_sequence bigint      NOT NULL,
    last_event_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

---- create above / drop below ----

DROP TABLE revenue_invoices;
