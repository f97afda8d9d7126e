/* store_ops.h - the store seam: every store_* call the engine and the API
 * make goes through one table of functions, chosen when the store opens by
 * the --db value (a path: SQLite, the embedded default; a postgres:// URL:
 * PostgreSQL).  The backends share nothing but this table and the types of
 * jobpool.h. */
#ifndef JOBPOOL_STORE_OPS_H
#define JOBPOOL_STORE_OPS_H

#include "jobpool.h"

struct store_ops {
	const char *name;
	/* Claims are committed before a worker sees the job (other nodes
	 * could claim it otherwise), and no job is handed out held in a group
	 * (its row would look queued to them). */
	int dispatch_after_commit;
	/* tick does the store's periodic work: job changes it made that the
	 * engine should publish (a dead node's jobs re-queued), and cancels
	 * other nodes asked for of this node's running jobs.  NULL: none. */
	int (*tick)(int64_t now, const struct store_tick *cb);
	/* nodes_json lists the nodes sharing the store; NULL: this one only */
	json_t *(*nodes_json)(void);
	/* the shared event log (see store_events_append); NULL: none */
	int (*events_append)(const struct change *c, size_t n);
	int64_t (*events_start)(void);
	int (*jobs_release)(const int64_t *ids, size_t n);
	/* outcomes refused by the fence, jobs rescued from dead nodes */
	void (*cluster_stats)(int64_t *stale, int64_t *rescued);
	int (*open)(const char *path);
	void (*close)(void);
	int (*flush)(void);
	int (*dirty)(void);
	int (*recover)(int64_t now, int *requeued, int *interrupted,
		void (*fn)(int64_t job_id, void *ctx), void *ctx);
	int (*degraded)(void);
	void (*diverged)(void);
	void (*set_rollback_hook)(void (*fn)(void));
	int (*resync_begin)(void);
	int (*resync)(int64_t now, const struct live_job *live, size_t n,
		int *requeued, int *interrupted);
	int (*resync_end)(int ok);
	int (*load_active)(void (*fn)(const struct batch_info *b, void *ctx),
		void *ctx);
	int (*batch_insert)(const json_t *req, int64_t now, const char *key,
		const char *hash, int64_t *id, json_t **job_ids);
	int (*idem_get)(const char *key, int64_t since, char *hash,
		int64_t *batch_id);
	json_t *(*job_ids)(int64_t batch_id);
	int (*purge_step)(int64_t cutoff, int64_t key_cutoff, int max);
	int64_t (*size_bytes)(void);
	int (*job_counts)(int64_t *counts);
	int (*full)(void);
	int (*batch_info)(int64_t id, struct batch_info *b);
	json_t *(*batch_json)(int64_t id);
	json_t *(*batch_json_pending)(int64_t id);
	json_t *(*job_json)(int64_t id);
	int (*job_batch)(int64_t job_id, int64_t *batch_id, enum job_state *st,
		int *attempts);
	json_t *(*batch_list)(const char *state, int64_t after, int limit);
	json_t *(*job_list)(int64_t batch_id, const char *state, int64_t after,
		int limit);
	int (*jobs_peek)(int64_t batch_id, int64_t now, int any_due,
		int64_t after_idx, int limit, struct claim *out);
	int (*job_start)(const struct claim *c, int slot, pid_t pid,
		int64_t started_at);
	int (*job_claim)(int64_t batch_id, int slot, pid_t pid, int64_t now,
		int any_due, struct claim *c);
	int (*jobs_done)(int64_t batch_id, const struct group_done *d, int n,
		int slot, pid_t pid, int *batch_done);
	int (*job_finish)(int64_t job_id, int64_t batch_id,
		const struct outcome *o, const struct slot *w, int *batch_done);
	int (*job_requeue)(int64_t job_id, int64_t batch_id, int undo_attempt,
		int64_t not_before);
	int (*job_retry)(int64_t job_id, int64_t batch_id,
		const struct outcome *o, const struct slot *w,
		int64_t not_before);
	int (*job_cancel_queued)(int64_t job_id, int64_t batch_id, int64_t now,
		int *batch_done);
	int (*job_cancel_req)(int64_t job_id);
	int (*batch_cancel)(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx);
	int (*batch_cancel_except)(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx, const int64_t *keep, size_t nkeep);
	int (*batch_delete)(int64_t batch_id);
	int64_t (*then_child)(int64_t batch_id);
	int (*jobs_rerun)(int64_t batch_id, int64_t job_id, unsigned states,
		int64_t now, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx);
	/* halt policies and relative timeouts (see store_batch_policy) */
	int (*batch_policy)(int64_t batch_id, struct batch_policy *p);
	int (*batch_runs)(int64_t batch_id, int64_t *out, int max);
	int (*batch_halt)(int64_t batch_id, const char *reason, int64_t at,
		int soon);
	int (*ping)(void);
	int64_t (*memory_bytes)(void);
	/* pause and PATCH (see store_batch_set), GET /v1/jobs */
	int (*batch_set)(int64_t batch_id, int paused, int64_t priority,
		int64_t concurrency);
	/* the server-wide pause (see store_dispatch_set) */
	int (*dispatch_set)(int paused);
	int (*dispatch_get)(void);
	json_t *(*jobs_list)(const char *states, int64_t after, int limit);
	/* webhooks: the outbox (see store_webhook_claim in jobpool.h) */
	int (*webhook_insert)(int64_t batch_id, const json_t *webhook,
		int generated);
	int (*webhook_claim)(int64_t now, int64_t lease_until, int max,
		struct delivery *out, int64_t *next_due);
	int (*webhook_body)(int64_t id, const char *body);
	int (*webhook_result)(int64_t id, int n, int64_t at, int64_t took_us,
		int status, const char *error, int delivered, int64_t next_at);
	int (*webhook_release)(int64_t now);
	json_t *(*webhook_list)(int64_t batch_id, const char *state,
		int64_t after, int limit);
	json_t *(*webhook_json)(int64_t batch_id, int with_secret);
};

/* The webhook outbox of each backend (store_webhook.c,
 * store_pg_webhook.c); their rows are written by the schema's triggers. */
int sq_webhook_insert(int64_t batch_id, const json_t *webhook, int generated);
void sq_webhook_idle(void);
int sq_webhook_reopen(int64_t batch_id);
/* Ended jobs back in the queue (store_rerun.c, store_pg_rerun.c); see
 * store_jobs_rerun in jobpool.h. */
int sq_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		  int64_t now, void (*fn)(int64_t job_id, int attempts,
					  void *ctx), void *ctx);
int pg_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		  int64_t now, void (*fn)(int64_t job_id, int attempts,
					  void *ctx), void *ctx);
int sq_webhook_claim(int64_t now, int64_t lease_until, int max,
		struct delivery *out, int64_t *next_due);
int sq_webhook_body(int64_t id, const char *body);
int sq_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
		int status, const char *error, int delivered, int64_t next_at);
int sq_webhook_release(int64_t now);
json_t *sq_webhook_list(int64_t batch_id, const char *state, int64_t after,
		int limit);
json_t *sq_webhook_json(int64_t batch_id, int with_secret);
void sq_webhook_close(void);
int pg_webhook_insert(int64_t batch_id, const json_t *webhook, int generated);
int pg_webhook_claim(int64_t now, int64_t lease_until, int max,
		struct delivery *out, int64_t *next_due);
int pg_webhook_body(int64_t id, const char *body);
int pg_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
		int status, const char *error, int delivered, int64_t next_at);
int pg_webhook_release(int64_t now);
json_t *pg_webhook_list(int64_t batch_id, const char *state, int64_t after,
		int limit);
json_t *pg_webhook_json(int64_t batch_id, int with_secret);
struct row;
/* store_delivery_json renders a delivery row: id, msg_id, event, job_id,
 * url, state, attempts, created_at, next_at, last_status, last_error,
 * delivered_at (columns 0..11, as both stores select them); the caller
 * adds its history.  New. */
#define DELIVERY_COLS "id, msg_id, event, job_id, url, state, attempts, " \
	"created_at, next_at, last_status, last_error, delivered_at, batch_id"
json_t *store_delivery_json(const struct row *r);
json_t *store_attempt_json(const struct row *r, int col);

/* A row of a result, whatever the backend: h is its statement or result
 * set, n the row's number in it. */
struct row {
	void *h;
	int n;
	int (*null)(const struct row *r, int col);
	int64_t (*i64)(const struct row *r, int col);
	double (*dbl)(const struct row *r, int col);
	const char *(*text)(const struct row *r, int col);
};

/* A job's columns in the order store_render_job reads them; the two
 * stores name them alike. */
#define JOB_COLS "id, batch_id, idx, name, kind, args, state, attempts, " \
	"max_attempts, retry_on, retry_backoff_s, timeout_s, created_at, " \
	"queued_at, started_at, finished_at, run_us, user_us, sys_us, " \
	"max_rss_kb, worker_slot, worker_pid, exit_code, signal, error, " \
	"result, history, output, worker_node"

/* The API's view of a batch and of a job, from a row whose columns are
 * each store's BATCH_COLS or JOB_COLS (store_read.c).  A batch's columns
 * end with halt, timeout_pct, halted_reason, halted_at (BATCH_POLICY_COL
 * is the first of them), then parent_id, then_batch_id, then_state
 * (BATCH_THEN_COL, the follow-up batches), in both stores. */
#define BATCH_POLICY_COL 17
#define BATCH_THEN_COL 21
/* Then paused (0/1) and the sum of the running jobs' started_at (µs), from
 * which a running batch's parallelism counts their run so far. */
#define BATCH_PAUSE_COL 24
json_t *store_render_batch(const struct row *r);
json_t *store_render_job(const struct row *r);

/* The history entry of one attempt, run by the worker in slot (pid) of
 * this node (store_jobs.c). */
json_t *store_history_entry(const struct outcome *o, int64_t started_at,
			    int attempt, int slot, pid_t pid);

/* The same entry as text, written without jansson (a group's many). */
int store_history_text(char *buf, size_t size, const struct outcome *o,
		       int64_t started_at, int attempt, int slot, pid_t pid);

extern const struct store_ops sqlite_store_ops;
#ifdef HAVE_LIBPQ
extern const struct store_ops pg_store_ops;
#endif

#endif
