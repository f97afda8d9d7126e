-- 003_idempotency.sql - Idempotency-Key on POST /v1/batches.
-- A key maps to the batch its first request created and a hash of that
-- request's canonical body, so a retry with the same body gets the same
-- batch and a reuse with another body is refused.
CREATE TABLE idempotency (
	key        TEXT    PRIMARY KEY,
	body_hash  TEXT    NOT NULL,
	batch_id   INTEGER NOT NULL,
	created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
CREATE INDEX idempotency_by_batch ON idempotency (batch_id);
-- Retention finds expired terminal batches by their end.
CREATE INDEX batches_by_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;
