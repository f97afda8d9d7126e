-- 009_pause.sql - a batch's pause (POST /v1/batches/{id}/pause): while
-- paused, none of its queued jobs starts; running ones finish.  Stored, so
-- a paused batch stays paused across a restart.  The server-wide pause
-- (POST /v1/pause) is memory only and is not here.
ALTER TABLE batches ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
