-- 001_init.sql - batches and their jobs.
-- Times are integer microseconds since the Unix epoch (UTC); durations are
-- integer microseconds.  The API renders them as RFC 3339 ms and ms numbers.

CREATE TABLE batches (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	name         TEXT,
	state        TEXT    NOT NULL,  -- queued running succeeded failed canceled
	concurrency  INTEGER,           -- NULL: only the pool limits it
	priority     INTEGER NOT NULL DEFAULT 0,
	cancel_req   INTEGER NOT NULL DEFAULT 0,
	created_at   INTEGER NOT NULL,
	started_at   INTEGER,
	finished_at  INTEGER,
	-- counters kept by the store on every transition, so reading a batch
	-- never scans its jobs
	n_total      INTEGER NOT NULL,
	n_queued     INTEGER NOT NULL,
	n_running    INTEGER NOT NULL DEFAULT 0,
	n_succeeded  INTEGER NOT NULL DEFAULT 0,
	n_failed     INTEGER NOT NULL DEFAULT 0,
	n_timed_out  INTEGER NOT NULL DEFAULT 0,
	n_canceled   INTEGER NOT NULL DEFAULT 0,
	total_run_us INTEGER NOT NULL DEFAULT 0,
	total_cpu_us INTEGER NOT NULL DEFAULT 0,
	-- A batch's jobs are inserted together, so their ids are contiguous:
	-- job index i has id first_job + i, and submission order is a range
	-- of the primary key (no (batch_id, idx) index to maintain).
	first_job    INTEGER
);
CREATE INDEX batches_by_state ON batches (state, id);

CREATE TABLE jobs (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	batch_id        INTEGER NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
	idx             INTEGER NOT NULL,
	name            TEXT,
	kind            TEXT    NOT NULL,
	args            TEXT    NOT NULL,  -- JSON
	state           TEXT    NOT NULL,
	attempts        INTEGER NOT NULL DEFAULT 0,
	max_attempts    INTEGER NOT NULL DEFAULT 1,
	retry_on        TEXT    NOT NULL DEFAULT '[]',  -- JSON array
	retry_backoff_s REAL    NOT NULL DEFAULT 1.0,
	timeout_s       REAL,
	created_at      INTEGER NOT NULL,
	queued_at       INTEGER NOT NULL,  -- last time it entered queued (retries)
	started_at      INTEGER,
	finished_at     INTEGER,
	run_us          INTEGER,
	user_us         INTEGER,
	sys_us          INTEGER,
	max_rss_kb      INTEGER,
	worker_slot     INTEGER,
	worker_pid      INTEGER,
	exit_code       INTEGER,
	signal          TEXT,
	error           TEXT,
	result          TEXT,              -- JSON
	history         TEXT NOT NULL DEFAULT '[]'   -- JSON array, one entry per finished attempt
);
-- Serves "next queued job of a batch" and the per-batch state filter.
CREATE INDEX jobs_by_batch_state ON jobs (batch_id, state, idx);
CREATE INDEX jobs_running ON jobs (state) WHERE state = 'running';
