/* store_pg_events.c - the event log the nodes of a PostgreSQL store share.
 *
 * Each commit that changed something writes one jp_events row in the same
 * transaction, keyed by its transaction id, and rings a doorbell (an empty
 * NOTIFY, delivered by PostgreSQL only at commit).  Every node reads the
 * rows in xid order, but only below the oldest transaction still running,
 * so the sequence it reads never gains a row behind its cursor: all nodes
 * deliver the same events in the same order, with the same ids
 * (xid * 2^22 + position in the row).  Long-polls, SSE streams and the
 * scheduler's view of other nodes' batches all ride on it; a poll every
 * --poll-interval covers a lost notification. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "jobpool.h"
#include "store_pg.h"

#define EVENT_BITS 22
#define PUMP_ROWS 200

static uint64_t cursor;         /* the next xid to read */
static int pump_due, listen_fd = -1, listen_gen;
static int64_t next_pump, next_trim;

static int event_item(json_t *items, const struct change *c)
{
	json_t *e;

	if (c->is_batch)
		e = json_pack("[i, I, {s:O, s:O, s:O, s:O*}]", 1,
			      (json_int_t)c->id,
			      "id", json_object_get(c->batch, "id"),
			      "state", json_object_get(c->batch, "state"),
			      "counts", json_object_get(c->batch, "counts"),
			      "halted", json_object_get(c->batch, "halted"));
	else
		e = json_pack("[i, I, I, s, i]", 0, (json_int_t)c->id,
			      (json_int_t)c->batch_id,
			      job_state_name(c->state), c->attempts);
	return e ? json_array_append_new(items, e) : -1;
}

/* pg_event_row writes n changes as the open transaction's log row and
 * rings the doorbell (PostgreSQL sends it at the commit). */
int pg_event_row(const struct change *c, size_t n)
{
	struct pgp p = { 0 };
	json_t *items = json_array();
	char *body = NULL;
	size_t i;
	int rc = -1;

	if (!items)
		return -1;
	for (i = 0; i < n && i < (1u << EVENT_BITS); i++)
		if (event_item(items, &c[i]) < 0)
			goto out;
	if (!(body = json_dumps(items, JSON_COMPACT |
				JSON_REAL_PRECISION(15))))
		goto out;
	pgp_i64(&p, pg_node_id);
	pgp_i64(&p, now_us());
	pgp_txt(&p, body);
	rc = pg_step(P_EVENT_ADD, &p) < 0 ? -1 : 0;
	pump_due = 1;   /* this node's own events come back through the log */
out:
	free(body);
	json_decref(items);
	return rc;
}

int pg_events_append(const struct change *c, size_t n)
{
	if (pg_begin() < 0)
		return -1;
	return pg_event_row(c, n);
}

/* listen subscribes the loop's connection to the doorbell and watches its
 * socket, again after a reconnect (a new socket).
 *
 * The loop watches a duplicate of libpq's socket, which this file owns and
 * closes.  libpq closes its own descriptor whenever the connection drops
 * (a reset, a server gone), and the number is then free for the next
 * worker channel: a loop_del by that number unhooked the worker's channel
 * instead, its "done" was never read and its job stayed running for good.
 * The duplicate is dropped as soon as the connection it watches is not
 * the current healthy one (else its EOF would wake the loop forever). */
static void unlisten(void)
{
	if (listen_fd >= 0) {
		loop_del(listen_fd);
		close(listen_fd);
	}
	listen_fd = -1;
	listen_gen = 0;
}

static void on_socket(int fd, uint32_t events, void *ctx)
{
	PGnotify *n;

	if (listen_fd >= 0 && (listen_gen != pg_generation ||
			       (events & (EPOLLHUP | EPOLLERR)) ||
			       PQstatus(pg_conn) != CONNECTION_OK)) {
		unlisten();
		return;
	}
	if (PQstatus(pg_conn) != CONNECTION_OK)
		return;
	PQconsumeInput(pg_conn);
	while ((n = PQnotifies(pg_conn))) {
		PQfreemem(n);
		pump_due = 1;
	}
	if (PQstatus(pg_conn) != CONNECTION_OK)
		unlisten();
}

static void listen_again(void)
{
	int fd = PQsocket(pg_conn);

	/* again after each reconnect, and outside a transaction, whose
	 * rollback would undo it */
	if (listen_gen == pg_generation || fd < 0 || store_dirty() ||
	    PQstatus(pg_conn) != CONNECTION_OK)
		return;
	unlisten();
	if (pg_exec("LISTEN jp_events") < 0)
		return;
	fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return;
	if (loop_add(fd, EPOLLIN, on_socket, NULL) < 0) {
		loop_del(fd);
		close(fd);
		return;
	}
	listen_fd = fd;
	listen_gen = pg_generation;
	pump_due = 1;   /* what was missed while not listening */
}

/* pg_events_stop stops watching the socket (at close). */
void pg_events_stop(void)
{
	unlisten();
}

int64_t pg_events_start(void)
{
	PGresult *r = PQexec(pg_conn, "SELECT pg_snapshot_xmin("
			     "pg_current_snapshot())::text");

	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r))
		cursor = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return (int64_t)(cursor << EVENT_BITS);
}

/* deliver turns one logged item into a change for the subscribers. */
static void deliver(json_t *e, int64_t id, const struct store_tick *cb)
{
	struct change c = { 0 };

	c.event_id = id;
	if (json_integer_value(json_array_get(e, 0)) == 1) {
		c.is_batch = 1;
		c.id = c.batch_id = json_integer_value(json_array_get(e, 1));
		c.batch = json_array_get(e, 2);
		if (!json_is_object(c.batch))
			return;
	} else {
		c.id = json_integer_value(json_array_get(e, 1));
		c.batch_id = json_integer_value(json_array_get(e, 2));
		c.state = job_state_parse(json_string_value(json_array_get(e,
									3)));
		c.attempts = (int)json_integer_value(json_array_get(e, 4));
		if ((int)c.state < 0)
			return;
	}
	cb->event(&c, cb->ctx);
}

/* pump reads the log past the cursor.  Returns whether another node wrote
 * any of it (the scheduler should look at the store again), or -1. */
static int pump(const struct store_tick *cb)
{
	struct pgp p = { 0 };
	char num[24];
	PGresult *r;
	int i, n, others = 0;

	snprintf(num, sizeof(num), "%llu", (unsigned long long)cursor);
	pgp_txt(&p, num);
	pgp_i64(&p, PUMP_ROWS);
	if (!(r = pg_run(P_EVENTS_READ, &p)))
		return -1;
	n = PQntuples(r);
	for (i = 0; i < n; i++) {
		uint64_t xid = strtoull(PQgetvalue(r, i, 0), NULL, 10);
		json_t *items = json_loads(PQgetvalue(r, i, 2), 0, NULL);
		size_t k;

		others |= pg_i64(r, i, 1) != pg_node_id;
		for (k = 0; k < json_array_size(items); k++)
			deliver(json_array_get(items, k),
				(int64_t)((xid << EVENT_BITS) + k), cb);
		json_decref(items);
		cursor = xid + 1;
	}
	PQclear(r);
	pump_due = n == PUMP_ROWS;
	return others;
}

/* pg_events_tick delivers the log's new events: at once after a doorbell
 * or this node's own commit, else every --poll-interval. */
int pg_events_tick(int64_t mono, const struct store_tick *cb)
{
	struct pgp p = { 0 };
	int others = 0;

	listen_again();
	on_socket(listen_fd, 0, NULL);
	if ((pump_due || mono >= next_pump) && cb && cb->event) {
		next_pump = mono + cfg.poll_interval_us;
		others = pump(cb);
	}
	if (mono >= next_trim) {
		/* An hour of events is kept for streams to resume from. */
		next_trim = mono + 10000000;
		pgp_i64(&p, now_us() - 3600LL * 1000000);
		pg_step(P_EVENTS_TRIM, &p);
	}
	return others > 0;
}
