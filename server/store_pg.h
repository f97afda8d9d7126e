/* store_pg.h - what the PostgreSQL store's files share.  Only store_pg*.c
 * include it; SQL lives nowhere else.
 *
 * Three connections: the loop's (one write transaction per loop turn, as
 * with SQLite: a 201 means committed), a second one for id blocks (its own
 * tiny transactions, so two nodes submitting never wait on each other's
 * turn), and the lease thread's (store_pg_node.c). */
#ifndef JOBPOOL_STORE_PG_H
#define JOBPOOL_STORE_PG_H

#include <libpq-fe.h>

#include "jobpool.h"
#include "store_ops.h"

enum pg_stmt {
	P_IDS, P_BATCH_INSERT, P_JOB_GET, P_JOB_BATCH, P_PEEK,
	P_CONC, P_GATE, P_JOB_START, P_COUNT, P_BATCH_STARTED, P_JOB_FINISH,
	P_JOB_REQUEUE, P_JOB_CANCEL_Q, P_JOB_CANCEL_REQ, P_BATCH_CANCEL_REQ,
	P_BATCH_CANCEL_JOBS, P_BATCH_DEL_JOBS, P_BATCH_DEL,
	P_BATCH_DEL_KEYS, P_BATCH_GET, P_LIST_B, P_LIST_B_STATE, P_LIST_J,
	P_LIST_J_STATE, P_JOB_RANGE, P_ACTIVE, P_INFO, P_IDEM_GET, P_CLAIM,
	P_IDEM_PUT, P_PURGE_PICK, P_PURGE_JOBS, P_PURGE_KEYS, P_COUNTS, P_SIZE,
	P_SETTLE_LOCK, P_SETTLE, P_REVIVE, P_LOST, P_DEAD, P_REAP,
	P_MY_CANCELS, P_NODE_ADD, P_RENEW, P_REAP_LOCK, P_NODE_GONE, P_NODES,
	P_EVENT_ADD, P_EVENTS_READ, P_JOBS_DONE, P_RELEASE, P_UNHOLD,
	P_UNHOLD_DEAD, P_NAMESAKES, P_MARK_DEAD, P_COMMAND_JOBS, P_GATE_SUM,
	P_LOST_SELF,
	P_ORPHANS, P_EVENTS_TRIM,
	P_POLICY, P_RUNS, P_HALT, P_HALT_LIFT,
	P_THEN_SET, P_THEN_GET, P_THEN_DONE, P_THEN_PARENT, P_THEN_CHILD,
	P_BATCH_SET, P_LIST_ALL_J, P_DISPATCH_SET, P_DISPATCH_GET,
	/* webhooks (store_pg_webhook.c) */
	P_WH_INSERT, P_WH_CLAIM, P_WH_NEXT, P_WH_BODY, P_WH_ATTEMPT,
	P_WH_RESULT, P_WH_ORPHAN, P_WH_RELEASE, P_WH_LIST, P_WH_LIST_STATE,
	P_WH_ATTEMPTS, P_WH_GET, P_WH_DUE,
	P__COUNT
};

/* Text parameters for one statement: numbers are printed into b. */
struct pgp {
	int n;
	const char *v[24];
	char b[24][32];
};

void pgp_i64(struct pgp *p, int64_t v);
void pgp_dbl(struct pgp *p, double v);
void pgp_txt(struct pgp *p, const char *v);     /* NULL: SQL NULL */
void pgp_opt(struct pgp *p, int64_t v, int present);

/* A PostgreSQL array literal, built as text (the caller frees p). */
struct arr {
	char *p;
	size_t len, cap;
	int n;
};
int arr_add(struct arr *a, const char *v);      /* v NULL: NULL */
const char *arr_end(struct arr *a);

extern PGconn *pg_conn;
extern int64_t pg_node_id;      /* this process's incarnation */
extern int pg_generation;       /* bumped by each reconnect */

/* pg_run runs prepared statement id; returns its result (the caller
 * PQclear()s it), or NULL after logging an error. */
PGresult *pg_run(enum pg_stmt id, const struct pgp *p);
/* pg_step runs id for its effect; returns the rows it touched, or -1. */
int pg_step(enum pg_stmt id, const struct pgp *p);
int pg_exec(const char *q);
int pg_reconnect(void);
int64_t pg_i64(const PGresult *r, int row, int col);
int pg_begin(void);
int pg_sp_begin(void);
int pg_sp_end(int rc);
int pg_op_begin(void);
int pg_op_end(int rc);
int pg_count(int64_t batch_id, const int64_t d[8], int64_t first_start,
	      int64_t last_finish);
/* pg_settle_later: after the commit, store the batch's final state and
 * announce it, if it has ended (settle_now). */
void pg_settle_later(int64_t batch_id);
int64_t pg_pending_running(int64_t batch_id);
void pg_deltas_forget(int64_t batch_id);
void pg_row(struct row *r, PGresult *res, int n);

/* Counter deltas, in the column order of jp_batch_counts. */
enum { D_QUEUED, D_RUNNING, D_SUCCEEDED, D_FAILED, D_TIMED_OUT,
       D_CANCELED, D_RUN_US, D_CPU_US };
void pg_delta_state(int64_t d[8], int from, int to, int64_t n);

/* store_pg_node.c */
int pg_node_start(const char *conninfo);
void pg_node_stop(void);
int pg_reap(int64_t now);
int pg_node_fenced(void);
int pg_lost_rows(PGresult *r, int64_t now, const struct store_tick *cb,
		 int *requeued, int *ended);
int pg_moved_rows(PGresult *r, int from, int64_t now,
		  const struct store_tick *cb, int *requeued, int *ended);
/* store_pg_node.c: earlier incarnations of this node's name whose process
 * is gone (up to max, into ids); pg_take_over ends the incarnations ids and
 * takes their jobs over (why: the error of the lost attempts). */
int pg_gone_namesakes(int64_t *ids, int max);
int pg_take_over(const int64_t *ids, int n, int64_t now, const char *why,
		 const struct store_tick *cb,
		 void (*fn)(int64_t job_id, void *ctx), void *ctx,
		 int *requeued, int *ended);
int64_t pg_stale_outcomes(void);
/* pg_fence_writes stops (1) or allows (0) every write of this node. */
void pg_fence_writes(int on);

/* the store_ops entries of store_pg_jobs.c and store_pg_node.c */
int pg_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		   void *ctx);
int pg_batch_info(int64_t id, struct batch_info *b);
int pg_dispatch_get(void);
void pg_conc_note(int64_t batch_id, int concurrency);
int pg_jobs_peek(int64_t batch_id, int64_t now, int any_due,
		 int64_t after_idx, int limit, struct claim *out);
int pg_job_start(const struct claim *c, int slot, pid_t pid,
		 int64_t started_at);
int pg_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		 int any_due, struct claim *c);
int pg_jobs_done(int64_t batch_id, const struct group_done *d, int n,
		 int slot, pid_t pid, int *batch_done);
int pg_job_finish(int64_t job_id, int64_t batch_id, const struct outcome *o,
		  const struct slot *w, int *batch_done);
int pg_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		   int64_t not_before);
int pg_job_retry(int64_t job_id, int64_t batch_id, const struct outcome *o,
		 const struct slot *w, int64_t not_before);
int pg_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			 int *batch_done);
int pg_job_cancel_req(int64_t job_id);
int pg_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		    int *batch_done,
		    void (*fn)(int64_t job_id, int attempts, void *ctx),
		    void *ctx);
int pg_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
			   int *batch_done,
			   void (*fn)(int64_t job_id, int attempts, void *ctx),
			   void *ctx, const int64_t *keep, size_t nkeep);
int pg_batch_delete(int64_t batch_id);
int pg_jobs_release(const int64_t *ids, size_t n);
int pg_check_own(int64_t now, const struct store_tick *cb);
void pg_replay_clear(void);
int pg_recover(int64_t now, int *requeued, int *interrupted,
	       void (*fn)(int64_t job_id, void *ctx), void *ctx);
int pg_resync(int64_t now, const struct live_job *live, size_t n,
	      int *requeued, int *interrupted);
json_t *pg_nodes_json(void);
void pg_cluster_stats(int64_t *stale, int64_t *rescued);
/* store_pg_events.c */
int pg_events_append(const struct change *c, size_t n);
int pg_event_row(const struct change *c, size_t n);
int64_t pg_events_start(void);
int pg_events_tick(int64_t mono, const struct store_tick *cb);
void pg_events_stop(void);
int pg_tick(int64_t now, const struct store_tick *cb);
/* pg_connect_thread opens another connection to the store's database, for
 * a thread of its own (the lease thread). */
int pg_connect_thread(PGconn **c, const char *role);

#endif
