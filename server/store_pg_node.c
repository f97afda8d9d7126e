/* store_pg_node.c - the nodes sharing a PostgreSQL store: registry, lease,
 * self-fencing, the reaper, and the periodic look at what other nodes did.
 *
 * Each process start is an incarnation: a jp_nodes row whose id is written
 * on the jobs it runs.  A lease thread renews the row every lease/8 on its
 * own connection (so a busy loop never loses the lease).  The timeline, with
 * the default --node-lease 4s:
 *   t = 0  the last renewal this node sent that the database acknowledged;
 *   t = 3  no acknowledged renewal since: the node fences itself (its
 *          workers are killed, its writes stop) - lease minus one second,
 *          measured on its own monotonic clock from the send time, which is
 *          before the database stamped heartbeat_at;
 *   t > 4  any node's reaper (every 0.5 s) sees heartbeat_at older than the
 *          lease by the database's clock, marks the incarnation dead and
 *          re-queues its running jobs (or ends them, out of attempts or
 *          canceled): within lease + 0.5 s of the death.
 * A dead incarnation's late writes are refused by the fencing token (node
 * id and attempt) on every outcome write.  After a fence the node
 * registers as a new incarnation and goes on. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobpool.h"
#include "store_pg.h"

int64_t pg_node_id;
/* advisory locks (LEASE_LOCK_NS, incarnation) held by lease connections */
#define LEASE_LOCK_NS 7478354

static pthread_t lease_thread;
static int lease_running;
static atomic_int lease_stop;
/* The incarnation the lease thread renews (0: none yet) and the
 * monotonic time, in µs, a renewal that the database acknowledged was
 * sent; lost: the database said this incarnation is dead. */
static _Atomic int64_t lease_id, renewed_mono;
static atomic_int lease_lost, busy_workers, pool_workers;
static int fenced;
static int64_t rescued;         /* jobs this node's reaper took over */
static int64_t next_reap, next_look, next_check, next_dispatch;

static int64_t lease_us(void)
{
	return cfg.node_lease_us;
}

/* renew runs one renewal on c; returns 1 (renewed), 0 (declared dead),
 * -1 (no answer). */
static int renew(PGconn *c, int64_t id)
{
	char v[3][24];
	const char *vals[3] = { v[0], v[1], v[2] };
	PGresult *r;
	int rc = -1;

	snprintf(v[0], sizeof(v[0]), "%lld", (long long)id);
	snprintf(v[1], sizeof(v[1]), "%d", atomic_load(&busy_workers));
	snprintf(v[2], sizeof(v[2]), "%d", atomic_load(&pool_workers));
	r = PQexecParams(c, "UPDATE jp_nodes SET heartbeat_at = now(), "
			 "busy = $2, pool_size = $3 WHERE id = $1 "
			 "AND state = 'alive' RETURNING 1", 3, NULL, vals,
			 NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK)
		rc = PQntuples(r) == 1;
	PQclear(r);
	return rc;
}

static void *lease_main(void *arg)
{
	PGconn *c = NULL;
	PGresult *r = NULL;
	int64_t id, sent, locked = 0, slept, next_connect = 0;
	int rc;

	while (!atomic_load(&lease_stop)) {
		if ((!c || PQstatus(c) != CONNECTION_OK) &&
		    mono_us() >= next_connect) {
			/* a failed try waits a second: each costs a backend */
			next_connect = mono_us() + 1000000;
			if (c)
				PQfinish(c);
			c = NULL;
			locked = 0;
			if (pg_connect_thread(&c, "lease") == 0) {
				/* a lost heartbeat is harmless: no fsync wait */
				PQclear(PQexec(c, "SET synchronous_commit = off"));
			}
		}
		id = atomic_load(&lease_id);
		if (c && id != locked) {
			/* proof of life for pg_gone_namesakes, for as long
			 * as this connection lives */
			char q[96];

			PQclear(PQexec(c, "SELECT pg_advisory_unlock_all()"));
			snprintf(q, sizeof(q), "SELECT 1 WHERE "
				 "pg_try_advisory_lock(%d, %d)", LEASE_LOCK_NS,
				 (int)id);
			if (id <= 0)
				locked = id;
			else if ((r = PQexec(c, q)) &&
				 PQresultStatus(r) == PGRES_TUPLES_OK &&
				 PQntuples(r) == 1)
				locked = id;    /* else: next round */
			if (id > 0)
				PQclear(r);
		}
		sent = mono_us();
		if (c && id > 0) {
			rc = renew(c, id);
			/* for the incarnation it was sent for only: a fence
			 * and a new one may have come meanwhile */
			if (atomic_load(&lease_id) != id)
				rc = -1;
			if (rc == 1) {
				atomic_store(&renewed_mono, sent);
				pool_lease_set(sent + lease_us() - 1000000);
			} else if (rc == 0) {
				atomic_store(&lease_lost, 1);
			}
		}
		/* Every lease/8 (500 ms by default): a database outage of up
		 * to about lease - 1.5 s passes without a fence.  In slices,
		 * so a stop does not wait for it. */
		for (slept = 0; slept < lease_us() / 8 &&
		     !atomic_load(&lease_stop); slept += 50000)
			usleep(50000);
	}
	PQfinish(c);
	return NULL;
}

/* register_node makes this process a new incarnation, on the loop's
 * connection outside any turn. */
static int register_node(void)
{
	struct pgp p = { 0 };
	PGresult *r;

	pgp_txt(&p, cfg.node_name);
	pgp_i64(&p, cfg.started_at ? cfg.started_at : now_us());
	pgp_i64(&p, lease_us() / 1000);
	pgp_i64(&p, cfg.workers);
	if (!(r = pg_run(P_NODE_ADD, &p)))
		return -1;
	pg_node_id = pg_i64(r, 0, 0);
	PQclear(r);
	if (!atomic_load(&pool_workers))
		atomic_store(&pool_workers, cfg.workers);
	atomic_store(&lease_lost, 0);
	atomic_store(&renewed_mono, mono_us());
	pool_lease_set(mono_us() + lease_us() - 1000000);
	atomic_store(&lease_id, pg_node_id);
	log_info("store: node %s joined the cluster as incarnation %lld "
		 "(lease %lld ms)", cfg.node_name, (long long)pg_node_id,
		 (long long)(lease_us() / 1000));
	return 0;
}

int pg_node_start(const char *url)
{
	sigset_t all, old;
	int rc;

	if (pool_lease_init() < 0) {
		log_warn("store: cannot share the lease with the workers");
		return -1;
	}
	if (register_node() < 0)
		return -1;
	atomic_store(&lease_stop, 0);
	/* SIGTERM and SIGCHLD belong to the loop's signalfd: the thread
	 * takes none. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&lease_thread, NULL, lease_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		log_warn("store: cannot start the lease thread");
		return -1;
	}
	lease_running = 1;
	return 0;
}

/* pg_node_stop: a clean stop says so, so nobody waits out the lease (the
 * engine has settled every job by now). */
void pg_node_stop(void)
{
	struct pgp p = { 0 };

	if (lease_running) {
		atomic_store(&lease_stop, 1);
		pthread_join(lease_thread, NULL);
		lease_running = 0;
	}
	if (pg_node_id > 0 && !fenced) {
		pgp_i64(&p, pg_node_id);
		pg_step(P_NODE_GONE, &p);
	}
}

int pg_node_fenced(void)
{
	return fenced;
}

/* id_list writes ids as a PostgreSQL array literal into buf. */
static const char *id_list(char *buf, size_t size, const int64_t *ids, int n)
{
	size_t len = 1;
	int i;

	buf[0] = '{';
	for (i = 0; i < n && len + 24 < size; i++)
		len += (size_t)snprintf(buf + len, size - len, "%s%lld",
					i ? "," : "", (long long)ids[i]);
	snprintf(buf + len, size - len, "}");
	return buf;
}

int pg_take_over(const int64_t *ids, int n, int64_t now, const char *why,
		 const struct store_tick *cb,
		 void (*fn)(int64_t job_id, void *ctx), void *ctx,
		 int *requeued, int *ended)
{
	struct pgp p = { 0 };
	char arr[16 * 24 + 4];
	PGresult *r;
	int i, rc;

	id_list(arr, sizeof(arr), ids, n);
	pgp_txt(&p, arr);
	if (pg_step(P_MARK_DEAD, &p) < 0)
		return -1;
	/* A dead command job's processes may live on, on this host. */
	if (fn) {
		if (!(r = pg_run(P_COMMAND_JOBS, &p)))
			return -1;
		for (i = 0; i < PQntuples(r); i++)
			fn(pg_i64(r, i, 0), ctx);
		PQclear(r);
	}
	pgp_i64(&p, now);
	pgp_txt(&p, why);
	pgp_txt(&p, "true");
	if (!(r = pg_run(P_REAP, &p)))
		return -1;
	rc = pg_lost_rows(r, now, cb, requeued, ended);
	PQclear(r);
	/* jobs they held for groups, never started: claimable again */
	p.n = 2;
	if (rc == 0 && (r = pg_run(P_UNHOLD_DEAD, &p))) {
		rc = pg_moved_rows(r, JS_QUEUED, now, cb, requeued, ended);
		PQclear(r);
	} else {
		rc = -1;
	}
	rescued += *requeued + *ended;
	return rc;
}

/* pg_gone_namesakes finds earlier incarnations of this node's name whose
 * process is gone: each lease connection holds an advisory lock on its
 * incarnation for life, and PostgreSQL frees it when the connection dies
 * (a killed process's socket closes at once).  Tried for up to a second,
 * so a backend still noticing the close is waited for; an incarnation
 * whose lock stays held is alive: the name is taken twice. */
int pg_gone_namesakes(int64_t *ids, int max)
{
	struct pgp p = { 0 };
	PGresult *r;
	int64_t cand[16];
	char q[96];
	int i, n, found = 0, tries;

	pgp_txt(&p, cfg.node_name);
	pgp_i64(&p, pg_node_id);
	if (!(r = pg_run(P_NAMESAKES, &p)))
		return -1;
	n = PQntuples(r) < 16 ? PQntuples(r) : 16;
	for (i = 0; i < n; i++)
		cand[i] = pg_i64(r, i, 0);
	PQclear(r);
	for (i = 0; i < n && found < max; i++) {
		for (tries = 0; tries < 10; tries++) {
			snprintf(q, sizeof(q), "SELECT 1 WHERE pg_try_advisory_lock"
				 "(%d, %d)", LEASE_LOCK_NS, (int)cand[i]);
			r = PQexec(pg_conn, q);
			if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r))
				break;
			PQclear(r);
			r = NULL;
			usleep(100000);
		}
		if (!r) {
			log_warn("store: another jobpoold named %s is alive "
				 "(incarnation %lld); node names must be unique",
				 cfg.node_name, (long long)cand[i]);
			continue;
		}
		PQclear(r);
		snprintf(q, sizeof(q), "SELECT pg_advisory_unlock(%d, %d)",
			 LEASE_LOCK_NS, (int)cand[i]);
		PQclear(PQexec(pg_conn, q));
		ids[found++] = cand[i];
	}
	return found;
}

/* reap re-queues (or ends) the running jobs of incarnations whose lease
 * ran out, one node at a time cluster-wide.  Only a node whose own lease
 * is fresh reaps: one that cannot renew may be the one cut off. */
static int reap(int64_t now, const struct store_tick *cb)
{
	PGresult *r;
	int64_t ids[16];
	int i, n, requeued = 0, ended = 0, rc;

	if (mono_us() - atomic_load(&renewed_mono) > 1500000)
		return 0;
	if (pg_begin() < 0)
		return -1;
	if (!(r = pg_run(P_REAP_LOCK, NULL)))
		return -1;
	n = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
	PQclear(r);
	if (!n || !(r = pg_run(P_DEAD, NULL)))
		return n ? -1 : 0;
	PQclear(r);
	/* every incarnation not alive that still owns rows: those just
	 * declared dead, and any whose late commit landed after that */
	if (!(r = pg_run(P_ORPHANS, NULL)))
		return -1;
	n = PQntuples(r) < 16 ? PQntuples(r) : 16;
	for (i = 0; i < n; i++)
		ids[i] = pg_i64(r, i, 0);
	PQclear(r);
	if (n == 0)
		return 0;
	rc = pg_take_over(ids, n, now, "node lost", cb, NULL, NULL,
			  &requeued, &ended);
	for (i = 0; i < n; i++)
		log_warn("store: node incarnation %lld missed its lease; "
			 "%d of its jobs re-queued, %d ended", (long long)ids[i],
			 requeued, ended);
	return rc;
}

/* look reports what the cluster changed that this node's memory does not
 * know: unfinished batches (new ones, or other nodes' claims), cancels of
 * jobs this node runs, and batches to settle or mark started. */
static int look(const struct store_tick *cb)
{
	struct pgp p = { 0 };
	struct batch_info b;
	PGresult *r;
	int i, n;

	if (!(r = pg_run(P_ACTIVE, NULL)))
		return -1;
	n = PQntuples(r);
	for (i = 0; i < n; i++) {
		b.id = pg_i64(r, i, 0);
		b.priority = (int)pg_i64(r, i, 1);
		b.concurrency = (int)pg_i64(r, i, 2);
		b.queued = (int)pg_i64(r, i, 3);
		b.running = (int)pg_i64(r, i, 4);
		b.cancel_req = (int)pg_i64(r, i, 5);
		b.started = (int)pg_i64(r, i, 6);
		b.paused = (int)pg_i64(r, i, 7);
		/* another node's PATCH of its concurrency */
		pg_conc_note(b.id, b.concurrency);
		if (b.queued == 0 && b.running == 0)
			pg_settle_later(b.id);
		else if (b.started && pg_i64(r, i, 8) && pg_begin() == 0) {
			p.n = 0;
			pgp_i64(&p, b.id);
			pgp_i64(&p, now_us());
			pg_step(P_BATCH_STARTED, &p);
		}
		if (cb && cb->batch)
			cb->batch(&b, cb->ctx);
	}
	PQclear(r);
	/* The stored pause of dispatch, which another node may have set:
	 * every --poll-interval, not at each look a commit rings for. */
	if (cb && cb->dispatch && mono_us() >= next_dispatch) {
		next_dispatch = mono_us() + cfg.poll_interval_us;
		if ((i = pg_dispatch_get()) >= 0)
			cb->dispatch(i, cb->ctx);
	}
	p.n = 0;
	pgp_i64(&p, pg_node_id);
	if (!(r = pg_run(P_MY_CANCELS, &p)))
		return -1;
	n = PQntuples(r);
	for (i = 0; i < n && cb && cb->cancel; i++)
		cb->cancel(pg_i64(r, i, 0), cb->ctx);
	PQclear(r);
	return 0;
}

/* pg_tick runs on every loop turn: the fence check is two atomic loads;
 * the rest runs at its own pace. */
int pg_tick(int64_t now, const struct store_tick *cb)
{
	int64_t mono = mono_us();
	int64_t quiet = mono - atomic_load(&renewed_mono);

	if (cb) {
		atomic_store(&busy_workers, cb->busy);
		atomic_store(&pool_workers, cb->pool_size);
	}
	if (!fenced && (atomic_load(&lease_lost) ||
			quiet > lease_us() - 1000000)) {
		fenced = 1;
		log_warn("store: node %s lost its lease (%s); its jobs are "
			 "stopped and left to the other nodes",
			 cfg.node_name, atomic_load(&lease_lost) ?
			 "the others declared it dead" :
			 "no renewal acknowledged in time");
		/* The old incarnation is not renewed again: it must run out,
		 * so the others take its jobs over. */
		atomic_store(&lease_id, 0);
		/* No deadline for the workers while fenced: they are killed
		 * now and get no job until a new incarnation sets one, and a
		 * stale one made every replacement exit at once, in a loop of
		 * spawns. */
		pool_lease_set(0);
		pg_fence_writes(1);
		if (cb && cb->fence)
			cb->fence(cb->ctx);
		return 0;
	}
	if (fenced) {
		/* Back as a new incarnation once the database answers; the
		 * engine's resync then puts memory in line. */
		if (pg_reconnect() < 0 || register_node() < 0)
			return 0;
		fenced = 0;
		pg_fence_writes(0);
		return 0;
	}
	if (mono >= next_reap) {
		next_reap = mono + 500000;
		reap(now, cb);
	}
	/* Another node's work: look soon, but at most every 20 ms; with many
	 * busy nodes, each commit of each rings every other. */
	if (pg_events_tick(mono, cb) && next_look > mono + 20000)
		next_look = mono + 20000;
	if (mono >= next_look) {
		next_look = mono + cfg.poll_interval_us;
		look(cb);
	}
	if (mono >= next_check) {
		next_check = mono + 5000000;
		pg_check_own(now, cb);
	}
	/* batches look() found ended: settle now, not at the next commit */
	if (!store_dirty())
		store_flush();
	return 0;
}

void pg_cluster_stats(int64_t *stale, int64_t *rescued_)
{
	*stale = pg_stale_outcomes();
	*rescued_ = rescued;
}

json_t *pg_nodes_json(void)
{
	struct pgp p = { 0 };
	PGresult *r;
	json_t *items;
	int i, n;

	pgp_i64(&p, pg_node_id);
	if (!(r = pg_run(P_NODES, &p)))
		return NULL;
	items = json_array();
	n = PQntuples(r);
	for (i = 0; i < n; i++)
		json_array_append_new(items, json_pack("{s:s, s:b, s:o, s:o, "
			"s:I, s:I}", "name", PQgetvalue(r, i, 0),
			"self", strcmp(PQgetvalue(r, i, 1), "t") == 0,
			"started_at", json_time(pg_i64(r, i, 2)),
			"last_heartbeat_at", json_time(pg_i64(r, i, 3)),
			"pool_size", (json_int_t)pg_i64(r, i, 4),
			"busy_workers", (json_int_t)pg_i64(r, i, 5)));
	PQclear(r);
	return items;
}
