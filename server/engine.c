/* engine.c - a job's life: dispatch, finish, cancel, timeout, worker death.
 *
 * The glue between the scheduler (who is next), the pool (processes) and
 * the store (what is recorded).  Every transition is written to the store in
 * the loop turn's transaction and noted with the publisher, which tells
 * long-polls and event streams once that transaction is committed.  The
 * engine knows nothing above it: no HTTP, no streams.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "jobpool.h"

/* settle_batch forgets a batch that has nothing queued or running. */
static void settle_batch(struct sbatch *b, int64_t batch_id, int done)
{
	int64_t child;

	if (done) {
		if (b)
			sched_remove(b);
		publish_batch(batch_id);
		/* its follow-up, created by the store with the end (in this
		 * turn's transaction): to the schedule, as a submission */
		if ((child = store_then_child(batch_id)) > 0 &&
		    !sched_find(child))
			engine_batch_added(child);
	}
}

static void finish(struct slot *s, struct outcome *o);

/* ---- timeouts: a job's timeout_s and its batch's timeout_pct ----
 *
 * The pool enforces one deadline per slot (deadline_mono).  The engine
 * makes it the earlier of the job's own timeout_s (as pool_send_run set
 * it) and timeout_pct% of the median run time of its batch's succeeded
 * jobs, and remembers which is which so the job's error says which one
 * fired.  A running job's relative deadline moves with the median: a job
 * started before its batch had MEDIAN_MIN successes gets one when the
 * batch does, and one already past it is stopped at the next pool_tick. */
struct deadline {
	int64_t job_id;         /* the slot's job these are for */
	int64_t abs_mono;       /* from timeout_s, 0: none */
	int64_t rel_us;         /* the relative limit now, 0: none (yet) */
	int64_t median_us;
	double pct;
	char error[192];        /* the job's error once the relative fired */
};
static struct deadline deadlines[POOL_MAX];

/* arm_deadline sets s's deadline for its job, of batch b (NULL: not on
 * the schedule); fresh: the job has just been handed to s. */
static void arm_deadline(struct slot *s, struct sbatch *b, int fresh)
{
	struct deadline *d = &deadlines[s->index];
	int64_t at;

	if (fresh) {
		memset(d, 0, sizeof(*d));
		d->job_id = s->job_id;
		d->abs_mono = s->deadline_mono;
	}
	d->pct = b ? sched_timeout_pct(b) : 0;
	d->rel_us = b ? policy_rel_limit_us(sched_runs(b), d->pct) : 0;
	d->median_us = d->rel_us ? policy_median_us(sched_runs(b)) : 0;
	at = d->abs_mono;
	if (d->rel_us && (!at || s->started_mono + d->rel_us < at))
		at = s->started_mono + d->rel_us;
	s->deadline_mono = at;
}

/* rearm_batch moves the deadlines of b's running jobs after its median
 * changed; a job whose stop is under way keeps it. */
static void rearm_batch(int64_t batch_id, struct sbatch *b)
{
	struct slot *s;
	int i;

	for (i = 0; (s = pool_slot(i)); i++)
		if (s->state == SLOT_BUSY && s->job_id &&
		    s->batch_id == batch_id && s->kill == KILL_NONE &&
		    deadlines[s->index].job_id == s->job_id)
			arm_deadline(s, b, 0);
}

/* timeout_error is the error of s's job, which a timeout stopped. */
static const char *timeout_error(const struct slot *s)
{
	const struct deadline *d = &deadlines[s->index];

	if (d->job_id == s->job_id && d->error[0])
		return d->error;
	return "exceeded its timeout_s and was killed";
}

/* deadline_fired_relative tells whether the deadline of s's job that
 * passed is the relative one, and then writes the job's error (for
 * timeout_error); timeout_s wins a tie. */
static int deadline_fired_relative(struct slot *s)
{
	struct deadline *d = &deadlines[s->index];
	double med = (double)d->median_us / 1e6;

	if (d->job_id != s->job_id || !d->rel_us ||
	    (d->abs_mono && mono_us() >= d->abs_mono))
		return 0;
	snprintf(d->error, sizeof(d->error), med >= 100 ?
		 "ran longer than %g%% of the batch's median run time "
		 "(%.0f s) and was killed" :
		 "ran longer than %g%% of the batch's median run time "
		 "(%.3g s) and was killed", d->pct, med);
	return 1;
}

/* refuse_command ends a claimed command job without running it: the
 * submission check let it in under another configuration (stored while
 * commands were allowed, or by another server). */
static void refuse_command(struct slot *s, const struct claim *c)
{
	struct outcome o = { .state = JS_FAILED, .exit_code = -1,
			     .user_us = -1, .sys_us = -1, .max_rss_kb = -1,
			     .error = "the command kind is off on this server "
				      "(start jobpoold with --allow-command to "
				      "run it)" };

	log_warn("engine: job j_%012lld: a command job, but commands are "
		 "off (--allow-command); not run", (long long)c->job_id);
	s->job_id = c->job_id;
	s->batch_id = c->batch_id;
	s->job_attempts = c->attempts;
	s->started_mono = mono_us();
	s->max_attempts = 0;            /* never retried */
	s->is_command = 0;
	s->cancel_requested = 0;
	s->kill = KILL_NONE;
	o.finished_at = now_us();
	finish(s, &o);
}

/* ---- jobs workers hold in groups ----
 *
 * A job handed in a group keeps its queued row until its worker reports
 * it (see protocol.h), so claims must skip the ones held: their ids are
 * in this set.  Open addressing, linear probing, deletion by shifting back
 * (no tombstones); at most pool size x GROUP_MAX ids. */
static int64_t *held;
static size_t held_cap, held_count;

static size_t held_slot(int64_t id)
{
	size_t i = (size_t)id * 0x9E3779B97F4A7C15ULL;

	return (i >> 17) & (held_cap - 1);
}

static int held_has(int64_t id)
{
	size_t i;

	if (!held_count)
		return 0;
	for (i = held_slot(id); held[i]; i = (i + 1) & (held_cap - 1))
		if (held[i] == id)
			return 1;
	return 0;
}

static int held_add(int64_t id)
{
	size_t i;

	if ((held_count + 1) * 2 > held_cap) {
		int64_t *old = held;
		size_t n = held_cap, j;

		held_cap = held_cap ? held_cap * 2 : 256;
		held = calloc(held_cap, sizeof(*held));
		if (!held) {
			held = old;
			held_cap = n;
			return -1;
		}
		for (j = 0; j < n; j++)
			if (old[j]) {
				for (i = held_slot(old[j]); held[i];
				     i = (i + 1) & (held_cap - 1))
					;
				held[i] = old[j];
			}
		free(old);
	}
	for (i = held_slot(id); held[i]; i = (i + 1) & (held_cap - 1))
		if (held[i] == id)
			return 0;
	held[i] = id;
	held_count++;
	return 0;
}

static void held_del(int64_t id)
{
	size_t i, j, k;

	if (!held_count)
		return;
	for (i = held_slot(id); held[i] && held[i] != id;
	     i = (i + 1) & (held_cap - 1))
		;
	if (!held[i])
		return;
	held[i] = 0;
	held_count--;
	/* Move back every later entry of the run that may now be cut off
	 * from its home slot. */
	for (j = (i + 1) & (held_cap - 1); held[j]; j = (j + 1) & (held_cap - 1)) {
		k = held_slot(held[j]);
		if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
			held[i] = held[j];
			held[j] = 0;
			i = j;
		}
	}
}

/* take reads up to want due, unheld queued jobs of batch b in index order
 * into out (args to free).  The batch's cursor says where the unheld ones
 * start; when nothing is after it, the batch is read once from its start
 * (a job went back to the queue behind it).  Returns how many, or -1. */
static int take(struct sbatch *b, int want, int64_t now, int any_due,
		struct claim *out)
{
	struct claim buf[GROUP_MAX];
	int64_t after = sched_cursor(b);
	int got = 0, n, i, ask, rescanned = after < 0;

	for (;;) {
		ask = want - got;
		n = store_jobs_peek(sched_id(b), now, any_due, after, ask, buf);
		if (n < 0) {
			while (got > 0)
				free(out[--got].args);
			return -1;
		}
		for (i = 0; i < n; i++) {
			after = buf[i].idx;
			if (held_has(buf[i].job_id))
				free(buf[i].args);
			else
				out[got++] = buf[i];
		}
		if (got == want)
			return got;
		if (n == ask)
			continue;       /* some were held: look further */
		if (got || rescanned)
			return got;
		rescanned = 1;
		after = -1;
	}
}

/* start_one gives one job of b to idle slot s, marked running now.
 * Returns 0, 1 when b has no due job, -1 when the store failed. */
static int start_one(struct slot *s, struct sbatch *b)
{
	struct claim c;
	/* The job's start, on both clocks at once: started_at is stored,
	 * run_ms is measured from the monotonic one. */
	int64_t now = now_us(), mono = mono_us();
	int n, rc;

	if (store_dispatch_after_commit()) {
		/* Shared with other nodes: no held jobs to skip, and the
		 * claim is one statement that locks and starts the job.  Due
		 * jobs only: the others' retry backoffs are not in memory
		 * here, only in the rows. */
		rc = store_job_claim(sched_id(b), s->index, s->pid, now, 0,
				     &c);
		if (rc != 0)
			return rc;
		goto claimed;
	}
	n = take(b, 1, now, 0, &c);
	if (n == 0) {
		/* The scheduler's (monotonic) backoff says a job is due but
		 * the store's (wall-clock) not_before disagrees: the clock
		 * stepped back.  Take the batch's first queued job anyway. */
		n = take(b, 1, now, 1, &c);
	}
	if (n <= 0)
		return n < 0 ? -1 : 1;
	if (store_job_start(&c, s->index, s->pid, now) < 0) {
		free(c.args);
		return -1;
	}
claimed:
	sched_set_cursor(b, c.idx);
	sched_started(b);
	publish_job(c.job_id, c.batch_id, JS_RUNNING, c.attempts);
	if (sched_first_start(b))
		publish_batch(c.batch_id);
	s->started_at = now;
	if (strcmp(c.kind, "command") == 0 && !cfg.allow_command) {
		refuse_command(s, &c);
		free(c.args);
		return 0;
	}
	metrics_queue_wait(now - c.queued_at);
	pool_send_run(s, &c, mono);
	arm_deadline(s, b, 1);
	free(c.args);
	return 0;
}

/* groupable tells whether a job may travel in a group: a function kind (a
 * command's cancel and output go through its worker one job at a time)
 * with no timeout (which needs the server to know the job's start). */
static int groupable(const struct claim *c)
{
	/* "fail" is made to kill its worker: in a group, the results of the
	 * jobs before it would die with it and those jobs run again. */
	return strcmp(c->kind, "command") != 0 &&
	       strcmp(c->kind, "fail") != 0 && c->timeout_s <= 0;
}

/* start_group gives up to k jobs of b to idle slot s in one group; their
 * rows stay queued until the worker reports them.  Returns 0, 1 when b has
 * no due job, -1 when the store failed; falls back to one job when fewer
 * than two can go. */
/* Jobs handed in groups this turn whose claim is not committed yet (with
 * several nodes): if the commit fails, the groups are never sent and the
 * jobs are not held after all (engine_dispatched). */
static int64_t uncommitted[GROUP_MAX * POOL_MAX];
static size_t nuncommitted;

/* engine_dispatched: the claims of this turn's dispatch committed (ok), or
 * were lost with their transaction (their messages were dropped). */
void engine_dispatched(int ok)
{
	size_t i;

	for (i = 0; !ok && i < nuncommitted; i++)
		held_del(uncommitted[i]);
	nuncommitted = 0;
}

/* unclaim gives back jobs [from, n) of c that a group will not carry
 * (with several nodes their rows are marked held) and frees them all. */
static void unclaim(struct claim *c, int from, int n)
{
	int64_t ids[GROUP_MAX];
	int i;

	for (i = from; i < n; i++)
		ids[i - from] = c[i].job_id;
	if (n > from)
		store_jobs_release(ids, (size_t)(n - from));
	for (i = 0; i < n; i++)
		free(c[i].args);
}

static int start_group(struct slot *s, struct sbatch *b, int k)
{
	struct claim c[GROUP_MAX];
	int n = take(b, k, now_us(), 0, c), m = 0, sent, i;

	if (n < 0)
		return -1;
	while (m < n && groupable(&c[m]))
		m++;
	if (m < 2) {
		unclaim(c, 0, n);
		return start_one(s, b);
	}
	sent = pool_send_group(s, c, m);
	if (sent < 0) {
		unclaim(c, 0, n);
		return -1;      /* out of memory, or the worker is dying */
	}
	for (i = 0; i < sent; i++) {
		if (held_add(c[i].job_id) < 0)
			abort();        /* as the scheduler does: no memory */
		sched_started(b);
		if (store_dispatch_after_commit() && nuncommitted < GROUP_MAX *
		    POOL_MAX)
			uncommitted[nuncommitted++] = c[i].job_id;
	}
	sched_set_cursor(b, c[sent - 1].idx);
	metrics_grouped(sent);
	unclaim(c, sent, n);
	return 0;
}

/* engine_dispatch gives queued jobs to idle workers until one side runs
 * out.  Called at the end of every loop turn, so a worker freed by a
 * finished job gets its next job in the same turn. */
void engine_dispatch(void)
{
	struct sbatch *b;
	struct slot *s;
	int k, rc;

	int shared = store_dispatch_after_commit();

	/* With several nodes a claim must commit before its worker starts
	 * (main.c commits, then pool_release sends). */
	if (shared)
		pool_hold();
	while (!shutting_down && !store_degraded() && (s = pool_idle()) &&
	       (b = sched_pick())) {
		k = sched_group_size(b);
		rc = k > 1 ? start_group(s, b, k) : start_one(s, b);
		if (rc == 1 && shared) {
			/* Other nodes took them, or the batch is at its
			 * limit across the cluster: the next look at the
			 * store brings the count back. */
			sched_drop_queued(b, sched_queued(b));
			continue;
		}
		if (rc == 1) {
			/* The counters said queued but the store has none:
			 * trust the store. */
			log_warn("engine: batch %lld has no queued job",
				 (long long)sched_id(b));
			sched_drop_queued(b, 1);
		}
		if (rc < 0)
			return;
	}
}

/* Jobs waiting out their retry backoff: few, so a list is enough. */
struct backoff {
	int64_t job_id, batch_id, due_mono;
	struct backoff *next;
};
static struct backoff *backoffs;

/* retry_allowed tells whether the attempt that ended as o may be retried:
 * attempts left, a failure (never a cancel), and listed in retry_on (an
 * empty list allows every failure; a timeout only with an empty list). */
static int retry_allowed(const struct slot *s, const struct outcome *o)
{
	const struct retry_policy *p = &s->retry;

	if (s->job_attempts >= s->max_attempts)
		return 0;
	if (o->state != JS_FAILED && o->state != JS_TIMED_OUT)
		return 0;
	if (p->any)
		return 1;
	if (o->state == JS_TIMED_OUT)
		return 0;
	if (o->signal > 0 && o->signal < 64)
		return (p->signals >> o->signal) & 1;
	if (o->exit_code >= 0 && o->exit_code <= 255)
		return (p->codes[o->exit_code / 8] >> (o->exit_code % 8)) & 1;
	return 0;
}

/* backoff_us is retry_backoff_s * 2^(attempt-1), plus up to 50% random
 * jitter so retries of many jobs that failed together spread out; never
 * less than the nominal delay, never more than a day. */
static int64_t backoff_us(const struct slot *s)
{
	double d = s->backoff_s * pow(2, s->job_attempts - 1);

	d *= 1.0 + 0.5 * (double)random() / (double)RAND_MAX;
	if (d > 86400)
		d = 86400;
	return (int64_t)(d * 1e6);
}

/* retry puts the job back in the queue after its backoff.  Returns 0, or
 * -1 when the store refused (it is degraded; the resync recovers it). */
static int retry(struct slot *s, struct outcome *o, struct sbatch *b)
{
	int64_t delay = backoff_us(s);
	struct backoff *w;

	if (store_job_retry(s->job_id, s->batch_id, o, s, now_us() + delay) < 0) {
		log_warn("engine: job j_%012lld: retry not stored",
			 (long long)s->job_id);
		return -1;
	}
	metrics_retries(1);
	log_event(LOG_INFO, "retry", s->batch_id, s->job_id, "engine: job "
		  "j_%012lld of batch b_%012lld %s (attempt %d); retry in %.3f s",
		  (long long)s->job_id, (long long)s->batch_id,
		  job_state_name(o->state), s->job_attempts, (double)delay / 1e6);
	if (!b)
		return 0;
	if (delay <= 0) {
		sched_requeued(b);
		return 0;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		sched_requeued(b);      /* no timer: retry at once */
		return 0;
	}
	sched_delayed(b);
	w->job_id = s->job_id;
	w->batch_id = s->batch_id;
	w->due_mono = mono_us() + delay;
	w->next = backoffs;
	backoffs = w;
	return 0;
}

/* forget_backoffs drops the timers of one job (job_id) or of every job of
 * a batch (job_id 0); each dropped one becomes plain queued in the
 * scheduler so a cancel can count it.  Returns how many were dropped. */
static int forget_backoffs(int64_t batch_id, int64_t job_id)
{
	struct backoff **pp = &backoffs, *w;
	struct sbatch *b = sched_find(batch_id);
	int n = 0;

	while ((w = *pp)) {
		if (w->batch_id == batch_id && (!job_id || w->job_id == job_id)) {
			*pp = w->next;
			free(w);
			if (b)
				sched_ready(b);
			n++;
		} else {
			pp = &w->next;
		}
	}
	return n;
}

/* engine_tick releases jobs whose backoff is over.  Returns the next due
 * time, or 0. */
/* ---- what the store reports: other nodes' work (PostgreSQL) ---- */

static void tick_job(int64_t job_id, int64_t batch_id, enum job_state st,
		     int attempts, void *ctx)
{
	publish_job(job_id, batch_id, st, attempts);
}

static struct slot *slot_of_job(int64_t job_id);

/* tick_cancel: another node stored a cancel of a job this one runs. */
static struct handed *held_job(int64_t job_id, struct slot **slot);
static void cancel_held(struct slot *s, struct handed *h);

static void tick_cancel(int64_t job_id, void *ctx)
{
	struct slot *s = slot_of_job(job_id);
	struct handed *h;

	if ((h = held_job(job_id, &s))) {
		if (!h->cancel)
			cancel_held(s, h);      /* not started: not to start */
	} else if (s && !s->cancel_requested) {
		pool_stop_job(s, KILL_CANCEL);
	}
}

static void load_policy(struct sbatch *b, int64_t batch_id);
static void poll_policy(struct sbatch *b, const struct batch_info *info);

/* tick_batch: an unfinished batch as the store has it, maybe new (posted
 * to another node), maybe changed by other nodes' claims. */
static void tick_batch(const struct batch_info *info, void *ctx)
{
	struct sbatch *b = sched_find(info->id);

	if (b) {
		sched_update(b, info);
	} else if (info->queued > 0) {
		sched_add(info);
		load_policy(b = sched_find(info->id), info->id);
	}
	if (b)
		poll_policy(b, info);
}

/* tick_event: a change from the shared log, this node's or another's.  A
 * batch another node ended leaves the schedule here too. */
static void tick_event(const struct change *c, void *ctx)
{
	const char *st;
	struct sbatch *b;

	publish_deliver(c);
	if (!c->is_batch)
		return;
	st = json_string_value(json_object_get(c->batch, "state"));
	if (st && strcmp(st, "queued") != 0 && strcmp(st, "running") != 0 &&
	    (b = sched_find(c->id)))
		sched_remove(b);
}

/* tick_live lists the jobs workers run or hold now (any slot with a job:
 * a dispatch not sent yet counts too). */
static size_t tick_live(int64_t *ids, size_t max, void *ctx)
{
	struct slot *s;
	size_t n = 0;
	int i, j;

	for (i = 0; (s = pool_slot(i)); i++) {
		if (s->job_id && n < max)
			ids[n++] = s->job_id;
		for (j = 0; j < s->group_len && n < max; j++)
			ids[n++] = s->group[s->group_pos + j].job_id;
	}
	return n;
}

/* tick_fence: this node lost its lease; the other nodes will re-queue its
 * jobs, so none of them may go on running here. */
static void tick_fence(void *ctx)
{
	pool_kill_all();
}

/* tick_dispatch: the stored server-wide pause as the store read it (with
 * PostgreSQL, set through any node). */
static void tick_dispatch(int paused, void *ctx)
{
	if (sched_all_paused() == paused)
		return;
	log_info("pool: dispatch %s (stored: set through another node)",
		 paused ? "paused" : "resumed");
	sched_pause_all(paused);
}

int64_t engine_tick(int64_t now)
{
	struct backoff **pp = &backoffs, *w;
	int64_t next = 0;
	struct sbatch *b;
	struct store_tick cb = { tick_job, tick_cancel, tick_batch, tick_fence,
				 tick_event, tick_live, tick_dispatch, NULL,
				 pool_busy(), pool_size() };

	if (store_dispatch_after_commit()) {
		store_tick(now_us(), &cb);
		next = now + 50000;     /* the lease check and the reaper */
	}

	while ((w = *pp)) {
		if (now >= w->due_mono) {
			*pp = w->next;
			b = sched_find(w->batch_id);
			if (b)
				sched_ready(b);
			free(w);
			continue;
		}
		if (!next || w->due_mono < next)
			next = w->due_mono;
		pp = &w->next;
	}
	return next;
}

/* ---- batch policies: halt and timeout_pct (policy.c) ---- */

static int cancel_batch(int64_t batch_id, int kill_running, int announce);

/* load_runs fills b's window from the batch's stored successes, of which
 * there are seen in all (after a restart, or others' successes). */
static void load_runs(struct sbatch *b, int64_t batch_id, int64_t seen)
{
	int64_t runs[MEDIAN_WINDOW];
	struct median *m = sched_runs(b);
	int n;

	if (!m || (n = store_batch_runs(batch_id, runs, MEDIAN_WINDOW)) < 0)
		return;
	memset(m, 0, sizeof(*m));
	while (n > 0)
		policy_median_add(m, runs[--n]);        /* oldest first */
	m->seen = seen;
}

/* load_policy gives a batch joining the schedule its policies as stored
 * (a halted one stays halted; a restart keeps its median). */
static void load_policy(struct sbatch *b, int64_t batch_id)
{
	struct batch_policy p;

	if (!b || store_batch_policy(batch_id, &p) < 0)
		return;
	sched_set_policy(b, &p);
	if (sched_runs(b) && p.succeeded > 0)
		load_runs(b, batch_id, p.succeeded);
}

/* halt applies b's halt policy h, met for reason: recorded with the
 * batch, then its queued jobs are canceled, and with "now" its running
 * ones killed, as a client's cancel does.  b may be gone after. */
static void halt(struct sbatch *b, int64_t batch_id,
		 const struct halt_policy *h, const char *reason)
{
	int kill_running = h->now;
	int rc = store_batch_halt(batch_id, reason, now_us(), !kill_running);

	if (rc < 0)
		return;         /* the store is degraded; a later end retries */
	/* Halted or canceled first (maybe by another node): either way
	 * nothing of it is retried any more, and no look is needed again. */
	sched_set_halted(b);
	if (rc > 0)
		return;
	log_info("engine: batch b_%012lld halted: %s; %s", (long long)batch_id,
		 reason, kill_running ? "its running jobs are killed" :
		 "its running jobs may finish");
	cancel_batch(batch_id, kill_running, 1);
}

/* check_halt looks whether b's halt policy is met now.  Its counts are
 * the store's, which with several nodes include the others' committed
 * ends.  A policy met by the batch's last job changes nothing: nothing is
 * left to halt.  b may be gone after. */
static void check_halt(struct sbatch *b, int64_t batch_id)
{
	const struct halt_policy *h = sched_halt(b);
	struct batch_policy p;
	char reason[160];

	if (!h || store_batch_policy(batch_id, &p) < 0)
		return;
	if (p.halted) {
		sched_set_halted(b);    /* another node's halt */
		return;
	}
	if (p.unfinished > 0 && policy_halt_reached(&p.halt, p.total,
						    p.succeeded, p.failed,
						    reason, sizeof(reason)))
		halt(b, batch_id, &p.halt, reason);
}

/* after_end applies b's policies after one of its jobs ended as st (not
 * to be retried) and the batch still has jobs: a success moves the median
 * behind timeout_pct, and an end may meet the halt policy.  b may be gone
 * after. */
static void after_end(struct sbatch *b, int64_t batch_id, enum job_state st,
		      int64_t run_us)
{
	struct median *m = sched_runs(b);

	if (m && st == JS_SUCCEEDED) {
		policy_median_add(m, run_us);
		rearm_batch(batch_id, b);
	}
	if (st != JS_CANCELED)
		check_halt(b, batch_id);
}

/* poll_policy looks at b's policies with what other nodes did
 * (PostgreSQL, every --poll-interval when its counts changed; info is the
 * batch as stored): a halt
 * threshold two nodes reached together (each counted only its own ends
 * not yet committed), a halt another node recorded, jobs back in the
 * queue of a halted batch (a node retried one before it heard of the
 * halt), and successes elsewhere, which move the median. */
static void poll_policy(struct sbatch *b, const struct batch_info *info)
{
	struct median *m = sched_runs(b);
	struct batch_policy p;

	if (!m && !sched_halt(b) && !sched_halted(b))
		return;
	if (!sched_policy_due(b, info) || store_batch_policy(info->id, &p) < 0)
		return;
	if (m && p.succeeded > m->seen) {
		load_runs(b, info->id, p.succeeded);
		rearm_batch(info->id, b);
	}
	if (!p.halted) {
		check_halt(b, info->id);
		return;
	}
	sched_set_halted(b);
	if (info->queued > 0)
		cancel_batch(info->id, 0, 0);
}

/* log_end logs a job that ended other than well: failed, timed out, or
 * canceled while it ran (a success is the expected case, and a line per
 * success would drown the rest). */
static void log_end(const struct slot *s, const struct outcome *o)
{
	if (o->state == JS_SUCCEEDED)
		return;
	log_event(o->state == JS_CANCELED ? LOG_INFO : LOG_WARN,
		  o->state == JS_CANCELED ? "cancel" : "failure", s->batch_id,
		  s->job_id, "engine: job j_%012lld of batch b_%012lld (%s, "
		  "attempt %d) %s: %s", (long long)s->job_id,
		  (long long)s->batch_id, s->kind, s->job_attempts,
		  job_state_name(o->state), o->error ? o->error : "exit code "
		  "not 0");
}

static void finish(struct slot *s, struct outcome *o)
{
	struct sbatch *b = sched_find(s->batch_id);
	int64_t job_id = s->job_id, batch_id = s->batch_id;
	int done = 0;

	s->jobs_done++;
	metrics_job_run(o->run_us);
	/* The worker's own timing when there is one: the server's includes
	 * the hand-off, which says nothing about how long the job is. */
	if (b && (o->state == JS_SUCCEEDED || o->state == JS_FAILED))
		sched_note_run(b, o->busy_us > 0 ? o->busy_us : o->run_us);
	/* A client's cancel wins over whatever else stopped the job (a
	 * timeout kill already under way, a failure racing the signal). */
	if (s->cancel_requested && o->state != JS_SUCCEEDED) {
		o->state = JS_CANCELED;
		o->error = "canceled while running";
	}
	if (retry_allowed(s, o) && !(b && sched_canceled(b))) {
		if (retry(s, o, b) == 0)        /* running -> queued */
			publish_job(job_id, batch_id, JS_QUEUED,
				    s->job_attempts);
		pool_job_ended(s);
		return;
	}
	if (b)
		sched_finished(b);
	if (store_job_finish(job_id, batch_id, o, s, &done) < 0) {
		/* The store is degraded now; the resync recovers the job. */
		log_warn("engine: job j_%012lld: outcome not stored",
			 (long long)job_id);
		pool_job_ended(s);
		return;
	}
	publish_job(job_id, batch_id, o->state, s->job_attempts);
	metrics_job_finished(s->kind, o->state);
	log_end(s, o);
	pool_job_ended(s);
	if (b && !done)
		after_end(b, batch_id, o->state, o->run_us);
	settle_batch(b, batch_id, done);
}

/* captured_output is the {stdout, stderr, truncated} of a command job. */
static json_t *captured_output(const struct slot *s, int truncated)
{
	return json_pack("{s:s, s:s, s:b}",
			 "stdout", s->out[0] ? s->out[0] : "",
			 "stderr", s->out[1] ? s->out[1] : "",
			 "truncated", truncated);
}

static int64_t msg_int(const json_t *m, const char *key)
{
	const json_t *v = json_object_get(m, key);

	return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* done_at records the outcome msg (a "done" message, or one entry of
 * "results") of slot s's job, which ended at finished_at after run_us. */
static void outcome_of(const struct slot *s, const json_t *msg,
		       int64_t finished_at, int64_t run_us, struct outcome *out,
		       json_t **output_out)
{
	struct outcome o = { .exit_code = -1 };
	int ok = json_is_true(json_object_get(msg, "ok"));
	int killed = json_is_true(json_object_get(msg, "killed"));
	json_t *output = NULL;

	o.state = ok ? JS_SUCCEEDED : JS_FAILED;
	/* A command stopped by our cancel or timeout ends as that, not as a
	 * failure; one that finished before the stop keeps its real end. */
	if (killed && s->kill == KILL_CANCEL)
		o.state = JS_CANCELED;
	else if (killed && s->kill == KILL_TIMEOUT)
		o.state = JS_TIMED_OUT;
	o.exit_code = (int)msg_int(msg, "exit_code");
	o.signal = (int)(msg_int(msg, "signal") > 0 ? msg_int(msg, "signal") :
			 0);
	o.finished_at = finished_at;
	o.run_us = run_us;
	o.busy_us = msg_int(msg, "run_us");
	o.user_us = msg_int(msg, "user_us");
	o.sys_us = msg_int(msg, "sys_us");
	o.max_rss_kb = msg_int(msg, "maxrss_kb");
	o.result = ok ? json_object_get(msg, "result") : NULL;
	o.error = ok ? NULL : json_string_value(json_object_get(msg, "error"));
	if (!ok && !o.error)
		o.error = "the job failed";
	if (o.state == JS_CANCELED)
		o.error = "canceled while running";
	else if (o.state == JS_TIMED_OUT)
		o.error = timeout_error(s);
	if (s->is_command)
		o.output = output = captured_output(s, json_is_true(
			json_object_get(msg, "truncated")));
	*out = o;
	*output_out = output;
}

static void done_at(struct slot *s, const json_t *msg, int64_t finished_at,
		    int64_t run_us)
{
	struct outcome o;
	json_t *output;

	outcome_of(s, msg, finished_at, run_us, &o, &output);
	finish(s, &o);
	json_decref(output);
}

/* job_done records a "done" message from slot s's worker. */
static void job_done(struct slot *s, const json_t *msg)
{
	done_at(s, msg, now_us(), mono_us() - s->started_mono);
}

/* group_start stores that s's head job of a group started at started_us
 * (the worker's clock).  Returns 0, or -1 when the store refused. */
static int group_start(struct slot *s, struct handed *h, int64_t started_us)
{
	struct claim c = { .job_id = h->job_id, .batch_id = h->batch_id };
	struct sbatch *b = sched_find(h->batch_id);

	if (store_job_start(&c, s->index, s->pid, started_us) < 0) {
		log_warn("engine: job j_%012lld: start not stored",
			 (long long)h->job_id);
		return -1;
	}
	h->running = 1;
	s->started_at = started_us;
	publish_job(h->job_id, h->batch_id, JS_RUNNING, h->attempts);
	if (b && sched_first_start(b))
		publish_batch(h->batch_id);
	metrics_queue_wait(started_us - h->queued_at);
	return 0;
}

/* release forgets that a worker holds job h: its row is no longer one a
 * claim must skip. */
static void release(const struct handed *h)
{
	held_del(h->job_id);
}

/* group_dropped settles a group job the worker did not start because it
 * was canceled: queued -> canceled. */
static void group_dropped(struct slot *s, const struct handed *h)
{
	struct sbatch *b = sched_find(h->batch_id);
	int done = 0, rc;

	if (b)
		sched_finished(b);
	rc = store_job_cancel_queued(h->job_id, h->batch_id, now_us(), &done);
	if (rc == 0)
		publish_job(h->job_id, h->batch_id, JS_CANCELED,
			    h->attempts - 1);
	else if (rc == 1)
		/* canceled already, through another node */
		store_jobs_release(&h->job_id, 1);
	pool_job_ended(s);
	if (rc == 0)
		settle_batch(b, h->batch_id, done);
}

/* Fast-path outcomes of one "results" message, gathered until a job that
 * needs the slow path (a retry, a cancel, a job shown running) or the end. */
struct pending {
	int64_t batch_id;
	int n;
	struct group_done d[GROUP_MAX];
};

/* flush_done stores the gathered jobs, which slot s's worker ran, in one
 * write, then tells the scheduler, the metrics and the publisher what
 * finish() tells for one job. */
static void flush_done(struct slot *s, struct pending *p)
{
	struct sbatch *b = sched_find(p->batch_id);
	int done = 0, i;

	if (!p->n)
		return;
	if (store_jobs_done(p->batch_id, p->d, p->n, s->index, s->pid,
			    &done) < 0) {
		/* The store is degraded now; the resync recovers them. */
		log_warn("engine: %d outcome(s) of batch %lld not stored",
			 p->n, (long long)p->batch_id);
		p->n = 0;
		return;
	}
	if (b && sched_first_start(b))
		publish_batch(p->batch_id);
	for (i = 0; i < p->n; i++) {
		const struct group_done *d = &p->d[i];

		s->jobs_done++;
		metrics_job_run(d->o.run_us);
		if (b) {
			sched_finished(b);
			sched_note_run(b, d->o.run_us);
		}
		publish_job(d->job_id, p->batch_id, JS_RUNNING, d->attempt);
		publish_job(d->job_id, p->batch_id, d->o.state, d->attempt);
	}
	p->n = 0;
	settle_batch(b, p->batch_id, done);
}

/* group_results records a "results" message: the outcomes of the jobs at
 * the head of s's group, in order. */
static void group_results(struct slot *s, const json_t *msg)
{
	const json_t *list = json_object_get(msg, "jobs"), *r;
	static struct pending p;
	struct handed h;
	struct outcome o;
	json_t *output;
	int64_t started, run;
	size_t i;

	p.n = 0;
	json_array_foreach(list, i, r) {
		if (s->group_len <= 0 || parse_id(json_string_value(
			json_object_get(r, "job")), 'j') !=
		    s->group[s->group_pos].job_id) {
			flush_done(s, &p);
			log_warn("pool: slot %d pid %d: results out of order",
				 s->index, (int)s->pid);
			pool_kill(s, KILL_NONE, 0);
			return;
		}
		h = s->group[s->group_pos];
		release(&h);
		if (json_is_true(json_object_get(r, "dropped"))) {
			flush_done(s, &p);
			pool_group_pop(s);
			pool_slot_load(s, &h);
			group_dropped(s, &h);
			continue;
		}
		started = msg_int(r, "started_us");
		run = msg_int(r, "run_us");
		if (started <= 0 || run < 0) {
			run = run < 0 ? 0 : run;
			started = now_us() - run;
		}
		/* The slot's fields are h's here (the head). */
		s->started_at = started;
		s->rss_kb = msg_int(r, "maxrss_kb");
		outcome_of(s, r, started + run, run, &o, &output);
		if (!h.running && !h.cancel && !output &&
		    (o.state == JS_SUCCEEDED ||
		     (o.state == JS_FAILED && !retry_allowed(s, &o))) &&
		    (!p.n || p.batch_id == h.batch_id)) {
			struct group_done *d = &p.d[p.n++];

			p.batch_id = h.batch_id;
			d->job_id = h.job_id;
			d->attempt = h.attempts;
			d->started_at = started;
			d->o = o;
			metrics_queue_wait(started - h.queued_at);
			metrics_job_finished(h.kind, o.state);
			if (o.state != JS_SUCCEEDED)
				log_end(s, &o);
			pool_group_pop(s);
			continue;
		}
		json_decref(output);
		flush_done(s, &p);
		pool_group_pop(s);
		pool_slot_load(s, &h);
		s->started_at = started;
		if (!h.running && group_start(s, &h, started) < 0) {
			pool_job_ended(s);      /* the resync recovers it */
			continue;
		}
		done_at(s, r, started + run, run);
	}
	flush_done(s, &p);
	if (!json_is_array(list))
		pool_kill(s, KILL_NONE, 0);
	else if (s->group_len <= 0 && s->job_id)
		pool_job_ended(s);      /* the last ones went the fast way */
}

/* group_started records a "started": the head of s's group has run for a
 * while.  It is shown running from its real start, and a cancel that came
 * for it meanwhile now stops it. */
static void group_started(struct slot *s, const json_t *msg)
{
	struct handed *h = &s->group[s->group_pos];
	int64_t run = msg_int(msg, "run_us");

	if (parse_id(json_string_value(json_object_get(msg, "job")), 'j') !=
	    h->job_id || h->announced)
		return;
	/* Known in memory even if the store refuses the write (it is
	 * degraded): the job can be stopped, and the resync stores it. */
	h->announced = 1;
	s->started_at = msg_int(msg, "started_us");
	s->started_mono = mono_us() - (run > 0 ? run : 0);
	group_start(s, h, s->started_at);
	if (h->cancel)
		pool_stop_job(s, KILL_CANCEL);
}

/* group_lost settles the group of a worker that died: a job it said it
 * started stays the slot's job for worker_died to settle; every other job
 * goes back to the queue (its row never left it), or ends canceled when a
 * client canceled it.  Which of them ran is not known (their results died
 * with the worker), so the batch runs one job at a time from now on and a
 * job that kills its worker gets its own outcome.  Returns whether the
 * head was started. */
static int group_lost(struct slot *s)
{
	struct sbatch *b = sched_find(s->batch_id);
	int first = s->group_pos, last = s->group_pos + s->group_len, i;
	int started = s->group[first].announced;
	int done = 0, rc;

	if (b)
		sched_no_groups(b);
	for (i = started ? first + 1 : first; i < last; i++) {
		struct handed *h = &s->group[i];
		struct sbatch *hb = sched_find(h->batch_id);

		release(h);
		rc = h->cancel ? store_job_cancel_queued(h->job_id, h->batch_id,
							 now_us(), &done) : 1;
		if (rc == 0) {
			if (hb)
				sched_finished(hb);
			publish_job(h->job_id, h->batch_id, JS_CANCELED,
				    h->attempts - 1);
			settle_batch(hb, h->batch_id, done);
		} else if (rc < 0) {
			/* The store is degraded: its resync cancels the job
			 * from the stored request and rebuilds the counts. */
		} else {
			store_jobs_release(&h->job_id, 1);
			if (hb)
				sched_requeued(hb);
		}
	}
	if (started) {
		struct handed *h = &s->group[first];

		release(h);
		/* Its start was never stored (the store was degraded): the
		 * settlement below must find it running. */
		if (!h->running && group_start(s, h, s->started_at) < 0)
			started = 0;
	}
	s->group_len = 0;
	return started;
}

/* worker_died settles the job of a worker that exited: killed on
 * purpose (cancel, timeout, shutdown) or crashed on its own. */
static void worker_died(struct slot *s, int status)
{
	struct outcome o = { .exit_code = -1, .user_us = -1, .sys_us = -1,
			     .max_rss_kb = s->rss_kb };
	struct sbatch *b;
	char error[160];

	if (s->group_len > 0 && !group_lost(s)) {
		s->job_id = 0;
		return;
	}
	o.finished_at = now_us();
	o.run_us = mono_us() - s->started_mono;
	/* A job a halt "soon" let run is not queued again by a shutdown: its
	 * batch starts nothing any more, so it ends canceled, as recovery
	 * ends one found running in a canceled batch. */
	b = sched_find(s->batch_id);
	if (s->kill == KILL_SHUTDOWN && s->kill_job == s->job_id && b &&
	    sched_halted(b))
		s->kill = KILL_CANCEL;
	/* A kill meant for another job of its group (which ended before the
	 * worker died) is not this job's fault either. */
	if (s->kill == KILL_SHUTDOWN ||
	    (s->kill != KILL_NONE && s->kill_job != s->job_id)) {
		/* Not the job's fault: back to the queue, attempt not
		 * counted, so the next start runs it again. */
		if (store_job_requeue(s->job_id, s->batch_id, 1, 0) == 0)
			publish_job(s->job_id, s->batch_id, JS_QUEUED,
				    s->job_attempts - 1);
		b = sched_find(s->batch_id);
		if (b)
			sched_requeued(b);
		pool_job_ended(s);
		return;
	}
	if (WIFSIGNALED(status))
		o.signal = WTERMSIG(status);
	else if (WIFEXITED(status))
		o.exit_code = WEXITSTATUS(status);
	switch (s->kill) {
	case KILL_CANCEL:
		o.state = JS_CANCELED;
		o.error = "canceled while running";
		break;
	case KILL_TIMEOUT:
		o.state = JS_TIMED_OUT;
		o.error = timeout_error(s);
		break;
	default:
		o.state = JS_FAILED;
		if (o.signal)
			snprintf(error, sizeof(error),
				 "the worker running the job was killed by %s",
				 signal_name(o.signal) ? signal_name(o.signal) :
				 "a signal");
		else
			snprintf(error, sizeof(error),
				 "the worker running the job exited with code %d",
				 o.exit_code);
		o.error = error;
		log_event(LOG_WARN, "crash", s->batch_id, s->job_id, "engine: "
			  "job j_%012lld of batch b_%012lld crashed its worker "
			  "(pid %d): %s", (long long)s->job_id,
			  (long long)s->batch_id, (int)s->pid, error);
		break;
	}
	finish(s, &o);
}

static void timed_out(struct slot *s)
{
	if (deadline_fired_relative(s))
		log_info("engine: job j_%012lld timed out on slot %d: %s",
			 (long long)s->job_id, s->index, timeout_error(s));
	else
		log_info("engine: job %lld timed out on slot %d",
			 (long long)s->job_id, s->index);
	pool_stop_job(s, KILL_TIMEOUT);
}

const struct pool_events engine_pool_events = {
	.job_done = job_done,
	.worker_died = worker_died,
	.timeout = timed_out,
	.group_results = group_results,
	.group_started = group_started,
};

static struct slot *slot_of_job(int64_t job_id)
{
	struct slot *s;
	int i;

	for (i = 0; (s = pool_slot(i)); i++)
		if (s->job_id == job_id && s->pid > 0)
			return s;
	return NULL;
}

/* held_job finds the group entry of job_id, a job some worker holds
 * while its row is queued; NULL when none does. */
static struct handed *held_job(int64_t job_id, struct slot **slot)
{
	struct slot *s;
	int i, j;

	if (!held_has(job_id))
		return NULL;
	for (i = 0; (s = pool_slot(i)); i++)
		for (j = 0; j < s->group_len; j++)
			if (s->group[s->group_pos + j].job_id == job_id) {
				*slot = s;
				return &s->group[s->group_pos + j];
			}
	return NULL;
}

/* cancel_held asks the worker holding h not to start it; its answer (or
 * its outcome, when it started first) settles the job. */
static void cancel_held(struct slot *s, struct handed *h)
{
	h->cancel = 1;
	if (h != &s->group[s->group_pos]) {
		pool_send_drop(s, h->job_id);
		return;
	}
	s->cancel_requested = 1;
	if (h->announced)
		pool_stop_job(s, KILL_CANCEL);  /* it runs: a drop comes late */
	else
		pool_send_drop(s, h->job_id);
}

static void canceled_event(int64_t job_id, int attempts, void *ctx)
{
	publish_job(job_id, *(int64_t *)ctx, JS_CANCELED, attempts);
}

/* engine_cancel_job cancels one job: a queued one at once, a running one
 * is killed (the request is stored first, so a crash during the kill still
 * ends it canceled).  Returns 0, -404, -409 (already terminal) or -500
 * (the store refused). */
int engine_cancel_job(int64_t job_id)
{
	enum job_state state;
	int64_t batch_id;
	struct sbatch *b;
	struct slot *s;
	int done = 0, rc, attempts;

	struct handed *h;

	if (store_job_batch(job_id, &batch_id, &state, &attempts) < 0)
		return -404;
	if (state == JS_QUEUED || state == JS_RUNNING)
		log_event(LOG_INFO, "cancel", batch_id, job_id, "engine: job "
			  "j_%012lld of batch b_%012lld canceled by a client "
			  "(was %s)", (long long)job_id, (long long)batch_id,
			  job_state_name(state));
	if (state == JS_QUEUED && (h = held_job(job_id, &s))) {
		/* Stored first, so a restart does not run it again. */
		if (store_job_cancel_req(job_id) < 0)
			return -500;
		cancel_held(s, h);
		return 0;
	}
	if (state == JS_RUNNING) {
		if (store_job_cancel_req(job_id) < 0)
			return -500;
		s = slot_of_job(job_id);
		if (s)
			pool_stop_job(s, KILL_CANCEL);
		return 0;
	}
	if (state != JS_QUEUED)
		return -409;
	forget_backoffs(batch_id, job_id);
	rc = store_job_cancel_queued(job_id, batch_id, now_us(), &done);
	if (rc < 0)
		return -500;
	b = sched_find(batch_id);
	if (b && rc == 0)
		sched_drop_queued(b, 1);
	if (rc == 0)
		publish_job(job_id, batch_id, JS_CANCELED, attempts);
	settle_batch(b, batch_id, done);
	return 0;
}

/* cancel_batch cancels the queued jobs of a batch at once and, with
 * kill_running, kills its running ones (a halt "soon" lets them finish).
 * announce: publish the batch even when no queued job was canceled (a
 * halt changed it).  Returns 0, -404, -409 or -500. */
static int cancel_batch(int64_t batch_id, int kill_running, int announce)
{
	struct batch_info info;
	struct sbatch *b;
	struct slot *s;
	int canceled = 0, done = 0, i;

	int64_t *keep = NULL;
	size_t nkeep = 0;
	int j, rc;

	if (store_batch_info(batch_id, &info) < 0)
		return -404;
	if (info.queued + info.running == 0)
		return -409;
	forget_backoffs(batch_id, 0);
	/* Jobs workers hold in groups stay queued here: the worker says
	 * whether each one was dropped or had started. */
	if (held_count) {
		keep = malloc(held_count * sizeof(*keep));
		if (!keep)
			return -500;
		for (i = 0; (s = pool_slot(i)); i++)
			for (j = 0; j < s->group_len; j++) {
				struct handed *h = &s->group[s->group_pos + j];

				if (h->batch_id == batch_id && !h->running &&
				    nkeep < held_count)
					keep[nkeep++] = h->job_id;
			}
	}
	rc = store_batch_cancel_except(batch_id, now_us(), &canceled, &done,
				       canceled_event, &batch_id, keep, nkeep);
	free(keep);
	if (rc < 0)
		return -500;
	b = sched_find(batch_id);
	if (b) {
		sched_drop_queued(b, canceled);
		sched_cancel(b);
	}
	for (i = 0; (s = pool_slot(i)); i++) {
		for (j = 0; j < s->group_len; j++) {
			struct handed *h = &s->group[s->group_pos + j];

			if (h->batch_id == batch_id && !h->running &&
			    (kill_running || !h->announced))
				cancel_held(s, h);
		}
		if (kill_running && pool_job_started(s) &&
		    s->batch_id == batch_id && s->pid > 0)
			pool_stop_job(s, KILL_CANCEL);
	}
	if ((canceled || announce) && !done)
		publish_batch(batch_id);        /* its counts changed */
	settle_batch(b, batch_id, done);
	return 0;
}

/* engine_cancel_batch is a client's cancel: the queued jobs end at once,
 * the running ones are killed, on every node even after a "soon" halt. */
int engine_cancel_batch(int64_t batch_id)
{
	int rc = cancel_batch(batch_id, 1, 0);

	if (rc == 0 && store_batch_halt(batch_id, NULL, 0, 0) < 0)
		return -500;
	if (rc == 0)
		log_event(LOG_INFO, "cancel", batch_id, 0, "engine: batch "
			  "b_%012lld canceled by a client", (long long)batch_id);
	return rc;
}

/* engine_batch_set pauses or resumes a batch (paused 1/0, -1: kept)
 * and/or gives it a new priority or concurrency (STORE_KEEP: kept;
 * concurrency 0: none): stored in the turn's transaction, on this node's
 * schedule at once (a resumed batch starts at the next dispatch, a raised
 * one is picked first, a higher limit fills at once), on the others' at
 * their tick.  Returns 0, -404, or -500 when the write failed. */
int engine_batch_set(int64_t batch_id, int paused, int64_t priority,
		     int64_t concurrency)
{
	struct sbatch *b;
	int rc = store_batch_set(batch_id, paused, priority, concurrency);

	if (rc < 0)
		return -500;
	if (rc > 0)
		return -404;
	if ((b = sched_find(batch_id))) {
		if (paused >= 0)
			sched_set_paused(b, paused);
		if (priority != STORE_KEEP)
			sched_set_priority(b, (int)priority);
		if (concurrency != STORE_KEEP)
			sched_set_concurrency(b, (int)concurrency);
	}
	publish_batch(batch_id);        /* events and long-polls see it */
	return 0;
}

/* engine_cancel_all cancels every unfinished batch, as committed and in
 * this turn, as engine_cancel_batch does one (POST /v1/batches/cancel).
 * The ids come from the store, not the schedule: with several nodes a
 * batch whose jobs all run elsewhere is on no schedule here.  Returns how
 * many were canceled (their ids appended to ids when not NULL), or -500. */
int engine_cancel_all(json_t *ids)
{
	int64_t after = -1, id;
	json_t *page, *item;
	const char *next, *s;
	int n = 0, rc;
	size_t i;

	do {
		page = store_batch_list("queued,running", after, 1000);
		if (!page)
			return -500;
		json_array_foreach(json_object_get(page, "items"), i, item) {
			s = json_string_value(json_object_get(item, "id"));
			if (!s || (id = parse_id(s, 'b')) < 0)
				continue;
			rc = engine_cancel_batch(id);
			if (rc == -500) {
				json_decref(page);
				return -500;
			}
			if (rc == 0 && ids)
				json_array_append_new(ids, json_string(s));
			n += rc == 0;
		}
		next = json_string_value(json_object_get(page, "next_cursor"));
		after = next ? strtoll(next + 1, NULL, 10) : -1;
		json_decref(page);
	} while (after > 0);
	return n;
}

/* ---- retries a client asks for (POST .../retry) ---- */

static void rerun_event(int64_t job_id, int attempts, void *ctx)
{
	publish_job(job_id, *(int64_t *)ctx, JS_QUEUED, attempts);
}

/* reopen schedules batch_id after store_jobs_rerun put n of its jobs back
 * in the queue.  It is in this turn's transaction, which this node's
 * claims share (or follow, with PostgreSQL), so it runs at once; other
 * nodes see it at their next look.  A finished batch joins the schedule
 * as a submission does; one still on it takes the store's counts, less
 * the jobs waiting out a backoff here (queued in the store, not yet in
 * the schedule: see sched_delayed), from the first index again. */
static void reopen(int64_t batch_id, int n)
{
	struct sbatch *b = sched_find(batch_id);
	struct batch_info info;
	struct backoff *w;

	if (n <= 0 || store_batch_info(batch_id, &info) < 0)
		return;
	if (!b) {
		sched_add(&info);
		load_policy(sched_find(batch_id), batch_id);
	} else {
		for (w = backoffs; w; w = w->next)
			if (w->batch_id == batch_id)
				info.queued--;
		sched_update(b, &info);
		sched_set_cursor(b, -1);
	}
	publish_batch(batch_id);
}

int engine_retry_job(int64_t job_id)
{
	enum job_state state;
	int64_t batch_id;
	int n;

	if (store_job_batch(job_id, &batch_id, &state, NULL) < 0)
		return -404;
	if (state == JS_QUEUED || state == JS_RUNNING)
		return -409;
	n = store_jobs_rerun(batch_id, job_id, 1u << state, now_us(),
			     rerun_event, &batch_id);
	if (n < 0)
		return -500;
	if (n == 0)
		return -409;    /* changed meanwhile (another node) */
	metrics_retries(n);
	log_event(LOG_INFO, "retry", batch_id, job_id, "engine: job j_%012lld: "
		  "retried by a client", (long long)job_id);
	reopen(batch_id, n);
	return 0;
}

/* engine_retry_batch: only a finished batch, so what "the batch's
 * failures" are cannot change while they are re-queued. */
int engine_retry_batch(int64_t batch_id, unsigned states)
{
	struct batch_info info;
	int n;

	if (store_batch_info(batch_id, &info) < 0)
		return -404;
	if (info.queued + info.running > 0)
		return -409;
	n = store_jobs_rerun(batch_id, 0, states, now_us(), rerun_event,
			     &batch_id);
	if (n < 0)
		return -500;
	if (n > 0)
		metrics_retries(n);
	if (n > 0)
		log_event(LOG_INFO, "retry", batch_id, 0, "engine: batch "
			  "b_%012lld: %d jobs retried by a client",
			  (long long)batch_id, n);
	reopen(batch_id, n);
	return n;
}

/* engine_batch_added puts a durably stored batch on the schedule. */
void engine_batch_added(int64_t batch_id)
{
	struct batch_info info;

	if (store_batch_info(batch_id, &info) < 0)
		return;
	/* Canceled before its commit was acknowledged: nothing to run.  A
	 * resync that committed it (and loaded what is unfinished) already
	 * put it on the schedule. */
	if (info.queued + info.running > 0 && !sched_find(batch_id)) {
		sched_add(&info);
		load_policy(sched_find(batch_id), batch_id);
	}
	publish_batch(batch_id);
}

static void add_loaded(const struct batch_info *b, void *ctx)
{
	sched_add(b);
	load_policy(sched_find(b->id), b->id);
}

/* engine_load schedules the unfinished batches found at start, and keeps
 * a stored pause of dispatch (POST /v1/pause before a restart). */
int engine_load(void)
{
	if (store_dispatch_get() == 1) {
		sched_pause_all(1);
		log_warn("pool: dispatch is paused (stored): no queued job "
			 "starts until POST /v1/resume");
	}
	return store_load_active(add_loaded, NULL);
}

/* engine_resync brings the database back in line with memory after a
 * lost transaction or a failed write (the store is degraded): jobs that
 * workers run now are 'running', every other 'running' job is recovered
 * as after a crash, and the scheduler is rebuilt from what is committed.
 * Returns 0 when that is on disk and writes work again, -1 (try later). */
int engine_resync(void)
{
	struct live_job *live;
	struct slot *s;
	size_t n = 0;
	int i, requeued = 0, interrupted = 0, rc;

	live = calloc(POOL_MAX + held_count, sizeof(*live));
	if (!live)
		return -1;
	for (i = 0; (s = pool_slot(i)); i++) {
		int j;

		if (pool_job_started(s) && s->pid > 0) {
			live[n].job_id = s->job_id;
			live[n].started_at = s->started_at;
			live[n].attempts = s->job_attempts;
			live[n].slot = s->index;
			live[n].pid = s->pid;
			n++;
		}
		/* The jobs held behind it stay queued, out of the recovery. */
		for (j = 0; j < s->group_len && n < POOL_MAX + held_count; j++)
			if (!s->group[s->group_pos + j].announced) {
				live[n].job_id = s->group[s->group_pos + j].job_id;
				live[n].held = 1;
				n++;
			}
	}
	rc = store_resync_begin();
	if (rc == 0)
		rc = store_resync(now_us(), live, n, &requeued, &interrupted);
	free(live);
	if (store_resync_end(rc == 0) < 0)
		return -1;
	while (backoffs) {
		struct backoff *w = backoffs;

		backoffs = w->next;
		free(w);
	}
	sched_clear();
	engine_load();
	/* Jobs held in groups are queued in the database but not to be
	 * claimed: count them as the hand-off did.  A head the worker said it
	 * started is running in the database now (it was live above). */
	for (i = 0; (s = pool_slot(i)); i++) {
		int j;

		for (j = 0; j < s->group_len; j++) {
			struct handed *h = &s->group[s->group_pos + j];
			struct sbatch *b = sched_find(h->batch_id);

			if (h->announced)
				h->running = 1;
			if (b && !h->running)
				sched_started(b);
		}
	}
	log_info("engine: resynced with the database: %d job(s) re-queued, "
		 "%d ended as interrupted", requeued, interrupted);
	publish_reset();
	return 0;
}
