/* validate.c - checks a batch submission before anything is stored.
 *
 * Every problem is reported, not just the first, each with a JSON Pointer
 * into the body, so a client fixes its request in one round trip.  The list
 * is capped (MAX_ERRORS) so a 100,000-job body of mistakes cannot produce a
 * response larger than the request.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"
#include "kinds.h"
#include "protocol.h"

#define MAX_ERRORS 100
#define MAX_NAME 256
#define MAX_RETRY_ON 64

struct verr {
	json_t *errors;
	char prefix[96];
	int count;
};

static void add(struct verr *v, const char *field, const char *msg)
{
	char path[192];
	json_t *e;

	v->count++;
	if (json_array_size(v->errors) >= MAX_ERRORS)
		return;
	if (field && *field)
		snprintf(path, sizeof(path), "%s/%s", v->prefix, field);
	else
		snprintf(path, sizeof(path), "%s", v->prefix[0] ? v->prefix : "/");
	e = json_pack("{s:s, s:s}", "path", path, "message", msg);
	json_array_append_new(v->errors, e);
}

static void kind_err(void *ctx, const char *field, const char *msg)
{
	add(ctx, field, msg);
}

/* is_int tells whether j is a JSON integer, or a real with no fraction. */
static int is_int(const json_t *j, double *out)
{
	double d;

	if (!json_is_number(j))
		return 0;
	d = json_number_value(j);
	if (!isfinite(d) || d != floor(d))
		return 0;
	*out = d;
	return 1;
}

int validate_int(const json_t *j, double lo, double hi)
{
	double d;

	return is_int(j, &d) && d >= lo && d <= hi;
}

/* check_int and check_number take null as absent when null_ok: a field a
 * read shows as null can be sent back as read. */
static void check_int(struct verr *v, const json_t *obj, const char *field,
		      double lo, double hi, int null_ok)
{
	const json_t *j = json_object_get(obj, field);
	char msg[96];

	if (!j || (null_ok && json_is_null(j)))
		return;
	if (!validate_int(j, lo, hi)) {
		snprintf(msg, sizeof(msg), "must be an integer between %g and %g",
			 lo, hi);
		add(v, field, msg);
	}
}

static void check_number(struct verr *v, const json_t *obj, const char *field,
			 double lo, double hi, int lo_open, int null_ok)
{
	const json_t *j = json_object_get(obj, field);
	char msg[96];
	double d;

	if (!j || (null_ok && json_is_null(j)))
		return;
	d = json_is_number(j) ? json_number_value(j) : NAN;
	if (!isfinite(d) || d < lo || (lo_open && d == lo) || d > hi) {
		snprintf(msg, sizeof(msg), "must be a number %s %g and at most %g",
			 lo_open ? "greater than" : "of at least", lo, hi);
		add(v, field, msg);
	}
}

static void check_name(struct verr *v, const json_t *obj)
{
	const json_t *j = json_object_get(obj, "name");

	if (j && !json_is_null(j) &&
	    (!json_is_string(j) || json_string_length(j) > MAX_NAME ||
	     memchr(json_string_value(j), 0, json_string_length(j))))
		add(v, "name", "must be a string of at most 256 bytes without NUL");
}

static void check_retry_on(struct verr *v, const json_t *job)
{
	const json_t *list = json_object_get(job, "retry_on");
	const json_t *e;
	char field[48];
	size_t i;
	double d;

	if (!list || json_is_null(list))
		return;
	if (!json_is_array(list) || json_array_size(list) > MAX_RETRY_ON) {
		add(v, "retry_on", "must be an array of at most 64 exit codes or signal names");
		return;
	}
	json_array_foreach(list, i, e) {
		snprintf(field, sizeof(field), "retry_on/%zu", i);
		if (json_is_string(e) && signal_number(json_string_value(e)))
			continue;
		if (is_int(e, &d) && d >= 0 && d <= 255)
			continue;
		add(v, field, "must be an exit code 0..255 or a signal name such as \"SIGKILL\"");
	}
}

/* size_bound is an upper bound of the compact serialized size of j
 * (strings may grow 6x when escaped; numbers take at most 32 bytes). */
static size_t size_bound(const json_t *j, int depth)
{
	const char *key;
	json_t *value;
	size_t n = 2, i;

	if (depth > 64)
		return PROTO_MAX_ARGS + 1;
	switch (json_typeof(j)) {
	case JSON_OBJECT:
		json_object_foreach((json_t *)j, key, value)
			n += 6 * strlen(key) + 4 + size_bound(value, depth + 1);
		return n;
	case JSON_ARRAY:
		json_array_foreach(j, i, value)
			n += 1 + size_bound(value, depth + 1);
		return n;
	case JSON_STRING:
		return 2 + 6 * json_string_length(j);
	default:
		return 32;
	}
}

static void check_args(struct verr *v, const json_t *job,
		       const struct kind *k)
{
	const json_t *args = json_object_get(job, "args");
	json_t *empty = NULL;
	size_t len;
	char *text;

	if (args && !json_is_object(args)) {
		add(v, "args", "must be an object");
		return;
	}
	if (!args)
		args = empty = json_object();
	/* Serializing every job's args only to measure them costs more than
	 * the rest of validation: do it only when a cheap upper bound says
	 * the args might be too large. */
	len = size_bound(args, 0);
	if (len > PROTO_MAX_ARGS) {
		text = json_dumps(args, JSON_COMPACT);
		len = text ? strlen(text) : PROTO_MAX_ARGS + 1;
		free(text);
	}
	if (len > PROTO_MAX_ARGS) {
		add(v, "args", "is larger than 65536 bytes when serialized");
	} else if (k) {
		size_t n = strlen(v->prefix);

		strncat(v->prefix, "/args", sizeof(v->prefix) - n - 1);
		k->validate(args, kind_err, v);
		v->prefix[n] = 0;
	}
	json_decref(empty);
}

/* What a read of a job shows beyond what a submission sets: accepted and
 * ignored, so a job (or a batch with its jobs) read from the API can be
 * posted back as read (SPEC §9, "Rerun").  The store reads only the fields
 * it knows, so these never reach it. */
#define JOB_READ_ONLY "id", "batch_id", "index", "state", "attempts", \
	"created_at", "started_at", "finished_at", "timings", "worker", \
	"exit_code", "signal", "error", "result", "output", "history"
#define BATCH_READ_ONLY "id", "state", "created_at", "started_at", \
	"finished_at", "counts", "progress", "timings", "halted", \
	"parent_id", "then_batch_id", "then_state", "job_ids", "paused", \
	"retried"

static void check_job(struct verr *v, const json_t *job)
{
	static const char *const allowed[] = {
		"kind", "args", "name", "timeout_s", "max_attempts",
		"retry_on", "retry_backoff_s", JOB_READ_ONLY, NULL
	};
	const json_t *kind;
	const struct kind *k = NULL;
	char msg[200], names[128];

	if (!json_is_object(job)) {
		add(v, "", "must be an object");
		return;
	}
	kind_check_only(job, allowed, kind_err, v);
	kind = json_object_get(job, "kind");
	if (!kind) {
		add(v, "kind", "is required");
	} else if (json_is_string(kind) && !cfg.allow_command &&
		   strcmp(json_string_value(kind), "command") == 0) {
		add(v, "kind", "\"command\" is off; start the server with --allow-command to enable it");
	} else if (!json_is_string(kind) ||
		   !(k = kind_find(json_string_value(kind)))) {
		kind_names(names, sizeof(names));
		snprintf(msg, sizeof(msg), "must be one of: %s", names);
		add(v, "kind", msg);
	}
	check_args(v, job, k);
	check_name(v, job);
	check_number(v, job, "timeout_s", 0, 604800, 1, 1);
	check_int(v, job, "max_attempts", 1, 100, 1);
	check_number(v, job, "retry_backoff_s", 0, 3600, 0, 1);
	check_retry_on(v, job);
}

/* check_defaults checks a batch's defaults {env, cwd, timeout_s,
 * max_attempts, retry_on, retry_backoff_s} as the job fields they stand
 * for (paths under /defaults); env and cwd as the command kind checks
 * them.  The API copies them into the jobs (api.c, apply_defaults). */
static void check_defaults(struct verr *v, const json_t *body)
{
	static const char *const allowed[] = {
		"env", "cwd", "timeout_s", "max_attempts", "retry_on",
		"retry_backoff_s", NULL
	};
	const json_t *d = json_object_get(body, "defaults");
	const struct kind *k = kind_find("command");
	size_t n = strlen(v->prefix);
	json_t *args;

	if (!d || json_is_null(d))
		return;
	if (!json_is_object(d)) {
		add(v, "defaults", "must be an object {env?, cwd?, timeout_s?, "
		    "max_attempts?, retry_on?, retry_backoff_s?}");
		return;
	}
	strncat(v->prefix, "/defaults", sizeof(v->prefix) - n - 1);
	kind_check_only(d, allowed, kind_err, v);
	check_number(v, d, "timeout_s", 0, 604800, 1, 1);
	check_int(v, d, "max_attempts", 1, 100, 1);
	check_number(v, d, "retry_backoff_s", 0, 3600, 0, 1);
	check_retry_on(v, d);
	/* env and cwd as a command job's args would hold them */
	args = json_pack("{s:[s]}", "argv", "true");
	if (json_object_get(d, "env") && !json_is_null(json_object_get(d, "env")))
		json_object_set(args, "env", json_object_get(d, "env"));
	if (json_object_get(d, "cwd") && !json_is_null(json_object_get(d, "cwd")))
		json_object_set(args, "cwd", json_object_get(d, "cwd"));
	if (k && args)
		k->validate(args, kind_err, v);
	json_decref(args);
	v->prefix[n] = 0;
}

/* check_halt checks a halt policy: {when, count | percent, mode}, with
 * exactly one of count and percent (null counts as absent, as a read
 * shows the other one). */
static void check_halt(struct verr *v, const json_t *body)
{
	static const char *const allowed[] = {
		"when", "count", "percent", "mode", NULL
	};
	const json_t *h = json_object_get(body, "halt"), *c, *p, *e;
	size_t n = strlen(v->prefix);
	const char *s;

	if (!h || json_is_null(h))
		return;
	if (!json_is_object(h)) {
		add(v, "halt", "must be an object {when, count or percent, mode}");
		return;
	}
	strncat(v->prefix, "/halt", sizeof(v->prefix) - n - 1);
	kind_check_only(h, allowed, kind_err, v);
	e = json_object_get(h, "when");
	s = json_string_value(e);
	if (!s || (strcmp(s, "fail") != 0 && strcmp(s, "success") != 0))
		add(v, "when", e ? "must be \"fail\" or \"success\"" :
		    "is required: \"fail\" or \"success\"");
	e = json_object_get(h, "mode");
	s = json_string_value(e);
	if (!s || (strcmp(s, "soon") != 0 && strcmp(s, "now") != 0))
		add(v, "mode", e ? "must be \"soon\" or \"now\"" :
		    "is required: \"soon\" or \"now\"");
	c = json_object_get(h, "count");
	p = json_object_get(h, "percent");
	if (c && json_is_null(c))
		c = NULL;
	if (p && json_is_null(p))
		p = NULL;
	if (!c == !p)
		add(v, "", "must have exactly one of count and percent");
	check_int(v, h, "count", 1, 1000000, 1);
	check_number(v, h, "percent", 0, 100, 1, 1);
	v->prefix[n] = 0;
}

/* check_webhook checks {url, secret?, events?}.  The URL must name a host
 * --webhook-allow allows (webhook.c), so no submission makes the server
 * POST anywhere its operator did not allow; nothing is resolved here. */
static void check_webhook(struct verr *v, const json_t *body)
{
	/* generated: as the 201 shows it; the server decides it again */
	static const char *const allowed[] = { "url", "secret", "events",
					       "generated", NULL };
	const json_t *w = json_object_get(body, "webhook"), *e;
	unsigned char key[WEBHOOK_KEY_MAX];
	size_t n = strlen(v->prefix), len;
	const char *s, *why;

	if (!w || json_is_null(w))
		return;
	if (!json_is_object(w)) {
		add(v, "webhook", "must be an object {url, secret?, events?}");
		return;
	}
	strncat(v->prefix, "/webhook", sizeof(v->prefix) - n - 1);
	kind_check_only(w, allowed, kind_err, v);
	e = json_object_get(w, "url");
	s = json_string_value(e);
	if (!e || json_is_null(e))
		add(v, "url", "is required");
	else if (!s)
		add(v, "url", "must be a string");
	else if ((why = webhook_url_check(s, NULL)))
		add(v, "url", why);
	e = json_object_get(w, "secret");
	s = json_string_value(e);
	if (e && !json_is_null(e) && (!s || webhook_key(s, key, &len) < 0))
		add(v, "secret", "must be \"whsec_\" and base64, or a string "
		    "of at most 512 bytes");
	else if (s && len < WEBHOOK_SECRET_MIN)
		add(v, "secret", "must hold at least 16 bytes");
	if (webhook_events(json_object_get(w, "events")) < 0)
		add(v, "events", "must be a non-empty array of distinct "
		    "\"batch.finished\" and \"job.finished\"");
	v->prefix[n] = 0;
}

/* A follow-up may have its own follow-up: chains up to this deep. */
#define THEN_DEPTH_MAX 16

static void check_batch(struct verr *v, const json_t *body, int depth);

/* check_then checks a follow-up, {on, batch}: batch is a whole batch body,
 * checked as one (its errors under /then/batch).  A webhook in it needs
 * its own secret: a generated one would be shown nowhere. */
static void check_then(struct verr *v, const json_t *body, int depth)
{
	static const char *const allowed[] = { "on", "batch", NULL };
	const json_t *t = json_object_get(body, "then"), *e, *w;
	size_t n = strlen(v->prefix);
	const char *s;

	if (!t || json_is_null(t))
		return;
	if (!json_is_object(t)) {
		add(v, "then", "must be an object {on, batch}");
		return;
	}
	strncat(v->prefix, "/then", sizeof(v->prefix) - n - 1);
	kind_check_only(t, allowed, kind_err, v);
	e = json_object_get(t, "on");
	s = json_string_value(e);
	if (!s || (strcmp(s, "success") != 0 && strcmp(s, "completion") != 0))
		add(v, "on", e ? "must be \"success\" or \"completion\"" :
		    "is required: \"success\" or \"completion\"");
	e = json_object_get(t, "batch");
	if (!json_is_object(e)) {
		add(v, "batch", "is required: a batch body {jobs, ...}");
	} else if (depth >= THEN_DEPTH_MAX) {
		add(v, "batch", "may not have a follow-up: follow-ups nest at "
		    "most 16 deep");
	} else {
		w = json_object_get(e, "webhook");
		if (json_is_object(w) && !json_string_value(json_object_get(
						w, "secret"))) {
			strncat(v->prefix, "/batch/webhook",
				sizeof(v->prefix) - strlen(v->prefix) - 1);
			add(v, "secret", "is required in a follow-up's webhook "
			    "(a generated one would be shown nowhere)");
			v->prefix[n + 5] = 0;
		}
		strncat(v->prefix, "/batch", sizeof(v->prefix) - n - 6);
		check_batch(v, e, depth + 1);
	}
	v->prefix[n] = 0;
}

/* check_batch checks one batch body; its paths start at v->prefix. */
static void check_batch(struct verr *v, const json_t *body, int depth)
{
	static const char *const allowed[] = {
		"name", "concurrency", "priority", "jobs", "halt",
		"timeout_pct", "webhook", "then", "defaults", BATCH_READ_ONLY,
		NULL
	};
	const json_t *jobs, *job;
	size_t i, n = strlen(v->prefix);
	char msg[96];

	if (!json_is_object(body)) {
		add(v, "", "must be a JSON object");
		return;
	}
	kind_check_only(body, allowed, kind_err, v);
	check_name(v, body);
	check_int(v, body, "concurrency", 1, CONCURRENCY_MAX, 1);
	check_int(v, body, "priority", PRIORITY_MIN, PRIORITY_MAX, 0);
	check_halt(v, body);
	check_webhook(v, body);
	/* above 100: a limit at or below the median would kill half of the
	 * batch's normal jobs */
	check_number(v, body, "timeout_pct", 100, 100000, 1, 1);
	check_then(v, body, depth);
	check_defaults(v, body);
	jobs = json_object_get(body, "jobs");
	if (!jobs) {
		add(v, "jobs", "is required");
	} else if (!json_is_array(jobs) || json_array_size(jobs) == 0 ||
		   json_array_size(jobs) > (size_t)cfg.max_jobs_per_batch) {
		snprintf(msg, sizeof(msg), "must be an array of 1 to %d jobs",
			 cfg.max_jobs_per_batch);
		add(v, "jobs", msg);
	} else {
		json_array_foreach(jobs, i, job) {
			snprintf(v->prefix + n, sizeof(v->prefix) - n,
				 "/jobs/%zu", i);
			check_job(v, job);
		}
	}
	v->prefix[n] = 0;
}

int validate_batch(const json_t *body, json_t *errors)
{
	struct verr v = { .errors = errors };
	char msg[96];

	check_batch(&v, body, 0);
	if (v.count > MAX_ERRORS) {
		v.prefix[0] = 0;
		snprintf(msg, sizeof(msg), "%d more problems not listed",
			 v.count - MAX_ERRORS);
		json_array_append_new(errors, json_pack("{s:s, s:s}",
			"path", "/", "message", msg));
	}
	return v.count;
}
