-- pg/003_webhooks.sql - signed webhooks, delivered from an outbox (the
-- SQLite store's 007_webhooks.sql; read its comments first).
--
-- The outbox rows are written by triggers, in the transaction that ends
-- the job (its outcome, a cancel, a dead node's job taken over) or that
-- settles the batch (jp_batches.state follows the counters once the batch
-- has ended: settle_now, or the sweep that settles what a dead node left).
-- Several nodes share the rows: an attempt takes its row with FOR UPDATE
-- SKIP LOCKED and moves next_at past the attempt's timeout in a committed
-- transaction (a lease) before anything is sent, so one node at a time
-- sends a delivery; a node that dies mid-attempt leaves the row to the
-- others once its lease has passed.
CREATE TABLE jp_webhooks (
	batch_id  bigint  PRIMARY KEY,
	url       text    NOT NULL,
	secret    text    NOT NULL,
	events    int     NOT NULL,
	generated boolean NOT NULL DEFAULT false
);

CREATE TABLE jp_webhook_deliveries (
	id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	msg_id       text   NOT NULL,
	batch_id     bigint NOT NULL,
	job_id       bigint,
	event        text   NOT NULL,
	url          text   NOT NULL,
	secret       text   NOT NULL,
	body         text,
	created_at   bigint NOT NULL,
	next_at      bigint NOT NULL,
	leased_by    text,
	attempts     int    NOT NULL DEFAULT 0,
	state        text   NOT NULL DEFAULT 'pending',
	last_status  int,
	last_error   text,
	delivered_at bigint
);
CREATE INDEX jp_webhook_deliveries_due ON jp_webhook_deliveries (next_at)
	WHERE state = 'pending';
CREATE INDEX jp_webhook_deliveries_by_batch
	ON jp_webhook_deliveries (batch_id, id);

CREATE TABLE jp_webhook_attempts (
	delivery_id bigint NOT NULL,
	n           int    NOT NULL,
	started_at  bigint NOT NULL,
	duration_us bigint NOT NULL,
	status      int,
	error       text,
	PRIMARY KEY (delivery_id, n)
);

CREATE FUNCTION jp_webhook_batch_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO jp_webhook_deliveries (msg_id, batch_id, event, url, secret,
		created_at, next_at)
	SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.id,
	       'batch.finished', w.url, w.secret,
	       coalesce(NEW.finished_at, 0), 0
	FROM jp_webhooks w WHERE w.batch_id = NEW.id AND (w.events & 1) <> 0;
	RETURN NULL;
END $$;

CREATE TRIGGER jp_webhook_batch_finished AFTER UPDATE OF state ON jp_batches
FOR EACH ROW
WHEN (NEW.state IN ('succeeded', 'failed', 'canceled')
      AND OLD.state NOT IN ('succeeded', 'failed', 'canceled'))
EXECUTE FUNCTION jp_webhook_batch_finished();

CREATE FUNCTION jp_webhook_job_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO jp_webhook_deliveries (msg_id, batch_id, job_id, event, url,
		secret, created_at, next_at)
	SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
	       NEW.batch_id, NEW.id, 'job.finished', w.url, w.secret,
	       coalesce(NEW.finished_at, 0), 0
	FROM jp_webhooks w WHERE w.batch_id = NEW.batch_id
	 AND (w.events & 2) <> 0;
	RETURN NULL;
END $$;

CREATE TRIGGER jp_webhook_job_finished AFTER UPDATE OF state ON jp_jobs
FOR EACH ROW
WHEN (NEW.state IN ('succeeded', 'failed', 'timed_out', 'canceled')
      AND OLD.state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled'))
EXECUTE FUNCTION jp_webhook_job_finished();

CREATE FUNCTION jp_webhook_batch_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM jp_webhooks WHERE batch_id = OLD.id;
	DELETE FROM jp_webhook_attempts WHERE delivery_id IN (SELECT id FROM
		jp_webhook_deliveries WHERE batch_id = OLD.id
		AND state <> 'pending');
	DELETE FROM jp_webhook_deliveries WHERE batch_id = OLD.id
		AND state <> 'pending';
	RETURN NULL;
END $$;

CREATE TRIGGER jp_webhook_batch_deleted AFTER DELETE ON jp_batches
FOR EACH ROW EXECUTE FUNCTION jp_webhook_batch_deleted();
