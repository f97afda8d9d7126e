-- pg/001_init.sql - the PostgreSQL store: many jobpoold nodes, one database.
-- Times are integer microseconds since the Unix epoch (UTC), as in the SQLite
-- schema, so both stores render rows the same way.  Tables are prefixed jp_
-- so the database can be shared.

-- One row per process start of a node (an incarnation).  Its id is the
-- fencing token written on the jobs it runs: a write from an incarnation
-- the others declared dead changes nothing.
CREATE TABLE jp_nodes (
	id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name         text   NOT NULL,          -- --node-name
	state        text   NOT NULL DEFAULT 'alive'
	             CHECK (state IN ('alive', 'gone', 'dead')),
	started_at   bigint NOT NULL,
	-- the database's clock, so no node's wall clock decides a death
	heartbeat_at timestamptz NOT NULL DEFAULT now(),
	lease_ms     int    NOT NULL,
	pool_size    int    NOT NULL DEFAULT 0,
	busy         int    NOT NULL DEFAULT 0
);
CREATE INDEX jp_nodes_live ON jp_nodes (heartbeat_at) WHERE state = 'alive';

-- Ids are handed out in blocks, so a batch's jobs have contiguous ids (job
-- index i is first_job + i) and listing a batch is a primary-key range.
CREATE TABLE jp_ids (name text PRIMARY KEY, next bigint NOT NULL);
INSERT INTO jp_ids VALUES ('batch', 1), ('job', 1);

CREATE TABLE jp_batches (
	id          bigint  PRIMARY KEY,
	name        text,
	-- queued running succeeded failed canceled: kept for listings by state
	-- and retention; a batch read renders the state from its counters
	state       text    NOT NULL,
	concurrency int,                       -- NULL: only the pools limit it
	priority    int     NOT NULL DEFAULT 0,
	cancel_req  boolean NOT NULL DEFAULT false,
	created_at  bigint  NOT NULL,
	started_at  bigint,
	finished_at bigint,                    -- set when the batch settles
	n_total     int     NOT NULL,
	first_job   bigint  NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX jp_batches_by_state ON jp_batches (state, id);
CREATE INDEX jp_batches_by_finished ON jp_batches (finished_at)
	WHERE finished_at IS NOT NULL;

-- A batch's counters, sharded by node: each node adds its deltas to its own
-- row, so finishing jobs never waits on a row another node writes.  A
-- batch's count is the sum over its rows.
CREATE TABLE jp_batch_counts (
	batch_id    bigint NOT NULL REFERENCES jp_batches ON DELETE CASCADE,
	node_id     bigint NOT NULL,
	queued      int    NOT NULL DEFAULT 0,
	running     int    NOT NULL DEFAULT 0,
	succeeded   int    NOT NULL DEFAULT 0,
	failed      int    NOT NULL DEFAULT 0,
	timed_out   int    NOT NULL DEFAULT 0,
	canceled    int    NOT NULL DEFAULT 0,
	run_us      bigint NOT NULL DEFAULT 0,
	cpu_us      bigint NOT NULL DEFAULT 0,
	first_start bigint,
	last_finish bigint,
	PRIMARY KEY (batch_id, node_id)
) WITH (fillfactor = 50);                 -- counter updates stay HOT

CREATE TABLE jp_jobs (
	id              bigint  PRIMARY KEY,
	-- no foreign key: its check is a trigger per row, which took most of
	-- the time of a 100,000-job COPY; the store deletes a batch's jobs
	-- before the batch, and inserts them in the batch's transaction
	batch_id        bigint  NOT NULL,
	idx             int     NOT NULL,
	name            text,
	kind            text    NOT NULL,
	args            text    NOT NULL,      -- JSON text, passed through
	state           text    NOT NULL,
	attempts        int     NOT NULL DEFAULT 0,
	max_attempts    int     NOT NULL DEFAULT 1,
	retry_on        text    NOT NULL DEFAULT '[]',
	retry_backoff_s double precision NOT NULL DEFAULT 1.0,
	timeout_s       double precision,
	created_at      bigint  NOT NULL,
	queued_at       bigint  NOT NULL,
	not_before      bigint  NOT NULL DEFAULT 0,
	started_at      bigint,
	finished_at     bigint,
	run_us          bigint,
	user_us         bigint,
	sys_us          bigint,
	max_rss_kb      bigint,
	worker_slot     int,
	worker_pid      int,
	exit_code       int,
	signal          text,
	error           text,
	result          text,
	-- text, not jsonb: jsonb would reorder the keys of every entry
	history         text    NOT NULL DEFAULT '[]',
	output          text,
	worker_node     text,                  -- the node's name
	node_id         bigint,                -- the incarnation (fencing token)
	-- a queued job an incarnation handed to a worker in a group: claims
	-- skip it; it ends (or is released) by that incarnation alone
	held_by         bigint,
	cancel_req      boolean NOT NULL DEFAULT false
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_threshold = 1000);
-- Claims read the queued jobs of one batch in index order; the index holds
-- only queued rows, so it stays the size of the queue.
CREATE INDEX jp_jobs_queued ON jp_jobs (batch_id, idx) WHERE state = 'queued';
-- The reaper and cancels find a node's running jobs, and held ones.
CREATE INDEX jp_jobs_running ON jp_jobs (node_id) WHERE state = 'running';
CREATE INDEX jp_jobs_held ON jp_jobs (held_by) WHERE held_by IS NOT NULL;
-- Lean on purpose: a state change rewrites the row (state is in index
-- predicates), and every index costs an entry per rewrite.  ?state=
-- listings of a batch walk its primary-key range instead.

CREATE TABLE jp_idempotency (
	key        text   PRIMARY KEY,
	body_hash  text   NOT NULL,
	batch_id   bigint NOT NULL,
	created_at bigint NOT NULL
);
CREATE INDEX jp_idempotency_by_age ON jp_idempotency (created_at);
CREATE INDEX jp_idempotency_by_batch ON jp_idempotency (batch_id);

-- A batch as the API shows it: the stored row and the sums of its counter
-- shards.  Its state is derived from the counts, so it is exact at read
-- time on every node; jp_batches.state (stored_state) follows for
-- listings and retention once the batch settles.
CREATE VIEW jp_batch_view AS
SELECT b.id, b.name,
	CASE WHEN k.queued = 0 AND k.running = 0 THEN
		CASE WHEN k.succeeded = b.n_total THEN 'succeeded'
		     WHEN b.cancel_req THEN 'canceled' ELSE 'failed' END
	     WHEN coalesce(b.started_at, k.first_start) IS NULL THEN 'queued'
	     ELSE 'running' END AS state,
	b.concurrency, b.priority, b.created_at,
	coalesce(b.started_at, k.first_start) AS started_at,
	CASE WHEN k.queued = 0 AND k.running = 0 THEN
		coalesce(b.finished_at, k.last_finish, b.created_at) END
		AS finished_at,
	b.n_total, k.queued, k.running, k.succeeded, k.failed, k.timed_out,
	k.canceled, k.run_us, k.cpu_us,
	b.state AS stored_state, b.cancel_req, b.first_job
FROM jp_batches b CROSS JOIN LATERAL (
	SELECT coalesce(sum(c.queued), 0) AS queued,
	       coalesce(sum(c.running), 0) AS running,
	       coalesce(sum(c.succeeded), 0) AS succeeded,
	       coalesce(sum(c.failed), 0) AS failed,
	       coalesce(sum(c.timed_out), 0) AS timed_out,
	       coalesce(sum(c.canceled), 0) AS canceled,
	       coalesce(sum(c.run_us), 0) AS run_us,
	       coalesce(sum(c.cpu_us), 0) AS cpu_us,
	       min(c.first_start) AS first_start,
	       max(c.last_finish) AS last_finish
	FROM jp_batch_counts c WHERE c.batch_id = b.id) k;

-- The event log every node reads: one row per transaction that changed
-- something, keyed by that transaction's id.  Readers take only rows below
-- the oldest transaction still running (pg_snapshot_xmin), so no row can
-- appear later behind one already read: every node sees the same events in
-- the same order, and an event id (xid * 2^22 + position) read on one node
-- resumes a stream on another.  UNLOGGED: no WAL; a PostgreSQL crash empties
-- it, which streams hear as a reset.
CREATE UNLOGGED TABLE jp_events (
	xid        xid8   PRIMARY KEY,
	node_id    bigint NOT NULL,
	created_at bigint NOT NULL,
	-- [[0, job, batch, state, attempts] | [1, batch, {id, state, counts}], ...]
	body       text   NOT NULL
);
CREATE INDEX jp_events_by_age ON jp_events (created_at);
