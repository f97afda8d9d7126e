/* test_kinds.c - unit tests for the job kinds: the table, the validate
 * helpers, every kind's validate, and every kind's run.  The "fail" kind
 * ends its process, which criterion runs in a child of its own. */
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <criterion/criterion.h>

#include "kinds.h"

#define MAX_PROBLEMS 8

/* The problems one validate call reported, in order. */
struct problems {
	int count;
	char field[MAX_PROBLEMS][64];
	char msg[MAX_PROBLEMS][128];
};

static void collect(void *ctx, const char *field, const char *msg)
{
	struct problems *p = ctx;

	if (p->count < MAX_PROBLEMS) {
		snprintf(p->field[p->count], sizeof p->field[0], "%s", field);
		snprintf(p->msg[p->count], sizeof p->msg[0], "%s", msg);
	}
	p->count++;
}

/* parse returns the new JSON value of text, failing the test if it is not
 * valid JSON.  Decoding accepts any value so tests can pass non-objects. */
static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *value = json_loads(text, JSON_DECODE_ANY, &jerr);

	cr_assert_not_null(value, "bad JSON in test: %s: %s", text, jerr.text);
	return value;
}

/* validate runs kind's validate on args_json and returns what it reported. */
static struct problems validate(const char *kind, const char *args_json)
{
	const struct kind *k = kind_find(kind);
	struct problems p = { 0 };
	json_t *args = parse(args_json);

	cr_assert_not_null(k, "kind %s is not registered", kind);
	k->validate(args, collect, &p);
	json_decref(args);
	return p;
}

/* reported returns the message reported for field, or NULL. */
static const char *reported(const struct problems *p, const char *field)
{
	int i;

	for (i = 0; i < p->count && i < MAX_PROBLEMS; i++)
		if (strcmp(p->field[i], field) == 0)
			return p->msg[i];
	return NULL;
}

static void assert_valid(const char *kind, const char *args_json)
{
	struct problems p = validate(kind, args_json);

	cr_assert_eq(p.count, 0, "%s %s: unexpected problem: %s %s", kind,
		     args_json, p.field[0], p.msg[0]);
}

/* assert_only_problem checks args_json gets exactly one problem, on field. */
static void assert_only_problem(const char *kind, const char *args_json,
				const char *field)
{
	struct problems p = validate(kind, args_json);

	cr_assert_eq(p.count, 1, "%s %s: want 1 problem on %s, got %d (first: %s %s)",
		     kind, args_json, field, p.count, p.field[0], p.msg[0]);
	cr_assert_str_eq(p.field[0], field, "%s %s", kind, args_json);
}

/* run returns the new result of running kind on args_json, failing the
 * test if the kind reports an error. */
static json_t *run(const char *kind, const char *args_json)
{
	const struct kind *k = kind_find(kind);
	json_t *args = parse(args_json);
	const char *error = NULL;
	json_t *result;

	cr_assert_not_null(k, "kind %s is not registered", kind);
	result = k->run(args, &error);
	json_decref(args);
	cr_assert_not_null(result, "%s %s failed: %s", kind, args_json,
			   error ? error : "(no error)");
	return result;
}

/* run_number runs kind and returns the number member name of its result. */
static double run_number(const char *kind, const char *args_json,
			 const char *name)
{
	json_t *result = run(kind, args_json);
	json_t *member = json_object_get(result, name);
	double value;

	cr_assert(json_is_number(member), "%s %s: no number %s", kind,
		  args_json, name);
	value = json_number_value(member);
	json_decref(result);
	return value;
}

/* table */

Test(table, finds_every_kind_by_name)
{
	const char *names[] = { "sleep", "noop", "echo", "primes", "matmul", "fail" };
	size_t i;

	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		const struct kind *k = kind_find(names[i]);

		cr_assert_not_null(k, "%s", names[i]);
		cr_assert_str_eq(k->name, names[i]);
		cr_assert_not_null(k->validate);
		cr_assert_not_null(k->run);
	}
}

Test(table, unknown_kind_is_null)
{
	cr_assert_null(kind_find("nope"));
	cr_assert_null(kind_find(""));
	cr_assert_null(kind_find("Sleep"));
	cr_assert_null(kind_find(NULL));
}

Test(table, names_lists_all_six)
{
	char buf[128];

	kind_names(buf, sizeof buf);
	cr_assert_str_eq(buf, "sleep, noop, echo, primes, matmul, fail");
}

Test(table, names_truncates_safely)
{
	char buf[8];

	memset(buf, 'x', sizeof buf);
	kind_names(buf, sizeof buf);
	cr_assert_str_eq(buf, "sleep, ");
	kind_names(buf, 0); /* must not write */
	cr_assert_str_eq(buf, "sleep, ");
}

/* util */

static const char *const only_a_b[] = { "a", "b", NULL };

Test(util, check_only_reports_each_unknown_member)
{
	struct problems p = { 0 };
	json_t *args = parse("{\"a\": 1, \"x\": 2, \"b\": 3, \"y\": 4}");

	cr_assert_eq(kind_check_only(args, only_a_b, collect, &p), 2);
	json_decref(args);
	cr_assert_eq(p.count, 2);
	cr_assert_str_eq(reported(&p, "x"), "is not a known field");
	cr_assert_str_eq(reported(&p, "y"), "is not a known field");
}

Test(util, check_only_accepts_listed_and_empty)
{
	struct problems p = { 0 };
	json_t *args = parse("{\"a\": 1, \"b\": null}");
	json_t *empty = json_object();

	cr_assert_eq(kind_check_only(args, only_a_b, collect, &p), 0);
	cr_assert_eq(kind_check_only(empty, only_a_b, collect, &p), 0);
	cr_assert_eq(p.count, 0);
	json_decref(args);
	json_decref(empty);
}

Test(util, check_only_rejects_non_object)
{
	struct problems p = { 0 };
	json_t *args = parse("[1]");

	cr_assert_eq(kind_check_only(args, only_a_b, collect, &p), 1);
	cr_assert_str_eq(p.field[0], "");
	json_decref(args);
}

/* number reads member "v" of args_json with kind_number. */
static int number(const char *args_json, int required, int integer,
		  double *out, struct problems *p)
{
	json_t *args = parse(args_json);
	int rc = kind_number(args, "v", required, 0, 86400, integer, out,
			     collect, p);

	json_decref(args);
	return rc;
}

Test(util, number_accepts_integers_and_reals)
{
	struct problems p = { 0 };
	double out = -1;

	cr_assert_eq(number("{\"v\": 3}", 1, 0, &out, &p), 0);
	cr_assert_eq(out, 3.0);
	cr_assert_eq(number("{\"v\": 2.5}", 1, 0, &out, &p), 0);
	cr_assert_eq(out, 2.5);
	cr_assert_eq(number("{\"v\": 86400}", 1, 1, &out, &p), 0);
	cr_assert_eq(number("{\"v\": 3.0}", 1, 1, &out, &p), 0);
	cr_assert_eq(out, 3.0);
	cr_assert_eq(p.count, 0);
}

Test(util, number_rejects_fractions_for_integers)
{
	struct problems p = { 0 };
	double out = -1;

	cr_assert_eq(number("{\"v\": 3.5}", 1, 1, &out, &p), -1);
	cr_assert_eq(out, -1);
	cr_assert_eq(p.count, 1);
	cr_assert_str_eq(p.msg[0], "must be an integer between 0 and 86400");
}

Test(util, number_rejects_other_types_and_range)
{
	const char *bad[] = { "{\"v\": true}", "{\"v\": false}", "{\"v\": \"1\"}",
			      "{\"v\": null}", "{\"v\": [1]}", "{\"v\": {}}",
			      "{\"v\": -0.001}", "{\"v\": 86400.5}", "{\"v\": 1e300}" };
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct problems p = { 0 };
		double out = -1;

		cr_assert_eq(number(bad[i], 1, 0, &out, &p), -1, "%s", bad[i]);
		cr_assert_eq(p.count, 1, "%s", bad[i]);
		cr_assert_str_eq(p.field[0], "v");
		cr_assert_str_eq(p.msg[0], "must be a number between 0 and 86400");
		cr_assert_eq(out, -1, "%s", bad[i]);
	}
}

Test(util, number_missing)
{
	struct problems p = { 0 };
	double out = -1;

	cr_assert_eq(number("{}", 0, 0, &out, &p), 0);
	cr_assert_eq(out, -1, "optional and absent leaves out untouched");
	cr_assert_eq(p.count, 0);
	cr_assert_eq(number("{}", 1, 0, &out, &p), -1);
	cr_assert_eq(p.count, 1);
	cr_assert_str_eq(p.field[0], "v");
	cr_assert_str_eq(p.msg[0], "is required");
}

Test(util, number_prints_large_bounds_plainly)
{
	struct problems p = validate("matmul", "{\"n\": 1, \"seed\": -1}");

	cr_assert_eq(p.count, 1);
	cr_assert_str_eq(p.msg[0], "must be an integer between 0 and 4294967295");
}

/* sleep */

Test(sleep, validate_accepts_good_args)
{
	assert_valid("sleep", "{\"seconds\": 0}");
	assert_valid("sleep", "{\"seconds\": 0.5}");
	assert_valid("sleep", "{\"seconds\": 1}");
	assert_valid("sleep", "{\"seconds\": 86400}");
}

Test(sleep, validate_reports_bad_fields)
{
	assert_only_problem("sleep", "{}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": -1}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": 86400.001}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": \"1\"}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": true}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": null}", "seconds");
	assert_only_problem("sleep", "{\"seconds\": 1, \"ms\": 5}", "ms");
}

Test(sleep, validate_reports_every_problem)
{
	struct problems p = validate("sleep", "{\"secs\": 1, \"x\": 2}");

	cr_assert_eq(p.count, 3);
	cr_assert_str_eq(reported(&p, "secs"), "is not a known field");
	cr_assert_str_eq(reported(&p, "x"), "is not a known field");
	cr_assert_str_eq(reported(&p, "seconds"), "is required");
}

Test(sleep, run_sleeps_at_least_as_asked)
{
	double ms = run_number("sleep", "{\"seconds\": 0.01}", "slept_ms");

	cr_assert_geq(ms, 10.0);
	cr_assert_lt(ms, 5000.0);
	cr_assert_eq(ms, round(ms * 1e3) / 1e3, "rounded to 3 decimals");
}

Test(sleep, run_zero_and_integer_seconds)
{
	cr_assert_geq(run_number("sleep", "{\"seconds\": 0}", "slept_ms"), 0.0);
	cr_assert_geq(run_number("sleep", "{\"seconds\": 0.0}", "slept_ms"), 0.0);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	alarms++;
}

/* A handled signal interrupts the sleep with EINTR; the job must still
 * sleep its full time rather than return early. */
Test(sleep, run_survives_signals)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	struct itimerval every_5ms = { { 0, 5000 }, { 0, 5000 } };
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	double ms;

	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
	cr_assert_eq(setitimer(ITIMER_REAL, &every_5ms, NULL), 0);
	ms = run_number("sleep", "{\"seconds\": 0.1}", "slept_ms");
	setitimer(ITIMER_REAL, &off, NULL);
	cr_assert_gt(alarms, 5, "only %d alarms", (int)alarms);
	cr_assert_geq(ms, 100.0);
}

/* noop */

Test(noop, validate)
{
	assert_valid("noop", "{}");
	assert_only_problem("noop", "{\"a\": 1}", "a");
	cr_assert_eq(validate("noop", "{\"a\": 1, \"b\": null}").count, 2);
}

Test(noop, run_returns_empty_object)
{
	json_t *result = run("noop", "{}");

	cr_assert(json_is_object(result));
	cr_assert_eq(json_object_size(result), 0);
	json_decref(result);
}

/* echo */

Test(echo, validate)
{
	assert_valid("echo", "{\"value\": null}");
	assert_valid("echo", "{\"value\": false}");
	assert_valid("echo", "{\"value\": {\"a\": [1, 2.5, \"x\", {}]}}");
	assert_only_problem("echo", "{}", "value");
	assert_only_problem("echo", "{\"value\": 1, \"extra\": 2}", "extra");
}

Test(echo, run_returns_an_equal_copy)
{
	const char *values[] = { "null", "true", "0", "-2.5", "\"text \\u00e9\"", "[]", "{}",
				 "{\"a\": [1, {\"b\": [null, false, \"c\"]}], \"d\": {\"e\": {}}}" };
	size_t i;

	for (i = 0; i < sizeof values / sizeof values[0]; i++) {
		char args_json[256];
		json_t *want = parse(values[i]);
		json_t *result;

		snprintf(args_json, sizeof args_json, "{\"value\": %s}", values[i]);
		result = run("echo", args_json);
		cr_assert_eq(json_object_size(result), 1);
		cr_assert(json_equal(json_object_get(result, "value"), want),
			  "echo %s", values[i]);
		json_decref(want);
		json_decref(result);
	}
}

Test(echo, result_does_not_alias_args)
{
	const struct kind *k = kind_find("echo");
	json_t *args = parse("{\"value\": {\"a\": 1}}");
	const char *error = NULL;
	json_t *result = k->run(args, &error);

	cr_assert_not_null(result);
	cr_assert_neq(json_object_get(result, "value"), json_object_get(args, "value"));
	json_decref(args);
	json_decref(result);
}

/* primes */

Test(primes, validate)
{
	assert_valid("primes", "{\"below\": 0}");
	assert_valid("primes", "{\"below\": 1000000000}");
	assert_valid("primes", "{\"below\": 100.0}");
	assert_only_problem("primes", "{}", "below");
	assert_only_problem("primes", "{\"below\": -1}", "below");
	assert_only_problem("primes", "{\"below\": 1000000001}", "below");
	assert_only_problem("primes", "{\"below\": 2.5}", "below");
	assert_only_problem("primes", "{\"below\": \"10\"}", "below");
	assert_only_problem("primes", "{\"below\": true}", "below");
	assert_only_problem("primes", "{\"below\": 10, \"above\": 1}", "above");
}

static double primes_below(long long below)
{
	char args_json[64];

	snprintf(args_json, sizeof args_json, "{\"below\": %lld}", below);
	return run_number("primes", args_json, "count");
}

Test(primes, known_counts)
{
	cr_assert_eq(primes_below(0), 0);
	cr_assert_eq(primes_below(1), 0);
	cr_assert_eq(primes_below(2), 0);
	cr_assert_eq(primes_below(3), 1);
	cr_assert_eq(primes_below(4), 2);
	cr_assert_eq(primes_below(100), 25);
	cr_assert_eq(primes_below(101), 25, "below is exclusive");
	cr_assert_eq(primes_below(102), 26);
	cr_assert_eq(primes_below(1000000), 78498);
	cr_assert_eq(primes_below(10000000), 664579);
}

Test(primes, count_is_an_integer)
{
	json_t *result = run("primes", "{\"below\": 100}");

	cr_assert(json_is_integer(json_object_get(result, "count")));
	json_decref(result);
}

/* naive_counts fills counts[b] with the primes below b, for b < size. */
static void naive_counts(int *counts, int size)
{
	char *composite = calloc((size_t)size, 1);
	int i, j, count = 0;

	cr_assert_not_null(composite);
	for (i = 0; i < size; i++) {
		counts[i] = count;
		if (i < 2 || composite[i])
			continue;
		count++;
		for (j = 2 * i; j < size; j += i)
			composite[j] = 1;
	}
	free(composite);
}

/* The sieve works in segments of 65536 odd numbers starting at 3; check
 * small values and both sides of the first segment boundaries. */
Test(primes, matches_naive_sieve_near_segment_edges)
{
	enum { SIZE = 4 * 131072 + 16 };
	int *counts = malloc(SIZE * sizeof *counts);
	int b, edge;

	cr_assert_not_null(counts);
	naive_counts(counts, SIZE);
	for (b = 0; b < 300; b++)
		cr_assert_eq(primes_below(b), counts[b], "below %d", b);
	for (edge = 3 + 131072; edge < SIZE - 8; edge += 131072)
		for (b = edge - 5; b <= edge + 5; b++)
			cr_assert_eq(primes_below(b), counts[b], "below %d", b);
	free(counts);
}

/* matmul */

Test(matmul, validate)
{
	struct problems p;

	assert_valid("matmul", "{\"n\": 1}");
	assert_valid("matmul", "{\"n\": 2048, \"seed\": 4294967295}");
	assert_valid("matmul", "{\"n\": 3.0, \"seed\": 0}");
	assert_only_problem("matmul", "{}", "n");
	assert_only_problem("matmul", "{\"n\": 0}", "n");
	assert_only_problem("matmul", "{\"n\": 2049}", "n");
	assert_only_problem("matmul", "{\"n\": 1.5}", "n");
	assert_only_problem("matmul", "{\"n\": \"4\"}", "n");
	assert_only_problem("matmul", "{\"n\": 4, \"seed\": 4294967296}", "seed");
	assert_only_problem("matmul", "{\"n\": 4, \"seed\": 0.5}", "seed");
	assert_only_problem("matmul", "{\"n\": 4, \"seed\": null}", "seed");
	assert_only_problem("matmul", "{\"n\": 4, \"m\": 4}", "m");
	p = validate("matmul", "{\"n\": 0, \"seed\": -1, \"z\": 1}");
	cr_assert_eq(p.count, 3);
	cr_assert_not_null(reported(&p, "n"));
	cr_assert_not_null(reported(&p, "seed"));
	cr_assert_str_eq(reported(&p, "z"), "is not a known field");
}

Test(matmul, deterministic_per_seed)
{
	double a = run_number("matmul", "{\"n\": 40, \"seed\": 7}", "checksum");
	double b = run_number("matmul", "{\"n\": 40, \"seed\": 7}", "checksum");
	double c = run_number("matmul", "{\"n\": 40, \"seed\": 8}", "checksum");
	double d = run_number("matmul", "{\"n\": 40}", "checksum");
	double e = run_number("matmul", "{\"n\": 40, \"seed\": 1}", "checksum");

	cr_assert_eq(a, b);
	cr_assert_neq(a, c);
	cr_assert_eq(d, e, "the default seed is 1");
	cr_assert_gt(a, 0);
}

/* splitmix64 mirrors matmul.c's generator: the checksums are part of the
 * API, so this test pins the generator down independently. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

Test(matmul, n1_checksum_is_the_product)
{
	uint64_t state = 12345;
	double a = (double)(splitmix64(&state) >> 11) * 0x1.0p-53;
	double b = (double)(splitmix64(&state) >> 11) * 0x1.0p-53;
	double want = round(a * b * 1e6) / 1e6;

	cr_assert_eq(run_number("matmul", "{\"n\": 1, \"seed\": 12345}", "checksum"), want);
}

Test(matmul, checksum_is_rounded_to_6_decimals)
{
	double sum = run_number("matmul", "{\"n\": 17, \"seed\": 3}", "checksum");

	cr_assert_eq(sum, round(sum * 1e6) / 1e6);
}

/* fail: each of these ends the test's own process, as it would a worker. */

Test(fail, validate)
{
	assert_valid("fail", "{\"mode\": \"exit\"}");
	assert_valid("fail", "{\"mode\": \"exit\", \"code\": 0}");
	assert_valid("fail", "{\"mode\": \"exit\", \"code\": 255}");
	assert_valid("fail", "{\"mode\": \"exit\", \"code\": 7.0}");
	assert_valid("fail", "{\"mode\": \"crash\"}");
	assert_valid("fail", "{\"mode\": \"hang\"}");
	assert_only_problem("fail", "{}", "mode");
	assert_only_problem("fail", "{\"mode\": \"boom\"}", "mode");
	assert_only_problem("fail", "{\"mode\": 1}", "mode");
	assert_only_problem("fail", "{\"mode\": null}", "mode");
	assert_only_problem("fail", "{\"mode\": \"crash\", \"code\": 1}", "code");
	assert_only_problem("fail", "{\"mode\": \"hang\", \"code\": 1}", "code");
	assert_only_problem("fail", "{\"mode\": \"exit\", \"code\": 256}", "code");
	assert_only_problem("fail", "{\"mode\": \"exit\", \"code\": -1}", "code");
	assert_only_problem("fail", "{\"mode\": \"exit\", \"code\": 1.5}", "code");
	assert_only_problem("fail", "{\"mode\": \"exit\", \"code\": true}", "code");
	assert_only_problem("fail", "{\"mode\": \"exit\", \"signal\": 9}", "signal");
}

Test(fail, validate_messages)
{
	struct problems p = validate("fail", "{\"mode\": \"crash\", \"code\": 1}");

	cr_assert_str_eq(p.msg[0], "is only allowed with mode exit");
	p = validate("fail", "{}");
	cr_assert_str_eq(p.msg[0], "is required");
}

Test(fail, exit_with_code, .exit_code = 7)
{
	json_t *result = run("fail", "{\"mode\": \"exit\", \"code\": 7}");

	json_decref(result);
	cr_assert_fail("fail exit returned");
}

Test(fail, exit_default_code_is_1, .exit_code = 1)
{
	json_t *result = run("fail", "{\"mode\": \"exit\"}");

	json_decref(result);
	cr_assert_fail("fail exit returned");
}

Test(fail, crash, .signal = SIGSEGV)
{
	json_t *result = run("fail", "{\"mode\": \"crash\"}");

	json_decref(result);
	cr_assert_fail("fail crash returned");
}
