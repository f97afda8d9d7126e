/* test_store_pg.c - conformance tests for the PostgreSQL store, through the
 * same store_* seam the SQLite tests use: submission and reads, claims and
 * outcomes, retries, cancels, the batch's end settled after the commit, the
 * concurrency gate across nodes, fencing of stale outcomes, the reaper, the
 * idempotency race and the shared event log.
 *
 * They run only when JOBPOOL_TEST_PG is a base URL such as
 * postgresql://jobpool@127.0.0.1:PORT/ (tests/pg/pgtmp.py run -- sets it);
 * otherwise every test is skipped.  Each test gets a fresh database
 * jp_u_<random>, made on the server's "postgres" database and dropped at
 * the end.  "Other nodes" are simulated with SQL on a connection of the
 * test's own (tc): rows in jp_nodes, jp_jobs and jp_batch_counts written as
 * another incarnation would. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <libpq-fe.h>

#include "jobpool.h"
#include "store_fixture.h"
#include "store_pg.h"

#define PG_ENV "JOBPOOL_TEST_PG"

static char base_url[512];      /* JOBPOOL_TEST_PG, ending in '/' */
static char db_name[40];        /* jp_u_<random> */
static PGconn *tc;              /* the test's own connection ("other node") */
static int pg_on;               /* the fixture made a database */

/* ---- fixture ---- */

static PGconn *connect_db(const char *name)
{
	char url[640];
	PGconn *c;

	snprintf(url, sizeof(url), "%s%s", base_url, name);
	c = PQconnectdb(url);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect %s: %s", url,
		     PQerrorMessage(c));
	return c;
}

/* admin_try runs q on the server's "postgres" database; returns whether
 * it worked, the error logged when loud. */
static int admin_try(const char *q, int loud)
{
	PGconn *c = connect_db("postgres");
	PGresult *r = PQexec(c, q);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;

	if (!ok && loud)
		fprintf(stderr, "%s: %s", q, PQresultErrorMessage(r));
	PQclear(r);
	PQfinish(c);
	return ok;
}

static void admin_exec(const char *q)
{
	cr_assert(admin_try(q, 1), "%s", q);
}

static void random_name(char *out, size_t size)
{
	unsigned char b[6] = { 0 };
	FILE *f = fopen("/dev/urandom", "rb");
	size_t i, n = 0;

	if (f) {
		n = fread(b, 1, sizeof(b), f);
		fclose(f);
	}
	if (n != sizeof(b)) {
		unsigned v = (unsigned)getpid() ^ (unsigned)time(NULL);

		for (i = 0; i < sizeof(b); i++)
			b[i] = (unsigned char)(v >> (i * 5));
	}
	n = (size_t)snprintf(out, size, "jp_u_");
	for (i = 0; i < sizeof(b); i++)
		n += (size_t)snprintf(out + n, size - n, "%02x", b[i]);
}

static void pg_setup(void)
{
	const char *env = getenv(PG_ENV);
	char q[128], url[640];
	size_t len;

	if (!env || !*env)
		cr_skip(PG_ENV " is not set (a base URL such as "
			"postgresql://jobpool@127.0.0.1:PORT/; "
			"tests/pg/pgtmp.py run -- sets it)");
	len = strlen(env);
	cr_assert_lt(len + 2, sizeof(base_url), PG_ENV " is too long");
	snprintf(base_url, sizeof(base_url), "%s%s", env,
		 env[len - 1] == '/' ? "" : "/");
	random_name(db_name, sizeof(db_name));
	/* FILE_COPY (PostgreSQL 15): a copy of the small template in half
	 * the time WAL_LOG takes; older servers take the plain statement */
	snprintf(q, sizeof(q), "CREATE DATABASE %s STRATEGY = FILE_COPY",
		 db_name);
	if (!admin_try(q, 0)) {
		snprintf(q, sizeof(q), "CREATE DATABASE %s", db_name);
		admin_exec(q);
	}
	pg_on = 1;
	snprintf(cfg.node_name, sizeof(cfg.node_name), "unit-a");
	cfg.workers = 4;
	cr_assert_eq(loop_init(), 0);
	snprintf(url, sizeof(url), "%s%s", base_url, db_name);
	cr_assert_eq(store_open(url), 0, "store_open %s", url);
	tc = connect_db(db_name);
}

static void pg_teardown(void)
{
	char q[128];

	if (!pg_on)
		return;
	store_close();
	loop_close();
	PQfinish(tc);
	tc = NULL;
	/* FORCE: a backend of a connection just closed may not be gone yet */
	snprintf(q, sizeof(q), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 db_name);
	admin_exec(q);
	pg_on = 0;
}

TestSuite(store_pg, .init = pg_setup, .fini = pg_teardown, .timeout = 60);

/* ---- SQL on the test's own connection ---- */

/* sql runs q (printf format) on tc and returns its new result, failing
 * the test when it fails. */
static PGresult *sql(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static PGresult *sql(const char *fmt, ...)
{
	char q[2048];
	va_list ap;
	PGresult *r;
	int ok;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	r = PQexec(tc, q);
	ok = PQresultStatus(r) == PGRES_COMMAND_OK ||
	     PQresultStatus(r) == PGRES_TUPLES_OK;
	cr_assert(ok, "%s: %s", q, PQresultErrorMessage(r));
	return r;
}

static void sql_do(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sql_do(const char *fmt, ...)
{
	char q[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	PQclear(sql("%s", q));
}

/* sql_i64 returns the first column of the one row q returns (NULL: -1). */
static int64_t sql_i64(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static int64_t sql_i64(const char *fmt, ...)
{
	char q[2048];
	va_list ap;
	PGresult *r;
	int64_t v;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	r = sql("%s", q);
	cr_assert_eq(PQntuples(r), 1, "%s: want one row, got %d", q,
		     PQntuples(r));
	v = PQgetisnull(r, 0, 0) ? -1 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return v;
}

/* sql_text writes the first column of the one row q returns to out
 * ("NULL" for SQL NULL). */
static void sql_text(char *out, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void sql_text(char *out, size_t size, const char *fmt, ...)
{
	char q[2048];
	va_list ap;
	PGresult *r;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	r = sql("%s", q);
	cr_assert_eq(PQntuples(r), 1, "%s: want one row, got %d", q,
		     PQntuples(r));
	snprintf(out, size, "%s", PQgetisnull(r, 0, 0) ? "NULL" :
		 PQgetvalue(r, 0, 0));
	PQclear(r);
}

/* other_node registers an incarnation of another node, alive, whose last
 * heartbeat was age_s seconds ago by the database's clock; returns its
 * id. */
static int64_t other_node(const char *name, int age_s)
{
	return sql_i64("INSERT INTO jp_nodes (name, started_at, heartbeat_at, "
		       "lease_ms, pool_size) VALUES ('%s', %lld, now() - "
		       "make_interval(secs => %d), 4000, 4) RETURNING id",
		       name, (long long)T0, age_s);
}

/* run_on_node makes job_id (queued, of batch_id) run on incarnation node
 * as that node's claim would: the row, and the node's own counter shard. */
static void run_on_node(int64_t job_id, int64_t batch_id, int64_t node,
			const char *node_name, int64_t started_at)
{
	sql_do("UPDATE jp_jobs SET state = 'running', attempts = attempts + 1, "
	       "started_at = %lld, worker_slot = 3, worker_pid = 4242, "
	       "worker_node = '%s', node_id = %lld WHERE id = %lld "
	       "AND state = 'queued'", (long long)started_at, node_name,
	       (long long)node, (long long)job_id);
	sql_do("INSERT INTO jp_batch_counts AS c (batch_id, node_id, queued, "
	       "running, first_start) VALUES (%lld, %lld, -1, 1, %lld) "
	       "ON CONFLICT (batch_id, node_id) DO UPDATE SET "
	       "queued = c.queued - 1, running = c.running + 1",
	       (long long)batch_id, (long long)node, (long long)started_at);
}

/* ---- store helpers ---- */

static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *value = json_loads(text, 0, &jerr);

	cr_assert_not_null(value, "bad JSON in test: %s: %s", text, jerr.text);
	return value;
}

/* insert_at stores the batch in body_text at now, commits, and returns its
 * id; its job ids go to *job_ids when that is not NULL. */
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

/* insert_sleep stores n sleep jobs, each with the job members extra and
 * the batch members top (JSON member text, may be ""). */
static int64_t insert_sleep(int n, const char *extra, const char *top)
{
	char body[4096];
	size_t used;
	int i;

	used = (size_t)snprintf(body, sizeof(body), "{%s%s\"jobs\": [", top,
				*top ? ", " : "");
	for (i = 0; i < n; i++)
		used += (size_t)snprintf(body + used, sizeof(body) - used,
			"%s{\"kind\": \"sleep\", \"args\": {\"seconds\": %d}%s%s}",
			i ? ", " : "", i + 1, *extra ? ", " : "", extra);
	cr_assert_lt(used + 3, sizeof(body));
	snprintf(body + used, sizeof(body) - used, "]}");
	return insert_at(body, T0, NULL);
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

/* assert_stored checks what settling wrote on the batch's row (what
 * listings by state and retention read): its state, and finished_at (0:
 * NULL). */
static void assert_stored(int64_t id, const char *state, int64_t finished_at)
{
	char got[32];

	sql_text(got, sizeof(got), "SELECT state FROM jp_batches WHERE id = "
		 "%lld", (long long)id);
	cr_assert_str_eq(got, state, "jp_batches.state of b%lld",
			 (long long)id);
	cr_assert_eq(sql_i64("SELECT finished_at FROM jp_batches WHERE id = "
			     "%lld", (long long)id),
		     finished_at ? finished_at : -1,
		     "jp_batches.finished_at of b%lld", (long long)id);
}

/* claim_on claims the next job of batch_id on slot (pid 1000 + slot) at
 * now, due jobs only, and returns its id; the claim's args are freed. */
static int64_t claim_on(int64_t batch_id, int slot, int64_t now, int *attempts)
{
	struct claim c = { 0 };

	cr_assert_eq(store_job_claim(batch_id, slot, 1000 + slot, now, 0, &c),
		     0, "nothing to claim in b%lld", (long long)batch_id);
	free(c.args);
	if (attempts)
		*attempts = c.attempts;
	return c.job_id;
}

static int64_t claim(int64_t batch_id)
{
	return claim_on(batch_id, 0, T0 + SEC, NULL);
}

/* nothing_due tells whether a claim of batch_id at now finds nothing; one
 * that finds a job keeps it (callers expect nothing). */
static int nothing_due(int64_t batch_id, int64_t now)
{
	struct claim c = { 0 };
	int rc = store_job_claim(batch_id, 0, 1, now, 0, &c);

	if (rc == 0)
		free(c.args);
	cr_assert_neq(rc, -1, "claim failed");
	return rc == 1;
}

static struct outcome outcome(enum job_state state, int64_t finished_at)
{
	struct outcome o = {
		.state = state, .finished_at = finished_at,
		.run_us = 1500000, .user_us = 1000, .sys_us = 500,
		.max_rss_kb = 2048,
		.exit_code = state == JS_SUCCEEDED ? 0 : -1,
		.busy_us = -1,
	};

	return o;
}

/* finish records state for job_id (attempt 1, started at T0 + 1 s on
 * slot 0).  A PostgreSQL store never reports a batch's end here. */
static void finish(int64_t job_id, int64_t batch_id, enum job_state state,
		   int64_t finished_at)
{
	struct outcome o = outcome(state, finished_at);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	int done = -1;

	cr_assert_eq(store_job_finish(job_id, batch_id, &o, &w, &done), 0);
	cr_assert_eq(done, 0, "batch_done is always 0 with PostgreSQL");
}

/* ---- what store_tick reports ---- */

#define SEEN_MAX 32

struct seen {
	int njobs, ncancels, nbatches, nevents, fenced;
	struct {
		int64_t id, batch_id;
		enum job_state st;
		int attempts;
	} jobs[SEEN_MAX];
	int64_t cancels[SEEN_MAX];
	struct batch_info batches[SEEN_MAX];
	struct change events[SEEN_MAX];     /* batch: a new reference */
};

static void on_job(int64_t job_id, int64_t batch_id, enum job_state st,
		   int attempts, void *ctx)
{
	struct seen *s = ctx;

	if (s->njobs < SEEN_MAX) {
		s->jobs[s->njobs].id = job_id;
		s->jobs[s->njobs].batch_id = batch_id;
		s->jobs[s->njobs].st = st;
		s->jobs[s->njobs].attempts = attempts;
	}
	s->njobs++;
}

static void on_cancel(int64_t job_id, void *ctx)
{
	struct seen *s = ctx;

	if (s->ncancels < SEEN_MAX)
		s->cancels[s->ncancels] = job_id;
	s->ncancels++;
}

static void on_batch(const struct batch_info *b, void *ctx)
{
	struct seen *s = ctx;

	if (s->nbatches < SEEN_MAX)
		s->batches[s->nbatches] = *b;
	s->nbatches++;
}

static void on_fence(void *ctx)
{
	((struct seen *)ctx)->fenced++;
}

static void on_event(const struct change *c, void *ctx)
{
	struct seen *s = ctx;

	if (s->nevents < SEEN_MAX) {
		s->events[s->nevents] = *c;
		json_incref(c->batch);
		s->events[s->nevents].batch = c->batch;
	}
	s->nevents++;
}

static void seen_free(struct seen *s)
{
	int i;

	for (i = 0; i < s->nevents && i < SEEN_MAX; i++)
		json_decref(s->events[i].batch);
	memset(s, 0, sizeof(*s));
}

static struct store_tick callbacks(struct seen *s)
{
	struct store_tick cb = {
		.job = on_job, .cancel = on_cancel, .batch = on_batch,
		.fence = on_fence, .event = on_event, .ctx = s,
		.busy = 1, .pool_size = 4,
	};

	return cb;
}

/* tick runs store_tick as the loop does, then commits the turn. */
static void tick(struct seen *s, int64_t now)
{
	struct store_tick cb = callbacks(s);

	cr_assert_eq(store_tick(now, &cb), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(s->fenced, 0, "the node fenced itself");
}

/* tick_events ticks until at least want events arrived (5 s at most: the
 * log is read below the oldest transaction running in the cluster, so a
 * moment's wait on another connection's transaction is allowed). */
static void tick_events(struct seen *s, int want)
{
	int i;

	for (i = 0; i < 100 && s->nevents < want; i++) {
		tick(s, T0 + 20 * SEC);
		if (s->nevents < want)
			usleep(50000);
	}
	cr_assert_geq(s->nevents, want, "want %d events, got %d", want,
		      s->nevents);
}

/* tick_jobs ticks until cb.job reported at least want jobs (3 s at most:
 * the reaper runs every 0.5 s, and only while this node's own lease is
 * fresh). */
static void tick_jobs(struct seen *s, int64_t now, int want)
{
	int i;

	for (i = 0; i < 60 && s->njobs < want; i++) {
		tick(s, now);
		if (s->njobs < want)
			usleep(50000);
	}
}

static const struct batch_info *seen_batch(const struct seen *s, int64_t id)
{
	int i;

	for (i = (s->nbatches < SEEN_MAX ? s->nbatches : SEEN_MAX) - 1; i >= 0;
	     i--)
		if (s->batches[i].id == id)
			return &s->batches[i];
	return NULL;
}

/* ---- the store ---- */

Test(store_pg, opens_as_postgresql)
{
	cr_assert_str_eq(store_backend(), "postgresql");
	cr_assert_eq(store_dispatch_after_commit(), 1,
		     "claims are committed before a worker sees them");
	cr_assert_eq(store_ping(), 0);
	cr_assert_gt(pg_node_id, 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_nodes WHERE id = %lld "
			     "AND name = 'unit-a' AND state = 'alive'",
			     (long long)pg_node_id), 1,
		     "this process is a registered incarnation");
	cr_assert_null(store_batch_json(1));
	cr_assert_null(store_job_json(1));
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_dirty(), 0);
}

/* ---- submission and reads ---- */

Test(store_pg, insert_then_read_batch_and_jobs)
{
	json_t *req = parse("{\"name\": \"seed\", \"concurrency\": 5, "
		"\"priority\": 2, \"jobs\": ["
		"{\"kind\": \"sleep\", \"name\": \"n1\", \"args\": {\"seconds\": 2}, "
		"\"timeout_s\": 2.5, \"max_attempts\": 4, \"retry_on\": [3, "
		"\"SIGKILL\"], \"retry_backoff_s\": 0.25}, "
		"{\"kind\": \"noop\"}, {\"kind\": \"noop\"}]}");
	json_t *want_retry = parse("[3, \"SIGKILL\"]"), *ids = NULL, *b, *j;
	int64_t id = 0, bid = 0;
	enum job_state st = JS__COUNT;

	cr_assert_eq(store_batch_insert(req, T0, NULL, NULL, &id, &ids), 0);
	json_decref(req);
	cr_assert_eq(store_dirty(), 1, "the insert waits for the turn's flush");
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batches"), 0,
		     "not visible to other nodes before the commit");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_dirty(), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs"), 3);
	cr_assert_eq(id, 1);
	cr_assert_eq(json_array_size(ids), 3);
	cr_assert_str_eq(json_string_value(json_array_get(ids, 0)),
			 "j_000000000001");
	cr_assert_str_eq(json_string_value(json_array_get(ids, 2)),
			 "j_000000000003");
	j = store_job_ids(id);
	cr_assert(json_equal(j, ids), "store_job_ids lists the same ids");
	json_decref(j);
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

	j = job(1);
	cr_assert_str_eq(str(j, "id"), "j_000000000001");
	cr_assert_str_eq(str(j, "batch_id"), "b_000000000001");
	cr_assert_eq(integer(j, "index"), 0);
	cr_assert_str_eq(str(j, "name"), "n1");
	cr_assert_str_eq(str(j, "kind"), "sleep");
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(json_object_get(j, "args"), "seconds"), 2);
	cr_assert_float_eq(number(j, "timeout_s"), 2.5, 1e-9);
	cr_assert_eq(integer(j, "attempts"), 0);
	cr_assert_eq(integer(j, "max_attempts"), 4);
	cr_assert(json_equal(json_object_get(j, "retry_on"), want_retry));
	cr_assert_float_eq(number(j, "retry_backoff_s"), 0.25, 1e-9);
	assert_time(j, "created_at", T0);
	cr_assert(is_null(j, "worker"));
	cr_assert(is_null(j, "started_at"));
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 0);
	json_decref(j);
	json_decref(want_retry);

	j = job(3);
	cr_assert_eq(integer(j, "index"), 2);
	cr_assert(is_null(j, "name"));
	cr_assert_str_eq(str(j, "kind"), "noop");
	cr_assert_eq(json_object_size(json_object_get(j, "args")), 0);
	cr_assert_eq(integer(j, "max_attempts"), 1);
	cr_assert_eq(json_array_size(json_object_get(j, "retry_on")), 0);
	cr_assert_float_eq(number(j, "retry_backoff_s"), 1.0, 1e-9);
	cr_assert(is_null(j, "timeout_s"));
	json_decref(j);

	cr_assert_eq(store_job_batch(3, &bid, &st, NULL), 0);
	cr_assert_eq(bid, id);
	cr_assert_eq(st, JS_QUEUED);
	cr_assert_eq(store_job_batch(4, &bid, &st, NULL), -1);
}

Test(store_pg, ids_are_contiguous_per_batch_and_count_up)
{
	json_t *ids;
	int64_t a = insert_sleep(2, "", ""), b, i;
	char want[32];

	b = insert_at("{\"jobs\": [{\"kind\": \"noop\"}, {\"kind\": \"noop\"}, "
		      "{\"kind\": \"noop\"}]}", T0, &ids);
	cr_assert_eq(b, a + 1);
	for (i = 0; i < 3; i++) {
		fmt_id(want, sizeof(want), 'j', 3 + i);
		cr_assert_str_eq(json_string_value(json_array_get(ids, i)),
				 want);
	}
	json_decref(ids);
	/* index i of a batch is first_job + i */
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs j JOIN jp_batches b "
			     "ON b.id = j.batch_id WHERE j.id <> b.first_job "
			     "+ j.idx"), 0);
}

/* ---- lists ---- */

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

/* assert_page checks page's items (batch ids or job indexes) and its
 * next_cursor (NULL: null); it takes page. */
static void assert_page(json_t *page, const char *key, const int64_t *want,
			size_t n_want, const char *next)
{
	int64_t got[16];
	size_t n, i;
	const json_t *cur;

	cr_assert_not_null(page, "the list failed");
	n = page_ids(page, key, got, 16);
	cur = json_object_get(page, "next_cursor");
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

Test(store_pg, job_list_pages_in_index_order)
{
	const int64_t p1[] = { 0, 1 }, p2[] = { 2, 3 }, p3[] = { 4 };
	const int64_t all[] = { 0, 1, 2, 3, 4 };
	int64_t id;

	insert_sleep(3, "", "");        /* jobs of other batches around it */
	id = insert_sleep(5, "", "");
	insert_sleep(2, "", "");
	assert_page(store_job_list(id, NULL, -1, 2), "index", p1, 2, "j1");
	assert_page(store_job_list(id, NULL, 1, 2), "index", p2, 2, "j3");
	assert_page(store_job_list(id, NULL, 3, 2), "index", p3, 1, NULL);
	assert_page(store_job_list(id, NULL, 4, 2), "index", NULL, 0, NULL);
	assert_page(store_job_list(id, NULL, -1, 5), "index", all, 5, NULL);
	assert_page(store_job_list(id, NULL, -1, 100), "index", all, 5, NULL);
}

Test(store_pg, job_list_state_filter_and_batch_list)
{
	const int64_t running[] = { 0, 1 }, queued[] = { 2, 3, 4 };
	const int64_t newest[] = { 3, 2 }, rest[] = { 1 };
	int64_t id;

	insert_sleep(1, "", "");
	id = insert_sleep(5, "", "");
	insert_sleep(1, "", "");
	claim(id);
	claim(id);
	cr_assert_eq(store_flush(), 0);
	assert_page(store_job_list(id, "running", -1, 10), "index", running, 2,
		    NULL);
	assert_page(store_job_list(id, "queued", -1, 2), "index", queued, 2,
		    "j3");
	assert_page(store_job_list(id, "queued", 3, 2), "index", queued + 2, 1,
		    NULL);
	assert_page(store_job_list(id, "succeeded", -1, 2), "index", NULL, 0,
		    NULL);
	assert_page(store_job_list(999, NULL, -1, 2), "index", NULL, 0, NULL);
	assert_page(store_batch_list(NULL, -1, 2), "id", newest, 2, "b2");
	assert_page(store_batch_list(NULL, 2, 2), "id", rest, 1, NULL);
}

/* ---- claim and finish ---- */

Test(store_pg, claim_takes_lowest_index_and_marks_running)
{
	int64_t id = insert_sleep(3, "\"timeout_s\": 9", "");
	struct claim c = { 0 };
	json_t *j, *w, *b;

	cr_assert_eq(store_job_claim(id, 2, 4242, T0 + SEC, 0, &c), 0);
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.batch_id, id);
	cr_assert_eq(c.created_at, T0);
	cr_assert_eq(c.queued_at, T0);
	cr_assert_eq(c.attempts, 1);
	cr_assert_eq(c.idx, 0);
	cr_assert_eq(c.max_attempts, 1);
	cr_assert_float_eq(c.timeout_s, 9.0, 1e-9);
	cr_assert_str_eq(c.kind, "sleep");
	cr_assert_str_eq(c.args, "{\"seconds\":1}");
	free(c.args);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs WHERE state = "
			     "'running'"), 0, "the claim is the turn's until "
		     "it commits");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(sql_i64("SELECT node_id FROM jp_jobs WHERE id = 1"),
		     pg_node_id, "the fencing token is this incarnation");

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "running");
	cr_assert_eq(integer(j, "attempts"), 1);
	w = json_object_get(j, "worker");
	cr_assert(json_is_object(w));
	cr_assert_eq(integer(w, "slot"), 2);
	cr_assert_eq(integer(w, "pid"), 4242);
	cr_assert_str_eq(str(w, "node"), "unit-a");
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
	cr_assert(nothing_due(id, T0 + 2 * SEC));
	assert_counts(id, 3, 0, 3, 0, 0, 0, 0);
	/* this node's counter shard holds the deltas */
	cr_assert_eq(sql_i64("SELECT running FROM jp_batch_counts WHERE "
			     "batch_id = %lld AND node_id = %lld",
			     (long long)id, (long long)pg_node_id), 3);
}

/* A batch another node deleted while this node's scheduler still had it
 * (GET said it had queued jobs a moment before): nothing to claim, as with
 * SQLite, not a failed write that degrades the store. */
Test(store_pg, claim_from_a_missing_batch_finds_nothing)
{
	int64_t id = insert_sleep(1, "", "");
	struct claim c = { 0 };

	cr_assert_eq(store_job_claim(999, 0, 1, T0 + SEC, 0, &c), 1,
		     "no such batch: nothing to claim");
	cr_assert_eq(store_degraded(), 0, "the store still takes writes");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(claim(id), 1);
	cr_assert_eq(store_flush(), 0);
}

Test(store_pg, claims_skip_rows_another_node_is_claiming)
{
	int64_t id = insert_sleep(3, "", "");

	/* another node's claim holds job 1's row in its open transaction */
	sql_do("BEGIN");
	sql_do("SELECT id FROM jp_jobs WHERE id = 1 FOR UPDATE");
	cr_assert_eq(claim(id), 2, "job 1 is locked: skipped, not waited for");
	cr_assert_eq(store_flush(), 0);
	sql_do("COMMIT");
	cr_assert_eq(claim(id), 1);
}

Test(store_pg, finish_succeeded_then_batch_settles)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id), j2;
	struct outcome o = outcome(JS_SUCCEEDED, T0 + 3 * SEC);
	struct slot w = { .index = 1, .pid = 777, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *result = parse("{\"slept_ms\": 1500}");
	json_t *j, *t, *h, *b;
	int done = -1;
	const int64_t listed[] = { 1 };

	o.result = result;
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 0);
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
	cr_assert_str_eq(str(json_object_get(h, "worker"), "node"), "unit-a");
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
	assert_stored(id, "running", 0);

	j2 = claim(id);
	finish(j2, id, JS_SUCCEEDED, T0 + 5 * SEC);
	assert_stored(id, "running", 0);        /* settled after the commit */
	cr_assert_eq(store_flush(), 0);
	assert_stored(id, "succeeded", T0 + 5 * SEC);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "succeeded");
	assert_time(b, "started_at", T0 + SEC);
	assert_time(b, "finished_at", T0 + 5 * SEC);
	cr_assert_float_eq(number(b, "progress"), 1.0, 1e-9);
	t = json_object_get(b, "timings");
	cr_assert_float_eq(number(t, "makespan_ms"), 4000.0, 1e-6);
	cr_assert_float_eq(number(t, "total_run_ms"), 3000.0, 1e-6);
	cr_assert_float_eq(number(t, "parallelism"), 0.75, 1e-9);
	json_decref(b);
	assert_counts(id, 2, 0, 0, 2, 0, 0, 0);
	assert_page(store_batch_list("succeeded", -1, 10), "id", listed, 1,
		    NULL);
	assert_page(store_batch_list("running", -1, 10), "id", NULL, 0, NULL);
}

Test(store_pg, a_failed_job_settles_the_batch_failed)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t j1 = claim(id), j2 = claim(id);
	struct outcome o = outcome(JS_FAILED, T0 + 2 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j, *h;
	int done = -1;

	o.exit_code = 3;
	o.error = "exited with code 3";
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);
	assert_stored(id, "running", 0);
	finish(j2, id, JS_TIMED_OUT, T0 + 3 * SEC);
	cr_assert_eq(store_flush(), 0);

	j = job(j1);
	cr_assert_str_eq(str(j, "state"), "failed");
	cr_assert_eq(integer(j, "exit_code"), 3);
	cr_assert_str_eq(str(j, "error"), "exited with code 3");
	h = json_array_get(json_object_get(j, "history"), 0);
	cr_assert_str_eq(str(h, "state"), "failed");
	cr_assert_str_eq(str(h, "error"), "exited with code 3");
	json_decref(j);
	assert_job_state(j2, "timed_out");
	assert_batch_state(id, "failed");
	assert_stored(id, "failed", T0 + 3 * SEC);
	assert_counts(id, 2, 0, 0, 0, 1, 1, 0);
}

/* ---- retry ---- */

Test(store_pg, retry_requeues_with_backoff)
{
	int64_t id = insert_sleep(1, "\"max_attempts\": 3", "");
	int64_t nb = T0 + 60 * SEC;
	struct outcome o = outcome(JS_FAILED, T0 + 3 * SEC);
	struct slot w = { .index = 2, .pid = 1002, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	struct claim c = { 0 };
	json_t *j, *h;
	int attempts = 0;

	o.exit_code = 3;
	o.error = "exited with a code";
	cr_assert_eq(claim_on(id, 2, T0 + SEC, &attempts), 1);
	cr_assert_eq(attempts, 1);
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
	json_decref(j);
	assert_counts(id, 1, 1, 0, 0, 0, 0, 0);
	assert_batch_state(id, "running");
	assert_stored(id, "running", 0);
	cr_assert_eq(sql_i64("SELECT not_before FROM jp_jobs WHERE id = 1"),
		     nb);

	/* not due before not_before (5 ms of slack for clock skew) */
	cr_assert(nothing_due(id, T0 + 4 * SEC));
	cr_assert(nothing_due(id, nb - 5001));
	assert_counts(id, 1, 1, 0, 0, 0, 0, 0);
	cr_assert_eq(store_job_claim(id, 1, 1001, nb - 5000, 0, &c), 0,
		     "due within the slack");
	cr_assert_eq(c.job_id, 1);
	cr_assert_eq(c.attempts, 2);
	cr_assert_eq(c.queued_at, T0 + 3 * SEC, "queued again when it failed");
	cr_assert_eq(c.max_attempts, 3);
	free(c.args);
	assert_counts(id, 1, 0, 1, 0, 0, 0, 0);
}

Test(store_pg, retry_then_success_keeps_both_attempts)
{
	int64_t id = insert_sleep(1, "\"max_attempts\": 2", "");
	struct outcome o = outcome(JS_FAILED, T0 + 3 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	struct claim c = { 0 };
	json_t *j, *h;
	int done = -1;

	o.exit_code = 1;
	claim(id);
	cr_assert_eq(store_job_retry(1, id, &o, &w, T0 + 4 * SEC), 0);
	cr_assert_eq(store_job_claim(id, 0, 1000, T0 + 4 * SEC, 1, &c), 0);
	cr_assert_eq(c.attempts, 2);
	free(c.args);
	o = outcome(JS_SUCCEEDED, T0 + 6 * SEC);
	w.started_at = T0 + 4 * SEC;
	w.job_attempts = 2;
	cr_assert_eq(store_job_finish(1, id, &o, &w, &done), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);
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
	assert_counts(id, 1, 0, 0, 1, 0, 0, 0);
	assert_batch_state(id, "succeeded");
	assert_stored(id, "succeeded", T0 + 6 * SEC);
}

Test(store_pg, requeue_puts_the_job_back_first)
{
	int64_t id = insert_sleep(2, "\"max_attempts\": 3", "");
	int attempts = 0;
	json_t *j;

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(store_job_requeue(1, id, 1, 0), 0);
	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued");
	cr_assert_eq(integer(j, "attempts"), 0, "the attempt was undone");
	cr_assert(is_null(j, "worker"));
	json_decref(j);
	assert_counts(id, 2, 2, 0, 0, 0, 0, 0);
	cr_assert_eq(claim_on(id, 1, T0 + 2 * SEC, &attempts), 1);
	cr_assert_eq(attempts, 1);
}

/* ---- cancels ---- */

Test(store_pg, job_cancel_queued)
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
	assert_time(j, "finished_at", T0 + 2 * SEC);
	json_decref(j);
	assert_counts(id, 3, 1, 1, 0, 0, 0, 1);

	cr_assert_eq(store_job_cancel_queued(3, id, T0 + 2 * SEC, &done), 1,
		     "already canceled");
	cr_assert_eq(store_job_cancel_queued(running, id, T0, &done), 1,
		     "running jobs are not canceled here");
	assert_job_state(running, "running");
	assert_counts(id, 3, 1, 1, 0, 0, 0, 1);

	cr_assert_eq(store_job_cancel_queued(2, id, T0 + 2 * SEC, &done), 0);
	cr_assert_eq(done, 0);
	cr_assert(nothing_due(id, T0 + 3 * SEC), "nothing left to claim");
	finish(running, id, JS_SUCCEEDED, T0 + 3 * SEC);
	cr_assert_eq(store_flush(), 0);
	/* a job canceled on its own is a job that did not succeed */
	assert_batch_state(id, "failed");
	assert_stored(id, "failed", T0 + 3 * SEC);
	assert_counts(id, 3, 0, 0, 1, 0, 0, 2);
}

Test(store_pg, job_cancel_of_the_last_queued_job_settles)
{
	int64_t id = insert_sleep(1, "", "");
	int done = -1;

	cr_assert_eq(store_job_cancel_queued(1, id, T0 + 2 * SEC, &done), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);
	assert_batch_state(id, "failed");
	assert_stored(id, "failed", T0 + 2 * SEC);
}

struct canceled_ids {
	int n;
	int64_t ids[8];
	int attempts[8];
};

static void note_canceled(int64_t job_id, int attempts, void *ctx)
{
	struct canceled_ids *c = ctx;

	if (c->n < 8) {
		c->ids[c->n] = job_id;
		c->attempts[c->n] = attempts;
	}
	c->n++;
}

Test(store_pg, batch_cancel_with_nothing_running)
{
	int64_t id = insert_sleep(3, "", "");
	struct canceled_ids seen = { 0 };
	int canceled = -1, done = -1, i;
	json_t *b, *j;

	cr_assert_eq(store_batch_cancel(id, T0 + 2 * SEC, &canceled, &done,
					note_canceled, &seen), 0);
	cr_assert_eq(canceled, 3);
	cr_assert_eq(done, 0);
	cr_assert_eq(seen.n, 3, "each canceled job is reported");
	for (i = 0; i < 3; i++) {
		cr_assert_eq(seen.ids[i], i + 1);
		cr_assert_eq(seen.attempts[i], 0);
	}
	cr_assert_eq(store_flush(), 0);
	b = batch(id);
	cr_assert_str_eq(str(b, "state"), "canceled");
	assert_time(b, "finished_at", T0 + 2 * SEC);
	cr_assert_float_eq(number(b, "progress"), 1.0, 1e-9);
	json_decref(b);
	assert_stored(id, "canceled", T0 + 2 * SEC);
	assert_counts(id, 3, 0, 0, 0, 0, 0, 3);
	j = job(2);
	cr_assert_str_eq(str(j, "state"), "canceled");
	cr_assert_str_eq(str(j, "error"), "canceled before it started");
	json_decref(j);
	cr_assert(nothing_due(id, T0 + 3 * SEC));
}

Test(store_pg, batch_cancel_waits_for_running_jobs)
{
	int64_t id = insert_sleep(3, "", "");
	int64_t j1 = claim(id);
	int canceled = -1, done = -1;

	cr_assert_eq(store_batch_cancel(id, T0 + 2 * SEC, &canceled, &done,
					NULL, NULL), 0);
	cr_assert_eq(canceled, 2);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);
	assert_batch_state(id, "running");
	assert_stored(id, "running", 0);
	assert_counts(id, 3, 0, 1, 0, 0, 0, 2);
	assert_job_state(j1, "running");

	finish(j1, id, JS_CANCELED, T0 + 3 * SEC);
	cr_assert_eq(store_flush(), 0);
	assert_batch_state(id, "canceled");
	assert_stored(id, "canceled", T0 + 3 * SEC);
	assert_counts(id, 3, 0, 0, 0, 0, 0, 3);
}

Test(store_pg, batch_cancel_after_some_succeeded_is_canceled)
{
	int64_t id = insert_sleep(2, "", "");
	int canceled = -1, done = -1;

	finish(claim(id), id, JS_SUCCEEDED, T0 + 2 * SEC);
	cr_assert_eq(store_batch_cancel(id, T0 + 3 * SEC, &canceled, &done,
					NULL, NULL), 0);
	cr_assert_eq(canceled, 1);
	cr_assert_eq(done, 0);
	cr_assert_eq(store_flush(), 0);
	assert_batch_state(id, "canceled");
	assert_stored(id, "canceled", T0 + 3 * SEC);
	assert_counts(id, 2, 0, 0, 1, 0, 0, 1);
}

Test(store_pg, batch_delete_removes_batch_and_jobs)
{
	int64_t a = insert_sleep(1, "", ""), b = insert_sleep(2, "", "");

	finish(claim(a), a, JS_SUCCEEDED, T0 + 2 * SEC);
	cr_assert_eq(store_flush(), 0);
	assert_stored(a, "succeeded", T0 + 2 * SEC);
	cr_assert_eq(store_batch_delete(a), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_null(store_batch_json(a));
	cr_assert_null(store_job_json(1));
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs WHERE batch_id = "
			     "%lld", (long long)a), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batch_counts WHERE "
			     "batch_id = %lld", (long long)a), 0);
	assert_counts(b, 2, 2, 0, 0, 0, 0, 0);
	cr_assert_eq(insert_sleep(1, "", ""), b + 1, "ids are never reused");
}

/* ---- the concurrency gate ---- */

Test(store_pg, gate_holds_the_limit_within_a_turn_and_across_commits)
{
	int64_t id = insert_sleep(4, "", "\"concurrency\": 2");

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(claim(id), 2);
	cr_assert(nothing_due(id, T0 + SEC), "two claimed in this turn");
	cr_assert_eq(store_flush(), 0);
	cr_assert(nothing_due(id, T0 + SEC), "two running, committed");
	assert_counts(id, 4, 2, 2, 0, 0, 0, 0);
	finish(1, id, JS_SUCCEEDED, T0 + 2 * SEC);
	cr_assert_eq(claim(id), 3, "the finish in this turn made room");
	cr_assert(nothing_due(id, T0 + 2 * SEC));
	cr_assert_eq(store_flush(), 0);
	assert_counts(id, 4, 1, 2, 1, 0, 0, 0);
}

Test(store_pg, gate_counts_other_nodes_shards)
{
	int64_t id = insert_sleep(4, "", "\"concurrency\": 2");
	int64_t other = other_node("unit-b", 0);
	struct batch_info info;
	struct seen s = { 0 };
	const struct batch_info *bi;

	run_on_node(1, id, other, "unit-b", T0 + SEC);
	run_on_node(2, id, other, "unit-b", T0 + SEC);
	cr_assert(nothing_due(id, T0 + 2 * SEC),
		  "another node's shard says 2 running: no room");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_batch_info(id, &info), 0);
	cr_assert_eq(info.concurrency, 2);
	cr_assert_eq(info.queued, 2, "shards are summed");
	cr_assert_eq(info.running, 2, "shards are summed");
	assert_counts(id, 4, 2, 2, 0, 0, 0, 0);
	tick(&s, T0 + 2 * SEC);
	cr_assert_not_null(bi = seen_batch(&s, id), "cb.batch saw b%lld",
			   (long long)id);
	cr_assert_eq(bi->running, 2);
	cr_assert_eq(bi->queued, 2);
	cr_assert_eq(bi->concurrency, 2);
	seen_free(&s);

	/* the other node finishes one */
	sql_do("UPDATE jp_jobs SET state = 'succeeded', finished_at = %lld "
	       "WHERE id = 1", (long long)(T0 + 2 * SEC));
	sql_do("UPDATE jp_batch_counts SET running = running - 1, succeeded = "
	       "succeeded + 1 WHERE batch_id = %lld AND node_id = %lld",
	       (long long)id, (long long)other);
	cr_assert_eq(claim_on(id, 0, T0 + 3 * SEC, NULL), 3);
	cr_assert(nothing_due(id, T0 + 3 * SEC), "1 there + 1 here = 2");
	cr_assert_eq(store_flush(), 0);
	assert_counts(id, 4, 1, 2, 1, 0, 0, 0);
}

Test(store_pg, gate_skips_a_batch_another_node_is_claiming_from)
{
	int64_t lim = insert_sleep(2, "", "\"concurrency\": 2");
	int64_t free_b = insert_sleep(2, "", "");

	/* another node's claim holds the batch rows until it commits: this
	 * node does not wait on them */
	sql_do("BEGIN");
	sql_do("SELECT id FROM jp_batches WHERE id IN (%lld, %lld) "
	       "FOR NO KEY UPDATE", (long long)lim, (long long)free_b);
	cr_assert(nothing_due(lim, T0 + SEC), "gate row locked: try later");
	cr_assert_eq(claim(free_b), 3,
		     "an unlimited batch's claim does not need its row");
	cr_assert_eq(store_flush(), 0);
	sql_do("COMMIT");
	cr_assert_eq(claim(lim), 1);
	cr_assert_eq(store_flush(), 0);
}

Test(store_pg, canceled_limited_batch_gives_nothing)
{
	int64_t id = insert_sleep(3, "", "\"concurrency\": 1");

	sql_do("UPDATE jp_batches SET cancel_req = true WHERE id = %lld",
	       (long long)id);
	cr_assert(nothing_due(id, T0 + SEC));
}

/* A batch another node started whose row it could not mark (its
 * P_BATCH_STARTED skips a locked row): the look that marks it must keep
 * the time its first job started, as GET showed before. */
Test(store_pg, look_keeps_the_batchs_start_time)
{
	int64_t id = insert_sleep(2, "", "");
	int64_t other = other_node("unit-b", 0);
	struct seen s = { 0 };
	char want[40];
	json_t *b;

	run_on_node(1, id, other, "unit-b", T0 + SEC);
	b = batch(id);
	assert_time(b, "started_at", T0 + SEC);
	json_decref(b);
	tick(&s, T0 + 2 * SEC);
	seen_free(&s);
	assert_stored(id, "running", 0);
	b = batch(id);
	fmt_time(want, sizeof(want), T0 + SEC);
	cr_assert_str_eq(str(b, "started_at"), want, "batch started_at after "
			 "the look: want %s (its first job's start), got %s",
			 want, str(b, "started_at"));
	json_decref(b);
}

/* ---- fencing ---- */

Test(store_pg, fencing_refuses_an_outcome_of_another_incarnation)
{
	int64_t id = insert_sleep(1, "\"max_attempts\": 3", "");
	int64_t other = other_node("unit-a", 0), j1 = claim(id);
	struct outcome o = outcome(JS_SUCCEEDED, T0 + 3 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	int64_t stale = pg_stale_outcomes();
	char st[32];
	json_t *j;
	int done = -1;

	cr_assert_eq(store_flush(), 0);
	/* the reaper gave the job to another incarnation meanwhile */
	sql_do("UPDATE jp_jobs SET node_id = %lld WHERE id = %lld",
	       (long long)other, (long long)j1);
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0,
		     "a stale outcome is no error");
	cr_assert_eq(done, 0);
	cr_assert_eq(store_job_retry(j1, id, &o, &w, T0 + 9 * SEC), 0);
	cr_assert_eq(store_job_requeue(j1, id, 1, 0), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_degraded(), 0);
	cr_assert_eq(pg_stale_outcomes(), stale + 2, "both outcomes counted");

	sql_text(st, sizeof(st), "SELECT state FROM jp_jobs WHERE id = %lld",
		 (long long)j1);
	cr_assert_str_eq(st, "running", "the row is not changed");
	cr_assert_eq(sql_i64("SELECT node_id FROM jp_jobs WHERE id = %lld",
			     (long long)j1), other);
	j = job(j1);
	cr_assert_eq(integer(j, "attempts"), 1);
	cr_assert(is_null(j, "finished_at"));
	cr_assert(is_null(j, "result"));
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 0,
		     "no history entry from a stale outcome");
	json_decref(j);
	assert_counts(id, 1, 0, 1, 0, 0, 0, 0);
	assert_stored(id, "running", 0);
}

Test(store_pg, fencing_refuses_an_outcome_of_an_earlier_attempt)
{
	int64_t id = insert_sleep(1, "\"max_attempts\": 3", "");
	int64_t j1 = claim(id);
	struct outcome o = outcome(JS_FAILED, T0 + 3 * SEC);
	struct slot w = { .index = 0, .pid = 1000, .started_at = T0 + SEC,
			  .job_attempts = 1 };
	json_t *j;
	int done = -1;

	cr_assert_eq(store_flush(), 0);
	/* attempt 2 of the job runs now (same incarnation) */
	sql_do("UPDATE jp_jobs SET attempts = 2 WHERE id = %lld",
	       (long long)j1);
	cr_assert_eq(store_job_finish(j1, id, &o, &w, &done), 0);
	cr_assert_eq(store_flush(), 0);
	j = job(j1);
	cr_assert_str_eq(str(j, "state"), "running");
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 0);
	json_decref(j);
	assert_counts(id, 1, 0, 1, 0, 0, 0, 0);
}

/* ---- the reaper and the tick ---- */

Test(store_pg, reaper_requeues_or_fails_a_dead_nodes_jobs)
{
	int64_t id = insert("{\"jobs\": ["
		"{\"kind\": \"noop\", \"max_attempts\": 2}, "
		"{\"kind\": \"noop\", \"max_attempts\": 1}, "
		"{\"kind\": \"noop\"}]}");
	int64_t ghost = other_node("ghost", 3600);
	int64_t alive = other_node("unit-b", 0);
	struct seen s = { 0 };
	char st[32];
	json_t *j, *h;
	int i, got_a = 0, got_b = 0, attempts = 0;

	run_on_node(1, id, ghost, "ghost", T0 + SEC);
	run_on_node(2, id, ghost, "ghost", T0 + SEC);
	run_on_node(3, id, alive, "unit-b", T0 + SEC);
	assert_counts(id, 3, 0, 3, 0, 0, 0, 0);

	tick_jobs(&s, T0 + 10 * SEC, 2);

	sql_text(st, sizeof(st), "SELECT state FROM jp_nodes WHERE id = %lld",
		 (long long)ghost);
	cr_assert_str_eq(st, "dead", "a lease 1 h old ran out");
	sql_text(st, sizeof(st), "SELECT state FROM jp_nodes WHERE id = %lld",
		 (long long)alive);
	cr_assert_str_eq(st, "alive");
	sql_text(st, sizeof(st), "SELECT state FROM jp_nodes WHERE id = %lld",
		 (long long)pg_node_id);
	cr_assert_str_eq(st, "alive");

	cr_assert_eq(s.njobs, 2, "cb.job for each of the dead node's jobs");
	for (i = 0; i < 2; i++) {
		cr_assert_eq(s.jobs[i].batch_id, id);
		cr_assert_eq(s.jobs[i].attempts, 1);
		if (s.jobs[i].id == 1) {
			got_a = 1;
			cr_assert_eq(s.jobs[i].st, JS_QUEUED);
		} else if (s.jobs[i].id == 2) {
			got_b = 1;
			cr_assert_eq(s.jobs[i].st, JS_FAILED);
		}
	}
	cr_assert(got_a && got_b, "cb.job named jobs 1 and 2");

	j = job(1);
	cr_assert_str_eq(str(j, "state"), "queued", "attempts left: requeued");
	cr_assert_eq(integer(j, "attempts"), 1);
	cr_assert(is_null(j, "started_at"));
	cr_assert(is_null(j, "finished_at"));
	h = json_object_get(j, "history");
	cr_assert_eq(json_array_size(h), 1);
	h = json_array_get(h, 0);
	cr_assert_eq(integer(h, "attempt"), 1);
	cr_assert_str_eq(str(h, "state"), "failed");
	cr_assert_str_eq(str(h, "error"), "node lost");
	assert_time(h, "started_at", T0 + SEC);
	assert_time(h, "finished_at", T0 + 10 * SEC);
	cr_assert_str_eq(str(json_object_get(h, "worker"), "node"), "ghost");
	cr_assert_eq(integer(json_object_get(h, "worker"), "pid"), 4242);
	json_decref(j);
	cr_assert_eq(sql_i64("SELECT node_id FROM jp_jobs WHERE id = 1"), -1);

	j = job(2);
	cr_assert_str_eq(str(j, "state"), "failed", "out of attempts: failed");
	cr_assert_str_eq(str(j, "error"), "node lost");
	assert_time(j, "finished_at", T0 + 10 * SEC);
	cr_assert_eq(json_array_size(json_object_get(j, "history")), 1);
	json_decref(j);

	assert_job_state(3, "running");   /* a live node's job is its own */
	assert_counts(id, 3, 1, 1, 0, 1, 0, 0);

	/* the requeued job runs again, as attempt 2, here */
	cr_assert_eq(claim_on(id, 0, T0 + 11 * SEC, &attempts), 1);
	cr_assert_eq(attempts, 2);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(sql_i64("SELECT node_id FROM jp_jobs WHERE id = 1"),
		     pg_node_id);
	seen_free(&s);
}

Test(store_pg, reaper_ends_a_batch_whose_last_job_was_lost)
{
	int64_t id = insert_sleep(1, "", "");
	int64_t ghost = other_node("ghost", 3600);
	struct seen s = { 0 };

	run_on_node(1, id, ghost, "ghost", T0 + SEC);
	tick_jobs(&s, T0 + 10 * SEC, 1);
	cr_assert_eq(s.njobs, 1);
	cr_assert_eq(s.jobs[0].st, JS_FAILED);
	seen_free(&s);
	cr_assert_eq(store_flush(), 0);
	assert_batch_state(id, "failed");
	assert_stored(id, "failed", T0 + 10 * SEC);
	assert_counts(id, 1, 0, 0, 0, 1, 0, 0);
}

Test(store_pg, tick_reports_cancels_of_this_nodes_running_jobs)
{
	int64_t id = insert_sleep(3, "", ""), other_b;
	int64_t other = other_node("unit-b", 0);
	struct seen s = { 0 };
	const struct batch_info *bi;

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(claim(id), 2);
	cr_assert_eq(store_flush(), 0);
	other_b = insert_sleep(1, "", "");
	run_on_node(4, other_b, other, "unit-b", T0 + SEC);
	/* another node took cancels of job 2 (ours) and job 4 (its own) */
	sql_do("UPDATE jp_jobs SET cancel_req = true WHERE id IN (2, 4)");
	tick(&s, T0 + 2 * SEC);
	cr_assert_eq(s.ncancels, 1, "only this node's running job");
	cr_assert_eq(s.cancels[0], 2);
	cr_assert_not_null(bi = seen_batch(&s, id));
	cr_assert_eq(bi->queued, 1);
	cr_assert_eq(bi->running, 2);
	cr_assert_eq(bi->cancel_req, 0);
	cr_assert_not_null(seen_batch(&s, other_b));
	seen_free(&s);
}

Test(store_pg, tick_reports_a_batch_cancel_asked_elsewhere)
{
	int64_t id = insert_sleep(2, "", "");
	struct seen s = { 0 };
	const struct batch_info *bi;

	cr_assert_eq(claim(id), 1);
	cr_assert_eq(store_flush(), 0);
	sql_do("UPDATE jp_batches SET cancel_req = true WHERE id = %lld",
	       (long long)id);
	tick(&s, T0 + 2 * SEC);
	cr_assert_eq(s.ncancels, 1);
	cr_assert_eq(s.cancels[0], 1);
	cr_assert_not_null(bi = seen_batch(&s, id));
	cr_assert_eq(bi->cancel_req, 1);
	seen_free(&s);
}

/* ---- idempotency ---- */

#define HASH "0123456789abcdef0123456789abcdef"

static json_t *noop_body(void)
{
	return parse("{\"jobs\": [{\"kind\": \"noop\"}, {\"kind\": \"noop\"}]}");
}

Test(store_pg, idempotency_key_round_trip)
{
	json_t *body = noop_body(), *ids = NULL;
	int64_t id = 0, bid = 0;
	char got[33] = "";

	cr_assert_eq(store_batch_insert(body, T0 + 10 * SEC, "key-1", HASH,
					&id, &ids), 0);
	json_decref(body);
	json_decref(ids);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_idem_get("key-1", T0, got, &bid), 0);
	cr_assert_str_eq(got, HASH);
	cr_assert_eq(bid, id);
	cr_assert_eq(store_idem_get("key-1", T0 + 10 * SEC + 1, got, &bid), 1,
		     "expired");
	cr_assert_eq(store_idem_get("key-2", 0, got, &bid), 1);
	cr_assert_eq(store_batch_delete(id), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_idem_get("key-1", 0, got, &bid), 1,
		     "deleting the batch forgets its key");
}

Test(store_pg, idempotency_key_taken_by_another_commit)
{
	json_t *body = noop_body(), *ids = NULL;
	int64_t id = 0, bid = 0;
	char got[33] = "";

	/* another node committed this key while the request was checked */
	sql_do("INSERT INTO jp_idempotency (key, body_hash, batch_id, "
	       "created_at) VALUES ('key-1', '%s', 42, %lld)", HASH,
	       (long long)T0);
	cr_assert_eq(store_batch_insert(body, T0 + SEC, "key-1", HASH, &id,
					&ids), 1, "the key was taken");
	json_decref(body);
	cr_assert_null(ids, "no job ids for a batch that was not stored");
	cr_assert_eq(store_flush(), 0, "the turn commits");
	cr_assert_eq(store_degraded(), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batches"), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs"), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batch_counts"), 0);
	cr_assert_eq(store_idem_get("key-1", T0, got, &bid), 0);
	cr_assert_eq(bid, 42, "the first batch keeps its key");
}

Test(store_pg, idempotency_taken_key_leaves_the_turns_other_work)
{
	json_t *body = noop_body(), *ids = NULL;
	int64_t a = 0, id = 0;

	sql_do("INSERT INTO jp_idempotency (key, body_hash, batch_id, "
	       "created_at) VALUES ('key-1', '%s', 42, %lld)", HASH,
	       (long long)T0);
	/* the same turn: another submission, then the duplicate */
	cr_assert_eq(store_batch_insert(body, T0 + SEC, NULL, NULL, &a, &ids),
		     0);
	json_decref(ids);
	ids = NULL;
	cr_assert_eq(store_batch_insert(body, T0 + SEC, "key-1", HASH, &id,
					&ids), 1);
	json_decref(body);
	cr_assert_eq(store_flush(), 0, "the turn commits");
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batches"), 1);
	cr_assert_eq(sql_i64("SELECT id FROM jp_batches"), a);
	assert_counts(a, 2, 2, 0, 0, 0, 0, 0);
	cr_assert_eq(claim(a), sql_i64("SELECT first_job FROM jp_batches"));
	cr_assert_eq(store_flush(), 0);
}

Test(store_pg, idempotency_expired_key_is_replaced)
{
	json_t *body = noop_body(), *ids = NULL;
	int64_t id = 0, bid = 0;
	char got[33] = "";

	sql_do("INSERT INTO jp_idempotency (key, body_hash, batch_id, "
	       "created_at) VALUES ('key-1', 'old', 42, %lld)",
	       (long long)(T0 - cfg.idempotency_ttl_us - SEC));
	cr_assert_eq(store_batch_insert(body, T0, "key-1", HASH, &id, &ids),
		     0, "an expired key is anyone's");
	json_decref(body);
	json_decref(ids);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_idem_get("key-1", T0 - SEC, got, &bid), 0);
	cr_assert_eq(bid, id);
	cr_assert_str_eq(got, HASH);
}

/* ---- the event log ---- */

static struct change job_change(int64_t job_id, int64_t batch_id,
				enum job_state st, int attempts)
{
	struct change c = { .id = job_id, .batch_id = batch_id, .state = st,
			    .attempts = attempts };

	return c;
}

static int64_t event_xid(int n_from_newest)
{
	return sql_i64("SELECT xid::text::bigint FROM jp_events ORDER BY xid "
		       "DESC OFFSET %d LIMIT 1", n_from_newest);
}

Test(store_pg, event_log_round_trip)
{
	struct change c = job_change(7, 3, JS_RUNNING, 1);
	struct seen s = { 0 };
	const struct change *e;

	cr_assert_eq(store_events_append(&c, 1), 0);
	cr_assert_eq(store_dirty(), 1, "in the turn's transaction");
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_events"), 1);
	tick_events(&s, 1);
	cr_assert_eq(s.nevents, 1);
	e = &s.events[0];
	cr_assert_eq(e->is_batch, 0);
	cr_assert_eq(e->id, 7);
	cr_assert_eq(e->batch_id, 3);
	cr_assert_eq(e->state, JS_RUNNING);
	cr_assert_eq(e->attempts, 1);
	cr_assert_neq(e->event_id, 0);
	cr_assert_eq(e->event_id >> 22, event_xid(0),
		     "event id = xid * 2^22 + position");
	cr_assert_eq(e->event_id & ((1 << 22) - 1), 0);
	seen_free(&s);
}

Test(store_pg, event_log_keeps_commit_order_and_ids_increase)
{
	struct change c1 = job_change(1, 1, JS_RUNNING, 1);
	struct change c2 = job_change(1, 1, JS_SUCCEEDED, 1);
	struct change c3[2] = { job_change(2, 1, JS_RUNNING, 1),
				job_change(3, 1, JS_CANCELED, 0) };
	struct change c4 = job_change(4, 1, JS_FAILED, 2);
	struct seen s = { 0 };
	int i;

	cr_assert_eq(store_events_append(&c1, 1), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(store_events_append(&c2, 1), 0);
	cr_assert_eq(store_flush(), 0);
	/* one commit: two appends join one row, in order */
	cr_assert_eq(store_events_append(c3, 2), 0);
	cr_assert_eq(store_events_append(&c4, 1), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_events"), 3);
	tick_events(&s, 5);
	cr_assert_eq(s.nevents, 5);
	cr_assert_eq(s.events[0].state, JS_RUNNING);
	cr_assert_eq(s.events[0].id, 1);
	cr_assert_eq(s.events[1].state, JS_SUCCEEDED);
	cr_assert_eq(s.events[2].id, 2);
	cr_assert_eq(s.events[3].id, 3);
	cr_assert_eq(s.events[3].state, JS_CANCELED);
	cr_assert_eq(s.events[4].id, 4);
	cr_assert_eq(s.events[4].attempts, 2);
	for (i = 1; i < 5; i++)
		cr_assert_gt(s.events[i].event_id, s.events[i - 1].event_id,
			     "event %d's id grows", i);
	cr_assert_eq(s.events[3].event_id, s.events[2].event_id + 1);
	cr_assert_eq(s.events[4].event_id, s.events[2].event_id + 2);
	cr_assert_eq(s.events[0].event_id >> 22, event_xid(2));
	cr_assert_eq(s.events[1].event_id >> 22, event_xid(1));
	cr_assert_eq(s.events[2].event_id >> 22, event_xid(0));
	/* read once: a later tick delivers nothing again */
	for (i = 0; i < 6; i++) {
		tick(&s, T0 + 30 * SEC);
		usleep(50000);
	}
	cr_assert_eq(s.nevents, 5, "no event is delivered twice");
	seen_free(&s);
}

/* store_events_start is the id from which this node delivers: the oldest
 * transaction running anywhere in the cluster then (xids are the
 * cluster's), so an event committed just before may still come when some
 * transaction was running; every event from the start on comes, and none
 * below it. */
Test(store_pg, event_log_starts_where_store_events_start_says)
{
	struct change old = job_change(1, 1, JS_RUNNING, 1);
	struct change fresh = job_change(1, 1, JS_SUCCEEDED, 1);
	struct seen s = { 0 };
	int64_t start, old_id;
	int i, want;

	cr_assert_eq(store_events_append(&old, 1), 0);
	cr_assert_eq(store_flush(), 0);
	old_id = event_xid(0) << 22;
	start = store_events_start();
	cr_assert_gt(start, 0);
	cr_assert_eq(store_events_append(&fresh, 1), 0);
	cr_assert_eq(store_flush(), 0);
	cr_assert_geq(event_xid(0) << 22, start, "a later commit is from it on");
	want = old_id >= start ? 2 : 1;
	tick_events(&s, want);
	cr_assert_eq(s.nevents, want, "the events from the start on, once");
	for (i = 0; i < want; i++)
		cr_assert_geq(s.events[i].event_id, start);
	cr_assert_eq(s.events[want - 1].state, JS_SUCCEEDED);
	seen_free(&s);
}

Test(store_pg, a_settled_batch_is_announced_in_the_log)
{
	int64_t id = insert_sleep(1, "", "");
	struct seen s = { 0 };
	const json_t *b;
	int i, found = -1;

	finish(claim(id), id, JS_SUCCEEDED, T0 + 2 * SEC);
	cr_assert_eq(store_flush(), 0);
	assert_stored(id, "succeeded", T0 + 2 * SEC);
	tick_events(&s, 1);
	for (i = 0; i < s.nevents && i < SEEN_MAX; i++)
		if (s.events[i].is_batch && s.events[i].batch_id == id)
			found = i;
	cr_assert_geq(found, 0, "the batch's end came through the log");
	b = s.events[found].batch;
	cr_assert_str_eq(str(b, "state"), "succeeded");
	cr_assert_str_eq(str(b, "id"), "b_000000000001");
	cr_assert_eq(integer(json_object_get(b, "counts"), "succeeded"), 1);
	cr_assert_neq(s.events[found].event_id, 0);
	seen_free(&s);
}

/* A batch's COPY is finished only when the connection is next needed (the
 * answer is built meanwhile): one that fails there takes the whole turn
 * with it, and nothing of the turn is kept, as with a failed COMMIT. */
Test(store_pg, a_copy_that_fails_late_loses_the_turn)
{
	json_t *body, *ids = NULL;
	int64_t kept, id = 0;

	if (!pg_on)
		return;
	kept = insert_sleep(1, "", "");
	sql_do("ALTER TABLE jp_jobs ADD CONSTRAINT no_boom CHECK "
	       "(kind <> 'boom')");
	body = parse("{\"name\": \"late\", \"jobs\": [{\"kind\": \"noop\"}, "
		     "{\"kind\": \"boom\"}]}");
	/* the rows were sent; PostgreSQL refuses them after this returns */
	cr_assert_eq(store_batch_insert(body, T0, NULL, NULL, &id, &ids), 0);
	json_decref(body);
	json_decref(ids);
	cr_assert_lt(store_flush(), 0, "a turn whose COPY failed committed");
	cr_assert(store_degraded());
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batches WHERE id = %lld",
			     (long long)id), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_jobs WHERE batch_id = "
			     "%lld", (long long)id), 0);
	cr_assert_eq(sql_i64("SELECT count(*) FROM jp_batches WHERE id = %lld",
			     (long long)kept), 1);
}
