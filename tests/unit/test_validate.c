/* test_validate.c - unit tests for validate_batch: a valid submission
 * passes, and every kind of problem is reported with its JSON Pointer path,
 * all of them at once, capped at 100 plus one "more problems" entry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "jobpool.h"

/* parse returns the new JSON value of text (any value, so tests can pass
 * non-objects), failing the test if text is not JSON. */
static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *value = json_loads(text, JSON_DECODE_ANY, &jerr);

	cr_assert_not_null(value, "bad JSON in test: %s: %s", text, jerr.text);
	return value;
}

/* check runs validate_batch on body; returns the count and stores the new
 * errors array in *errors (the caller decrefs it). */
static int check(const json_t *body, json_t **errors)
{
	*errors = json_array();
	return validate_batch(body, *errors);
}

/* check_text is check on the JSON text body. */
static int check_text(const char *body, json_t **errors)
{
	json_t *b = parse(body);
	int n = check(b, errors);

	json_decref(b);
	return n;
}

/* message_at returns the message of the first problem reported on path
 * (borrowed from errors), or NULL. */
static const char *message_at(const json_t *errors, const char *path)
{
	const json_t *e;
	size_t i;

	json_array_foreach(errors, i, e) {
		const char *p = json_string_value(json_object_get(e, "path"));

		if (p && strcmp(p, path) == 0)
			return json_string_value(json_object_get(e, "message"));
	}
	return NULL;
}

/* first_path returns the first problem's path, for failure messages. */
static const char *first_path(const json_t *errors)
{
	const char *p = json_string_value(
		json_object_get(json_array_get(errors, 0), "path"));

	return p ? p : "(none)";
}

/* The verdict of one validate_batch call, copied out of the errors array
 * so the array is freed before any assertion can end the test. */
struct verdict {
	int count;
	size_t listed;
	char first[192];        /* the first problem's path */
	int found;              /* a problem on the path asked for */
	char msg[256];          /* its message */
};

static struct verdict verdict_of(const char *body, const char *path)
{
	struct verdict o = { 0 };
	json_t *errors;
	const char *msg;

	o.count = check_text(body, &errors);
	o.listed = json_array_size(errors);
	snprintf(o.first, sizeof(o.first), "%s", first_path(errors));
	msg = path ? message_at(errors, path) : NULL;
	if (msg) {
		o.found = 1;
		snprintf(o.msg, sizeof(o.msg), "%s", msg);
	}
	json_decref(errors);
	return o;
}

static void assert_valid_text(const char *body)
{
	struct verdict o = verdict_of(body, NULL);

	cr_assert_eq(o.count, 0, "%s: unexpected problem at %s", body, o.first);
	cr_assert_eq(o.listed, 0);
}

/* assert_only_problem checks body has exactly one problem, on path, with a
 * message that contains needle (when not NULL). */
static void assert_only_problem(const char *body, const char *path,
				const char *needle)
{
	struct verdict o = verdict_of(body, path);

	cr_assert_eq(o.count, 1, "%s: want 1 problem on %s, got %d (first at %s)",
		     body, path, o.count, o.first);
	cr_assert_eq(o.listed, 1);
	cr_assert(o.found, "%s: want problem on %s, got it on %s", body, path,
		  o.first);
	if (needle)
		cr_assert_not_null(strstr(o.msg, needle),
				   "%s: message at %s is \"%s\", want \"%s\" in it",
				   body, path, o.msg, needle);
}

/* seed_batch returns a new valid batch of n sleep jobs, concurrency 5. */
static json_t *seed_batch(int n)
{
	json_t *jobs = json_array();
	int i;

	for (i = 0; i < n; i++)
		json_array_append_new(jobs, json_pack(
			"{s:s, s:s, s:{s:f}}", "kind", "sleep", "name", "nap",
			"args", "seconds", 0.2));
	return json_pack("{s:s, s:i, s:o}", "name", "seed", "concurrency", 5,
			 "jobs", jobs);
}

/* job_body returns a new body text with one job whose text is job. */
static char *job_body(const char *job)
{
	char *s = NULL;

	cr_assert_geq(asprintf(&s, "{\"jobs\": [%s]}", job), 0);
	return s;
}

static void assert_job_problem(const char *job, const char *path,
			       const char *needle)
{
	char *body = job_body(job);

	assert_only_problem(body, path, needle);
	free(body);
}

static void assert_job_valid(const char *job)
{
	char *body = job_body(job);

	assert_valid_text(body);
	free(body);
}

/* ---- valid submissions ---- */

Test(valid, seed_batch_of_15_sleep_jobs)
{
	json_t *body = seed_batch(15), *errors;

	cr_assert_eq(check(body, &errors), 0, "problem at %s",
		     first_path(errors));
	cr_assert_eq(json_array_size(errors), 0);
	json_decref(errors);
	json_decref(body);
}

Test(valid, every_optional_field)
{
	assert_valid_text("{\"name\": \"all\", \"concurrency\": 10000, "
		"\"priority\": -1000, \"jobs\": [{\"kind\": \"sleep\", "
		"\"args\": {\"seconds\": 0}, \"name\": null, \"timeout_s\": 604800, "
		"\"max_attempts\": 100, \"retry_on\": [0, 255, \"SIGKILL\"], "
		"\"retry_backoff_s\": 0}]}");
	assert_valid_text("{\"name\": null, \"concurrency\": 1, \"priority\": 1000, "
		"\"jobs\": [{\"kind\": \"noop\"}]}");
}

/* A read shows name, concurrency and timeout_s as null when unset; the
 * same body sent back means "absent". */
Test(valid, nulls_a_read_returns)
{
	assert_valid_text("{\"name\": null, \"concurrency\": null, "
		"\"jobs\": [{\"kind\": \"noop\", \"name\": null, "
		"\"timeout_s\": null}]}");
}

Test(valid, integral_reals_count_as_integers)
{
	assert_valid_text("{\"concurrency\": 5.0, \"priority\": 1e2, "
		"\"jobs\": [{\"kind\": \"noop\", \"max_attempts\": 3.0}]}");
}

Test(valid, missing_args_is_an_empty_object)
{
	assert_job_valid("{\"kind\": \"noop\"}");
	assert_job_valid("{\"kind\": \"noop\", \"args\": {}}");
}

/* ---- the body and its top-level fields ---- */

Test(body, not_an_object)
{
	assert_only_problem("[]", "/", "JSON object");
	assert_only_problem("\"jobs\"", "/", "JSON object");
	assert_only_problem("null", "/", "JSON object");
	assert_only_problem("42", "/", "JSON object");
}

Test(body, missing_jobs)
{
	assert_only_problem("{}", "/jobs", "is required");
	assert_only_problem("{\"name\": \"x\"}", "/jobs", "is required");
}

Test(body, jobs_not_an_array)
{
	assert_only_problem("{\"jobs\": {}}", "/jobs", "array of 1 to 100000");
	assert_only_problem("{\"jobs\": \"sleep\"}", "/jobs", "array");
	assert_only_problem("{\"jobs\": null}", "/jobs", "array");
}

Test(body, empty_jobs)
{
	assert_only_problem("{\"jobs\": []}", "/jobs", "array of 1 to 100000");
}

Test(body, too_many_jobs)
{
	cfg.max_jobs_per_batch = 3;
	assert_valid_text("{\"jobs\": [{\"kind\": \"noop\"}, {\"kind\": \"noop\"}, "
		"{\"kind\": \"noop\"}]}");
	assert_only_problem("{\"jobs\": [{\"kind\": \"noop\"}, {\"kind\": \"noop\"}, "
		"{\"kind\": \"noop\"}, {\"kind\": \"noop\"}]}", "/jobs",
		"array of 1 to 3 jobs");
}

Test(body, unknown_top_level_field)
{
	assert_only_problem("{\"jobs\": [{\"kind\": \"noop\"}], \"nmae\": \"x\"}",
			    "/nmae", "is not a known field");
}

/* RFC 6901: "/" in a member name is written "~1" and "~" is written "~0",
 * or the pointer names a different (nested) location. */
Test(body, pointer_escapes_slash_and_tilde)
{
	assert_only_problem("{\"jobs\": [{\"kind\": \"noop\"}], \"a/b\": 1}",
			    "/a~1b", "is not a known field");
	assert_only_problem("{\"jobs\": [{\"kind\": \"noop\"}], \"a~b\": 1}",
			    "/a~0b", "is not a known field");
	assert_job_problem("{\"kind\": \"sleep\", \"args\": {\"seconds\": 1, "
			   "\"x/y\": 2}}", "/jobs/0/args/x~1y", "not a known field");
}

Test(body, concurrency_out_of_range_or_not_integer)
{
	const char *const bad[] = { "0", "10001", "2.5", "\"5\"", "-1", "true" };
	char body[128];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(body, sizeof(body), "{\"concurrency\": %s, \"jobs\": "
			 "[{\"kind\": \"noop\"}]}", bad[i]);
		assert_only_problem(body, "/concurrency",
				    "must be an integer between 1 and 10000");
	}
}

Test(body, priority_out_of_range_or_not_integer)
{
	const char *const bad[] = { "-1001", "1001", "0.5", "\"1\"" };
	char body[128];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(body, sizeof(body), "{\"priority\": %s, \"jobs\": "
			 "[{\"kind\": \"noop\"}]}", bad[i]);
		assert_only_problem(body, "/priority",
				    "must be an integer between -1000 and 1000");
	}
}

Test(body, name_not_a_string)
{
	assert_only_problem("{\"name\": 5, \"jobs\": [{\"kind\": \"noop\"}]}",
			    "/name", "must be a string");
	assert_only_problem("{\"name\": [], \"jobs\": [{\"kind\": \"noop\"}]}",
			    "/name", "must be a string");
}

Test(body, name_length_limit_and_nul)
{
	json_t *body = parse("{\"jobs\": [{\"kind\": \"noop\"}]}"), *errors;
	char name[258];

	memset(name, 'n', sizeof(name));
	json_object_set_new(body, "name", json_stringn(name, 256));
	cr_assert_eq(check(body, &errors), 0, "256 bytes is allowed");
	json_decref(errors);

	json_object_set_new(body, "name", json_stringn(name, 257));
	cr_assert_eq(check(body, &errors), 1);
	cr_assert_not_null(message_at(errors, "/name"));
	json_decref(errors);

	json_object_set_new(body, "name", json_stringn("a\0b", 3));
	cr_assert_eq(check(body, &errors), 1);
	cr_assert_not_null(message_at(errors, "/name"));
	json_decref(errors);
	json_decref(body);
}

/* ---- jobs ---- */

Test(job, not_an_object)
{
	assert_job_problem("1", "/jobs/0", "must be an object");
	assert_job_problem("[]", "/jobs/0", "must be an object");
}

Test(job, index_is_in_the_path)
{
	assert_only_problem("{\"jobs\": [{\"kind\": \"noop\"}, {\"kind\": \"noop\"}, "
		"{\"kind\": \"noop\", \"bogus\": 1}]}", "/jobs/2/bogus", NULL);
}

Test(job, unknown_field)
{
	assert_job_problem("{\"kind\": \"noop\", \"bogus\": 1}", "/jobs/0/bogus",
			   "is not a known field");
}

Test(job, kind_missing)
{
	assert_job_problem("{\"args\": {}}", "/jobs/0/kind", "is required");
}

Test(job, kind_unknown)
{
	const char *const list = "must be one of: sleep, noop, echo, primes, matmul, fail";

	assert_job_problem("{\"kind\": \"nope\"}", "/jobs/0/kind", list);
	assert_job_problem("{\"kind\": 7}", "/jobs/0/kind", list);
	assert_job_problem("{\"kind\": \"Sleep\"}", "/jobs/0/kind", list);
}

Test(job, kind_command_is_off)
{
	assert_job_problem("{\"kind\": \"command\", \"args\": {\"argv\": [\"true\"]}}",
			   "/jobs/0/kind", "--allow-command");
}

Test(job, name_not_a_string)
{
	assert_job_problem("{\"kind\": \"noop\", \"name\": 3}", "/jobs/0/name",
			   "must be a string");
}

Test(job, args_not_an_object)
{
	assert_job_problem("{\"kind\": \"sleep\", \"args\": [1]}", "/jobs/0/args",
			   "must be an object");
	assert_job_problem("{\"kind\": \"noop\", \"args\": \"x\"}", "/jobs/0/args",
			   "must be an object");
	assert_job_problem("{\"kind\": \"noop\", \"args\": null}", "/jobs/0/args",
			   "must be an object");
}

Test(job, per_kind_arg_errors)
{
	assert_job_problem("{\"kind\": \"sleep\", \"args\": {\"seconds\": -1}}",
			   "/jobs/0/args/seconds", "between 0 and 86400");
	assert_job_problem("{\"kind\": \"sleep\", \"args\": {\"seconds\": \"1\"}}",
			   "/jobs/0/args/seconds", "between 0 and 86400");
	assert_job_problem("{\"kind\": \"sleep\"}", "/jobs/0/args/seconds",
			   "is required");
	assert_job_problem("{\"kind\": \"sleep\", \"args\": {\"seconds\": 1, \"x\": 2}}",
			   "/jobs/0/args/x", "is not a known field");
	assert_job_problem("{\"kind\": \"echo\", \"args\": {}}",
			   "/jobs/0/args/value", "is required");
	assert_job_problem("{\"kind\": \"noop\", \"args\": {\"a\": 1}}",
			   "/jobs/0/args/a", "is not a known field");
}

Test(job, args_not_checked_for_an_unknown_kind)
{
	assert_job_problem("{\"kind\": \"nope\", \"args\": {\"anything\": 1}}",
			   "/jobs/0/kind", NULL);
}

Test(job, timeout_s_must_be_positive)
{
	assert_job_problem("{\"kind\": \"noop\", \"timeout_s\": 0}",
			   "/jobs/0/timeout_s", "greater than 0");
	assert_job_problem("{\"kind\": \"noop\", \"timeout_s\": -1}",
			   "/jobs/0/timeout_s", "greater than 0");
	assert_job_problem("{\"kind\": \"noop\", \"timeout_s\": 604801}",
			   "/jobs/0/timeout_s", "at most 604800");
	assert_job_problem("{\"kind\": \"noop\", \"timeout_s\": \"5\"}",
			   "/jobs/0/timeout_s", NULL);
	assert_job_valid("{\"kind\": \"noop\", \"timeout_s\": 0.001}");
}

Test(job, max_attempts_range)
{
	assert_job_problem("{\"kind\": \"noop\", \"max_attempts\": 0}",
			   "/jobs/0/max_attempts", "between 1 and 100");
	assert_job_problem("{\"kind\": \"noop\", \"max_attempts\": 101}",
			   "/jobs/0/max_attempts", "between 1 and 100");
	assert_job_problem("{\"kind\": \"noop\", \"max_attempts\": 1.5}",
			   "/jobs/0/max_attempts", "between 1 and 100");
	assert_job_valid("{\"kind\": \"noop\", \"max_attempts\": 1}");
	assert_job_valid("{\"kind\": \"noop\", \"max_attempts\": 100}");
}

Test(job, retry_backoff_s_range)
{
	assert_job_problem("{\"kind\": \"noop\", \"retry_backoff_s\": -1}",
			   "/jobs/0/retry_backoff_s", "of at least 0");
	assert_job_problem("{\"kind\": \"noop\", \"retry_backoff_s\": 3601}",
			   "/jobs/0/retry_backoff_s", "at most 3600");
	assert_job_valid("{\"kind\": \"noop\", \"retry_backoff_s\": 0.5}");
}

Test(job, retry_on_entries)
{
	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": [1, \"NOPE\"]}",
			   "/jobs/0/retry_on/1", "signal name");
	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": [256]}",
			   "/jobs/0/retry_on/0", "0..255");
	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": [-1]}",
			   "/jobs/0/retry_on/0", NULL);
	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": [2.5]}",
			   "/jobs/0/retry_on/0", NULL);
	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": [\"sigkill\"]}",
			   "/jobs/0/retry_on/0", NULL);
	assert_job_valid("{\"kind\": \"noop\", \"retry_on\": [\"SIGKILL\", 3]}");
	assert_job_valid("{\"kind\": \"noop\", \"retry_on\": []}");
}

Test(job, retry_on_not_an_array_or_too_long)
{
	char job[512];
	int n, i;

	assert_job_problem("{\"kind\": \"noop\", \"retry_on\": 3}",
			   "/jobs/0/retry_on", "array");
	n = snprintf(job, sizeof(job), "{\"kind\": \"noop\", \"retry_on\": [1");
	for (i = 1; i < 65; i++)
		n += snprintf(job + n, sizeof(job) - (size_t)n, ", 1");
	snprintf(job + n, sizeof(job) - (size_t)n, "]}");
	assert_job_problem(job, "/jobs/0/retry_on", "at most 64");
}

/* echo {"value": "<n bytes>"} serializes to n + 12 bytes. */
static json_t *echo_body(size_t n)
{
	char *s = malloc(n + 1);
	json_t *body;

	cr_assert_not_null(s);
	memset(s, 'v', n);
	s[n] = 0;
	body = json_pack("{s:[{s:s, s:{s:s}}]}", "jobs", "kind", "echo",
			 "args", "value", s);
	free(s);
	return body;
}

Test(job, args_over_64_kib_rejected)
{
	json_t *body, *errors;

	body = echo_body(65536 - 12);
	cr_assert_eq(check(body, &errors), 0, "exactly 65536 bytes is allowed");
	json_decref(errors);
	json_decref(body);

	body = echo_body(65536 - 11);
	cr_assert_eq(check(body, &errors), 1);
	cr_assert_not_null(strstr(message_at(errors, "/jobs/0/args"), "65536"));
	json_decref(errors);
	json_decref(body);
}

/* ---- many problems ---- */

Test(many, all_problems_in_one_body_are_listed)
{
	json_t *errors;
	const char *const paths[] = {
		"/bogus", "/concurrency", "/priority", "/name",
		"/jobs/0/kind", "/jobs/1/args/seconds", "/jobs/1/max_attempts",
		"/jobs/1/timeout_s", "/jobs/2", "/jobs/3/retry_on/0",
	};
	size_t i;
	int n;

	n = check_text("{\"bogus\": 1, \"concurrency\": 0, \"priority\": 5000, "
		"\"name\": 1, \"jobs\": ["
		"{\"kind\": \"nope\"}, "
		"{\"kind\": \"sleep\", \"args\": {\"seconds\": -1}, "
		"\"max_attempts\": 0, \"timeout_s\": 0}, "
		"7, "
		"{\"kind\": \"noop\", \"retry_on\": [\"NOPE\"]}]}", &errors);
	cr_assert_eq(n, 10);
	cr_assert_eq(json_array_size(errors), 10);
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		cr_assert_not_null(message_at(errors, paths[i]),
				   "no problem reported at %s", paths[i]);
	json_decref(errors);
}

/* bad_jobs returns a new body of n noop jobs with one unknown field each. */
static json_t *bad_jobs(int n)
{
	json_t *jobs = json_array();
	int i;

	for (i = 0; i < n; i++)
		json_array_append_new(jobs, json_pack("{s:s, s:i}", "kind",
						      "noop", "x", 1));
	return json_pack("{s:o}", "jobs", jobs);
}

Test(many, one_hundred_problems_fit)
{
	json_t *body = bad_jobs(100), *errors;

	cr_assert_eq(check(body, &errors), 100);
	cr_assert_eq(json_array_size(errors), 100);
	cr_assert_not_null(message_at(errors, "/jobs/99/x"));
	cr_assert_null(message_at(errors, "/"));
	json_decref(errors);
	json_decref(body);
}

Test(many, more_than_one_hundred_are_capped)
{
	json_t *body = bad_jobs(150), *errors, *last;

	cr_assert_eq(check(body, &errors), 150, "the count is of all problems");
	cr_assert_eq(json_array_size(errors), 101);
	cr_assert_not_null(message_at(errors, "/jobs/99/x"));
	cr_assert_null(message_at(errors, "/jobs/100/x"));
	last = json_array_get(errors, 100);
	cr_assert_str_eq(json_string_value(json_object_get(last, "path")), "/");
	cr_assert_str_eq(json_string_value(json_object_get(last, "message")),
			 "50 more problems not listed");
	json_decref(errors);
	json_decref(body);
}

Test(many, one_over_the_cap)
{
	json_t *body = bad_jobs(101), *errors, *last;

	cr_assert_eq(check(body, &errors), 101);
	cr_assert_eq(json_array_size(errors), 101);
	last = json_array_get(errors, 100);
	cr_assert_str_eq(json_string_value(json_object_get(last, "message")),
			 "1 more problems not listed");
	json_decref(errors);
	json_decref(body);
}
