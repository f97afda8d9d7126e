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

/* check_int and check_number take null as absent when null_ok: a field a
 * read shows as null can be sent back as read. */
static void check_int(struct verr *v, const json_t *obj, const char *field,
		      double lo, double hi, int null_ok)
{
	const json_t *j = json_object_get(obj, field);
	char msg[96];
	double d;

	if (!j || (null_ok && json_is_null(j)))
		return;
	if (!is_int(j, &d) || d < lo || d > hi) {
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

	if (!list)
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

static void check_job(struct verr *v, const json_t *job)
{
	static const char *const allowed[] = {
		"kind", "args", "name", "timeout_s", "max_attempts",
		"retry_on", "retry_backoff_s", NULL
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
	check_int(v, job, "max_attempts", 1, 100, 0);
	check_number(v, job, "retry_backoff_s", 0, 3600, 0, 0);
	check_retry_on(v, job);
}

int validate_batch(const json_t *body, json_t *errors)
{
	static const char *const allowed[] = {
		"name", "concurrency", "priority", "jobs", NULL
	};
	struct verr v = { .errors = errors };
	const json_t *jobs, *job;
	char msg[96];
	size_t i;

	if (!json_is_object(body)) {
		add(&v, "", "must be a JSON object");
		return v.count;
	}
	kind_check_only(body, allowed, kind_err, &v);
	check_name(&v, body);
	check_int(&v, body, "concurrency", 1, 10000, 1);
	check_int(&v, body, "priority", -1000, 1000, 0);
	jobs = json_object_get(body, "jobs");
	if (!jobs) {
		add(&v, "jobs", "is required");
	} else if (!json_is_array(jobs) || json_array_size(jobs) == 0 ||
		   json_array_size(jobs) > (size_t)cfg.max_jobs_per_batch) {
		snprintf(msg, sizeof(msg), "must be an array of 1 to %d jobs",
			 cfg.max_jobs_per_batch);
		add(&v, "jobs", msg);
	} else {
		json_array_foreach(jobs, i, job) {
			snprintf(v.prefix, sizeof(v.prefix), "/jobs/%zu", i);
			check_job(&v, job);
		}
	}
	if (v.count > MAX_ERRORS) {
		v.prefix[0] = 0;
		snprintf(msg, sizeof(msg), "%d more problems not listed",
			 v.count - MAX_ERRORS);
		json_array_append_new(errors, json_pack("{s:s, s:s}",
			"path", "/", "message", msg));
	}
	return v.count;
}
