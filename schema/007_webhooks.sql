-- 007_webhooks.sql - signed webhooks, delivered from an outbox.
--
-- webhooks: a batch's webhook as submitted.  secret is the text given (or
-- generated, then generated = 1 and it is shown once, in the 201); the
-- HMAC key is its base64 payload for "whsec_..." secrets, else its bytes.
-- events: bit 1 batch.finished, bit 2 job.finished.
--
-- webhook_deliveries: the outbox.  Its rows are written by the triggers
-- below, so one lands in the very transaction that ends the batch or job,
-- whatever path ends it (an outcome, a cancel, recovery after a crash): a
-- crash can neither lose a delivery nor leave one for a change that was
-- rolled back.  A row carries its url and secret, so it still goes out
-- after its batch is deleted.  body: the payload, rendered on the first
-- attempt and then kept, so every retry sends the same bytes.  next_at:
-- when the next attempt is due; a node that takes a row for an attempt
-- moves next_at past the attempt's timeout (a lease, leased_by naming the
-- node) so no other attempt starts meanwhile.  msg_id: the webhook-id,
-- random so that receivers fed by several jobpool databases never see one
-- id twice.
--
-- webhook_attempts: one row per attempt, for GET .../deliveries.
--
-- Change procedure: append a new migration; never edit this one.
CREATE TABLE webhooks (
	batch_id  INTEGER PRIMARY KEY,
	url       TEXT    NOT NULL,
	secret    TEXT    NOT NULL,
	events    INTEGER NOT NULL,
	generated INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE webhook_deliveries (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	msg_id       TEXT    NOT NULL,
	batch_id     INTEGER NOT NULL,
	job_id       INTEGER,
	event        TEXT    NOT NULL,
	url          TEXT    NOT NULL,
	secret       TEXT    NOT NULL,
	body         TEXT,
	created_at   INTEGER NOT NULL,
	next_at      INTEGER NOT NULL,
	leased_by    TEXT,
	attempts     INTEGER NOT NULL DEFAULT 0,
	state        TEXT    NOT NULL DEFAULT 'pending',
	last_status  INTEGER,
	last_error   TEXT,
	delivered_at INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at)
	WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_batch ON webhook_deliveries (batch_id, id);

CREATE TABLE webhook_attempts (
	delivery_id INTEGER NOT NULL,
	n           INTEGER NOT NULL,
	started_at  INTEGER NOT NULL,
	duration_us INTEGER NOT NULL,
	status      INTEGER,
	error       TEXT,
	PRIMARY KEY (delivery_id, n)
) WITHOUT ROWID;

-- The outbox triggers on the batch's and the job's state (webhook_batch_
-- finished, webhook_job_finished) exist only while some unfinished batch
-- has a webhook: store_webhook.c creates them in the transaction that
-- stores such a webhook and drops them in one that ends the last such
-- batch (a trigger on jobs costs every job's state change, with or without
-- webhooks anywhere).

-- A deleted (or purged) batch takes its webhook and its settled
-- deliveries along; pending ones still go out (store_webhook.c deletes
-- them once they are settled).
CREATE TRIGGER webhook_batch_deleted AFTER DELETE ON batches
BEGIN
	DELETE FROM webhooks WHERE batch_id = old.id;
	DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM
		webhook_deliveries WHERE batch_id = old.id AND state != 'pending');
	DELETE FROM webhook_deliveries WHERE batch_id = old.id
		AND state != 'pending';
END;
