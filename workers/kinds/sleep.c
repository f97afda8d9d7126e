/* sleep.c - the "sleep" kind: sleeps for "seconds" and reports how long it
 * actually slept, as the worker's monotonic clock saw it. */
#include <errno.h>
#include <math.h>
#include <time.h>

#include "kinds.h"

#define SLEEP_MAX_S 86400

static const char *const sleep_fields[] = { "seconds", NULL };

/* sleep_validate requires "seconds", a number in [0, SLEEP_MAX_S]. */
static void sleep_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	double seconds;

	kind_check_only(args, sleep_fields, err, ctx);
	kind_number(args, "seconds", 1, 0, SLEEP_MAX_S, 0, &seconds, err, ctx);
}

/* ts_add returns t plus seconds (>= 0), normalized.  Rounding, not
 * truncating, keeps 0.3 s from becoming 299999999 ns. */
static struct timespec ts_add(struct timespec t, double seconds)
{
	double whole = floor(seconds);

	t.tv_sec += (time_t)whole;
	t.tv_nsec += lround((seconds - whole) * 1e9);
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

/* ts_ms returns b - a in milliseconds. */
static double ts_ms(struct timespec a, struct timespec b)
{
	return (double)(b.tv_sec - a.tv_sec) * 1e3 +
	       (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

/* sleep_run sleeps for "seconds" and returns a new {"slept_ms": ms}.  It
 * sleeps until an absolute deadline, so a signal that interrupts the sleep
 * (EINTR) just restarts it without adding drift.  Returns NULL with
 * job->error set only when the clock fails or memory runs out. */
static json_t *sleep_run(const json_t *args, struct kind_job *job)
{
	double seconds = json_number_value(json_object_get(args, "seconds"));
	struct timespec start, deadline, end;
	json_t *result;
	int rc;

	if (clock_gettime(CLOCK_MONOTONIC, &start) == -1) {
		job->error = "the monotonic clock failed";
		return NULL;
	}
	deadline = ts_add(start, seconds > 0 ? seconds : 0);
	do
		rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
	while (rc == EINTR);
	if (rc != 0 || clock_gettime(CLOCK_MONOTONIC, &end) == -1) {
		job->error = "the monotonic clock failed";
		return NULL;
	}
	result = json_pack("{s:f}", "slept_ms", round(ts_ms(start, end) * 1e3) / 1e3);
	if (!result)
		job->error = "out of memory";
	return result;
}

const struct kind kind_sleep = {
	.name = "sleep",
	.validate = sleep_validate,
	.run = sleep_run,
};
