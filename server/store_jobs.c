/* store_jobs.c - a job's life in the database: claim, outcome, retry,
 * requeue, cancel, delete.  Each public write runs in a savepoint (see
 * store_sp_begin), so a job's row and its batch's counters change
 * together or not at all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store.h"

/* ---- scheduler support ---- */

static void info_row(sqlite3_stmt *s, struct batch_info *b)
{
	b->id = store_col_i64(s, 0);
	b->priority = sqlite3_column_int(s, 1);
	b->concurrency = sqlite3_column_int(s, 2);
	b->queued = sqlite3_column_int(s, 3);
	b->running = sqlite3_column_int(s, 4);
	b->cancel_req = sqlite3_column_int(s, 5);
	b->started = sqlite3_column_int(s, 6);
}

int store_batch_info(int64_t id, struct batch_info *b)
{
	sqlite3_stmt *s = store_get(S_INFO);
	int rc = -1;

	sqlite3_bind_int64(s, 1, id);
	if (sqlite3_step(s) == SQLITE_ROW) {
		info_row(s, b);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

int store_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		      void *ctx)
{
	sqlite3_stmt *s = store_get(S_ACTIVE);
	struct batch_info b;
	int n = 0;

	while (sqlite3_step(s) == SQLITE_ROW) {
		info_row(s, &b);
		fn(&b, ctx);
		n++;
	}
	sqlite3_reset(s);
	return n;
}

/* settle derives the batch's state from its counters after a transition.
 * Sets *done when the batch has just become (or already was) terminal. */
static int settle(int64_t batch_id, int64_t now, int *done)
{
	sqlite3_stmt *s = store_get(S_BATCH_SETTLE);
	int rc;

	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW && done)
		*done = sqlite3_column_int64(s, 0) == 0;
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : -1;
}

static int job_claim_(int64_t batch_id, int slot, pid_t pid, int64_t now,
		    int any_due, struct claim *c)
{
	sqlite3_stmt *s = store_get(S_NEXT_QUEUED);
	int rc;

	if (store_begin() < 0)
		return -1;
	sqlite3_bind_int64(s, 1, batch_id);
	/* A little slack: the scheduler's backoff timer is monotonic and this
	 * is wall time; a job due "now" must not be missed by microseconds. */
	sqlite3_bind_int64(s, 2, any_due ? INT64_MAX : now + 5000);
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(s);
		return rc == SQLITE_DONE ? 1 : -1;
	}
	c->job_id = store_col_i64(s, 0);
	c->batch_id = batch_id;
	c->created_at = store_col_i64(s, 1);
	c->attempts = sqlite3_column_int(s, 2) + 1;
	c->timeout_s = sqlite3_column_double(s, 3);
	snprintf(c->kind, sizeof(c->kind), "%s", sqlite3_column_text(s, 4));
	c->args = strdup((const char *)sqlite3_column_text(s, 5));
	c->max_attempts = sqlite3_column_int(s, 6);
	retry_parse((const char *)sqlite3_column_text(s, 7), &c->retry);
	c->backoff_s = sqlite3_column_double(s, 8);
	c->queued_at = store_col_i64(s, 9);
	sqlite3_reset(s);
	if (!c->args)
		return -1;

	s = store_get(S_JOB_START);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int(s, 2, slot);
	sqlite3_bind_int(s, 3, pid);
	sqlite3_bind_int64(s, 4, c->job_id);
	if (store_step(s) < 0)
		goto fail;
	s = store_get(S_BATCH_START);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	if (store_step(s) < 0)
		goto fail;
	store_count(JS_QUEUED, JS_RUNNING, 1);
	return 0;
fail:
	free(c->args);
	c->args = NULL;
	return -1;
}

/* retry_parse reads a job's retry_on list into a policy: empty means any
 * failure may be retried. */
void retry_parse(const char *text, struct retry_policy *p)
{
	json_t *list = json_loads(text ? text : "[]", 0, NULL), *e;
	size_t i;
	int sig;

	memset(p, 0, sizeof(*p));
	p->any = json_array_size(list) == 0;
	json_array_foreach(list, i, e) {
		if (json_is_string(e) &&
		    (sig = signal_number(json_string_value(e))) > 0 && sig < 64)
			p->signals |= 1ULL << sig;
		else if (json_is_number(e) && json_number_value(e) >= 0 &&
			 json_number_value(e) <= 255) {
			int code = (int)json_number_value(e);

			p->codes[code / 8] |= (uint8_t)(1u << (code % 8));
		}
	}
	json_decref(list);
}

static json_t *history_entry(const struct outcome *o, int64_t started_at,
			     int attempt, int slot, pid_t pid)
{
	const char *sig = o->signal ? signal_name(o->signal) : NULL;

	return json_pack("{s:i, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
		"attempt", attempt, "state", job_state_name(o->state),
		"started_at", json_time(started_at),
		"finished_at", json_time(o->finished_at),
		"run_ms", started_at > 0 ? json_ms(o->run_us) : json_null(),
		"exit_code", o->exit_code >= 0 ? json_integer(o->exit_code) :
						  json_null(),
		"signal", sig ? json_string(sig) : json_null(),
		"error", o->error ? json_string(o->error) : json_null(),
		"worker", pid > 0 ? json_pack("{s:i, s:i}", "slot", slot,
					      "pid", (int)pid) : json_null());
}

/* record_attempt writes the outcome of slot w's attempt: the job's row (in
 * row_state), one history entry, and the batch's counters and totals. */
static int record_attempt(int64_t job_id, int64_t batch_id,
			  const struct outcome *o, const struct slot *w,
			  enum job_state row_state)
{
	sqlite3_stmt *s;
	json_t *h;
	char *htext, *rtext = NULL, *otext = NULL;
	const char *sig = o->signal ? signal_name(o->signal) : NULL;
	const char *error = o->error;
	int rc;

	if (store_begin() < 0)
		return -1;
	if (o->output)
		otext = json_dumps(o->output, JSON_COMPACT);
	if (o->result)
		rtext = json_dumps(o->result, JSON_COMPACT |
				   JSON_REAL_PRECISION(17));
	if (!store_room((rtext ? strlen(rtext) : 0) + (otext ? strlen(otext) : 0) +
		  1024)) {
		/* Out of room: keep the outcome, drop what takes the room,
		 * so the job does not stay "running" forever. */
		free(rtext);
		free(otext);
		rtext = otext = NULL;
		error = "finished, but its result did not fit in the database "
			"(--max-db-bytes)";
	}
	h = history_entry(o, w->started_at, w->job_attempts, w->index,
			  w->pid);
	htext = json_dumps(h, JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_decref(h);
	s = store_get(S_JOB_FINISH);
	store_bind_text(s, 1, job_state_name(row_state));
	sqlite3_bind_int64(s, 2, o->finished_at);
	sqlite3_bind_int64(s, 3, o->run_us);
	store_bind_opt(s, 4, o->user_us, o->user_us >= 0);
	store_bind_opt(s, 5, o->sys_us, o->sys_us >= 0);
	store_bind_opt(s, 6, o->max_rss_kb, o->max_rss_kb >= 0);
	store_bind_opt(s, 7, o->exit_code, o->exit_code >= 0);
	store_bind_text(s, 8, sig);
	store_bind_text(s, 9, error);
	store_bind_text(s, 10, rtext);
	store_bind_text(s, 11, htext);
	store_bind_text(s, 12, otext);
	sqlite3_bind_int64(s, 13, job_id);
	rc = store_step(s);
	free(htext);
	free(rtext);
	free(otext);
	if (rc < 0)
		return -1;
	s = store_get(S_BATCH_FINISH);
	sqlite3_bind_int(s, 1, row_state == JS_SUCCEEDED);
	sqlite3_bind_int(s, 2, row_state == JS_FAILED);
	sqlite3_bind_int(s, 3, row_state == JS_TIMED_OUT);
	sqlite3_bind_int(s, 4, row_state == JS_CANCELED);
	sqlite3_bind_int(s, 5, row_state == JS_QUEUED);
	sqlite3_bind_int64(s, 6, o->run_us);
	sqlite3_bind_int64(s, 7, (o->user_us > 0 ? o->user_us : 0) +
				 (o->sys_us > 0 ? o->sys_us : 0));
	sqlite3_bind_int64(s, 8, batch_id);
	if (store_step(s) < 0)
		return -1;
	store_count(JS_RUNNING, row_state, 1);
	return 0;
}

static int job_finish_(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done)
{
	if (record_attempt(job_id, batch_id, o, w, o->state) < 0)
		return -1;
	return settle(batch_id, o->finished_at, batch_done);
}

/* store_job_retry records a failed attempt and puts the job back in the
 * queue, not to start before not_before. */
static int job_retry_(int64_t job_id, int64_t batch_id,
		    const struct outcome *o, const struct slot *w,
		    int64_t not_before)
{
	sqlite3_stmt *s;

	if (record_attempt(job_id, batch_id, o, w, JS_QUEUED) < 0)
		return -1;
	s = store_get(S_JOB_REQUEUE);
	sqlite3_bind_int(s, 1, 0);
	sqlite3_bind_int64(s, 2, o->finished_at);
	sqlite3_bind_int64(s, 3, not_before);
	sqlite3_bind_int64(s, 4, job_id);
	return store_step(s);
}

static int job_requeue_(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_JOB_REQUEUE);
	sqlite3_bind_int(s, 1, undo_attempt ? 1 : 0);
	sqlite3_bind_int64(s, 2, now_us());
	sqlite3_bind_int64(s, 3, not_before);
	sqlite3_bind_int64(s, 4, job_id);
	if (store_step(s) < 0 || store_step_one(S_BATCH_REQUEUE, batch_id) < 0)
		return -1;
	store_count(JS_RUNNING, JS_QUEUED, 1);
	return 0;
}

static int cancel_counted(int64_t batch_id, int n, int64_t now,
			  int *batch_done)
{
	sqlite3_stmt *s = store_get(S_BATCH_CANCEL_Q);

	sqlite3_bind_int(s, 1, n);
	sqlite3_bind_int64(s, 2, batch_id);
	if (store_step(s) < 0)
		return -1;
	store_count(JS_QUEUED, JS_CANCELED, n);
	return settle(batch_id, now, batch_done);
}

static int job_cancel_queued_(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_JOB_CANCEL_Q);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, job_id);
	if (store_step(s) < 0)
		return -1;
	if (sqlite3_changes(store_db) != 1)
		return 1;
	return cancel_counted(batch_id, 1, now, batch_done);
}

static int batch_cancel_(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	/* Tell the caller which jobs are about to be canceled (events). */
	s = store_get(S_QUEUED_IDS);
	sqlite3_bind_int64(s, 1, batch_id);
	while (fn && sqlite3_step(s) == SQLITE_ROW)
		fn(store_col_i64(s, 0), sqlite3_column_int(s, 1), ctx);
	sqlite3_reset(s);
	if (store_step_one(S_BATCH_CANCEL_REQ, batch_id) < 0)
		return -1;
	s = store_get(S_BATCH_CANCEL_JOBS);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	if (store_step(s) < 0)
		return -1;
	*canceled = sqlite3_changes(store_db);
	return cancel_counted(batch_id, *canceled, now, batch_done);
}

static int batch_delete_(int64_t batch_id)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_BATCH_DEL_JOBS);

	sqlite3_bind_int64(s, 1, batch_id);
	if (store_step_deleted(s) < 0)
		return -1;
	if (store_step_one(S_BATCH_DEL_KEYS, batch_id) < 0)
		return -1;
	return store_step_one(S_BATCH_DEL, batch_id);
}

/* ---- atomic operations ----
 *
 * Each public write below runs in a savepoint inside the turn's
 * transaction: a step that fails half-way (SQLITE_FULL on the second of two
 * updates) rolls back that operation alone, so a job's row and its batch's
 * counters never disagree. */

int store_sp_begin(void)
{
	if (store_begin() < 0)
		return -1;
	store_sp_mark();
	return sqlite3_step(store_get(S_SP)) == SQLITE_DONE ? 0 : -1;
}

/* store_sp_end closes the operation's savepoint.  A failed operation is
 * undone in the database, but its caller has usually moved on in memory
 * (a worker is free, a job was handed out): the store is then marked for
 * the engine's resync. */
int store_sp_end(int rc)
{
	if (rc < 0) {
		sqlite3_step(store_get(S_SP_ROLLBACK));
		store_sp_undo();
		store_diverged();
	}
	sqlite3_step(store_get(S_SP_RELEASE));
	return rc;
}

int store_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		    int any_due, struct claim *c)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_claim_(batch_id, slot, pid, now, any_due, c));
}

int store_job_finish(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_finish_(job_id, batch_id, o, w, batch_done));
}

int store_job_retry(int64_t job_id, int64_t batch_id,
		    const struct outcome *o, const struct slot *w,
		    int64_t not_before)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_retry_(job_id, batch_id, o, w, not_before));
}

int store_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_requeue_(job_id, batch_id, undo_attempt, not_before));
}

int store_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_cancel_queued_(job_id, batch_id, now, batch_done));
}

int store_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(batch_cancel_(batch_id, now, canceled, batch_done, fn, ctx));
}

static int job_cancel_req_(int64_t job_id)
{
	if (store_begin() < 0)
		return -1;
	return store_step_one(S_JOB_CANCEL_REQ, job_id);
}

int store_job_cancel_req(int64_t job_id)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_cancel_req_(job_id));
}

int store_batch_delete(int64_t batch_id)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(batch_delete_(batch_id));
}
