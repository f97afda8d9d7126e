/* store.c - the only file that speaks SQL.
 *
 * One connection, one writer (the event loop).  Writes go into a transaction
 * that is opened on the first write of a loop turn and committed by
 * store_flush() at the end of the turn, so a burst of job transitions and
 * submissions costs one fsync, not one each (group commit).  A submission is
 * acknowledged only after the store_flush() that holds it returns 0.
 *
 * Everything the API shows is built here from rows, so another backend can
 * replace this file without touching HTTP or scheduling code.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>

#include "jobpool.h"

extern const char *const schema_migrations[];
extern const size_t schema_migrations_count;

static sqlite3 *db;
static int in_txn;
static int last_error;          /* primary code of the last failed step */
static int degraded;            /* a failure rolled a transaction back */
static int64_t hard_pages;      /* max_page_count, 0: none */

static int start_checkpointer(const char *path);

enum stmt_id {
	S_BATCH_INSERT, S_JOB_INSERT, S_BATCH_GET, S_JOB_GET, S_JOB_BATCH,
	S_NEXT_QUEUED, S_JOB_START, S_BATCH_START, S_JOB_FINISH,
	S_BATCH_FINISH, S_BATCH_SETTLE, S_JOB_REQUEUE, S_BATCH_REQUEUE,
	S_JOB_CANCEL_Q, S_BATCH_CANCEL_Q, S_BATCH_CANCEL_REQ,
	S_BATCH_CANCEL_JOBS, S_BATCH_DEL_JOBS, S_BATCH_DEL, S_BATCH_DEL_KEYS, S_LIST_B,
	S_LIST_B_STATE, S_LIST_J, S_LIST_J_STATE, S_ACTIVE, S_INFO,
	S_IDEM_GET, S_IDEM_PUT, S_JOB_IDS, S_PURGE_PICK, S_PURGE_JOBS,
	S_PURGE_KEYS, S_SIZE, S_COUNTS, S_QUEUED_IDS, S_JOB_RANGE, S_SET_FIRST,
	S_JOB_INSERT_MANY, S_SP, S_SP_RELEASE, S_SP_ROLLBACK,
	S__COUNT
};

#define JOB_INSERT "INSERT INTO jobs (batch_id, idx, name, kind, args, " \
	"state, max_attempts, retry_on, retry_backoff_s, timeout_s, " \
	"created_at, queued_at) VALUES "
#define JOB_VALUES "(?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
#define JOB_PARAMS 11
#define INSERT_ROWS 64

#define BATCH_COLS "id, name, state, concurrency, priority, created_at, " \
	"started_at, finished_at, n_total, n_queued, n_running, " \
	"n_succeeded, n_failed, n_timed_out, n_canceled, total_run_us, " \
	"total_cpu_us"
#define JOB_COLS "id, batch_id, idx, name, kind, args, state, attempts, " \
	"max_attempts, retry_on, retry_backoff_s, timeout_s, created_at, " \
	"queued_at, started_at, finished_at, run_us, user_us, sys_us, " \
	"max_rss_kb, worker_slot, worker_pid, exit_code, signal, error, " \
	"result, history, output"
/* The batch state after a transition, derived from its counters. */
#define SETTLE_STATE \
	"CASE WHEN n_queued = 0 AND n_running = 0 THEN " \
	"  CASE WHEN n_succeeded = n_total THEN 'succeeded' " \
	"       WHEN cancel_req THEN 'canceled' ELSE 'failed' END " \
	"WHEN started_at IS NULL THEN 'queued' ELSE 'running' END"

static const char *const sql[S__COUNT] = {
	[S_BATCH_INSERT] = "INSERT INTO batches (name, state, concurrency, "
		"priority, created_at, n_total, n_queued) "
		"VALUES (?, 'queued', ?, ?, ?, ?, ?)",
	[S_JOB_INSERT] = JOB_INSERT JOB_VALUES,
	[S_BATCH_GET] = "SELECT " BATCH_COLS " FROM batches WHERE id = ?",
	[S_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?",
	[S_JOB_BATCH] = "SELECT batch_id, state FROM jobs WHERE id = ?",
	[S_NEXT_QUEUED] = "SELECT id, created_at, attempts, timeout_s, kind, "
		"args, max_attempts, retry_on, retry_backoff_s, queued_at "
		"FROM jobs "
		"WHERE batch_id = ? AND state = 'queued' AND not_before <= ? "
		"ORDER BY idx LIMIT 1",
	[S_JOB_START] = "UPDATE jobs SET state = 'running', "
		"attempts = attempts + 1, started_at = ?, finished_at = NULL, "
		"worker_slot = ?, worker_pid = ?, run_us = NULL, "
		"user_us = NULL, sys_us = NULL, max_rss_kb = NULL, "
		"exit_code = NULL, signal = NULL, error = NULL, result = NULL, "
		"output = NULL WHERE id = ?",
	[S_BATCH_START] = "UPDATE batches SET n_queued = n_queued - 1, "
		"n_running = n_running + 1, "
		"started_at = coalesce(started_at, ?1), "
		"state = 'running' WHERE id = ?2",
	[S_JOB_FINISH] = "UPDATE jobs SET state = ?, finished_at = ?, "
		"run_us = ?, user_us = ?, sys_us = ?, max_rss_kb = ?, "
		"exit_code = ?, signal = ?, error = ?, result = ?, "
		"history = json_insert(history, '$[#]', json(?)), output = ? "
		"WHERE id = ?",
	[S_BATCH_FINISH] = "UPDATE batches SET n_running = n_running - 1, "
		"n_succeeded = n_succeeded + ?, n_failed = n_failed + ?, "
		"n_timed_out = n_timed_out + ?, n_canceled = n_canceled + ?, "
		"n_queued = n_queued + ?, "
		"total_run_us = total_run_us + ?, "
		"total_cpu_us = total_cpu_us + ? WHERE id = ?",
	[S_BATCH_SETTLE] = "UPDATE batches SET state = " SETTLE_STATE ", "
		"finished_at = CASE WHEN n_queued = 0 AND n_running = 0 "
		"THEN coalesce(finished_at, ?1) END WHERE id = ?2 "
		"RETURNING n_queued + n_running",
	[S_JOB_REQUEUE] = "UPDATE jobs SET state = 'queued', "
		"attempts = attempts - ?, started_at = NULL, queued_at = ?, "
		"finished_at = NULL, worker_slot = NULL, worker_pid = NULL, "
		"not_before = ? "
		"WHERE id = ?",
	[S_BATCH_REQUEUE] = "UPDATE batches SET n_running = n_running - 1, "
		"n_queued = n_queued + 1 WHERE id = ?",
	[S_JOB_CANCEL_Q] = "UPDATE jobs SET state = 'canceled', "
		"finished_at = ?, error = 'canceled before it started' "
		"WHERE id = ? AND state = 'queued'",
	[S_BATCH_CANCEL_Q] = "UPDATE batches SET n_queued = n_queued - ?1, "
		"n_canceled = n_canceled + ?1 WHERE id = ?2",
	[S_BATCH_CANCEL_REQ] = "UPDATE batches SET cancel_req = 1 "
		"WHERE id = ?",
	[S_BATCH_CANCEL_JOBS] = "UPDATE jobs SET state = 'canceled', "
		"finished_at = ?, error = 'canceled before it started' "
		"WHERE batch_id = ? AND state = 'queued'",
	[S_BATCH_DEL_JOBS] = "DELETE FROM jobs WHERE batch_id = ?",
	[S_BATCH_DEL] = "DELETE FROM batches WHERE id = ?",
	[S_BATCH_DEL_KEYS] = "DELETE FROM idempotency WHERE batch_id = ?",
	[S_LIST_B] = "SELECT " BATCH_COLS " FROM batches WHERE id < ? "
		"ORDER BY id DESC LIMIT ?",
	[S_LIST_B_STATE] = "SELECT " BATCH_COLS " FROM batches "
		"WHERE state = ? AND id < ? ORDER BY id DESC LIMIT ?",
	[S_LIST_J] = "SELECT " JOB_COLS " FROM jobs WHERE id > ? AND id < ? "
		"ORDER BY id LIMIT ?",
	[S_JOB_RANGE] = "SELECT first_job, n_total FROM batches WHERE id = ?",
	[S_SP] = "SAVEPOINT op",
	[S_SP_RELEASE] = "RELEASE op",
	[S_SP_ROLLBACK] = "ROLLBACK TO op",
	[S_SET_FIRST] = "UPDATE batches SET first_job = ? WHERE id = ?",
	[S_LIST_J_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE batch_id = ? "
		"AND state = ? AND idx > ? ORDER BY idx LIMIT ?",
	[S_ACTIVE] = "SELECT id, priority, coalesce(concurrency, 0), "
		"n_queued, n_running, cancel_req, started_at IS NOT NULL "
		"FROM batches "
		"WHERE state IN ('queued', 'running') ORDER BY id",
	[S_INFO] = "SELECT id, priority, coalesce(concurrency, 0), "
		"n_queued, n_running, cancel_req, started_at IS NOT NULL "
		"FROM batches WHERE id = ?",
	[S_QUEUED_IDS] = "SELECT id, attempts FROM jobs WHERE batch_id = ? "
		"AND state = 'queued' ORDER BY idx",
	[S_IDEM_GET] = "SELECT body_hash, batch_id FROM idempotency "
		"WHERE key = ? AND created_at >= ?",
	[S_IDEM_PUT] = "INSERT OR REPLACE INTO idempotency (key, body_hash, "
		"batch_id, created_at) VALUES (?, ?, ?, ?)",
	[S_JOB_IDS] = "SELECT id FROM jobs WHERE batch_id = ? ORDER BY idx",
	[S_PURGE_PICK] = "SELECT id FROM batches WHERE finished_at IS NOT NULL "
		"AND finished_at < ? ORDER BY finished_at LIMIT 1",
	[S_PURGE_JOBS] = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs "
		"WHERE batch_id = ? LIMIT ?)",
	[S_PURGE_KEYS] = "DELETE FROM idempotency WHERE key IN (SELECT key "
		"FROM idempotency WHERE created_at < ? LIMIT ?)",
	[S_COUNTS] = "SELECT total(n_queued), total(n_running), "
		"total(n_succeeded), total(n_failed), total(n_timed_out), "
		"total(n_canceled) FROM batches",
	[S_SIZE] = "SELECT (SELECT page_count FROM pragma_page_count()) - "
		"(SELECT freelist_count FROM pragma_freelist_count()), "
		"(SELECT page_size FROM pragma_page_size())",
};

static sqlite3_stmt *st[S__COUNT];

static const char *const state_names[JS__COUNT] = {
	"queued", "running", "succeeded", "failed", "timed_out", "canceled"
};

const char *job_state_name(enum job_state s)
{
	return state_names[s];
}

int job_state_parse(const char *s)
{
	int i;

	for (i = 0; i < JS__COUNT; i++)
		if (strcmp(state_names[i], s) == 0)
			return i;
	return -1;
}

int batch_state_valid(const char *s)
{
	return strcmp(s, "queued") == 0 || strcmp(s, "running") == 0 ||
	       strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0 ||
	       strcmp(s, "canceled") == 0;
}

static int exec(const char *q)
{
	char *msg = NULL;

	if (sqlite3_exec(db, q, NULL, NULL, &msg) != SQLITE_OK) {
		log_warn("%s: %s: %s", __func__, q, msg ? msg : "?");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

/* get resets and returns the prepared statement id, ready for binding. */
static sqlite3_stmt *get(enum stmt_id id)
{
	sqlite3_reset(st[id]);
	sqlite3_clear_bindings(st[id]);
	return st[id];
}

/* step runs a statement that returns no rows; logs and returns -1 on error. */
static int64_t col_i64(sqlite3_stmt *s, int i)
{
	return sqlite3_column_int64(s, i);
}

static int step(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);

	if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
		sqlite3_reset(s);
		return 0;
	}
	last_error = sqlite3_extended_errcode(db) & 0xff;
	sqlite3_reset(s);
	log_warn("store: %s: %s", sqlite3_errmsg(db), sqlite3_sql(s));
	if (in_txn && sqlite3_get_autocommit(db)) {
		/* SQLite rolled the whole transaction back (it does on some
		 * SQLITE_FULL and I/O errors): this turn's job state changes
		 * are gone from the database while the scheduler moved on.
		 * Stop starting jobs; a restart recovers from what is on
		 * disk.  Reads keep working. */
		in_txn = 0;
		degraded = 1;
		log_warn("store: the transaction was rolled back; no new jobs "
			 "start until the server is restarted");
	}
	return -1;
}

int store_degraded(void)
{
	return degraded;
}

/* room tells whether about bytes more fit under the hard size cap, so a
 * write that would hit it is refused (or made smaller) up front instead
 * of failing with SQLITE_FULL, which rolls back the whole turn. */
static int room(size_t bytes)
{
	sqlite3_stmt *s;
	int64_t used = 0, page = 4096;

	if (!hard_pages)
		return 1;
	s = get(S_SIZE);
	if (sqlite3_step(s) == SQLITE_ROW) {
		used = col_i64(s, 0);
		page = col_i64(s, 1);
	}
	sqlite3_reset(s);
	return used + (int64_t)(bytes * 3) / page + 16 < hard_pages;
}

/* step_one runs statement id with v as its only parameter. */
static int step_one(enum stmt_id id, int64_t v)
{
	sqlite3_stmt *s = get(id);

	sqlite3_bind_int64(s, 1, v);
	return step(s);
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(s, i);
}

static void bind_opt(sqlite3_stmt *s, int i, int64_t v, int present)
{
	if (present)
		sqlite3_bind_int64(s, i, v);
	else
		sqlite3_bind_null(s, i);
}

/* begin opens the turn's write transaction if none is open yet. */
static int begin(void)
{
	if (in_txn)
		return 0;
	if (exec("BEGIN IMMEDIATE") < 0)
		return -1;
	in_txn = 1;
	return 0;
}

int store_dirty(void)
{
	return in_txn;
}

int store_flush(void)
{
	if (!in_txn)
		return 0;
	in_txn = 0;
	if (exec("COMMIT") == 0)
		return 0;
	/* SQLITE_FULL and I/O errors roll the transaction back already;
	 * make sure none stays open either way.  The turn's job changes are
	 * lost while the scheduler moved on: no new jobs until a restart. */
	if (!sqlite3_get_autocommit(db))
		exec("ROLLBACK");
	degraded = 1;
	log_warn("store: commit failed; no new jobs start until the server "
		 "is restarted");
	return -1;
}

static int migrate(void)
{
	sqlite3_stmt *s;
	int version = 0;
	size_t i;
	char q[64];

	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL))
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW)
		version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	if ((size_t)version > schema_migrations_count) {
		log_warn("store: database schema %d is newer than this "
			 "server (%zu)", version, schema_migrations_count);
		return -1;
	}
	for (i = (size_t)version; i < schema_migrations_count; i++) {
		snprintf(q, sizeof(q), "PRAGMA user_version = %zu", i + 1);
		if (exec("BEGIN IMMEDIATE") < 0)
			return -1;
		if (exec(schema_migrations[i]) < 0 || exec(q) < 0) {
			exec("ROLLBACK");
			return -1;
		}
		if (exec("COMMIT") < 0)
			return -1;
		log_info("store: applied migration %zu", i + 1);
	}
	return 0;
}

/* cap_size makes writes past the hard cap fail with SQLITE_FULL, which the
 * API answers with 503.  Submissions are refused at max itself (api.c), so
 * job state changes keep room above it. */
static int cap_size(int64_t max)
{
	sqlite3_stmt *s = get(S_SIZE);
	int64_t page = 4096;
	char q[96];

	if (sqlite3_step(s) == SQLITE_ROW)
		page = col_i64(s, 1);
	sqlite3_reset(s);
	/* 25% (at least 1 MiB) above the soft cap that refuses submissions:
	 * room for the results of jobs already accepted. */
	max += max / 4 > (1 << 20) ? max / 4 : (1 << 20);
	hard_pages = max / page + 1;
	snprintf(q, sizeof(q), "PRAGMA max_page_count = %lld",
		 (long long)hard_pages);
	return exec(q);
}

/* prepare_many prepares the INSERT_ROWS-row insert of jobs. */
static int prepare_many(void)
{
	size_t len = strlen(JOB_INSERT) + INSERT_ROWS *
		     (strlen(JOB_VALUES) + 2) + 1;
	char *q = malloc(len), *p;
	int i, rc;

	if (!q)
		return -1;
	p = q + sprintf(q, "%s", JOB_INSERT);
	for (i = 0; i < INSERT_ROWS; i++)
		p += sprintf(p, "%s%s", i ? ", " : "", JOB_VALUES);
	rc = sqlite3_prepare_v3(db, q, -1, SQLITE_PREPARE_PERSISTENT,
				&st[S_JOB_INSERT_MANY], NULL);
	free(q);
	return rc == SQLITE_OK ? 0 : -1;
}

int store_open(const char *path)
{
	int i;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE |
			    SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		log_warn("store: cannot open %s: %s", path,
			 db ? sqlite3_errmsg(db) : "out of memory");
		return -1;
	}
	sqlite3_busy_timeout(db, 5000);
	/* FULL: a commit is on disk (WAL fsync'ed) when COMMIT returns, which
	 * is what a 201 promises.  Group commit keeps this cheap. */
	if (exec("PRAGMA journal_mode = WAL") < 0 ||
	    exec("PRAGMA synchronous = FULL") < 0 ||
	    exec("PRAGMA foreign_keys = ON") < 0 || migrate() < 0)
		return -1;
	for (i = 0; i < S__COUNT; i++) {
		if (i == S_JOB_INSERT_MANY)
			continue;
		if (sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT,
				       &st[i], NULL) != SQLITE_OK) {
			log_warn("store: prepare: %s: %s", sqlite3_errmsg(db),
				 sql[i]);
			return -1;
		}
	}
	if (prepare_many() < 0 || start_checkpointer(path) < 0)
		return -1;
	return cfg.max_db_bytes ? cap_size(cfg.max_db_bytes) : 0;
}

/* ---- checkpoints, off the loop ----
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000
 * WAL pages, on the loop thread: after a large write (a million jobs
 * canceled) the next commit copies hundreds of megabytes and every client
 * waits.  Instead a checkpointer thread with its own connection runs
 * PASSIVE checkpoints (they never block the writer) when the WAL hook says
 * the log has grown.  It touches nothing but its connection; measured:
 * with a million jobs stored the run rate no longer drops (bench scale). */

#define CHECKPOINT_PAGES 1000

static pthread_t ckpt_thread;
static pthread_mutex_t ckpt_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ckpt_cond = PTHREAD_COND_INITIALIZER;
static int ckpt_due, ckpt_stop, ckpt_running;
static char *ckpt_path;

static void *checkpointer(void *arg)
{
	sqlite3 *c = NULL;
	int stop = 0;

	if (sqlite3_open_v2(ckpt_path, &c, SQLITE_OPEN_READWRITE |
			    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		sqlite3_close(c);
		return NULL;
	}
	sqlite3_busy_timeout(c, 1000);
	while (!stop) {
		pthread_mutex_lock(&ckpt_lock);
		while (!ckpt_due && !ckpt_stop)
			pthread_cond_wait(&ckpt_cond, &ckpt_lock);
		ckpt_due = 0;
		stop = ckpt_stop;
		pthread_mutex_unlock(&ckpt_lock);
		if (!stop) {
			sqlite3_wal_checkpoint_v2(c, NULL,
						  SQLITE_CHECKPOINT_PASSIVE,
						  NULL, NULL);
			/* At most five a second: each one fsyncs the
			 * database file, and the cores belong to the jobs. */
			usleep(200000);
		}
	}
	sqlite3_close(c);
	return NULL;
}

/* wal_hook runs after each commit on the loop thread: only a signal. */
static int wal_hook(void *arg, sqlite3 *d, const char *name, int pages)
{
	if (pages >= CHECKPOINT_PAGES) {
		pthread_mutex_lock(&ckpt_lock);
		ckpt_due = 1;
		pthread_cond_signal(&ckpt_cond);
		pthread_mutex_unlock(&ckpt_lock);
	}
	return SQLITE_OK;
}

static int start_checkpointer(const char *path)
{
	sigset_t all, old;
	int rc;

	ckpt_path = strdup(path);
	if (!ckpt_path || exec("PRAGMA wal_autocheckpoint = 0") < 0)
		return -1;
	/* The thread must never take a signal: SIGTERM and SIGCHLD belong
	 * to the loop's signalfd, and an unblocked thread would let SIGTERM
	 * kill the process.  It inherits this full mask. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&ckpt_thread, NULL, checkpointer, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		/* Not fatal: SQLite checkpoints inline as before. */
		exec("PRAGMA wal_autocheckpoint = 1000");
		return 0;
	}
	ckpt_running = 1;
	sqlite3_wal_hook(db, wal_hook, NULL);
	return 0;
}

static void stop_checkpointer(void)
{
	if (ckpt_running) {
		pthread_mutex_lock(&ckpt_lock);
		ckpt_stop = 1;
		pthread_cond_signal(&ckpt_cond);
		pthread_mutex_unlock(&ckpt_lock);
		pthread_join(ckpt_thread, NULL);
		ckpt_running = 0;
	}
	free(ckpt_path);
	ckpt_path = NULL;
}

void store_close(void)
{
	int i;

	store_flush();
	stop_checkpointer();
	for (i = 0; i < S__COUNT; i++) {
		sqlite3_finalize(st[i]);
		st[i] = NULL;
	}
	sqlite3_close(db);
	db = NULL;
}

int store_ping(void)
{
	return exec("SELECT 1 FROM batches LIMIT 1");
}

/* ---- submission ---- */

/* bind_json binds j as compact JSON text, or the literal dflt when j is
 * absent.  SQLite takes the dumped text and frees it; the literal and the
 * json strings below outlive the step, so nothing is copied (this is the
 * inner loop of a 10,000-job submission). */
static void bind_json(sqlite3_stmt *s, int i, const json_t *j,
		      const char *dflt)
{
	if (j)
		sqlite3_bind_text(s, i, json_dumps(j, JSON_COMPACT), -1, free);
	else
		sqlite3_bind_text(s, i, dflt, -1, SQLITE_STATIC);
}

/* bind_job binds job (borrowed; it must outlive the step) as the row whose
 * first parameter is p of an insert into jobs. */
static void bind_job(sqlite3_stmt *s, int p, int64_t batch_id, size_t idx,
		     const json_t *job, int64_t now)
{
	const json_t *v;

	sqlite3_bind_int64(s, p, batch_id);
	sqlite3_bind_int64(s, p + 1, (int64_t)idx);
	v = json_object_get(job, "name");
	if (json_is_string(v))
		sqlite3_bind_text(s, p + 2, json_string_value(v), -1,
				  SQLITE_STATIC);
	else
		sqlite3_bind_null(s, p + 2);
	sqlite3_bind_text(s, p + 3, json_string_value(json_object_get(job,
			  "kind")), -1, SQLITE_STATIC);
	bind_json(s, p + 4, json_object_get(job, "args"), "{}");
	v = json_object_get(job, "max_attempts");
	sqlite3_bind_int(s, p + 5, v ? (int)json_number_value(v) : 1);
	bind_json(s, p + 6, json_object_get(job, "retry_on"), "[]");
	v = json_object_get(job, "retry_backoff_s");
	sqlite3_bind_double(s, p + 7, v ? json_number_value(v) : 1.0);
	v = json_object_get(job, "timeout_s");
	if (v)
		sqlite3_bind_double(s, p + 8, json_number_value(v));
	else
		sqlite3_bind_null(s, p + 8);
	sqlite3_bind_int64(s, p + 9, now);
	sqlite3_bind_int64(s, p + 10, now);
}

/* insert_jobs inserts the jobs of a batch, INSERT_ROWS rows per statement
 * where it can (one statement per row costs a VDBE run and an AUTOINCREMENT
 * update per row).  Sets *first to the first job's id: rowids of one
 * statement sequence are contiguous (one writer, one transaction). */
static int insert_jobs(int64_t batch_id, const json_t *jobs, int64_t now,
		       int64_t *first)
{
	size_t i, k, n = json_array_size(jobs);
	sqlite3_stmt *s;

	*first = 0;
	for (i = 0; i < n; i += k) {
		k = n - i >= INSERT_ROWS ? INSERT_ROWS : 1;
		s = get(k == 1 ? S_JOB_INSERT : S_JOB_INSERT_MANY);
		for (size_t r = 0; r < k; r++)
			bind_job(s, 1 + (int)r * JOB_PARAMS, batch_id, i + r,
				 json_array_get(jobs, i + r), now);
		if (step(s) < 0)
			return -1;
		if (i == 0)
			*first = sqlite3_last_insert_rowid(db) - (int64_t)k + 1;
	}
	return 0;
}

int store_batch_insert(const json_t *req, int64_t now, const char *key,
		       const char *hash, int64_t *id, json_t **job_ids)
{
	const json_t *jobs = json_object_get(req, "jobs");
	const json_t *v;
	sqlite3_stmt *s;
	size_t i, n = json_array_size(jobs);
	int64_t first;
	char buf[32];
	json_t *ids;

	if (hard_pages) {
		char *text = json_dumps(req, JSON_COMPACT);
		size_t len = text ? strlen(text) : 0;

		free(text);
		/* rows, two index entries and the job ids: ~200 B a job */
		if (!room(len + n * 200)) {
			last_error = SQLITE_FULL;
			return -1;
		}
	}
	if (begin() < 0)
		return -1;
	/* A savepoint per batch: a failure half-way removes this batch's
	 * rows only, never the other work of the turn. */
	if (exec("SAVEPOINT batch") < 0)
		return -1;
	s = get(S_BATCH_INSERT);
	bind_text(s, 1, json_string_value(json_object_get(req, "name")));
	v = json_object_get(req, "concurrency");
	bind_opt(s, 2, v ? (int64_t)json_number_value(v) : 0, v != NULL);
	v = json_object_get(req, "priority");
	sqlite3_bind_int(s, 3, v ? (int)json_number_value(v) : 0);
	sqlite3_bind_int64(s, 4, now);
	sqlite3_bind_int64(s, 5, (int64_t)n);
	sqlite3_bind_int64(s, 6, (int64_t)n);
	if (step(s) < 0)
		goto fail;
	*id = sqlite3_last_insert_rowid(db);
	if (insert_jobs(*id, jobs, now, &first) < 0)
		goto fail;
	s = get(S_SET_FIRST);
	sqlite3_bind_int64(s, 1, first);
	sqlite3_bind_int64(s, 2, *id);
	if (step(s) < 0)
		goto fail;
	ids = json_array();
	for (i = 0; i < n; i++) {
		fmt_id(buf, sizeof(buf), 'j', first + (int64_t)i);
		json_array_append_new(ids, json_string(buf));
	}
	if (key) {
		s = get(S_IDEM_PUT);
		bind_text(s, 1, key);
		bind_text(s, 2, hash);
		sqlite3_bind_int64(s, 3, *id);
		sqlite3_bind_int64(s, 4, now);
		if (step(s) < 0) {
			json_decref(ids);
			goto fail;
		}
	}
	exec("RELEASE batch");
	*job_ids = ids;
	return 0;
fail:
	exec("ROLLBACK TO batch");
	exec("RELEASE batch");
	return -1;
}

/* store_idem_get looks up an Idempotency-Key not older than since.
 * Returns 0 with hash (33 bytes) and *batch_id set, 1 when unknown, -1. */
int store_idem_get(const char *key, int64_t since, char *hash,
		   int64_t *batch_id)
{
	sqlite3_stmt *s = get(S_IDEM_GET);
	int rc;

	bind_text(s, 1, key);
	sqlite3_bind_int64(s, 2, since);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		snprintf(hash, 33, "%s", sqlite3_column_text(s, 0));
		*batch_id = col_i64(s, 1);
	}
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? 1 : -1;
}

/* store_job_ids returns a new array of a batch's job ids in order. */
json_t *store_job_ids(int64_t batch_id)
{
	sqlite3_stmt *s = get(S_JOB_IDS);
	json_t *ids = json_array();
	char buf[32];

	sqlite3_bind_int64(s, 1, batch_id);
	while (sqlite3_step(s) == SQLITE_ROW) {
		fmt_id(buf, sizeof(buf), 'j', col_i64(s, 0));
		json_array_append_new(ids, json_string(buf));
	}
	sqlite3_reset(s);
	return ids;
}

/* store_purge_step deletes at most max rows of terminal batches that
 * finished before cutoff (jobs first, the batch row once it has none), and
 * idempotency keys older than key_cutoff.  Bounded so that retention never
 * stalls the loop.  Returns the number of rows deleted, or -1. */
static int purge_step_(int64_t cutoff, int64_t key_cutoff, int max)
{
	sqlite3_stmt *s;
	int64_t batch_id = 0;
	int n = 0, rc;

	if (begin() < 0)
		return -1;
	s = get(S_PURGE_KEYS);
	sqlite3_bind_int64(s, 1, key_cutoff);
	sqlite3_bind_int(s, 2, max);
	if (step(s) < 0)
		return -1;
	n += sqlite3_changes(db);
	if (cutoff <= 0)
		return n;
	s = get(S_PURGE_PICK);
	sqlite3_bind_int64(s, 1, cutoff);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		batch_id = col_i64(s, 0);
	sqlite3_reset(s);
	if (!batch_id)
		return n;
	s = get(S_PURGE_JOBS);
	sqlite3_bind_int64(s, 1, batch_id);
	sqlite3_bind_int(s, 2, max);
	if (step(s) < 0)
		return -1;
	rc = sqlite3_changes(db);
	n += rc;
	if (rc < max) {
		if (step_one(S_BATCH_DEL_KEYS, batch_id) < 0)
			return -1;
		if (step_one(S_BATCH_DEL, batch_id) < 0)
			return -1;
		n++;
	}
	return n;
}

/* store_job_counts fills counts[6] with the stored jobs by state, from the
 * batches' counters (O(batches), never a scan of the jobs). */
int store_job_counts(int64_t *counts)
{
	sqlite3_stmt *s = get(S_COUNTS);
	int i, rc = -1;

	if (sqlite3_step(s) == SQLITE_ROW) {
		for (i = 0; i < 6; i++)
			counts[i] = (int64_t)sqlite3_column_double(s, i);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

/* store_size_bytes is the space the data uses (free pages excluded). */
int64_t store_size_bytes(void)
{
	sqlite3_stmt *s = get(S_SIZE);
	int64_t n = -1;

	if (sqlite3_step(s) == SQLITE_ROW)
		n = col_i64(s, 0) * col_i64(s, 1);
	sqlite3_reset(s);
	return n;
}

/* store_full tells whether the last failure was the database running out
 * of room (disk full or --max-db-bytes), as opposed to a fault. */
int store_full(void)
{
	return last_error == SQLITE_FULL || last_error == SQLITE_IOERR;
}

/* ---- rendering ---- */

static json_t *col_opt_int(sqlite3_stmt *s, int i)
{
	if (sqlite3_column_type(s, i) == SQLITE_NULL)
		return json_null();
	return json_integer(sqlite3_column_int64(s, i));
}

static json_t *col_opt_ms(sqlite3_stmt *s, int i)
{
	if (sqlite3_column_type(s, i) == SQLITE_NULL)
		return json_null();
	return json_ms(sqlite3_column_int64(s, i));
}

static json_t *col_opt_str(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);

	return t ? json_string((const char *)t) : json_null();
}

static json_t *col_json(sqlite3_stmt *s, int i)
{
	const char *t = (const char *)sqlite3_column_text(s, i);
	json_t *j;

	if (!t)
		return json_null();
	j = json_loads(t, JSON_DECODE_ANY, NULL);
	return j ? j : json_null();
}

static json_t *batch_row(sqlite3_stmt *s)
{
	char id[32];
	int64_t started = col_i64(s, 6), finished = col_i64(s, 7);
	int64_t total = col_i64(s, 8), run_us = col_i64(s, 15);
	int64_t terminal = col_i64(s, 11) + col_i64(s, 12) + col_i64(s, 13) +
			   col_i64(s, 14);
	int64_t makespan = 0;
	json_t *counts, *timings;

	fmt_id(id, sizeof(id), 'b', col_i64(s, 0));
	if (started > 0)
		makespan = (finished > 0 ? finished : now_us()) - started;
	counts = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		"total", total, "queued", col_i64(s, 9),
		"running", col_i64(s, 10), "succeeded", col_i64(s, 11),
		"failed", col_i64(s, 12), "timed_out", col_i64(s, 13),
		"canceled", col_i64(s, 14));
	timings = json_pack("{s:o, s:o, s:o, s:o}",
		"makespan_ms", started > 0 ? json_ms(makespan) : json_null(),
		"total_run_ms", json_ms(run_us),
		"total_cpu_ms", json_ms(col_i64(s, 16)),
		"parallelism", makespan > 0 ?
			json_real((double)(int64_t)((double)run_us / makespan *
						    1000) / 1000) :
			json_null());
	return json_pack("{s:s, s:o, s:s, s:o, s:I, s:o, s:o, s:o, s:o, "
			 "s:f, s:o}",
		"id", id, "name", col_opt_str(s, 1),
		"state", (const char *)sqlite3_column_text(s, 2),
		"concurrency", col_opt_int(s, 3),
		"priority", col_i64(s, 4),
		"created_at", json_time(col_i64(s, 5)),
		"started_at", json_time(started),
		"finished_at", json_time(finished),
		"counts", counts,
		"progress", total ? (double)terminal / (double)total : 1.0,
		"timings", timings);
}

static json_t *job_row(sqlite3_stmt *s)
{
	char id[32], bid[32];
	int64_t queued_at = col_i64(s, 13), started = col_i64(s, 14);
	json_t *timings, *worker;

	fmt_id(id, sizeof(id), 'j', col_i64(s, 0));
	fmt_id(bid, sizeof(bid), 'b', col_i64(s, 1));
	timings = json_pack("{s:o, s:o, s:o, s:o, s:o}",
		"queue_ms", started > 0 ? json_ms(started - queued_at) :
					  json_null(),
		"run_ms", col_opt_ms(s, 16),
		"user_cpu_ms", col_opt_ms(s, 17),
		"sys_cpu_ms", col_opt_ms(s, 18),
		"max_rss_kb", col_opt_int(s, 19));
	worker = sqlite3_column_type(s, 20) == SQLITE_NULL ? json_null() :
		 json_pack("{s:I, s:I}", "slot", col_i64(s, 20),
			   "pid", col_i64(s, 21));
	return json_pack("{s:s, s:s, s:I, s:o, s:s, s:o, s:s, s:I, s:I, s:o, "
			 "s:f, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, "
			 "s:o, s:o, s:o}",
		"id", id, "batch_id", bid, "index", col_i64(s, 2),
		"name", col_opt_str(s, 3),
		"kind", (const char *)sqlite3_column_text(s, 4),
		"args", col_json(s, 5),
		"state", (const char *)sqlite3_column_text(s, 6),
		"attempts", col_i64(s, 7), "max_attempts", col_i64(s, 8),
		"retry_on", col_json(s, 9),
		"retry_backoff_s", sqlite3_column_double(s, 10),
		"timeout_s", sqlite3_column_type(s, 11) == SQLITE_NULL ?
			json_null() : json_real(sqlite3_column_double(s, 11)),
		"created_at", json_time(col_i64(s, 12)),
		"started_at", json_time(started),
		"finished_at", json_time(col_i64(s, 15)),
		"timings", timings, "worker", worker,
		"exit_code", col_opt_int(s, 22),
		"signal", col_opt_str(s, 23),
		"error", col_opt_str(s, 24),
		"result", col_json(s, 25),
		"output", col_json(s, 27),
		"history", col_json(s, 26));
}

static json_t *get_one(enum stmt_id id, int64_t key,
		       json_t *(*row)(sqlite3_stmt *))
{
	sqlite3_stmt *s = get(id);
	json_t *j = NULL;

	sqlite3_bind_int64(s, 1, key);
	if (sqlite3_step(s) == SQLITE_ROW)
		j = row(s);
	sqlite3_reset(s);
	return j;
}

json_t *store_batch_json(int64_t id)
{
	return get_one(S_BATCH_GET, id, batch_row);
}

json_t *store_job_json(int64_t id)
{
	return get_one(S_JOB_GET, id, job_row);
}

int store_job_batch(int64_t job_id, int64_t *batch_id, enum job_state *state)
{
	sqlite3_stmt *s = get(S_JOB_BATCH);
	int rc = -1;

	sqlite3_bind_int64(s, 1, job_id);
	if (sqlite3_step(s) == SQLITE_ROW) {
		*batch_id = col_i64(s, 0);
		*state = job_state_parse((const char *)
					 sqlite3_column_text(s, 1));
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
		last = col_i64(s, key_col);
		n++;
	}
	sqlite3_reset(s);
	if (!more)
		return json_pack("{s:o, s:n}", "items", items, "next_cursor");
	snprintf(buf, sizeof(buf), "%c%lld", cursor_prefix, (long long)last);
	return json_pack("{s:o, s:s}", "items", items, "next_cursor", buf);
}

json_t *store_batch_list(const char *state, int64_t after, int limit)
{
	sqlite3_stmt *s = get(state ? S_LIST_B_STATE : S_LIST_B);
	int i = 1;

	if (state)
		bind_text(s, i++, state);
	sqlite3_bind_int64(s, i++, after > 0 ? after : INT64_MAX);
	sqlite3_bind_int(s, i, limit + 1);
	return list(s, limit, 0, batch_row, 'b');
}

json_t *store_job_list(int64_t batch_id, const char *state, int64_t after,
		       int limit)
{
	int64_t first = 0, total = 0;
	sqlite3_stmt *s;
	int i = 1;

	if (!state) {
		/* Submission order is a primary-key range (see first_job). */
		s = get(S_JOB_RANGE);
		sqlite3_bind_int64(s, 1, batch_id);
		if (sqlite3_step(s) == SQLITE_ROW) {
			first = col_i64(s, 0);
			total = col_i64(s, 1);
		}
		sqlite3_reset(s);
		s = get(S_LIST_J);
		sqlite3_bind_int64(s, 1, first + after);
		sqlite3_bind_int64(s, 2, first + total);
		sqlite3_bind_int(s, 3, limit + 1);
		return list(s, limit, 2, job_row, 'j');
	}
	s = get(S_LIST_J_STATE);
	sqlite3_bind_int64(s, i++, batch_id);
	bind_text(s, i++, state);
	sqlite3_bind_int64(s, i++, after);
	sqlite3_bind_int(s, i, limit + 1);
	return list(s, limit, 2, job_row, 'j');
}

/* ---- scheduler support ---- */

static void info_row(sqlite3_stmt *s, struct batch_info *b)
{
	b->id = col_i64(s, 0);
	b->priority = sqlite3_column_int(s, 1);
	b->concurrency = sqlite3_column_int(s, 2);
	b->queued = sqlite3_column_int(s, 3);
	b->running = sqlite3_column_int(s, 4);
	b->cancel_req = sqlite3_column_int(s, 5);
	b->started = sqlite3_column_int(s, 6);
}

int store_batch_info(int64_t id, struct batch_info *b)
{
	sqlite3_stmt *s = get(S_INFO);
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
	sqlite3_stmt *s = get(S_ACTIVE);
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
	sqlite3_stmt *s = get(S_BATCH_SETTLE);
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
	sqlite3_stmt *s = get(S_NEXT_QUEUED);
	int rc;

	if (begin() < 0)
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
	c->job_id = col_i64(s, 0);
	c->batch_id = batch_id;
	c->created_at = col_i64(s, 1);
	c->attempts = sqlite3_column_int(s, 2) + 1;
	c->timeout_s = sqlite3_column_double(s, 3);
	snprintf(c->kind, sizeof(c->kind), "%s", sqlite3_column_text(s, 4));
	c->args = strdup((const char *)sqlite3_column_text(s, 5));
	c->max_attempts = sqlite3_column_int(s, 6);
	retry_parse((const char *)sqlite3_column_text(s, 7), &c->retry);
	c->backoff_s = sqlite3_column_double(s, 8);
	c->queued_at = col_i64(s, 9);
	sqlite3_reset(s);
	if (!c->args)
		return -1;

	s = get(S_JOB_START);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int(s, 2, slot);
	sqlite3_bind_int(s, 3, pid);
	sqlite3_bind_int64(s, 4, c->job_id);
	if (step(s) < 0)
		goto fail;
	s = get(S_BATCH_START);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	if (step(s) < 0)
		goto fail;
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

	if (begin() < 0)
		return -1;
	if (o->output)
		otext = json_dumps(o->output, JSON_COMPACT);
	if (o->result)
		rtext = json_dumps(o->result, JSON_COMPACT |
				   JSON_REAL_PRECISION(17));
	if (!room((rtext ? strlen(rtext) : 0) + (otext ? strlen(otext) : 0) +
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
	s = get(S_JOB_FINISH);
	bind_text(s, 1, job_state_name(row_state));
	sqlite3_bind_int64(s, 2, o->finished_at);
	sqlite3_bind_int64(s, 3, o->run_us);
	bind_opt(s, 4, o->user_us, o->user_us >= 0);
	bind_opt(s, 5, o->sys_us, o->sys_us >= 0);
	bind_opt(s, 6, o->max_rss_kb, o->max_rss_kb >= 0);
	bind_opt(s, 7, o->exit_code, o->exit_code >= 0);
	bind_text(s, 8, sig);
	bind_text(s, 9, error);
	bind_text(s, 10, rtext);
	bind_text(s, 11, htext);
	bind_text(s, 12, otext);
	sqlite3_bind_int64(s, 13, job_id);
	rc = step(s);
	free(htext);
	free(rtext);
	free(otext);
	if (rc < 0)
		return -1;
	s = get(S_BATCH_FINISH);
	sqlite3_bind_int(s, 1, row_state == JS_SUCCEEDED);
	sqlite3_bind_int(s, 2, row_state == JS_FAILED);
	sqlite3_bind_int(s, 3, row_state == JS_TIMED_OUT);
	sqlite3_bind_int(s, 4, row_state == JS_CANCELED);
	sqlite3_bind_int(s, 5, row_state == JS_QUEUED);
	sqlite3_bind_int64(s, 6, o->run_us);
	sqlite3_bind_int64(s, 7, (o->user_us > 0 ? o->user_us : 0) +
				 (o->sys_us > 0 ? o->sys_us : 0));
	sqlite3_bind_int64(s, 8, batch_id);
	return step(s);
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
	s = get(S_JOB_REQUEUE);
	sqlite3_bind_int(s, 1, 0);
	sqlite3_bind_int64(s, 2, o->finished_at);
	sqlite3_bind_int64(s, 3, not_before);
	sqlite3_bind_int64(s, 4, job_id);
	return step(s);
}

static int job_requeue_(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before)
{
	sqlite3_stmt *s;

	if (begin() < 0)
		return -1;
	s = get(S_JOB_REQUEUE);
	sqlite3_bind_int(s, 1, undo_attempt ? 1 : 0);
	sqlite3_bind_int64(s, 2, now_us());
	sqlite3_bind_int64(s, 3, not_before);
	sqlite3_bind_int64(s, 4, job_id);
	if (step(s) < 0)
		return -1;
	return step_one(S_BATCH_REQUEUE, batch_id);
}

static int cancel_counted(int64_t batch_id, int n, int64_t now,
			  int *batch_done)
{
	sqlite3_stmt *s = get(S_BATCH_CANCEL_Q);

	sqlite3_bind_int(s, 1, n);
	sqlite3_bind_int64(s, 2, batch_id);
	if (step(s) < 0)
		return -1;
	return settle(batch_id, now, batch_done);
}

static int job_cancel_queued_(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done)
{
	sqlite3_stmt *s;

	if (begin() < 0)
		return -1;
	s = get(S_JOB_CANCEL_Q);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, job_id);
	if (step(s) < 0)
		return -1;
	if (sqlite3_changes(db) != 1)
		return 1;
	return cancel_counted(batch_id, 1, now, batch_done);
}

static int batch_cancel_(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx)
{
	sqlite3_stmt *s;

	if (begin() < 0)
		return -1;
	/* Tell the caller which jobs are about to be canceled (events). */
	s = get(S_QUEUED_IDS);
	sqlite3_bind_int64(s, 1, batch_id);
	while (fn && sqlite3_step(s) == SQLITE_ROW)
		fn(col_i64(s, 0), sqlite3_column_int(s, 1), ctx);
	sqlite3_reset(s);
	if (step_one(S_BATCH_CANCEL_REQ, batch_id) < 0)
		return -1;
	s = get(S_BATCH_CANCEL_JOBS);
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int64(s, 2, batch_id);
	if (step(s) < 0)
		return -1;
	*canceled = sqlite3_changes(db);
	return cancel_counted(batch_id, *canceled, now, batch_done);
}

static int batch_delete_(int64_t batch_id)
{
	if (begin() < 0)
		return -1;
	if (step_one(S_BATCH_DEL_JOBS, batch_id) < 0)
		return -1;
	if (step_one(S_BATCH_DEL_KEYS, batch_id) < 0)
		return -1;
	return step_one(S_BATCH_DEL, batch_id);
}

/* SQL_TIME renders a microsecond value like fmt_time() does.  (In an
 * UPDATE, columns on the right side are the row's old values.) */
#define SQL_TIME(col) "strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', " col \
	" / 1000000.0, 'unixepoch')"
/* The history entry of an attempt the server's death interrupted; takes
 * the time of recovery as its end (one %lld). */
#define INTERRUPTED_ENTRY "json_insert(history, '$[#]', json_object(" \
	"'attempt', attempts, 'state', 'failed', " \
	"'started_at', " SQL_TIME("started_at") ", " \
	"'finished_at', " SQL_TIME("%lld") ", " \
	"'run_ms', NULL, 'exit_code', NULL, 'signal', NULL, " \
	"'error', 'interrupted', 'worker', CASE WHEN worker_slot IS NULL " \
	"THEN NULL ELSE json_object('slot', worker_slot, 'pid', " \
	"worker_pid) END))"
#define COUNT_OF(st) "(SELECT count(*) FROM jobs j WHERE " \
	"j.batch_id = batches.id AND j.state = '" st "')"
#define RECOUNT "UPDATE batches SET n_queued = " COUNT_OF("queued") ", " \
	"n_running = 0, n_succeeded = " COUNT_OF("succeeded") ", " \
	"n_failed = " COUNT_OF("failed") ", " \
	"n_timed_out = " COUNT_OF("timed_out") ", " \
	"n_canceled = " COUNT_OF("canceled") " " \
	"WHERE state IN ('queued', 'running')"

/* store_recover runs once at start, before any worker exists: a job still
 * 'running' lost its worker with the previous server.  It goes back to the
 * queue if it has attempts left, else fails as "interrupted"; then every
 * unfinished batch's counters are recounted from its jobs so nothing
 * depends on what the dead server managed to write. */
int store_recover(int64_t now, int *requeued, int *interrupted,
		  void (*fn)(int64_t job_id, void *ctx), void *ctx)
{
	sqlite3_stmt *s;
	char q[1024];

	/* The command jobs among them may have left processes behind. */
	if (sqlite3_prepare_v2(db, "SELECT id FROM jobs WHERE state = "
			       "'running' AND kind = 'command'", -1, &s,
			       NULL) != SQLITE_OK)
		return -1;
	while (fn && sqlite3_step(s) == SQLITE_ROW)
		fn(sqlite3_column_int64(s, 0), ctx);
	sqlite3_finalize(s);
	if (exec("BEGIN IMMEDIATE") < 0)
		return -1;
	/* Both ways, the interrupted attempt is one entry of history. */
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'queued', "
		 "queued_at = %lld, worker_slot = NULL, worker_pid = NULL, "
		 "started_at = NULL, error = 'interrupted', "
		 "history = " INTERRUPTED_ENTRY " WHERE state = 'running' "
		 "AND attempts < max_attempts", (long long)now, (long long)now);
	if (exec(q) < 0)
		goto fail;
	*requeued = sqlite3_changes(db);
	/* Backoff timers lived in the old server's memory: due at once. */
	if (exec("UPDATE jobs SET not_before = 0 WHERE state = 'queued' "
		 "AND not_before > 0") < 0)
		goto fail;
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'failed', "
		 "finished_at = %lld, error = 'interrupted', "
		 "history = " INTERRUPTED_ENTRY " WHERE state = 'running'",
		 (long long)now, (long long)now);
	if (exec(q) < 0)
		goto fail;
	*interrupted = sqlite3_changes(db);
	if (exec(RECOUNT) < 0)
		goto fail;
	snprintf(q, sizeof(q), "UPDATE batches SET state = " SETTLE_STATE ", "
		 "finished_at = CASE WHEN n_queued = 0 AND n_running = 0 "
		 "THEN coalesce(finished_at, %lld) END "
		 "WHERE state IN ('queued', 'running')", (long long)now);
	if (exec(q) < 0)
		goto fail;
	return exec("COMMIT");
fail:
	exec("ROLLBACK");
	return -1;
}

/* ---- atomic operations ----
 *
 * Each public write below runs in a savepoint inside the turn's
 * transaction: a step that fails half-way (SQLITE_FULL on the second of two
 * updates) rolls back that operation alone, so a job's row and its batch's
 * counters never disagree. */

static int sp_begin(void)
{
	if (begin() < 0)
		return -1;
	return sqlite3_step(get(S_SP)) == SQLITE_DONE ? 0 : -1;
}

static int sp_end(int rc)
{
	if (rc < 0)
		sqlite3_step(get(S_SP_ROLLBACK));
	sqlite3_step(get(S_SP_RELEASE));
	sqlite3_reset(st[S_SP_ROLLBACK]);
	sqlite3_reset(st[S_SP_RELEASE]);
	return rc;
}

int store_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		    int any_due, struct claim *c)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(job_claim_(batch_id, slot, pid, now, any_due, c));
}

int store_job_finish(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(job_finish_(job_id, batch_id, o, w, batch_done));
}

int store_job_retry(int64_t job_id, int64_t batch_id,
		    const struct outcome *o, const struct slot *w,
		    int64_t not_before)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(job_retry_(job_id, batch_id, o, w, not_before));
}

int store_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(job_requeue_(job_id, batch_id, undo_attempt, not_before));
}

int store_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(job_cancel_queued_(job_id, batch_id, now, batch_done));
}

int store_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(batch_cancel_(batch_id, now, canceled, batch_done, fn, ctx));
}

int store_batch_delete(int64_t batch_id)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(batch_delete_(batch_id));
}

int store_purge_step(int64_t cutoff, int64_t key_cutoff, int max)
{
	if (sp_begin() < 0)
		return -1;
	return sp_end(purge_step_(cutoff, key_cutoff, max));
}
