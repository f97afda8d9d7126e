/* store_ops.c - the store_* names, each forwarded to the backend chosen by
 * store_open (see store_ops.h). */
#include <string.h>

#include "jobpool.h"
#include "store_ops.h"

static const struct store_ops *store_be = &sqlite_store_ops;

/* store_is_url tells whether a --db value names a PostgreSQL database
 * rather than a SQLite file. */
int store_is_url(const char *db)
{
	return strncmp(db, "postgres://", 11) == 0 ||
	       strncmp(db, "postgresql://", 13) == 0;
}

int store_open(const char *path)
{
	store_be = &sqlite_store_ops;
	if (store_is_url(path)) {
#ifdef HAVE_LIBPQ
		store_be = &pg_store_ops;
#else
		log_warn("store: this jobpoold was built without PostgreSQL "
			 "(libpq)");
		return -1;
#endif
	}
	return store_be->open(path);
}

int store_tick(int64_t now, const struct store_tick *cb)
{
	return store_be->tick ? store_be->tick(now, cb) : 0;
}

int store_dispatch_after_commit(void)
{
	return store_be->dispatch_after_commit;
}

int store_events_append(const struct change *c, size_t n)
{
	return store_be->events_append ? store_be->events_append(c, n) : -1;
}

int store_jobs_release(const int64_t *ids, size_t n)
{
	return store_be->jobs_release ? store_be->jobs_release(ids, n) : 0;
}

void store_cluster_stats(int64_t *stale, int64_t *rescued)
{
	*stale = *rescued = 0;
	if (store_be->cluster_stats)
		store_be->cluster_stats(stale, rescued);
}

int64_t store_events_start(void)
{
	return store_be->events_start ? store_be->events_start() : 0;
}

json_t *store_nodes_json(void)
{
	return store_be->nodes_json ? store_be->nodes_json() : NULL;
}

const char *store_backend(void)
{
	return store_be->name;
}

void store_close(void)
{
	store_be->close();
}

int store_flush(void)
{
	return store_be->flush();
}

int store_dirty(void)
{
	return store_be->dirty();
}

int store_recover(int64_t now, int *requeued, int *interrupted,
		void (*fn)(int64_t job_id, void *ctx), void *ctx)
{
	return store_be->recover(now, requeued, interrupted, fn, ctx);
}

int store_degraded(void)
{
	return store_be->degraded();
}

void store_diverged(void)
{
	store_be->diverged();
}

void store_set_rollback_hook(void (*fn)(void))
{
	store_be->set_rollback_hook(fn);
}

int store_resync_begin(void)
{
	return store_be->resync_begin();
}

int store_resync(int64_t now, const struct live_job *live, size_t n,
		int *requeued, int *interrupted)
{
	return store_be->resync(now, live, n, requeued, interrupted);
}

int store_resync_end(int ok)
{
	return store_be->resync_end(ok);
}

int store_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		void *ctx)
{
	return store_be->load_active(fn, ctx);
}

int store_batch_insert(const json_t *req, int64_t now, const char *key,
		const char *hash, int64_t *id, json_t **job_ids)
{
	return store_be->batch_insert(req, now, key, hash, id, job_ids);
}

int store_idem_get(const char *key, int64_t since, char *hash,
		int64_t *batch_id)
{
	return store_be->idem_get(key, since, hash, batch_id);
}

json_t *store_job_ids(int64_t batch_id)
{
	return store_be->job_ids(batch_id);
}

int store_purge_step(int64_t cutoff, int64_t key_cutoff, int max)
{
	return store_be->purge_step(cutoff, key_cutoff, max);
}

int64_t store_size_bytes(void)
{
	return store_be->size_bytes();
}

int store_job_counts(int64_t *counts)
{
	return store_be->job_counts(counts);
}

int store_full(void)
{
	return store_be->full();
}

int store_batch_info(int64_t id, struct batch_info *b)
{
	return store_be->batch_info(id, b);
}

json_t *store_batch_json(int64_t id)
{
	return store_be->batch_json(id);
}

json_t *store_batch_json_pending(int64_t id)
{
	return store_be->batch_json_pending(id);
}

json_t *store_job_json(int64_t id)
{
	return store_be->job_json(id);
}

int store_job_batch(int64_t job_id, int64_t *batch_id, enum job_state *st,
		int *attempts)
{
	return store_be->job_batch(job_id, batch_id, st, attempts);
}

json_t *store_batch_list(const char *state, int64_t after, int limit)
{
	return store_be->batch_list(state, after, limit);
}

json_t *store_job_list(int64_t batch_id, const char *state, int64_t after,
		int limit)
{
	return store_be->job_list(batch_id, state, after, limit);
}

int store_jobs_peek(int64_t batch_id, int64_t now, int any_due,
		int64_t after_idx, int limit, struct claim *out)
{
	return store_be->jobs_peek(batch_id, now, any_due, after_idx, limit,
		out);
}

int store_job_start(const struct claim *c, int slot, pid_t pid,
		int64_t started_at)
{
	return store_be->job_start(c, slot, pid, started_at);
}

int store_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		int any_due, struct claim *c)
{
	return store_be->job_claim(batch_id, slot, pid, now, any_due, c);
}

int store_jobs_done(int64_t batch_id, const struct group_done *d, int n,
		int slot, pid_t pid, int *batch_done)
{
	return store_be->jobs_done(batch_id, d, n, slot, pid, batch_done);
}

int store_job_finish(int64_t job_id, int64_t batch_id, const struct outcome *o,
		const struct slot *w, int *batch_done)
{
	return store_be->job_finish(job_id, batch_id, o, w, batch_done);
}

int store_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		int64_t not_before)
{
	return store_be->job_requeue(job_id, batch_id, undo_attempt,
		not_before);
}

int store_job_retry(int64_t job_id, int64_t batch_id, const struct outcome *o,
		const struct slot *w, int64_t not_before)
{
	return store_be->job_retry(job_id, batch_id, o, w, not_before);
}

int store_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
		int *batch_done)
{
	return store_be->job_cancel_queued(job_id, batch_id, now, batch_done);
}

int store_job_cancel_req(int64_t job_id)
{
	return store_be->job_cancel_req(job_id);
}

int store_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx)
{
	return store_be->batch_cancel(batch_id, now, canceled, batch_done, fn,
		ctx);
}

int store_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
		int *batch_done, void (*fn)(int64_t job_id, int attempts,
		void *ctx), void *ctx, const int64_t *keep, size_t nkeep)
{
	return store_be->batch_cancel_except(batch_id, now, canceled,
		batch_done, fn, ctx, keep, nkeep);
}

int store_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		     int64_t now, void (*fn)(int64_t job_id, int attempts,
					     void *ctx), void *ctx)
{
	return store_be->jobs_rerun(batch_id, job_id, states, now, fn, ctx);
}

int64_t store_then_child(int64_t batch_id)
{
	return store_be->then_child(batch_id);
}

int store_batch_delete(int64_t batch_id)
{
	return store_be->batch_delete(batch_id);
}

int store_batch_policy(int64_t batch_id, struct batch_policy *p)
{
	return store_be->batch_policy(batch_id, p);
}

int store_batch_runs(int64_t batch_id, int64_t *out, int max)
{
	return store_be->batch_runs(batch_id, out, max);
}

int store_batch_halt(int64_t batch_id, const char *reason, int64_t at,
		     int soon)
{
	return store_be->batch_halt(batch_id, reason, at, soon);
}

int store_batch_set(int64_t batch_id, int paused, int64_t priority,
		    int64_t concurrency)
{
	return store_be->batch_set(batch_id, paused, priority, concurrency);
}

int store_dispatch_set(int paused)
{
	return store_be->dispatch_set(paused);
}

int store_dispatch_get(void)
{
	return store_be->dispatch_get();
}

json_t *store_jobs_list(const char *states, int64_t after, int limit)
{
	return store_be->jobs_list(states, after, limit);
}

int store_ping(void)
{
	return store_be->ping();
}

int64_t store_memory_bytes(void)
{
	return store_be->memory_bytes();
}

/* ---- webhooks ---- */

int store_webhook_insert(int64_t batch_id, const json_t *webhook,
			 int generated)
{
	return store_be->webhook_insert(batch_id, webhook, generated);
}

int store_webhook_claim(int64_t now, int64_t lease_until, int max,
			struct delivery *out, int64_t *next_due)
{
	return store_be->webhook_claim(now, lease_until, max, out, next_due);
}

int store_webhook_body(int64_t id, const char *body)
{
	return store_be->webhook_body(id, body);
}

int store_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
			 int status, const char *error, int delivered,
			 int64_t next_at)
{
	return store_be->webhook_result(id, n, at, took_us, status, error,
					delivered, next_at);
}

int store_webhook_release(int64_t now)
{
	return store_be->webhook_release(now);
}

json_t *store_webhook_list(int64_t batch_id, const char *state,
			   int64_t after, int limit)
{
	return store_be->webhook_list(batch_id, state, after, limit);
}

json_t *store_webhook_json(int64_t batch_id, int with_secret)
{
	return store_be->webhook_json(batch_id, with_secret);
}
