-- 008_then.sql - durable follow-up batches (a batch's `then`).
-- then_on: "success" or "completion"; then_body: the follow-up's batch body
-- as submitted (JSON text, nulls dropped); then_state: "pending" until the
-- batch ends, then "created" (then_batch_id is the follow-up) or "skipped"
-- (on "success" and the batch did not succeed).  All of it changes in the
-- transaction that ends the batch, so a crash never yields zero or two.
-- parent_id: on a follow-up, the batch whose end created it.
ALTER TABLE batches ADD COLUMN parent_id INTEGER;
ALTER TABLE batches ADD COLUMN then_on TEXT;
ALTER TABLE batches ADD COLUMN then_body TEXT;
ALTER TABLE batches ADD COLUMN then_state TEXT;
ALTER TABLE batches ADD COLUMN then_batch_id INTEGER;
