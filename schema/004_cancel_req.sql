-- 004_cancel_req.sql - a client's cancel of a running job, kept on disk.
-- The kill takes up to the grace period; if the server dies meanwhile,
-- recovery ends the job canceled instead of running it again (a batch's
-- cancel is batches.cancel_req).
ALTER TABLE jobs ADD COLUMN cancel_req INTEGER NOT NULL DEFAULT 0;
