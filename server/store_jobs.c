/* store_jobs.c - a job's life in the database: claim, outcome, retry,
 * requeue, cancel, delete.  Each public write runs in a savepoint (see
 * store_sp_begin), so a job's row and its batch's counters change
 * together or not at all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

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
	b->paused = sqlite3_column_int(s, 7);
}

int sq_batch_info(int64_t id, struct batch_info *b)
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

int sq_load_active(void (*fn)(const struct batch_info *b, void *ctx),
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

int sq_batch_policy(int64_t batch_id, struct batch_policy *p)
{
	sqlite3_stmt *s = store_get(S_POLICY);
	int rc = -1;

	memset(p, 0, sizeof(*p));
	sqlite3_bind_int64(s, 1, batch_id);
	if (sqlite3_step(s) == SQLITE_ROW) {
		policy_halt_parse((const char *)sqlite3_column_text(s, 0),
				  &p->halt);
		p->timeout_pct = sqlite3_column_double(s, 1);
		p->halted = sqlite3_column_int(s, 2);
		p->total = store_col_i64(s, 3);
		p->succeeded = store_col_i64(s, 4);
		p->failed = store_col_i64(s, 5);
		p->unfinished = store_col_i64(s, 6);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

int sq_batch_runs(int64_t batch_id, int64_t *out, int max)
{
	sqlite3_stmt *s = store_get(S_RUNS);
	int n = 0, rc = SQLITE_DONE;

	sqlite3_bind_int64(s, 1, batch_id);
	sqlite3_bind_int(s, 2, max);
	while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW)
		out[n++] = store_col_i64(s, 0);
	rc = n < max && rc != SQLITE_DONE ? -1 : n;
	sqlite3_reset(s);
	return rc;
}

/* then_fire creates the follow-up of batch_id, which has just ended, or
 * records it skipped ("on": "success" and the batch did not succeed), in
 * the transaction that ends the batch: a crash keeps both or neither.
 * Only a pending follow-up fires, so it fires once.  Returns 0 or -1 (the
 * ending fails with it, as any failed write of it would). */
static int then_fire(int64_t batch_id, int64_t now)
{
	sqlite3_stmt *s = store_get(S_THEN_GET);
	const char *state = "skipped";
	int64_t child = 0;
	json_t *body = NULL, *ids = NULL;
	int rc, create;

	sqlite3_bind_int64(s, 1, batch_id);
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(s);
		return rc == SQLITE_DONE ? 0 : -1;
	}
	create = strcmp((const char *)sqlite3_column_text(s, 1), "success") ||
		 !strcmp((const char *)sqlite3_column_text(s, 0), "succeeded");
	if (create)
		body = json_loads((const char *)sqlite3_column_text(s, 2), 0,
				  NULL);
	sqlite3_reset(s);
	if (create) {
		rc = body ? sq_batch_insert(body, now, NULL, NULL, &child,
					    &ids) : -1;
		json_decref(body);
		json_decref(ids);
		if (rc != 0)
			return -1;
		s = store_get(S_THEN_PARENT);
		sqlite3_bind_int64(s, 1, batch_id);
		sqlite3_bind_int64(s, 2, child);
		if (store_step(s) < 0)
			return -1;
		state = "created";
	}
	s = store_get(S_THEN_DONE);
	store_bind_text(s, 1, state);
	store_bind_opt(s, 2, child, child > 0);
	sqlite3_bind_int64(s, 3, batch_id);
	return store_step(s);
}

/* settle derives the batch's state from its counters after a transition.
 * Sets *done when the batch has just become (or already was) terminal;
 * one that has just ended fires its follow-up (then_fire). */
static int settle(int64_t batch_id, int64_t now, int *done)
{
	sqlite3_stmt *s = store_get(S_BATCH_SETTLE);
	int rc, ended = 0;

	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		ended = sqlite3_column_int64(s, 0) == 0;
	if (done)
		*done = ended;
	sqlite3_reset(s);
	if (rc != SQLITE_ROW)
		return -1;
	if (!ended)
		return 0;
	if (then_fire(batch_id, now) < 0)
		return -1;
	sq_webhook_idle();
	return 0;
}

/* sq_then_sweep fires the follow-ups of every ended batch whose follow-up
 * is still pending: those a recovery ended in bulk.  Returns 0 or -1. */
int sq_then_sweep(int64_t now)
{
	sqlite3_stmt *s;
	int64_t ids[64], after = 0;
	int n, i;

	do {
		if (sqlite3_prepare_v2(store_db, "SELECT id FROM batches WHERE "
				       "then_state = 'pending' AND state NOT IN "
				       "('queued', 'running') AND id > ? ORDER BY id "
				       "LIMIT 64", -1, &s, NULL) != SQLITE_OK)
			return -1;
		sqlite3_bind_int64(s, 1, after);
		for (n = 0; n < 64 && sqlite3_step(s) == SQLITE_ROW; n++)
			after = ids[n] = sqlite3_column_int64(s, 0);
		sqlite3_finalize(s);
		for (i = 0; i < n; i++)
			if (then_fire(ids[i], now) < 0)
				return -1;
	} while (n == 64);
	return 0;
}

/* sq_then_child is the follow-up batch_id's end created, or 0. */
int64_t sq_then_child(int64_t batch_id)
{
	sqlite3_stmt *s = store_get(S_THEN_CHILD);
	int64_t child = 0;

	sqlite3_bind_int64(s, 1, batch_id);
	if (sqlite3_step(s) == SQLITE_ROW)
		child = sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	return child;
}

/* claim_row reads one row of S_NEXT_QUEUED into c.  Returns 0, or -1 when
 * out of memory. */
static int claim_row(sqlite3_stmt *s, int64_t batch_id, struct claim *c)
{
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
	c->idx = store_col_i64(s, 10);
	return c->args ? 0 : -1;
}

int sq_jobs_peek(int64_t batch_id, int64_t now, int any_due,
		    int64_t after_idx, int limit, struct claim *out)
{
	sqlite3_stmt *s = store_get(S_NEXT_QUEUED);
	int n = 0, rc = SQLITE_DONE;

	sqlite3_bind_int64(s, 1, batch_id);
	/* A little slack: the scheduler's backoff timer is monotonic and this
	 * is wall time; a job due "now" must not be missed by microseconds. */
	sqlite3_bind_int64(s, 2, any_due ? INT64_MAX : now + 5000);
	sqlite3_bind_int64(s, 3, after_idx);
	sqlite3_bind_int(s, 4, limit);
	while (n < limit && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (claim_row(s, batch_id, &out[n]) < 0)
			break;
		n++;
	}
	sqlite3_reset(s);
	if (n < limit && rc != SQLITE_DONE) {
		while (n > 0)
			free(out[--n].args);
		return -1;
	}
	return n;
}

static int job_start_(const struct claim *c, int slot, pid_t pid,
		      int64_t started_at)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_JOB_START);
	sqlite3_bind_int64(s, 1, started_at);
	sqlite3_bind_int(s, 2, slot);
	sqlite3_bind_int(s, 3, pid);
	sqlite3_bind_int64(s, 4, c->job_id);
	store_bind_text(s, 5, cfg.node_name);
	if (store_step(s) < 0)
		return -1;
	s = store_get(S_BATCH_START);
	sqlite3_bind_int64(s, 1, started_at);
	sqlite3_bind_int64(s, 2, c->batch_id);
	if (store_step(s) < 0)
		return -1;
	store_count(JS_QUEUED, JS_RUNNING, 1);
	return 0;
}

/* retry_parse reads a job's retry_on list into a policy: empty means any
 * failure may be retried. */
void retry_parse(const char *text, struct retry_policy *p)
{
	json_t *list, *e;
	size_t i;
	int sig;

	memset(p, 0, sizeof(*p));
	if (!text || strcmp(text, "[]") == 0) {
		p->any = 1;     /* the usual case, without a parse */
		return;
	}
	list = json_loads(text, 0, NULL);
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

json_t *store_history_entry(const struct outcome *o, int64_t started_at,
			    int attempt, int slot, pid_t pid)
{
	const char *sig = o->signal ? signal_name(o->signal) : NULL;
	json_t *h;

	h = json_pack("{s:i, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
		"attempt", attempt, "state", job_state_name(o->state),
		"started_at", json_time(started_at),
		"finished_at", json_time(o->finished_at),
		"run_ms", started_at > 0 ? json_ms(o->run_us) : json_null(),
		"exit_code", o->exit_code >= 0 ? json_integer(o->exit_code) :
						  json_null(),
		"signal", sig ? json_string(sig) : json_null(),
		"error", o->error ? json_string(o->error) : json_null(),
		"worker", pid > 0 ? json_pack("{s:i, s:i, s:s}", "slot", slot,
					      "pid", (int)pid, "node",
					      cfg.node_name) : json_null());
	/* Each attempt keeps its own output here (capped per stream as the
	 * job's is): the job's `output` holds only the latest attempt's and
	 * is cleared when the next one starts, and a retried job's first
	 * failure is usually the one worth reading.  Only the first
	 * HISTORY_OUTPUTS attempts: max_attempts may be 100, and every read
	 * of the job carries its history. */
	if (h && o->output && attempt <= HISTORY_OUTPUTS)
		json_object_set(h, "output", o->output);
	return h;
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
	/* The output is stored twice: in the row and in its history entry. */
	if (!store_room((rtext ? strlen(rtext) : 0) +
			(otext ? 2 * strlen(otext) : 0) + 1024)) {
		/* Out of room: keep the outcome, drop what takes the room,
		 * so the job does not stay "running" forever. */
		free(rtext);
		free(otext);
		rtext = otext = NULL;
		error = "finished, but its result did not fit in the database "
			"(--max-db-bytes)";
	}
	{
		/* Dropped for room: from the history entry too. */
		struct outcome ho = *o;

		if (!otext)
			ho.output = NULL;
		h = store_history_entry(&ho, w->started_at, w->job_attempts,
					w->index, w->pid);
	}
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

/* history_text writes the history entry of one attempt as history_entry
 * would, without building it in jansson first (a group's jobs are many and
 * their entries alike).  Returns the length, or -1 when it did not fit. */
int store_history_text(char *buf, size_t size, const struct outcome *o,
		       int64_t started_at, int attempt, int slot, pid_t pid)
{
	char start[40], end[40], ms[40], code[16] = "null", sig[24] = "null";
	char *error = NULL;
	const char *name = o->signal ? signal_name(o->signal) : NULL;
	int n;

	fmt_time(start, sizeof(start), started_at);
	fmt_time(end, sizeof(end), o->finished_at);
	/* jansson's form of a real: %.15g, and ".0" when that reads as an
	 * integer. */
	n = snprintf(ms, sizeof(ms), "%.15g", (double)o->run_us / 1000.0);
	if (!strpbrk(ms, ".eE") && n < (int)sizeof(ms) - 2)
		strcat(ms, ".0");
	if (o->exit_code >= 0)
		snprintf(code, sizeof(code), "%d", o->exit_code);
	if (name)
		snprintf(sig, sizeof(sig), "\"%s\"", name);
	if (o->error) {
		json_t *e = json_string(o->error);

		error = e ? json_dumps(e, JSON_ENCODE_ANY) : NULL;
		json_decref(e);
		if (!error)
			return -1;
	}
	n = snprintf(buf, size, "{\"attempt\":%d,\"state\":\"%s\","
		     "\"started_at\":\"%s\",\"finished_at\":\"%s\","
		     "\"run_ms\":%s,\"exit_code\":%s,\"signal\":%s,"
		     "\"error\":%s,\"worker\":{\"slot\":%d,\"pid\":%d,"
		     "\"node\":\"%s\"}}",
		     attempt, job_state_name(o->state), start, end, ms, code,
		     sig, error ? error : "null", slot, (int)pid, cfg.node_name);
	free(error);
	return n > 0 && (size_t)n < size ? n : -1;
}

static int jobs_done_(int64_t batch_id, const struct group_done *d, int n,
		      int slot, pid_t pid, int *batch_done)
{
	sqlite3_stmt *s;
	char htext[1024], *rtext;
	int64_t run = 0, cpu = 0, first = 0, last = 0;
	int i, ok = 0, bad = 0, len;

	if (store_begin() < 0)
		return -1;
	for (i = 0; i < n; i++) {
		const struct outcome *o = &d[i].o;
		const char *error = o->error;

		rtext = o->result ? json_dumps(o->result, JSON_COMPACT |
					       JSON_REAL_PRECISION(17)) : NULL;
		if (rtext && !store_room(strlen(rtext) + 1024)) {
			free(rtext);
			rtext = NULL;
			error = "finished, but its result did not fit in the "
				"database (--max-db-bytes)";
		}
		{
			struct outcome h = *o;

			h.error = error;
			len = store_history_text(htext, sizeof(htext), &h,
					   d[i].started_at, d[i].attempt, slot,
					   pid);
		}
		if (len < 0) {
			free(rtext);
			return -1;
		}
		s = store_get(S_JOB_DONE);
		store_bind_text(s, 1, job_state_name(o->state));
		sqlite3_bind_int64(s, 2, d[i].started_at);
		sqlite3_bind_int64(s, 3, o->finished_at);
		sqlite3_bind_int(s, 4, slot);
		sqlite3_bind_int(s, 5, pid);
		sqlite3_bind_int64(s, 6, o->run_us);
		store_bind_opt(s, 7, o->user_us, o->user_us >= 0);
		store_bind_opt(s, 8, o->sys_us, o->sys_us >= 0);
		store_bind_opt(s, 9, o->max_rss_kb, o->max_rss_kb >= 0);
		store_bind_opt(s, 10, o->exit_code, o->exit_code >= 0);
		store_bind_text(s, 11, o->signal ? signal_name(o->signal) : NULL);
		store_bind_text(s, 12, error);
		store_bind_text(s, 13, rtext);
		sqlite3_bind_text(s, 14, htext, len, SQLITE_STATIC);
		sqlite3_bind_int64(s, 15, d[i].job_id);
		store_bind_text(s, 16, cfg.node_name);
		if (store_step(s) < 0 || sqlite3_changes(store_db) != 1) {
			free(rtext);
			return -1;
		}
		free(rtext);
		ok += o->state == JS_SUCCEEDED;
		bad += o->state != JS_SUCCEEDED;
		run += o->run_us;
		cpu += (o->user_us > 0 ? o->user_us : 0) +
		       (o->sys_us > 0 ? o->sys_us : 0);
		if (!first || d[i].started_at < first)
			first = d[i].started_at;
		if (o->finished_at > last)
			last = o->finished_at;
	}
	s = store_get(S_BATCH_DONE);
	sqlite3_bind_int(s, 1, ok);
	sqlite3_bind_int(s, 2, bad);
	sqlite3_bind_int64(s, 3, run);
	sqlite3_bind_int64(s, 4, cpu);
	sqlite3_bind_int64(s, 5, first);
	sqlite3_bind_int64(s, 6, batch_id);
	if (store_step(s) < 0)
		return -1;
	store_count(JS_QUEUED, JS_SUCCEEDED, ok);
	store_count(JS_QUEUED, JS_FAILED, bad);
	return settle(batch_id, last, batch_done);
}

int sq_jobs_done(int64_t batch_id, const struct group_done *d, int n,
		    int slot, pid_t pid, int *batch_done)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(jobs_done_(batch_id, d, n, slot, pid, batch_done));
}

static int job_finish_(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done)
{
	if (record_attempt(job_id, batch_id, o, w, o->state) < 0)
		return -1;
	return settle(batch_id, o->finished_at, batch_done);
}

/* sq_job_retry records a failed attempt and puts the job back in the
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

/* keep_clause returns " AND id NOT IN (…)" for the n ids of keep, or ""
 * when n is 0; NULL when out of memory.  The caller frees it. */
static char *keep_clause(const int64_t *keep, size_t n)
{
	char *q = malloc(32 + n * 21), *p = q;
	size_t i;

	if (!q)
		return NULL;
	*p = 0;
	for (i = 0; i < n; i++)
		p += sprintf(p, "%s%lld", i ? "," : " AND id NOT IN (",
			     (long long)keep[i]);
	if (n)
		strcpy(p, ")");
	return q;
}

/* batch_stmt returns the statement id with keep's clause appended
 * (prepared now, finalized by the caller) or, without one, the cached
 * one. */
static sqlite3_stmt *batch_stmt(enum stmt_id id, const char *sql,
				const char *keep, const char *tail)
{
	sqlite3_stmt *s = NULL;
	char *q;

	if (!*keep)
		return store_get(id);
	if (asprintf(&q, "%s%s%s", sql, keep, tail) < 0)
		return NULL;
	if (sqlite3_prepare_v2(store_db, q, -1, &s, NULL) != SQLITE_OK)
		s = NULL;
	free(q);
	return s;
}

static void batch_stmt_done(sqlite3_stmt *s, const char *keep)
{
	if (*keep)
		sqlite3_finalize(s);
	else if (s)
		sqlite3_reset(s);
}

static int batch_cancel_(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx, const char *keep)
{
	sqlite3_stmt *s;
	int rc;

	if (store_begin() < 0)
		return -1;
	/* Tell the caller which jobs are about to be canceled (events). */
	s = batch_stmt(S_QUEUED_IDS, "SELECT id, attempts FROM jobs WHERE "
		       "batch_id = ? AND state = 'queued'", keep,
		       " ORDER BY idx");
	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, batch_id);
	while (fn && sqlite3_step(s) == SQLITE_ROW)
		fn(store_col_i64(s, 0), sqlite3_column_int(s, 1), ctx);
	batch_stmt_done(s, keep);
	if (store_step_one(S_BATCH_CANCEL_REQ, batch_id) < 0)
		return -1;
	s = batch_stmt(S_BATCH_CANCEL_JOBS, "UPDATE jobs SET state = "
		       "'canceled', finished_at = ?, error = 'canceled before "
		       "it started' WHERE batch_id = ? AND state = 'queued'",
		       keep, "");
	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	rc = store_step(s);
	if (*keep)
		sqlite3_finalize(s);
	if (rc < 0)
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
		sq_diverged();
	}
	sqlite3_step(store_get(S_SP_RELEASE));
	return rc;
}

int sq_job_start(const struct claim *c, int slot, pid_t pid,
		    int64_t started_at)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_start_(c, slot, pid, started_at));
}

int sq_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		    int any_due, struct claim *c)
{
	int n = sq_jobs_peek(batch_id, now, any_due, -1, 1, c);

	if (n <= 0)
		return n < 0 ? -1 : 1;
	if (sq_job_start(c, slot, pid, now) < 0) {
		free(c->args);
		c->args = NULL;
		return -1;
	}
	return 0;
}

int sq_job_finish(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_finish_(job_id, batch_id, o, w, batch_done));
}

int sq_job_retry(int64_t job_id, int64_t batch_id,
		    const struct outcome *o, const struct slot *w,
		    int64_t not_before)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_retry_(job_id, batch_id, o, w, not_before));
}

int sq_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_requeue_(job_id, batch_id, undo_attempt, not_before));
}

int sq_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_cancel_queued_(job_id, batch_id, now, batch_done));
}

int sq_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
			      int *batch_done,
			      void (*fn)(int64_t job_id, int attempts,
					 void *ctx),
			      void *ctx, const int64_t *keep, size_t nkeep)
{
	char *clause = keep_clause(keep, nkeep);
	int rc;

	if (!clause || store_sp_begin() < 0) {
		free(clause);
		return -1;
	}
	rc = store_sp_end(batch_cancel_(batch_id, now, canceled, batch_done,
					fn, ctx, clause));
	free(clause);
	return rc;
}

int sq_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx)
{
	return sq_batch_cancel_except(batch_id, now, canceled, batch_done,
					 fn, ctx, NULL, 0);
}

static int job_cancel_req_(int64_t job_id)
{
	if (store_begin() < 0)
		return -1;
	return store_step_one(S_JOB_CANCEL_REQ, job_id);
}

int sq_job_cancel_req(int64_t job_id)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(job_cancel_req_(job_id));
}

static int batch_halt_(int64_t batch_id, const char *reason, int64_t at)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_HALT);
	store_bind_text(s, 1, reason);
	sqlite3_bind_int64(s, 2, at);
	sqlite3_bind_int64(s, 3, batch_id);
	if (store_step(s) < 0)
		return -1;
	return sqlite3_changes(store_db) == 1 ? 0 : 1;
}

/* sq_batch_halt: one server runs the jobs of a SQLite file, so whether a
 * halt leaves its running jobs alone (soon) is the engine's to honor, and
 * a client's cancel (reason NULL) has nothing to tell other nodes. */
int sq_batch_halt(int64_t batch_id, const char *reason, int64_t at, int soon)
{
	(void)soon;
	if (!reason)
		return 0;
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(batch_halt_(batch_id, reason, at));
}

int sq_batch_delete(int64_t batch_id)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(batch_delete_(batch_id));
}

static int batch_set_(int64_t batch_id, int paused, int64_t priority,
		      int64_t concurrency)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_BATCH_SET);
	if (paused >= 0)
		sqlite3_bind_int(s, 1, paused != 0);
	else
		sqlite3_bind_null(s, 1);
	if (priority != STORE_KEEP)
		sqlite3_bind_int64(s, 2, priority);
	else
		sqlite3_bind_null(s, 2);
	sqlite3_bind_int64(s, 3, batch_id);
	if (concurrency != STORE_KEEP)
		sqlite3_bind_int64(s, 4, concurrency);
	else
		sqlite3_bind_null(s, 4);
	if (store_step(s) < 0)
		return -1;
	return sqlite3_changes(store_db) == 1 ? 0 : 1;
}

/* sq_batch_set: a pause, a new priority or concurrency, in the turn's
 * transaction like every write, so its answer waits for the commit
 * (api.c after_commit). */
int sq_batch_set(int64_t batch_id, int paused, int64_t priority,
		 int64_t concurrency)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(batch_set_(batch_id, paused, priority,
				       concurrency));
}

static int dispatch_set_(int paused)
{
	sqlite3_stmt *s;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_DISPATCH_SET);
	sqlite3_bind_int(s, 1, paused != 0);
	return store_step(s) < 0 ? -1 : 0;
}

/* sq_dispatch_set: the server-wide pause, in the turn's transaction. */
int sq_dispatch_set(int paused)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(dispatch_set_(paused));
}

int sq_dispatch_get(void)
{
	sqlite3_stmt *s = store_get(S_DISPATCH_GET);
	int rc = -1;

	if (!s)
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW)
		rc = sqlite3_column_int(s, 0) != 0;
	sqlite3_reset(s);
	return rc;
}
