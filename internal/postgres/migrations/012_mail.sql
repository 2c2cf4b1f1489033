-- Email (internal/mail): the messages queued by the notify group and the
-- webhook sender, and the customers' addresses the notify group keeps.

-- A message, at most one per key for ever (the customer's welcome, the
-- payment's receipt, the invoice's reminder step), so a cause seen again
-- queues nothing. The recipient is to_email, or else customer_id's address
-- in mail_contacts at sending time. data is what the kind's templates
-- render. attempts counts the attempts made; leased_until marks one in
-- flight, whose sender owns the row until then.
CREATE TABLE mail_messages (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             text        NOT NULL UNIQUE,
    kind            text        NOT NULL,
    event_id        uuid        NOT NULL,
    to_name         text,
    to_email        text,
    customer_id     text,
    invoice_id      text,
    data            jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    completed_at    timestamptz,
    CHECK (to_email IS NOT NULL OR customer_id IS NOT NULL)
);

CREATE INDEX mail_messages_due ON mail_messages (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX mail_messages_invoice ON mail_messages (invoice_id) WHERE status = 'pending' AND invoice_id IS NOT NULL;

-- The customers' names and addresses, from their events; sequence is the
-- customer's version, so an older event seen late changes nothing.
CREATE TABLE mail_contacts (
    customer_id text   PRIMARY KEY,
    name        text   NOT NULL,
    email       text   NOT NULL,
    sequence    bigint NOT NULL
);

-- The customers known before the group kept their addresses (email added
-- to a running Tally): their latest versions, which their later events
-- replace.
INSERT INTO mail_contacts (customer_id, name, email, sequence)
SELECT id, name, email, version FROM customers;

-- The invoices paid, voided or deleted, whose reminders and overdue
-- notices are not queued any more, however late their events arrive (a
-- retry, a replay from the dead-letter queue).
CREATE TABLE mail_settled_invoices (
    invoice_id text PRIMARY KEY
);

---- create above / drop below ----

DROP TABLE mail_settled_invoices;
DROP TABLE mail_contacts;
DROP TABLE mail_messages;
