/* store_pg_rerun.c - the PostgreSQL store's rerun: ended jobs back in the
 * queue as new attempts (a client's retry; see store_rerun.c for SQLite).
 *
 * Rare and client-driven: its statements are not prepared.  The other
 * nodes learn of the open batch at their next look (P_ACTIVE lists it
 * again, their tick puts it on their schedule). */
#include <stdio.h>
#include <stdlib.h>

#include "jobpool.h"
#include "store_pg.h"
#include "store_ops.h"

/* As in store_rerun.c: attempts and history stay, max_attempts allows one
 * more, the attempt's node, hold and cancel go.  A concurrent retry of the
 * same job on another node waits for this row and then finds it queued. */
#define RERUN_JOBS "UPDATE jp_jobs SET state = 'queued', " \
	"max_attempts = greatest(max_attempts, attempts + 1), " \
	"queued_at = $1, not_before = 0, started_at = NULL, " \
	"finished_at = NULL, run_us = NULL, user_us = NULL, sys_us = NULL, " \
	"max_rss_kb = NULL, worker_slot = NULL, worker_pid = NULL, " \
	"worker_node = NULL, node_id = NULL, held_by = NULL, " \
	"exit_code = NULL, signal = NULL, error = NULL, result = NULL, " \
	"output = NULL, cancel_req = false " \
	"WHERE id >= (SELECT first_job FROM jp_batches WHERE id = $2) " \
	"AND id < (SELECT first_job + n_total FROM jp_batches WHERE id = $2) " \
	"AND batch_id = $2 AND state = $3 AND ($4 = 0 OR id = $4) " \
	"RETURNING id, attempts"

/* Open again: settle_now stores the next end (it locks only batches with
 * no finished_at); the stored state puts it back in P_ACTIVE.  The
 * follow-up's then_state stays: it does not fire twice. */
#define RERUN_BATCH "UPDATE jp_batches SET finished_at = NULL, " \
	"cancel_req = false, halted_reason = NULL, halted_at = NULL, " \
	"halt_soon = false, state = CASE WHEN started_at IS NULL AND " \
	"NOT EXISTS (SELECT 1 FROM jp_batch_counts WHERE batch_id = $1 " \
	"AND first_start IS NOT NULL) THEN 'queued' ELSE 'running' END " \
	"WHERE id = $1"

/* run runs sql with its text parameters; returns its result or NULL
 * (logged).  The failed statement aborts the transaction up to the
 * operation's savepoint, which pg_sp_end rolls back to. */
static PGresult *run(const char *sql, const struct pgp *p)
{
	PGresult *r = PQexecParams(pg_conn, sql, p->n, NULL, p->v, NULL, NULL,
				   0);

	if (PQresultStatus(r) == PGRES_COMMAND_OK ||
	    PQresultStatus(r) == PGRES_TUPLES_OK)
		return r;
	log_warn("%s: %s", __func__, PQresultErrorMessage(r));
	PQclear(r);
	return NULL;
}

static int rerun_state(int64_t batch_id, int64_t job_id, enum job_state st,
		       int64_t now, void (*fn)(int64_t, int, void *),
		       void *ctx, int *n)
{
	struct pgp p = { 0 };
	PGresult *r;
	int i;

	pgp_i64(&p, now);
	pgp_i64(&p, batch_id);
	pgp_txt(&p, job_state_name(st));
	pgp_i64(&p, job_id);
	if (!(r = run(RERUN_JOBS, &p)))
		return -1;
	n[st] = PQntuples(r);
	for (i = 0; fn && i < n[st]; i++)
		fn(pg_i64(r, i, 0), (int)pg_i64(r, i, 1), ctx);
	PQclear(r);
	return 0;
}

static int jobs_rerun_(int64_t batch_id, int64_t job_id, unsigned states,
		       int64_t now, void (*fn)(int64_t, int, void *),
		       void *ctx)
{
	int n[JS__COUNT] = { 0 }, total = 0, st, k;
	int64_t d[8] = { 0 };
	struct pgp p = { 0 };
	PGresult *r;

	for (st = JS_SUCCEEDED; st < JS__COUNT; st++) {
		if (!(states & (1u << st)))
			continue;
		if (rerun_state(batch_id, job_id, st, now, fn, ctx, n) < 0)
			return -1;
		pg_delta_state(d, st, JS_QUEUED, n[st]);
		total += n[st];
	}
	if (total == 0)
		return 0;
	/* The counters now, not with the turn's deltas at its commit: the
	 * engine reads the batch back (store_batch_info) to schedule it. */
	pgp_i64(&p, batch_id);
	pgp_i64(&p, pg_node_id);
	for (k = 0; k < 8; k++)
		pgp_i64(&p, d[k]);
	pgp_opt(&p, 0, 0);
	pgp_opt(&p, 0, 0);
	if (!(r = pg_run(P_COUNT, &p)))
		return -1;
	PQclear(r);
	p.n = 0;
	pgp_i64(&p, batch_id);
	if (!(r = run(RERUN_BATCH, &p)))
		return -1;
	PQclear(r);
	return total;
}

/* pg_jobs_rerun: see store_jobs_rerun in jobpool.h. */
int pg_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		  int64_t now, void (*fn)(int64_t job_id, int attempts,
					  void *ctx), void *ctx)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(jobs_rerun_(batch_id, job_id, states, now, fn, ctx));
}
