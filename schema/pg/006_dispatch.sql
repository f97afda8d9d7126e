-- pg/006_dispatch.sql - the pause of dispatch (POST /v1/pause, /v1/resume;
-- the SQLite store's 010_dispatch.sql) for every node sharing the
-- database: each reads it at its look (every --poll-interval), so a pause
-- asked of one node holds on all of them, and across restarts.  One row.
CREATE TABLE jp_dispatch (
	id     int     PRIMARY KEY CHECK (id = 1),
	paused boolean NOT NULL DEFAULT false
);
INSERT INTO jp_dispatch (id, paused) VALUES (1, false);
