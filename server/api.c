/* api.c - the routing table and one function per endpoint. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

extern const char *const openapi_yaml[];
extern const char *const dashboard_html[];
extern const char *const dashboard_js[];
extern const char *const dashboard_css[];

/* The dashboard's script and style come from its own origin as files, never
 * inline, so an injected <script> or style="" in a job's name or output
 * cannot run or restyle the page. */
#define DASHBOARD_CSP "default-src 'self'; script-src 'self'; " \
	"style-src 'self'; img-src 'self' data:; connect-src 'self'; " \
	"base-uri 'none'; frame-ancestors 'none'; form-action 'none'"

/* ---- query parameters ---- */

struct query_check {
	const char *const *allowed;
	const char *bad;
};

static enum MHD_Result check_key(void *cls, enum MHD_ValueKind kind,
				 const char *key, const char *value)
{
	struct query_check *q = cls;
	size_t i;

	for (i = 0; q->allowed[i]; i++)
		if (strcmp(q->allowed[i], key) == 0)
			return MHD_YES;
	q->bad = key;
	return MHD_NO;
}

/* unknown_param returns the name of a query parameter the endpoint does not
 * take, or NULL: a typo such as ?limt=5 must not pass silently. */
static const char *unknown_param(struct request *r,
				 const char *const *allowed)
{
	struct query_check q = { allowed, NULL };

	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, check_key,
				  &q);
	return q.bad;
}

static const char *param(struct request *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND,
					   name);
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (!s || !*s || strspn(s, "0123456789") != strlen(s) ||
	    strlen(s) > 12)
		return -1;
	v = strtol(s, &end, 10);
	if (v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* parse_count reads a query integer such as ?limit.  An integral decimal
 * ("5.0") counts as that integer, as JSON Schema's "integer" and our JSON
 * bodies have it. */
static int parse_count(const char *s, long lo, long hi, long *out)
{
	char digits[16];
	size_t n = strspn(s, "0123456789");

	if (n == 0 || n >= sizeof(digits))
		return -1;
	if (s[n] == '.' && strspn(s + n + 1, "0") != strlen(s + n + 1))
		return -1;
	if (s[n] && s[n] != '.')
		return -1;
	memcpy(digits, s, n);
	digits[n] = 0;
	return parse_long(digits, lo, hi, out);
}

/* The wait parameter of long-polls: seconds, 0..WAIT_MAX_S, decimals
 * allowed.  An hour, so a script waits for a long batch with one request
 * (a waiting request holds no thread, only its connection). */
#define WAIT_MAX_S 3600
static int parse_wait(struct request *r, double *out)
{
	const char *s = param(r, "wait");
	char *end;
	double v;

	*out = 0;
	if (!s)
		return 0;
	v = strtod(s, &end);
	if (!*s || *end || !isfinite(v) || v < 0 || v > WAIT_MAX_S)
		return -1;
	*out = v;
	return 0;
}

struct page {
	const char *state;
	long limit;
	int64_t after;
};

/* parse_page reads state, limit and after; answers 400 itself and returns
 * -1 when one is bad.  Cursors are the key of the last item, prefixed with
 * the letter of its list so a batch cursor is never taken for a job one. */
/* states_ok checks a state filter: one state or a comma list of them
 * ("running,queued"), each known to ok. */
static int states_ok(const char *list, int (*ok)(const char *))
{
	char one[32];
	size_t n;

	for (;;) {
		n = strcspn(list, ",");
		if (n == 0 || n >= sizeof(one))
			return 0;
		memcpy(one, list, n);
		one[n] = 0;
		if (!ok(one))
			return 0;
		if (!list[n])
			return 1;
		list += n + 1;
	}
}

static int parse_page(struct request *r, char cursor_prefix,
		      int (*state_ok)(const char *), struct page *p,
		      enum MHD_Result *rc)
{
	static const char *const allowed[] = { "state", "limit", "after",
					       NULL };
	const char *s, *bad = unknown_param(r, allowed);
	long v;

	p->state = param(r, "state");
	p->limit = 100;
	p->after = -1;          /* before the first item */
	if (bad) {
		char path[80];

		snprintf(path, sizeof(path), "?%.64s", bad);
		*rc = http_invalid(r, path, "is not a parameter of this endpoint");
		return -1;
	}
	if (p->state && !states_ok(p->state, state_ok)) {
		*rc = http_invalid(r, "?state", "is not a known state or a "
				   "comma list of them");
		return -1;
	}
	s = param(r, "limit");
	if (s && parse_count(s, 1, 1000, &p->limit) < 0) {
		*rc = http_invalid(r, "?limit", "must be an integer from 1 to 1000");
		return -1;
	}
	s = param(r, "after");
	if (s && (s[0] != cursor_prefix ||
		  parse_long(s + 1, 0, 999999999999L, &v) < 0)) {
		*rc = http_invalid(r, "?after", "is not a cursor from this list");
		return -1;
	}
	if (s)
		p->after = v;
	return 0;
}

static int job_state_ok(const char *s)
{
	return job_state_parse(s) >= 0;
}

static int terminal(const json_t *obj)
{
	const char *s = json_string_value(json_object_get(obj, "state"));

	return s && strcmp(s, "queued") != 0 && strcmp(s, "running") != 0;
}

/* ---- endpoints ---- */

static json_t *parse_body(struct request *r, enum MHD_Result *rc);

static enum MHD_Result api_healthz(struct request *r)
{
	return http_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result api_readyz(struct request *r)
{
	if (shutting_down)
		return http_problem(r, P_UNAVAILABLE, "the server is shutting down", NULL);
	if (store_degraded())
		return http_problem(r, P_UNAVAILABLE, "a database write failed "
				    "(disk full or I/O error); writes are retried "
				    "every half second", NULL);
	if (store_ping() < 0)
		return http_problem(r, P_UNAVAILABLE, "the database cannot be read", NULL);
	if (!pool_ready())
		return http_problem(r, P_UNAVAILABLE, "no worker is up, or workers die before they are ready (see the log)", NULL);
	return http_json(r, 200, json_pack("{s:s}", "status", "ready"));
}

static enum MHD_Result api_metrics(struct request *r)
{
	char *text = metrics_render();
	enum MHD_Result rc;

	if (!text)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	rc = http_text(r, "text/plain; version=0.0.4; charset=utf-8", text);
	free(text);
	return rc;
}

static enum MHD_Result api_openapi(struct request *r)
{
	return http_text(r, "application/yaml", openapi_yaml[0]);
}

/* dashboard_file answers one of the dashboard's embedded files; no-cache
 * makes a browser revalidate, so a new binary's page is never mixed with
 * the old one's script. */
static enum MHD_Result dashboard_file(struct request *r, const char *type,
				      const char *text)
{
	http_header(r, "X-Content-Type-Options", "nosniff");
	http_header(r, "Cache-Control", "no-cache");
	return http_text(r, type, text);
}

static enum MHD_Result api_dashboard(struct request *r)
{
	http_header(r, "Content-Security-Policy", DASHBOARD_CSP);
	return dashboard_file(r, "text/html; charset=utf-8", dashboard_html[0]);
}

static enum MHD_Result api_dashboard_js(struct request *r)
{
	return dashboard_file(r, "text/javascript; charset=utf-8",
			      dashboard_js[0]);
}

static enum MHD_Result api_dashboard_css(struct request *r)
{
	return dashboard_file(r, "text/css; charset=utf-8", dashboard_css[0]);
}

static int is_json_type(const char *ct)
{
	size_t n = strlen("application/json");

	return ct && strncasecmp(ct, "application/json", n) == 0 &&
	       (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

static int valid_key(const char *k)
{
	size_t n = strlen(k), i;

	if (n < 1 || n > 255)
		return 0;
	for (i = 0; i < n; i++)
		if (k[i] < 0x20 || k[i] > 0x7e)
			return 0;
	return 1;
}

static void retry_after(struct request *r, int seconds)
{
	char v[16];

	snprintf(v, sizeof(v), "%d", seconds);
	http_header(r, "Retry-After", v);
}

/* replay answers a submission whose Idempotency-Key is known: the same
 * body gets the first batch (after the commit that holds it, like any
 * ack), another body a 409.  Returns 0 when the key is new. */
static enum MHD_Result reply_created(struct request *r);
static enum MHD_Result after_commit(struct request *r, api_fn reply);
static enum MHD_Result not_committed(struct request *r, const char *what);

static enum MHD_Result idem_conflict(struct request *r)
{
	if (!r->commit_ok)
		return not_committed(r, "the submission with this key");
	return http_problem(r, P_CONFLICT, "this Idempotency-Key was used "
			    "with a different body", NULL);
}

static int replay(struct request *r, const char *key, const char *hash,
		  enum MHD_Result *rc)
{
	char stored[33];
	int64_t id;
	int found = store_idem_get(key, now_us() - cfg.idempotency_ttl_us,
				   stored, &id);

	if (found < 0) {
		retry_after(r, 5);
		*rc = http_problem(r, P_UNAVAILABLE, "the key could not be looked up", NULL);
		return -1;
	}
	if (found > 0)
		return 0;
	if (strcmp(stored, hash) != 0) {
		/* The key may be this turn's, not committed yet. */
		*rc = after_commit(r, idem_conflict);
		return -1;
	}
	r->replay = 1;
	http_suspend_ack(r, id, store_job_ids(id), 0, reply_created);
	*rc = MHD_YES;
	return 1;
}

/* refuse_load applies back-pressure before anything is written: a queue
 * past --max-queued-jobs is a 429, a database near --max-db-bytes a 503;
 * both say when to come back.  Reads are never refused. */
static int refuse_load(struct request *r, int njobs, enum MHD_Result *rc)
{
	char detail[128];
	int64_t pending_jobs, queued;
	int pending_batches, open;

	/* Submissions of this turn are not in the scheduler until their
	 * commit: they count all the same, or a burst passes every limit. */
	http_pending_load(&pending_batches, &pending_jobs);
	open = sched_count() + pending_batches;
	queued = sched_queued_total() + pending_jobs;
	if (open >= cfg.max_open_batches) {
		snprintf(detail, sizeof(detail), "%d batches are unfinished; "
			 "the limit is %d (--max-open-batches)", open,
			 cfg.max_open_batches);
		retry_after(r, 1);
		*rc = http_problem(r, P_QUEUE_FULL, detail, NULL);
		return 1;
	}
	if (queued + njobs > cfg.max_queued_jobs) {
		snprintf(detail, sizeof(detail), "%lld jobs are queued; the "
			 "limit is %lld (--max-queued-jobs)", (long long)queued,
			 (long long)cfg.max_queued_jobs);
		retry_after(r, 1);
		*rc = http_problem(r, P_QUEUE_FULL, detail, NULL);
		return 1;
	}
	if (cfg.max_db_bytes &&
	    store_size_bytes() >= cfg.max_db_bytes) {
		retry_after(r, 30);
		*rc = http_problem(r, P_UNAVAILABLE, "the database is near its "
				   "size limit (--max-db-bytes); finished batches "
				   "must be deleted or expire first", NULL);
		return 1;
	}
	return 0;
}

/* drop_nulls removes the null members of a valid batch and of its jobs:
 * validation let null through only where it means "absent" (name,
 * concurrency, timeout_s), so the store sees them as not sent.  The
 * Idempotency-Key hash is taken before, of the body as sent, so keys
 * stored by an older server still match their replays. */
static void drop_nulls(json_t *obj)
{
	const char *key;
	json_t *v, *job;
	void *tmp;
	size_t i;

	json_object_foreach_safe(obj, tmp, key, v) {
		if (json_is_null(v))
			json_object_del(obj, key);
	}
	json_array_foreach(json_object_get(obj, "jobs"), i, job)
		if (json_is_object(job))
			drop_nulls(job);
	/* a follow-up's body is stored as it will be submitted */
	if (json_is_object((v = json_object_get(obj, "then")))) {
		drop_nulls(v);
		if (json_is_object((job = json_object_get(v, "batch"))))
			drop_nulls(job);
	}
}

/* webhook_secret gives a webhook submitted without a secret a random one
 * (marked generated: its 201 shows it, once), so every delivery is
 * signed.  Returns 0, or -1 when no random bytes could be had. */
static int webhook_secret(json_t *body)
{
	json_t *w = json_object_get(body, "webhook");
	char *secret;

	if (!json_is_object(w))
		return 0;
	/* a 201 posted back says "generated"; only the server says so */
	json_object_del(w, "generated");
	if (json_string_value(json_object_get(w, "secret")))
		return 0;
	secret = webhook_new_secret();
	if (!secret)
		return -1;
	json_object_set_new(w, "secret", json_string(secret));
	json_object_set_new(w, "generated", json_true());
	free(secret);
	return 0;
}

/* default_args gives a command job the defaults' env and cwd: its own
 * env is merged over the defaults' (its names win), its own cwd wins. */
static void default_args(json_t *job, const json_t *d)
{
	json_t *args = json_object_get(job, "args"), *env, *own, *merged;
	const json_t *cwd = json_object_get(d, "cwd");

	if (!args) {
		args = json_object();
		json_object_set_new(job, "args", args);
	}
	if (!json_is_object(args))
		return;
	env = json_object_get(d, "env");
	own = json_object_get(args, "env");
	if (json_is_object(env) && json_is_object(own)) {
		merged = json_copy(env);
		json_object_update(merged, own);
		json_object_set_new(args, "env", merged);
	} else if (json_is_object(env) && (!own || json_is_null(own))) {
		json_object_set(args, "env", env);
	}
	own = json_object_get(args, "cwd");
	if (json_is_string(cwd) && (!own || json_is_null(own)))
		json_object_set(args, "cwd", (json_t *)cwd);
}

/* apply_defaults copies a batch's defaults into each of its jobs that
 * does not set its own (null counts as not set), then drops them: the
 * store sees jobs as if each had been sent whole.  A follow-up's are
 * applied too, since its body is stored as it will be submitted.
 * Returns whether anything had defaults (the jobs are then checked again:
 * a merged env may make args too large). */
static int apply_defaults(json_t *body)
{
	static const char *const fields[] = { "timeout_s", "max_attempts",
		"retry_on", "retry_backoff_s", NULL };
	json_t *d = json_object_get(body, "defaults"), *then, *job, *v;
	const char *kind;
	int any = 0;
	size_t i, k;

	then = json_object_get(body, "then");
	if (json_is_object(then) &&
	    json_is_object(json_object_get(then, "batch")))
		any = apply_defaults(json_object_get(then, "batch"));
	if (!json_is_object(d)) {
		json_object_del(body, "defaults");
		return any;
	}
	json_array_foreach(json_object_get(body, "jobs"), i, job) {
		if (!json_is_object(job))
			continue;
		for (k = 0; fields[k]; k++) {
			v = json_object_get(d, fields[k]);
			if (v && !json_is_null(v) &&
			    !json_object_get(job, fields[k]))
				json_object_set(job, fields[k], v);
		}
		kind = json_string_value(json_object_get(job, "kind"));
		if (kind && strcmp(kind, "command") == 0)
			default_args(job, d);
	}
	json_object_del(body, "defaults");
	return 1;
}

static enum MHD_Result api_batch_create(struct request *r)
{
	const char *key = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						      "Idempotency-Key");
	json_t *body, *errors, *job_ids = NULL;
	enum MHD_Result rc;
	char detail[64], hash[33] = "";
	int64_t id;
	int n;

	if (key && !valid_key(key))
		return http_invalid(r, "Idempotency-Key", "must be 1 to 255 "
				    "printable ASCII characters");
	body = parse_body(r, &rc);
	if (!body)
		return rc;
	errors = json_array();
	n = validate_batch(body, errors);
	if (n > 0) {
		json_decref(body);
		snprintf(detail, sizeof(detail), "%d invalid field%s", n,
			 n == 1 ? "" : "s");
		return http_problem(r, P_INVALID, detail, errors);
	}
	json_decref(errors);
	if (key) {
		char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);

		hash_hex(canon ? canon : "", canon ? strlen(canon) : 0, hash);
		free(canon);
		n = replay(r, key, hash, &rc);
		if (n != 0) {
			json_decref(body);
			return rc;
		}
	}
	drop_nulls(body);
	if (apply_defaults(body)) {
		errors = json_array();
		n = validate_batch(body, errors);
		if (n > 0) {
			json_decref(body);
			snprintf(detail, sizeof(detail), "%d invalid field%s "
				 "with the defaults applied", n,
				 n == 1 ? "" : "s");
			return http_problem(r, P_INVALID, detail, errors);
		}
		json_decref(errors);
	}
	if (webhook_secret(body) < 0) {
		json_decref(body);
		return http_problem(r, P_INTERNAL, "no secret could be made "
				    "for the webhook", NULL);
	}
	n = (int)json_array_size(json_object_get(body, "jobs"));
	if (refuse_load(r, n, &rc)) {
		json_decref(body);
		return rc;
	}
	n = store_batch_insert(body, now_us(), key, key ? hash : NULL, &id,
			       &job_ids);
	if (n > 0) {
		/* Another node stored this key first, committed meanwhile:
		 * answer as a retry of that request. */
		json_decref(body);
		if (replay(r, key, hash, &rc) != 0)
			return rc;
		retry_after(r, 1);
		return http_problem(r, P_UNAVAILABLE, "the Idempotency-Key is "
				    "being used by another request", NULL);
	}
	if (n < 0) {
		json_decref(body);
		retry_after(r, 5);
		return http_problem(r, P_UNAVAILABLE, store_full() ?
				    "the database is full; the batch was not stored" :
				    "the batch could not be stored", NULL);
	}
	json_decref(body);
	/* Answered from api_resume once the turn's commit is durable. */
	http_suspend_ack(r, id, job_ids, n, reply_created);
	return MHD_YES;
}

/* not_committed answers a request whose change was lost with its
 * transaction (disk full, I/O error): nothing of it was kept. */
static enum MHD_Result not_committed(struct request *r, const char *what)
{
	char detail[128];

	snprintf(detail, sizeof(detail), "%s could not be committed (disk "
		 "full or I/O error); nothing of it was kept", what);
	retry_after(r, 5);
	return http_problem(r, P_UNAVAILABLE, detail, NULL);
}

static enum MHD_Result reply_created(struct request *r)
{
	json_t *batch, *webhook;
	char loc[64];

	if (!r->commit_ok)
		return not_committed(r, "the batch");
	batch = store_batch_json(r->ack_batch);
	if (!batch)
		return http_problem(r, P_INTERNAL, "stored batch vanished", NULL);
	json_object_set(batch, "job_ids", r->job_ids);
	/* The webhook, and the secret the server made for it in this answer
	 * only: a retry with the same Idempotency-Key does not show it. */
	webhook = store_webhook_json(r->ack_batch, !r->replay);
	if (webhook)
		json_object_set_new(batch, "webhook", webhook);
	snprintf(loc, sizeof(loc), "/v1/batches/%s",
		 json_string_value(json_object_get(batch, "id")));
	http_header(r, "Location", loc);
	return http_json(r, r->replay ? 200 : 201, batch);
}

static enum MHD_Result api_batch_list(struct request *r)
{
	enum MHD_Result rc;
	struct page p;

	if (parse_page(r, 'b', batch_state_valid, &p, &rc) < 0)
		return rc;
	return http_json(r, 200, store_batch_list(p.state, p.after,
						  (int)p.limit));
}

/* get_or_wait answers with the object, or suspends the request when the
 * client asked to wait and the object is not terminal yet. */
static enum MHD_Result fail_status(struct request *r, json_t *obj);

static enum MHD_Result get_or_wait(struct request *r, int is_batch)
{
	static const char *const allowed[] = { "wait", "fail", NULL };
	const char *fail = param(r, "fail"), *bad = unknown_param(r, allowed);
	int64_t id = r->ids[0];
	char path[80];
	json_t *obj;
	double wait;

	if (bad) {
		snprintf(path, sizeof(path), "?%.64s", bad);
		return http_invalid(r, path, "is not a parameter of this endpoint");
	}
	if (parse_wait(r, &wait) < 0)
		return http_invalid(r, "?wait", "must be a number of seconds from "
				    "0 to 3600");
	if (fail && strcmp(fail, "true") != 0 && strcmp(fail, "false") != 0)
		return http_invalid(r, "?fail", "must be true or false");
	obj = is_batch ? store_batch_json(id) : store_job_json(id);
	if (!obj)
		return http_problem(r, P_NOT_FOUND, is_batch ?
				    "no such batch" : "no such job", NULL);
	if (r->phase == PH_NEW)
		r->deadline = mono_us() + (int64_t)(wait * 1e6);
	/* A woken long-poll checks again: a wake may be for a sibling.
	 * While shutting down it answers now: MHD cannot stop with
	 * suspended connections. */
	if (wait > 0 && !terminal(obj) && mono_us() < r->deadline &&
	    !shutting_down) {
		json_decref(obj);
		http_suspend_wait(r, is_batch, id);
		return MHD_YES;
	}
	/* Where the batch reports to, so a batch read shows it and can be
	 * submitted again as read; never the secret (the 201 showed it). */
	if (is_batch) {
		json_t *w = store_webhook_json(id, 0);

		if (w)
			json_object_set_new(obj, "webhook", w);
	}
	if (fail && strcmp(fail, "true") == 0)
		return fail_status(r, obj);
	return http_json(r, 200, obj);
}

/* fail_status answers ?fail=true, for `curl -sf` in a script: 200 only
 * when the object ended succeeded, 412 when it ended otherwise, 408 when
 * the wait ended first; curl -f exits 22 on both.  The body is the object
 * as without ?fail, so a script may still read it (curl -f shows none). */
static enum MHD_Result fail_status(struct request *r, json_t *obj)
{
	const char *s = json_string_value(json_object_get(obj, "state"));

	if (!terminal(obj))
		return http_json(r, 408, obj);
	if (!s || strcmp(s, "succeeded") != 0)
		return http_json(r, 412, obj);
	return http_json(r, 200, obj);
}

static enum MHD_Result api_batch_get(struct request *r)
{
	return get_or_wait(r, 1);
}

static enum MHD_Result api_job_get(struct request *r)
{
	return get_or_wait(r, 0);
}

/* GET /v1/jobs/{id}/output[?stream=stdout|stderr][&attempt=N][&follow=]:
 * a command job's captured output as text (output.c). */
static enum MHD_Result api_job_output(struct request *r)
{
	static const char *const allowed[] = { "stream", "attempt", "follow",
					       NULL };
	const char *bad = unknown_param(r, allowed), *v;
	int stream = 0, attempt = 0, follow = 0;
	char path[80];

	if (bad) {
		snprintf(path, sizeof(path), "?%.64s", bad);
		return http_invalid(r, path, "is not a parameter of this endpoint");
	}
	v = param(r, "stream");
	if (v && strcmp(v, "stdout") != 0 && strcmp(v, "stderr") != 0)
		return http_invalid(r, "?stream", "must be stdout or stderr");
	stream = v && strcmp(v, "stderr") == 0;
	v = param(r, "follow");
	if (v && strcmp(v, "true") != 0 && strcmp(v, "false") != 0)
		return http_invalid(r, "?follow", "must be true or false");
	follow = v && strcmp(v, "true") == 0;
	v = param(r, "attempt");
	if (v) {
		if (!*v || strlen(v) > 9 || strspn(v, "0123456789") != strlen(v) ||
		    (attempt = atoi(v)) < 1)
			return http_invalid(r, "?attempt",
					    "must be an attempt number (1, 2, ...)");
	}
	return output_open(r, r->ids[0], stream, attempt, follow);
}

static enum MHD_Result api_batch_jobs(struct request *r)
{
	struct batch_info b;
	enum MHD_Result rc;
	struct page p;

	if (parse_page(r, 'j', job_state_ok, &p, &rc) < 0)
		return rc;
	if (store_batch_info(r->ids[0], &b) < 0)
		return http_problem(r, P_NOT_FOUND, "no such batch", NULL);
	return http_json(r, 200, store_job_list(r->ids[0], p.state, p.after,
						(int)p.limit));
}

/* GET /v1/batches/{id}/joblog: the batch's ended attempts as GNU
 * parallel's --joblog (joblog.c).  It takes no parameters and ignores
 * Accept: the format is the point of the endpoint, and the JSON of the
 * same facts is GET /v1/batches/{id}/jobs. */
static enum MHD_Result api_batch_joblog(struct request *r)
{
	static const char *const allowed[] = { NULL };
	const char *bad = unknown_param(r, allowed);
	struct batch_info b;
	char path[80];

	if (bad) {
		snprintf(path, sizeof(path), "?%.64s", bad);
		return http_invalid(r, path, "is not a parameter of this endpoint");
	}
	if (store_batch_info(r->ids[0], &b) < 0)
		return http_problem(r, P_NOT_FOUND, "no such batch", NULL);
	return joblog_open(r, r->ids[0]);
}

static int delivery_state_ok(const char *s)
{
	return strcmp(s, "pending") == 0 || strcmp(s, "delivered") == 0 ||
	       strcmp(s, "failed") == 0;
}

/* GET /v1/batches/{id}/deliveries: the batch's webhook deliveries, oldest
 * first, each with its attempts (status codes, errors, times). */
static enum MHD_Result api_batch_deliveries(struct request *r)
{
	struct batch_info b;
	enum MHD_Result rc;
	struct page p;
	json_t *list;

	if (parse_page(r, 'd', delivery_state_ok, &p, &rc) < 0)
		return rc;
	if (store_batch_info(r->ids[0], &b) < 0)
		return http_problem(r, P_NOT_FOUND, "no such batch", NULL);
	list = store_webhook_list(r->ids[0], p.state, p.after < 0 ? 0 : p.after,
				  (int)p.limit);
	if (!list)
		return http_problem(r, P_INTERNAL, "the deliveries could not be "
				    "read", NULL);
	return http_json(r, 200, list);
}

/* cancel_reply answers a cancel with the object as committed. */
static enum MHD_Result cancel_reply(struct request *r)
{
	/* "/v1/batches/..." or "/v1/jobs/..." */
	int rc = r->op_rc, is_batch = r->route->pattern[4] == 'b';
	json_t *obj;

	if (!r->commit_ok)
		return not_committed(r, "the cancel");
	if (rc == -404)
		return http_problem(r, P_NOT_FOUND, is_batch ?
				    "no such batch" : "no such job", NULL);
	if (rc == -409)
		return http_problem(r, P_CONFLICT, is_batch ?
				    "the batch has already finished" :
				    "the job has already finished", NULL);
	if (rc < 0)
		return not_committed(r, "the cancel");
	obj = is_batch ? store_batch_json(r->ids[0]) : store_job_json(r->ids[0]);
	return obj ? http_json(r, 200, obj) :
		     http_problem(r, P_INTERNAL, "object vanished", NULL);
}

/* after_commit answers with reply(r) once the turn's transaction is
 * committed: at once when nothing is pending.  Refusals (404, 409) wait
 * too, since they were decided on what the open transaction holds: a job
 * that "already finished" in it may be running again if it is lost. */
static enum MHD_Result after_commit(struct request *r, api_fn reply)
{
	r->commit_ok = 1;
	if (!store_dirty())
		return reply(r);
	http_suspend_commit(r, reply);
	return MHD_YES;
}

static enum MHD_Result api_batch_cancel(struct request *r)
{
	r->op_rc = engine_cancel_batch(r->ids[0]);
	return after_commit(r, cancel_reply);
}

static enum MHD_Result api_job_cancel(struct request *r)
{
	r->op_rc = engine_cancel_job(r->ids[0]);
	return after_commit(r, cancel_reply);
}

/* retry_reply answers a retry with the job, or the batch and how many of
 * its jobs went back to the queue ("retried"), as committed. */
static enum MHD_Result retry_reply(struct request *r)
{
	int rc = r->op_rc, is_batch = r->route->pattern[4] == 'b';
	json_t *obj;

	if (!r->commit_ok || rc == -500)
		return not_committed(r, "the retry");
	if (rc == -404)
		return http_problem(r, P_NOT_FOUND, is_batch ?
				    "no such batch" : "no such job", NULL);
	if (rc == -409)
		return http_problem(r, P_CONFLICT, is_batch ?
				    "the batch has queued or running jobs; "
				    "retry it once it has finished" :
				    "the job is queued or running; only a "
				    "finished job can be retried", NULL);
	obj = is_batch ? store_batch_json(r->ids[0]) : store_job_json(r->ids[0]);
	if (!obj)
		return http_problem(r, P_INTERNAL, "object vanished", NULL);
	if (is_batch)
		json_object_set_new(obj, "retried", json_integer(rc));
	return http_json(r, 200, obj);
}

static enum MHD_Result api_job_retry(struct request *r)
{
	r->op_rc = engine_retry_job(r->ids[0]);
	return after_commit(r, retry_reply);
}

/* retry_states reads the optional body {"states": [...]} of a batch's
 * retry into a mask of ended states (default: failed, timed_out,
 * canceled).  Answers 400/415 itself and returns -1 when it is bad. */
static int retry_states(struct request *r, unsigned *mask,
			enum MHD_Result *rc)
{
	json_t *body, *states, *e;
	char path[32];
	const char *bad = NULL;
	size_t i;
	int st;

	*mask = 1u << JS_FAILED | 1u << JS_TIMED_OUT | 1u << JS_CANCELED;
	if (r->len == 0)
		return 0;
	if (!(body = parse_body(r, rc)))
		return -1;
	states = json_object_get(body, "states");
	if (!json_is_object(body) || json_object_size(body) > (states ? 1 : 0)) {
		json_decref(body);
		*rc = http_invalid(r, "/", "must be {\"states\": [...]} or empty");
		return -1;
	}
	if (states && !json_is_null(states)) {
		if (!json_is_array(states) || json_array_size(states) == 0)
			bad = "/states";
		*mask = 0;
		json_array_foreach(states, i, e) {
			st = json_is_string(e) ?
			     job_state_parse(json_string_value(e)) : -1;
			if (st < JS_SUCCEEDED) {
				snprintf(path, sizeof(path), "/states/%zu", i);
				bad = path;
				break;
			}
			*mask |= 1u << st;
		}
	}
	json_decref(body);
	if (bad) {
		*rc = http_invalid(r, bad, "must be a non-empty array of "
				   "\"succeeded\", \"failed\", \"timed_out\" "
				   "and \"canceled\"");
		return -1;
	}
	return 0;
}

static enum MHD_Result api_batch_retry(struct request *r)
{
	enum MHD_Result rc;
	unsigned mask;

	if (retry_states(r, &mask, &rc) < 0)
		return rc;
	r->op_rc = engine_retry_batch(r->ids[0], mask);
	return after_commit(r, retry_reply);
}

static enum MHD_Result deleted_reply(struct request *r)
{
	if (!r->commit_ok)
		return not_committed(r, "the delete");
	if (r->op_rc == -404)
		return http_problem(r, P_NOT_FOUND, "no such batch", NULL);
	if (r->op_rc == -409)
		return http_problem(r, P_CONFLICT,
				    "the batch has unfinished jobs; cancel it first", NULL);
	return http_empty(r, 204);
}

static enum MHD_Result api_batch_delete(struct request *r)
{
	struct batch_info b;

	if (store_batch_info(r->ids[0], &b) < 0)
		r->op_rc = -404;
	else if (b.queued + b.running > 0)
		r->op_rc = -409;
	else if (store_batch_delete(r->ids[0]) < 0)
		return http_problem(r, P_UNAVAILABLE, "the batch could not be deleted", NULL);
	return after_commit(r, deleted_reply);
}

/* ---- pause, resume, priority, cancel all, what runs ---- */

/* batch_set_reply answers a pause, resume or PATCH with the batch as
 * committed. */
static enum MHD_Result batch_set_reply(struct request *r)
{
	json_t *obj;

	if (!r->commit_ok || r->op_rc == -500)
		return not_committed(r, "the change");
	if (r->op_rc == -404)
		return http_problem(r, P_NOT_FOUND, "no such batch", NULL);
	obj = store_batch_json(r->ids[0]);
	return obj ? http_json(r, 200, obj) :
		     http_problem(r, P_INTERNAL, "object vanished", NULL);
}

/* POST /v1/batches/{id}/pause and .../resume: stored with the batch, so
 * it survives a restart and holds on every node. */
static enum MHD_Result api_batch_pause(struct request *r)
{
	r->op_rc = engine_batch_set(r->ids[0], 1, STORE_KEEP, STORE_KEEP);
	return after_commit(r, batch_set_reply);
}

static enum MHD_Result api_batch_resume(struct request *r)
{
	r->op_rc = engine_batch_set(r->ids[0], 0, STORE_KEEP, STORE_KEEP);
	return after_commit(r, batch_set_reply);
}

/* PATCH /v1/batches/{id} {"priority": N, "concurrency": N | null}: what a
 * client may change while a batch runs; the schedule takes it at once
 * (other nodes at their next look).  A lower concurrency holds as running
 * jobs end; none is stopped for it. */
static enum MHD_Result api_batch_patch(struct request *r)
{
	enum MHD_Result rc;
	json_t *body = parse_body(r, &rc), *v;
	const char *key;
	int64_t prio = STORE_KEEP, conc = STORE_KEEP;

	if (!body)
		return rc;
	if (!json_is_object(body) || json_object_size(body) == 0) {
		json_decref(body);
		return http_invalid(r, "/", "must be {\"priority\": N} and/or "
				    "{\"concurrency\": N or null}");
	}
	json_object_foreach(body, key, v) {
		if (strcmp(key, "priority") != 0 &&
		    strcmp(key, "concurrency") != 0) {
			char path[80];

			snprintf(path, sizeof(path), "/%.64s", key);
			json_decref(body);
			return http_invalid(r, path, "cannot be changed; only "
					    "priority and concurrency can");
		}
	}
	if ((v = json_object_get(body, "priority"))) {
		if (!validate_int(v, PRIORITY_MIN, PRIORITY_MAX)) {
			json_decref(body);
			return http_invalid(r, "/priority", "must be an integer "
					    "from -1000 to 1000");
		}
		prio = (int64_t)json_number_value(v);
	}
	if ((v = json_object_get(body, "concurrency"))) {
		if (!json_is_null(v) && !validate_int(v, 1, CONCURRENCY_MAX)) {
			json_decref(body);
			return http_invalid(r, "/concurrency", "must be an integer "
					    "from 1 to 10000, or null for no limit");
		}
		conc = json_is_null(v) ? 0 : (int64_t)json_number_value(v);
	}
	json_decref(body);
	r->op_rc = engine_batch_set(r->ids[0], -1, prio, conc);
	return after_commit(r, batch_set_reply);
}

/* POST /v1/pause and /v1/resume: dispatch stops or restarts; running jobs
 * finish.  Stored (store_dispatch_set), so a paused server stays paused
 * across a restart, and with PostgreSQL every node follows it within its
 * --poll-interval.  This node follows at once: no job starts here after
 * the request is read; a failed commit puts back what is stored. */
static json_t *pool_view(void);

static enum MHD_Result pause_reply(struct request *r)
{
	int stored;

	if (!r->commit_ok || r->op_rc < 0) {
		if ((stored = store_dispatch_get()) >= 0)
			sched_pause_all(stored);
		return not_committed(r, "the pause");
	}
	return http_json(r, 200, pool_view());
}

static enum MHD_Result pause_all(struct request *r, int paused)
{
	r->op_rc = store_dispatch_set(paused);
	if (r->op_rc == 0) {
		if (sched_all_paused() != paused)
			log_info("pool: dispatch %s", paused ? "paused" : "resumed");
		sched_pause_all(paused);
	}
	return after_commit(r, pause_reply);
}

static enum MHD_Result api_pause(struct request *r)
{
	return pause_all(r, 1);
}

static enum MHD_Result api_resume_all(struct request *r)
{
	return pause_all(r, 0);
}

static enum MHD_Result cancel_all_reply(struct request *r)
{
	json_t *ids = r->job_ids;

	if (!r->commit_ok || r->op_rc < 0)
		return not_committed(r, "the cancel");
	r->job_ids = NULL;
	return http_json(r, 200, json_pack("{s:i, s:o}", "canceled",
					   r->op_rc, "batch_ids", ids));
}

/* POST /v1/batches/cancel: every unfinished batch, as one cancel each.
 * The canceled ids ride in r->job_ids until the commit (freed with the
 * request if it never comes). */
static enum MHD_Result api_cancel_all(struct request *r)
{
	json_t *ids = json_array();

	if (!ids)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	r->op_rc = engine_cancel_all(ids);
	json_decref(r->job_ids);
	r->job_ids = ids;
	return after_commit(r, cancel_all_reply);
}

/* GET /v1/jobs: jobs of every batch, in id order, with ?state (a comma
 * list) and the cursor pages of the other lists. */
static enum MHD_Result api_jobs_list(struct request *r)
{
	enum MHD_Result rc;
	struct page p;
	json_t *list;

	if (parse_page(r, 'j', job_state_ok, &p, &rc) < 0)
		return rc;
	list = store_jobs_list(p.state, p.after < 0 ? 0 : p.after,
			       (int)p.limit);
	if (!list)
		return http_problem(r, P_INTERNAL, "the jobs could not be read",
				    NULL);
	return http_json(r, 200, list);
}

/* GET /v1/events[?batch_id=][&last_event_id=]: Last-Event-ID (the header
 * browsers send on reconnect) or the parameter resumes after that event. */
static enum MHD_Result api_events(struct request *r)
{
	static const char *const allowed[] = { "batch_id", "last_event_id",
					       NULL };
	const char *bad = unknown_param(r, allowed), *v, *where;
	int64_t batch_id = 0;
	long long after = 0;
	char path[80];

	if (bad) {
		snprintf(path, sizeof(path), "?%.64s", bad);
		return http_invalid(r, path, "is not a parameter of this endpoint");
	}
	v = param(r, "batch_id");
	if (v && (batch_id = parse_id(v, 'b')) < 0)
		return http_invalid(r, "?batch_id", "is not a batch id");
	where = "?last_event_id";
	v = param(r, "last_event_id");
	if (!v) {
		where = "Last-Event-ID";
		v = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						"Last-Event-ID");
	}
	if (v) {
		if (!*v || strlen(v) > 18 || strspn(v, "0123456789") != strlen(v))
			return http_invalid(r, where, "must be an event id");
		after = strtoll(v, NULL, 10);
	}
	return events_open(r, batch_id, after);
}

/* pool_view is GET /v1/pool: pool_json, whether dispatch is paused here,
 * and for each busy worker its job's name, kind, batch and start, read
 * from the store (one read per busy worker; pool.c knows ids only). */
static json_t *pool_view(void)
{
	json_t *pool = pool_json(), *w, *job;
	const char *id;
	size_t i;

	if (!pool)
		return NULL;
	json_object_set_new(pool, "paused", json_boolean(sched_all_paused()));
	json_array_foreach(json_object_get(pool, "workers"), i, w) {
		id = json_string_value(json_object_get(w, "job_id"));
		job = id ? store_job_json(parse_id(id, 'j')) : NULL;
		json_object_set_new(w, "job_name", job ? json_incref(
			json_object_get(job, "name")) : json_null());
		json_object_set_new(w, "job_kind", job ? json_incref(
			json_object_get(job, "kind")) : json_null());
		json_object_set_new(w, "batch_id", job ? json_incref(
			json_object_get(job, "batch_id")) : json_null());
		json_object_set_new(w, "job_started_at", job ? json_incref(
			json_object_get(job, "started_at")) : json_null());
		json_decref(job);
	}
	return pool;
}

static enum MHD_Result api_pool_get(struct request *r)
{
	return http_json(r, 200, pool_view());
}

/* api_nodes_get lists the servers sharing this database: with SQLite,
 * which one server holds (flock), only this one, alive as it answers. */
static enum MHD_Result api_nodes_get(struct request *r)
{
	json_t *node, *nodes = store_nodes_json();

	/* With PostgreSQL: every node whose lease is alive, as its last
	 * heartbeat stored it; this node's own entry as it is now. */
	if (nodes) {
		size_t i;

		for (i = 0; i < json_array_size(nodes); i++) {
			node = json_array_get(nodes, i);
			if (!json_is_true(json_object_get(node, "self")))
				continue;
			json_object_set_new(node, "pool_size",
					    json_integer(pool_size()));
			json_object_set_new(node, "busy_workers",
					    json_integer(pool_busy()));
		}
		return http_json(r, 200, json_pack("{s:o}", "items", nodes));
	}
	node = json_pack("{s:s, s:b, s:o, s:o, s:i, s:i}",
				 "name", cfg.node_name, "self", 1,
				 "started_at", json_time(cfg.started_at),
				 "last_heartbeat_at", json_time(now_us()),
				 "pool_size", pool_size(),
				 "busy_workers", pool_busy());

	return http_json(r, 200, json_pack("{s:[o]}", "items", node));
}

/* parse_body decodes a JSON request body; answers 415/400 itself and
 * returns NULL when it cannot. */
static json_t *parse_body(struct request *r, enum MHD_Result *rc)
{
	const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						     "Content-Type");
	json_error_t jerr;
	char detail[300];
	json_t *body;

	if (!is_json_type(ct)) {
		*rc = http_problem(r, P_MEDIA_TYPE, "send the body as "
				   "application/json", NULL);
		return NULL;
	}
	body = json_loadb(r->body ? r->body : "", r->len,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!body) {
		snprintf(detail, sizeof(detail), "%s (line %d, column %d)",
			 jerr.text, jerr.line, jerr.column);
		*rc = http_problem(r, P_INVALID_JSON, detail,
				   json_pack("[{s:s, s:s}]", "path", "/",
					     "message", jerr.text));
	}
	return body;
}

/* PUT /v1/pool {size}: shrinking lets busy workers finish their job. */
static enum MHD_Result api_pool_put(struct request *r)
{
	enum MHD_Result rc;
	json_t *body = parse_body(r, &rc), *size;
	double d;

	if (!body)
		return rc;
	size = json_object_get(body, "size");
	d = json_is_integer(size) ? (double)json_integer_value(size) : -1;
	if (!json_is_object(body) || json_object_size(body) != 1 || !size) {
		json_decref(body);
		return http_invalid(r, "/", "must be exactly {\"size\": N}");
	}
	json_decref(body);
	/* 0 is what people try for "stop taking jobs": name the verb for it */
	if (d == 0)
		return http_invalid(r, "/size", "must be an integer from 1 to 1024; "
				    "to stop starting jobs, POST /v1/pause");
	if (d < 1 || d > POOL_MAX)
		return http_invalid(r, "/size", "must be an integer from 1 to 1024");
	if (shutting_down)
		return http_problem(r, P_UNAVAILABLE, "the server is shutting down", NULL);
	pool_resize((int)d);
	log_info("pool: resized to %d", (int)d);
	return http_json(r, 200, pool_view());
}

/* ---- routing ---- */

static const struct route routes[] = {
	{"/", "GET", api_dashboard},
	{"/dashboard.js", "GET", api_dashboard_js},
	{"/dashboard.css", "GET", api_dashboard_css},
	{"/healthz", "GET", api_healthz},
	{"/readyz", "GET", api_readyz},
	{"/openapi.yaml", "GET", api_openapi},
	{"/metrics", "GET", api_metrics},
	{"/v1/batches", "GET", api_batch_list},
	{"/v1/batches", "POST", api_batch_create},
	{"/v1/batches/{b}", "GET", api_batch_get},
	{"/v1/batches/{b}", "DELETE", api_batch_delete},
	{"/v1/batches/{b}/jobs", "GET", api_batch_jobs},
	{"/v1/batches/{b}/joblog", "GET", api_batch_joblog},
	{"/v1/batches/{b}/deliveries", "GET", api_batch_deliveries},
	{"/v1/batches/{b}/cancel", "POST", api_batch_cancel},
	{"/v1/batches/{b}/retry", "POST", api_batch_retry},
	{"/v1/batches/{b}", "PATCH", api_batch_patch},
	{"/v1/batches/{b}/pause", "POST", api_batch_pause},
	{"/v1/batches/{b}/resume", "POST", api_batch_resume},
	{"/v1/batches/cancel", "POST", api_cancel_all},
	{"/v1/pause", "POST", api_pause},
	{"/v1/resume", "POST", api_resume_all},
	{"/v1/jobs", "GET", api_jobs_list},
	{"/v1/jobs/{j}", "GET", api_job_get},
	{"/v1/jobs/{j}/output", "GET", api_job_output},
	{"/v1/jobs/{j}/cancel", "POST", api_job_cancel},
	{"/v1/jobs/{j}/retry", "POST", api_job_retry},
	{"/v1/events", "GET", api_events},
	{"/v1/pool", "GET", api_pool_get},
	{"/v1/nodes", "GET", api_nodes_get},
	{"/v1/pool", "PUT", api_pool_put},
};

/* match compares url with pattern segment by segment; "{b}" and "{j}"
 * match only well-formed batch and job ids, so a malformed id is a 404. */
static int match(const char *pattern, const char *url, int64_t *ids)
{
	const char *p = pattern, *u = url;
	int n = 0;

	while (*p && *u) {
		if (p[0] == '{') {
			char seg[32];
			size_t len = strcspn(u, "/");

			if (len >= sizeof(seg))
				return 0;
			memcpy(seg, u, len);
			seg[len] = 0;
			ids[n] = parse_id(seg, p[1]);
			if (ids[n++] < 0)
				return 0;
			p += 3;
			u += len;
			continue;
		}
		if (*p++ != *u++)
			return 0;
	}
	return *p == 0 && *u == 0;
}

static int same_method(const char *route, const char *method)
{
	return strcmp(route, method) == 0 ||
	       (strcmp(route, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

/* allowed_methods writes the methods the path takes ("GET, HEAD, POST")
 * into allow and returns the route for method, or NULL. */
static const struct route *allowed_methods(struct request *r, char *allow,
					   size_t size)
{
	const struct route *found = NULL;
	size_t i;

	allow[0] = 0;
	for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (!match(routes[i].pattern, r->url, r->ids))
			continue;
		if (same_method(routes[i].method, r->method) && !found)
			found = &routes[i];
		if (allow[0])
			strncat(allow, ", ", size - strlen(allow) - 1);
		strncat(allow, routes[i].method, size - strlen(allow) - 1);
		if (strcmp(routes[i].method, "GET") == 0)
			strncat(allow, ", HEAD", size - strlen(allow) - 1);
	}
	if (found)
		match(found->pattern, r->url, r->ids);
	return found;
}

/* options answers OPTIONS: the methods of a path, and for a CORS
 * preflight what a browser needs to send the real request. */
static void options(struct request *r)
{
	char allow[80];

	allowed_methods(r, allow, sizeof(allow) - 10);
	if (!allow[0]) {
		http_problem(r, P_NOT_FOUND, "no such resource", NULL);
		return;
	}
	strcat(allow, ", OPTIONS");
	http_header(r, "Allow", allow);
	/* Preflight headers only for an origin http_send will also give
	 * Access-Control-Allow-Origin: alone they grant nothing and read as
	 * if CORS were configured. */
	if (http_cors_allowed(r) &&
	    MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
					"Access-Control-Request-Method")) {
		http_header(r, "Access-Control-Allow-Methods",
			    "GET, POST, PUT, PATCH, DELETE");
		http_header(r, "Access-Control-Allow-Headers",
			    "Authorization, Content-Type, Idempotency-Key, "
			    "Last-Event-ID");
		http_header(r, "Access-Control-Max-Age", "600");
	}
	http_empty(r, 204);
}

/* token_ok compares in time independent of where the strings differ, so
 * response timing does not reveal the token byte by byte. */
static int token_ok(const char *given)
{
	size_t n = strlen(cfg.token), m = strlen(given), i;
	unsigned char d = n != m;

	for (i = 0; i < n; i++)
		d |= (unsigned char)cfg.token[i] ^
		     (unsigned char)(i < m ? given[i] : 0);
	return d == 0;
}

/* is_public_page says whether url is the dashboard or one of its files:
 * they hold no data, and the API calls the page makes carry the token. */
static int is_public_page(const char *url)
{
	return strcmp(url, "/") == 0 || strcmp(url, "/dashboard.js") == 0 ||
	       strcmp(url, "/dashboard.css") == 0;
}

int http_gate(struct request *r)
{
	const char *auth;

	if (strcmp(r->method, "OPTIONS") == 0) {
		options(r);
		return 0;
	}
	if (!cfg.token || strcmp(r->url, "/healthz") == 0)
		return 1;
	if (is_public_page(r->url) && (strcmp(r->method, "GET") == 0 ||
				       strcmp(r->method, "HEAD") == 0))
		return 1;
	auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
					   "Authorization");
	if (auth && strncasecmp(auth, "Bearer ", 7) == 0 &&
	    token_ok(auth + 7))
		return 1;
	http_header(r, "WWW-Authenticate", "Bearer realm=\"jobpool\"");
	http_problem(r, P_UNAUTHORIZED, auth ? "the bearer token is wrong" :
		     "send Authorization: Bearer <token>", NULL);
	return 0;
}

enum MHD_Result http_route(struct request *r)
{
	const struct route *route;
	char allow[80];

	route = allowed_methods(r, allow, sizeof(allow));
	if (route) {
		r->route = route;
		return route->fn(r);
	}
	if (allow[0]) {
		char detail[128];

		snprintf(detail, sizeof(detail), "%s is not allowed here; use %s",
			 r->method, allow);
		http_header(r, "Allow", allow);
		return http_problem(r, P_METHOD, detail, NULL);
	}
	return http_problem(r, P_NOT_FOUND, "no such resource", NULL);
}

/* api_resume answers a request that was suspended: a submission whose
 * commit finished, or a long-poll that was woken or timed out. */
enum MHD_Result api_resume(struct request *r)
{
	api_fn reply = r->on_commit;

	if (reply) {
		r->on_commit = NULL;
		return reply(r);
	}
	return r->route->fn(r);
}
