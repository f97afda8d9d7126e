/* store_pg.c - the PostgreSQL store: connections, the turn's transaction,
 * schema, submissions, reads.  Many jobpoold nodes share one database;
 * each serves the whole API and runs any node's jobs.
 *
 * As with SQLite, the loop's writes go into one transaction per loop turn
 * and a submission is acknowledged only after that COMMIT returns.  What
 * differs:
 * - claims lock rows FOR UPDATE SKIP LOCKED, and the engine hands a claimed
 *   job to a worker only after the claim committed (dispatch_after_commit);
 * - a batch's counters are rows per node (jp_batch_counts), so finishing a
 *   job never writes a row another node writes; reads sum them;
 * - every write of an attempt's outcome names the incarnation and attempt
 *   it belongs to (the fencing token), so a node the others declared dead
 *   changes nothing when it wakes up (store_pg_node.c).
 * Parameters and results travel as text: one format for every statement,
 * and numbers are short. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store_pg.h"

extern const char *const pg_schema_migrations[];
extern const size_t pg_schema_migrations_count;

PGconn *pg_conn;
int pg_generation = 1;          /* counts the loop connection's reconnects */
static PGconn *id_conn;          /* id blocks, outside the turn */
static char *conninfo;
static int in_txn, degraded, resyncing, full;
static int key_lock;            /* this turn holds the keys' lock */
/* The turn's transaction was lost: the next flush says so, even when no
 * transaction is open any more (claims made before must not be sent). */
static int lost;
static void (*on_rollback)(void);

/* Batches whose last queued job this turn ended: after the commit each
 * gets its own short transaction that stores its final state (see
 * settle_now). */
static int64_t *to_settle;
static size_t nsettle, settle_cap;

/* A batch as the API shows it: the stored row and the sums of its counter
 * shards (jp_batch_view, schema/pg), in store_render_batch's order. */
#define BATCH_COLS "id, name, state, concurrency, priority, created_at, " \
	"started_at, finished_at, n_total, queued, running, succeeded, " \
	"failed, timed_out, canceled, run_us, cpu_us, halt, timeout_pct, " \
	"halted_reason, halted_at, parent_id, then_batch_id, then_state, " \
	"paused::int, running_start_us"
/* history || entry, for a text column holding a JSON array */
#define HISTORY_ADD(e) "left(history, -1) || CASE WHEN history = '[]' " \
	"THEN '' ELSE ',' END || " e " || ']'"
/* A time as fmt_time() writes it: whole milliseconds, cut. */
#define PG_TIME(col) "to_char(to_timestamp((" col ") / 1000 / 1000.0) " \
	"AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
/* The history entry of an attempt whose node was lost, ended as st at $2;
 * the error names why ($3). */
#define LOST_ENTRY(st) "json_build_object('attempt', attempts, 'state', " \
	st ", 'started_at', " PG_TIME("started_at") ", 'finished_at', " \
	PG_TIME("$2::bigint") ", 'run_ms', NULL, 'exit_code', NULL, " \
	"'signal', NULL, 'error', $3::text, 'worker', CASE WHEN worker_slot " \
	"IS NULL THEN NULL ELSE json_build_object('slot', worker_slot, " \
	"'pid', worker_pid, 'node', worker_node) END)::text"
/* What becomes of a running job whose attempt was lost ($4: retries
 * allowed): canceled when a cancel was asked, queued with attempts left. */
#define LOST_STATE "CASE WHEN cancel_req OR batch_id IN (SELECT id FROM " \
	"jp_batches WHERE cancel_req) THEN 'canceled' WHEN attempts < " \
	"max_attempts AND $4 THEN 'queued' ELSE 'failed' END"
#define LOST_SET "state = " LOST_STATE ", " \
	"history = " HISTORY_ADD(LOST_ENTRY("CASE WHEN " LOST_STATE " = " \
	"'canceled' THEN 'canceled' ELSE 'failed' END")) ", " \
	"error = CASE WHEN " LOST_STATE " = 'canceled' THEN 'canceled while " \
	"running' ELSE $3 END, " \
	"finished_at = CASE WHEN " LOST_STATE " = 'queued' THEN NULL ELSE " \
	"$2 END, queued_at = CASE WHEN " LOST_STATE " = 'queued' THEN $2 " \
	"ELSE queued_at END, started_at = CASE WHEN " LOST_STATE " = " \
	"'queued' THEN NULL ELSE started_at END, not_before = 0, " \
	"node_id = NULL"
#define LOST_RETURNING " RETURNING id, batch_id, state, attempts, " \
	"coalesce(started_at, 0)"

static const char *const sql[P__COUNT] = {
	[P_IDS] = "UPDATE jp_ids SET next = next + $2 WHERE name = $1 "
		"RETURNING next - $2",
	[P_BATCH_INSERT] = "INSERT INTO jp_batches (id, name, state, "
		"concurrency, priority, created_at, n_total, first_job, halt, "
		"timeout_pct) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, "
		"$9)",
	[P_JOB_GET] = "SELECT " JOB_COLS " FROM jp_jobs WHERE id = $1",
	[P_JOB_BATCH] = "SELECT batch_id, state, attempts FROM jp_jobs "
		"WHERE id = $1",
	/* A group's jobs: held by this incarnation, still queued.  Rows
	 * another node is claiming are skipped, never waited for. */
	[P_PEEK] = "WITH c AS MATERIALIZED (SELECT id FROM jp_jobs "
		"WHERE batch_id = $1 AND state = 'queued' AND held_by IS NULL "
		"AND not_before <= $2 AND idx > $3 AND NOT cancel_req "
		"ORDER BY idx LIMIT $4 FOR UPDATE SKIP LOCKED) "
		"UPDATE jp_jobs j SET held_by = $5 "
		"WHERE j.id = ANY (ARRAY(SELECT id FROM c)) "
		"RETURNING j.id, j.created_at, j.attempts, j.timeout_s, j.kind, "
		"j.args, j.max_attempts, j.retry_on, j.retry_backoff_s, "
		"j.queued_at, j.idx",
	/* the results of a group: held queued jobs to their end at once */
	[P_JOBS_DONE] = "UPDATE jp_jobs j SET state = u.st, "
		"attempts = j.attempts + 1, started_at = u.sa, "
		"finished_at = u.fa, worker_slot = $2, worker_pid = $3, "
		"worker_node = $4, node_id = $1, run_us = u.run, "
		"user_us = u.usr, sys_us = u.sys, max_rss_kb = u.rss, "
		"exit_code = u.code, signal = u.sig, error = u.err, "
		"result = u.res, output = NULL, held_by = NULL, "
		"history = left(j.history, -1) || CASE WHEN j.history = '[]' "
		"THEN '' ELSE ',' END || u.hist || ']' "
		"FROM unnest($5::bigint[], $6::text[], $7::bigint[], "
		"$8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], "
		"$12::bigint[], $13::int[], $14::text[], $15::text[], "
		"$16::text[], $17::text[]) AS u(id, st, sa, fa, run, usr, sys, "
		"rss, code, sig, err, res, hist) "
		"WHERE j.id = u.id AND j.state = 'queued' AND j.held_by = $1 "
		"RETURNING j.id",
	/* held rows of dead incarnations: queued again for everyone, or
	 * canceled when a cancel was stored while they were held */
	[P_UNHOLD_DEAD] = "UPDATE jp_jobs j SET held_by = NULL, "
		"state = CASE WHEN j.cancel_req OR b.cancel_req THEN 'canceled' "
		"ELSE 'queued' END, finished_at = CASE WHEN j.cancel_req OR "
		"b.cancel_req THEN $2::bigint END, error = CASE WHEN j.cancel_req OR "
		"b.cancel_req THEN 'canceled before it started' END "
		"FROM jp_batches b WHERE b.id = j.batch_id AND j.id IN (SELECT id "
		"FROM jp_jobs WHERE held_by = ANY ($1::bigint[]) "
		"AND state = 'queued' FOR UPDATE SKIP LOCKED) "
		"RETURNING j.id, j.batch_id, j.state, j.attempts",
	[P_NAMESAKES] = "SELECT id FROM jp_nodes WHERE name = $1 "
		"AND state = 'alive' AND id <> $2 ORDER BY id",
	[P_MARK_DEAD] = "UPDATE jp_nodes SET state = 'dead' "
		"WHERE id = ANY ($1::bigint[])",
	[P_COMMAND_JOBS] = "SELECT id FROM jp_jobs WHERE node_id = ANY "
		"($1::bigint[]) AND state = 'running' AND kind = 'command'",
	[P_RELEASE] = "UPDATE jp_jobs SET held_by = NULL "
		"WHERE id = ANY ($1::bigint[]) AND held_by = $2",
	/* held rows of incarnations that are gone, or of this one that no
	 * worker holds any more (resync) */
	[P_UNHOLD] = "UPDATE jp_jobs SET held_by = NULL "
		"WHERE held_by = ANY ($1::bigint[]) "
		"AND NOT (id = ANY ($2::bigint[]))",
	/* peek and start in one: the rows are this turn's once locked */
	[P_CLAIM] = "WITH c AS MATERIALIZED (SELECT id FROM jp_jobs "
		"WHERE batch_id = $1 AND state = 'queued' AND held_by IS NULL "
		"AND not_before <= $2 AND NOT cancel_req ORDER BY idx LIMIT $3 "
		"FOR UPDATE SKIP LOCKED) "
		"UPDATE jp_jobs j SET state = 'running', "
		"attempts = attempts + 1, started_at = $4, finished_at = NULL, "
		"worker_slot = $5, worker_pid = $6, worker_node = $7, "
		"node_id = $8, run_us = NULL, user_us = NULL, sys_us = NULL, "
		"max_rss_kb = NULL, exit_code = NULL, signal = NULL, "
		"error = NULL, result = NULL, output = NULL "
		/* ANY(ARRAY(...)): a primary-key lookup; a join with c can
		 * turn into a scan of the whole table */
		"WHERE j.id = ANY (ARRAY(SELECT id FROM c)) "
		"RETURNING j.id, j.created_at, j.attempts - 1, j.timeout_s, "
		"j.kind, j.args, j.max_attempts, j.retry_on, j.retry_backoff_s, "
		"j.queued_at, j.idx",
	[P_CONC] = "SELECT coalesce(concurrency, 0) FROM jp_batches "
		"WHERE id = $1",
	/* The concurrency gate: whoever claims from a limited batch holds
	 * its row until the claim commits, so claims of one batch are one at
	 * a time across nodes; no row: another node holds it, try later.
	 * The sum counts committed claims and this turn's own, and finishes
	 * not yet committed elsewhere only make it larger: the room is never
	 * overstated. */
	[P_GATE] = "SELECT concurrency FROM jp_batches "
		"WHERE id = $1 AND NOT cancel_req "
		"FOR NO KEY UPDATE SKIP LOCKED",
	/* a statement of its own, after the lock: its snapshot then sees
	 * every claim committed before the lock was ours (READ COMMITTED
	 * takes one per statement) */
	[P_GATE_SUM] = "SELECT coalesce(sum(running), 0) FROM jp_batch_counts "
		"WHERE batch_id = $1",
	[P_JOB_START] = "UPDATE jp_jobs SET state = 'running', "
		"attempts = attempts + 1, started_at = $1, finished_at = NULL, "
		"worker_slot = $2, worker_pid = $3, worker_node = $5, "
		"node_id = $6, run_us = NULL, user_us = NULL, sys_us = NULL, "
		"max_rss_kb = NULL, exit_code = NULL, signal = NULL, "
		"error = NULL, result = NULL, output = NULL, held_by = NULL "
		"WHERE id = $4 AND state = 'queued' AND held_by = $6",
	[P_COUNT] = "INSERT INTO jp_batch_counts AS c (batch_id, node_id, "
		"queued, running, succeeded, failed, timed_out, canceled, "
		"run_us, cpu_us, first_start, last_finish) VALUES ($1, $2, $3, "
		"$4, $5, $6, $7, $8, $9, $10, $11, $12) "
		"ON CONFLICT (batch_id, node_id) DO UPDATE SET "
		"queued = c.queued + EXCLUDED.queued, "
		"running = c.running + EXCLUDED.running, "
		"succeeded = c.succeeded + EXCLUDED.succeeded, "
		"failed = c.failed + EXCLUDED.failed, "
		"timed_out = c.timed_out + EXCLUDED.timed_out, "
		"canceled = c.canceled + EXCLUDED.canceled, "
		"run_us = c.run_us + EXCLUDED.run_us, "
		"cpu_us = c.cpu_us + EXCLUDED.cpu_us, "
		"first_start = least(c.first_start, EXCLUDED.first_start), "
		"last_finish = greatest(c.last_finish, EXCLUDED.last_finish) "
		/* the batch's queued jobs after it: the subquery sees the rows
		 * as they were before this statement */
		"RETURNING (SELECT coalesce(sum(queued), 0) FROM jp_batch_counts "
		"WHERE batch_id = $1) + $3",
	/* Best effort, never waiting: listings by state may lag a turn. */
	[P_BATCH_STARTED] = "UPDATE jp_batches SET state = 'running', "
		"started_at = coalesce((SELECT min(first_start) FROM "
		"jp_batch_counts WHERE batch_id = $1), $2) "
		"WHERE id = (SELECT id FROM jp_batches "
		"WHERE id = $1 AND state = 'queued' "
		"FOR NO KEY UPDATE SKIP LOCKED)",
	/* fenced: only the incarnation that runs this attempt writes it */
	[P_JOB_FINISH] = "UPDATE jp_jobs SET state = $1, finished_at = $2, "
		"run_us = $3, user_us = $4, sys_us = $5, max_rss_kb = $6, "
		"exit_code = $7, signal = $8, error = $9, result = $10, "
		"history = " HISTORY_ADD("$11") ", output = $12 "
		"WHERE id = $13 AND state = 'running' AND node_id = $14 "
		"AND attempts = $15",
	[P_JOB_REQUEUE] = "UPDATE jp_jobs SET state = 'queued', "
		"attempts = attempts - $1, started_at = NULL, queued_at = $2, "
		"finished_at = NULL, worker_slot = NULL, worker_pid = NULL, "
		"worker_node = NULL, node_id = NULL, not_before = $3 "
		"WHERE id = $4 AND node_id = $5 AND state IN ('running', 'queued')",
	/* held_by stays: the node holding it learns of the cancel (see
	 * P_MY_CANCELS) and tells its worker not to start it */
	[P_JOB_CANCEL_Q] = "UPDATE jp_jobs SET state = 'canceled', "
		"finished_at = $1, error = 'canceled before it started' "
		"WHERE id = $2 AND state = 'queued'",
	[P_JOB_CANCEL_REQ] = "UPDATE jp_jobs SET cancel_req = true "
		"WHERE id = $1",
	[P_BATCH_CANCEL_REQ] = "UPDATE jp_batches SET cancel_req = true "
		"WHERE id = $1",
	[P_BATCH_CANCEL_JOBS] = "UPDATE jp_jobs SET state = 'canceled', "
		"finished_at = $1, error = 'canceled before it started' "
		"WHERE id IN (SELECT id FROM jp_jobs WHERE batch_id = $2 "
		"AND state = 'queued' AND NOT (id = ANY ($3::bigint[])) "
		"FOR UPDATE SKIP LOCKED) RETURNING id, attempts",
	/* by the batch's id range: the primary key, not a scan */
	[P_BATCH_DEL_JOBS] = "DELETE FROM jp_jobs WHERE id >= (SELECT first_job "
		"FROM jp_batches WHERE id = $1) AND id < (SELECT first_job + "
		"n_total FROM jp_batches WHERE id = $1)",
	[P_BATCH_DEL] = "DELETE FROM jp_batches WHERE id = $1",
	[P_BATCH_DEL_KEYS] = "DELETE FROM jp_idempotency WHERE batch_id = $1",
	[P_BATCH_GET] = "SELECT " BATCH_COLS " FROM jp_batch_view "
		"WHERE id = $1",
	[P_LIST_B] = "SELECT " BATCH_COLS " FROM jp_batch_view WHERE id < $1 "
		"ORDER BY id DESC LIMIT $2",
	[P_LIST_B_STATE] = "SELECT " BATCH_COLS " FROM jp_batch_view "
		"WHERE stored_state = ANY (string_to_array($1, ',')) "
		"AND id < $2 ORDER BY id DESC LIMIT $3",
	[P_LIST_J] = "SELECT " JOB_COLS " FROM jp_jobs WHERE id > $1 "
		"AND id < $2 ORDER BY id LIMIT $3",
	/* the batch's id range, filtered: no (batch, state) index to keep
	 * up on every transition */
	[P_LIST_J_STATE] = "SELECT " JOB_COLS " FROM jp_jobs "
		"WHERE id > (SELECT first_job FROM jp_batches WHERE id = $1) + $3 "
		"AND id < (SELECT first_job + n_total FROM jp_batches "
		"WHERE id = $1) AND state = ANY (string_to_array($2, ',')) "
		"ORDER BY id LIMIT $4",
	[P_JOB_RANGE] = "SELECT first_job, n_total FROM jp_batches "
		"WHERE id = $1",
	[P_ACTIVE] = "SELECT id, priority, coalesce(concurrency, 0), queued, "
		"running, cancel_req::int, (started_at IS NOT NULL)::int, "
		"paused::int, (stored_state = 'queued')::int "
		"FROM jp_batch_view WHERE stored_state IN ('queued', 'running') "
		"ORDER BY id",
	[P_INFO] = "SELECT id, priority, coalesce(concurrency, 0), queued, "
		"running, cancel_req::int, (started_at IS NOT NULL)::int, "
		"paused::int FROM jp_batch_view WHERE id = $1",
	[P_IDEM_GET] = "SELECT body_hash, batch_id FROM jp_idempotency "
		"WHERE key = $1 AND created_at >= $2",
	/* An expired key is replaced; a live one (another node's, committed
	 * while this request was checked) returns no row. */
	[P_IDEM_PUT] = "INSERT INTO jp_idempotency AS k (key, body_hash, "
		"batch_id, created_at) VALUES ($1, $2, $3, $4) "
		"ON CONFLICT (key) DO UPDATE SET body_hash = EXCLUDED.body_hash, "
		"batch_id = EXCLUDED.batch_id, created_at = EXCLUDED.created_at "
		"WHERE k.created_at < $5 RETURNING batch_id",
	[P_PURGE_PICK] = "SELECT id FROM jp_batches WHERE finished_at IS NOT "
		"NULL AND finished_at < $1 ORDER BY finished_at LIMIT 1 "
		"FOR UPDATE SKIP LOCKED",
	[P_PURGE_JOBS] = "DELETE FROM jp_jobs WHERE id IN (SELECT id FROM "
		"jp_jobs WHERE id >= (SELECT first_job FROM jp_batches "
		"WHERE id = $1) AND id < (SELECT first_job + n_total FROM "
		"jp_batches WHERE id = $1) LIMIT $2)",
	[P_PURGE_KEYS] = "DELETE FROM jp_idempotency WHERE key IN (SELECT key "
		"FROM jp_idempotency WHERE created_at < $1 LIMIT $2 "
		"FOR UPDATE SKIP LOCKED)",
	[P_COUNTS] = "SELECT coalesce(sum(queued), 0), coalesce(sum(running), "
		"0), coalesce(sum(succeeded), 0), coalesce(sum(failed), 0), "
		"coalesce(sum(timed_out), 0), coalesce(sum(canceled), 0) "
		"FROM jp_batch_counts",
	[P_SIZE] = "SELECT coalesce(sum(pg_total_relation_size(oid)), 0) "
		"FROM pg_class WHERE relkind = 'r' AND relname LIKE 'jp\\_%'",
	/* never waits: a node holding the row settles it, or the next look
	 * at the store does */
	[P_SETTLE_LOCK] = "SELECT 1 FROM jp_batches WHERE id = $1 "
		"AND finished_at IS NULL FOR UPDATE SKIP LOCKED",
	/* A new statement after the lock: its snapshot sees every finish
	 * committed before the lock was granted (READ COMMITTED takes one
	 * per statement). */
	[P_SETTLE] = "UPDATE jp_batches b SET state = v.state, "
		"started_at = v.started_at, finished_at = v.finished_at "
		"FROM jp_batch_view v WHERE b.id = $1 AND v.id = $1 "
		"AND v.finished_at IS NOT NULL RETURNING v.state",
	/* resync: a job a worker of this node runs whose claim was lost */
	[P_REVIVE] = "UPDATE jp_jobs SET state = 'running', attempts = $2, "
		"started_at = $3, finished_at = NULL, worker_slot = $4, "
		"worker_pid = $5, worker_node = $6, node_id = $7 "
		"WHERE id = $1 AND state = 'queued' RETURNING batch_id",
	/* resync: this node's running jobs no worker runs any more */
	[P_LOST] = "UPDATE jp_jobs SET " LOST_SET " WHERE node_id = $1 "
		"AND state = 'running' AND NOT (id = ANY ($5::bigint[]))"
		LOST_RETURNING,
	/* the periodic check: this node's running jobs, claimed more than
	 * 2 s ago (committed and handed out long since), that no worker of
	 * it runs */
	[P_LOST_SELF] = "UPDATE jp_jobs SET " LOST_SET " WHERE node_id = $1 "
		"AND state = 'running' AND NOT (id = ANY ($5::bigint[])) "
		"AND started_at < $2::bigint - 2000000"
		LOST_RETURNING,
	/* The reaper: nodes whose lease ran out, by the database's clock. */
	[P_DEAD] = "UPDATE jp_nodes SET state = 'dead' WHERE state = 'alive' "
		"AND heartbeat_at < now() - make_interval(secs => lease_ms / "
		"1000.0) RETURNING id",
	[P_REAP] = "UPDATE jp_jobs SET " LOST_SET " WHERE id IN (SELECT id "
		"FROM jp_jobs WHERE node_id = ANY ($1::bigint[]) "
		"AND state = 'running' FOR UPDATE SKIP LOCKED)"
		LOST_RETURNING,
	/* incarnations no longer alive that still own rows: also those
	 * whose writes landed after they were declared dead */
	[P_ORPHANS] = "SELECT n.id FROM jp_nodes n WHERE n.state <> 'alive' "
		"AND (EXISTS (SELECT 1 FROM jp_jobs j WHERE j.node_id = n.id "
		"AND j.state = 'running') OR EXISTS (SELECT 1 FROM jp_jobs j "
		"WHERE j.held_by = n.id)) LIMIT 16",
	/* cancels asked on other nodes of jobs this node runs; a batch that
	 * halted "soon" lets them finish (halt_soon, schema/pg/002) */
	[P_MY_CANCELS] = "SELECT j.id FROM jp_jobs j JOIN jp_batches b "
		"ON b.id = j.batch_id WHERE j.node_id = $1 "
		"AND j.state = 'running' AND (j.cancel_req OR "
		"(b.cancel_req AND NOT b.halt_soon)) "
		"UNION ALL SELECT id FROM jp_jobs WHERE held_by = $1 "
		"AND state = 'canceled'",
	[P_NODE_ADD] = "INSERT INTO jp_nodes (name, started_at, lease_ms, "
		"pool_size) VALUES ($1, $2, $3, $4) RETURNING id",
	[P_RENEW] = "UPDATE jp_nodes SET heartbeat_at = now(), busy = $2, "
		"pool_size = $3 WHERE id = $1 AND state = 'alive' RETURNING 1",
	/* one reaper at a time, cluster-wide, for this transaction */
	[P_REAP_LOCK] = "SELECT pg_try_advisory_xact_lock(7478353, 2)",
	[P_NODE_GONE] = "UPDATE jp_nodes SET state = 'gone' WHERE id = $1",
	/* one row per transaction; a second append in it joins the first */
	/* The doorbell rides along (sent by PostgreSQL at the commit):
	 * one round trip for both. */
	[P_EVENT_ADD] = "INSERT INTO jp_events AS e (xid, node_id, created_at, "
		"body) SELECT pg_current_xact_id(), $1, $2, $3 "
		"FROM (SELECT pg_notify('jp_events', '')) AS doorbell "
		"ON CONFLICT (xid) DO UPDATE SET body = left(e.body, -1) || "
		"',' || substr(EXCLUDED.body, 2)",
	[P_EVENTS_READ] = "SELECT xid::text, node_id, body FROM jp_events "
		"WHERE xid >= $1::xid8 "
		"AND xid < pg_snapshot_xmin(pg_current_snapshot()) "
		"ORDER BY xid LIMIT $2",
	[P_EVENTS_TRIM] = "DELETE FROM jp_events WHERE xid IN (SELECT xid "
		"FROM jp_events WHERE created_at < $1 LIMIT 1000)",
	/* halt policies and relative timeouts (store_batch_policy) */
	[P_POLICY] = "SELECT halt, coalesce(timeout_pct, 0), "
		"(halted_at IS NOT NULL)::int, n_total, succeeded, "
		"failed + timed_out, queued + running FROM jp_batch_view "
		"WHERE id = $1",
	[P_RUNS] = "SELECT run_us FROM jp_jobs WHERE id >= (SELECT first_job "
		"FROM jp_batches WHERE id = $1) AND id < (SELECT first_job + "
		"n_total FROM jp_batches WHERE id = $1) AND state = 'succeeded' "
		"AND run_us IS NOT NULL ORDER BY finished_at DESC LIMIT $2",
	/* Once per batch across the nodes: of two nodes seeing the threshold
	 * at once, the second waits for the first's row lock and then finds
	 * halted_at set.  A cancel that came first wins. */
	[P_HALT] = "UPDATE jp_batches SET halted_reason = $2, halted_at = $3, "
		"halt_soon = $4 WHERE id = $1 AND halted_at IS NULL "
		"AND NOT cancel_req",
	/* a client's cancel after a "soon" halt: kill the running ones too */
	[P_HALT_LIFT] = "UPDATE jp_batches SET halt_soon = false "
		"WHERE id = $1 AND halt_soon",
	/* pause, resume, PATCH: NULL keeps a value.  Other nodes see it at
	 * their tick (P_ACTIVE), so a batch's pause holds on all of them. */
	[P_BATCH_SET] = "UPDATE jp_batches SET "
		"paused = coalesce($2::int::boolean, paused), "
		"priority = coalesce($3::int, priority), "
		"concurrency = CASE WHEN $4::int IS NULL THEN concurrency "
		"WHEN $4::int = 0 THEN NULL ELSE $4::int END WHERE id = $1",
	/* the pause of dispatch on every node (pg/006_dispatch.sql); each
	 * node reads it at its look (store_pg_node.c) */
	[P_DISPATCH_SET] = "UPDATE jp_dispatch SET paused = $1::int::boolean "
		"WHERE id = 1",
	[P_DISPATCH_GET] = "SELECT paused::int FROM jp_dispatch WHERE id = 1",
	/* GET /v1/jobs; $1 NULL: any state, else a list "a,b" */
	[P_LIST_ALL_J] = "SELECT " JOB_COLS " FROM jp_jobs WHERE id > $2 "
		"AND ($1::text IS NULL OR "
		"state = ANY (string_to_array($1, ','))) ORDER BY id LIMIT $3",
	/* follow-up batches (then_fire) */
	[P_THEN_SET] = "UPDATE jp_batches SET then_on = $2, then_body = $3, "
		"then_state = 'pending' WHERE id = $1",
	[P_THEN_GET] = "SELECT then_on, then_body FROM jp_batches "
		"WHERE id = $1 AND then_state = 'pending'",
	[P_THEN_DONE] = "UPDATE jp_batches SET then_state = $2, "
		"then_batch_id = $3 WHERE id = $1",
	[P_THEN_PARENT] = "UPDATE jp_batches SET parent_id = $2 WHERE id = $1",
	[P_THEN_CHILD] = "SELECT then_batch_id FROM jp_batches WHERE id = $1 "
		"AND then_state = 'created'",
	[P_NODES] = "SELECT name, id = $1, started_at, "
		"(extract(epoch FROM heartbeat_at) * 1000000)::bigint, "
		"pool_size, busy FROM jp_nodes WHERE state = 'alive' "
		"ORDER BY name, id",
	/* ---- webhooks (store_pg_webhook.c, schema pg/003_webhooks.sql) */
	[P_WH_INSERT] = "INSERT INTO jp_webhooks (batch_id, url, secret, "
		"events, generated) VALUES ($1, $2, $3, $4, $5)",
	[P_WH_DUE] = "SELECT 1 FROM jp_webhook_deliveries "
		"WHERE state = 'pending' AND next_at <= $1 LIMIT 1",
	/* One node at a time: rows another node is taking are skipped, and
	 * the lease (next_at past the attempt's timeout) is committed before
	 * the attempt starts. */
	[P_WH_CLAIM] = "UPDATE jp_webhook_deliveries d SET next_at = $2, "
		"leased_by = $3 FROM (SELECT id FROM jp_webhook_deliveries "
		"WHERE state = 'pending' AND next_at <= $1 ORDER BY next_at "
		"LIMIT $4 FOR UPDATE SKIP LOCKED) c WHERE d.id = c.id "
		"RETURNING d.id, d.batch_id, coalesce(d.job_id, 0), "
		"d.created_at, d.attempts, d.event, d.msg_id, d.url, d.secret, "
		"d.body",
	[P_WH_NEXT] = "SELECT min(next_at) FROM jp_webhook_deliveries "
		"WHERE state = 'pending'",
	[P_WH_BODY] = "UPDATE jp_webhook_deliveries SET body = $1 "
		"WHERE id = $2 AND body IS NULL",
	[P_WH_ATTEMPT] = "INSERT INTO jp_webhook_attempts (delivery_id, n, "
		"started_at, duration_us, status, error) "
		"VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, n) "
		"DO UPDATE SET started_at = EXCLUDED.started_at, "
		"duration_us = EXCLUDED.duration_us, status = EXCLUDED.status, "
		"error = EXCLUDED.error",
	[P_WH_RESULT] = "UPDATE jp_webhook_deliveries SET attempts = $1, "
		"leased_by = NULL, last_status = $2, last_error = $3, "
		"state = CASE WHEN $4::boolean THEN 'delivered' "
		"WHEN $5::bigint < 0 THEN 'failed' ELSE 'pending' END, "
		"next_at = greatest($5::bigint, 0), "
		"delivered_at = CASE WHEN $4::boolean THEN $6::bigint END "
		"WHERE id = $7",
	/* settled, and its batch deleted meanwhile: nothing shows it */
	[P_WH_ORPHAN] = "WITH d AS (DELETE FROM jp_webhook_deliveries "
		"WHERE id = $1 AND state <> 'pending' AND NOT EXISTS (SELECT 1 "
		"FROM jp_batches b WHERE b.id = jp_webhook_deliveries.batch_id) "
		"RETURNING id) DELETE FROM jp_webhook_attempts "
		"WHERE delivery_id IN (SELECT id FROM d)",
	/* this node's leases, from an earlier process of the same name */
	[P_WH_RELEASE] = "UPDATE jp_webhook_deliveries SET next_at = $1, "
		"leased_by = NULL WHERE state = 'pending' AND leased_by = $2",
	[P_WH_LIST] = "SELECT " DELIVERY_COLS " FROM jp_webhook_deliveries "
		"WHERE batch_id = $1 AND id > $2 ORDER BY id LIMIT $3",
	[P_WH_LIST_STATE] = "SELECT " DELIVERY_COLS
		" FROM jp_webhook_deliveries WHERE batch_id = $1 AND id > $2 "
		"AND state = $4 ORDER BY id LIMIT $3",
	[P_WH_ATTEMPTS] = "SELECT delivery_id, n, started_at, duration_us, "
		"status, error FROM jp_webhook_attempts "
		"WHERE delivery_id = ANY($1::bigint[]) ORDER BY delivery_id, n",
	[P_WH_GET] = "SELECT url, events, secret, generated FROM jp_webhooks "
		"WHERE batch_id = $1",
};

/* ---- parameters ---- */

void pgp_i64(struct pgp *p, int64_t v)
{
	snprintf(p->b[p->n], sizeof(p->b[0]), "%lld", (long long)v);
	p->v[p->n] = p->b[p->n];
	p->n++;
}

void pgp_dbl(struct pgp *p, double v)
{
	snprintf(p->b[p->n], sizeof(p->b[0]), "%.17g", v);
	p->v[p->n] = p->b[p->n];
	p->n++;
}

void pgp_txt(struct pgp *p, const char *v)
{
	p->v[p->n++] = v;
}

void pgp_opt(struct pgp *p, int64_t v, int present)
{
	if (present)
		pgp_i64(p, v);
	else
		pgp_txt(p, NULL);
}

int64_t pg_i64(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 :
	       strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* ---- counter deltas ----
 *
 * A turn's changes to its batches' counters add up here and reach this
 * node's jp_batch_counts rows in one statement per batch, just before the
 * COMMIT (count_flush); an operation's savepoint takes a copy, so a failed
 * one takes its deltas back with it. */
struct delta {
	int64_t batch_id;
	int64_t d[8];
	int64_t first_start, last_finish;
};
static struct delta *deltas, *sp_deltas;
static size_t ndeltas, nsp_deltas, delta_cap, sp_delta_cap;

static struct delta *delta_of(int64_t batch_id, int add)
{
	size_t i;

	for (i = 0; i < ndeltas; i++)
		if (deltas[i].batch_id == batch_id)
			return &deltas[i];
	if (!add)
		return NULL;
	if (ndeltas == delta_cap) {
		size_t cap = delta_cap ? delta_cap * 2 : 16;
		struct delta *p = realloc(deltas, cap * sizeof(*p));

		if (!p)
			return NULL;
		deltas = p;
		delta_cap = cap;
	}
	memset(&deltas[ndeltas], 0, sizeof(deltas[0]));
	deltas[ndeltas].batch_id = batch_id;
	return &deltas[ndeltas++];
}

int pg_count(int64_t batch_id, const int64_t d[8], int64_t first_start,
	     int64_t last_finish)
{
	struct delta *x = delta_of(batch_id, 1);
	int i;

	if (!x)
		return -1;
	for (i = 0; i < 8; i++)
		x->d[i] += d[i];
	if (first_start > 0 && (!x->first_start ||
				first_start < x->first_start))
		x->first_start = first_start;
	if (last_finish > x->last_finish)
		x->last_finish = last_finish;
	return 0;
}

/* pg_deltas_forget drops a deleted batch's pending changes. */
void pg_deltas_forget(int64_t batch_id)
{
	struct delta *x = delta_of(batch_id, 0);

	if (x)
		*x = deltas[--ndeltas];
}

/* pg_pending_running is this turn's change to a batch's running count,
 * not in the database yet (the concurrency gate adds it). */
int64_t pg_pending_running(int64_t batch_id)
{
	struct delta *x = delta_of(batch_id, 0);

	return x ? x->d[D_RUNNING] : 0;
}

static void deltas_mark(void)
{
	if (sp_delta_cap < ndeltas) {
		struct delta *p = realloc(sp_deltas, delta_cap * sizeof(*p));

		if (!p) {
			nsp_deltas = 0;
			return;
		}
		sp_deltas = p;
		sp_delta_cap = delta_cap;
	}
	if (ndeltas)
		memcpy(sp_deltas, deltas, ndeltas * sizeof(*deltas));
	nsp_deltas = ndeltas;
}

static void deltas_undo(void)
{
	if (nsp_deltas)
		memcpy(deltas, sp_deltas, nsp_deltas * sizeof(*deltas));
	ndeltas = nsp_deltas;
}

/* count_flush writes the turn's deltas.  A batch left with nothing queued
 * is settled after the commit: another node may end its last running job
 * at the same moment, and settle_now decides. */
static int count_flush(void)
{
	struct pgp p = { 0 };
	PGresult *r;
	size_t i;
	int k;

	for (i = 0; i < ndeltas; i++) {
		struct delta *x = &deltas[i];

		p.n = 0;
		pgp_i64(&p, x->batch_id);
		pgp_i64(&p, pg_node_id);
		for (k = 0; k < 8; k++)
			pgp_i64(&p, x->d[k]);
		pgp_opt(&p, x->first_start, x->first_start > 0);
		pgp_opt(&p, x->last_finish, x->last_finish > 0);
		if (!(r = pg_run(P_COUNT, &p)))
			return -1;
		if (PQntuples(r) && pg_i64(r, 0, 0) <= 0)
			pg_settle_later(x->batch_id);
		PQclear(r);
	}
	ndeltas = nsp_deltas = 0;
	return 0;
}

/* ---- statements and the turn's transaction ---- */

static void rolled_back(const char *why)
{
	lost = 1;
	key_lock = 0;
	nsettle = 0;
	ndeltas = nsp_deltas = 0;
	if (!degraded)
		log_warn("store: %s; writes are refused until memory and the "
			 "database agree again", why);
	degraded = 1;
	if (on_rollback)
		on_rollback();
}

/* failed logs a failed statement.  A lost connection loses the open
 * transaction with it. */
static void failed(const char *what, const PGresult *r)
{
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

	/* 53100 disk full, 53200 out of memory, 54000 program limit */
	full = state && (strncmp(state, "53", 2) == 0);
	log_warn("store: %s: %s", what, r ? PQresultErrorMessage(r) :
		 PQerrorMessage(pg_conn));
	if (PQstatus(pg_conn) == CONNECTION_BAD && in_txn) {
		in_txn = 0;
		rolled_back("the connection to PostgreSQL was lost with the "
			    "open transaction");
	}
}

/* A batch's COPY sent in full whose result is not read yet, and whether
 * its savepoint waits for it to be released. */
static int copy_pending, release_pending;

/* copy_settle reads the result of a pending COPY before the connection
 * takes anything else.  The batch's request is already waiting for the
 * turn's commit, so a COPY that failed (the disk full, say) takes the
 * whole turn with it: every request waiting on it is answered 503 and
 * nothing of it is kept, as when a COMMIT fails.  Returns 0 or -1. */
static int copy_settle(void)
{
	PGresult *r;
	int rc = 0;

	if (!copy_pending)
		return 0;
	copy_pending = 0;
	while ((r = PQgetResult(pg_conn))) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			if (!rc)
				failed("COPY jp_jobs", r);
			rc = -1;
		}
		PQclear(r);
	}
	if (release_pending) {
		release_pending = 0;
		if (rc == 0)
			rc = pg_exec("RELEASE batch");
	}
	if (rc < 0 && in_txn) {
		in_txn = 0;
		if (PQstatus(pg_conn) == CONNECTION_OK)
			pg_exec("ROLLBACK");
		rolled_back("a batch's jobs could not be written");
	}
	return rc;
}

int pg_exec(const char *q)
{
	PGresult *r;

	if (copy_settle() < 0)
		return -1;      /* the turn is gone: nothing runs in its place */
	r = PQexec(pg_conn, q);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK ||
		 PQresultStatus(r) == PGRES_TUPLES_OK;

	if (!ok)
		failed(q, r);
	PQclear(r);
	return ok ? 0 : -1;
}

PGresult *pg_run(enum pg_stmt id, const struct pgp *p)
{
	char name[8];
	PGresult *r;

	snprintf(name, sizeof(name), "p%d", (int)id);
	if (copy_settle() < 0)
		return NULL;
	r = PQexecPrepared(pg_conn, name, p ? p->n : 0, p ? p->v : NULL, NULL,
			   NULL, 0);
	if (PQresultStatus(r) == PGRES_COMMAND_OK ||
	    PQresultStatus(r) == PGRES_TUPLES_OK)
		return r;
	failed(sql[id], r);
	PQclear(r);
	return NULL;
}

int pg_step(enum pg_stmt id, const struct pgp *p)
{
	PGresult *r = pg_run(id, p);
	int n;

	if (!r)
		return -1;
	n = atoi(PQcmdTuples(r));
	PQclear(r);
	return n;
}

/* reconnect opens the loop's connection again after it was lost, between
 * turns, so the next turn works if PostgreSQL is back. */
static int prepare_all(void);
int pg_reconnect(void)
{
	static int64_t next_try, backoff;
	int64_t now = mono_us();

	if (PQstatus(pg_conn) == CONNECTION_OK)
		return 0;
	/* Each try costs the server a backend start: at most every 100 ms,
	 * backing off to 5 s while it stays down. */
	if (now < next_try)
		return -1;
	PQreset(pg_conn);
	if (PQstatus(pg_conn) != CONNECTION_OK) {
		backoff = backoff ? (backoff * 2 < 5000000 ? backoff * 2 :
				     5000000) : 100000;
		next_try = mono_us() + backoff;
		return -1;
	}
	backoff = next_try = 0;
	pg_generation++;
	log_info("store: connected to PostgreSQL again");
	return prepare_all();
}

static int fenced_writes;
static void pg_diverged(void);

void pg_fence_writes(int on)
{
	fenced_writes = on;
	if (on && in_txn) {
		in_txn = 0;
		pg_exec("ROLLBACK");
		rolled_back("this node lost its lease; the turn is dropped");
	}
	if (on)
		degraded = 1;
}

int pg_begin(void)
{
	if ((degraded && !resyncing) || fenced_writes)
		return -1;
	if (in_txn)
		return 0;
	if (pg_reconnect() < 0 || pg_exec("BEGIN") < 0) {
		/* The caller has moved on in memory (a worker is free): the
		 * resync, once PostgreSQL answers, writes what it kept. */
		if (!resyncing)
			pg_diverged();
		return -1;
	}
	in_txn = 1;
	key_lock = 0;
	return 0;
}

int pg_sp_begin(void)
{
	if (pg_begin() < 0)
		return -1;
	deltas_mark();
	return pg_exec("SAVEPOINT op");
}

/* pg_op_begin and pg_op_end frame a job transition (claim, outcome,
 * retry, requeue) without a savepoint: those are the hot path, and a
 * savepoint costs two round trips more per job.  A logical failure marks
 * the store for the engine's resync; a failed statement has aborted the
 * transaction, so the whole turn is lost and reported as such (replies
 * that waited for it fail), as a failed COMMIT would be. */
int pg_op_begin(void)
{
	if (pg_begin() < 0)
		return -1;
	deltas_mark();
	return 0;
}

int pg_op_end(int rc)
{
	if (rc >= 0)
		return rc;
	deltas_undo();
	if (in_txn && PQtransactionStatus(pg_conn) != PQTRANS_INTRANS) {
		in_txn = 0;
		pg_exec("ROLLBACK");
		rolled_back("a write failed and took its transaction with it");
		return rc;
	}
	if (!degraded)
		log_warn("store: a write failed; writes are refused until "
			 "memory and the database agree again");
	degraded = 1;
	return rc;
}

/* pg_sp_end closes an operation's savepoint; a failed one is undone alone
 * (in PostgreSQL the transaction takes nothing more until it is), and the
 * store is marked for the engine's resync, as with SQLite. */
int pg_sp_end(int rc)
{
	if (rc < 0) {
		deltas_undo();
		if (in_txn && pg_exec("ROLLBACK TO op") < 0) {
			in_txn = 0;
			pg_exec("ROLLBACK");
			rolled_back("a failed operation could not be undone");
			return rc;
		}
		if (!degraded)
			log_warn("store: a write failed; writes are refused "
				 "until memory and the database agree again");
		degraded = 1;
	}
	if (in_txn)
		pg_exec("RELEASE op");
	return rc;
}

void pg_delta_state(int64_t d[8], int from, int to, int64_t n)
{
	/* job_state order: queued running succeeded failed timed_out
	 * canceled, as the delta columns */
	if (from >= 0 && from < JS__COUNT)
		d[from] -= n;
	if (to >= 0 && to < JS__COUNT)
		d[to] += n;
}

void pg_settle_later(int64_t batch_id)
{
	size_t i;

	for (i = 0; i < nsettle; i++)
		if (to_settle[i] == batch_id)
			return;
	if (nsettle == settle_cap) {
		size_t cap = settle_cap ? settle_cap * 2 : 16;
		int64_t *p = realloc(to_settle, cap * sizeof(*p));

		if (!p)
			return;         /* the next look settles it */
		to_settle = p;
		settle_cap = cap;
	}
	to_settle[nsettle++] = batch_id;
}

/* settle_now stores a batch's final state, in its own transaction after
 * the turn's commit: it locks the batch row first and only then sums the
 * shards, so of two nodes ending a batch's last two jobs at once, the one
 * that commits last sees both and settles it. */
static int batch_insert_(const json_t *req, int64_t now, const char *key,
			 const char *hash, int64_t *id, json_t **job_ids);

/* log_batch puts batch_id as it is now into the event log. */
static int log_batch(int64_t batch_id)
{
	struct change c = { .is_batch = 1 };
	int rc = 0;

	c.id = c.batch_id = batch_id;
	c.batch = store_batch_json_pending(batch_id);
	if (c.batch)
		rc = pg_event_row(&c, 1);
	json_decref(c.batch);
	return rc;
}

/* then_fire creates the follow-up of batch_id, which has just ended in
 * state, or records it skipped ("on": "success" and the batch did not
 * succeed), in settle_now's transaction, the one that stores the end: a
 * crash keeps both or neither, and only a pending follow-up fires.  The
 * nodes pick the new batch up at their next look.  Returns 0 or -1. */
static int then_fire(int64_t batch_id, const char *state)
{
	struct pgp p = { 0 };
	PGresult *r;
	json_t *body = NULL, *ids = NULL;
	int64_t child = 0;
	int create, rc = 0;

	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_THEN_GET, &p)))
		return -1;
	if (!PQntuples(r)) {
		PQclear(r);
		return 0;
	}
	create = strcmp(PQgetvalue(r, 0, 0), "success") ||
		 !strcmp(state, "succeeded");
	if (create)
		body = json_loads(PQgetvalue(r, 0, 1), 0, NULL);
	PQclear(r);
	if (create) {
		rc = body ? batch_insert_(body, now_us(), NULL, NULL, &child,
					  &ids) : -1;
		json_decref(body);
		json_decref(ids);
		/* its rows, counters and creation event in this transaction */
		if (rc != 0 || copy_settle() < 0 || count_flush() < 0 ||
		    log_batch(child) < 0)
			return -1;
		p.n = 0;
		pgp_i64(&p, child);
		pgp_i64(&p, batch_id);
		if (pg_step(P_THEN_PARENT, &p) < 0)
			return -1;
	}
	p.n = 0;
	pgp_i64(&p, batch_id);
	pgp_txt(&p, create ? "created" : "skipped");
	pgp_opt(&p, child, child > 0);
	return pg_step(P_THEN_DONE, &p) < 0 ? -1 : 0;
}

static int64_t pg_then_child(int64_t batch_id)
{
	struct pgp p = { 0 };
	PGresult *r;
	int64_t child = 0;

	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_THEN_CHILD, &p)))
		return 0;
	if (PQntuples(r) && !PQgetisnull(r, 0, 0))
		child = pg_i64(r, 0, 0);
	PQclear(r);
	return child;
}

static void settle_now(int64_t batch_id)
{
	struct pgp p = { 0 };
	PGresult *r = NULL;
	int n;

	pgp_i64(&p, batch_id);
	if (pg_exec("BEGIN") < 0)
		return;
	if ((n = pg_step(P_SETTLE_LOCK, &p)) < 0 ||
	    (n > 0 && !(r = pg_run(P_SETTLE, &p))))
		goto fail;
	/* Ended by this transaction: its end goes into the log, once, and
	 * its follow-up is created with it. */
	if (r && PQntuples(r) > 0) {
		if (then_fire(batch_id, PQgetvalue(r, 0, 0)) < 0 ||
		    log_batch(batch_id) < 0)
			goto fail;
	}
	PQclear(r);
	pg_exec("COMMIT");
	return;
fail:
	PQclear(r);
	ndeltas = nsp_deltas = 0;
	pg_exec("ROLLBACK");
}

static int pg_flush(void)
{
	PGresult *r;
	int ok;
	size_t i, n;

	if (lost) {
		/* lost since the last flush: its replies and claims go; a
		 * transaction begun since then goes with them */
		lost = 0;
		if (in_txn) {
			in_txn = 0;
			pg_exec("ROLLBACK");
		}
		return -1;
	}
	if (copy_settle() < 0) {
		lost = 0;
		return -1;
	}
	if (!in_txn)
		goto settle;
	if (count_flush() < 0) {
		in_txn = 0;
		pg_exec("ROLLBACK");
		rolled_back("the counters could not be written");
		return -1;
	}
	in_txn = 0;
	key_lock = 0;
	r = PQexec(pg_conn, "COMMIT");
	/* A COMMIT of a transaction that failed answers "ROLLBACK". */
	ok = PQresultStatus(r) == PGRES_COMMAND_OK &&
	     strcmp(PQcmdStatus(r), "COMMIT") == 0;
	if (!ok)
		failed("COMMIT", r);
	PQclear(r);
	if (!ok) {
		if (PQstatus(pg_conn) == CONNECTION_OK &&
		    PQtransactionStatus(pg_conn) != PQTRANS_IDLE)
			pg_exec("ROLLBACK");
		rolled_back("a commit failed");
		return -1;
	}
	pg_replay_clear();      /* the outcomes are in */
settle:
	n = nsettle;
	nsettle = 0;
	for (i = 0; i < n; i++)
		settle_now(to_settle[i]);
	return 0;
}

static int pg_dirty(void)
{
	return in_txn;
}

static int pg_degraded(void)
{
	return degraded;
}

static void pg_diverged(void)
{
	if (!degraded)
		log_warn("store: a write failed; writes are refused until "
			 "memory and the database agree again");
	degraded = 1;
}

static void pg_set_rollback_hook(void (*fn)(void))
{
	on_rollback = fn;
}

static int pg_full(void)
{
	return full;
}

static int pg_resync_begin(void)
{
	/* the loss was reported (degraded, replies failed); the resync
	 * recovers from it and must be able to commit */
	lost = 0;
	if (in_txn && pg_flush() < 0)
		return -1;
	resyncing = 1;
	if (pg_begin() < 0) {
		resyncing = 0;
		return -1;
	}
	return 0;
}

static int pg_resync_end(int ok)
{
	int rc;

	if (!ok && in_txn) {
		in_txn = 0;
		pg_exec("ROLLBACK");
	}
	rc = ok ? pg_flush() : -1;
	resyncing = 0;
	if (rc == 0) {
		degraded = 0;
		log_info("store: writes work again; memory and the database "
			 "agree");
		return 0;
	}
	degraded = 1;
	return -1;
}

/* ---- connection and schema ---- */

static int prepare_all(void)
{
	char name[8];
	PGresult *r;
	int i;

	for (i = 0; i < P__COUNT; i++) {
		snprintf(name, sizeof(name), "p%d", i);
		r = PQprepare(pg_conn, name, sql[i], 0, NULL);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			log_warn("store: prepare: %s: %s",
				 PQresultErrorMessage(r), sql[i]);
			PQclear(r);
			return -1;
		}
		PQclear(r);
	}
	return 0;
}

static void quiet(void *arg, const char *message)
{
}

/* connect_to opens a connection with the settings every one of ours has:
 * errors come back within bounds instead of hanging a turn, and a dead
 * peer is noticed in seconds. */
static PGconn *connect_to(const char *info, const char *role)
{
	/* Bounds, kept across reconnects: a turn never waits long on a lock,
	 * and a node that froze inside a turn does not hold its row locks
	 * (or the keys' lock) past lease - 1 s. */
	const char *keys[] = { "dbname", "application_name", "keepalives",
			       "keepalives_idle", "keepalives_interval",
			       "keepalives_count", "connect_timeout", "options",
			       NULL };
	char app[96];
	const char *vals[] = { info, app, "1", "2", "1", "2", "5",
			       "-c lock_timeout=2s -c statement_timeout=30s "
			       "-c idle_in_transaction_session_timeout=2s", NULL };
	PGconn *c;

	snprintf(app, sizeof(app), "jobpoold/%s/%s", cfg.node_name, role);
	/* expand_dbname: the URL's own parameters win for the rest */
	c = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(c) != CONNECTION_OK) {
		log_warn("store: cannot connect to PostgreSQL: %s",
			 PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	/* NOTICEs ("already exists, skipping") are not for the log */
	PQsetNoticeProcessor(c, quiet, NULL);
	return c;
}

int pg_connect_thread(PGconn **c, const char *role)
{
	*c = connect_to(conninfo, role);
	return *c ? 0 : -1;
}

static int migrate(void)
{
	PGresult *r;
	size_t i, version = 0;
	char q[128];

	/* One node migrates at a time; the others wait here. */
	if (pg_exec("BEGIN") < 0 ||
	    pg_exec("SELECT pg_advisory_xact_lock(7478353, 1)") < 0 ||
	    pg_exec("CREATE TABLE IF NOT EXISTS jp_meta (key text PRIMARY KEY, "
		    "value text NOT NULL)") < 0)
		goto fail;
	r = PQexec(pg_conn, "SELECT value FROM jp_meta WHERE key = 'schema'");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		PQclear(r);
		goto fail;
	}
	if (PQntuples(r))
		version = (size_t)atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	if (version > pg_schema_migrations_count) {
		log_warn("store: database schema %zu is newer than this server "
			 "(%zu)", version, pg_schema_migrations_count);
		goto fail;
	}
	for (i = version; i < pg_schema_migrations_count; i++) {
		if (pg_exec(pg_schema_migrations[i]) < 0)
			goto fail;
		snprintf(q, sizeof(q), "INSERT INTO jp_meta VALUES ('schema', "
			 "'%zu') ON CONFLICT (key) DO UPDATE SET value = "
			 "EXCLUDED.value", i + 1);
		if (pg_exec(q) < 0)
			goto fail;
		log_info("store: applied PostgreSQL migration %zu", i + 1);
	}
	return pg_exec("COMMIT");
fail:
	pg_exec("ROLLBACK");
	return -1;
}

static int pg_open(const char *url)
{
	free(conninfo);
	conninfo = strdup(url);
	if (!conninfo || !(pg_conn = connect_to(url, "loop")) ||
	    !(id_conn = connect_to(url, "ids")))
		return -1;
	if (migrate() < 0 || prepare_all() < 0)
		return -1;
	return pg_node_start(url);
}

static void pg_close(void)
{
	pg_flush();
	pg_node_stop();
	pg_events_stop();
	PQfinish(pg_conn);
	PQfinish(id_conn);
	pg_conn = id_conn = NULL;
	free(conninfo);
	conninfo = NULL;
	free(to_settle);
	to_settle = NULL;
	nsettle = settle_cap = 0;
	degraded = resyncing = in_txn = 0;
}

static int pg_ping(void)
{
	return pg_exec("SELECT 1") < 0 ? -1 : 0;
}

/* ---- submission ---- */

static int arr_put(struct arr *a, const char *s, size_t n)
{
	if (a->len + n + 2 > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 1024;
		char *p;

		while (cap < a->len + n + 2)
			cap *= 2;
		if (!(p = realloc(a->p, cap)))
			return -1;
		a->p = p;
		a->cap = cap;
	}
	memcpy(a->p + a->len, s, n);
	a->len += n;
	a->p[a->len] = 0;
	return 0;
}

/* arr_add appends one element: NULL, or v quoted (" and \ escaped). */
int arr_add(struct arr *a, const char *v)
{
	const char *s;

	if (arr_put(a, a->n++ ? "," : "{", 1) < 0)
		return -1;
	if (!v)
		return arr_put(a, "NULL", 4);
	if (arr_put(a, "\"", 1) < 0)
		return -1;
	for (s = v; *s; s++) {
		if ((*s == '"' || *s == '\\') && arr_put(a, "\\", 1) < 0)
			return -1;
		if (arr_put(a, s, 1) < 0)
			return -1;
	}
	return arr_put(a, "\"", 1);
}

const char *arr_end(struct arr *a)
{
	if (arr_put(a, a->n ? "}" : "{}", a->n ? 1 : 2) < 0)
		return NULL;
	return a->p;
}

/* next_ids takes a block of n ids of kind ("batch" or "job") on the id
 * connection, committed at once: two nodes submitting never wait for each
 * other's turn.  Ids of a batch that is then lost are just never used. */
static int64_t next_ids(const char *kind, int64_t n)
{
	const char *v[2];
	char num[32];
	PGresult *r;
	int64_t first = -1;

	if (PQstatus(id_conn) != CONNECTION_OK)
		PQreset(id_conn);
	snprintf(num, sizeof(num), "%lld", (long long)n);
	v[0] = kind;
	v[1] = num;
	r = PQexecParams(id_conn, sql[P_IDS], 2, NULL, v, NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
		first = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	else
		log_warn("store: ids: %s", PQerrorMessage(id_conn));
	PQclear(r);
	return first;
}

/* A COPY row is built as text: a field is \N (NULL) or its text with
 * backslash, tab, newline and carriage return escaped. */
struct copybuf {
	char *p;
	size_t len, cap;
};

static int cb_put(struct copybuf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 1 << 16;
		char *p;

		while (cap < b->len + n)
			cap *= 2;
		if (!(p = realloc(b->p, cap)))
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

static int cb_field(struct copybuf *b, const char *v, int last)
{
	const char *s, *run;
	int rc = 0;

	if (!v)
		rc = cb_put(b, "\\N", 2);
	for (s = run = v; v && *s; s++) {
		const char *esc = *s == '\\' ? "\\\\" : *s == '\t' ? "\\t" :
				  *s == '\n' ? "\\n" : *s == '\r' ? "\\r" : NULL;

		if (!esc)
			continue;
		rc |= cb_put(b, run, (size_t)(s - run));
		rc |= cb_put(b, esc, 2);
		run = s + 1;
	}
	if (v)
		rc |= cb_put(b, run, (size_t)(s - run));
	return rc | cb_put(b, last ? "\n" : "\t", 1);
}

/* cb_json writes j as a COPY field (compact JSON, escaped as cb_field
 * does), straight from jansson: no string per job. */
static int cb_json_chunk(const char *buf, size_t size, void *data)
{
	struct copybuf *b = data;
	size_t i, run = 0;
	int rc = 0;

	for (i = 0; i < size; i++) {
		const char *esc = buf[i] == '\\' ? "\\\\" :
				  buf[i] == '\t' ? "\\t" :
				  buf[i] == '\n' ? "\\n" :
				  buf[i] == '\r' ? "\\r" : NULL;

		if (!esc)
			continue;
		rc |= cb_put(b, buf + run, i - run);
		rc |= cb_put(b, esc, 2);
		run = i + 1;
	}
	return rc | cb_put(b, buf + run, size - run);
}

static int cb_json(struct copybuf *b, const json_t *j, const char *dflt)
{
	if (!j)
		return cb_field(b, dflt, 0);
	if (json_dump_callback(j, cb_json_chunk, b, JSON_COMPACT) < 0)
		return -1;
	return cb_put(b, "\t", 1);
}

/* cb_int writes a decimal integer field (faster than printf). */
static int cb_int(struct copybuf *b, int64_t v, int last)
{
	char buf[24], *p = buf + sizeof(buf);
	uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;

	*--p = last ? '\n' : '\t';
	do
		*--p = (char)('0' + u % 10);
	while ((u /= 10));
	if (v < 0)
		*--p = '-';
	return cb_put(b, p, (size_t)(buf + sizeof(buf) - p));
}

/* insert_jobs writes a batch's jobs with COPY: several times faster than
 * INSERTs for large batches (the rows travel as one stream). */
static int insert_jobs(int64_t batch_id, int64_t first, const json_t *jobs,
		       int64_t now)
{
	struct copybuf b = { 0 };
	char num[6][32];
	size_t i, n = json_array_size(jobs);
	PGresult *r;
	int rc = 0, ok;

	snprintf(num[0], 32, "%lld", (long long)batch_id);
	snprintf(num[1], 32, "%lld", (long long)now);
	r = PQexec(pg_conn, "COPY jp_jobs (id, batch_id, idx, name, kind, "
		   "args, state, max_attempts, retry_on, retry_backoff_s, "
		   "timeout_s, created_at, queued_at) FROM STDIN");
	ok = PQresultStatus(r) == PGRES_COPY_IN;
	if (!ok)
		failed("COPY jp_jobs", r);
	PQclear(r);
	if (!ok)
		return -1;
	for (i = 0; i < n && rc == 0; i++) {
		const json_t *job = json_array_get(jobs, i), *v;

		rc |= cb_int(&b, first + (int64_t)i, 0);
		rc |= cb_field(&b, num[0], 0);
		rc |= cb_int(&b, (int64_t)i, 0);
		v = json_object_get(job, "name");
		rc |= cb_field(&b, json_is_string(v) ? json_string_value(v) :
			       NULL, 0);
		rc |= cb_field(&b, json_string_value(json_object_get(job,
								    "kind")), 0);
		rc |= cb_json(&b, json_object_get(job, "args"), "{}");
		rc |= cb_field(&b, "queued", 0);
		v = json_object_get(job, "max_attempts");
		rc |= cb_int(&b, v ? (int64_t)json_number_value(v) : 1, 0);
		rc |= cb_json(&b, json_object_get(job, "retry_on"), "[]");
		v = json_object_get(job, "retry_backoff_s");
		if (v)
			snprintf(num[5], 32, "%.17g", json_number_value(v));
		rc |= cb_field(&b, v ? num[5] : "1", 0);
		v = json_object_get(job, "timeout_s");
		if (v)
			snprintf(num[5], 32, "%.17g", json_number_value(v));
		rc |= cb_field(&b, v ? num[5] : NULL, 0);
		rc |= cb_field(&b, num[1], 0);
		rc |= cb_field(&b, num[1], 1);
		if (b.len >= 1 << 20 || i + 1 == n) {
			if (PQputCopyData(pg_conn, b.p, (int)b.len) != 1)
				rc = -1;
			b.len = 0;
		}
	}
	free(b.p);
	if (PQputCopyEnd(pg_conn, rc ? "the batch could not be built" :
			 NULL) != 1)
		rc = -1;
	if (rc == 0) {
		/* Its result is read when the connection is next needed
		 * (copy_settle): PostgreSQL goes on filling the table and
		 * its indexes while this process builds the answer. */
		copy_pending = 1;
		return 0;
	}
	while ((r = PQgetResult(pg_conn)))
		PQclear(r);
	return -1;
}

/* batch_policy_params adds the batch's halt (JSON text) and timeout_pct
 * parameters, each NULL when absent.  *text is the new halt text the
 * parameter points to: the caller frees it after the statement. */
static int batch_policy_params(struct pgp *p, const json_t *req, char **text)
{
	const json_t *v = json_object_get(req, "halt");

	*text = v ? json_dumps(v, JSON_COMPACT) : NULL;
	if (v && !*text)
		return -1;
	pgp_txt(p, *text);
	v = json_object_get(req, "timeout_pct");
	if (v)
		pgp_dbl(p, json_number_value(v));
	else
		pgp_txt(p, NULL);
	return 0;
}

/* batch_insert_ returns 0, -1, or 1 when the key turned out to be taken
 * by another node's submission committed meanwhile. */
/* then_set stores a batch's follow-up, {on, batch}, as pending. */
static int then_set(int64_t batch_id, const json_t *then)
{
	struct pgp p = { 0 };
	char *body = json_dumps(json_object_get(then, "batch"), JSON_COMPACT);
	int rc;

	if (!body)
		return -1;
	pgp_i64(&p, batch_id);
	pgp_txt(&p, json_string_value(json_object_get(then, "on")));
	pgp_txt(&p, body);
	rc = pg_step(P_THEN_SET, &p);
	free(body);
	return rc < 0 ? -1 : 0;
}

static int batch_insert_(const json_t *req, int64_t now, const char *key,
			 const char *hash, int64_t *id, json_t **job_ids)
{
	const json_t *jobs = json_object_get(req, "jobs"), *v;
	size_t i, n = json_array_size(jobs);
	int64_t first, d[8] = { 0 };
	struct pgp p = { 0 };
	char buf[32];
	PGresult *r;
	json_t *ids;
	char *halt;
	int taken, rc;


	*id = next_ids("batch", 1);
	first = next_ids("job", n ? (int64_t)n : 1);
	if (*id < 0 || first < 0)
		return -1;
	pgp_i64(&p, *id);
	pgp_txt(&p, json_string_value(json_object_get(req, "name")));
	v = json_object_get(req, "concurrency");
	pgp_opt(&p, v ? (int64_t)json_number_value(v) : 0, v != NULL);
	v = json_object_get(req, "priority");
	pgp_i64(&p, v ? (int64_t)json_number_value(v) : 0);
	pgp_i64(&p, now);
	pgp_i64(&p, (int64_t)n);
	pgp_i64(&p, first);
	if (batch_policy_params(&p, req, &halt) < 0)
		return -1;
	rc = pg_step(P_BATCH_INSERT, &p);
	free(halt);
	if (rc < 0)
		return -1;
	/* The key first: a key another node took costs no COPY. */
	if (key) {
		p.n = 0;
		pgp_txt(&p, key);
		pgp_txt(&p, hash);
		pgp_i64(&p, *id);
		pgp_i64(&p, now);
		pgp_i64(&p, now - cfg.idempotency_ttl_us);
		if (!(r = pg_run(P_IDEM_PUT, &p)))
			return -1;
		taken = PQntuples(r) == 0;
		PQclear(r);
		if (taken)
			return 1;
	}
	v = json_object_get(req, "then");
	if (v && then_set(*id, v) < 0)
		return -1;
	/* In the batch's savepoint: a batch is never stored without it. */
	v = json_object_get(req, "webhook");
	if (v && pg_webhook_insert(*id, v, json_is_true(json_object_get(v,
				   "generated"))) < 0)
		return -1;
	if (n && insert_jobs(*id, first, jobs, now) < 0)
		return -1;
	d[D_QUEUED] = (int64_t)n;
	if (pg_count(*id, d, 0, n ? 0 : now) < 0)
		return -1;
	ids = json_array();
	for (i = 0; i < n; i++) {
		fmt_id(buf, sizeof(buf), 'j', first + (int64_t)i);
		json_array_append_new(ids, json_string(buf));
	}
	*job_ids = ids;
	return 0;
}

static int pg_batch_insert(const json_t *req, int64_t now, const char *key,
			   const char *hash, int64_t *id, json_t **job_ids)
{
	int rc;

	if (pg_begin() < 0)
		return -1;
	/* Two nodes storing keys in one turn each, in different orders,
	 * would wait on each other's unique-index entries (a deadlock):
	 * keyed submissions take one lock per turn, cluster-wide, outside
	 * the batch's savepoint (a rollback to it would release it).  A
	 * concurrent retry of the same key then waits for the first's
	 * commit and answers from it. */
	if (key && !key_lock) {
		if (pg_exec("SELECT pg_advisory_xact_lock(7478353, 3)") < 0)
			return -1;
		key_lock = 1;
	}
	if (pg_exec("SAVEPOINT batch") < 0)
		return -1;
	deltas_mark();
	rc = batch_insert_(req, now, key, hash, id, job_ids);
	if (rc != 0) {
		deltas_undo();  /* no counter row for a batch not stored */
		/* this batch's rows only; the turn's other work stays */
		if (pg_exec("ROLLBACK TO batch") < 0) {
			in_txn = 0;
			pg_exec("ROLLBACK");
			rolled_back("a failed submission could not be undone");
			return -1;
		}
	}
	if (rc == 0 && copy_pending)
		release_pending = 1;    /* by copy_settle */
	else
		pg_exec("RELEASE batch");
	return rc;
}

static int pg_idem_get(const char *key, int64_t since, char *hash,
		       int64_t *batch_id)
{
	struct pgp p = { 0 };
	PGresult *r;
	int rc = 1;

	pgp_txt(&p, key);
	pgp_i64(&p, since);
	if (!(r = pg_run(P_IDEM_GET, &p)))
		return -1;
	if (PQntuples(r)) {
		snprintf(hash, 33, "%s", PQgetvalue(r, 0, 0));
		*batch_id = pg_i64(r, 0, 1);
		rc = 0;
	}
	PQclear(r);
	return rc;
}

static json_t *pg_job_ids(int64_t batch_id)
{
	struct pgp p = { 0 };
	json_t *ids = json_array();
	PGresult *r;
	int64_t first, n, i;
	char buf[32];

	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_JOB_RANGE, &p)))
		return ids;
	if (PQntuples(r)) {
		first = pg_i64(r, 0, 0);
		n = pg_i64(r, 0, 1);
		for (i = 0; i < n; i++) {
			fmt_id(buf, sizeof(buf), 'j', first + i);
			json_array_append_new(ids, json_string(buf));
		}
	}
	PQclear(r);
	return ids;
}

/* ---- housekeeping ---- */

static int purge_step_(int64_t cutoff, int64_t key_cutoff, int max)
{
	struct pgp p = { 0 };
	PGresult *r;
	int64_t batch_id = 0;
	int n, k;

	pgp_i64(&p, key_cutoff);
	pgp_i64(&p, max);
	if ((n = pg_step(P_PURGE_KEYS, &p)) < 0)
		return -1;
	if (cutoff <= 0)
		return n;
	p.n = 0;
	pgp_i64(&p, cutoff);
	if (!(r = pg_run(P_PURGE_PICK, &p)))
		return -1;
	if (PQntuples(r))
		batch_id = pg_i64(r, 0, 0);
	PQclear(r);
	if (!batch_id)
		return n;
	p.n = 0;
	pgp_i64(&p, batch_id);
	pgp_i64(&p, max);
	if ((k = pg_step(P_PURGE_JOBS, &p)) < 0)
		return -1;
	n += k;
	if (k < max) {
		p.n = 1;
		if (pg_step(P_BATCH_DEL_KEYS, &p) < 0 ||
		    pg_step(P_BATCH_DEL, &p) < 0)
			return -1;
		n++;
		log_event(LOG_INFO, "purge", batch_id, 0, "retention: purged "
			  "batch b_%012lld", (long long)batch_id);
	}
	return n;
}

static int pg_purge_step(int64_t cutoff, int64_t key_cutoff, int max)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(purge_step_(cutoff, key_cutoff, max));
}

/* Cluster-wide figures cost a query each: read at most once a second. */
static int64_t size_cache, size_at, counts_at;
static int64_t counts_cache[JS__COUNT];

static int64_t pg_size_bytes(void)
{
	PGresult *r;

	if (size_at && mono_us() - size_at < 1000000)
		return size_cache;
	if (!(r = pg_run(P_SIZE, NULL)))
		return -1;
	size_cache = pg_i64(r, 0, 0);
	size_at = mono_us();
	PQclear(r);
	return size_cache;
}

static int pg_job_counts(int64_t *counts)
{
	PGresult *r;
	int i;

	if (!counts_at || mono_us() - counts_at >= 1000000) {
		if (!(r = pg_run(P_COUNTS, NULL)))
			return -1;
		for (i = 0; i < JS__COUNT; i++)
			counts_cache[i] = pg_i64(r, 0, i);
		counts_at = mono_us();
		PQclear(r);
	}
	memcpy(counts, counts_cache, sizeof(counts_cache));
	return 0;
}

static int64_t pg_memory_bytes(void)
{
	return 0;       /* the data lives in the PostgreSQL server */
}

/* ---- reads ---- */

static int pr_null(const struct row *r, int i)
{
	return PQgetisnull(r->h, r->n, i);
}

static int64_t pr_i64(const struct row *r, int i)
{
	return pg_i64(r->h, r->n, i);
}

static double pr_dbl(const struct row *r, int i)
{
	return PQgetisnull(r->h, r->n, i) ? 0 :
	       strtod(PQgetvalue(r->h, r->n, i), NULL);
}

static const char *pr_text(const struct row *r, int i)
{
	return PQgetisnull(r->h, r->n, i) ? NULL : PQgetvalue(r->h, r->n, i);
}

void pg_row(struct row *r, PGresult *res, int n)
{
	r->h = res;
	r->n = n;
	r->null = pr_null;
	r->i64 = pr_i64;
	r->dbl = pr_dbl;
	r->text = pr_text;
}

static json_t *get_one(enum pg_stmt id, int64_t key,
		       json_t *(*render)(const struct row *))
{
	struct pgp p = { 0 };
	struct row row;
	PGresult *r;
	json_t *j = NULL;

	pgp_i64(&p, key);
	if (!(r = pg_run(id, &p)))
		return NULL;
	if (PQntuples(r)) {
		pg_row(&row, r, 0);
		j = render(&row);
	}
	PQclear(r);
	return j;
}

/* What clients read comes from the loop's connection: outside a turn it
 * sees what is committed; inside one, also the turn's own changes, which
 * are answered only after the commit anyway. */
static json_t *pg_batch_json(int64_t id)
{
	return get_one(P_BATCH_GET, id, store_render_batch);
}

static json_t *pg_job_json(int64_t id)
{
	return get_one(P_JOB_GET, id, store_render_job);
}

/* pg_batch_policy: the counts are what every node committed plus this
 * node's turn (its deltas reach jp_batch_counts only at the commit), so a
 * node deciding a halt counts its own just-ended jobs.  Two nodes ending
 * the threshold's jobs in the same instant each miss the other's: the
 * engine looks again at every --poll-interval (tick_batch). */
static int pg_batch_policy(int64_t batch_id, struct batch_policy *bp)
{
	struct pgp p = { 0 };
	struct delta *x = delta_of(batch_id, 0);
	PGresult *r;
	int rc = -1;

	memset(bp, 0, sizeof(*bp));
	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_POLICY, &p)))
		return -1;
	if (PQntuples(r)) {
		policy_halt_parse(PQgetisnull(r, 0, 0) ? NULL :
				  PQgetvalue(r, 0, 0), &bp->halt);
		bp->timeout_pct = strtod(PQgetvalue(r, 0, 1), NULL);
		bp->halted = (int)pg_i64(r, 0, 2);
		bp->total = pg_i64(r, 0, 3);
		bp->succeeded = pg_i64(r, 0, 4) +
				(x ? x->d[D_SUCCEEDED] : 0);
		bp->failed = pg_i64(r, 0, 5) +
			     (x ? x->d[D_FAILED] + x->d[D_TIMED_OUT] : 0);
		bp->unfinished = pg_i64(r, 0, 6) +
				 (x ? x->d[D_QUEUED] + x->d[D_RUNNING] : 0);
		rc = 0;
	}
	PQclear(r);
	return rc;
}

static int pg_batch_runs(int64_t batch_id, int64_t *out, int max)
{
	struct pgp p = { 0 };
	PGresult *r;
	int i, n;

	pgp_i64(&p, batch_id);
	pgp_i64(&p, max);
	if (!(r = pg_run(P_RUNS, &p)))
		return -1;
	n = PQntuples(r) < max ? PQntuples(r) : max;
	for (i = 0; i < n; i++)
		out[i] = pg_i64(r, i, 0);
	PQclear(r);
	return n;
}

static int pg_batch_halt(int64_t batch_id, const char *reason, int64_t at,
			 int soon)
{
	struct pgp p = { 0 };
	int n;

	if (pg_sp_begin() < 0)
		return -1;
	pgp_i64(&p, batch_id);
	if (!reason)
		return pg_sp_end(pg_step(P_HALT_LIFT, &p) < 0 ? -1 : 0);
	pgp_txt(&p, reason);
	pgp_i64(&p, at);
	pgp_txt(&p, soon ? "true" : "false");
	n = pg_step(P_HALT, &p);
	return pg_sp_end(n < 0 ? -1 : n == 1 ? 0 : 1);
}

static int pg_job_batch(int64_t job_id, int64_t *batch_id,
			enum job_state *state, int *attempts)
{
	struct pgp p = { 0 };
	PGresult *r;
	int rc = -1;

	pgp_i64(&p, job_id);
	if (!(r = pg_run(P_JOB_BATCH, &p)))
		return -1;
	if (PQntuples(r)) {
		*batch_id = pg_i64(r, 0, 0);
		*state = job_state_parse(PQgetvalue(r, 0, 1));
		if (attempts)
			*attempts = (int)pg_i64(r, 0, 2);
		rc = 0;
	}
	PQclear(r);
	return rc;
}

static json_t *list(enum pg_stmt id, const struct pgp *p, int limit,
		    int key_col, json_t *(*render)(const struct row *),
		    char prefix)
{
	PGresult *r = pg_run(id, p);
	json_t *items;
	struct row row;
	char buf[32];
	int i, n;

	if (!r)
		return NULL;
	items = json_array();
	n = PQntuples(r);
	for (i = 0; i < n && i < limit; i++) {
		pg_row(&row, r, i);
		json_array_append_new(items, render(&row));
	}
	if (n <= limit) {
		PQclear(r);
		return json_pack("{s:o, s:n}", "items", items, "next_cursor");
	}
	snprintf(buf, sizeof(buf), "%c%lld", prefix,
		 (long long)pg_i64(r, limit - 1, key_col));
	PQclear(r);
	return json_pack("{s:o, s:s}", "items", items, "next_cursor", buf);
}

static json_t *pg_batch_list(const char *state, int64_t after, int limit)
{
	struct pgp p = { 0 };

	if (state)
		pgp_txt(&p, state);
	pgp_i64(&p, after > 0 ? after : INT64_MAX);
	pgp_i64(&p, limit + 1);
	return list(state ? P_LIST_B_STATE : P_LIST_B, &p, limit, 0,
		    store_render_batch, 'b');
}

static json_t *pg_job_list(int64_t batch_id, const char *state,
			   int64_t after, int limit)
{
	struct pgp p = { 0 };
	PGresult *r;
	int64_t first = 0, total = 0;

	if (!state) {
		pgp_i64(&p, batch_id);
		if (!(r = pg_run(P_JOB_RANGE, &p)))
			return NULL;
		if (PQntuples(r)) {
			first = pg_i64(r, 0, 0);
			total = pg_i64(r, 0, 1);
		}
		PQclear(r);
		p.n = 0;
		pgp_i64(&p, first + after);
		pgp_i64(&p, first + total);
		pgp_i64(&p, limit + 1);
		return list(P_LIST_J, &p, limit, 2, store_render_job, 'j');
	}
	pgp_i64(&p, batch_id);
	pgp_txt(&p, state);
	pgp_i64(&p, after);
	pgp_i64(&p, limit + 1);
	return list(P_LIST_J_STATE, &p, limit, 2, store_render_job, 'j');
}

/* pg_jobs_list is GET /v1/jobs, in job id order (sq_jobs_list). */
static json_t *pg_jobs_list(const char *states, int64_t after, int limit)
{
	struct pgp p = { 0 };

	pgp_txt(&p, states);
	pgp_i64(&p, after);
	pgp_i64(&p, limit + 1);
	return list(P_LIST_ALL_J, &p, limit, 0, store_render_job, 'j');
}

static int batch_set_(int64_t batch_id, int paused, int64_t priority,
		      int64_t concurrency)
{
	struct pgp p = { 0 };
	int n;

	if (pg_begin() < 0)
		return -1;
	pgp_i64(&p, batch_id);
	pgp_opt(&p, paused != 0, paused >= 0);
	pgp_opt(&p, priority, priority != STORE_KEEP);
	pgp_opt(&p, concurrency, concurrency != STORE_KEEP);
	n = pg_step(P_BATCH_SET, &p);
	if (n == 1 && concurrency != STORE_KEEP)
		pg_conc_note(batch_id, (int)concurrency);
	return n < 0 ? -1 : n == 1 ? 0 : 1;
}

/* pg_batch_set: see store_batch_set. */
static int pg_batch_set(int64_t batch_id, int paused, int64_t priority,
			int64_t concurrency)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(batch_set_(batch_id, paused, priority, concurrency));
}

static int dispatch_set_(int paused)
{
	struct pgp p = { 0 };

	if (pg_begin() < 0)
		return -1;
	pgp_i64(&p, paused != 0);
	return pg_step(P_DISPATCH_SET, &p) < 0 ? -1 : 0;
}

/* pg_dispatch_set: see store_dispatch_set. */
static int pg_dispatch_set(int paused)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(dispatch_set_(paused));
}

/* pg_dispatch_get: see store_dispatch_get; store_pg_node.c's look too. */
int pg_dispatch_get(void)
{
	PGresult *r;
	int rc = -1;

	if (!(r = pg_run(P_DISPATCH_GET, NULL)))
		return -1;
	if (PQntuples(r) == 1)
		rc = pg_i64(r, 0, 0) != 0;
	PQclear(r);
	return rc;
}

const struct store_ops pg_store_ops = {
	.name = "postgresql",
	.dispatch_after_commit = 1,
	.tick = pg_tick,
	.nodes_json = pg_nodes_json,
	.events_append = pg_events_append,
	.events_start = pg_events_start,
	.jobs_release = pg_jobs_release,
	.cluster_stats = pg_cluster_stats,
	.open = pg_open,
	.close = pg_close,
	.flush = pg_flush,
	.dirty = pg_dirty,
	.recover = pg_recover,
	.degraded = pg_degraded,
	.diverged = pg_diverged,
	.set_rollback_hook = pg_set_rollback_hook,
	.resync_begin = pg_resync_begin,
	.resync = pg_resync,
	.resync_end = pg_resync_end,
	.load_active = pg_load_active,
	.batch_insert = pg_batch_insert,
	.idem_get = pg_idem_get,
	.job_ids = pg_job_ids,
	.purge_step = pg_purge_step,
	.size_bytes = pg_size_bytes,
	.job_counts = pg_job_counts,
	.full = pg_full,
	.batch_info = pg_batch_info,
	.batch_json = pg_batch_json,
	.batch_json_pending = pg_batch_json,
	.job_json = pg_job_json,
	.job_batch = pg_job_batch,
	.batch_list = pg_batch_list,
	.job_list = pg_job_list,
	.jobs_peek = pg_jobs_peek,
	.job_start = pg_job_start,
	.job_claim = pg_job_claim,
	.jobs_done = pg_jobs_done,
	.job_finish = pg_job_finish,
	.job_requeue = pg_job_requeue,
	.job_retry = pg_job_retry,
	.job_cancel_queued = pg_job_cancel_queued,
	.job_cancel_req = pg_job_cancel_req,
	.batch_cancel = pg_batch_cancel,
	.batch_cancel_except = pg_batch_cancel_except,
	.batch_delete = pg_batch_delete,
	.then_child = pg_then_child,
	.jobs_rerun = pg_jobs_rerun,
	.batch_policy = pg_batch_policy,
	.batch_runs = pg_batch_runs,
	.batch_halt = pg_batch_halt,
	.batch_set = pg_batch_set,
	.dispatch_set = pg_dispatch_set,
	.dispatch_get = pg_dispatch_get,
	.jobs_list = pg_jobs_list,
	.ping = pg_ping,
	.memory_bytes = pg_memory_bytes,
	.webhook_insert = pg_webhook_insert,
	.webhook_claim = pg_webhook_claim,
	.webhook_body = pg_webhook_body,
	.webhook_result = pg_webhook_result,
	.webhook_release = pg_webhook_release,
	.webhook_list = pg_webhook_list,
	.webhook_json = pg_webhook_json,
};
