/* store_read.c - the store's reads: batches and jobs rendered as the API
 * shows them, pages of lists.  What clients see is read on the second
 * connection (store_rget), which sees committed transactions only.  Every page costs O(limit): rows come by
 * index, one more than asked tells whether a next page exists, nothing is
 * counted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

/* sq_job_ids returns a new array of a batch's job ids in order. */
json_t *sq_job_ids(int64_t batch_id)
{
	sqlite3_stmt *s = store_get(S_JOB_IDS);
	json_t *ids = json_array();
	char buf[32];

	sqlite3_bind_int64(s, 1, batch_id);
	while (sqlite3_step(s) == SQLITE_ROW) {
		fmt_id(buf, sizeof(buf), 'j', store_col_i64(s, 0));
		json_array_append_new(ids, json_string(buf));
	}
	sqlite3_reset(s);
	return ids;
}

/* ---- rendering ----
 *
 * Both backends render rows through these two functions (store_ops.h): the
 * columns come in the order of BATCH_COLS and JOB_COLS, read through a
 * struct row, so a batch or a job looks the same whatever stores it. */

static json_t *col_opt_int(const struct row *s, int i)
{
	if (s->null(s, i))
		return json_null();
	return json_integer(s->i64(s, i));
}

static json_t *col_opt_ms(const struct row *s, int i)
{
	if (s->null(s, i))
		return json_null();
	return json_ms(s->i64(s, i));
}

static json_t *col_opt_str(const struct row *s, int i)
{
	const char *t = s->text(s, i);

	return t ? json_string(t) : json_null();
}

/* col_opt_id is a batch id ("b_…") or null. */
static json_t *col_opt_id(const struct row *s, int i)
{
	char id[32];

	if (s->null(s, i))
		return json_null();
	fmt_id(id, sizeof(id), 'b', s->i64(s, i));
	return json_string(id);
}

static json_t *col_json(const struct row *s, int i)
{
	const char *t = s->text(s, i);
	json_t *j;

	if (!t)
		return json_null();
	j = json_loads(t, JSON_DECODE_ANY, NULL);
	return j ? j : json_null();
}

/* render_halted is {reason, at} once the batch's halt policy fired, else
 * null. */
static json_t *render_halted(const struct row *s)
{
	if (s->null(s, BATCH_POLICY_COL + 3))
		return json_null();
	return json_pack("{s:o, s:o}",
		"reason", col_opt_str(s, BATCH_POLICY_COL + 2),
		"at", json_time(s->i64(s, BATCH_POLICY_COL + 3)));
}

json_t *store_render_batch(const struct row *s)
{
	char id[32];
	int64_t started = s->i64(s, 6), finished = s->i64(s, 7);
	int64_t total = s->i64(s, 8), run_us = s->i64(s, 15);
	int64_t terminal = s->i64(s, 11) + s->i64(s, 12) + s->i64(s, 13) +
			   s->i64(s, 14);
	int64_t makespan = 0, now = now_us(), live_us = 0;
	json_t *counts, *timings, *batch;

	fmt_id(id, sizeof(id), 'b', s->i64(s, 0));
	if (started > 0)
		makespan = (finished > 0 ? finished : now) - started;
	/* A running batch's parallelism counts its running jobs' run so far
	 * (running * now - the sum of their starts): counting finished runs
	 * only, a batch of five long jobs showed 0.0 until the first ended.
	 * total_run_ms stays the sum of ended attempts. */
	if (finished <= 0 && s->i64(s, 10) > 0)
		live_us = s->i64(s, 10) * now - s->i64(s, BATCH_PAUSE_COL + 1);
	if (live_us < 0)
		live_us = 0;
	counts = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		"total", total, "queued", s->i64(s, 9),
		"running", s->i64(s, 10), "succeeded", s->i64(s, 11),
		"failed", s->i64(s, 12), "timed_out", s->i64(s, 13),
		"canceled", s->i64(s, 14));
	timings = json_pack("{s:o, s:o, s:o, s:o}",
		"makespan_ms", started > 0 ? json_ms(makespan) : json_null(),
		"total_run_ms", json_ms(run_us),
		"total_cpu_ms", json_ms(s->i64(s, 16)),
		"parallelism", makespan > 0 ?
			json_real((double)(int64_t)((double)(run_us + live_us) /
						    makespan * 1000) / 1000) :
			json_null());
	batch = json_pack("{s:s, s:o, s:s, s:o, s:I, s:o, s:o, s:o, s:o, "
			 "s:f, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
		"id", id, "name", col_opt_str(s, 1),
		"state", s->text(s, 2),
		"concurrency", col_opt_int(s, 3),
		"priority", s->i64(s, 4),
		"created_at", json_time(s->i64(s, 5)),
		"started_at", json_time(started),
		"finished_at", json_time(finished),
		"counts", counts,
		"progress", total ? (double)terminal / (double)total : 1.0,
		"timings", timings,
		"halt", policy_halt_json(s->text(s, BATCH_POLICY_COL)),
		"timeout_pct", s->null(s, BATCH_POLICY_COL + 1) ? json_null() :
			json_real(s->dbl(s, BATCH_POLICY_COL + 1)),
		"halted", render_halted(s),
		"parent_id", col_opt_id(s, BATCH_THEN_COL),
		"then_batch_id", col_opt_id(s, BATCH_THEN_COL + 1),
		"then_state", col_opt_str(s, BATCH_THEN_COL + 2));
	if (batch)
		json_object_set_new(batch, "paused",
				    json_boolean(s->i64(s, BATCH_PAUSE_COL)));
	return batch;
}

json_t *store_render_job(const struct row *s)
{
	char id[32], bid[32];
	int64_t queued_at = s->i64(s, 13), started = s->i64(s, 14);
	json_t *timings, *worker;
	int running;

	fmt_id(id, sizeof(id), 'j', s->i64(s, 0));
	fmt_id(bid, sizeof(bid), 'b', s->i64(s, 1));
	/* A running job's run_ms is its run so far (now - started_at), so a
	 * list of what runs shows how long each has been at it. */
	running = started > 0 && s->null(s, 16) &&
		  strcmp(s->text(s, 6), "running") == 0;
	timings = json_pack("{s:o, s:o, s:o, s:o, s:o}",
		"queue_ms", started > 0 ? json_ms(started - queued_at) :
					  json_null(),
		"run_ms", running ? json_ms(now_us() - started) :
				    col_opt_ms(s, 16),
		"user_cpu_ms", col_opt_ms(s, 17),
		"sys_cpu_ms", col_opt_ms(s, 18),
		"max_rss_kb", col_opt_int(s, 19));
	worker = s->null(s, 20) ? json_null() :
		 json_pack("{s:I, s:I, s:o}", "slot", s->i64(s, 20),
			   "pid", s->i64(s, 21),
			   "node", col_opt_str(s, 28));
	return json_pack("{s:s, s:s, s:I, s:o, s:s, s:o, s:s, s:I, s:I, s:o, "
			 "s:f, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, "
			 "s:o, s:o, s:o}",
		"id", id, "batch_id", bid, "index", s->i64(s, 2),
		"name", col_opt_str(s, 3),
		"kind", s->text(s, 4),
		"args", col_json(s, 5),
		"state", s->text(s, 6),
		"attempts", s->i64(s, 7), "max_attempts", s->i64(s, 8),
		"retry_on", col_json(s, 9),
		"retry_backoff_s", s->dbl(s, 10),
		"timeout_s", s->null(s, 11) ?
			json_null() : json_real(s->dbl(s, 11)),
		"created_at", json_time(s->i64(s, 12)),
		"started_at", json_time(started),
		"finished_at", json_time(s->i64(s, 15)),
		"timings", timings, "worker", worker,
		"exit_code", col_opt_int(s, 22),
		"signal", col_opt_str(s, 23),
		"error", col_opt_str(s, 24),
		"result", col_json(s, 25),
		"output", col_json(s, 27),
		"history", col_json(s, 26));
}

/* The SQLite side of struct row: the statement's current row. */
static int sq_null(const struct row *r, int i)
{
	return sqlite3_column_type((sqlite3_stmt *)r->h, i) == SQLITE_NULL;
}

static int64_t sq_i64(const struct row *r, int i)
{
	return sqlite3_column_int64((sqlite3_stmt *)r->h, i);
}

static double sq_dbl(const struct row *r, int i)
{
	return sqlite3_column_double((sqlite3_stmt *)r->h, i);
}

static const char *sq_text(const struct row *r, int i)
{
	return (const char *)sqlite3_column_text((sqlite3_stmt *)r->h, i);
}

static json_t *batch_row(sqlite3_stmt *s)
{
	struct row r = { s, 0, sq_null, sq_i64, sq_dbl, sq_text };

	return store_render_batch(&r);
}

static json_t *job_row(sqlite3_stmt *s)
{
	struct row r = { s, 0, sq_null, sq_i64, sq_dbl, sq_text };

	return store_render_job(&r);
}

static json_t *get_one_on(sqlite3_stmt *s, int64_t key,
			  json_t *(*row)(sqlite3_stmt *))
{
	json_t *j = NULL;

	if (!s)
		return NULL;
	sqlite3_bind_int64(s, 1, key);
	if (sqlite3_step(s) == SQLITE_ROW)
		j = row(s);
	sqlite3_reset(s);
	return j;
}

static json_t *get_one(enum stmt_id id, int64_t key,
		       json_t *(*row)(sqlite3_stmt *))
{
	return get_one_on(store_rget(id), key, row);
}

json_t *sq_batch_json(int64_t id)
{
	return get_one(S_BATCH_GET, id, batch_row);
}

/* sq_batch_json_pending is the batch as the open transaction has it:
 * for a notice taken now and published after the commit. */
json_t *sq_batch_json_pending(int64_t id)
{
	return get_one_on(store_get(S_BATCH_GET), id, batch_row);
}

json_t *sq_job_json(int64_t id)
{
	return get_one(S_JOB_GET, id, job_row);
}

/* sq_job_batch reads a job's batch, state and (when attempts is not
 * NULL) attempts.  Returns 0, or -1 when there is no such job. */
int sq_job_batch(int64_t job_id, int64_t *batch_id, enum job_state *state,
		    int *attempts)
{
	sqlite3_stmt *s = store_get(S_JOB_BATCH);
	int rc = -1;

	sqlite3_bind_int64(s, 1, job_id);
	if (sqlite3_step(s) == SQLITE_ROW) {
		*batch_id = store_col_i64(s, 0);
		*state = job_state_parse((const char *)
					 sqlite3_column_text(s, 1));
		if (attempts)
			*attempts = sqlite3_column_int(s, 2);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

/* list runs a page query whose last two parameters are the cursor and the
 * limit; it fetches one row more than asked to know whether a next page
 * exists, so a page costs O(limit) whatever the table size. */
static json_t *list(sqlite3_stmt *s, int limit, int key_col,
		    json_t *(*row)(sqlite3_stmt *), char cursor_prefix)
{
	json_t *items = json_array();
	int64_t last = 0;
	int n = 0, more = 0;
	char buf[32];

	while (sqlite3_step(s) == SQLITE_ROW) {
		if (n == limit) {
			more = 1;
			break;
		}
		json_array_append_new(items, row(s));
		last = store_col_i64(s, key_col);
		n++;
	}
	sqlite3_reset(s);
	if (!more)
		return json_pack("{s:o, s:n}", "items", items, "next_cursor");
	snprintf(buf, sizeof(buf), "%c%lld", cursor_prefix, (long long)last);
	return json_pack("{s:o, s:s}", "items", items, "next_cursor", buf);
}

json_t *sq_batch_list(const char *state, int64_t after, int limit)
{
	sqlite3_stmt *s = store_rget(state ? S_LIST_B_STATE : S_LIST_B);
	int i = 1;

	if (!s)
		return NULL;
	if (state)
		store_bind_text(s, i++, state);
	sqlite3_bind_int64(s, i++, after > 0 ? after : INT64_MAX);
	sqlite3_bind_int(s, i, limit + 1);
	return list(s, limit, 0, batch_row, 'b');
}

json_t *sq_job_list(int64_t batch_id, const char *state, int64_t after,
		       int limit)
{
	int64_t first = 0, total = 0;
	sqlite3_stmt *s;
	int i = 1;

	if (!state) {
		/* Submission order is a primary-key range (see first_job). */
		s = store_rget(S_JOB_RANGE);
		if (!s)
			return NULL;
		sqlite3_bind_int64(s, 1, batch_id);
		if (sqlite3_step(s) == SQLITE_ROW) {
			first = store_col_i64(s, 0);
			total = store_col_i64(s, 1);
		}
		sqlite3_reset(s);
		s = store_rget(S_LIST_J);
		if (!s)
			return NULL;
		sqlite3_bind_int64(s, 1, first + after);
		sqlite3_bind_int64(s, 2, first + total);
		sqlite3_bind_int(s, 3, limit + 1);
		return list(s, limit, 2, job_row, 'j');
	}
	s = store_rget(S_LIST_J_STATE);
	if (!s)
		return NULL;
	sqlite3_bind_int64(s, i++, batch_id);
	store_bind_text(s, i++, state);
	sqlite3_bind_int64(s, i++, after);
	sqlite3_bind_int(s, i, limit + 1);
	return list(s, limit, 2, job_row, 'j');
}


/* sq_jobs_list is GET /v1/jobs, in job id order.  A state filter reads
 * the rows by id and skips the others: for the usual ?state=running the
 * running ones are few, and the page stops at limit + 1. */
json_t *sq_jobs_list(const char *states, int64_t after, int limit)
{
	sqlite3_stmt *s = store_rget(states ? S_LIST_ALL_J_STATE :
					      S_LIST_ALL_J);
	int i = 1;

	if (!s)
		return NULL;
	if (states)
		store_bind_text(s, i++, states);
	sqlite3_bind_int64(s, i++, after);
	sqlite3_bind_int(s, i, limit + 1);
	return list(s, limit, 0, job_row, 'j');
}
