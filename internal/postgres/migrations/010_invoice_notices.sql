-- The notices sent of each invoice (producers/billing SendNotices, the
-- scheduler's task invoice.notices): a row per step of the schedule, in
-- days from the due date, written in the transaction that writes the
-- notice's event. A step whose day passed before it could be sent (a new
-- invoice already late, a scheduler down) is recorded unsent, so it is
-- never sent late.
CREATE TABLE invoice_notices (
    invoice_id text    NOT NULL,
    step       integer NOT NULL,
    sent       boolean NOT NULL,
    sent_on    date    NOT NULL,
    event_id   uuid,
    PRIMARY KEY (invoice_id, step)
);

---- create above / drop below ----

DROP TABLE invoice_notices;
