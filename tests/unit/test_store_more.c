/* test_store_more.c - unit tests for the store functions test_store.c
 * leaves out: retries with backoff, retry policies, idempotency keys,
 * retention (purge), counts and size, job pages by id range, and the
 * history recovery writes.  Each test opens its own SQLite file in a
 * temporary directory; times are fixed fake microsecond clocks. */
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "jobpool.h"
#include "store_fixture.h"

TestSuite(store_more, .init = setup, .fini = teardown);

/* ---- helpers ---- */

/* noop_batch returns a new submission of n noop jobs, each with the JSON
 * members in extra (may be NULL). */
static json_t *noop_batch(int n, const char *extra)
{
	json_t *jobs = json_array(), *j;
	int i;

	for (i = 0; i < n; i++) {
		j = extra ? json_loads(extra, 0, NULL) : json_object();
		cr_assert_not_null(j, "bad JSON in test: %s", extra);
		json_object_set_new(j, "kind", json_string("noop"));
		json_array_append_new(jobs, j);
	}
	return json_pack("{s:o}", "jobs", jobs);
}

/* insert_key stores n noop jobs at now under Idempotency-Key key (may be
 * NULL), commits, and returns the batch id. */
static int64_t insert_key(int n, const char *extra, int64_t now,
			  const char *key, const char *hash)
{
	json_t *body = noop_batch(n, extra), *ids = NULL;
	int64_t id = 0;

	cr_assert_eq(store_batch_insert(body, now, key, hash, &id, &ids), 0);
	json_decref(body);
	cr_assert_eq(store_flush(), 0);
	cr_assert_gt(id, 0);
	cr_assert_eq(json_array_size(ids), (size_t)n);
	json_decref(ids);
	return id;
}

static int64_t insert(int n, const char *extra)
{
	return insert_key(n, extra, T0, NULL, NULL);
}

/* assert_counts checks a batch's queued, running, succeeded, failed
 * counts. */
static void assert_counts(int64_t id, int queued, int running,
			  int succeeded, int failed)
{
	json_t *b = batch(id), *c = json_object_get(b, "counts");

	cr_assert_eq(integer(c, "queued"), queued, "b%lld queued",
		     (long long)id);
	cr_assert_eq(integer(c, "running"), running, "b%lld running",
		     (long long)id);
	cr_assert_eq(integer(c, "succeeded"), succeeded, "b%lld succeeded",
		     (long long)id);
	cr_assert_eq(integer(c, "failed"), failed, "b%lld failed",
		     (long long)id);
	json_decref(b);
}

/* claim_at claims the next job of batch_id on slot (pid 1000 + slot) at
 * now, due jobs only, and returns its id and attempt number. */
static int64_t claim_at(int64_t batch_id, int slot, int64_t now, int *attempts)
{
	struct claim c = { 0 };

	cr_assert_eq(store_job_claim(batch_id, slot, 1000 + slot, now, 0, &c), 0,
		     "nothing to claim in b%lld", (long long)batch_id);
	free(c.args);
	if (attempts)
		*attempts = c.attempts;
	return c.job_id;
}

/* nothing_due tells whether batch_id has no job due at now.  When one is
 * due it is claimed (slot 0, pid 1): callers expect the "nothing" answer. */
static int nothing_due(int64_t batch_id, int64_t now)
{
	struct claim c = { 0 };
	int rc = store_job_claim(batch_id, 0, 1, now, 0, &c);

	if (rc == 0)
		free(c.args);
	return rc == 1;
}

static struct outcome failure(int64_t finished_at, int exit_code)
{
	struct outcome o = {
		.state = JS_FAILED, .finished_at = finished_at,
		.run_us = 1500000, .user_us = 1000, .sys_us = 500,
		.max_rss_kb = 2048, .exit_code = exit_code,
		.error = "exited with a code",
	};

	return o;
}

static int64_t count_jobs(int64_t batch_id)
{
	json_t *ids = store_job_ids(batch_id);
	int64_t n = (int64_t)json_array_size(ids);

	json_decref(ids);
	return n;
}

/* ---- store_job_retry ---- */

Test(store_more, retry_requeues_with_backoff)
{
	int64_t id = insert(1, "{\"max_attempts\": 3}");
	int64_t nb = T0 + 60 * SEC;
	struct outcome o = failure(T0 + 3 * SEC, 3);
	struct slot w = { .index = 2, .pid = 1002, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	struct claim c = { 0 };
	json_t *j, *h, *b;
	int attempts = 0;

	cr_assert_eq(claim_at(id, 2, T0 + SEC, &attempts), 1);
	cr_assert_eq(attempts, 1);
	assert_counts(id, 0, 1, 0, 0);
	cr_assert_eq(store_job_retry(1, id, &o, &w, nb), 0);
	cr_assert_eq(store_flush(), 0);

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 1, "the attempt is kept");
	cr_assert(is_null(j, "worker"));
	cr_assert(is_null(j, "started_at"));
	cr_assert(is_null(j, "finished_at"));
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1);
	h = json_array_get(h, 0);
	cr_assert_eq(integer(h, "attempt"), 1);
	cr_assert_str_eq(str(h, "state"), "failed");
	cr_assert_eq(integer(h, "exit_code"), 3);
	cr_assert_str_eq(str(h, "error"), "exited with a code");
	assert_time(h, "started_at", T0 + SEC);
	assert_time(h, "finished_at", T0 + 3 * SEC);
	cr_assert_eq(integer(json_object_get(h, "worker"), "slot"), 2);
	cr_assert_eq(integer(json_object_get(h, "worker"), "pid"), 1002);
	json_decref(j);

	assert_counts(id, 1, 0, 0, 0);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "running", "a retry is not an end");
	cr_assert(is_null(b, "finished_at"));
	json_decref(b);

	/* not due before not_before (5 ms of slack for clock skew) */
	cr_assert(nothing_due(id, T0 + 4 * SEC));
	cr_assert(nothing_due(id, nb - 5001));
	assert_counts(id, 1, 0, 0, 0);
	/* any_due ignores the backoff (drain, recovery) */
	cr_assert_eq(store_job_claim(id, 1, 1001, T0 + 4 * SEC, 1, &c), 0);
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.attempts, 2);
	cr_assert_eq(c.queued_at, T0 + 3 * SEC, "queued again when it failed");
	cr_assert_eq(c.max_attempts, 3);
	free(c.args);
	assert_counts(id, 0, 1, 0, 0);
}

Test(store_more, retried_job_is_due_at_not_before)
{
	int64_t id = insert(1, "{\"max_attempts\": 2}");
	int64_t nb = T0 + 60 * SEC;
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	int attempts = 0;

	claim_at(id, 0, T0 + SEC, NULL);
	cr_assert_eq(store_job_retry(1, id, &o, &w, nb), 0);
	cr_assert(nothing_due(id, nb - 10 * SEC));
	cr_assert_eq(claim_at(id, 0, nb - 5000, &attempts), 1,
		     "due within the slack");
	cr_assert_eq(attempts, 2);
}

Test(store_more, retried_job_is_due_later)
{
	int64_t id = insert(1, "{\"max_attempts\": 2}");
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };

	claim_at(id, 0, T0 + SEC, NULL);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 60 * SEC), 0);
	cr_assert_eq(claim_at(id, 0, T0 + 3600 * SEC, NULL), 1);
}

Test(store_more, backoff_skips_to_the_next_due_job)
{
	int64_t id = insert(2, "{\"max_attempts\": 2}");
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };

	cr_assert_eq(claim_at(id, 0, T0 + SEC, NULL), 1);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 60 * SEC), 0);
	cr_assert_eq(claim_at(id, 0, T0 + 4 * SEC, NULL), 2,
		     "job 1 waits, job 2 is due");
	cr_assert(nothing_due(id, T0 + 5 * SEC));
	cr_assert_eq(claim_at(id, 0, T0 + 61 * SEC, NULL), 1);
	assert_counts(id, 0, 2, 0, 0);
}

Test(store_more, retry_then_success_keeps_both_attempts)
{
	int64_t id = insert(1, "{\"max_attempts\": 2}");
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j, *h, *b;
	int done = -1, attempts = 0;

	claim_at(id, 0, T0 + SEC, NULL);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 4 * SEC), 0);
	claim_at(id, 0, T0 + 4 * SEC, &attempts);
	cr_assert_eq(attempts, 2);
	o.state = JS_SUCCEEDED;
	o.exit_code = 0;
	o.error = NULL;
	o.finished_at = T0 + 6 * SEC;
	w.started_at = T0 + 4 * SEC;
	w.job_attempts = 2;
	cr_assert_eq(store_job_finish(1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 1);
	j = job(1);
	cr_assert_str_eq(str(j, "state"), "succeeded");
	cr_assert_eq(integer(j, "attempts"), 2);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 2);
	cr_assert_eq(integer(json_array_get(h, 0), "attempt"), 1);
	cr_assert_str_eq(str(json_array_get(h, 0), "state"), "failed");
	cr_assert_eq(integer(json_array_get(h, 1), "attempt"), 2);
	cr_assert_str_eq(str(json_array_get(h, 1), "state"), "succeeded");
	json_decref(j);
	assert_counts(id, 0, 0, 1, 0);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "succeeded");
	json_decref(b);
}

/* ---- retry_parse ---- */

static int code_set(const struct retry_policy *p, int code)
{
	return (p->codes[code / 8] >> (code % 8)) & 1;
}

static int no_codes(const struct retry_policy *p)
{
	size_t i;

	for (i = 0; i < sizeof(p->codes); i++)
		if (p->codes[i])
			return 0;
	return 1;
}

Test(retry_parse, empty_list_means_any)
{
	struct retry_policy p;

	memset(&p, 0xff, sizeof(p));
	retry_parse("[]", &p);
	cr_assert_eq(p.any, 1);
	cr_assert_eq(p.signals, 0);
	cr_assert(no_codes(&p));
	memset(&p, 0xff, sizeof(p));
	retry_parse(NULL, &p);
	cr_assert_eq(p.any, 1);
	cr_assert_eq(p.signals, 0);
	cr_assert(no_codes(&p));
}

Test(retry_parse, codes_and_signals)
{
	struct retry_policy p;
	int code;

	retry_parse("[3, \"SIGKILL\", 0, 255, \"SIGSEGV\", 128]", &p);
	cr_assert_eq(p.any, 0);
	cr_assert_eq(p.signals, (1ULL << SIGKILL) | (1ULL << SIGSEGV));
	for (code = 0; code < 256; code++)
		cr_assert_eq(code_set(&p, code), code == 0 || code == 3 ||
			     code == 128 || code == 255, "code %d", code);
}

Test(retry_parse, junk_is_ignored)
{
	struct retry_policy p;

	retry_parse("[\"SIGNOPE\", \"\", -1, 256, 1e9, null, true, {}, [1], "
		    "\"kill\", 7, \"SIGTERM\"]", &p);
	cr_assert_eq(p.any, 0);
	cr_assert_eq(p.signals, 1ULL << SIGTERM);
	cr_assert(code_set(&p, 7));
	p.codes[0] &= (uint8_t)~(1u << 7);
	cr_assert(no_codes(&p), "only code 7 is set");

	retry_parse("[\"SIGNOPE\", -5]", &p);
	cr_assert_eq(p.signals, 0);
	cr_assert(no_codes(&p));
}

/* ---- idempotency keys ---- */

Test(store_more, idempotency_key_round_trip)
{
	const char *hash = "0123456789abcdef0123456789abcdef";
	int64_t other = insert(1, NULL);
	int64_t id = insert_key(2, NULL, T0 + 10 * SEC, "key-1", hash);
	char got[33] = "";
	int64_t bid = 0;

	cr_assert_neq(id, other);
	cr_assert_eq(store_idem_get("key-1", T0, got, &bid), 0);
	cr_assert_str_eq(got, hash);
	cr_assert_eq(bid, id);
	cr_assert_eq(store_idem_get("key-1", T0 + 10 * SEC, got, &bid), 0,
		     "since == created_at still counts");
	cr_assert_eq(store_idem_get("key-1", T0 + 10 * SEC + 1, got, &bid), 1,
		     "expired");
	cr_assert_eq(store_idem_get("key-2", 0, got, &bid), 1, "unknown key");
	cr_assert_eq(store_idem_get("KEY-1", 0, got, &bid), 1,
		     "keys are case-sensitive");

	cr_assert_eq(store_batch_delete(id), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_idem_get("key-1", 0, got, &bid), 1,
		     "deleting the batch forgets its key");
	json_decref(batch(other));
}

Test(store_more, idempotency_key_without_key_stores_none)
{
	char got[33];
	int64_t bid = 0;

	insert(1, NULL);
	cr_assert_eq(store_idem_get("", 0, got, &bid), 1);
}

/* ---- store_purge_step ---- */

static int64_t finished_batch(int n, int64_t now, const char *key)
{
	int64_t id = insert_key(n, NULL, T0, key, key ? "h" : NULL);
	int canceled = -1, done = -1;

	cr_assert_eq(store_batch_cancel(id, now, &canceled, &done, NULL, NULL),
		     0);
	cr_assert_eq(canceled, n);
	cr_assert_eq(done, 1);
	cr_assert_eq(store_flush(), 0);
	return id;
}

Test(store_more, purge_deletes_a_big_batch_in_chunks)
{
	int64_t big = finished_batch(1200, T0 + 2 * SEC, NULL);
	int64_t queued = insert(5, NULL);
	int64_t running = insert(3, NULL);
	int64_t after;
	int canceled = -1, done = -1;
	json_t *b;

	/* canceled with a job still running: not finished, so kept */
	claim_at(running, 0, T0 + SEC, NULL);
	cr_assert_eq(store_batch_cancel(running, T0 + 2 * SEC, &canceled,
					&done, NULL, NULL), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);

	/* finished at the cutoff is not before it */
	cr_assert_eq(store_purge_step(T0 + 2 * SEC, 0, 500), 0);
	cr_assert_eq(count_jobs(big), 1200);

	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 500);
	cr_assert_eq(count_jobs(big), 700);
	b = batch(big);
	json_decref(b);
	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 500);
	cr_assert_eq(count_jobs(big), 200);
	b = batch(big);
	json_decref(b);
	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 201,
		     "the last 200 jobs and then the batch row");
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(big));
	cr_assert_eq(count_jobs(big), 0);
	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 0, "done");

	cr_assert_eq(count_jobs(queued), 5);
	cr_assert_eq(count_jobs(running), 3);
	json_decref(batch(queued));
	json_decref(batch(running));
	/* ids are not reused after a purge */
	after = insert(1, NULL);
	cr_assert_gt(after, running);
}

Test(store_more, purge_exactly_max_jobs_takes_two_steps)
{
	int64_t id = finished_batch(500, T0 + 2 * SEC, NULL);

	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 500);
	json_decref(batch(id));
	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 1);
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(id));
}

Test(store_more, purge_takes_the_oldest_finished_batch_first)
{
	int64_t newer = finished_batch(2, T0 + 20 * SEC, NULL);
	int64_t older = finished_batch(3, T0 + 10 * SEC, NULL);

	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 4);
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(older));
	json_decref(batch(newer));
	cr_assert_eq(store_purge_step(T0 + 15 * SEC, 0, 500), 0,
		     "the newer one finished after the cutoff");
	json_decref(batch(newer));
}

Test(store_more, purge_without_cutoff_keeps_batches)
{
	int64_t id = finished_batch(2, T0 + 2 * SEC, NULL);

	cr_assert_eq(store_purge_step(0, 0, 500), 0);
	cr_assert_eq(count_jobs(id), 2);
}

Test(store_more, purge_removes_old_keys)
{
	char got[33];
	int64_t bid = 0;
	int64_t a = insert_key(1, NULL, T0, "old-1", "h1");
	int64_t b = insert_key(1, NULL, T0 + SEC, "old-2", "h2");
	int64_t c = insert_key(1, NULL, T0 + 2 * SEC, "old-3", "h3");
	int64_t d = insert_key(1, NULL, T0 + 50 * SEC, "new", "h4");

	/* bounded by max too; keys only, batches stay */
	cr_assert_eq(store_purge_step(0, T0 + 10 * SEC, 2), 2);
	cr_assert_eq(store_purge_step(0, T0 + 10 * SEC, 2), 1);
	cr_assert_eq(store_purge_step(0, T0 + 10 * SEC, 2), 0);
	cr_assert_eq(store_idem_get("old-1", 0, got, &bid), 1);
	cr_assert_eq(store_idem_get("old-2", 0, got, &bid), 1);
	cr_assert_eq(store_idem_get("old-3", 0, got, &bid), 1);
	cr_assert_eq(store_idem_get("new", 0, got, &bid), 0);
	cr_assert_eq(bid, d);
	cr_assert_str_eq(got, "h4");
	json_decref(batch(a));
	json_decref(batch(b));
	json_decref(batch(c));
}

Test(store_more, purged_batch_takes_its_key)
{
	char got[33];
	int64_t bid = 0;
	int64_t id = finished_batch(2, T0 + 2 * SEC, "mine");

	cr_assert_eq(store_idem_get("mine", 0, got, &bid), 0);
	cr_assert_eq(bid, id);
	cr_assert_eq(store_purge_step(T0 + 100 * SEC, 0, 500), 3);
	cr_assert_eq(store_idem_get("mine", 0, got, &bid), 1,
		     "no key may point at a purged batch");
}

/* ---- store_job_counts and store_size_bytes ---- */

static void assert_job_counts(int64_t q, int64_t r, int64_t s, int64_t f,
			      int64_t t, int64_t c)
{
	int64_t got[6] = { -1, -1, -1, -1, -1, -1 };
	const int64_t want[6] = { q, r, s, f, t, c };
	int i;

	cr_assert_eq(store_flush(), 0, "the counts are of what is committed");
	cr_assert_eq(store_job_counts(got), 0);
	for (i = 0; i < 6; i++)
		cr_assert_eq(got[i], want[i], "counts[%s]: want %lld, got %lld",
			     job_state_name(i), (long long)want[i],
			     (long long)got[i]);
}

static void end_job(int64_t batch_id, enum job_state state, int64_t at)
{
	struct outcome o = failure(at, state == JS_SUCCEEDED ? 0 : 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = at - SEC,
			  .job_attempts = 1 };
	int64_t job_id = claim_at(batch_id, 0, at - SEC, NULL);
	int done = -1;

	o.state = state;
	cr_assert_eq(store_job_finish(job_id, batch_id, &o, &w, &done), 0);
}

Test(store_more, job_counts_follow_transitions)
{
	int64_t a, b;
	int canceled = -1, done = -1;

	assert_job_counts(0, 0, 0, 0, 0, 0);
	a = insert(10, NULL);
	b = insert(3, NULL);
	assert_job_counts(13, 0, 0, 0, 0, 0);
	claim_at(a, 0, T0 + SEC, NULL);
	assert_job_counts(12, 1, 0, 0, 0, 0);
	end_job(a, JS_SUCCEEDED, T0 + 3 * SEC);
	end_job(a, JS_FAILED, T0 + 3 * SEC);
	end_job(a, JS_TIMED_OUT, T0 + 3 * SEC);
	assert_job_counts(9, 1, 1, 1, 1, 0);
	cr_assert_eq(store_batch_cancel(b, T0 + 4 * SEC, &canceled, &done,
					NULL, NULL), 0);
	assert_job_counts(6, 1, 1, 1, 1, 3);
	cr_assert_eq(store_batch_delete(b), 0);
	assert_job_counts(6, 1, 1, 1, 1, 0);
	cr_assert_eq(store_batch_delete(a), 0);
	assert_job_counts(0, 0, 0, 0, 0, 0);
}

Test(store_more, size_grows_and_shrinks)
{
	int64_t empty = store_size_bytes(), full, after, id;

	cr_assert_gt(empty, 0, "the schema takes pages");
	cr_assert_eq(empty % 512, 0, "whole pages");
	id = insert(2000, "{\"args\": {\"text\": \"some bytes to store, "
		    "some bytes to store, some bytes to store\"}}");
	full = store_size_bytes();
	cr_assert_gt(full, empty + 2000 * 50, "2000 jobs take room: %lld",
		     (long long)full);
	cr_assert_eq(store_batch_delete(id), 0);
	cr_assert_eq(store_flush(), 0);
	after = store_size_bytes();
	cr_assert_lt(after, full, "free pages are not counted");
	cr_assert_geq(after, empty);
}

/* ---- store_job_list by id range ---- */

/* assert_job_page checks that page holds the jobs of batch_id with indexes
 * from..from+n-1 in order, and its next_cursor (NULL: none).  Steals
 * page. */
static void assert_job_page(json_t *page, int64_t batch_id, int from, int n,
			    const char *next)
{
	const json_t *items = json_object_get(page, "items"), *it;
	const json_t *cur = json_object_get(page, "next_cursor");
	char bid[32];
	size_t i;

	fmt_id(bid, sizeof(bid), 'b', batch_id);
	cr_assert(json_is_array(items));
	cr_assert_eq(json_array_size(items), (size_t)n, "want %d items, got %zu",
		     n, json_array_size(items));
	json_array_foreach(items, i, it) {
		cr_assert_str_eq(str(it, "batch_id"), bid, "item %zu", i);
		cr_assert_eq(integer(it, "index"), from + (int)i, "item %zu", i);
	}
	if (next)
		cr_assert_str_eq(json_string_value(cur), next);
	else
		cr_assert(json_is_null(cur), "want next_cursor null");
	json_decref(page);
}

Test(store_more, job_list_pages_a_big_batch)
{
	int64_t before = insert(3, NULL), id = insert(250, NULL), between;

	assert_job_page(store_job_list(id, NULL, -1, 100), id, 0, 100, "j99");
	/* another submission between two page requests */
	between = insert(70, NULL);
	assert_job_page(store_job_list(id, NULL, 99, 100), id, 100, 100,
			"j199");
	assert_job_page(store_job_list(id, NULL, 199, 100), id, 200, 50, NULL);
	assert_job_page(store_job_list(id, NULL, 249, 100), id, 0, 0, NULL);
	/* the neighbours page on their own */
	assert_job_page(store_job_list(before, NULL, -1, 100), before, 0, 3,
			NULL);
	assert_job_page(store_job_list(between, NULL, -1, 64), between, 0, 64,
			"j63");
	assert_job_page(store_job_list(between, NULL, 63, 64), between, 64, 6,
			NULL);
}

Test(store_more, job_list_last_full_page_has_no_cursor)
{
	int64_t id = insert(200, NULL);

	insert(5, NULL);
	assert_job_page(store_job_list(id, NULL, -1, 100), id, 0, 100, "j99");
	assert_job_page(store_job_list(id, NULL, 99, 100), id, 100, 100, NULL);
	assert_job_page(store_job_list(id, NULL, -1, 200), id, 0, 200, NULL);
}

Test(store_more, job_list_between_interleaved_batches)
{
	int64_t ids[4];
	int i;

	for (i = 0; i < 4; i++)
		ids[i] = insert(65 + i, NULL);
	for (i = 0; i < 4; i++) {
		char next[16];

		snprintf(next, sizeof(next), "j%d", 63);
		assert_job_page(store_job_list(ids[i], NULL, -1, 64), ids[i],
				0, 64, next);
		assert_job_page(store_job_list(ids[i], NULL, 63, 64), ids[i],
				64, 1 + i, NULL);
	}
}

/* ---- recovery history ---- */

static void crash_and_recover(int64_t now, int want_requeued,
			      int want_interrupted)
{
	int requeued = -1, interrupted = -1;

	cr_assert_eq(store_flush(), 0);
	store_close();
	cr_assert_eq(store_open(db_path), 0);
	cr_assert_eq(store_recover(now, &requeued, &interrupted, NULL, NULL),
		     0);
	cr_assert_eq(requeued, want_requeued);
	cr_assert_eq(interrupted, want_interrupted);
}

static void assert_interrupted_entry(const json_t *h, int attempt,
				     int64_t started, int64_t ended, int slot)
{
	const json_t *w = json_object_get(h, "worker");

	cr_assert_eq(integer(h, "attempt"), attempt);
	cr_assert_str_eq(str(h, "state"), "failed");
	cr_assert_str_eq(str(h, "error"), "interrupted");
	assert_time(h, "started_at", started);
	assert_time(h, "finished_at", ended);
	cr_assert(is_null(h, "run_ms"));
	cr_assert(is_null(h, "exit_code"));
	cr_assert(is_null(h, "signal"));
	cr_assert(json_is_object(w));
	cr_assert_eq(integer(w, "slot"), slot);
	cr_assert_eq(integer(w, "pid"), 1000 + slot);
}

Test(store_more, recover_records_requeued_attempts_in_history)
{
	int64_t id = insert(2, "{\"max_attempts\": 3}");
	struct outcome o = { .state = JS_SUCCEEDED, .finished_at = T0 + 12 * SEC,
			     .run_us = SEC, .user_us = -1, .sys_us = -1,
			     .max_rss_kb = -1, .exit_code = 0 };
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + 11 * SEC };
	json_t *j, *h;
	int attempts = 0, done = -1;

	cr_assert_eq(claim_at(id, 2, T0 + SEC, NULL), 1);
	crash_and_recover(T0 + 10 * SEC, 1, 0);

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 1);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1, "the interrupted attempt");
	assert_interrupted_entry(json_array_get(h, 0), 1, T0 + SEC,
				 T0 + 10 * SEC, 2);
	json_decref(j);
	j = job(2);
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 0,
		     "a job that never ran has no history");
	json_decref(j);
	assert_counts(id, 2, 0, 0, 0);

	/* attempt 2 appends to it */
	cr_assert_eq(claim_at(id, 0, T0 + 11 * SEC, &attempts), 1);
	cr_assert_eq(attempts, 2);
	w.job_attempts = attempts;
	cr_assert_eq(store_job_finish(1, id, &o, &w, &done), 0);
	j = job(1);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 2);
	cr_assert_str_eq(str(json_array_get(h, 0), "error"), "interrupted");
	cr_assert_eq(integer(json_array_get(h, 1), "attempt"), 2);
	cr_assert_str_eq(str(json_array_get(h, 1), "state"), "succeeded");
	json_decref(j);
}

Test(store_more, recover_appends_after_earlier_attempts)
{
	int64_t id = insert(1, "{\"max_attempts\": 3}");
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 1, .pid = 1001, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j, *h;

	claim_at(id, 1, T0 + SEC, NULL);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 4 * SEC), 0);
	claim_at(id, 1, T0 + 5 * SEC, NULL);
	crash_and_recover(T0 + 10 * SEC, 1, 0);
	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 2);
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 2);
	cr_assert_eq(integer(json_array_get(h, 0), "exit_code"), 1);
	assert_interrupted_entry(json_array_get(h, 1), 2, T0 + 5 * SEC,
				 T0 + 10 * SEC, 1);
	json_decref(j);
}

Test(store_more, recover_makes_backoff_due_at_once)
{
	int64_t id = insert(1, "{\"max_attempts\": 3}");
	struct outcome o = failure(T0 + 3 * SEC, 1);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j;

	claim_at(id, 0, T0 + SEC, NULL);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 3600 * SEC), 0);
	crash_and_recover(T0 + 10 * SEC, 0, 0);
	j = job(1);
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 1,
		     "a queued job was not interrupted");
	json_decref(j);
	cr_assert_eq(claim_at(id, 0, T0 + 11 * SEC, NULL), 1,
		     "the backoff timer died with the old server");
}

/* The interrupted entry renders its times in SQL (strftime); they must read
 * like fmt_time(), which the job's own started_at and every other history
 * entry use.  A start time with a sub-millisecond part of .5 ms or more
 * tells truncation from rounding. */
Test(store_more, recover_history_times_read_like_fmt_time)
{
	int64_t id = insert(2, "{\"max_attempts\": 1}");
	int64_t started1 = T0 + SEC + 999600;   /* 22:13:21.9996 */
	int64_t started2 = T0 + SEC + 234567;   /* 22:13:21.234567 */
	int64_t ended = T0 + 10 * SEC + 500;    /* 22:13:30.0005 */
	char job1[40], h1_start[40], h1_end[40], h2_start[40], want[40];
	json_t *j, *h;

	cr_assert_eq(claim_at(id, 0, started1, NULL), 1);
	cr_assert_eq(claim_at(id, 1, started2, NULL), 2);
	crash_and_recover(ended, 0, 2);

	/* copied out first so a failed expectation leaks nothing */
	j = job(1);
	h = json_array_get(json_object_get(j, "history"), 0);
	cr_assert_not_null(h);
	snprintf(job1, sizeof(job1), "%s", str(j, "started_at"));
	snprintf(h1_start, sizeof(h1_start), "%s", str(h, "started_at"));
	snprintf(h1_end, sizeof(h1_end), "%s", str(h, "finished_at"));
	json_decref(j);
	j = job(2);
	h = json_array_get(json_object_get(j, "history"), 0);
	cr_assert_not_null(h);
	snprintf(h2_start, sizeof(h2_start), "%s", str(h, "started_at"));
	json_decref(j);

	fmt_time(want, sizeof(want), started1);
	cr_assert_str_eq(job1, want, "the job row itself");
	cr_expect_str_eq(h1_start, job1, "history says attempt 1 of j1 started "
			 "at %s, the job at %s", h1_start, job1);
	fmt_time(want, sizeof(want), ended);
	cr_expect_str_eq(h1_end, want, "history says it ended at %s, "
			 "fmt_time %s", h1_end, want);
	fmt_time(want, sizeof(want), started2);
	cr_expect_str_eq(h2_start, want, "history says attempt 1 of j2 started "
			 "at %s, fmt_time %s", h2_start, want);
}

/* tasks counts the threads of this process. */
static int tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d, "cannot read /proc/self/task");
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Regression: the checkpointer's stop flag outlived store_close, so the
 * thread of a store opened again in the same process ended at once and
 * the WAL was no longer checkpointed behind the writer. */
Test(store_more, checkpointer_runs_after_reopen)
{
	int before;

	usleep(100000);
	before = tasks();
	store_close();
	cr_assert_eq(store_open(db_path), 0);
	usleep(300000);
	cr_assert_eq(tasks(), before, "the checkpointer thread is gone");
}

/* ---- the server-wide pause ---- */

Test(store_more, dispatch_pause_is_stored_across_a_reopen)
{
	cr_assert_eq(store_dispatch_get(), 0, "a new database is not paused");
	cr_assert_eq(store_dispatch_set(1), 0);
	cr_assert_eq(store_flush(), 0);
	store_close();
	cr_assert_eq(store_open(db_path), 0);
	cr_assert_eq(store_dispatch_get(), 1, "the pause outlived the reopen");
	cr_assert_eq(store_dispatch_set(0), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_dispatch_get(), 0);
}

/* ---- PATCH ---- */

Test(store_more, batch_set_changes_what_it_is_given_and_keeps_the_rest)
{
	json_t *body = noop_batch(2, NULL), *ids = NULL;
	struct batch_info b;
	int64_t id = 0;

	json_object_set_new(body, "concurrency", json_integer(1));
	json_object_set_new(body, "priority", json_integer(2));
	cr_assert_eq(store_batch_insert(body, T0, NULL, NULL, &id, &ids), 0);
	json_decref(body);
	json_decref(ids);
	cr_assert_eq(store_flush(), 0);

	cr_assert_eq(store_batch_set(id, -1, STORE_KEEP, 3), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_batch_info(id, &b), 0);
	cr_assert_eq(b.concurrency, 3);
	cr_assert_eq(b.priority, 2, "priority kept");
	cr_assert_eq(b.paused, 0, "paused kept");
	cr_assert_eq(store_batch_set(id, 1, 9, 0), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_batch_info(id, &b), 0);
	cr_assert_eq(b.concurrency, 0, "0 lifts the limit");
	cr_assert_eq(b.priority, 9);
	cr_assert_eq(b.paused, 1);
	cr_assert_eq(store_batch_set(id + 100, -1, 1, STORE_KEEP), 1,
		     "no such batch");
}
