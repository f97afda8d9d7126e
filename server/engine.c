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
	if (done) {
		if (b)
			sched_remove(b);
		publish_batch(batch_id);
	}
}

static void finish(struct slot *s, struct outcome *o);

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

/* engine_dispatch gives queued jobs to idle workers until one side runs
 * out.  Called at the end of every loop turn, so a worker freed by a
 * finished job gets its next job in the same turn. */
void engine_dispatch(void)
{
	struct sbatch *b;
	struct slot *s;
	struct claim c;
	int64_t now, mono;
	int rc;

	while (!shutting_down && !store_degraded() && (s = pool_idle()) &&
	       (b = sched_pick())) {
		/* The job's start, on both clocks at once: started_at is
		 * stored, run_ms is measured from the monotonic one. */
		now = now_us();
		mono = mono_us();
		rc = store_job_claim(sched_id(b), s->index, s->pid, now, 0, &c);
		if (rc == 1) {
			/* The scheduler's (monotonic) backoff says a job is
			 * due but the store's (wall-clock) not_before
			 * disagrees: the clock stepped back.  Take the
			 * batch's first queued job anyway. */
			rc = store_job_claim(sched_id(b), s->index, s->pid,
					     now, 1, &c);
		}
		if (rc == 1) {
			/* The counters said queued but the store has none:
			 * trust the store. */
			log_warn("engine: batch %lld has no queued job",
				 (long long)sched_id(b));
			sched_drop_queued(b, 1);
			continue;
		}
		if (rc < 0)
			return;
		sched_started(b);
		publish_job(c.job_id, c.batch_id, JS_RUNNING, c.attempts);
		if (sched_first_start(b))
			publish_batch(c.batch_id);
		s->started_at = now;
		if (strcmp(c.kind, "command") == 0 && !cfg.allow_command) {
			refuse_command(s, &c);
			free(c.args);
			continue;
		}
		metrics_queue_wait(now - c.queued_at);
		pool_send_run(s, &c, mono);
		free(c.args);
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
int64_t engine_tick(int64_t now)
{
	struct backoff **pp = &backoffs, *w;
	int64_t next = 0;
	struct sbatch *b;

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

static void finish(struct slot *s, struct outcome *o)
{
	struct sbatch *b = sched_find(s->batch_id);
	int64_t job_id = s->job_id, batch_id = s->batch_id;
	int done = 0;

	s->jobs_done++;
	metrics_job_run(o->run_us);
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
	pool_job_ended(s);
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

/* job_done records a "done" message from slot s's worker. */
static void job_done(struct slot *s, const json_t *msg)
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
	o.finished_at = now_us();
	o.run_us = mono_us() - s->started_mono;
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
		o.error = "exceeded its timeout_s and was killed";
	if (s->is_command)
		o.output = output = captured_output(s, json_is_true(
			json_object_get(msg, "truncated")));
	finish(s, &o);
	json_decref(output);
}

/* worker_died settles the job of a worker that exited: killed on
 * purpose (cancel, timeout, shutdown) or crashed on its own. */
static void worker_died(struct slot *s, int status)
{
	struct outcome o = { .exit_code = -1, .user_us = -1, .sys_us = -1,
			     .max_rss_kb = s->rss_kb };
	struct sbatch *b;
	char error[160];

	o.finished_at = now_us();
	o.run_us = mono_us() - s->started_mono;
	if (s->kill == KILL_SHUTDOWN) {
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
		o.error = "exceeded its timeout_s and was killed";
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
		break;
	}
	finish(s, &o);
}

static void timed_out(struct slot *s)
{
	log_info("engine: job %lld timed out on slot %d", (long long)s->job_id,
		 s->index);
	pool_stop_job(s, KILL_TIMEOUT);
}

const struct pool_events engine_pool_events = {
	.job_done = job_done,
	.worker_died = worker_died,
	.timeout = timed_out,
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

	if (store_job_batch(job_id, &batch_id, &state, &attempts) < 0)
		return -404;
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

/* engine_cancel_batch cancels the queued jobs of a batch at once and kills
 * its running ones.  Returns 0, -404, -409 or -500. */
int engine_cancel_batch(int64_t batch_id)
{
	struct batch_info info;
	struct sbatch *b;
	struct slot *s;
	int canceled = 0, done = 0, i;

	if (store_batch_info(batch_id, &info) < 0)
		return -404;
	if (info.queued + info.running == 0)
		return -409;
	forget_backoffs(batch_id, 0);
	if (store_batch_cancel(batch_id, now_us(), &canceled, &done,
			       canceled_event, &batch_id) < 0)
		return -500;
	b = sched_find(batch_id);
	if (b) {
		sched_drop_queued(b, canceled);
		sched_cancel(b);
	}
	for (i = 0; (s = pool_slot(i)); i++)
		if (s->job_id && s->batch_id == batch_id && s->pid > 0)
			pool_stop_job(s, KILL_CANCEL);
	if (canceled && !done)
		publish_batch(batch_id);        /* its counts changed */
	settle_batch(b, batch_id, done);
	return 0;
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
	if (info.queued + info.running > 0 && !sched_find(batch_id))
		sched_add(&info);
	publish_batch(batch_id);
}

static void add_loaded(const struct batch_info *b, void *ctx)
{
	sched_add(b);
}

/* engine_load schedules the unfinished batches found at start. */
int engine_load(void)
{
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

	live = calloc(POOL_MAX, sizeof(*live));
	if (!live)
		return -1;
	for (i = 0; (s = pool_slot(i)); i++)
		if (s->job_id && s->pid > 0 && n < POOL_MAX) {
			live[n].job_id = s->job_id;
			live[n].started_at = s->started_at;
			live[n].attempts = s->job_attempts;
			live[n].slot = s->index;
			live[n].pid = s->pid;
			n++;
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
	log_info("engine: resynced with the database: %d job(s) re-queued, "
		 "%d ended as interrupted", requeued, interrupted);
	publish_reset();
	return 0;
}
