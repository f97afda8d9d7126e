-- 006_halt_timeout_pct.sql - a batch's halt policy and relative timeout.
-- halt: the policy as submitted ({when, count|percent, mode}, JSON), NULL:
-- none.  timeout_pct: P of "kill a job running longer than P% of the median
-- run time of the batch's succeeded jobs", NULL: none.  halted_reason and
-- halted_at: set once, when the policy fired; a halt also sets cancel_req
-- (no retries, the batch ends canceled, recovery cancels what ran).
ALTER TABLE batches ADD COLUMN halt TEXT;
ALTER TABLE batches ADD COLUMN timeout_pct REAL;
ALTER TABLE batches ADD COLUMN halted_reason TEXT;
ALTER TABLE batches ADD COLUMN halted_at INTEGER;
