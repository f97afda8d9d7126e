-- pg/005_pause.sql - a batch's pause (the SQLite store's 009_pause.sql):
-- every node reads it with the batch at its tick (P_INFO, P_ACTIVE), so a
-- pause holds on all of them.  jp_jobs_running_by_batch serves the live
-- parallelism of a running batch (running_start_us below) without a scan
-- of its jobs.
ALTER TABLE jp_batches ADD COLUMN paused boolean NOT NULL DEFAULT false;
CREATE INDEX jp_jobs_running_by_batch ON jp_jobs (batch_id)
	WHERE state = 'running';

-- The view of 004 with the new columns at its end (CREATE OR REPLACE VIEW
-- may only append): paused, and running_start_us, the sum of the running
-- jobs' started_at, from which a running batch's parallelism counts their
-- run so far (running * now - running_start_us).
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
	b.halt, b.timeout_pct, b.halted_reason, b.halted_at,
	b.parent_id, b.then_batch_id, b.then_state,
	b.paused,
	CASE WHEN k.running > 0 THEN (SELECT coalesce(sum(j.started_at), 0)
		FROM jp_jobs j WHERE j.batch_id = b.id AND j.state = 'running')
	     ELSE 0 END::bigint AS running_start_us
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
