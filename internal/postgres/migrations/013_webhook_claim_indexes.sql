-- The webhook sender's claim (internal/webhook claimSQL) reads, per
-- endpoint, its earliest due deliveries in (next_attempt_at, id) order and
-- counts its attempts in flight. With id in the due index the first is an
-- ordered index scan that stops at the claim's limit, however many
-- deliveries a slow endpoint has piled up, rather than a sort of them all;
-- the second reads the few leased rows instead of every pending one.
DROP INDEX webhook_deliveries_due;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id) WHERE status = 'pending' AND leased_until IS NOT NULL;

---- create above / drop below ----

DROP INDEX webhook_deliveries_leased;
DROP INDEX webhook_deliveries_due;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
