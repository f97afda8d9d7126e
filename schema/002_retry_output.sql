-- 002_retry_output.sql - retries with backoff, captured command output.

-- A queued job is not started before not_before (microseconds since the
-- epoch; 0 = at once): the backoff between attempts.
ALTER TABLE jobs ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
-- {"stdout", "stderr", "truncated"} of kinds that print (JSON), or NULL.
ALTER TABLE jobs ADD COLUMN output TEXT;
