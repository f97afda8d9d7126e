/* store_pg_webhook.c - the PostgreSQL store's webhook outbox (schema
 * pg/003_webhooks.sql; statements P_WH_* in store_pg.c).
 *
 * As with SQLite the outbox rows are written by triggers, in the
 * transaction that ends a job or settles a batch.  What differs is that
 * several nodes share them: a claim takes rows FOR UPDATE SKIP LOCKED and
 * leases them (next_at past the attempt's timeout, leased_by this node) in
 * the turn's transaction, and deliver.c starts an attempt only once that
 * transaction has committed, so one node at a time sends a delivery.
 */
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store_pg.h"

int pg_webhook_insert(int64_t batch_id, const json_t *w, int generated)
{
	struct pgp p = { 0 };

	pgp_i64(&p, batch_id);
	pgp_txt(&p, json_string_value(json_object_get(w, "url")));
	pgp_txt(&p, json_string_value(json_object_get(w, "secret")));
	pgp_i64(&p, webhook_events(json_object_get(w, "events")));
	pgp_txt(&p, generated ? "true" : "false");
	return pg_step(P_WH_INSERT, &p) < 0 ? -1 : 0;
}

static char *dup_val(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

/* claim_ leases up to max due deliveries into out; returns how many. */
static int claim_(int64_t now, int64_t lease_until, int max,
		  struct delivery *out)
{
	struct pgp p = { 0 };
	struct delivery *d;
	PGresult *r;
	int i, n = 0;

	pgp_i64(&p, now);
	pgp_i64(&p, lease_until);
	pgp_txt(&p, cfg.node_name);
	pgp_i64(&p, max);
	if (!(r = pg_run(P_WH_CLAIM, &p)))
		return -1;
	for (i = 0; i < PQntuples(r) && n < max; i++) {
		d = &out[n];
		memset(d, 0, sizeof(*d));
		d->id = pg_i64(r, i, 0);
		d->batch_id = pg_i64(r, i, 1);
		d->job_id = pg_i64(r, i, 2);
		d->created_at = pg_i64(r, i, 3);
		d->attempts = (int)pg_i64(r, i, 4);
		snprintf(d->event, sizeof(d->event), "%s", PQgetvalue(r, i, 5));
		snprintf(d->msg_id, sizeof(d->msg_id), "%s", PQgetvalue(r, i, 6));
		d->url = dup_val(r, i, 7);
		d->secret = dup_val(r, i, 8);
		d->body = dup_val(r, i, 9);
		if (!d->url || !d->secret) {
			/* out of memory: its lease runs out, then it is due */
			free(d->url);
			free(d->secret);
			free(d->body);
			continue;
		}
		n++;
	}
	PQclear(r);
	return n;
}

/* A poll that finds nothing due writes nothing (no transaction, no
 * commit): the cheap read goes first. */
int pg_webhook_claim(int64_t now, int64_t lease_until, int max,
		     struct delivery *out, int64_t *next_due)
{
	struct pgp p = { 0 };
	PGresult *r;
	int n = 0, any;

	*next_due = 0;
	if (max <= 0 || pg_reconnect() < 0)
		return max <= 0 ? 0 : -1;
	pgp_i64(&p, now);
	if (!(r = pg_run(P_WH_DUE, &p)))
		return -1;
	any = PQntuples(r) > 0;
	PQclear(r);
	if (any) {
		if (pg_op_begin() < 0)
			return -1;
		n = pg_op_end(claim_(now, lease_until, max, out));
		if (n < 0)
			return -1;
	}
	if ((r = pg_run(P_WH_NEXT, NULL))) {
		if (PQntuples(r) && !PQgetisnull(r, 0, 0))
			*next_due = pg_i64(r, 0, 0);
		PQclear(r);
	}
	return n;
}

int pg_webhook_body(int64_t id, const char *body)
{
	struct pgp p = { 0 };

	if (pg_op_begin() < 0)
		return -1;
	pgp_txt(&p, body);
	pgp_i64(&p, id);
	return pg_op_end(pg_step(P_WH_BODY, &p) < 0 ? -1 : 0);
}

static int result_(int64_t id, int n, int64_t at, int64_t took_us,
		   int status, const char *error, int delivered,
		   int64_t next_at)
{
	struct pgp p = { 0 };

	pgp_i64(&p, id);
	pgp_i64(&p, n);
	pgp_i64(&p, at);
	pgp_i64(&p, took_us);
	pgp_opt(&p, status, status > 0);
	pgp_txt(&p, error);
	if (pg_step(P_WH_ATTEMPT, &p) < 0)
		return -1;
	p.n = 0;
	pgp_i64(&p, n);
	pgp_opt(&p, status, status > 0);
	pgp_txt(&p, error);
	pgp_txt(&p, delivered ? "true" : "false");
	pgp_i64(&p, delivered ? 0 : next_at);
	pgp_i64(&p, at + took_us);
	pgp_i64(&p, id);
	if (pg_step(P_WH_RESULT, &p) < 0)
		return -1;
	p.n = 0;
	pgp_i64(&p, id);
	return pg_step(P_WH_ORPHAN, &p) < 0 ? -1 : 0;
}

int pg_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
		      int status, const char *error, int delivered,
		      int64_t next_at)
{
	if (pg_op_begin() < 0)
		return -1;
	return pg_op_end(result_(id, n, at, took_us, status, error, delivered,
				 next_at));
}

int pg_webhook_release(int64_t now)
{
	struct pgp p = { 0 };

	if (pg_op_begin() < 0)
		return -1;
	pgp_i64(&p, now);
	pgp_txt(&p, cfg.node_name);
	return pg_op_end(pg_step(P_WH_RELEASE, &p) < 0 ? -1 : 0);
}

/* attach adds each item's attempts ("history"), read in one statement. */
static void attach(json_t *items, const int64_t *ids, int n)
{
	struct pgp p = { 0 };
	struct arr a = { 0 };
	struct row row;
	PGresult *r;
	char buf[32];
	int i, j = 0;

	for (i = 0; i < n; i++) {
		snprintf(buf, sizeof(buf), "%lld", (long long)ids[i]);
		json_object_set_new(json_array_get(items, (size_t)i), "history",
				    json_array());
		if (arr_add(&a, buf) < 0)
			goto out;
	}
	pgp_txt(&p, arr_end(&a));
	if (!(r = pg_run(P_WH_ATTEMPTS, &p)))
		goto out;
	for (i = 0; i < PQntuples(r); i++) {
		while (j < n && ids[j] != pg_i64(r, i, 0))
			j++;
		if (j == n)
			break;
		pg_row(&row, r, i);
		json_array_append_new(json_object_get(json_array_get(items,
			(size_t)j), "history"), store_attempt_json(&row, 1));
	}
	PQclear(r);
out:
	free(a.p);
}

json_t *pg_webhook_list(int64_t batch_id, const char *state, int64_t after,
			int limit)
{
	struct pgp p = { 0 };
	struct row row;
	PGresult *r;
	json_t *items;
	int64_t *ids;
	int i, n;

	pgp_i64(&p, batch_id);
	pgp_i64(&p, after);
	pgp_i64(&p, limit + 1);
	if (state)
		pgp_txt(&p, state);
	if (!(r = pg_run(state ? P_WH_LIST_STATE : P_WH_LIST, &p)))
		return NULL;
	n = PQntuples(r);
	ids = calloc((size_t)n + 1, sizeof(*ids));
	if (!ids) {
		PQclear(r);
		return NULL;
	}
	items = json_array();
	for (i = 0; i < n && i < limit; i++) {
		pg_row(&row, r, i);
		ids[i] = pg_i64(r, i, 0);
		json_array_append_new(items, store_delivery_json(&row));
	}
	PQclear(r);
	attach(items, ids, i);
	items = json_pack("{s:o, s:o}", "items", items, "next_cursor",
			  n > limit ? json_sprintf("d%lld",
						   (long long)ids[limit - 1]) :
			  json_null());
	free(ids);
	return items;
}

json_t *pg_webhook_json(int64_t batch_id, int with_secret)
{
	struct pgp p = { 0 };
	PGresult *r;
	json_t *j = NULL;

	pgp_i64(&p, batch_id);
	if (!(r = pg_run(P_WH_GET, &p)))
		return NULL;
	if (PQntuples(r)) {
		j = json_pack("{s:s, s:o}", "url", PQgetvalue(r, 0, 0), "events",
			      webhook_events_json(atoi(PQgetvalue(r, 0, 1))));
		if (j && with_secret && PQgetvalue(r, 0, 3)[0] == 't')
			json_object_set_new(j, "secret",
					    json_string(PQgetvalue(r, 0, 2)));
	}
	PQclear(r);
	return j;
}
