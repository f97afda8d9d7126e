/* store.h - what the two store files share: the prepared statements and
 * their helpers.  Only store*.c include it; SQL lives nowhere else. */
#ifndef JOBPOOL_STORE_H
#define JOBPOOL_STORE_H

#include <sqlite3.h>

enum stmt_id {
	S_BATCH_INSERT, S_JOB_INSERT, S_BATCH_GET, S_JOB_GET, S_JOB_BATCH,
	S_NEXT_QUEUED, S_JOB_START, S_BATCH_START, S_JOB_FINISH,
	S_JOB_DONE, S_BATCH_DONE,
	S_BATCH_FINISH, S_BATCH_SETTLE, S_JOB_REQUEUE, S_BATCH_REQUEUE,
	S_JOB_CANCEL_Q, S_BATCH_CANCEL_Q, S_BATCH_CANCEL_REQ, S_JOB_CANCEL_REQ,
	S_BATCH_CANCEL_JOBS, S_BATCH_DEL_JOBS, S_BATCH_DEL, S_BATCH_DEL_KEYS, S_LIST_B,
	S_LIST_B_STATE, S_LIST_J, S_LIST_J_STATE, S_ACTIVE, S_INFO,
	S_IDEM_GET, S_IDEM_PUT, S_JOB_IDS, S_PURGE_PICK, S_PURGE_JOBS,
	S_PURGE_KEYS, S_SIZE, S_COUNTS, S_QUEUED_IDS, S_JOB_RANGE, S_SET_FIRST,
	S_JOB_INSERT_MANY, S_SP, S_SP_RELEASE, S_SP_ROLLBACK,
	S_POLICY, S_RUNS, S_HALT,
	S_THEN_SET, S_THEN_GET, S_THEN_DONE, S_THEN_PARENT, S_THEN_CHILD,
	S_BATCH_SET, S_LIST_ALL_J, S_LIST_ALL_J_STATE,
	S_DISPATCH_SET, S_DISPATCH_GET,
	S__COUNT
};

/* The batch state after a transition, derived from its counters. */
#define SETTLE_STATE \
	"CASE WHEN n_queued = 0 AND n_running = 0 THEN " \
	"  CASE WHEN n_succeeded = n_total THEN 'succeeded' " \
	"       WHEN cancel_req THEN 'canceled' ELSE 'failed' END " \
	"WHEN started_at IS NULL THEN 'queued' ELSE 'running' END"

/* Page cache per connection, set explicitly rather than left to the
 * build's default: the writer's and the reader's hold the hot pages (the
 * queue's head, recent batches), the checkpointer copies WAL frames and
 * needs little.  Memory stays flat however large the database grows. */
#define STORE_CACHE_PRAGMA "PRAGMA cache_size = -2048"        /* KiB */
#define STORE_CKPT_CACHE_PRAGMA "PRAGMA cache_size = -256"

extern sqlite3 *store_db;

/* store_exec runs SQL without results; logs and returns -1 on error. */
int store_exec(const char *q);
int store_checkpointer_start(const char *path);
void store_checkpointer_stop(void);

int store_begin(void);
void store_rollback(void);
/* store_step runs a statement that returns no rows; logs, notes a
 * rolled-back transaction, and returns -1 on error. */
int store_step(sqlite3_stmt *s);
int store_step_one(enum stmt_id id, int64_t v);
void store_bind_opt(sqlite3_stmt *s, int i, int64_t v, int present);
int store_room(size_t bytes);
int store_sp_begin(void);
int store_sp_end(int rc);
void store_sp_mark(void);
void store_sp_undo(void);
/* store_count moves n jobs between states in the counts behind /metrics
 * (-1: from or to nothing); they take effect with the commit. */
void store_count(int from, int to, int64_t n);
int store_step_deleted(sqlite3_stmt *s);
/* store_rget is store_get on the connection that sees only commits. */
sqlite3_stmt *store_rget(enum stmt_id id);

/* store_get resets and returns prepared statement id, ready for binding. */
sqlite3_stmt *store_get(enum stmt_id id);
int64_t store_col_i64(sqlite3_stmt *s, int i);
/* store_bind_text binds v (copied), or NULL when v is NULL. */
void store_bind_text(sqlite3_stmt *s, int i, const char *v);

/* The SQLite backend's side of the store_* seam (store_ops.h). */
int sq_open(const char *path);
void sq_close(void);
int sq_flush(void);
int sq_dirty(void);
int sq_recover(int64_t now, int *requeued, int *interrupted,
		void (*fn)(int64_t job_id, void *ctx), void *ctx);
int sq_degraded(void);
void sq_diverged(void);
void sq_set_rollback_hook(void (*fn)(void));
int sq_resync_begin(void);
int sq_resync(int64_t now, const struct live_job *live, size_t n, int *requeued,
		int *interrupted);
int sq_resync_end(int ok);
int sq_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		void *ctx);
int sq_batch_insert(const json_t *req, int64_t now, const char *key,
		const char *hash, int64_t *id, json_t **job_ids);
int sq_idem_get(const char *key, int64_t since, char *hash, int64_t *batch_id);
json_t *sq_job_ids(int64_t batch_id);
int sq_purge_step(int64_t cutoff, int64_t key_cutoff, int max);
int64_t sq_size_bytes(void);
int sq_job_counts(int64_t *counts);
int sq_full(void);
int sq_batch_info(int64_t id, struct batch_info *b);
json_t *sq_batch_json(int64_t id);
json_t *sq_batch_json_pending(int64_t id);
json_t *sq_job_json(int64_t id);
int sq_job_batch(int64_t job_id, int64_t *batch_id, enum job_state *st,
		int *attempts);
json_t *sq_batch_list(const char *state, int64_t after, int limit);
json_t *sq_job_list(int64_t batch_id, const char *state, int64_t after,
		int limit);
int sq_jobs_peek(int64_t batch_id, int64_t now, int any_due, int64_t after_idx,
		int limit, struct claim *out);
int sq_job_start(const struct claim *c, int slot, pid_t pid,
		int64_t started_at);
int sq_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		int any_due, struct claim *c);
int sq_jobs_done(int64_t batch_id, const struct group_done *d, int n, int slot,
		pid_t pid, int *batch_done);
int sq_job_finish(int64_t job_id, int64_t batch_id, const struct outcome *o,
		const struct slot *w, int *batch_done);
int sq_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		int64_t not_before);
int sq_job_retry(int64_t job_id, int64_t batch_id, const struct outcome *o,
		const struct slot *w, int64_t not_before);
int sq_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
		int *batch_done);
int sq_job_cancel_req(int64_t job_id);
int sq_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx);
int sq_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx, const int64_t *keep, size_t nkeep);
int sq_batch_delete(int64_t batch_id);
int64_t sq_then_child(int64_t batch_id);
int sq_then_sweep(int64_t now);
int sq_batch_policy(int64_t batch_id, struct batch_policy *p);
int sq_batch_runs(int64_t batch_id, int64_t *out, int max);
int sq_batch_halt(int64_t batch_id, const char *reason, int64_t at, int soon);
int sq_batch_set(int64_t batch_id, int paused, int64_t priority,
		 int64_t concurrency);
int sq_dispatch_set(int paused);
int sq_dispatch_get(void);
json_t *sq_jobs_list(const char *states, int64_t after, int limit);
int sq_ping(void);
int64_t sq_memory_bytes(void);

#endif
