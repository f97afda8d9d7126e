/* test_store.c - unit tests for the store against a real SQLite file in a
 * temporary directory: migrations, submission, claiming and finishing jobs,
 * cancels, paging, recovery after a crash, and deletion.  Times are fixed
 * fake microsecond clocks so rendered times can be compared exactly. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <sqlite3.h>

#include "jobpool.h"
#include "store_fixture.h"

extern const size_t schema_migrations_count;

TestSuite(store, .init = setup, .fini = teardown);

/* ---- helpers ---- */

static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *value = json_loads(text, 0, &jerr);

	cr_assert_not_null(value, "bad JSON in test: %s: %s", text, jerr.text);
	return value;
}

/* insert stores the batch in body_text at time now, commits, and returns
 * its id.  The new job ids go to *job_ids when it is not NULL. */
static int64_t insert_at(const char *body_text, int64_t now, json_t **job_ids)
{
	json_t *body = parse(body_text), *ids = NULL;
	int64_t id = 0;

	cr_assert_eq(store_batch_insert(body, now, NULL, NULL, &id, &ids), 0);
	json_decref(body);
	cr_assert_eq(store_flush(), 0);
	cr_assert_gt(id, 0);
	cr_assert(json_is_array(ids));
	if (job_ids)
		*job_ids = ids;
	else
		json_decref(ids);
	return id;
}

static int64_t insert(const char *body_text)
{
	return insert_at(body_text, T0, NULL);
}

/* sleep_jobs returns a new body text of n sleep jobs with extra job fields
 * (JSON members text, may be "") and top-level members top. */
static char *sleep_jobs(int n, const char *extra, const char *top)
{
	size_t size = 128 + (size_t)n * (64 + strlen(extra)) + strlen(top);
	char *s = malloc(size);
	size_t used;
	int i;

	cr_assert_not_null(s);
	used = (size_t)snprintf(s, size, "{%s%s\"jobs\": [", top,
				*top ? ", " : "");
	for (i = 0; i < n; i++)
		used += (size_t)snprintf(s + used, size - used,
			"%s{\"kind\": \"sleep\", \"args\": {\"seconds\": %d}%s%s}",
			i ? ", " : "", i + 1, *extra ? ", " : "", extra);
	snprintf(s + used, size - used, "]}");
	return s;
}

static int64_t insert_sleep(int n, const char *extra, const char *top)
{
	char *body = sleep_jobs(n, extra, top);
	int64_t id = insert(body);

	free(body);
	return id;
}

static json_int_t count(const json_t *b, const char *state)
{
	return integer(json_object_get(b, "counts"), state);
}

/* assert_counts checks a batch's counts, in the order total, queued,
 * running, succeeded, failed, timed_out, canceled. */
static void assert_counts(int64_t id, int total, int queued, int running,
			  int succeeded, int failed, int timed_out,
			  int canceled)
{
	json_t *b = batch(id);
	const char *names[] = { "total", "queued", "running", "succeeded",
				"failed", "timed_out", "canceled" };
	int want[] = { total, queued, running, succeeded, failed, timed_out,
		       canceled };
	size_t i;

	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_assert_eq(count(b, names[i]), want[i],
			     "b%lld counts.%s: want %d, got %lld",
			     (long long)id, names[i], want[i],
			     (long long)count(b, names[i]));
	json_decref(b);
}

static void assert_batch_state(int64_t id, const char *state)
{
	json_t *b = batch(id);

	cr_assert_str_eq(str(b, "state"), state, "b%lld", (long long)id);
	json_decref(b);
}

static void assert_job_state(int64_t id, const char *state)
{
	json_t *j = job(id);

	cr_assert_str_eq(str(j, "state"), state, "j%lld", (long long)id);
	json_decref(j);
}

/* claim_on claims the next job of batch_id on slot (pid 1000 + slot) at
 * now and returns its id; the claim's args are freed. */
static int64_t claim_on(int64_t batch_id, int slot, int64_t now)
{
	struct claim c = { 0 };

	cr_assert_eq(store_job_claim(batch_id, slot, 1000 + slot, now, 0, &c), 0,
		     "nothing to claim in b%lld", (long long)batch_id);
	free(c.args);
	return c.job_id;
}

static int64_t claim(int64_t batch_id)
{
	return claim_on(batch_id, 0, T0 + SEC);
}

static struct outcome outcome(enum job_state state, int64_t finished_at)
{
	struct outcome o = {
		.state = state, .finished_at = finished_at,
		.run_us = 1500000, .user_us = 1000, .sys_us = 500,
		.max_rss_kb = 2048,
		.exit_code = state == JS_SUCCEEDED ? 0 : -1,
	};

	return o;
}

/* finish records state for job_id (claimed at T0 + 1 s on slot 0) and
 * returns the batch_done flag. */
static int finish(int64_t job_id, int64_t batch_id, enum job_state state,
		  int64_t finished_at)
{
	struct outcome o = outcome(state, finished_at);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	int done = -1;

	cr_assert_eq(store_job_finish(job_id, batch_id, &o, &w, &done), 0);
	cr_assert(done == 0 || done == 1, "batch_done not set");
	return done;
}

/* user_version reads the schema version with a connection of its own. */
static int user_version(void)
{
	sqlite3 *d;
	sqlite3_stmt *s;
	int v = -1;

	cr_assert_eq(sqlite3_open_v2(db_path, &d, SQLITE_OPEN_READONLY, NULL),
		     SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(d, "PRAGMA user_version", -1, &s,
					NULL), SQLITE_OK);
	if (sqlite3_step(s) == SQLITE_ROW)
		v = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(d);
	return v;
}

static void sql_exec(const char *q)
{
	sqlite3 *d;

	cr_assert_eq(sqlite3_open(db_path, &d), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(d, q, NULL, NULL, NULL), SQLITE_OK, "%s: %s",
		     q, sqlite3_errmsg(d));
	sqlite3_close(d);
}

/* ---- names ---- */

Test(names, job_states_round_trip)
{
	int i;

	for (i = 0; i < JS__COUNT; i++)
		cr_assert_eq(job_state_parse(job_state_name(i)), i);
	cr_assert_eq(job_state_parse("nope"), -1);
	cr_assert_eq(job_state_parse(""), -1);
	cr_assert(batch_state_valid("queued"));
	cr_assert(batch_state_valid("canceled"));
	cr_assert_not(batch_state_valid("timed_out"));
	cr_assert_not(batch_state_valid("Queued"));
}

/* ---- open and migrations ---- */

Test(store, migrations_create_the_schema)
{
	cr_assert_eq(user_version(), (int)schema_migrations_count);
	cr_assert_eq(store_ping(), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(1));
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_job_json(1));
	cr_assert_eq(store_dirty(), 0);
}

Test(store, reopen_is_idempotent_and_keeps_data)
{
	int64_t id = insert_sleep(2, "", "\"name\": \"kept\"");
	json_t *b;

	store_close();
	cr_assert_eq(store_open(db_path), 0, "second open");
	cr_assert_eq(user_version(), (int)schema_migrations_count);
	store_close();
	cr_assert_eq(store_open(db_path), 0, "third open");
	b = batch(id);
	cr_assert_str_eq(str(b, "name"), "kept");
	json_decref(b);
	cr_assert_eq(insert_sleep(1, "", ""), id + 1);
}

Test(store, newer_schema_is_refused)
{
	store_close();
	sql_exec("PRAGMA user_version = 999");
	cr_assert_eq(store_open(db_path), -1);
}

/* One database, one server: the lock is on the file's inode, so a symlink
 * meets it too, and it names the holder.  On a file of its own: closing a
 * descriptor of the fixture's database would drop SQLite's locks on it. */
Test(store, lock_is_exclusive_and_names_its_holder)
{
	char path[PATH_MAX], link_path[PATH_MAX];
	pid_t holder = -1;
	int fd;

	snprintf(path, sizeof(path), "%s/locked.db", dir);
	snprintf(link_path, sizeof(link_path), "%s/link.db", dir);
	fd = store_lock(path, &holder);
	cr_assert_geq(fd, 0, "first lock: %s", strerror(errno));
	cr_assert_eq(store_lock(path, &holder), -1);
	cr_assert_eq(errno, EWOULDBLOCK);
	cr_assert_eq(holder, getpid());
	cr_assert_eq(symlink(path, link_path), 0);
	holder = -1;
	cr_assert_eq(store_lock(link_path, &holder), -1, "lock via a symlink");
	cr_assert_eq(holder, getpid());
	close(fd);
	fd = store_lock(link_path, &holder);
	cr_assert_geq(fd, 0, "lock after release: %s", strerror(errno));
	close(fd);
	unlink(link_path);
	unlink(path);
}

/* ---- submission ---- */

Test(store, insert_then_batch_json)
{
	char *body = sleep_jobs(3, "", "\"name\": \"seed\", \"concurrency\": 5, "
				"\"priority\": 2");
	json_t *req = parse(body), *ids = NULL, *b;
	int64_t id = 0;

	free(body);
	cr_assert_eq(store_batch_insert(req, T0, NULL, NULL, &id, &ids), 0);
	json_decref(req);
	cr_assert_eq(store_dirty(), 1, "the insert waits for the turn's flush");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_dirty(), 0);
	cr_assert_eq(id, 1);
	cr_assert_eq(json_array_size(ids), 3);
	cr_assert_str_eq(json_string_value(json_array_get(ids, 0)),
			 "j_000000000001");
	cr_assert_str_eq(json_string_value(json_array_get(ids, 2)),
			 "j_000000000003");
	json_decref(ids);

	b = batch(id);
	cr_assert_str_eq(str(b, "id"), "b_000000000001");
	cr_assert_str_eq(str(b, "name"), "seed");
	cr_assert_str_eq(str(b, "state"), "queued");
	cr_assert_eq(integer(b, "concurrency"), 5);
	cr_assert_eq(integer(b, "priority"), 2);
	assert_time(b, "created_at", T0);
	cr_assert(is_null(b, "started_at"));
	cr_assert(is_null(b, "finished_at"));
	cr_assert_float_eq(number(b, "progress"), 0.0, 1e-9);
	cr_assert(is_null(json_object_get(b, "timings"), "makespan_ms"));
	json_decref(b);
	assert_counts(id, 3, 3, 0, 0, 0, 0, 0);
}

Test(store, insert_defaults)
{
	int64_t id = insert("{\"jobs\": [{\"kind\": \"noop\"}]}");
	json_t *b = batch(id), *j = job(1);

	cr_assert(is_null(b, "name"));
	cr_assert(is_null(b, "concurrency"));
	cr_assert_eq(integer(b, "priority"), 0);
	json_decref(b);

	cr_assert_str_eq(str(j, "id"), "j_000000000001");
	cr_assert_str_eq(str(j, "batch_id"), "b_000000000001");
	cr_assert_eq(integer(j, "index"), 0);
	cr_assert_str_eq(str(j, "kind"), "noop");
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert(json_is_object(json_object_get(j, "args")));
	cr_assert_eq(json_object_size(json_object_get(j, "args")), 0);
	cr_assert_eq(integer(j, "attempts"), 0);
	cr_assert_eq(integer(j, "max_attempts"), 1);
	cr_assert_eq(json_array_size(json_object_get(j, "retry_on")), 0);
	cr_assert_float_eq(number(j, "retry_backoff_s"), 1.0, 1e-9);
	cr_assert(is_null(j, "timeout_s"));
	cr_assert(is_null(j, "worker"));
	cr_assert(is_null(j, "started_at"));
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 0);
	json_decref(j);
}

Test(store, insert_keeps_job_fields)
{
	int64_t id = insert("{\"jobs\": [{\"kind\": \"sleep\", \"name\": \"n1\", "
		"\"args\": {\"seconds\": 2}, \"timeout_s\": 2.5, "
		"\"max_attempts\": 4, \"retry_on\": [3, \"SIGKILL\"], "
		"\"retry_backoff_s\": 0.25}]}");
	json_t *j = job(1), *want_retry = parse("[3, \"SIGKILL\"]");

	cr_assert_eq(id, 1);
	cr_assert_str_eq(str(j, "name"), "n1");
	cr_assert_eq(integer(json_object_get(j, "args"), "seconds"), 2);
	cr_assert_float_eq(number(j, "timeout_s"), 2.5, 1e-9);
	cr_assert_eq(integer(j, "max_attempts"), 4);
	cr_assert(json_equal(json_object_get(j, "retry_on"), want_retry));
	cr_assert_float_eq(number(j, "retry_backoff_s"), 0.25, 1e-9);
	json_decref(want_retry);
	json_decref(j);
}

Test(store, ids_count_up_across_batches)
{
	json_t *ids;
	int64_t a = insert_sleep(2, "", ""), b;

	b = insert_at("{\"jobs\": [{\"kind\": \"noop\"}]}", T0, &ids);
	cr_assert_eq(b, a + 1);
	cr_assert_str_eq(json_string_value(json_array_get(ids, 0)),
			 "j_000000000003");
	json_decref(ids);
}

/* ---- claim ---- */

Test(store, claim_takes_lowest_index_and_marks_running)
{
	int64_t id = insert_sleep(3, "\"timeout_s\": 9", "");
	struct claim c = { 0 };
	json_t *j, *w, *b;

	cr_assert_eq(store_job_claim(id, 2, 4242, T0 + SEC, 0, &c), 0);
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.batch_id, id);
	cr_assert_eq(c.created_at, T0);
	cr_assert_eq(c.attempts, 1);
	cr_assert_float_eq(c.timeout_s, 9.0, 1e-9);
	cr_assert_str_eq(c.kind, "sleep");
	cr_assert_str_eq(c.args, "{\"seconds\":1}");
	free(c.args);
	cr_assert_eq(store_flush(), 0);

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "running");
	cr_assert_eq(integer(j, "attempts"), 1);
	w = json_object_get(j, "worker");
	cr_assert(json_is_object(w));
	cr_assert_eq(integer(w, "slot"), 2);
	cr_assert_eq(integer(w, "pid"), 4242);
	assert_time(j, "started_at", T0 + SEC);
	cr_assert_float_eq(number(json_object_get(j, "timings"), "queue_ms"),
			   1000.0, 1e-6);
	json_decref(j);
	assert_job_state(2, "queued");

	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "running");
	assert_time(b, "started_at", T0 + SEC);
	json_decref(b);
	assert_counts(id, 3, 2, 1, 0, 0, 0, 0);

	cr_assert_eq(claim(id), 2);
	cr_assert_eq(claim(id), 3);
	cr_assert_eq(store_job_claim(id, 0, 1, T0, 0, &c), 1, "nothing queued");
	assert_counts(id, 3, 0, 3, 0, 0, 0, 0);
}

Test(store, claim_only_from_its_batch)
{
	int64_t a = insert_sleep(1, "", ""), b = insert_sleep(2, "", "");
	struct claim c = { 0 };

	cr_assert_eq(claim(b), 2);
	cr_assert_eq(claim(a), 1);
	cr_assert_eq(store_job_claim(a, 0, 1, T0, 0, &c), 1);
	cr_assert_eq(store_job_claim(999, 0, 1, T0, 0, &c), 1, "no such batch");
}

Test(store, requeue_puts_the_job_back_first)
{
	int64_t id = insert_sleep(2, "\"max_attempts\": 3", "");
	struct claim c = { 0 };
	json_t *j;

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(store_job_requeue(1, id, 1, 0), 0);
	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 0, "the attempt was undone");
	cr_assert(is_null(j, "worker"));
	json_decref(j);
	assert_counts(id, 2, 2, 0, 0, 0, 0, 0);

	cr_assert_eq(store_job_claim(id, 1, 55, T0 + 2 * SEC, 0, &c), 0);
	cr_assert_eq(c.job_id, 1, "lowest index again");
	cr_assert_eq(c.attempts, 1);
	free(c.args);
	/* a retry keeps the attempt */
	cr_assert_eq(store_job_requeue(1, id, 0, 0), 0);
	cr_assert_eq(store_job_claim(id, 1, 55, T0 + 3 * SEC, 0, &c), 0);
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.attempts, 2);
	free(c.args);
}

/* ---- finish ---- */

Test(store, finish_succeeded)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id), j2;
	struct outcome o = outcome(JS_SUCCEEDED, T0 + 3 * SEC);
	struct slot w = { .index = 1, .pid = 777, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *result = parse("{\"slept_ms\": 1500}");
	json_t *j, *t, *h, *b;
	int done = -1;

	o.result = result;
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 0, "a job is still queued");
	cr_assert_eq(store_flush(), 0);

	j = job(j1);
	cr_assert_str_eq(str(j, "state"), "succeeded");
	assert_time(j, "finished_at", T0 + 3 * SEC);
	cr_assert_eq(integer(j, "exit_code"), 0);
	cr_assert(is_null(j, "signal"));
	cr_assert(is_null(j, "error"));
	cr_assert(json_equal(json_object_get(j, "result"), result));
	t = json_object_get(j, "timings");
	cr_assert_float_eq(number(t, "run_ms"), 1500.0, 1e-6);
	cr_assert_float_eq(number(t, "user_cpu_ms"), 1.0, 1e-6);
	cr_assert_float_eq(number(t, "sys_cpu_ms"), 0.5, 1e-6);
	cr_assert_eq(integer(t, "max_rss_kb"), 2048);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1);
	h = json_array_get(h, 0);
	cr_assert_eq(integer(h, "attempt"), 1);
	cr_assert_str_eq(str(h, "state"), "succeeded");
	assert_time(h, "started_at", T0 + SEC);
	assert_time(h, "finished_at", T0 + 3 * SEC);
	cr_assert_float_eq(number(h, "run_ms"), 1500.0, 1e-6);
	cr_assert_eq(integer(h, "exit_code"), 0);
	cr_assert_eq(integer(json_object_get(h, "worker"), "slot"), 1);
	cr_assert_eq(integer(json_object_get(h, "worker"), "pid"), 777);
	json_decref(j);
	json_decref(result);

	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "running");
	cr_assert(is_null(b, "finished_at"));
	cr_assert_float_eq(number(b, "progress"), 0.5, 1e-9);
	t = json_object_get(b, "timings");
	cr_assert_float_eq(number(t, "total_run_ms"), 1500.0, 1e-6);
	cr_assert_float_eq(number(t, "total_cpu_ms"), 1.5, 1e-6);
	json_decref(b);
	assert_counts(id, 2, 1, 0, 1, 0, 0, 0);

	j2 = claim(id);
	cr_assert_eq(finish(j2, id, JS_SUCCEEDED, T0 + 5 * SEC), 1,
		     "the last job finished the batch");
	cr_assert_eq(store_flush(), 0);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "succeeded");
	assert_time(b, "finished_at", T0 + 5 * SEC);
	cr_assert_float_eq(number(b, "progress"), 1.0, 1e-9);
	t = json_object_get(b, "timings");
	cr_assert_float_eq(number(t, "makespan_ms"), 4000.0, 1e-6);
	cr_assert_float_eq(number(t, "total_run_ms"), 3000.0, 1e-6);
	cr_assert_float_eq(number(t, "parallelism"), 0.75, 1e-9);
	json_decref(b);
	assert_counts(id, 2, 0, 0, 2, 0, 0, 0);
}

Test(store, finish_with_another_job_running_is_not_done)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id);

	claim(id);
	cr_assert_eq(finish(j1, id, JS_SUCCEEDED, T0 + 2 * SEC), 0);
	assert_batch_state(id, "running");
	assert_counts(id, 2, 0, 1, 1, 0, 0, 0);
}

Test(store, failed_job_fails_the_batch)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id), j2 = claim(id);
	struct outcome o = outcome(JS_FAILED, T0 + 2 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j, *h, *b;
	int done = -1;

	o.exit_code = 3;
	o.error = "exited with code 3";
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(finish(j2, id, JS_SUCCEEDED, T0 + 3 * SEC), 1);

	j = job(j1);
	cr_assert_str_eq(str(j, "state"), "failed");
	cr_assert_eq(integer(j, "exit_code"), 3);
	cr_assert_str_eq(str(j, "error"), "exited with code 3");
	h = json_array_get(json_object_get(j, "history"), 0);
	cr_assert_str_eq(str(h, "state"), "failed");
	cr_assert_str_eq(str(h, "error"), "exited with code 3");
	json_decref(j);

	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "failed");
	assert_time(b, "finished_at", T0 + 3 * SEC);
	json_decref(b);
	assert_counts(id, 2, 0, 0, 1, 1, 0, 0);
}

Test(store, timed_out_and_signal)
{
	int64_t id = insert_sleep(1, "", "");
	int64_t j1 = claim(id);
	struct outcome o = outcome(JS_TIMED_OUT, T0 + 2 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j, *h;
	int done = -1;

	o.signal = SIGKILL;
	o.user_us = -1;         /* unknown: rendered null */
	o.sys_us = -1;
	o.max_rss_kb = -1;
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 1);
	j = job(j1);
	cr_assert_str_eq(str(j, "state"), "timed_out");
	cr_assert_str_eq(str(j, "signal"), "SIGKILL");
	cr_assert(is_null(j, "exit_code"));
	cr_assert(is_null(json_object_get(j, "timings"), "user_cpu_ms"));
	cr_assert(is_null(json_object_get(j, "timings"), "max_rss_kb"));
	h = json_array_get(json_object_get(j, "history"), 0);
	cr_assert_str_eq(str(h, "signal"), "SIGKILL");
	cr_assert(is_null(h, "exit_code"));
	json_decref(j);
	assert_batch_state(id, "failed");
	assert_counts(id, 1, 0, 0, 0, 0, 1, 0);
}

Test(store, finish_records_the_attempt_it_ends)
{
	int64_t id = insert_sleep(1, "\"max_attempts\": 2", "");
	struct outcome o = outcome(JS_FAILED, T0 + 4 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + 3 * SEC };
	struct claim c = { 0 };
	json_t *j, *h;
	int done = -1;

	/* attempt 1 requeued with the attempt kept, attempt 2 fails */
	cr_assert_eq(claim(id), 1);
	cr_assert_eq(store_job_requeue(1, id, 0, 0), 0);
	cr_assert_eq(store_job_claim(id, 0, 1000, T0 + 3 * SEC, 0, &c), 0);
	cr_assert_eq(c.attempts, 2);
	free(c.args);
	w.job_attempts = c.attempts;
	o.exit_code = 1;
	cr_assert_eq(store_job_finish(1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 1);
	j = job(1);
	cr_assert_eq(integer(j, "attempts"), 2);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1);
	cr_assert_eq(integer(json_array_get(h, 0), "attempt"), 2);
	cr_assert_eq(integer(json_array_get(h, 0), "exit_code"), 1);
	json_decref(j);
	assert_counts(id, 1, 0, 0, 0, 1, 0, 0);
}

/* ---- cancel ---- */

Test(store, batch_cancel_with_nothing_running)
{
	int64_t id = insert_sleep(3, "", "");
	int canceled = -1, done = -1;
	json_t *b, *j;

	cr_assert_eq(store_batch_cancel(id, T0 + 2 * SEC, &canceled, &done, NULL, NULL), 0);
	cr_assert_eq(canceled, 3);
	cr_assert_eq(done, 1);
	cr_assert_eq(store_flush(), 0);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "canceled");
	assert_time(b, "finished_at", T0 + 2 * SEC);
	cr_assert_float_eq(number(b, "progress"), 1.0, 1e-9);
	json_decref(b);
	assert_counts(id, 3, 0, 0, 0, 0, 0, 3);
	j = job(2);
	cr_assert_str_eq(str(j, "state"), "canceled");
	cr_assert_str_eq(str(j, "error"), "canceled before it started");
	assert_time(j, "finished_at", T0 + 2 * SEC);
	json_decref(j);
}

Test(store, batch_cancel_waits_for_running_jobs)
{
	int64_t id = insert_sleep(3, "", "");
	int64_t j1 = claim(id);
	int canceled = -1, done = -1;

	cr_assert_eq(store_batch_cancel(id, T0 + 2 * SEC, &canceled, &done, NULL, NULL), 0);
	cr_assert_eq(canceled, 2);
	cr_assert_eq(done, 0, "a job still runs");
	assert_batch_state(id, "running");
	assert_counts(id, 3, 0, 1, 0, 0, 0, 2);
	assert_job_state(j1, "running");

	cr_assert_eq(finish(j1, id, JS_CANCELED, T0 + 3 * SEC), 1);
	assert_batch_state(id, "canceled");
	assert_counts(id, 3, 0, 0, 0, 0, 0, 3);
}

Test(store, batch_cancel_after_some_succeeded_is_canceled)
{
	int64_t id = insert_sleep(2, "", "");
	int canceled = -1, done = -1;

	cr_assert_eq(finish(claim(id), id, JS_SUCCEEDED, T0 + 2 * SEC), 0);
	cr_assert_eq(store_batch_cancel(id, T0 + 3 * SEC, &canceled, &done, NULL, NULL), 0);
	cr_assert_eq(canceled, 1);
	cr_assert_eq(done, 1);
	assert_batch_state(id, "canceled");
	assert_counts(id, 2, 0, 0, 1, 0, 0, 1);
}

Test(store, job_cancel_queued)
{
	int64_t id = insert_sleep(3, "", "");
	int64_t running = claim(id);
	json_t *j;
	int done = -1;

	cr_assert_eq(store_job_cancel_queued(3, id, T0 + 2 * SEC, &done), 0);
	cr_assert_eq(done, 0);
	j = job(3);
	cr_assert_str_eq(str(j, "state"), "canceled");
	cr_assert_str_eq(str(j, "error"), "canceled before it started");
	json_decref(j);
	assert_counts(id, 3, 1, 1, 0, 0, 0, 1);

	done = -1;
	cr_assert_eq(store_job_cancel_queued(3, id, T0 + 2 * SEC, &done), 1,
		     "already canceled");
	cr_assert_eq(store_job_cancel_queued(running, id, T0, &done), 1,
		     "running jobs are not canceled here");
	assert_job_state(running, "running");
	assert_counts(id, 3, 1, 1, 0, 0, 0, 1);

	cr_assert_eq(store_job_cancel_queued(2, id, T0 + 2 * SEC, &done), 0);
	cr_assert_eq(done, 0);
	/* a job canceled on its own is a job that did not succeed */
	cr_assert_eq(finish(running, id, JS_SUCCEEDED, T0 + 3 * SEC), 1);
	assert_batch_state(id, "failed");
	assert_counts(id, 3, 0, 0, 1, 0, 0, 2);
}

Test(store, job_cancel_of_the_last_queued_job_settles)
{
	int64_t id = insert_sleep(1, "", "");
	int done = -1;

	cr_assert_eq(store_job_cancel_queued(1, id, T0 + 2 * SEC, &done), 0);
	cr_assert_eq(done, 1);
	assert_batch_state(id, "failed");
}

/* ---- lists ---- */

/* page_ids writes the batch ids (key "id") or job indexes (key "index")
 * of page's items to out and returns how many there are. */
static size_t page_ids(const json_t *page, const char *key, int64_t *out,
		       size_t max)
{
	const json_t *items = json_object_get(page, "items"), *it;
	size_t i;

	cr_assert(json_is_array(items));
	cr_assert_leq(json_array_size(items), max);
	json_array_foreach(items, i, it) {
		if (strcmp(key, "index") == 0)
			out[i] = integer(it, "index");
		else
			out[i] = parse_id(str(it, "id"), 'b');
	}
	return json_array_size(items);
}

static void assert_page(json_t *page, const char *key, const int64_t *want,
			size_t n_want, const char *next)
{
	int64_t got[16];
	size_t n = page_ids(page, key, got, 16), i;
	const json_t *cur = json_object_get(page, "next_cursor");

	cr_assert_eq(n, n_want, "want %zu items, got %zu", n_want, n);
	for (i = 0; i < n; i++)
		cr_assert_eq(got[i], want[i], "item %zu: want %lld, got %lld",
			     i, (long long)want[i], (long long)got[i]);
	if (next)
		cr_assert_str_eq(json_string_value(cur), next);
	else
		cr_assert(json_is_null(cur), "want next_cursor null");
	json_decref(page);
}

Test(store, batch_list_newest_first_with_cursor)
{
	const int64_t p1[] = { 5, 4 }, p2[] = { 3, 2 }, p3[] = { 1 };
	const int64_t all[] = { 5, 4, 3, 2, 1 };
	int i;

	for (i = 0; i < 5; i++)
		insert_sleep(1, "", "");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, -1, 2), "id", p1, 2, "b4");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, 4, 2), "id", p2, 2, "b2");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, 2, 2), "id", p3, 1, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, 1, 2), "id", NULL, 0, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, -1, 5), "id", all, 5, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, -1, 100), "id", all, 5, NULL);
}

Test(store, batch_list_state_filter)
{
	const int64_t canceled[] = { 3 }, queued[] = { 5, 4, 2, 1 };
	const int64_t queued_p2[] = { 2, 1 };
	int c, d, i;

	for (i = 0; i < 5; i++)
		insert_sleep(1, "", "");
	cr_assert_eq(store_batch_cancel(3, T0, &c, &d, NULL, NULL), 0);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list("canceled", -1, 10), "id", canceled, 1,
		    NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list("queued", -1, 10), "id", queued, 4, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list("queued", 4, 2), "id", queued_p2, 2,
		    NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list("running", -1, 10), "id", NULL, 0, NULL);
}

Test(store, empty_batch_list)
{
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, -1, 10), "id", NULL, 0, NULL);
}

Test(store, job_list_in_index_order_with_cursor)
{
	const int64_t p1[] = { 0, 1 }, p2[] = { 2, 3 }, p3[] = { 4 };
	int64_t id;

	insert_sleep(3, "", "");        /* jobs of another batch */
	id = insert_sleep(5, "", "");
	insert_sleep(2, "", "");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, NULL, -1, 2), "index", p1, 2, "j1");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, NULL, 1, 2), "index", p2, 2, "j3");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, NULL, 3, 2), "index", p3, 1, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(999, NULL, -1, 2), "index", NULL, 0, NULL);
}

Test(store, job_list_state_filter)
{
	const int64_t running[] = { 0, 1 }, queued[] = { 2, 3, 4 };
	int64_t id = insert_sleep(5, "", "");

	claim(id);
	claim(id);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, "running", -1, 10), "index", running, 2,
		    NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, "queued", -1, 2), "index", queued, 2,
		    "j3");
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, "queued", 3, 2), "index", queued + 2, 1,
		    NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, "succeeded", -1, 2), "index", NULL, 0,
		    NULL);
}

/* ---- scheduler support ---- */

static void collect_info(const struct batch_info *b, void *ctx)
{
	struct batch_info *out = ctx;

	out[b->id - 1] = *b;
}

Test(store, batch_info_and_load_active)
{
	struct batch_info got[3];
	struct batch_info info;
	int64_t a, b, c;
	int n, d;

	memset(got, 0, sizeof(got));
	a = insert_sleep(3, "", "\"concurrency\": 2, \"priority\": 7");
	b = insert_sleep(1, "", "");
	c = insert_sleep(1, "", "");
	claim(a);
	cr_assert_eq(store_batch_cancel(c, T0, &n, &d, NULL, NULL), 0);
	cr_assert_eq(store_batch_info(a, &info), 0);
	cr_assert_eq(info.id, a);
	cr_assert_eq(info.priority, 7);
	cr_assert_eq(info.concurrency, 2);
	cr_assert_eq(info.queued, 2);
	cr_assert_eq(info.running, 1);
	cr_assert_eq(info.cancel_req, 0);
	cr_assert_eq(store_batch_info(999, &info), -1);

	cr_assert_eq(store_load_active(collect_info, got), 2,
		     "the canceled batch is not active");
	cr_assert_eq(got[0].id, a);
	cr_assert_eq(got[0].queued, 2);
	cr_assert_eq(got[1].id, b);
	cr_assert_eq(got[1].concurrency, 0, "no limit of its own");
	cr_assert_eq(got[2].id, 0);
}

Test(store, job_batch)
{
	int64_t b1, b2, bid = 0;
	enum job_state st = JS__COUNT;

	b1 = insert_sleep(1, "", "");
	b2 = insert_sleep(1, "", "");
	claim(b2);
	cr_assert_eq(store_job_batch(1, &bid, &st, NULL), 0);
	cr_assert_eq(bid, b1);
	cr_assert_eq(st, JS_QUEUED);
	cr_assert_eq(store_job_batch(2, &bid, &st, NULL), 0);
	cr_assert_eq(bid, b2);
	cr_assert_eq(st, JS_RUNNING);
	cr_assert_eq(store_job_batch(3, &bid, &st, NULL), -1);
}

/* ---- recovery ---- */

Test(store, recover_requeues_or_fails_running_jobs)
{
	int64_t id = insert("{\"jobs\": ["
		"{\"kind\": \"noop\", \"max_attempts\": 3}, "
		"{\"kind\": \"noop\", \"max_attempts\": 1}, "
		"{\"kind\": \"noop\"}]}");
	int requeued = -1, interrupted = -1;
	struct claim c = { 0 };
	json_t *j, *h, *b;

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(claim(id), 2);
	cr_assert_eq(store_flush(), 0);
	/* the server dies; the next one opens the file and recovers */
	store_close();
	cr_assert_eq(store_open(db_path), 0);
	cr_assert_eq(store_recover(T0 + 10 * SEC, &requeued, &interrupted, NULL, NULL), 0);
	cr_assert_eq(requeued, 1);
	cr_assert_eq(interrupted, 1);

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 1);
	cr_assert(is_null(j, "worker"));
	cr_assert(is_null(j, "started_at"));
	json_decref(j);

	j = job(2);
	cr_assert_str_eq(str(j, "state"), "failed");
	cr_assert_str_eq(str(j, "error"), "interrupted");
	assert_time(j, "finished_at", T0 + 10 * SEC);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1);
	cr_assert_str_eq(str(json_array_get(h, 0), "error"), "interrupted");
	cr_assert_eq(integer(json_array_get(h, 0), "attempt"), 1);
	json_decref(j);

	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "running");
	cr_assert(is_null(b, "finished_at"));
	json_decref(b);
	assert_counts(id, 3, 2, 0, 0, 1, 0, 0);

	/* the requeued job runs again as attempt 2 */
	cr_assert_eq(store_job_claim(id, 0, 1, T0 + 11 * SEC, 0, &c), 0);
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.attempts, 2);
	free(c.args);
}

Test(store, recover_finishes_a_batch_with_no_work_left)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id);
	int requeued = -1, interrupted = -1;
	json_t *b;

	claim(id);      /* still running when the server dies */
	cr_assert_eq(finish(j1, id, JS_SUCCEEDED, T0 + 2 * SEC), 0);
	cr_assert_eq(store_flush(), 0);
	store_close();
	cr_assert_eq(store_open(db_path), 0);
	cr_assert_eq(store_recover(T0 + 10 * SEC, &requeued, &interrupted, NULL, NULL), 0);
	cr_assert_eq(requeued, 0);
	cr_assert_eq(interrupted, 1);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "failed");
	assert_time(b, "finished_at", T0 + 10 * SEC);
	json_decref(b);
	assert_counts(id, 2, 0, 0, 1, 1, 0, 0);
}

Test(store, recover_recounts_and_leaves_finished_batches)
{
	int64_t done_id = insert_sleep(1, "", ""), id;
	int requeued = -1, interrupted = -1;
	json_t *b;

	cr_assert_eq(finish(claim(done_id), done_id, JS_SUCCEEDED,
			    T0 + 2 * SEC), 1);
	id = insert_sleep(3, "", "");
	cr_assert_eq(store_flush(), 0);
	/* counters a dying server left wrong */
	sql_exec("UPDATE batches SET n_queued = 17, n_running = 4 "
		 "WHERE id = 2");
	cr_assert_eq(store_recover(T0 + 10 * SEC, &requeued, &interrupted, NULL, NULL), 0);
	cr_assert_eq(requeued, 0);
	cr_assert_eq(interrupted, 0);
	assert_counts(id, 3, 3, 0, 0, 0, 0, 0);
	assert_batch_state(id, "queued");
	b = batch(done_id);
	cr_assert_str_eq(str(b, "state"), "succeeded");
	assert_time(b, "finished_at", T0 + 2 * SEC);
	json_decref(b);
}

Test(store, recover_with_nothing_to_do)
{
	int requeued = -1, interrupted = -1;

	cr_assert_eq(store_recover(T0, &requeued, &interrupted, NULL, NULL), 0);
	cr_assert_eq(requeued, 0);
	cr_assert_eq(interrupted, 0);
}

/* ---- delete ---- */

Test(store, batch_delete_removes_batch_and_jobs)
{
	const int64_t left[] = { 2 };
	int64_t a = insert_sleep(3, "", ""), b = insert_sleep(2, "", "");
	struct batch_info info;
	enum job_state st;
	int64_t bid;

	claim(a);
	cr_assert_eq(store_batch_delete(a), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(a));
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_job_json(1));
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_job_json(3));
	cr_assert_eq(store_job_batch(2, &bid, &st, NULL), -1);
	cr_assert_eq(store_batch_info(a, &info), -1);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(a, NULL, -1, 10), "index", NULL, 0, NULL);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_batch_list(NULL, -1, 10), "id", left, 1, NULL);
	assert_counts(b, 2, 2, 0, 0, 0, 0, 0);
	assert_job_state(4, "queued");
	/* ids are never reused */
	cr_assert_eq(insert_sleep(1, "", ""), b + 1);
}
