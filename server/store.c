/* store.c - the only file that speaks SQL.
 *
 * One connection, one writer (the event loop).  Writes go into a transaction
 * that is opened on the first write of a loop turn and committed by
 * sq_flush() at the end of the turn, so a burst of job transitions and
 * submissions costs one fsync, not one each (group commit).  A submission is
 * acknowledged only after the sq_flush() that holds it returns 0.
 *
 * Everything the API shows is built here from rows, so another backend can
 * replace this file without touching HTTP or scheduling code.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <sqlite3.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

extern const char *const schema_migrations[];
extern const size_t schema_migrations_count;

sqlite3 *store_db;
/* A second connection for what clients read: in WAL mode it sees only
 * committed transactions, so no answer ever shows a change that a crash
 * could still undo (the writer's connection sees its own open turn). */
static sqlite3 *store_rdb;
static int in_txn;
static int last_error;          /* primary code of the last failed step */
/* degraded: a write failed or a transaction was rolled back, so memory
 * (scheduler, workers) and the database may disagree.  Writes are refused
 * until the engine's resync has put them back in line and committed. */
static int degraded;
static int resyncing;
static void (*on_rollback)(void);
static int64_t hard_pages;      /* max_page_count, 0: none */
/* The highest ids this process has handed out: after a rollback SQLite's
 * AUTOINCREMENT counters go back too, and must not give them again. */
static int64_t top_batch_id, top_job_id;
/* Stored jobs by state, for /metrics without a scan: totals as of the last
 * commit, plus the changes of the open transaction (and, to undo a failed
 * operation, what they were when its savepoint began). */
static int64_t totals[JS__COUNT], pending[JS__COUNT], sp_mark[JS__COUNT];
#define JOB_INSERT "INSERT INTO jobs (batch_id, idx, name, kind, args, " \
	"state, max_attempts, retry_on, retry_backoff_s, timeout_s, " \
	"created_at, queued_at) VALUES "
#define JOB_VALUES "(?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
#define JOB_PARAMS 11
#define INSERT_ROWS 64

#define BATCH_COLS "id, name, state, concurrency, priority, created_at, " \
	"started_at, finished_at, n_total, n_queued, n_running, " \
	"n_succeeded, n_failed, n_timed_out, n_canceled, total_run_us, " \
	"total_cpu_us, halt, timeout_pct, halted_reason, halted_at, " \
	"parent_id, then_batch_id, then_state, paused, " \
	/* the running jobs' starts, for a live parallelism (store_read.c) */ \
	"CASE WHEN n_running > 0 THEN (SELECT CAST(total(j.started_at) AS " \
	"INTEGER) FROM jobs j WHERE j.batch_id = batches.id AND " \
	"j.state = 'running') ELSE 0 END"

static const char *const sql[S__COUNT] = {
	[S_BATCH_INSERT] = "INSERT INTO batches (name, state, concurrency, "
		"priority, created_at, n_total, n_queued, halt, timeout_pct) "
		"VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
	[S_JOB_INSERT] = JOB_INSERT JOB_VALUES,
	[S_BATCH_GET] = "SELECT " BATCH_COLS " FROM batches WHERE id = ?",
	/* follow-up batches (store_jobs.c, then_fire) */
	[S_THEN_SET] = "UPDATE batches SET then_on = ?, then_body = ?, "
		"then_state = 'pending' WHERE id = ?",
	[S_THEN_GET] = "SELECT state, then_on, then_body FROM batches "
		"WHERE id = ? AND then_state = 'pending' AND n_queued = 0 "
		"AND n_running = 0",
	[S_THEN_DONE] = "UPDATE batches SET then_state = ?, then_batch_id = ? "
		"WHERE id = ?",
	[S_THEN_PARENT] = "UPDATE batches SET parent_id = ? WHERE id = ?",
	[S_THEN_CHILD] = "SELECT then_batch_id FROM batches WHERE id = ? "
		"AND then_state = 'created'",
	[S_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?",
	[S_JOB_BATCH] = "SELECT batch_id, state, attempts FROM jobs "
		"WHERE id = ?",
	[S_NEXT_QUEUED] = "SELECT id, created_at, attempts, timeout_s, kind, "
		"args, max_attempts, retry_on, retry_backoff_s, queued_at, idx "
		"FROM jobs "
		"WHERE batch_id = ? AND state = 'queued' AND not_before <= ? "
		"AND idx > ? ORDER BY idx LIMIT ?",
	[S_JOB_START] = "UPDATE jobs SET state = 'running', "
		"attempts = attempts + 1, started_at = ?1, finished_at = NULL, "
		"worker_slot = ?2, worker_pid = ?3, worker_node = ?5, "
		"run_us = NULL, user_us = NULL, sys_us = NULL, max_rss_kb = NULL, "
		"exit_code = NULL, signal = NULL, error = NULL, result = NULL, "
		"output = NULL WHERE id = ?4",
	[S_BATCH_START] = "UPDATE batches SET n_queued = n_queued - 1, "
		"n_running = n_running + 1, "
		"started_at = coalesce(started_at, ?1), "
		"state = 'running' WHERE id = ?2",
	[S_JOB_FINISH] = "UPDATE jobs SET state = ?, finished_at = ?, "
		"run_us = ?, user_us = ?, sys_us = ?, max_rss_kb = ?, "
		"exit_code = ?, signal = ?, error = ?, result = ?, "
		"history = json_insert(history, '$[#]', json(?)), output = ? "
		"WHERE id = ?",
	/* A job of a group, queued -> ended in one step (see sq_jobs_done). */
	[S_JOB_DONE] = "UPDATE jobs SET state = ?1, attempts = attempts + 1, "
		"started_at = ?2, finished_at = ?3, worker_slot = ?4, "
		"worker_node = ?16, "
		"worker_pid = ?5, run_us = ?6, user_us = ?7, sys_us = ?8, "
		"max_rss_kb = ?9, exit_code = ?10, signal = ?11, error = ?12, "
		"result = ?13, history = json_insert(history, '$[#]', json(?14)), "
		"output = NULL WHERE id = ?15 AND state = 'queued'",
	[S_BATCH_DONE] = "UPDATE batches SET n_queued = n_queued - ?1 - ?2, "
		"n_succeeded = n_succeeded + ?1, n_failed = n_failed + ?2, "
		"total_run_us = total_run_us + ?3, "
		"total_cpu_us = total_cpu_us + ?4, "
		"started_at = coalesce(started_at, ?5) WHERE id = ?6",
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
		"worker_node = NULL, "
		"not_before = ? "
		"WHERE id = ?",
	[S_BATCH_REQUEUE] = "UPDATE batches SET n_running = n_running - 1, "
		"n_queued = n_queued + 1 WHERE id = ?",
	[S_JOB_CANCEL_Q] = "UPDATE jobs SET state = 'canceled', "
		"finished_at = ?, error = 'canceled before it started' "
		"WHERE id = ? AND state = 'queued'",
	[S_BATCH_CANCEL_Q] = "UPDATE batches SET n_queued = n_queued - ?1, "
		"n_canceled = n_canceled + ?1 WHERE id = ?2",
	[S_JOB_CANCEL_REQ] = "UPDATE jobs SET cancel_req = 1 WHERE id = ?",
	[S_BATCH_CANCEL_REQ] = "UPDATE batches SET cancel_req = 1 "
		"WHERE id = ?",
	[S_BATCH_CANCEL_JOBS] = "UPDATE jobs SET state = 'canceled', "
		"finished_at = ?, error = 'canceled before it started' "
		"WHERE batch_id = ? AND state = 'queued'",
	[S_BATCH_DEL_JOBS] = "DELETE FROM jobs WHERE batch_id = ? "
		"RETURNING state",
	[S_BATCH_DEL] = "DELETE FROM batches WHERE id = ?",
	[S_BATCH_DEL_KEYS] = "DELETE FROM idempotency WHERE batch_id = ?",
	[S_LIST_B] = "SELECT " BATCH_COLS " FROM batches WHERE id < ? "
		"ORDER BY id DESC LIMIT ?",
	[S_LIST_B_STATE] = "SELECT " BATCH_COLS " FROM batches "
		"WHERE state IN (SELECT value FROM json_each('[\"' || "
		"replace(?, ',', '\",\"') || '\"]')) AND id < ? "
		"ORDER BY id DESC LIMIT ?",
	[S_LIST_J] = "SELECT " JOB_COLS " FROM jobs WHERE id > ? AND id < ? "
		"ORDER BY id LIMIT ?",
	[S_JOB_RANGE] = "SELECT first_job, n_total FROM batches WHERE id = ?",
	[S_SP] = "SAVEPOINT op",
	[S_SP_RELEASE] = "RELEASE op",
	[S_SP_ROLLBACK] = "ROLLBACK TO op",
	[S_SET_FIRST] = "UPDATE batches SET first_job = ? WHERE id = ?",
	[S_LIST_J_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE batch_id = ? "
		"AND state IN (SELECT value FROM json_each('[\"' || "
		"replace(?, ',', '\",\"') || '\"]')) AND idx > ? "
		"ORDER BY idx LIMIT ?",
	[S_ACTIVE] = "SELECT id, priority, coalesce(concurrency, 0), "
		"n_queued, n_running, cancel_req, started_at IS NOT NULL, "
		"paused FROM batches "
		"WHERE state IN ('queued', 'running') ORDER BY id",
	[S_INFO] = "SELECT id, priority, coalesce(concurrency, 0), "
		"n_queued, n_running, cancel_req, started_at IS NOT NULL, "
		"paused FROM batches WHERE id = ?",
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
		"WHERE batch_id = ? LIMIT ?) RETURNING state",
	[S_PURGE_KEYS] = "DELETE FROM idempotency WHERE key IN (SELECT key "
		"FROM idempotency WHERE created_at < ? LIMIT ?)",
	[S_COUNTS] = "SELECT total(n_queued), total(n_running), "
		"total(n_succeeded), total(n_failed), total(n_timed_out), "
		"total(n_canceled) FROM batches",
	[S_SIZE] = "SELECT (SELECT page_count FROM pragma_page_count()) - "
		"(SELECT freelist_count FROM pragma_freelist_count()), "
		"(SELECT page_size FROM pragma_page_size())",
	/* policies: on the writer's connection, so the counts include the
	 * turn's own transitions */
	[S_POLICY] = "SELECT halt, coalesce(timeout_pct, 0), "
		"halted_at IS NOT NULL, n_total, n_succeeded, "
		"n_failed + n_timed_out, n_queued + n_running "
		"FROM batches WHERE id = ?",
	[S_RUNS] = "SELECT run_us FROM jobs WHERE batch_id = ? "
		"AND state = 'succeeded' AND run_us IS NOT NULL "
		"ORDER BY finished_at DESC LIMIT ?",
	/* a cancel that came first wins: a canceled batch never halts */
	[S_HALT] = "UPDATE batches SET halted_reason = ?, halted_at = ? "
		"WHERE id = ? AND halted_at IS NULL AND NOT cancel_req",
	/* pause, resume, PATCH: NULL keeps a value */
	[S_BATCH_SET] = "UPDATE batches SET paused = coalesce(?1, paused), "
		"priority = coalesce(?2, priority), concurrency = CASE "
		"WHEN ?4 IS NULL THEN concurrency WHEN ?4 = 0 THEN NULL "
		"ELSE ?4 END WHERE id = ?3",
	/* the server-wide pause (010_dispatch.sql) */
	[S_DISPATCH_SET] = "UPDATE dispatch SET paused = ? WHERE id = 1",
	[S_DISPATCH_GET] = "SELECT paused FROM dispatch WHERE id = 1",
	/* GET /v1/jobs; a state list is "a,b" (validated by the API) */
	[S_LIST_ALL_J] = "SELECT " JOB_COLS " FROM jobs WHERE id > ? "
		"ORDER BY id LIMIT ?",
	[S_LIST_ALL_J_STATE] = "SELECT " JOB_COLS " FROM jobs WHERE state IN "
		"(SELECT value FROM json_each('[\"' || "
		"replace(?, ',', '\",\"') || '\"]')) AND id > ? "
		"ORDER BY id LIMIT ?",
};

static sqlite3_stmt *st[S__COUNT];
static sqlite3_stmt *rst[S__COUNT];     /* on store_rdb, prepared on use */

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

int store_exec(const char *q)
{
	char *msg = NULL;

	if (sqlite3_exec(store_db, q, NULL, NULL, &msg) != SQLITE_OK) {
		log_warn("%s: %s: %s", __func__, q, msg ? msg : "?");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static void rolled_back(const char *why);

/* get resets and returns the prepared statement id, ready for binding. */
sqlite3_stmt *store_get(enum stmt_id id)
{
	sqlite3_reset(st[id]);
	sqlite3_clear_bindings(st[id]);
	return st[id];
}

/* store_rget is store_get for the reading connection: statement id
 * prepared there on first use.  NULL when it cannot be prepared. */
sqlite3_stmt *store_rget(enum stmt_id id)
{
	if (!rst[id] && sqlite3_prepare_v3(store_rdb, sql[id], -1,
					   SQLITE_PREPARE_PERSISTENT, &rst[id],
					   NULL) != SQLITE_OK) {
		log_warn("%s: %s: %s", __func__, sqlite3_errmsg(store_rdb),
			 sql[id]);
		return NULL;
	}
	sqlite3_reset(rst[id]);
	sqlite3_clear_bindings(rst[id]);
	return rst[id];
}

int64_t store_col_i64(sqlite3_stmt *s, int i)
{
	return sqlite3_column_int64(s, i);
}

int store_step(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);

	if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
		sqlite3_reset(s);
		return 0;
	}
	last_error = sqlite3_extended_errcode(store_db) & 0xff;
	sqlite3_reset(s);
	log_warn("store: %s: %s", sqlite3_errmsg(store_db), sqlite3_sql(s));
	if (in_txn && sqlite3_get_autocommit(store_db)) {
		/* SQLite rolled the whole transaction back (it does on some
		 * SQLITE_FULL and I/O errors): everything of this turn is
		 * gone from the database while the scheduler moved on. */
		in_txn = 0;
		rolled_back("the transaction was rolled back");
	}
	return -1;
}

/* rolled_back forgets the open transaction's changes, stops writes until
 * a resync and tells the subscriber (replies that waited for the commit
 * fail). */
static void rolled_back(const char *why)
{
	memset(pending, 0, sizeof(pending));
	memset(sp_mark, 0, sizeof(sp_mark));
	if (!degraded)
		log_warn("store: %s; writes are refused until memory and the "
			 "database agree again", why);
	degraded = 1;
	if (on_rollback)
		on_rollback();
}

int sq_degraded(void)
{
	return degraded;
}

/* sq_set_rollback_hook names the function called when a transaction
 * is lost (rolled back or its COMMIT failed). */
void sq_set_rollback_hook(void (*fn)(void))
{
	on_rollback = fn;
}

/* sq_diverged notes that an operation failed after its caller had
 * already moved on in memory: the next resync puts them in line. */
void sq_diverged(void)
{
	if (!degraded)
		log_warn("store: a write failed; writes are refused until "
			 "memory and the database agree again");
	degraded = 1;
}

void store_count(int from, int to, int64_t n)
{
	if (from >= 0 && from < JS__COUNT)
		pending[from] -= n;
	if (to >= 0 && to < JS__COUNT)
		pending[to] += n;
}

/* sq_job_counts fills counts[JS__COUNT] with the stored jobs by state
 * as of the last commit: kept up to date by every transition, so a scrape
 * is O(1) however many rows are stored. */
int sq_job_counts(int64_t *counts)
{
	memcpy(counts, totals, sizeof(totals));
	return 0;
}

void store_sp_mark(void)
{
	memcpy(sp_mark, pending, sizeof(pending));
}

void store_sp_undo(void)
{
	memcpy(pending, sp_mark, sizeof(pending));
}

/* room tells whether about bytes more fit under the hard size cap, so a
 * write that would hit it is refused (or made smaller) up front instead
 * of failing with SQLITE_FULL, which rolls back the whole turn. */
int store_room(size_t bytes)
{
	sqlite3_stmt *s;
	int64_t used = 0, page = 4096;

	if (!hard_pages)
		return 1;
	s = store_get(S_SIZE);
	if (sqlite3_step(s) == SQLITE_ROW) {
		used = store_col_i64(s, 0);
		page = store_col_i64(s, 1);
	}
	sqlite3_reset(s);
	return used + (int64_t)(bytes * 3) / page + 16 < hard_pages;
}

/* store_step_deleted runs a DELETE … RETURNING state and takes the rows
 * off the counts by state.  Returns the number deleted, or -1. */
int store_step_deleted(sqlite3_stmt *s)
{
	int rc, n = 0, st_;

	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		st_ = job_state_parse((const char *)sqlite3_column_text(s, 0));
		if (st_ >= 0)
			store_count(st_, -1, 1);
		n++;
	}
	if (rc != SQLITE_DONE)
		return store_step(s);   /* logs, notes a rollback */
	sqlite3_reset(s);
	return n;
}

/* step_one runs statement id with v as its only parameter. */
int store_step_one(enum stmt_id id, int64_t v)
{
	sqlite3_stmt *s = store_get(id);

	sqlite3_bind_int64(s, 1, v);
	return store_step(s);
}

void store_bind_text(sqlite3_stmt *s, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(s, i);
}

void store_bind_opt(sqlite3_stmt *s, int i, int64_t v, int present)
{
	if (present)
		sqlite3_bind_int64(s, i, v);
	else
		sqlite3_bind_null(s, i);
}

/* begin opens the turn's write transaction if none is open yet.  While
 * degraded only the resync may write. */
int store_begin(void)
{
	/* Degraded, even the open transaction takes nothing more: what it
	 * holds is committed by the resync, which must not carry along
	 * operations started after the failure. */
	if (degraded && !resyncing) {
		last_error = SQLITE_FULL;
		return -1;
	}
	if (in_txn)
		return 0;
	if (store_exec("BEGIN IMMEDIATE") < 0)
		return -1;
	in_txn = 1;
	return 0;
}

/* store_rollback undoes the open transaction (recovery's, on a failure). */
void store_rollback(void)
{
	if (!in_txn)
		return;
	in_txn = 0;
	store_exec("ROLLBACK");
	memset(pending, 0, sizeof(pending));
}

int sq_dirty(void)
{
	return in_txn;
}

int sq_flush(void)
{
	int i;

	if (!in_txn)
		return 0;
	in_txn = 0;
	if (store_exec("COMMIT") == 0) {
		for (i = 0; i < JS__COUNT; i++)
			totals[i] += pending[i];
		memset(pending, 0, sizeof(pending));
		return 0;
	}
	/* SQLITE_FULL and I/O errors roll the transaction back already;
	 * make sure none stays open either way. */
	if (!sqlite3_get_autocommit(store_db))
		store_exec("ROLLBACK");
	rolled_back("a commit failed");
	return -1;
}

/* load_totals recounts the stored jobs by state from the batches'
 * counters (O(batches): at start and after a resync only). */
static int load_totals(void)
{
	sqlite3_stmt *s = store_get(S_COUNTS);
	int i, rc = -1;

	if (sqlite3_step(s) == SQLITE_ROW) {
		for (i = 0; i < JS__COUNT; i++)
			totals[i] = (int64_t)sqlite3_column_double(s, i);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

/* sq_resync_begin opens a transaction even while degraded, for the
 * engine's resync, and first moves the id counters past every id handed
 * out, so an id of a rolled-back batch is never given twice. */
int sq_resync_begin(void)
{
	char q[512];

	/* After a failed operation (not a lost transaction) the turn's
	 * transaction is still open with the good changes: commit them. */
	if (in_txn && sq_flush() < 0)
		return -1;
	resyncing = 1;
	if (store_begin() < 0)
		goto fail;
	/* The rows may be missing: a lost first-ever transaction takes the
	 * table's sqlite_sequence row with it. */
	snprintf(q, sizeof(q), "UPDATE sqlite_sequence SET seq = max(seq, "
		 "CASE name WHEN 'batches' THEN %lld WHEN 'jobs' THEN %lld "
		 "ELSE 0 END); "
		 "INSERT INTO sqlite_sequence(name, seq) SELECT 'batches', %lld "
		 "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = "
		 "'batches'); "
		 "INSERT INTO sqlite_sequence(name, seq) SELECT 'jobs', %lld "
		 "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = "
		 "'jobs')", (long long)top_batch_id, (long long)top_job_id,
		 (long long)top_batch_id, (long long)top_job_id);
	if (store_exec(q) < 0)
		goto fail;
	return 0;
fail:
	resyncing = 0;
	return -1;
}

/* sq_resync_end commits the resync (ok) or drops it; writes are
 * allowed again once it is on disk.  Returns 0 when it is. */
int sq_resync_end(int ok)
{
	int rc;

	if (!ok && in_txn) {
		in_txn = 0;
		store_exec("ROLLBACK");
	}
	memset(pending, 0, sizeof(pending));
	rc = ok ? sq_flush() : -1;
	resyncing = 0;
	if (rc == 0 && load_totals() == 0) {
		degraded = 0;
		log_info("store: writes work again; memory and the database "
			 "agree");
		return 0;
	}
	degraded = 1;
	return -1;
}

static int migrate(void)
{
	sqlite3_stmt *s;
	int version = 0;
	size_t i;
	char q[64];

	if (sqlite3_prepare_v2(store_db, "PRAGMA user_version", -1, &s, NULL))
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
		if (store_exec("BEGIN IMMEDIATE") < 0)
			return -1;
		if (store_exec(schema_migrations[i]) < 0 || store_exec(q) < 0) {
			store_exec("ROLLBACK");
			return -1;
		}
		if (store_exec("COMMIT") < 0)
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
	sqlite3_stmt *s = store_get(S_SIZE);
	int64_t page = 4096;
	char q[96];

	if (sqlite3_step(s) == SQLITE_ROW)
		page = store_col_i64(s, 1);
	sqlite3_reset(s);
	/* 25% (at least 1 MiB) above the soft cap that refuses submissions:
	 * room for the results of jobs already accepted. */
	max += max / 4 > (1 << 20) ? max / 4 : (1 << 20);
	hard_pages = max / page + 1;
	snprintf(q, sizeof(q), "PRAGMA max_page_count = %lld",
		 (long long)hard_pages);
	return store_exec(q);
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
	rc = sqlite3_prepare_v3(store_db, q, -1, SQLITE_PREPARE_PERSISTENT,
				&st[S_JOB_INSERT_MANY], NULL);
	free(q);
	return rc == SQLITE_OK ? 0 : -1;
}

/* lock_holder returns the pid /proc/locks gives for the flock on the inode
 * of file, preferring a line whose device matches too (some file systems
 * show another device number there than stat), or 0 when none is found. */
static pid_t lock_holder(const struct stat *file)
{
	FILE *f = fopen("/proc/locks", "re");
	unsigned maj, min;
	unsigned long ino;
	char line[256], type[16];
	pid_t pid = 0;
	int p;

	if (!f)
		return 0;
	/* "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"; lines of
	 * waiters read "1: -> FLOCK ..." and do not scan as a pid. */
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*d: %15s %*s %*s %d %x:%x:%lu", type, &p,
			   &maj, &min, &ino) != 5 || strcmp(type, "FLOCK") != 0 ||
		    ino != (unsigned long)file->st_ino)
			continue;
		pid = p;
		if (maj == major(file->st_dev) && min == minor(file->st_dev))
			break;
	}
	fclose(f);
	return pid;
}

int store_lock(const char *path, pid_t *holder)
{
	struct stat file;
	int fd, saved;

	*holder = 0;
	/* Read-only is enough for flock, and O_CREAT makes the empty file
	 * SQLite would have made, so the lock exists before the database. */
	fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return fd;
	saved = errno;
	if (saved == EWOULDBLOCK && fstat(fd, &file) == 0)
		*holder = lock_holder(&file);
	close(fd);
	errno = saved;
	return -1;
}

int sq_open(const char *path)
{
	int i;

	if (sqlite3_open_v2(path, &store_db, SQLITE_OPEN_READWRITE |
			    SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		log_warn("store: cannot open %s: %s", path,
			 store_db ? sqlite3_errmsg(store_db) : "out of memory");
		return -1;
	}
	sqlite3_busy_timeout(store_db, 5000);
	/* FULL: a commit is on disk (WAL fsync'ed) when COMMIT returns, which
	 * is what a 201 promises.  Group commit keeps this cheap. */
	if (store_exec("PRAGMA journal_mode = WAL") < 0 ||
	    store_exec(STORE_CACHE_PRAGMA) < 0 ||
	    store_exec("PRAGMA synchronous = FULL") < 0 ||
	    store_exec("PRAGMA temp_store = MEMORY") < 0 ||
	    store_exec("PRAGMA foreign_keys = ON") < 0 || migrate() < 0)
		return -1;
	for (i = 0; i < S__COUNT; i++) {
		if (i == S_JOB_INSERT_MANY)
			continue;
		if (sqlite3_prepare_v3(store_db, sql[i], -1, SQLITE_PREPARE_PERSISTENT,
				       &st[i], NULL) != SQLITE_OK) {
			log_warn("store: prepare: %s: %s", sqlite3_errmsg(store_db),
				 sql[i]);
			return -1;
		}
	}
	if (prepare_many() < 0 || store_checkpointer_start(path) < 0 ||
	    load_totals() < 0)
		return -1;
	if (sqlite3_open_v2(path, &store_rdb, SQLITE_OPEN_READONLY |
			    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		log_warn("store: cannot open %s for reading: %s", path,
			 store_rdb ? sqlite3_errmsg(store_rdb) : "out of memory");
		return -1;
	}
	sqlite3_busy_timeout(store_rdb, 5000);
	if (sqlite3_exec(store_rdb, STORE_CACHE_PRAGMA, NULL, NULL, NULL)) {
		log_warn("store: %s: %s", STORE_CACHE_PRAGMA,
			 sqlite3_errmsg(store_rdb));
		return -1;
	}
	return cfg.max_db_bytes ? cap_size(cfg.max_db_bytes) : 0;
}

void sq_close(void)
{
	int i;

	sq_flush();
	store_checkpointer_stop();
	for (i = 0; i < S__COUNT; i++) {
		sqlite3_finalize(st[i]);
		sqlite3_finalize(rst[i]);
		st[i] = rst[i] = NULL;
	}
	sq_webhook_close();
	sqlite3_close(store_rdb);
	sqlite3_close(store_db);
	store_db = store_rdb = NULL;
	degraded = resyncing = in_txn = 0;
	memset(totals, 0, sizeof(totals));
	memset(pending, 0, sizeof(pending));
}

int sq_ping(void)
{
	return store_exec("SELECT 1 FROM batches LIMIT 1");
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
		s = store_get(k == 1 ? S_JOB_INSERT : S_JOB_INSERT_MANY);
		for (size_t r = 0; r < k; r++)
			bind_job(s, 1 + (int)r * JOB_PARAMS, batch_id, i + r,
				 json_array_get(jobs, i + r), now);
		if (store_step(s) < 0)
			return -1;
		if (i == 0)
			*first = sqlite3_last_insert_rowid(store_db) - (int64_t)k + 1;
	}
	return 0;
}

/* then_set stores a batch's follow-up, {on, batch}, as pending. */
static int then_set(int64_t batch_id, const json_t *then)
{
	sqlite3_stmt *s = store_get(S_THEN_SET);
	char *body = json_dumps(json_object_get(then, "batch"), JSON_COMPACT);

	if (!body)
		return -1;
	store_bind_text(s, 1, json_string_value(json_object_get(then, "on")));
	sqlite3_bind_text(s, 2, body, -1, free);
	sqlite3_bind_int64(s, 3, batch_id);
	return store_step(s);
}

int sq_batch_insert(const json_t *req, int64_t now, const char *key,
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
		if (!store_room(len + n * 200)) {
			last_error = SQLITE_FULL;
			return -1;
		}
	}
	if (store_begin() < 0)
		return -1;
	/* A savepoint per batch: a failure half-way removes this batch's
	 * rows only, never the other work of the turn. */
	if (store_exec("SAVEPOINT batch") < 0)
		return -1;
	s = store_get(S_BATCH_INSERT);
	store_bind_text(s, 1, json_string_value(json_object_get(req, "name")));
	v = json_object_get(req, "concurrency");
	store_bind_opt(s, 2, v ? (int64_t)json_number_value(v) : 0, v != NULL);
	v = json_object_get(req, "priority");
	sqlite3_bind_int(s, 3, v ? (int)json_number_value(v) : 0);
	sqlite3_bind_int64(s, 4, now);
	sqlite3_bind_int64(s, 5, (int64_t)n);
	sqlite3_bind_int64(s, 6, (int64_t)n);
	v = json_object_get(req, "halt");
	if (v)
		sqlite3_bind_text(s, 7, json_dumps(v, JSON_COMPACT), -1, free);
	else
		sqlite3_bind_null(s, 7);
	v = json_object_get(req, "timeout_pct");
	if (v)
		sqlite3_bind_double(s, 8, json_number_value(v));
	else
		sqlite3_bind_null(s, 8);
	if (store_step(s) < 0)
		goto fail;
	*id = sqlite3_last_insert_rowid(store_db);
	if (insert_jobs(*id, jobs, now, &first) < 0)
		goto fail;
	v = json_object_get(req, "then");
	if (v && then_set(*id, v) < 0)
		goto fail;
	/* In the batch's savepoint: a batch is never stored without it. */
	v = json_object_get(req, "webhook");
	if (v && sq_webhook_insert(*id, v, json_is_true(json_object_get(v,
				   "generated"))) < 0)
		goto fail;
	s = store_get(S_SET_FIRST);
	sqlite3_bind_int64(s, 1, first);
	sqlite3_bind_int64(s, 2, *id);
	if (store_step(s) < 0)
		goto fail;
	ids = json_array();
	for (i = 0; i < n; i++) {
		fmt_id(buf, sizeof(buf), 'j', first + (int64_t)i);
		json_array_append_new(ids, json_string(buf));
	}
	if (key) {
		s = store_get(S_IDEM_PUT);
		store_bind_text(s, 1, key);
		store_bind_text(s, 2, hash);
		sqlite3_bind_int64(s, 3, *id);
		sqlite3_bind_int64(s, 4, now);
		if (store_step(s) < 0) {
			json_decref(ids);
			goto fail;
		}
	}
	store_exec("RELEASE batch");
	store_count(-1, JS_QUEUED, (int64_t)n);
	if (*id > top_batch_id)
		top_batch_id = *id;
	if (n && first + (int64_t)n - 1 > top_job_id)
		top_job_id = first + (int64_t)n - 1;
	*job_ids = ids;
	return 0;
fail:
	store_exec("ROLLBACK TO batch");
	store_exec("RELEASE batch");
	return -1;
}

/* sq_idem_get looks up an Idempotency-Key not older than since.
 * Returns 0 with hash (33 bytes) and *batch_id set, 1 when unknown, -1. */
int sq_idem_get(const char *key, int64_t since, char *hash,
		   int64_t *batch_id)
{
	sqlite3_stmt *s = store_get(S_IDEM_GET);
	int rc;

	store_bind_text(s, 1, key);
	sqlite3_bind_int64(s, 2, since);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		snprintf(hash, 33, "%s", sqlite3_column_text(s, 0));
		*batch_id = store_col_i64(s, 1);
	}
	sqlite3_reset(s);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? 1 : -1;
}

/* sq_purge_step deletes at most max rows of terminal batches that
 * finished before cutoff (jobs first, the batch row once it has none), and
 * idempotency keys older than key_cutoff.  Bounded so that retention never
 * stalls the loop.  Returns the number of rows deleted, or -1. */
static int purge_step_(int64_t cutoff, int64_t key_cutoff, int max)
{
	sqlite3_stmt *s;
	int64_t batch_id = 0;
	int n = 0, rc;

	if (store_begin() < 0)
		return -1;
	s = store_get(S_PURGE_KEYS);
	sqlite3_bind_int64(s, 1, key_cutoff);
	sqlite3_bind_int(s, 2, max);
	if (store_step(s) < 0)
		return -1;
	n += sqlite3_changes(store_db);
	if (cutoff <= 0)
		return n;
	s = store_get(S_PURGE_PICK);
	sqlite3_bind_int64(s, 1, cutoff);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		batch_id = store_col_i64(s, 0);
	sqlite3_reset(s);
	if (!batch_id)
		return n;
	s = store_get(S_PURGE_JOBS);
	sqlite3_bind_int64(s, 1, batch_id);
	sqlite3_bind_int(s, 2, max);
	if ((rc = store_step_deleted(s)) < 0)
		return -1;
	n += rc;
	if (rc < max) {
		if (store_step_one(S_BATCH_DEL_KEYS, batch_id) < 0)
			return -1;
		if (store_step_one(S_BATCH_DEL, batch_id) < 0)
			return -1;
		n++;
		/* Logged here, the one place that knows the id; the
		 * commit follows within the loop turn. */
		log_event(LOG_INFO, "purge", batch_id, 0, "retention: purged "
			  "batch b_%012lld", (long long)batch_id);
	}
	return n;
}

/* sq_full tells whether the last failure was the database running out
 * of room (disk full or --max-db-bytes), as opposed to a fault. */
int sq_full(void)
{
	return last_error == SQLITE_FULL || last_error == SQLITE_IOERR;
}

int sq_purge_step(int64_t cutoff, int64_t key_cutoff, int max)
{
	if (store_sp_begin() < 0)
		return -1;
	return store_sp_end(purge_step_(cutoff, key_cutoff, max));
}

const struct store_ops sqlite_store_ops = {
	.name = "sqlite",
	.open = sq_open,
	.close = sq_close,
	.flush = sq_flush,
	.dirty = sq_dirty,
	.recover = sq_recover,
	.degraded = sq_degraded,
	.diverged = sq_diverged,
	.set_rollback_hook = sq_set_rollback_hook,
	.resync_begin = sq_resync_begin,
	.resync = sq_resync,
	.resync_end = sq_resync_end,
	.load_active = sq_load_active,
	.batch_insert = sq_batch_insert,
	.idem_get = sq_idem_get,
	.job_ids = sq_job_ids,
	.purge_step = sq_purge_step,
	.size_bytes = sq_size_bytes,
	.job_counts = sq_job_counts,
	.full = sq_full,
	.batch_info = sq_batch_info,
	.batch_json = sq_batch_json,
	.batch_json_pending = sq_batch_json_pending,
	.job_json = sq_job_json,
	.job_batch = sq_job_batch,
	.batch_list = sq_batch_list,
	.job_list = sq_job_list,
	.jobs_peek = sq_jobs_peek,
	.job_start = sq_job_start,
	.job_claim = sq_job_claim,
	.jobs_done = sq_jobs_done,
	.job_finish = sq_job_finish,
	.job_requeue = sq_job_requeue,
	.job_retry = sq_job_retry,
	.job_cancel_queued = sq_job_cancel_queued,
	.job_cancel_req = sq_job_cancel_req,
	.batch_cancel = sq_batch_cancel,
	.batch_cancel_except = sq_batch_cancel_except,
	.batch_delete = sq_batch_delete,
	.then_child = sq_then_child,
	.jobs_rerun = sq_jobs_rerun,
	.batch_policy = sq_batch_policy,
	.batch_runs = sq_batch_runs,
	.batch_halt = sq_batch_halt,
	.batch_set = sq_batch_set,
	.dispatch_set = sq_dispatch_set,
	.dispatch_get = sq_dispatch_get,
	.jobs_list = sq_jobs_list,
	.ping = sq_ping,
	.memory_bytes = sq_memory_bytes,
	.webhook_insert = sq_webhook_insert,
	.webhook_claim = sq_webhook_claim,
	.webhook_body = sq_webhook_body,
	.webhook_result = sq_webhook_result,
	.webhook_release = sq_webhook_release,
	.webhook_list = sq_webhook_list,
	.webhook_json = sq_webhook_json,
};
