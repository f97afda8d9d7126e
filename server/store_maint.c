/* store_maint.c - the store's housekeeping: WAL checkpoints on their own
 * thread, recovery at start, and the counts behind /metrics and the size
 * cap. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

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
	sqlite3_exec(c, STORE_CKPT_CACHE_PRAGMA, NULL, NULL, NULL);
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

int store_checkpointer_start(const char *path)
{
	sigset_t all, old;
	int rc;

	ckpt_path = strdup(path);
	if (!ckpt_path || store_exec("PRAGMA wal_autocheckpoint = 0") < 0)
		return -1;
	/* The stop of a store closed before must not stop this one's thread
	 * as soon as it starts. */
	ckpt_stop = ckpt_due = 0;
	/* The thread must never take a signal: SIGTERM and SIGCHLD belong
	 * to the loop's signalfd, and an unblocked thread would let SIGTERM
	 * kill the process.  It inherits this full mask. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&ckpt_thread, NULL, checkpointer, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		/* Not fatal: SQLite checkpoints inline as before. */
		store_exec("PRAGMA wal_autocheckpoint = 1000");
		return 0;
	}
	ckpt_running = 1;
	sqlite3_wal_hook(store_db, wal_hook, NULL);
	return 0;
}

void store_checkpointer_stop(void)
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

int64_t sq_memory_bytes(void)
{
	return sqlite3_memory_used();
}

/* sq_size_bytes is the space the data uses (free pages excluded). */
int64_t sq_size_bytes(void)
{
	sqlite3_stmt *s = store_get(S_SIZE);
	int64_t n = -1;

	if (sqlite3_step(s) == SQLITE_ROW)
		n = store_col_i64(s, 0) * store_col_i64(s, 1);
	sqlite3_reset(s);
	return n;
}

/* SQL_TIME renders a microsecond value like fmt_time() does: whole
 * milliseconds, cut not rounded (the integer division), since strftime's
 * %f rounds.  (In an UPDATE, columns on the right side are the row's old
 * values.) */
#define SQL_TIME(col) "strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', (" col \
	") / 1000 / 1000.0, 'unixepoch')"
/* The history entry of an attempt the server's death interrupted; takes
 * the time of recovery as its end (one %lld) and ends as st. */
#define INTERRUPTED_ENTRY(st) "json_insert(history, '$[#]', json_object(" \
	"'attempt', attempts, 'state', '" st "', " \
	"'started_at', " SQL_TIME("started_at") ", " \
	"'finished_at', " SQL_TIME("%lld") ", " \
	"'run_ms', NULL, 'exit_code', NULL, 'signal', NULL, " \
	"'error', 'interrupted', 'worker', CASE WHEN worker_slot IS NULL " \
	"THEN NULL ELSE json_object('slot', worker_slot, 'pid', " \
	"worker_pid, 'node', worker_node) END))"
#define COUNT_OF(st) "(SELECT count(*) FROM jobs j WHERE " \
	"j.batch_id = batches.id AND j.state = '" st "')"
#define RECOUNT "UPDATE batches SET n_queued = " COUNT_OF("queued") ", " \
	"n_running = " COUNT_OF("running") ", " \
	"n_succeeded = " COUNT_OF("succeeded") ", " \
	"n_failed = " COUNT_OF("failed") ", " \
	"n_timed_out = " COUNT_OF("timed_out") ", " \
	"n_canceled = " COUNT_OF("canceled") " " \
	"WHERE state IN ('queued', 'running')"
/* A client asked to cancel it, or its batch: the cancel wins. */
#define CANCELED_REQ "(cancel_req OR batch_id IN (SELECT id FROM batches " \
	"WHERE cancel_req AND state IN ('queued', 'running')))"

/* recover_rows settles the jobs left 'running' without a worker (except
 * those the condition excl, an SQL fragment, leaves out): canceled when a
 * cancel was asked for, back to the queue with attempts left, else failed
 * as "interrupted"; then recounts and settles the unfinished batches. */
static int recover_rows(int64_t now, const char *excl, int *requeued,
			int *interrupted)
{
	char q[1536];

	/* Each way, the interrupted attempt is one entry of history. */
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'canceled', "
		 "finished_at = %lld, error = 'canceled while running', "
		 "history = " INTERRUPTED_ENTRY("canceled") " WHERE state = "
		 "'running' AND " CANCELED_REQ "%s", (long long)now,
		 (long long)now, excl);
	if (store_exec(q) < 0)
		return -1;
	*interrupted = sqlite3_changes(store_db);
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'queued', "
		 "queued_at = %lld, worker_slot = NULL, worker_pid = NULL, "
		 "worker_node = NULL, "
		 "started_at = NULL, error = 'interrupted', "
		 "history = " INTERRUPTED_ENTRY("failed") " WHERE state = "
		 "'running' AND attempts < max_attempts%s", (long long)now,
		 (long long)now, excl);
	if (store_exec(q) < 0)
		return -1;
	*requeued = sqlite3_changes(store_db);
	/* Backoff timers lived in memory that is gone: due at once. */
	if (store_exec("UPDATE jobs SET not_before = 0 WHERE state = 'queued' "
		 "AND not_before > 0") < 0)
		return -1;
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'failed', "
		 "finished_at = %lld, error = 'interrupted', "
		 "history = " INTERRUPTED_ENTRY("failed") " WHERE state = "
		 "'running'%s", (long long)now, (long long)now, excl);
	if (store_exec(q) < 0)
		return -1;
	*interrupted += sqlite3_changes(store_db);
	/* A job a worker held in a group stays queued until the worker
	 * answers a cancel of it (or of its batch): with the worker gone, the
	 * stored cancel decides, and the job never starts. */
	snprintf(q, sizeof(q), "UPDATE jobs SET state = 'canceled', "
		 "finished_at = %lld, error = 'canceled before it started' "
		 "WHERE state = 'queued' AND " CANCELED_REQ "%s",
		 (long long)now, excl);
	if (store_exec(q) < 0)
		return -1;
	if (store_exec(RECOUNT) < 0)
		return -1;
	snprintf(q, sizeof(q), "UPDATE batches SET state = " SETTLE_STATE ", "
		 "finished_at = CASE WHEN n_queued = 0 AND n_running = 0 "
		 "THEN coalesce(finished_at, %lld) END "
		 "WHERE state IN ('queued', 'running')", (long long)now);
	if (store_exec(q) < 0)
		return -1;
	/* the batches this ended fire their follow-ups, in this transaction */
	if (sq_then_sweep(now) < 0)
		return -1;
	sq_webhook_idle();
	return 0;
}

/* sq_recover runs once at start, before any worker exists: a job still
 * 'running' lost its worker with the previous server (see recover_rows);
 * every unfinished batch's counters are recounted from its jobs so nothing
 * depends on what the dead server managed to write. */
int sq_recover(int64_t now, int *requeued, int *interrupted,
		  void (*fn)(int64_t job_id, void *ctx), void *ctx)
{
	sqlite3_stmt *s;

	/* The command jobs among them may have left processes behind. */
	if (sqlite3_prepare_v2(store_db, "SELECT id FROM jobs WHERE state = "
			       "'running' AND kind = 'command'", -1, &s,
			       NULL) != SQLITE_OK)
		return -1;
	while (fn && sqlite3_step(s) == SQLITE_ROW)
		fn(sqlite3_column_int64(s, 0), ctx);
	sqlite3_finalize(s);
	/* the turn's transaction: a follow-up batch it creates is stored
	 * as any submission is */
	if (store_begin() < 0)
		return -1;
	if (recover_rows(now, "", requeued, interrupted) < 0) {
		store_rollback();
		return -1;
	}
	return sq_flush();
}

/* sq_resync puts the database in line with memory after a lost
 * transaction, inside sq_resync_begin's transaction: the n jobs that
 * workers run now are 'running' (their claim may have been lost); every
 * other 'running' job lost its outcome and is recovered as after a crash.
 * Returns 0, or -1 (the caller drops the transaction). */
int sq_resync(int64_t now, const struct live_job *live, size_t n,
		 int *requeued, int *interrupted)
{
	sqlite3_stmt *s = NULL;
	size_t i;
	int rc = -1;

	if (store_exec("CREATE TEMP TABLE IF NOT EXISTS live "
		       "(id INTEGER PRIMARY KEY)") < 0 ||
	    store_exec("DELETE FROM temp.live") < 0)
		return -1;
	if (sqlite3_prepare_v2(store_db, "UPDATE jobs SET state = 'running', "
			       "attempts = ?2, started_at = ?3, finished_at = "
			       "NULL, worker_slot = ?4, worker_pid = ?5, "
			       "worker_node = ?6 "
			       "WHERE id = ?1 AND state = 'queued'; ", -1, &s,
			       NULL) != SQLITE_OK)
		return -1;
	for (i = 0; i < n; i++) {
		if (live[i].held)
			continue;       /* queued in a worker's group */
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, live[i].job_id);
		sqlite3_bind_int(s, 2, live[i].attempts);
		sqlite3_bind_int64(s, 3, live[i].started_at);
		sqlite3_bind_int(s, 4, live[i].slot);
		sqlite3_bind_int(s, 5, (int)live[i].pid);
		store_bind_text(s, 6, cfg.node_name);
		if (sqlite3_step(s) != SQLITE_DONE)
			goto out;
	}
	sqlite3_finalize(s);
	s = NULL;
	if (sqlite3_prepare_v2(store_db, "INSERT OR IGNORE INTO temp.live "
			       "VALUES (?)", -1, &s, NULL) != SQLITE_OK)
		return -1;
	for (i = 0; i < n; i++) {
		sqlite3_reset(s);
		sqlite3_bind_int64(s, 1, live[i].job_id);
		if (sqlite3_step(s) != SQLITE_DONE)
			goto out;
	}
	rc = recover_rows(now, " AND id NOT IN (SELECT id FROM temp.live)",
			  requeued, interrupted);
out:
	sqlite3_finalize(s);
	return rc;
}
