-- 010_dispatch.sql - the server-wide pause (POST /v1/pause, /v1/resume):
-- stored, so a paused server stays paused across a restart (009's comment
-- predates this: the pause was memory only then).  One row.
--
-- Change procedure: append a new migration; never edit this one.
CREATE TABLE dispatch (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	paused INTEGER NOT NULL DEFAULT 0
);
INSERT INTO dispatch (id, paused) VALUES (1, 0);
