/* test_kinds.c - unit tests for the job kinds: the table, the validate
 * helpers, every kind's validate, and every kind's run.  The "fail" kind
 * ends its process, which criterion runs in a child of its own; so does
 * every test, which lets the command tests make their process a child
 * subreaper, as the worker is. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

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
	struct kind_job job = { .channel_fd = -1, .exit_code = -1 };
	json_t *result;

	cr_assert_not_null(k, "kind %s is not registered", kind);
	result = k->run(args, &job);
	json_decref(args);
	cr_assert_not_null(result, "%s %s failed: %s", kind, args_json,
			   job.error ? job.error : "(no error)");
	cr_assert_null(job.error, "%s %s: error with a result: %s", kind,
		       args_json, job.error);
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
	const char *names[] = { "sleep", "noop", "echo", "primes", "matmul", "fail",
				"command" };
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

Test(table, names_lists_all_seven)
{
	char buf[128];

	kind_names(buf, sizeof buf);
	cr_assert_str_eq(buf, "sleep, noop, echo, primes, matmul, fail, command");
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

/* utf8_is converts len bytes with cap and checks the text and flag. */
static void utf8_is(const char *in, size_t len, size_t cap, const char *want,
		    int want_truncated)
{
	int truncated = 0;
	json_t *s = kind_utf8_string(in, len, cap, &truncated);

	cr_assert_not_null(s);
	cr_assert_eq(json_string_length(s), strlen(want));
	cr_assert_str_eq(json_string_value(s), want);
	cr_assert_eq(truncated, want_truncated);
	json_decref(s);
}

Test(util, utf8_string_keeps_valid_text)
{
	utf8_is(NULL, 0, 10, "", 0);
	utf8_is("plain", 5, 5, "plain", 0);
	utf8_is("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, 100,
		"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 0);
}

Test(util, utf8_string_replaces_each_bad_byte)
{
	utf8_is("a\0b", 3, 100, "a\xef\xbf\xbd" "b", 0);
	utf8_is("\xff\xfe", 2, 100, "\xef\xbf\xbd\xef\xbf\xbd", 0);
	utf8_is("\xe2\x82", 2, 100, "\xef\xbf\xbd\xef\xbf\xbd", 0); /* cut short */
	utf8_is("\xf4\x90\x80\x80", 4, 100, /* past U+10FFFF */
		"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 0);
}

Test(util, utf8_string_cuts_at_a_character)
{
	utf8_is("ab\xf0\x9f\x98\x80", 6, 5, "ab", 1);
	utf8_is("ab\xf0\x9f\x98\x80", 6, 6, "ab\xf0\x9f\x98\x80", 0);
	utf8_is("a\xff", 2, 3, "a", 1);
	utf8_is("abc", 3, 0, "", 1);
}

/* utf8_in_pieces feeds in to kind_utf8_text piece bytes at a time, as a
 * running command's reads arrive, and checks the text is what
 * kind_utf8_string makes of it all at once. */
static void utf8_in_pieces(const char *in, size_t len, size_t cap,
			   size_t piece)
{
	char out[256];
	size_t used = 0, at = 0, avail = 0, took;
	int cut = 0, truncated = 0;
	json_t *whole = kind_utf8_string(in, len, cap, &truncated);

	cr_assert(len * 3 < sizeof(out));
	while (at < len && !cut) {
		avail = avail + piece < len ? avail + piece : len;
		took = kind_utf8_text(in + at, avail - at, out + used, &used,
				      cap, avail == len, &cut);
		at += took;
		if (avail == len && !took)
			break;
	}
	cr_assert_eq(used, json_string_length(whole), "piece %zu cap %zu",
		     piece, cap);
	cr_assert(memcmp(out, json_string_value(whole), used) == 0);
	cr_assert_eq(cut, truncated);
	json_decref(whole);
}

Test(util, utf8_text_in_pieces_is_the_whole_text)
{
	static const char in[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
		"\xe0\x80\xff\xc3" "b\xf0\x9f\x98" "\0c\xe2\x82";
	size_t piece, cap;

	for (piece = 1; piece <= sizeof(in); piece++)
		for (cap = 0; cap <= 3 * sizeof(in); cap += 5)
			utf8_in_pieces(in, sizeof(in) - 1, cap, piece);
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
	struct kind_job job = { .channel_fd = -1, .exit_code = -1 };
	json_t *result = k->run(args, &job);

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

/* command */

static void become_subreaper(void)
{
	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
}

TestSuite(command, .init = become_subreaper, .timeout = 60);

/* A command job as the worker sets it up, without a channel. */
static struct kind_job command_job(void)
{
	return (struct kind_job){ .grace_ms = 2000, .output_cap = 1024 * 1024,
				  .channel_fd = -1, .exit_code = -1 };
}

/* run_command runs the command kind on args_json for job and returns its
 * new result, which may be NULL. */
static json_t *run_command(const char *args_json, struct kind_job *job)
{
	json_t *args = parse(args_json);
	struct problems p = { 0 };
	json_t *result;

	kind_find("command")->validate(args, collect, &p);
	cr_assert_eq(p.count, 0, "%s: %s %s", args_json, p.field[0], p.msg[0]);
	result = kind_find("command")->run(args, job);
	json_decref(args);
	return result;
}

/* output_of returns the captured stream name ("stdout", "stderr") of job
 * (borrowed), failing the test when there is none. */
static const char *output_of(const struct kind_job *job, const char *name)
{
	const char *text = json_string_value(json_object_get(job->output, name));

	cr_assert_not_null(text, "no %s in the output", name);
	return text;
}

static int truncated_of(const struct kind_job *job)
{
	return json_is_true(json_object_get(job->output, "truncated"));
}

static void job_free(struct kind_job *job, json_t *result)
{
	json_decref(result);
	json_decref(job->output);
}

/* exit_code_of returns result's exit_code, or -1 when it is null. */
static int exit_code_of(const json_t *result)
{
	const json_t *code = json_object_get(result, "exit_code");

	cr_assert(json_is_integer(code) || json_is_null(code));
	return code && json_is_integer(code) ? (int)json_integer_value(code) : -1;
}

static long long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* stat_of reads the state and parent of process pid from /proc.  Returns
 * 0, or -1 when it is gone. */
static int stat_of(const char *pid, char *state, pid_t *ppid, char *comm,
		   size_t comm_size)
{
	char path[300], buf[512], *open_paren, *close_paren;
	int fd, parent;
	ssize_t n;

	snprintf(path, sizeof path, "/proc/%s/stat", pid);
	fd = open(path, O_RDONLY);
	if (fd == -1)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	open_paren = strchr(buf, '(');
	close_paren = strrchr(buf, ')');
	if (!open_paren || !close_paren ||
	    sscanf(close_paren, ") %c %d", state, &parent) != 2)
		return -1;
	snprintf(comm, comm_size, "%.*s", (int)(close_paren - open_paren - 1),
		 open_paren + 1);
	*ppid = (pid_t)parent;
	return 0;
}

/* descends_from_us says whether the parent chain of pid reaches this
 * process. */
static int descends_from_us(pid_t pid)
{
	char name[32], state, comm[64];
	pid_t ppid;
	int depth;

	for (depth = 0; depth < 64 && pid > 1; depth++) {
		snprintf(name, sizeof name, "%d", (int)pid);
		if (stat_of(name, &state, &ppid, comm, sizeof comm) == -1)
			return 0;
		if (ppid == getpid())
			return 1;
		pid = ppid;
	}
	return 0;
}

/* has_marker says whether the environment of process pid holds marker. */
static int has_marker(const char *pid, const char *marker)
{
	char path[300], buf[65536];
	size_t len = strlen(marker);
	ssize_t n, i;
	int fd;

	snprintf(path, sizeof path, "/proc/%s/environ", pid);
	fd = open(path, O_RDONLY);
	if (fd == -1)
		return 0;
	n = read(fd, buf, sizeof buf);
	close(fd);
	for (i = 0; i + (ssize_t)len <= n; i++)
		if (memcmp(buf + i, marker, len) == 0)
			return 1;
	return 0;
}

/* leftovers counts the live processes that are either a "sleep" below
 * this process or carry marker (may be NULL) in their environment, which
 * finds a job's processes wherever they were reparented. */
static int leftovers(const char *marker)
{
	DIR *proc = opendir("/proc");
	struct dirent *e;
	char state, comm[64];
	pid_t ppid;
	int count = 0;

	cr_assert_not_null(proc);
	while ((e = readdir(proc))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9' ||
		    stat_of(e->d_name, &state, &ppid, comm, sizeof comm) == -1 ||
		    state == 'Z' || state == 'X')
			continue;
		if ((strcmp(comm, "sleep") == 0 && descends_from_us(atoi(e->d_name))) ||
		    (marker && has_marker(e->d_name, marker))) {
			cr_log_warn("left over: %s (%s), parent %d", e->d_name,
				    comm, (int)ppid);
			count++;
		}
	}
	closedir(proc);
	return count;
}

/* unique_marker writes a "NAME=value" no other test run's jobs carry. */
static void unique_marker(char *buf, size_t size)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	snprintf(buf, size, "KINDS_TEST_MARK=%d-%ld", (int)getpid(), (long)t.tv_nsec);
}

Test(command, validate_accepts_good_args)
{
	assert_valid("command", "{\"argv\": [\"true\"]}");
	assert_valid("command", "{\"argv\": [\"echo\", \"a b\", \"-n\"], "
		     "\"env\": {\"FOO\": \"bar\", \"EMPTY\": \"\"}, "
		     "\"cwd\": \"/tmp\", \"stdin\": \"\"}");
	assert_valid("command", "{\"argv\": [\"cat\"], \"env\": {}, \"stdin\": \"x\\ny\"}");
}

/* argv_of_n returns the new JSON text of args with n argv items. */
static char *argv_of_n(int n)
{
	char *text = malloc((size_t)n * 4 + 32);
	size_t used;
	int i;

	cr_assert_not_null(text);
	used = (size_t)sprintf(text, "{\"argv\": [");
	for (i = 0; i < n; i++)
		used += (size_t)sprintf(text + used, "%s\"a\"", i ? "," : "");
	sprintf(text + used, "]}");
	return text;
}

Test(command, validate_argv)
{
	char *most = argv_of_n(256), *too_many = argv_of_n(257);
	struct problems p;

	assert_valid("command", most);
	assert_only_problem("command", too_many, "argv");
	free(most);
	free(too_many);
	assert_only_problem("command", "{}", "argv");
	assert_only_problem("command", "{\"argv\": []}", "argv");
	assert_only_problem("command", "{\"argv\": \"ls -l\"}", "argv");
	assert_only_problem("command", "{\"argv\": null}", "argv");
	assert_only_problem("command", "{\"argv\": [\"\"]}", "argv[0]");
	assert_only_problem("command", "{\"argv\": [\"ls\", 1]}", "argv[1]");
	assert_only_problem("command", "{\"argv\": [\"ls\", null, 2]}", "argv[1]");
	p = validate("command", "{}");
	cr_assert_str_eq(p.msg[0], "is required");
	p = validate("command", "{\"argv\": []}");
	cr_assert_str_eq(p.msg[0], "must be an array of 1 to 256 strings");
	p = validate("command", "{\"argv\": [\"\"]}");
	cr_assert_str_eq(p.msg[0], "must be a non-empty string without NUL");
}

Test(command, validate_env_cwd_stdin)
{
	struct problems p;

	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": []}", "env");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": \"A=1\"}", "env");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": {\"\": \"x\"}}", "env");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": {\"A=B\": \"x\"}}", "env");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": {\"A\": 1}}", "env/A");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"env\": {\"A\": null}}", "env/A");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"cwd\": 1}", "cwd");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"cwd\": \"\"}", "cwd");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"cwd\": null}", "cwd");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"stdin\": 1}", "stdin");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"stdin\": null}", "stdin");
	assert_only_problem("command", "{\"argv\": [\"a\"], \"shell\": true}", "shell");
	p = validate("command", "{\"argv\": [\"a\"], \"env\": {\"A=B\": \"x\"}}");
	cr_assert_str_eq(p.msg[0], "names must be non-empty and hold no '='");
	p = validate("command", "{\"argv\": 1, \"env\": 2, \"cwd\": 3, \"stdin\": 4, \"x\": 5}");
	cr_assert_eq(p.count, 5);
	p = validate("command", "[\"ls\"]");
	cr_assert_eq(p.count, 1);
	cr_assert_str_eq(p.field[0], "");
}

Test(command, echo_hello)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"echo\", \"hello\"]}", &job);

	cr_assert_not_null(result, "%s", job.error);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_eq(exit_code_of(result), 0);
	cr_assert_eq(job.exit_code, 0);
	cr_assert_eq(job.signal, 0);
	cr_assert_eq(job.killed, 0);
	cr_assert_str_eq(output_of(&job, "stdout"), "hello\n");
	cr_assert_str_eq(output_of(&job, "stderr"), "");
	cr_assert_not(truncated_of(&job));
	cr_assert(job.have_rusage);
	job_free(&job, result);
}

static char handed[2][4096];
static size_t handed_len[2];

static void collect_output(struct kind_job *job, int fd, const char *text,
			   size_t len)
{
	(void)job;
	cr_assert(fd == 1 || fd == 2);
	cr_assert(handed_len[fd - 1] + len < sizeof(handed[0]));
	memcpy(handed[fd - 1] + handed_len[fd - 1], text, len);
	handed_len[fd - 1] += len;
}

/* The pieces on_output gets while the command runs (a follower's view)
 * are, end to end, the output stored: characters split across writes,
 * invalid bytes and the cap included. */
Test(command, handed_output_is_the_output)
{
	struct kind_job job = command_job();
	json_t *result;

	job.on_output = collect_output;
	job.output_cap = 20;
	result = run_command("{\"argv\": [\"sh\", \"-c\", \"printf 'a\\\\303'; "
			     "sleep 0.1; printf '\\\\251\\\\377x\\\\n'; "
			     "echo e >&2; sleep 0.1; echo 0123456789abcdef\"]}",
			     &job);
	cr_assert_not_null(result, "%s", job.error);
	cr_assert(job.output_handed);
	cr_assert_eq(handed_len[0], strlen(output_of(&job, "stdout")));
	cr_assert(memcmp(handed[0], output_of(&job, "stdout"),
			 handed_len[0]) == 0, "%.*s", (int)handed_len[0],
		  handed[0]);
	cr_assert_str_eq(output_of(&job, "stdout"),
			 "a\xc3\xa9\xef\xbf\xbdx\n0123456789ab");
	cr_assert(truncated_of(&job));
	cr_assert_eq(handed_len[1], 2);
	cr_assert(memcmp(handed[1], "e\n", 2) == 0);
	job_free(&job, result);
}

Test(command, stderr_is_captured_apart)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"sh\", \"-c\", "
				     "\"echo out; echo err >&2\"]}", &job);

	cr_assert_str_eq(output_of(&job, "stdout"), "out\n");
	cr_assert_str_eq(output_of(&job, "stderr"), "err\n");
	job_free(&job, result);
}

Test(command, nonzero_exit_fails_with_the_code)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"sh\", \"-c\", \"exit 3\"]}", &job);

	cr_assert_not_null(result);
	cr_assert_eq(exit_code_of(result), 3);
	cr_assert_eq(job.exit_code, 3);
	cr_assert_str_eq(job.error, "the command exited with code 3");
	job_free(&job, result);
}

Test(command, killed_by_a_signal)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"sh\", \"-c\", \"kill -TERM $$\"]}",
				     &job);

	cr_assert_not_null(result);
	cr_assert(json_is_null(json_object_get(result, "exit_code")));
	cr_assert_eq(job.exit_code, -1);
	cr_assert_eq(job.signal, SIGTERM);
	cr_assert_eq(job.killed, 0, "not a cancel");
	cr_assert_str_eq(job.error, "the command was killed by a signal");
	job_free(&job, result);
}

Test(command, stdin_reaches_the_command)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"cat\"], "
				     "\"stdin\": \"line 1\\nline 2\\n\"}", &job);

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"), "line 1\nline 2\n");
	job_free(&job, result);
}

/* big_stdin_args returns new args for argv_json with size bytes of stdin. */
static json_t *big_stdin_args(const char *argv_json, size_t size)
{
	json_t *args = parse(argv_json);
	char *text = malloc(size);
	size_t i;

	cr_assert_not_null(text);
	for (i = 0; i < size; i++)
		text[i] = (char)('a' + i % 26);
	json_object_set_new(args, "stdin", json_stringn(text, size));
	free(text);
	return args;
}

/* More stdin than a pipe holds, read back while it is written. */
Test(command, big_stdin_round_trip)
{
	struct kind_job job = command_job();
	json_t *args = big_stdin_args("{\"argv\": [\"cat\"]}", 300000);
	json_t *result = kind_find("command")->run(args, &job);

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"),
			 json_string_value(json_object_get(args, "stdin")));
	json_decref(args);
	job_free(&job, result);
}

/* A command that does not read its stdin: the write fails with EPIPE, and
 * the test process, which does not ignore SIGPIPE, must live on. */
Test(command, unread_stdin_is_fine)
{
	struct kind_job job = command_job();
	json_t *args = big_stdin_args("{\"argv\": [\"true\"]}", 1000000);
	json_t *result = kind_find("command")->run(args, &job);

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_eq(job.exit_code, 0);
	json_decref(args);
	job_free(&job, result);
}

Test(command, no_stdin_reads_dev_null)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"cat\"]}", &job);

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"), "");
	job_free(&job, result);
}

Test(command, env_overrides_and_hides_the_token)
{
	struct kind_job job = command_job();
	json_t *result;

	cr_assert_eq(setenv("JOBPOOL_TOKEN", "secret", 1), 0);
	cr_assert_eq(setenv("FOO", "from the worker", 1), 0);
	cr_assert_eq(setenv("KEPT", "kept", 1), 0);
	result = run_command("{\"argv\": [\"sh\", \"-c\", "
			     "\"echo \\\"[$FOO][$JOBPOOL_TOKEN][$KEPT][$NEW]\\\"; env\"], "
			     "\"env\": {\"FOO\": \"bar\", \"NEW\": \"new\"}}", &job);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_eq(strncmp(output_of(&job, "stdout"), "[bar][][kept][new]\n", 19), 0,
		     "got %s", output_of(&job, "stdout"));
	cr_assert_null(strstr(output_of(&job, "stdout"), "JOBPOOL_"));
	cr_assert_null(strstr(output_of(&job, "stdout"), "secret"));
	job_free(&job, result);
}

/* The job's PATH, not the worker's, finds the program. */
Test(command, env_path_is_searched)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"sh\", \"-c\", \"echo ok\"], "
				     "\"env\": {\"PATH\": \"/nonexistent:/bin:/usr/bin\"}}",
				     &job);

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"), "ok\n");
	job_free(&job, result);
}

Test(command, cwd_is_honored)
{
	char dir[] = "/tmp/kinds-cwd-XXXXXX", real[PATH_MAX], want[PATH_MAX + 2];
	char args_json[PATH_MAX + 64];
	struct kind_job job = command_job();
	json_t *result;

	cr_assert_not_null(mkdtemp(dir));
	cr_assert_not_null(realpath(dir, real));
	snprintf(args_json, sizeof args_json,
		 "{\"argv\": [\"pwd\"], \"cwd\": \"%s\"}", real);
	result = run_command(args_json, &job);
	rmdir(dir);
	cr_assert_null(job.error, "%s", job.error);
	snprintf(want, sizeof want, "%s\n", real);
	cr_assert_str_eq(output_of(&job, "stdout"), want);
	job_free(&job, result);
}

Test(command, bad_cwd_fails)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"pwd\"], \"cwd\": \"/nonexistent-dir\"}",
				     &job);

	cr_assert_null(result);
	cr_assert_eq(job.exit_code, -1);
	cr_assert_str_eq(job.error, "cannot change to directory /nonexistent-dir: "
			 "No such file or directory");
	job_free(&job, result);
}

Test(command, missing_program_fails_naming_it)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"no-such-program-jobpool\"]}", &job);

	cr_assert_null(result);
	cr_assert_eq(job.exit_code, -1);
	cr_assert_str_eq(job.error, "cannot run no-such-program-jobpool: "
			 "No such file or directory");
	job_free(&job, result);
}

Test(command, output_over_the_cap_is_truncated)
{
	struct kind_job job = command_job();
	json_t *result;

	job.output_cap = 1000;
	result = run_command("{\"argv\": [\"sh\", \"-c\", "
			     "\"yes | head -c 500000; echo err >&2\"]}", &job);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_eq(strlen(output_of(&job, "stdout")), 1000);
	cr_assert_eq(strncmp(output_of(&job, "stdout"), "y\ny\n", 4), 0);
	cr_assert_str_eq(output_of(&job, "stderr"), "err\n");
	cr_assert(truncated_of(&job));
	job_free(&job, result);
}

Test(command, output_at_the_cap_is_not_truncated)
{
	struct kind_job job = command_job();
	json_t *result;

	job.output_cap = 1000;
	result = run_command("{\"argv\": [\"sh\", \"-c\", \"yes | head -c 1000\"]}", &job);
	cr_assert_eq(strlen(output_of(&job, "stdout")), 1000);
	cr_assert_not(truncated_of(&job));
	job_free(&job, result);
}

Test(command, zero_cap_keeps_nothing)
{
	struct kind_job job = command_job();
	json_t *result;

	job.output_cap = 0;
	result = run_command("{\"argv\": [\"echo\", \"hi\"]}", &job);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"), "");
	cr_assert(truncated_of(&job));
	job_free(&job, result);
}

Test(command, invalid_utf8_and_nul_are_replaced)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"printf\", "
				     "\"a\\\\377b\\\\000c\\\\303\\\\251\\\\355\\\\240\\\\200\\\\300\\\\257z\"]}",
				     &job);
	const char *want = "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xc3\xa9"
			   "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"  /* surrogate */
			   "\xef\xbf\xbd\xef\xbf\xbd" "z";          /* overlong */

	cr_assert_null(job.error, "%s", job.error);
	cr_assert_str_eq(output_of(&job, "stdout"), want);
	cr_assert_eq(json_string_length(json_object_get(job.output, "stdout")),
		     strlen(want), "no NUL inside");
	job_free(&job, result);
}

/* U+FFFD takes 3 bytes for 1: the cap holds after the conversion too. */
Test(command, replacement_keeps_the_cap)
{
	struct kind_job job = command_job();
	json_t *result;

	job.output_cap = 1000;
	result = run_command("{\"argv\": [\"sh\", \"-c\", "
			     "\"head -c 600 /dev/zero\"]}", &job);
	cr_assert_eq(strlen(output_of(&job, "stdout")), 999);
	cr_assert(truncated_of(&job));
	job_free(&job, result);
}

Test(command, rusage_is_the_commands_own)
{
	struct kind_job job = command_job();
	json_t *result = run_command("{\"argv\": [\"sh\", \"-c\", "
				     "\"i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done\"]}",
				     &job);
	long long user_us = (long long)job.ru.ru_utime.tv_sec * 1000000 +
			    job.ru.ru_utime.tv_usec;

	cr_assert_null(job.error, "%s", job.error);
	cr_assert(job.have_rusage);
	cr_assert_gt(user_us, 0);
	cr_assert_gt(job.ru.ru_maxrss, 0);
	job_free(&job, result);
}

/* The server side of a channel: sends {"t":"cancel"} after delay_ms. */
struct canceler {
	int fd;
	int delay_ms;
	long long sent_at;
};

static void *send_cancel(void *arg)
{
	struct canceler *c = arg;
	struct timespec delay = { c->delay_ms / 1000, (c->delay_ms % 1000) * 1000000L };
	const char msg[] = "{\"t\":\"cancel\"}";

	nanosleep(&delay, NULL);
	c->sent_at = now_ms();
	cr_assert_eq(send(c->fd, msg, strlen(msg), MSG_NOSIGNAL), (ssize_t)strlen(msg));
	return NULL;
}

/* test_channel_cancel is the worker's channel_cancel in small. */
static int test_channel_cancel(struct kind_job *job)
{
	char buf[256];
	ssize_t n;

	while ((n = recv(job->channel_fd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
		buf[n] = '\0';
		cr_assert_str_eq(buf, "{\"t\":\"cancel\"}");
		job->canceled = 1;
	}
	return n == 0 ? -1 : job->canceled;
}

/* cancel_after runs args_json with a channel that sends a cancel after
 * 100 ms, and a grace of grace_ms; returns the ms from the cancel to the
 * end of the run. */
static long long cancel_after(const char *args_json, int grace_ms,
			      struct kind_job *job, json_t **result)
{
	struct canceler c = { .delay_ms = 100 };
	pthread_t thread;
	int sv[2];
	long long ended;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	c.fd = sv[0];
	job->grace_ms = grace_ms;
	job->channel_fd = sv[1];
	job->channel_cancel = test_channel_cancel;
	cr_assert_eq(pthread_create(&thread, NULL, send_cancel, &c), 0);
	*result = run_command(args_json, job);
	ended = now_ms();
	pthread_join(thread, NULL);
	close(sv[0]);
	close(sv[1]);
	return ended - c.sent_at;
}

Test(command, cancel_kills_the_whole_group)
{
	struct kind_job job = command_job();
	json_t *result;
	long long ms = cancel_after("{\"argv\": [\"sh\", \"-c\", "
				    "\"sleep 300 & sleep 300\"]}", 300, &job, &result);

	cr_assert_lt(ms, 300 + 100, "took %lld ms after the cancel", ms);
	cr_assert(job.killed);
	cr_assert(job.canceled);
	cr_assert_eq(job.signal, SIGTERM);
	cr_assert_str_eq(job.error, "the command was canceled");
	cr_assert_eq(leftovers(NULL), 0);
	job_free(&job, result);
}

/* A command that ignores SIGTERM gets SIGKILL once the grace is over. */
Test(command, cancel_kills_after_the_grace)
{
	struct kind_job job = command_job();
	json_t *result;
	long long ms = cancel_after("{\"argv\": [\"sh\", \"-c\", "
				    "\"trap '' TERM; sleep 300 & sleep 300\"]}",
				    300, &job, &result);

	cr_assert_geq(ms, 290, "SIGKILL after %lld ms, before the grace", ms);
	cr_assert_lt(ms, 300 + 100, "took %lld ms after the cancel", ms);
	cr_assert(job.killed);
	cr_assert_eq(job.signal, SIGKILL);
	cr_assert_eq(leftovers(NULL), 0);
	job_free(&job, result);
}

/* A closed channel (the server went away) counts as a cancel. */
Test(command, closed_channel_cancels)
{
	struct kind_job job = command_job();
	json_t *result;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	close(sv[0]);
	job.channel_fd = sv[1];
	job.channel_cancel = test_channel_cancel;
	result = run_command("{\"argv\": [\"sleep\", \"300\"]}", &job);
	close(sv[1]);
	cr_assert(job.killed);
	cr_assert_eq(leftovers(NULL), 0);
	job_free(&job, result);
}

/* marked_args writes args running script with marker in its environment. */
static void marked_args(char *buf, size_t size, const char *marker,
			const char *script)
{
	const char *eq = strchr(marker, '=');

	snprintf(buf, size, "{\"argv\": [\"sh\", \"-c\", \"%s\"], "
		 "\"env\": {\"%.*s\": \"%s\"}}", script, (int)(eq - marker),
		 marker, eq + 1);
}

/* A process that left the group (setsid) is still killed at the end, and
 * so is a plain background one: nothing of the job outlives it. */
Test(command, escaped_processes_die_with_the_job)
{
	struct kind_job job = command_job();
	char marker[64], args_json[512];
	long long start = now_ms();
	json_t *result;

	unique_marker(marker, sizeof marker);
	marked_args(args_json, sizeof args_json, marker,
		    "setsid sleep 300 & sleep 300 & (sleep 300 &) ; sleep 0.2; exit 0");
	result = run_command(args_json, &job);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_eq(job.exit_code, 0);
	cr_assert_lt(now_ms() - start, 5000);
	cr_assert_eq(leftovers(marker), 0);
	job_free(&job, result);
}

/* An escaped process holding the output pipe open must not hold the job. */
Test(command, escaped_writer_does_not_hold_the_end)
{
	struct kind_job job = command_job();
	char marker[64], args_json[512];
	long long start = now_ms();
	json_t *result;

	unique_marker(marker, sizeof marker);
	marked_args(args_json, sizeof args_json, marker,
		    "setsid sh -c 'echo early; exec sleep 300' & sleep 0.2; echo done");
	result = run_command(args_json, &job);
	cr_assert_null(job.error, "%s", job.error);
	cr_assert_lt(now_ms() - start, 2000);
	cr_assert_str_eq(output_of(&job, "stdout"), "early\ndone\n");
	cr_assert_eq(leftovers(marker), 0);
	job_free(&job, result);
}

/* The signals the worker ignores are back to default in the command. */
Test(command, signal_state_is_reset)
{
	struct kind_job job = command_job();
	json_t *result;
	sigset_t block;

	signal(SIGINT, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, NULL);
	result = run_command("{\"argv\": [\"sh\", \"-c\", \"kill -INT $$; sleep 5\"]}",
			     &job);
	cr_assert_eq(job.signal, SIGINT);
	job_free(&job, result);
	sigprocmask(SIG_UNBLOCK, &block, NULL);
}
