/* store_pg_jobs.c - a job's life in the PostgreSQL store: claim, outcome,
 * retry, requeue, cancel, delete.  Each public write runs in a savepoint,
 * so a job's row and this node's counter row change together or not at
 * all (as store_jobs.c does for SQLite). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store_pg.h"

/* Outcomes a fencing token refused: the attempt's node had been declared
 * dead and its job re-queued or ended by another node. */
static int64_t stale_outcomes;

/* ---- scheduler support ---- */

static void info_row(const PGresult *r, int i, struct batch_info *b)
{
	b->id = pg_i64(r, i, 0);
	b->priority = (int)pg_i64(r, i, 1);
	b->concurrency = (int)pg_i64(r, i, 2);
	b->queued = (int)pg_i64(r, i, 3);
	b->running = (int)pg_i64(r, i, 4);
	b->cancel_req = (int)pg_i64(r, i, 5);
	b->started = (int)pg_i64(r, i, 6);
	b->paused = (int)pg_i64(r, i, 7);
}

int pg_batch_info(int64_t id, struct batch_info *b)
{
	struct pgp p = { 0 };
	PGresult *r;
	int rc = -1;

	pgp_i64(&p, id);
	if (!(r = pg_run(P_INFO, &p)))
		return -1;
	if (PQntuples(r)) {
		info_row(r, 0, b);
		rc = 0;
	}
	PQclear(r);
	return rc;
}

int pg_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		   void *ctx)
{
	PGresult *r = pg_run(P_ACTIVE, NULL);
	struct batch_info b;
	int i, n;

	if (!r)
		return -1;
	n = PQntuples(r);
	for (i = 0; i < n; i++) {
		info_row(r, i, &b);
		fn(&b, ctx);
	}
	PQclear(r);
	return n;
}

/* settle: with several nodes a batch's end is found after the commit, by
 * whichever node then sees it (pg_settle_later, settle_now), and announced
 * through the event log; never here, where another node may be ending its
 * last job at the same moment. */
static int settle(int64_t batch_id, int *done)
{
	if (done)
		*done = 0;
	return 0;
}

/* ---- claims ---- */

/* A batch's concurrency, remembered (0: none) for the batches claimed from
 * lately, so unlimited batches skip the gate's statement.  A PATCH changes
 * it: the node that made the change notes it at once, every other node at
 * its next look (pg_conc_note), and the gate itself reads the stored
 * limit, so a limited batch is held to its current one. */
#define CONC_CACHE 256
static struct {
	int64_t id;
	int conc;
	int started;
} conc_cache[CONC_CACHE];

static int batch_conc(int64_t batch_id, int *started)
{
	unsigned h = (unsigned)batch_id % CONC_CACHE;
	struct pgp p = { 0 };
	PGresult *r;

	if (conc_cache[h].id != batch_id) {
		pgp_i64(&p, batch_id);
		if (!(r = pg_run(P_CONC, &p)))
			return -1;
		conc_cache[h].id = batch_id;
		/* no row: deleted meanwhile (by another node); nothing to
		 * claim, which the claim itself finds */
		conc_cache[h].conc = PQntuples(r) ? (int)pg_i64(r, 0, 0) : 0;
		conc_cache[h].started = 0;
		PQclear(r);
	}
	if (started)
		*started = conc_cache[h].started;
	return conc_cache[h].conc;
}

/* pg_conc_note: the batch's concurrency as the database has it now
 * (a PATCH here or on another node); only a remembered batch is changed. */
void pg_conc_note(int64_t batch_id, int concurrency)
{
	unsigned h = (unsigned)batch_id % CONC_CACHE;

	if (conc_cache[h].id == batch_id)
		conc_cache[h].conc = concurrency;
}

static void batch_started(int64_t batch_id)
{
	conc_cache[(unsigned)batch_id % CONC_CACHE].started = 1;
}

static int claim_row(const PGresult *r, int i, int64_t batch_id,
		     struct claim *c)
{
	c->job_id = pg_i64(r, i, 0);
	c->batch_id = batch_id;
	c->created_at = pg_i64(r, i, 1);
	c->attempts = (int)pg_i64(r, i, 2) + 1;
	c->timeout_s = PQgetisnull(r, i, 3) ? 0 :
		       strtod(PQgetvalue(r, i, 3), NULL);
	snprintf(c->kind, sizeof(c->kind), "%s", PQgetvalue(r, i, 4));
	c->args = strdup(PQgetvalue(r, i, 5));
	c->max_attempts = (int)pg_i64(r, i, 6);
	retry_parse(PQgetvalue(r, i, 7), &c->retry);
	c->backoff_s = strtod(PQgetvalue(r, i, 8), NULL);
	c->queued_at = pg_i64(r, i, 9);
	c->idx = pg_i64(r, i, 10);
	return c->args ? 0 : -1;
}

static int gate(int64_t batch_id, int want);
static char *id_array(const int64_t *ids, size_t n);

static int by_idx(const void *a, const void *b)
{
	const struct claim *x = a, *y = b;

	return (x->idx > y->idx) - (x->idx < y->idx);
}

/* pg_jobs_peek locks up to limit due queued jobs of a batch for this turn
 * (rows other nodes are claiming are skipped), within the batch's
 * concurrency across all nodes.  The locks last until the turn commits, so
 * the job_start that follows is this node's alone. */
int pg_jobs_peek(int64_t batch_id, int64_t now, int any_due,
		 int64_t after_idx, int limit, struct claim *out)
{
	struct pgp p = { 0 };
	PGresult *r;
	int n, i;

	if (pg_begin() < 0 || (limit = gate(batch_id, limit)) < 0)
		return -1;
	if (limit == 0)
		return 0;
	pgp_i64(&p, batch_id);
	pgp_i64(&p, any_due ? INT64_MAX : now + 5000);
	pgp_i64(&p, after_idx);
	pgp_i64(&p, limit);
	pgp_i64(&p, pg_node_id);
	if (!(r = pg_run(P_PEEK, &p)))
		return -1;
	n = PQntuples(r);
	for (i = 0; i < n; i++)
		if (claim_row(r, i, batch_id, &out[i]) < 0) {
			while (i > 0)
				free(out[--i].args);
			PQclear(r);
			return -1;
		}
	PQclear(r);
	/* RETURNING keeps no order; a group runs in index order */
	qsort(out, (size_t)n, sizeof(*out), by_idx);
	return n;
}

/* pg_jobs_release gives back held jobs no worker will run. */
int pg_jobs_release(const int64_t *ids, size_t n)
{
	struct pgp p = { 0 };
	char *arr = id_array(ids, n);
	int rc;

	if (!arr || pg_begin() < 0) {
		free(arr);
		return -1;
	}
	pgp_txt(&p, arr);
	pgp_i64(&p, pg_node_id);
	rc = pg_step(P_RELEASE, &p) < 0 ? -1 : 0;
	free(arr);
	return rc;
}

static int job_start_(const struct claim *c, int slot, pid_t pid,
		      int64_t started_at)
{
	struct pgp p = { 0 };
	int64_t d[8] = { 0 };
	int started = 0, n;

	pgp_i64(&p, started_at);
	pgp_i64(&p, slot);
	pgp_i64(&p, pid);
	pgp_i64(&p, c->job_id);
	pgp_txt(&p, cfg.node_name);
	pgp_i64(&p, pg_node_id);
	if ((n = pg_step(P_JOB_START, &p)) < 0)
		return -1;
	if (n == 0)
		return 1;       /* canceled meanwhile through another node */
	pg_delta_state(d, JS_QUEUED, JS_RUNNING, 1);
	if (pg_count(c->batch_id, d, started_at, 0) < 0)
		return -1;
	batch_conc(c->batch_id, &started);
	if (!started) {
		p.n = 0;
		pgp_i64(&p, c->batch_id);
		pgp_i64(&p, started_at);
		if (pg_step(P_BATCH_STARTED, &p) < 0)
			return -1;
		batch_started(c->batch_id);
	}
	return 0;
}

int pg_job_start(const struct claim *c, int slot, pid_t pid,
		 int64_t started_at)
{
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(job_start_(c, slot, pid, started_at));
}

/* gate tells how many jobs of a batch this node may claim now, of want:
 * all of them without a concurrency of its own; within it, across all
 * nodes, else (0 also when another node is claiming from it). */
static int gate(int64_t batch_id, int want)
{
	struct pgp p = { 0 };
	PGresult *r;
	int conc, n;

	if ((conc = batch_conc(batch_id, NULL)) <= 0)
		return conc < 0 ? -1 : want;
	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_GATE, &p)))
		return -1;
	n = PQntuples(r);
	/* the limit as stored now, read under the lock: a PATCH made on
	 * another node holds here before this node's next look */
	if (n)
		conc = PQgetisnull(r, 0, 0) ? 0 : (int)pg_i64(r, 0, 0);
	PQclear(r);
	if (!n)
		return 0;       /* another node claims from it right now */
	if (conc <= 0) {
		pg_conc_note(batch_id, 0);
		return want;
	}
	if (!(r = pg_run(P_GATE_SUM, &p)))
		return -1;
	n = conc - (int)(pg_i64(r, 0, 0) + pg_pending_running(batch_id));
	PQclear(r);
	return n < want ? (n > 0 ? n : 0) : want;
}

/* claim_ locks the batch's first due job and starts it in one statement. */
static int claim_(int64_t batch_id, int slot, pid_t pid, int64_t now,
		  int any_due, struct claim *c)
{
	struct pgp p = { 0 };
	int64_t d[8] = { 0 };
	PGresult *r;
	int n, started = 0;

	if ((n = gate(batch_id, 1)) <= 0)
		return n < 0 ? -1 : 1;
	pgp_i64(&p, batch_id);
	pgp_i64(&p, any_due ? INT64_MAX : now + 5000);
	pgp_i64(&p, 1);
	pgp_i64(&p, now);
	pgp_i64(&p, slot);
	pgp_i64(&p, pid);
	pgp_txt(&p, cfg.node_name);
	pgp_i64(&p, pg_node_id);
	if (!(r = pg_run(P_CLAIM, &p)))
		return -1;
	if (!PQntuples(r)) {
		PQclear(r);
		return 1;
	}
	n = claim_row(r, 0, batch_id, c);
	PQclear(r);
	if (n < 0)
		return -1;
	pg_delta_state(d, JS_QUEUED, JS_RUNNING, 1);
	if (pg_count(batch_id, d, now, 0) < 0)
		return -1;
	batch_conc(batch_id, &started);
	if (!started) {
		p.n = 0;
		pgp_i64(&p, batch_id);
		pgp_i64(&p, now);
		if (pg_step(P_BATCH_STARTED, &p) < 0)
			return -1;
		batch_started(batch_id);
	}
	return 0;
}

int pg_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		 int any_due, struct claim *c)
{
	int rc;

	c->args = NULL;
	if (pg_op_begin() < 0)
		return -1;
	rc = pg_op_end(claim_(batch_id, slot, pid, now, any_due, c));
	if (rc < 0) {
		free(c->args);
		c->args = NULL;
	}
	return rc;
}

/* ---- the turn's outcomes, kept until they commit ----
 *
 * A worker's outcome is forgotten by the engine once written here.  If
 * the turn's transaction is then lost with the connection (PostgreSQL
 * restarting, a network blip), the outcomes would be lost with it and the
 * jobs re-run as interrupted.  So the turn's outcome writes are kept, as
 * the engine gave them, until the COMMIT returns, and the resync that
 * follows a lost transaction writes them again first (still fenced: if
 * this node's lease ran out meanwhile, they change nothing). */
enum rp_kind { RP_FINISH, RP_RETRY, RP_REQUEUE, RP_DONE };
struct replay {
	enum rp_kind kind;
	int64_t job_id, batch_id, not_before;
	int undo, n;
	struct outcome o;
	struct slot w;
	struct group_done *d;
};
static struct replay *replays;
static size_t nreplays, replay_cap;
static int replaying;

static void outcome_copy(struct outcome *to, const struct outcome *o)
{
	*to = *o;
	to->error = o->error ? strdup(o->error) : NULL;
	json_incref(o->result);
	json_incref(o->output);
}

static void outcome_free(struct outcome *o)
{
	free((char *)o->error);
	json_decref(o->result);
	json_decref(o->output);
}

static struct replay *replay_add(enum rp_kind kind, int64_t job_id,
				 int64_t batch_id)
{
	struct replay *r;

	if (replaying)
		return NULL;
	if (nreplays == replay_cap) {
		size_t cap = replay_cap ? replay_cap * 2 : 64;
		struct replay *p = realloc(replays, cap * sizeof(*p));

		if (!p)
			return NULL;    /* not kept: lost with a lost turn */
		replays = p;
		replay_cap = cap;
	}
	r = &replays[nreplays++];
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->job_id = job_id;
	r->batch_id = batch_id;
	return r;
}

static void replay_slot(struct replay *r, const struct slot *w)
{
	r->w.started_at = w->started_at;
	r->w.job_attempts = w->job_attempts;
	r->w.index = w->index;
	r->w.pid = w->pid;
}

/* pg_replay_clear forgets the kept outcomes: their turn committed (or
 * they were written again). */
void pg_replay_clear(void)
{
	size_t i;
	int k;

	for (i = 0; i < nreplays; i++) {
		outcome_free(&replays[i].o);
		for (k = 0; k < replays[i].n; k++)
			outcome_free(&replays[i].d[k].o);
		free(replays[i].d);
	}
	nreplays = 0;
}

static int job_finish_(int64_t job_id, int64_t batch_id,
		       const struct outcome *o, const struct slot *w,
		       int *batch_done);
static int job_retry_(int64_t job_id, int64_t batch_id,
		      const struct outcome *o, const struct slot *w,
		      int64_t not_before);
static int job_requeue_(int64_t job_id, int64_t batch_id, int undo_attempt,
			int64_t not_before);
static int jobs_done_(int64_t batch_id, const struct group_done *d, int n,
		      int slot, pid_t pid);

/* replay_all writes the kept outcomes of a lost turn again. */
static int replay_all(void)
{
	size_t i;
	int rc = 0;

	if (nreplays)
		log_info("store: writing %zu outcome(s) of the lost "
			 "transaction again", nreplays);
	replaying = 1;
	for (i = 0; i < nreplays && rc >= 0; i++) {
		struct replay *r = &replays[i];

		switch (r->kind) {
		case RP_FINISH:
			rc = job_finish_(r->job_id, r->batch_id, &r->o, &r->w,
					 NULL);
			break;
		case RP_RETRY:
			rc = job_retry_(r->job_id, r->batch_id, &r->o, &r->w,
					r->not_before);
			break;
		case RP_REQUEUE:
			rc = job_requeue_(r->job_id, r->batch_id, r->undo,
					  r->not_before);
			break;
		case RP_DONE:
			rc = jobs_done_(r->batch_id, r->d, r->n, r->w.index,
					r->w.pid);
			break;
		}
	}
	replaying = 0;
	pg_replay_clear();
	return rc < 0 ? -1 : 0;
}

/* ---- outcomes ---- */

int64_t pg_stale_outcomes(void)
{
	return stale_outcomes;
}

/* record_attempt writes the outcome of slot w's attempt (row_state: its
 * end, or queued for a retry), fenced by this incarnation and the
 * attempt's number.  Returns 0, 1 when the fence refused it, -1. */
static int record_attempt(int64_t job_id, int64_t batch_id,
			  const struct outcome *o, const struct slot *w,
			  enum job_state row_state)
{
	struct pgp p = { 0 };
	int64_t d[8] = { 0 };
	char *htext, *rtext = NULL, *otext = NULL;
	const char *sig = o->signal ? signal_name(o->signal) : NULL;
	json_t *h;
	int n;

	if (o->output)
		otext = json_dumps(o->output, JSON_COMPACT);
	if (o->result)
		rtext = json_dumps(o->result, JSON_COMPACT |
				   JSON_REAL_PRECISION(17));
	h = store_history_entry(o, w->started_at, w->job_attempts, w->index,
				w->pid);
	htext = json_dumps(h, JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_decref(h);
	pgp_txt(&p, job_state_name(row_state));
	pgp_i64(&p, o->finished_at);
	pgp_i64(&p, o->run_us);
	pgp_opt(&p, o->user_us, o->user_us >= 0);
	pgp_opt(&p, o->sys_us, o->sys_us >= 0);
	pgp_opt(&p, o->max_rss_kb, o->max_rss_kb >= 0);
	pgp_opt(&p, o->exit_code, o->exit_code >= 0);
	pgp_txt(&p, sig);
	pgp_txt(&p, o->error);
	pgp_txt(&p, rtext);
	pgp_txt(&p, htext);
	pgp_txt(&p, otext);
	pgp_i64(&p, job_id);
	pgp_i64(&p, pg_node_id);
	pgp_i64(&p, w->job_attempts);
	n = pg_step(P_JOB_FINISH, &p);
	free(htext);
	free(rtext);
	free(otext);
	if (n < 0)
		return -1;
	if (n == 0) {
		stale_outcomes++;
		log_warn("store: the outcome of job j_%012lld attempt %d "
			 "came after this node lost its lease; the attempt is "
			 "the other nodes' to settle, so it is not written",
			 (long long)job_id, w->job_attempts);
		return 1;
	}
	pg_delta_state(d, JS_RUNNING, row_state, 1);
	d[D_RUN_US] = o->run_us;
	d[D_CPU_US] = (o->user_us > 0 ? o->user_us : 0) +
		      (o->sys_us > 0 ? o->sys_us : 0);
	return pg_count(batch_id, d, 0,
			row_state == JS_QUEUED ? 0 : o->finished_at);
}

static int job_finish_(int64_t job_id, int64_t batch_id,
		       const struct outcome *o, const struct slot *w,
		       int *batch_done)
{
	int rc = record_attempt(job_id, batch_id, o, w, o->state);

	if (rc < 0)
		return -1;
	return settle(batch_id, batch_done);
}

int pg_job_finish(int64_t job_id, int64_t batch_id, const struct outcome *o,
		  const struct slot *w, int *batch_done)
{
	struct replay *r = replay_add(RP_FINISH, job_id, batch_id);

	if (r) {
		outcome_copy(&r->o, o);
		replay_slot(r, w);
	}
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(job_finish_(job_id, batch_id, o, w, batch_done));
}

static int requeue_row(int64_t job_id, int undo, int64_t queued_at,
		       int64_t not_before)
{
	struct pgp p = { 0 };

	pgp_i64(&p, undo);
	pgp_i64(&p, queued_at);
	pgp_i64(&p, not_before);
	pgp_i64(&p, job_id);
	pgp_i64(&p, pg_node_id);
	return pg_step(P_JOB_REQUEUE, &p);
}

static int job_retry_(int64_t job_id, int64_t batch_id,
		      const struct outcome *o, const struct slot *w,
		      int64_t not_before)
{
	int rc = record_attempt(job_id, batch_id, o, w, JS_QUEUED);

	if (rc != 0)
		return rc < 0 ? -1 : 0;
	return requeue_row(job_id, 0, o->finished_at, not_before) < 0 ? -1 : 0;
}

int pg_job_retry(int64_t job_id, int64_t batch_id, const struct outcome *o,
		 const struct slot *w, int64_t not_before)
{
	struct replay *r = replay_add(RP_RETRY, job_id, batch_id);

	if (r) {
		outcome_copy(&r->o, o);
		replay_slot(r, w);
		r->not_before = not_before;
	}
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(job_retry_(job_id, batch_id, o, w, not_before));
}

static int job_requeue_(int64_t job_id, int64_t batch_id, int undo_attempt,
			int64_t not_before)
{
	int64_t d[8] = { 0 };
	int n;

	if (pg_begin() < 0)
		return -1;
	n = requeue_row(job_id, undo_attempt ? 1 : 0, now_us(), not_before);
	if (n <= 0)
		return n < 0 ? -1 : 0;  /* fenced: not ours any more */
	pg_delta_state(d, JS_RUNNING, JS_QUEUED, 1);
	return pg_count(batch_id, d, 0, 0);
}

int pg_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		   int64_t not_before)
{
	struct replay *r = replay_add(RP_REQUEUE, job_id, batch_id);

	if (r) {
		r->undo = undo_attempt;
		r->not_before = not_before;
	}
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(job_requeue_(job_id, batch_id, undo_attempt,
				      not_before));
}

/* A group's jobs go from queued (held by this incarnation) to their end
 * in one statement; one the fence refuses (the incarnation was declared
 * dead and the hold released) is counted stale and runs again elsewhere,
 * as a held job of a dead server does. */
static int jobs_done_(int64_t batch_id, const struct group_done *d, int n,
		      int slot, pid_t pid)
{
	struct arr a[13];
	const char *av[13];
	struct pgp p = { 0 };
	char num[13][32], htext[1024], *rtext;
	int64_t delta[8] = { 0 }, first = 0, last = 0;
	PGresult *r;
	int i, k, got, rc = -1;

	memset(a, 0, sizeof(a));
	for (i = 0; i < n; i++) {
		const struct outcome *o = &d[i].o;

		if (store_history_text(htext, sizeof(htext), o,
				       d[i].started_at, d[i].attempt, slot,
				       pid) < 0)
			goto out;
		rtext = o->result ? json_dumps(o->result, JSON_COMPACT |
					       JSON_REAL_PRECISION(17)) : NULL;
		snprintf(num[0], 32, "%lld", (long long)d[i].job_id);
		snprintf(num[2], 32, "%lld", (long long)d[i].started_at);
		snprintf(num[3], 32, "%lld", (long long)o->finished_at);
		snprintf(num[4], 32, "%lld", (long long)o->run_us);
		snprintf(num[5], 32, "%lld", (long long)o->user_us);
		snprintf(num[6], 32, "%lld", (long long)o->sys_us);
		snprintf(num[7], 32, "%lld", (long long)o->max_rss_kb);
		snprintf(num[8], 32, "%d", o->exit_code);
		arr_add(&a[0], num[0]);
		arr_add(&a[1], job_state_name(o->state));
		arr_add(&a[2], num[2]);
		arr_add(&a[3], num[3]);
		arr_add(&a[4], num[4]);
		arr_add(&a[5], o->user_us >= 0 ? num[5] : NULL);
		arr_add(&a[6], o->sys_us >= 0 ? num[6] : NULL);
		arr_add(&a[7], o->max_rss_kb >= 0 ? num[7] : NULL);
		arr_add(&a[8], o->exit_code >= 0 ? num[8] : NULL);
		arr_add(&a[9], o->signal ? signal_name(o->signal) : NULL);
		arr_add(&a[10], o->error);
		arr_add(&a[11], rtext);
		arr_add(&a[12], htext);
		free(rtext);
	}
	for (k = 0; k < 13; k++)
		if (!(av[k] = arr_end(&a[k])))
			goto out;
	pgp_i64(&p, pg_node_id);
	pgp_i64(&p, slot);
	pgp_i64(&p, pid);
	pgp_txt(&p, cfg.node_name);
	for (k = 0; k < 13; k++)
		pgp_txt(&p, av[k]);
	if (!(r = pg_run(P_JOBS_DONE, &p)))
		goto out;
	got = PQntuples(r);
	for (i = 0; i < n; i++) {
		const struct outcome *o = &d[i].o;
		int applied = 0;

		for (k = 0; k < got && !applied; k++)
			applied = pg_i64(r, k, 0) == d[i].job_id;
		if (!applied) {
			/* canceled meanwhile through another node, or the
			 * hold was taken back with a lost lease */
			stale_outcomes++;
			if (pg_jobs_release(&d[i].job_id, 1) < 0) {
				PQclear(r);
				goto out;
			}
			continue;
		}
		pg_delta_state(delta, JS_QUEUED, o->state, 1);
		delta[D_RUN_US] += o->run_us;
		delta[D_CPU_US] += (o->user_us > 0 ? o->user_us : 0) +
				   (o->sys_us > 0 ? o->sys_us : 0);
		if (!first || d[i].started_at < first)
			first = d[i].started_at;
		if (o->finished_at > last)
			last = o->finished_at;
	}
	PQclear(r);
	if (got < n)
		log_warn("store: %d group outcome(s) came after this node lost "
			 "its lease; not written", n - got);
	rc = got ? pg_count(batch_id, delta, first, last) : 0;
out:
	for (k = 0; k < 13; k++)
		free(a[k].p);
	return rc;
}

int pg_jobs_done(int64_t batch_id, const struct group_done *d, int n,
		 int slot, pid_t pid, int *batch_done)
{
	struct replay *r = replay_add(RP_DONE, 0, batch_id);
	int i;

	if (r && (r->d = calloc((size_t)n, sizeof(*d)))) {
		r->n = n;
		r->w.index = slot;
		r->w.pid = pid;
		for (i = 0; i < n; i++) {
			r->d[i] = d[i];
			outcome_copy(&r->d[i].o, &d[i].o);
		}
	}
	if (batch_done)
		*batch_done = 0;
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(jobs_done_(batch_id, d, n, slot, pid));
}

/* ---- cancels ---- */

static int cancel_counted(int64_t batch_id, int n, int64_t now,
			  int *batch_done)
{
	int64_t d[8] = { 0 };

	if (n > 0) {
		pg_delta_state(d, JS_QUEUED, JS_CANCELED, n);
		if (pg_count(batch_id, d, 0, now) < 0)
			return -1;
	}
	return settle(batch_id, batch_done);
}

static int job_cancel_queued_(int64_t job_id, int64_t batch_id, int64_t now,
			      int *batch_done)
{
	struct pgp p = { 0 };
	int n;

	if (pg_begin() < 0)
		return -1;
	pgp_i64(&p, now);
	pgp_i64(&p, job_id);
	if ((n = pg_step(P_JOB_CANCEL_Q, &p)) < 0)
		return -1;
	if (n != 1)
		return 1;
	return cancel_counted(batch_id, 1, now, batch_done);
}

int pg_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			 int *batch_done)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(job_cancel_queued_(job_id, batch_id, now,
					    batch_done));
}

int pg_job_cancel_req(int64_t job_id)
{
	struct pgp p = { 0 };

	if (pg_sp_begin() < 0)
		return -1;
	pgp_i64(&p, job_id);
	return pg_sp_end(pg_step(P_JOB_CANCEL_REQ, &p) < 0 ? -1 : 0);
}

/* id_array writes n ids as a PostgreSQL array literal; NULL when out of
 * memory.  The caller frees it. */
static char *id_array(const int64_t *ids, size_t n)
{
	char *q = malloc(3 + n * 21), *p = q;
	size_t i;

	if (!q)
		return NULL;
	*p++ = '{';
	for (i = 0; i < n; i++)
		p += sprintf(p, "%s%lld", i ? "," : "", (long long)ids[i]);
	strcpy(p, "}");
	return q;
}

static int batch_cancel_(int64_t batch_id, int64_t now, int *canceled,
			 int *batch_done,
			 void (*fn)(int64_t job_id, int attempts, void *ctx),
			 void *ctx, const char *keep)
{
	struct pgp p = { 0 };
	PGresult *r;
	int i, n;

	if (pg_begin() < 0)
		return -1;
	pgp_i64(&p, batch_id);
	if (pg_step(P_BATCH_CANCEL_REQ, &p) < 0)
		return -1;
	p.n = 0;
	pgp_i64(&p, now);
	pgp_i64(&p, batch_id);
	pgp_txt(&p, keep);
	if (!(r = pg_run(P_BATCH_CANCEL_JOBS, &p)))
		return -1;
	/* Tell the caller which jobs were canceled (events). */
	n = PQntuples(r);
	for (i = 0; fn && i < n; i++)
		fn(pg_i64(r, i, 0), (int)pg_i64(r, i, 1), ctx);
	PQclear(r);
	*canceled = n;
	return cancel_counted(batch_id, n, now, batch_done);
}

int pg_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
			   int *batch_done,
			   void (*fn)(int64_t job_id, int attempts, void *ctx),
			   void *ctx, const int64_t *keep, size_t nkeep)
{
	char *arr = id_array(keep, nkeep);
	int rc;

	if (!arr || pg_sp_begin() < 0) {
		free(arr);
		return -1;
	}
	rc = pg_sp_end(batch_cancel_(batch_id, now, canceled, batch_done, fn,
				     ctx, arr));
	free(arr);
	return rc;
}

int pg_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		    int *batch_done,
		    void (*fn)(int64_t job_id, int attempts, void *ctx),
		    void *ctx)
{
	return pg_batch_cancel_except(batch_id, now, canceled, batch_done, fn,
				      ctx, NULL, 0);
}

static int batch_delete_(int64_t batch_id)
{
	struct pgp p = { 0 };

	if (pg_begin() < 0)
		return -1;
	pg_deltas_forget(batch_id);     /* no counter row for it any more */
	pgp_i64(&p, batch_id);
	if (pg_step(P_BATCH_DEL_JOBS, &p) < 0 ||
	    pg_step(P_BATCH_DEL_KEYS, &p) < 0 || pg_step(P_BATCH_DEL, &p) < 0)
		return -1;
	return 0;
}

int pg_batch_delete(int64_t batch_id)
{
	if (pg_sp_begin() < 0)
		return -1;
	return pg_sp_end(batch_delete_(batch_id));
}

/* ---- lost attempts ---- */

/* pg_lost_rows applies what P_LOST or P_REAP returned to this node's
 * counter rows: each row was running and is now queued, failed or
 * canceled.  Reports each job through cb, counts them. */
int pg_lost_rows(PGresult *r, int64_t now, const struct store_tick *cb,
		 int *requeued, int *ended)
{
	return pg_moved_rows(r, JS_RUNNING, now, cb, requeued, ended);
}

/* pg_moved_rows applies rows (id, batch_id, state, attempts) that went
 * from state from to their state now to this node's counters; a job still
 * queued after coming from queued changed nothing. */
int pg_moved_rows(PGresult *r, int from, int64_t now,
		  const struct store_tick *cb, int *requeued, int *ended)
{
	int i, n = PQntuples(r);

	for (i = 0; i < n; i++) {
		int64_t d[8] = { 0 };
		int64_t batch_id = pg_i64(r, i, 1);
		int st = job_state_parse(PQgetvalue(r, i, 2));

		if (st == from)
			continue;
		pg_delta_state(d, from, st, 1);
		if (pg_count(batch_id, d, 0, st == JS_QUEUED ? 0 : now) < 0)
			return -1;
		if (st == JS_QUEUED)
			(*requeued)++;
		else {
			(*ended)++;
			pg_settle_later(batch_id);
		}
		if (cb && cb->job)
			cb->job(pg_i64(r, i, 0), batch_id, st,
				(int)pg_i64(r, i, 3), cb->ctx);
	}
	return 0;
}

/* lost_of recovers this node's running jobs that no worker runs (all of
 * them but live[]; with P_LOST_SELF only those claimed over 2 s ago):
 * canceled when asked, re-queued with attempts left, else failed
 * "interrupted". */
static int lost_of(enum pg_stmt stmt, int64_t now, const int64_t *live,
		   size_t n, const struct store_tick *cb, int *requeued,
		   int *interrupted)
{
	struct pgp p = { 0 };
	char *arr = id_array(live, n);
	PGresult *r;
	int rc;

	if (!arr)
		return -1;
	pgp_i64(&p, pg_node_id);
	pgp_i64(&p, now);
	pgp_txt(&p, "interrupted");
	pgp_txt(&p, "true");
	pgp_txt(&p, arr);
	r = pg_run(stmt, &p);
	free(arr);
	if (!r)
		return -1;
	rc = pg_lost_rows(r, now, cb, requeued, interrupted);
	PQclear(r);
	return rc;
}

/* pg_check_own recovers this node's running jobs that none of its workers
 * runs (cb->live lists those that do): their outcome was lost somewhere
 * after their claim committed.  Run every few seconds, so no such job
 * stays "running" for good whatever lost it; re-queued, or ended
 * "interrupted", as after a crash. */
int pg_check_own(int64_t now, const struct store_tick *cb)
{
	int64_t live[POOL_MAX * (GROUP_MAX + 1)];
	int requeued = 0, ended = 0, rc;
	size_t n;

	if (!cb || !cb->live || pg_begin() < 0)
		return -1;
	n = cb->live(live, sizeof(live) / sizeof(live[0]), cb->ctx);
	rc = lost_of(P_LOST_SELF, now, live, n, cb, &requeued, &ended);
	if (requeued + ended)
		log_warn("store: %d running job(s) of this node had no worker "
			 "any more; %d re-queued, %d ended", requeued + ended,
			 requeued, ended);
	return rc;
}

/* pg_recover runs at start: this process is a new incarnation.  The jobs
 * of an earlier incarnation of the same --node-name are recovered at once,
 * as a restarted SQLite server recovers its own (re-queued or ended
 * "interrupted", command jobs' leftover processes reported through fn),
 * when that incarnation is provably gone: its lease connection holds an
 * advisory lock for life, and the lock is free.  Any other dead node's
 * jobs are the reaper's, once its lease runs out. */
int pg_recover(int64_t now, int *requeued, int *interrupted,
	       void (*fn)(int64_t job_id, void *ctx), void *ctx)
{
	int64_t gone[16];
	int n;

	*requeued = *interrupted = 0;
	n = pg_gone_namesakes(gone, 16);
	if (n <= 0)
		return n < 0 ? -1 : 0;
	if (pg_begin() < 0 || pg_take_over(gone, n, now, "interrupted", NULL,
					   fn, ctx, requeued,
					   interrupted) < 0)
		return -1;
	return store_flush();
}

/* pg_resync puts the database in line with memory after a lost
 * transaction: the jobs this node's workers run are running (their claim
 * may have been lost), every other running job of this incarnation lost
 * its outcome and is recovered. */
int pg_resync(int64_t now, const struct live_job *live, size_t n,
	      int *requeued, int *interrupted)
{
	struct pgp p = { 0 };
	PGresult *r;
	int64_t *ids = calloc(n + 1, sizeof(*ids));
	size_t i;
	int rc = -1;

	if (!ids)
		return -1;
	if (replay_all() < 0) {
		free(ids);
		return -1;
	}
	for (i = 0; i < n; i++) {
		ids[i] = live[i].job_id;
		if (live[i].held)
			continue;
		p.n = 0;
		pgp_i64(&p, live[i].job_id);
		pgp_i64(&p, live[i].attempts);
		pgp_i64(&p, live[i].started_at);
		pgp_i64(&p, live[i].slot);
		pgp_i64(&p, live[i].pid);
		pgp_txt(&p, cfg.node_name);
		pgp_i64(&p, pg_node_id);
		if (!(r = pg_run(P_REVIVE, &p)))
			goto out;
		if (PQntuples(r)) {
			int64_t d[8] = { 0 };

			pg_delta_state(d, JS_QUEUED, JS_RUNNING, 1);
			if (pg_count(pg_i64(r, 0, 0), d, live[i].started_at,
				     0) < 0) {
				PQclear(r);
				goto out;
			}
		}
		PQclear(r);
	}
	rc = lost_of(P_LOST, now, ids, n, NULL, requeued, interrupted);
	if (rc == 0) {
		/* held rows no worker of this node holds any more */
		char mine[32], *arr = id_array(ids, n);

		snprintf(mine, sizeof(mine), "{%lld}", (long long)pg_node_id);
		p.n = 0;
		pgp_txt(&p, mine);
		pgp_txt(&p, arr);
		rc = arr && pg_step(P_UNHOLD, &p) >= 0 ? 0 : -1;
		free(arr);
	}
out:
	free(ids);
	return rc;
}
