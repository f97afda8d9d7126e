/* test_policy.c - unit tests for the batch policies (policy.c): the halt
 * thresholds (count, percent, fail counting timed_out, the reason text),
 * the stored policy's parse and rendering, the median window behind
 * timeout_pct (odd and even counts, duplicates, the window sliding), the
 * relative limit, the scheduler's side (no groups, no retries once
 * halted), and validate_batch's checks of halt and timeout_pct. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "jobpool.h"

static struct halt_policy policy(enum halt_when when, int count,
				 double percent, int now)
{
	struct halt_policy h = { .when = when, .count = count,
				 .percent = percent, .now = now };

	return h;
}

/* ---- halt thresholds ---- */

Test(halt, count_fail)
{
	struct halt_policy h = policy(HALT_FAIL, 2, 0, 0);
	char why[160];

	cr_assert_not(policy_halt_reached(&h, 10, 5, 0, why, sizeof(why)));
	cr_assert_not(policy_halt_reached(&h, 10, 5, 1, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 10, 0, 2, why, sizeof(why)));
	cr_assert_str_eq(why, "2 jobs failed (halt when fail count 2)");
	cr_assert(policy_halt_reached(&h, 10, 0, 3, why, sizeof(why)),
		  "past the threshold still halts (a batch seen late)");
}

Test(halt, count_one_is_singular)
{
	struct halt_policy h = policy(HALT_FAIL, 1, 0, 1);
	char why[160];

	cr_assert(policy_halt_reached(&h, 3, 0, 1, why, sizeof(why)));
	cr_assert_str_eq(why, "1 job failed (halt when fail count 1)");
}

Test(halt, success_counts_successes_only)
{
	struct halt_policy h = policy(HALT_SUCCESS, 1, 0, 1);
	char why[160];

	cr_assert_not(policy_halt_reached(&h, 5, 0, 4, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 5, 1, 0, why, sizeof(why)));
	cr_assert_str_eq(why, "1 job succeeded (halt when success count 1)");
}

Test(halt, percent_of_the_batch)
{
	struct halt_policy h = policy(HALT_FAIL, 0, 20, 1);
	char why[160];

	/* 20% of 10 jobs is 2 */
	cr_assert_not(policy_halt_reached(&h, 10, 8, 1, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 10, 0, 2, why, sizeof(why)));
	cr_assert_str_eq(why, "2 of 10 jobs failed (halt when fail percent "
			 "20%)");
	/* 20% of 11 jobs is 2.2: the third failure */
	cr_assert_not(policy_halt_reached(&h, 11, 0, 2, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 11, 0, 3, why, sizeof(why)));
	/* a small batch halts at its first failure, never at none */
	cr_assert(policy_halt_reached(&h, 3, 0, 1, why, sizeof(why)));
	cr_assert_not(policy_halt_reached(&h, 3, 3, 0, why, sizeof(why)));
}

Test(halt, percent_fraction_and_hundred)
{
	struct halt_policy h = policy(HALT_SUCCESS, 0, 12.5, 0);
	char why[160];

	cr_assert_not(policy_halt_reached(&h, 16, 1, 0, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 16, 2, 0, why, sizeof(why)));
	h = policy(HALT_FAIL, 0, 100, 0);
	cr_assert_not(policy_halt_reached(&h, 4, 0, 3, why, sizeof(why)));
	cr_assert(policy_halt_reached(&h, 4, 0, 4, why, sizeof(why)));
}

Test(halt, none_never_halts)
{
	struct halt_policy h = policy(HALT_NONE, 0, 0, 0);
	char why[16] = "";

	cr_assert_not(policy_halt_reached(&h, 1, 1, 1, why, sizeof(why)));
	cr_assert_str_empty(why);
}

Test(halt, parse_and_render)
{
	struct halt_policy h;
	json_t *j;

	policy_halt_parse("{\"when\":\"fail\",\"count\":3,\"mode\":\"now\"}",
			  &h);
	cr_assert_eq(h.when, HALT_FAIL);
	cr_assert_eq(h.count, 3);
	cr_assert(h.now);
	policy_halt_parse("{\"when\":\"success\",\"percent\":20,"
			  "\"count\":null,\"mode\":\"soon\"}", &h);
	cr_assert_eq(h.when, HALT_SUCCESS);
	cr_assert_eq(h.count, 0);
	cr_assert_float_eq(h.percent, 20.0, 1e-9);
	cr_assert_not(h.now);
	policy_halt_parse(NULL, &h);
	cr_assert_eq(h.when, HALT_NONE);
	policy_halt_parse("not json", &h);
	cr_assert_eq(h.when, HALT_NONE);

	j = policy_halt_json("{\"when\":\"fail\",\"percent\":20,"
			     "\"mode\":\"now\"}");
	cr_assert_str_eq(json_string_value(json_object_get(j, "when")), "fail");
	cr_assert(json_is_null(json_object_get(j, "count")),
		  "the absent one reads as null");
	cr_assert_float_eq(json_number_value(json_object_get(j, "percent")),
			   20.0, 1e-9);
	cr_assert_str_eq(json_string_value(json_object_get(j, "mode")), "now");
	json_decref(j);
	j = policy_halt_json(NULL);
	cr_assert(json_is_null(j));
	json_decref(j);
}

/* ---- the median window ---- */

static struct median *new_median(void)
{
	struct median *m = calloc(1, sizeof(*m));

	cr_assert_not_null(m);
	return m;
}

Test(median, odd_even_and_empty)
{
	struct median *m = new_median();

	cr_assert_eq(policy_median_us(m), -1);
	policy_median_add(m, 300);
	cr_assert_eq(policy_median_us(m), 300);
	policy_median_add(m, 100);
	cr_assert_eq(policy_median_us(m), 200, "mean of the middle two");
	policy_median_add(m, 1000000);
	cr_assert_eq(policy_median_us(m), 300, "an outlier does not move it");
	policy_median_add(m, 200);
	cr_assert_eq(policy_median_us(m), 250);
	cr_assert_eq(m->seen, 4);
	policy_median_add(m, -5);       /* unknown run time: ignored */
	cr_assert_eq(m->n, 4);
	free(m);
}

Test(median, duplicates_stay_sorted)
{
	struct median *m = new_median();
	const int64_t v[] = { 5, 5, 1, 5, 9, 1, 5 };
	size_t i;
	int k;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		policy_median_add(m, v[i]);
	for (k = 1; k < m->n; k++)
		cr_assert_leq(m->sorted[k - 1], m->sorted[k]);
	cr_assert_eq(policy_median_us(m), 5);
	free(m);
}

/* The window keeps the most recent MEDIAN_WINDOW samples: after a batch
 * got slower, the median is the new speed's. */
Test(median, window_slides)
{
	struct median *m = new_median();
	int i, k;

	for (i = 0; i < MEDIAN_WINDOW; i++)
		policy_median_add(m, 1000 + i);
	cr_assert_eq(m->n, MEDIAN_WINDOW);
	cr_assert_eq(policy_median_us(m), 1000 + MEDIAN_WINDOW / 2);
	for (i = 0; i < MEDIAN_WINDOW; i++) {
		policy_median_add(m, 50000);
		for (k = 1; k < m->n; k++)
			cr_assert_leq(m->sorted[k - 1], m->sorted[k]);
	}
	cr_assert_eq(m->n, MEDIAN_WINDOW);
	cr_assert_eq(m->seen, 2 * MEDIAN_WINDOW);
	cr_assert_eq(policy_median_us(m), 50000);
	free(m);
}

/* Against a brute-force median of the last MEDIAN_WINDOW of a random
 * sequence. */
static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

Test(median, matches_brute_force)
{
	struct median *m = new_median();
	static int64_t all[2000], tmp[MEDIAN_WINDOW];
	int i, n, lo;

	srandom(7);
	for (i = 0; i < 2000; i++) {
		all[i] = random() % 5000;
		policy_median_add(m, all[i]);
		lo = i + 1 > MEDIAN_WINDOW ? i + 1 - MEDIAN_WINDOW : 0;
		n = i + 1 - lo;
		memcpy(tmp, &all[lo], (size_t)n * sizeof(tmp[0]));
		qsort(tmp, (size_t)n, sizeof(tmp[0]), cmp64);
		cr_assert_eq(policy_median_us(m), n % 2 ? tmp[n / 2] :
			     (tmp[n / 2 - 1] + tmp[n / 2]) / 2,
			     "after %d samples", i + 1);
	}
	free(m);
}

Test(median, relative_limit_needs_three_successes)
{
	struct median *m = new_median();

	cr_assert_eq(policy_rel_limit_us(NULL, 200), 0);
	policy_median_add(m, 100000);
	policy_median_add(m, 120000);
	cr_assert_eq(policy_rel_limit_us(m, 200), 0, "two are not enough");
	policy_median_add(m, 110000);
	cr_assert_eq(policy_rel_limit_us(m, 200), 220000);
	cr_assert_eq(policy_rel_limit_us(m, 150.5), 165550);
	cr_assert_eq(policy_rel_limit_us(m, 0), 0, "no timeout_pct");
	free(m);
}

/* ---- the scheduler's side ---- */

static void clear(void)
{
	sched_clear();
}

TestSuite(policy_sched, .fini = clear);

Test(policy_sched, halted_batch_is_canceled_and_halts_once)
{
	struct batch_info info = { .id = 1, .queued = 5 };
	struct batch_policy p = { .halt = policy(HALT_FAIL, 1, 0, 0) };
	struct sbatch *b;

	sched_add(&info);
	b = sched_find(1);
	cr_assert_null(sched_halt(b), "no policy yet");
	sched_set_policy(b, &p);
	cr_assert_not_null(sched_halt(b));
	cr_assert_null(sched_runs(b), "no window without timeout_pct");
	sched_set_halted(b);
	cr_assert(sched_halted(b));
	cr_assert(sched_canceled(b), "a halted batch retries nothing");
	cr_assert_null(sched_halt(b), "a halt fires once");
	/* a stored halted flag survives a reload */
	sched_remove(b);
	sched_add(&info);
	b = sched_find(1);
	p.halted = 1;
	sched_set_policy(b, &p);
	cr_assert(sched_halted(b));
	cr_assert_null(sched_halt(b));
}

Test(policy_sched, policies_turn_groups_off)
{
	struct batch_info info = { .id = 2, .queued = 1000 };
	struct batch_policy p = { .timeout_pct = 200 };
	struct sbatch *b;
	size_t before;
	int i;

	cfg.group_max = 64;
	sched_add(&info);
	b = sched_find(2);
	for (i = 0; i < 8; i++)
		sched_note_run(b, 10);          /* very short jobs */
	cr_assert_gt(sched_group_size(b), 1, "short jobs go in groups");
	before = sched_bytes();
	sched_set_policy(b, &p);
	cr_assert_not_null(sched_runs(b));
	cr_assert_gt(sched_bytes(), before, "the window is counted");
	cr_assert_eq(sched_group_size(b), 1, "timeout_pct: one at a time");
	cr_assert_float_eq(sched_timeout_pct(b), 200.0, 1e-9);
}

/* ---- validation ---- */

static int check_text(const char *text, json_t **errors)
{
	json_t *body = json_loads(text, 0, NULL);
	int n;

	cr_assert_not_null(body, "bad JSON in test: %s", text);
	*errors = json_array();
	n = validate_batch(body, *errors);
	json_decref(body);
	return n;
}

static int has_path(const json_t *errors, const char *path)
{
	const json_t *e;
	size_t i;

	json_array_foreach(errors, i, e)
		if (strcmp(json_string_value(json_object_get(e, "path")),
			   path) == 0)
			return 1;
	return 0;
}

#define JOBS "\"jobs\": [{\"kind\": \"noop\"}]"

Test(policy_validate, good_ones_pass)
{
	const char *const good[] = {
		"{\"halt\": {\"when\": \"fail\", \"count\": 1, \"mode\": "
		"\"soon\"}, " JOBS "}",
		"{\"halt\": {\"when\": \"fail\", \"percent\": 20, \"mode\": "
		"\"now\"}, " JOBS "}",
		"{\"halt\": {\"when\": \"success\", \"count\": 1, \"percent\": "
		"null, \"mode\": \"now\"}, " JOBS "}",
		"{\"halt\": null, \"timeout_pct\": null, " JOBS "}",
		"{\"timeout_pct\": 200, " JOBS "}",
		"{\"timeout_pct\": 100.5, " JOBS "}",
	};
	json_t *errors;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		cr_assert_eq(check_text(good[i], &errors), 0, "%s: %s",
			     good[i], json_dumps(errors, 0));
		json_decref(errors);
	}
}

Test(policy_validate, bad_ones_name_their_path)
{
	const struct { const char *body, *path; } bad[] = {
		{ "{\"halt\": 1, " JOBS "}", "/halt" },
		{ "{\"halt\": {\"when\": \"fail\", \"mode\": \"soon\"}, "
		  JOBS "}", "/halt" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 1, \"percent\": 5, "
		  "\"mode\": \"soon\"}, " JOBS "}", "/halt" },
		{ "{\"halt\": {\"when\": \"crash\", \"count\": 1, \"mode\": "
		  "\"soon\"}, " JOBS "}", "/halt/when" },
		{ "{\"halt\": {\"count\": 1, \"mode\": \"soon\"}, " JOBS "}",
		  "/halt/when" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 1}, " JOBS "}",
		  "/halt/mode" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 1, \"mode\": "
		  "\"later\"}, " JOBS "}", "/halt/mode" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 0, \"mode\": "
		  "\"now\"}, " JOBS "}", "/halt/count" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 1.5, \"mode\": "
		  "\"now\"}, " JOBS "}", "/halt/count" },
		{ "{\"halt\": {\"when\": \"fail\", \"percent\": 0, \"mode\": "
		  "\"now\"}, " JOBS "}", "/halt/percent" },
		{ "{\"halt\": {\"when\": \"fail\", \"percent\": 101, \"mode\": "
		  "\"now\"}, " JOBS "}", "/halt/percent" },
		{ "{\"halt\": {\"when\": \"fail\", \"count\": 1, \"mode\": "
		  "\"now\", \"cout\": 2}, " JOBS "}", "/halt/cout" },
		{ "{\"timeout_pct\": 100, " JOBS "}", "/timeout_pct" },
		{ "{\"timeout_pct\": 50, " JOBS "}", "/timeout_pct" },
		{ "{\"timeout_pct\": \"200%\", " JOBS "}", "/timeout_pct" },
		{ "{\"timeout_pct\": 1e9, " JOBS "}", "/timeout_pct" },
	};
	json_t *errors;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_gt(check_text(bad[i].body, &errors), 0, "%s passed",
			     bad[i].body);
		cr_assert(has_path(errors, bad[i].path), "%s: no %s in %s",
			  bad[i].body, bad[i].path, json_dumps(errors, 0));
		json_decref(errors);
	}
}

Test(policy_validate, a_job_cannot_carry_them)
{
	json_t *errors;

	cr_assert_gt(check_text("{\"jobs\": [{\"kind\": \"noop\", "
				"\"timeout_pct\": 200}]}", &errors), 0);
	cr_assert(has_path(errors, "/jobs/0/timeout_pct"));
	json_decref(errors);
}
