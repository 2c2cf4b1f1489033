-- The scheduler's notify.retention deletes the webhook deliveries and the
-- email messages that ended long ago, the oldest first.
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (completed_at) WHERE status <> 'pending';
CREATE INDEX mail_messages_ended ON mail_messages (completed_at) WHERE status <> 'pending';

---- create above / drop below ----

DROP INDEX mail_messages_ended;
DROP INDEX webhook_deliveries_ended;
