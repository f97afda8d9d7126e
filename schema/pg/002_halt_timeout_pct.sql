-- pg/002_halt_timeout_pct.sql - a batch's halt policy and relative timeout
-- (the SQLite store's 006_halt_timeout_pct.sql, plus halt_soon).
-- halt: the policy as submitted (JSON text), NULL: none.  timeout_pct: P of
-- "kill a job running longer than P% of the median run time of the batch's
-- succeeded jobs", NULL: none.  halted_reason and halted_at: set once, by
-- the node that saw the policy fire; a halt also sets cancel_req (no
-- retries anywhere, the batch ends canceled, a dead node's jobs end
-- canceled).  halt_soon: the halt leaves running jobs to finish, so nodes
-- do not kill theirs for that cancel_req; a client's cancel afterwards
-- clears it (store_pg.c, P_BATCH_CANCEL_REQ and P_MY_CANCELS).
ALTER TABLE jp_batches
	ADD COLUMN halt          text,
	ADD COLUMN timeout_pct   double precision,
	ADD COLUMN halted_reason text,
	ADD COLUMN halted_at     bigint,
	ADD COLUMN halt_soon     boolean NOT NULL DEFAULT false;

-- The view of 001 with the new columns at its end (CREATE OR REPLACE VIEW
-- may only append).
CREATE OR REPLACE VIEW jp_batch_view AS
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
	b.state AS stored_state, b.cancel_req, b.first_job,
	b.halt, b.timeout_pct, b.halted_reason, b.halted_at
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
