-- The revenue ledger (consumers/revenue). Each invoice's rows are derived
-- from its whole history again whenever an event adds to it, so they do not
-- depend on the order events arrive in, and a rebuild gives the same rows.

-- What the ledger knows of each invoice: its versions (their revenue terms)
-- and payments, as JSON, by sequence. version counts the changes of the
-- invoice's rows, so the announcer can tell what changed since it looked.
CREATE TABLE revenue_ledger (
    invoice_id    text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    history       jsonb       NOT NULL,
    version       bigint      NOT NULL,
    last_sequence bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The ledger's rows. An accrual invoice books its net amount as deferred
-- revenue (kind deferred, on its issue date), recognizes it by service day
-- (kind recognized: a row a month, dated its last day of service, with cum:
-- what is recognized from its first day through each day of the month), is
-- adjusted by updates and reversed by a void or delete (dated when they
-- happen). A payment recognizes its share on the cash basis. revenue and
-- deferred are what a row changes of the two balances.
CREATE TABLE revenue_entries (
    invoice_id  text    NOT NULL,
    basis       text    NOT NULL CHECK (basis IN ('accrual', 'cash')),
    kind        text    NOT NULL CHECK (kind IN ('deferred', 'recognized', 'adjusted', 'reversed')),
    key         text    NOT NULL,
    customer_id text    NOT NULL,
    currency    text    NOT NULL,
    entry_date  date    NOT NULL,
    start_date  date    NOT NULL,
    end_date    date    NOT NULL,
    revenue     bigint  NOT NULL,
    deferred    bigint  NOT NULL,
    cum         bigint[],
    seq         bigint  NOT NULL,
    event_id    text    NOT NULL,
    PRIMARY KEY (invoice_id, basis, kind, key)
);

CREATE INDEX revenue_entries_report ON revenue_entries (currency, basis, start_date);

-- What the revenue announcer (the scheduler's job) has announced of each
-- invoice's recognition in a currency, in tally.revenue.recognized.v1
-- events: the days through `through`, amounting to `announced`, when the
-- ledger was at `version` (0: not looked at yet). Written by the announcer alone, and not a
-- projection of the revenue group: a rebuild of the group leaves it, so
-- nothing is announced twice.
CREATE TABLE revenue_announcements (
    invoice_id text        NOT NULL,
    currency   text        NOT NULL,
    through    date,                 -- NULL: nothing announced yet
    next_day   date,                 -- the first day still to announce as the ledger was at version; NULL: none
    announced  bigint      NOT NULL,
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, currency)
);

CREATE INDEX revenue_announcements_due ON revenue_announcements (next_day) WHERE next_day IS NOT NULL;

---- create above / drop below ----

DROP TABLE revenue_announcements;
DROP TABLE revenue_entries;
DROP TABLE revenue_ledger;
