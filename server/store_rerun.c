/* store_rerun.c - the SQLite store's rerun: ended jobs back in the queue as
 * new attempts, by a client's POST /v1/jobs/{id}/retry or
 * /v1/batches/{id}/retry (engine_retry_job, engine_retry_batch).
 *
 * Rare and client-driven, so its statements are prepared on each call
 * rather than kept with the hot ones in store.c. */
#include <stdlib.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

/* A job back in the queue looks as one never started but for what stays
 * its own: attempts and history (every earlier attempt), created_at.
 * max_attempts grows to let the new attempt run: a job that used all of
 * its attempts gets exactly one more, and a retry_on policy may then
 * retry it only within what is left.  cancel_req goes: the job is to run. */
#define RERUN_JOBS "UPDATE jobs SET state = 'queued', " \
	"max_attempts = max(max_attempts, attempts + 1), queued_at = ?1, " \
	"not_before = 0, started_at = NULL, finished_at = NULL, " \
	"run_us = NULL, user_us = NULL, sys_us = NULL, max_rss_kb = NULL, " \
	"worker_slot = NULL, worker_pid = NULL, worker_node = NULL, " \
	"exit_code = NULL, signal = NULL, error = NULL, result = NULL, " \
	"output = NULL, cancel_req = 0 " \
	"WHERE batch_id = ?2 AND state = ?3 AND (?4 = 0 OR id = ?4) " \
	"RETURNING id, attempts"

/* The batch is open again: not finished, not canceled, not halted (its
 * halt policy applies anew to the new ends).  Its follow-up (then_state)
 * stays as it is: one that was created or skipped is not fired again. */
#define RERUN_BATCH "UPDATE batches SET n_queued = n_queued + ?1, " \
	"n_succeeded = n_succeeded - ?2, n_failed = n_failed - ?3, " \
	"n_timed_out = n_timed_out - ?4, n_canceled = n_canceled - ?5, " \
	"finished_at = NULL, cancel_req = 0, halted_reason = NULL, " \
	"halted_at = NULL, state = CASE WHEN started_at IS NULL " \
	"THEN 'queued' ELSE 'running' END WHERE id = ?6"

/* rerun_state re-queues the jobs of one ended state; adds them to *n. */
static int rerun_state(int64_t batch_id, int64_t job_id, enum job_state st,
		       int64_t now, void (*fn)(int64_t, int, void *),
		       void *ctx, int *n)
{
	sqlite3_stmt *s;
	int rc, count = 0;

	if (sqlite3_prepare_v2(store_db, RERUN_JOBS, -1, &s, NULL) != SQLITE_OK) {
		log_warn("%s: %s", __func__, sqlite3_errmsg(store_db));
		return -1;
	}
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	sqlite3_bind_text(s, 3, job_state_name(st), -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, job_id);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (fn)
			fn(sqlite3_column_int64(s, 0), sqlite3_column_int(s, 1),
			   ctx);
		count++;
	}
	if (rc != SQLITE_DONE)
		log_warn("%s: %s", __func__, sqlite3_errmsg(store_db));
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return -1;
	store_count(st, JS_QUEUED, count);
	n[st] = count;
	return 0;
}

static int jobs_rerun_(int64_t batch_id, int64_t job_id, unsigned states,
		       int64_t now, void (*fn)(int64_t, int, void *),
		       void *ctx)
{
	int n[JS__COUNT] = { 0 }, total = 0, st, rc;
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	for (st = JS_SUCCEEDED; st < JS__COUNT; st++) {
		if (!(states & (1u << st)))
			continue;
		if (rerun_state(batch_id, job_id, st, now, fn, ctx, n) < 0)
			return -1;
		total += n[st];
	}
	if (total == 0)
		return 0;
	if (sqlite3_prepare_v2(store_db, RERUN_BATCH, -1, &s, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_int(s, 1, total);
	sqlite3_bind_int(s, 2, n[JS_SUCCEEDED]);
	sqlite3_bind_int(s, 3, n[JS_FAILED]);
	sqlite3_bind_int(s, 4, n[JS_TIMED_OUT]);
	sqlite3_bind_int(s, 5, n[JS_CANCELED]);
	sqlite3_bind_int64(s, 6, batch_id);
	rc = sqlite3_step(s) == SQLITE_DONE ? 0 : -1;
	sqlite3_finalize(s);
	/* An open batch with a webhook needs the outbox triggers, which the
	 * end of the last such batch may have dropped (sq_webhook_idle). */
	if (rc < 0 || sq_webhook_reopen(batch_id) < 0)
		return -1;
	return total;
}

/* sq_jobs_rerun: see store_jobs_rerun in jobpool.h. */
int sq_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		  int64_t now, void (*fn)(int64_t job_id, int attempts,
					  void *ctx), void *ctx)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(jobs_rerun_(batch_id, job_id, states, now, fn,
					ctx));
}
