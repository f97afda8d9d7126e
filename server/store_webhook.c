/* store_webhook.c - the SQLite store's webhook outbox (schema
 * 007_webhooks.sql), and the rendering of a delivery both stores share.
 *
 * The outbox rows themselves are written by the schema's triggers, in the
 * transaction that ends a job or a batch; this file stores a batch's
 * webhook, takes due deliveries for an attempt, records attempts and lists
 * them.  Its statements live on the writer connection, prepared on first
 * use (sq_webhook_close finalizes them).
 */
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "store.h"
#include "store_ops.h"

enum {
	W_INSERT, W_DUE, W_LEASE, W_NEXT, W_BODY, W_ATTEMPT, W_RESULT,
	W_ORPHAN_A, W_ORPHAN, W_RELEASE, W_LIST, W_LIST_STATE, W_ATTEMPTS,
	W_GET, W__COUNT
};

static const char *const wsql[W__COUNT] = {
	[W_INSERT] = "INSERT INTO webhooks (batch_id, url, secret, events, "
		"generated) VALUES (?, ?, ?, ?, ?)",
	[W_DUE] = "SELECT id, batch_id, coalesce(job_id, 0), created_at, "
		"attempts, event, msg_id, url, secret, body "
		"FROM webhook_deliveries WHERE state = 'pending' "
		"AND next_at <= ? ORDER BY next_at LIMIT ?",
	[W_LEASE] = "UPDATE webhook_deliveries SET next_at = ?, leased_by = ? "
		"WHERE id = ?",
	[W_NEXT] = "SELECT min(next_at) FROM webhook_deliveries "
		"WHERE state = 'pending'",
	[W_BODY] = "UPDATE webhook_deliveries SET body = ? WHERE id = ? "
		"AND body IS NULL",
	/* The same n again: an attempt whose result died with a crash. */
	[W_ATTEMPT] = "INSERT OR REPLACE INTO webhook_attempts (delivery_id, n, "
		"started_at, duration_us, status, error) "
		"VALUES (?, ?, ?, ?, ?, ?)",
	[W_RESULT] = "UPDATE webhook_deliveries SET attempts = ?1, "
		"leased_by = NULL, last_status = ?2, last_error = ?3, "
		"state = CASE WHEN ?4 THEN 'delivered' WHEN ?5 < 0 THEN 'failed' "
		"ELSE 'pending' END, next_at = max(?5, 0), "
		"delivered_at = CASE WHEN ?4 THEN ?6 END WHERE id = ?7",
	/* settled, and its batch deleted meanwhile: nothing shows it */
	[W_ORPHAN_A] = "DELETE FROM webhook_attempts WHERE delivery_id = ?1 "
		"AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = ?1 "
		"AND d.state != 'pending' AND NOT EXISTS (SELECT 1 FROM batches b "
		"WHERE b.id = d.batch_id))",
	[W_ORPHAN] = "DELETE FROM webhook_deliveries WHERE id = ?1 "
		"AND state != 'pending' AND NOT EXISTS (SELECT 1 FROM batches b "
		"WHERE b.id = webhook_deliveries.batch_id)",
	/* one server per SQLite file: every lease is a dead process's */
	[W_RELEASE] = "UPDATE webhook_deliveries SET next_at = ?, "
		"leased_by = NULL WHERE state = 'pending' "
		"AND leased_by IS NOT NULL",
	[W_LIST] = "SELECT " DELIVERY_COLS " FROM webhook_deliveries "
		"WHERE batch_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
	[W_LIST_STATE] = "SELECT " DELIVERY_COLS " FROM webhook_deliveries "
		"WHERE batch_id = ?1 AND id > ?2 AND state = ?4 "
		"ORDER BY id LIMIT ?3",
	[W_ATTEMPTS] = "SELECT n, started_at, duration_us, status, error "
		"FROM webhook_attempts WHERE delivery_id = ? ORDER BY n",
	[W_GET] = "SELECT url, events, secret, generated FROM webhooks "
		"WHERE batch_id = ?",
};
static sqlite3_stmt *wst[W__COUNT];

/* get resets and returns statement id, prepared on first use; NULL when
 * it cannot be prepared (logged). */
static sqlite3_stmt *get(int id)
{
	if (!wst[id] && sqlite3_prepare_v3(store_db, wsql[id], -1,
					   SQLITE_PREPARE_PERSISTENT, &wst[id],
					   NULL) != SQLITE_OK) {
		log_warn("%s: %s: %s", __func__, sqlite3_errmsg(store_db),
			 wsql[id]);
		return NULL;
	}
	sqlite3_reset(wst[id]);
	sqlite3_clear_bindings(wst[id]);
	return wst[id];
}

void sq_webhook_close(void)
{
	int i;

	for (i = 0; i < W__COUNT; i++) {
		sqlite3_finalize(wst[i]);
		wst[i] = NULL;
	}
}

static int w_null(const struct row *r, int i)
{
	return sqlite3_column_type((sqlite3_stmt *)r->h, i) == SQLITE_NULL;
}

static int64_t w_i64(const struct row *r, int i)
{
	return sqlite3_column_int64((sqlite3_stmt *)r->h, i);
}

static double w_dbl(const struct row *r, int i)
{
	return sqlite3_column_double((sqlite3_stmt *)r->h, i);
}

static const char *w_text(const struct row *r, int i)
{
	return (const char *)sqlite3_column_text((sqlite3_stmt *)r->h, i);
}

static char *dup_col(sqlite3_stmt *s, int i)
{
	const char *t = (const char *)sqlite3_column_text(s, i);

	return t ? strdup(t) : NULL;
}

/* The outbox triggers exist only while some unfinished batch has a
 * webhook.  A trigger on jobs makes SQLite run a trigger program for every
 * job whose state changes, and collect the rows of a multi-row update
 * first: with no webhook anywhere that cost a fifth of the rate of short
 * jobs.  They are created in the transaction that stores such a webhook
 * and dropped in one that ends the last such batch (sq_webhook_idle), so
 * every change they report is seen; a rolled-back creation leaves none. */
static const char outbox_triggers[] =
	"CREATE TRIGGER IF NOT EXISTS webhook_batch_finished AFTER UPDATE OF state ON batches\n"
	"WHEN new.state IN ('succeeded', 'failed', 'canceled')\n"
	" AND old.state NOT IN ('succeeded', 'failed', 'canceled')\n"
	"BEGIN\n"
	" INSERT INTO webhook_deliveries (msg_id, batch_id, event, url, secret,\n"
	" 	created_at, next_at)\n"
	" SELECT 'msg_' || lower(hex(randomblob(12))), new.id, 'batch.finished',\n"
	"        w.url, w.secret, coalesce(new.finished_at, 0), 0\n"
	" FROM webhooks w WHERE w.batch_id = new.id AND (w.events & 1) != 0;\n"
	"END;\n"
	"CREATE TRIGGER IF NOT EXISTS webhook_job_finished AFTER UPDATE OF state ON jobs\n"
	"WHEN new.state IN ('succeeded', 'failed', 'timed_out', 'canceled')\n"
	" AND old.state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled')\n"
	"BEGIN\n"
	" INSERT INTO webhook_deliveries (msg_id, batch_id, job_id, event, url,\n"
	" 	secret, created_at, next_at)\n"
	" SELECT 'msg_' || lower(hex(randomblob(12))), new.batch_id, new.id,\n"
	"        'job.finished', w.url, w.secret, coalesce(new.finished_at, 0), 0\n"
	" FROM webhooks w WHERE w.batch_id = new.batch_id AND (w.events & 2) != 0;\n"
	"END;\n";

/* Whether the outbox triggers may exist: set whenever they are created,
 * cleared once sq_webhook_idle finds or leaves none.  It only spares the
 * end of every batch a look at the schema while no webhook is in use; a
 * creation rolled back leaves it set, which costs one more look. */
static int triggers_maybe = 1;

/* arm_triggers creates the outbox triggers (a no-op when they exist), in
 * the caller's transaction. */
static int arm_triggers(void)
{
	triggers_maybe = 1;
	return store_exec(outbox_triggers);
}

int sq_webhook_insert(int64_t batch_id, const json_t *w, int generated)
{
	sqlite3_stmt *s = get(W_INSERT);

	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, batch_id);
	store_bind_text(s, 2, json_string_value(json_object_get(w, "url")));
	store_bind_text(s, 3, json_string_value(json_object_get(w, "secret")));
	sqlite3_bind_int(s, 4, webhook_events(json_object_get(w, "events")));
	sqlite3_bind_int(s, 5, generated);
	if (store_step(s) < 0)
		return -1;
	return arm_triggers();
}

/* sq_webhook_reopen creates the outbox triggers again when batch_id,
 * opened again by a retry (store_rerun.c), has a webhook: the end of the
 * last open batch with one may have dropped them, and the new ends must
 * be delivered.  In the retry's transaction, as sq_webhook_insert does.
 * Returns 0 or -1. */
int sq_webhook_reopen(int64_t batch_id)
{
	sqlite3_stmt *s = get(W_GET);
	int has;

	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, batch_id);
	has = sqlite3_step(s) == SQLITE_ROW;
	sqlite3_reset(s);
	return has ? arm_triggers() : 0;
}

/* sq_webhook_idle drops the outbox triggers once no unfinished batch has a
 * webhook; called in the transaction that ends a batch.  Best effort: the
 * triggers left in place cost time, never a delivery. */
void sq_webhook_idle(void)
{
	sqlite3_stmt *s;
	int present = 1, open = 1;

	if (!triggers_maybe)
		return;
	if (sqlite3_prepare_v2(store_db, "SELECT EXISTS (SELECT 1 FROM "
			       "sqlite_master WHERE type = 'trigger' AND name = "
			       "'webhook_job_finished'), EXISTS (SELECT 1 "
			       "FROM webhooks w JOIN batches b ON b.id = "
			       "w.batch_id WHERE b.state IN ('queued', "
			       "'running'))", -1, &s, NULL) != SQLITE_OK)
		return;
	if (sqlite3_step(s) == SQLITE_ROW) {
		present = sqlite3_column_int(s, 0);
		open = sqlite3_column_int(s, 1);
	}
	sqlite3_finalize(s);
	if (present && !open &&
	    sqlite3_exec(store_db, "DROP TRIGGER IF EXISTS "
			 "webhook_batch_finished; DROP TRIGGER IF EXISTS "
			 "webhook_job_finished", NULL, NULL, NULL) == SQLITE_OK)
		present = 0;
	if (!present)
		triggers_maybe = 0;
}

/* due reads up to max deliveries due at now into out.  Returns how many,
 * or -1. */
static int due(int64_t now, int max, struct delivery *out)
{
	sqlite3_stmt *s = get(W_DUE);
	struct delivery *d;
	int n = 0;

	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_int(s, 2, max);
	while (n < max && sqlite3_step(s) == SQLITE_ROW) {
		d = &out[n];
		memset(d, 0, sizeof(*d));
		d->id = sqlite3_column_int64(s, 0);
		d->batch_id = sqlite3_column_int64(s, 1);
		d->job_id = sqlite3_column_int64(s, 2);
		d->created_at = sqlite3_column_int64(s, 3);
		d->attempts = sqlite3_column_int(s, 4);
		snprintf(d->event, sizeof(d->event), "%s",
			 (const char *)sqlite3_column_text(s, 5));
		snprintf(d->msg_id, sizeof(d->msg_id), "%s",
			 (const char *)sqlite3_column_text(s, 6));
		d->url = dup_col(s, 7);
		d->secret = dup_col(s, 8);
		d->body = dup_col(s, 9);
		if (!d->url || !d->secret) {
			free(d->url);
			free(d->secret);
			free(d->body);
			break;
		}
		n++;
	}
	sqlite3_reset(s);
	return n;
}

/* The due rows are read before any write, so a poll that finds nothing
 * opens no transaction (and costs no fsync). */
int sq_webhook_claim(int64_t now, int64_t lease_until, int max,
		     struct delivery *out, int64_t *next_due)
{
	sqlite3_stmt *s;
	int n = max > 0 ? due(now, max, out) : 0, i;

	*next_due = 0;
	if (n < 0)
		return -1;
	for (i = 0; i < n; i++) {
		if (store_begin() < 0 || !(s = get(W_LEASE)))
			goto fail;
		sqlite3_bind_int64(s, 1, lease_until);
		store_bind_text(s, 2, cfg.node_name);
		sqlite3_bind_int64(s, 3, out[i].id);
		if (store_step(s) < 0)
			goto fail;
	}
	if ((s = get(W_NEXT))) {
		if (sqlite3_step(s) == SQLITE_ROW &&
		    sqlite3_column_type(s, 0) != SQLITE_NULL)
			*next_due = sqlite3_column_int64(s, 0);
		sqlite3_reset(s);
	}
	return n;
fail:
	while (n > 0) {
		n--;
		free(out[n].url);
		free(out[n].secret);
		free(out[n].body);
	}
	return -1;
}

int sq_webhook_body(int64_t id, const char *body)
{
	sqlite3_stmt *s;

	if (store_begin() < 0 || !(s = get(W_BODY)))
		return -1;
	store_bind_text(s, 1, body);
	sqlite3_bind_int64(s, 2, id);
	return store_step(s);
}

int sq_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
		      int status, const char *error, int delivered,
		      int64_t next_at)
{
	sqlite3_stmt *s;

	if (store_begin() < 0 || !(s = get(W_ATTEMPT)))
		return -1;
	sqlite3_bind_int64(s, 1, id);
	sqlite3_bind_int(s, 2, n);
	sqlite3_bind_int64(s, 3, at);
	sqlite3_bind_int64(s, 4, took_us);
	store_bind_opt(s, 5, status, status > 0);
	store_bind_text(s, 6, error);
	if (store_step(s) < 0 || !(s = get(W_RESULT)))
		return -1;
	sqlite3_bind_int(s, 1, n);
	store_bind_opt(s, 2, status, status > 0);
	store_bind_text(s, 3, error);
	sqlite3_bind_int(s, 4, delivered);
	sqlite3_bind_int64(s, 5, delivered ? 0 : next_at);
	sqlite3_bind_int64(s, 6, at + took_us);
	sqlite3_bind_int64(s, 7, id);
	if (store_step(s) < 0 || !(s = get(W_ORPHAN_A)))
		return -1;
	sqlite3_bind_int64(s, 1, id);
	if (store_step(s) < 0 || !(s = get(W_ORPHAN)))
		return -1;
	sqlite3_bind_int64(s, 1, id);
	return store_step(s);
}

int sq_webhook_release(int64_t now)
{
	sqlite3_stmt *s;

	if (store_begin() < 0 || !(s = get(W_RELEASE)))
		return -1;
	sqlite3_bind_int64(s, 1, now);
	return store_step(s);
}

/* history lists delivery id's attempts (new array). */
static json_t *history(int64_t id)
{
	sqlite3_stmt *s = get(W_ATTEMPTS);
	struct row r = { s, 0, w_null, w_i64, w_dbl, w_text };
	json_t *a = json_array();

	if (!s)
		return a;
	sqlite3_bind_int64(s, 1, id);
	while (sqlite3_step(s) == SQLITE_ROW)
		json_array_append_new(a, store_attempt_json(&r, 0));
	sqlite3_reset(s);
	return a;
}

json_t *sq_webhook_list(int64_t batch_id, const char *state, int64_t after,
			int limit)
{
	sqlite3_stmt *s = get(state ? W_LIST_STATE : W_LIST);
	struct row r = { s, 0, w_null, w_i64, w_dbl, w_text };
	json_t *items, *d;
	int64_t *ids, last = 0;
	int n = 0, i, rc;

	if (!s || !(ids = calloc((size_t)limit + 1, sizeof(*ids))))
		return NULL;
	items = json_array();
	sqlite3_bind_int64(s, 1, batch_id);
	sqlite3_bind_int64(s, 2, after);
	sqlite3_bind_int(s, 3, limit + 1);
	if (state)
		store_bind_text(s, 4, state);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW && n <= limit) {
		ids[n++] = sqlite3_column_int64(s, 0);
		if (n <= limit)
			json_array_append_new(items, store_delivery_json(&r));
	}
	sqlite3_reset(s);
	/* the attempts after the list: one statement at a time */
	for (i = 0; i < n && i < limit; i++) {
		d = json_array_get(items, (size_t)i);
		json_object_set_new(d, "history", history(ids[i]));
		last = ids[i];
	}
	free(ids);
	return json_pack("{s:o, s:o}", "items", items, "next_cursor",
			 n > limit ? json_sprintf("d%lld", (long long)last) :
			 json_null());
}

json_t *sq_webhook_json(int64_t batch_id, int with_secret)
{
	sqlite3_stmt *s = get(W_GET);
	json_t *j = NULL;

	if (!s)
		return NULL;
	sqlite3_bind_int64(s, 1, batch_id);
	if (sqlite3_step(s) == SQLITE_ROW) {
		j = json_pack("{s:s, s:o}", "url",
			      (const char *)sqlite3_column_text(s, 0), "events",
			      webhook_events_json(sqlite3_column_int(s, 1)));
		if (j && with_secret && sqlite3_column_int(s, 3))
			json_object_set_new(j, "secret", json_string(
				(const char *)sqlite3_column_text(s, 2)));
	}
	sqlite3_reset(s);
	return j;
}

/* ---- rendering, shared with the PostgreSQL store ---- */

static json_t *opt_time(const struct row *r, int i)
{
	return r->null(r, i) ? json_null() : json_time(r->i64(r, i));
}

json_t *store_delivery_json(const struct row *r)
{
	const char *state = r->text(r, 5);
	char job[32];

	fmt_id(job, sizeof(job), 'j', r->i64(r, 3));
	return json_pack("{s:s, s:s, s:o, s:s, s:s, s:I, s:o, s:o, s:o, s:o, "
			 "s:o}",
		"id", r->text(r, 1),
		"event", r->text(r, 2),
		"job_id", r->null(r, 3) ? json_null() : json_string(job),
		"url", r->text(r, 4),
		"state", state,
		"attempts", (json_int_t)r->i64(r, 6),
		"created_at", json_time(r->i64(r, 7)),
		/* a pending delivery's next attempt; a lease shows as the
		 * time the attempt under way gives up */
		"next_attempt_at", strcmp(state, "pending") == 0 ?
			json_time(r->i64(r, 8)) : json_null(),
		"last_status", r->null(r, 9) ? json_null() :
			json_integer(r->i64(r, 9)),
		"last_error", r->null(r, 10) ? json_null() :
			json_string(r->text(r, 10)),
		"delivered_at", opt_time(r, 11));
}

json_t *store_attempt_json(const struct row *r, int c)
{
	return json_pack("{s:I, s:o, s:o, s:o, s:o}",
		"attempt", (json_int_t)r->i64(r, c),
		"started_at", json_time(r->i64(r, c + 1)),
		"duration_ms", json_ms(r->i64(r, c + 2)),
		"status", r->null(r, c + 3) ? json_null() :
			json_integer(r->i64(r, c + 3)),
		"error", r->null(r, c + 4) ? json_null() :
			json_string(r->text(r, c + 4)));
}
