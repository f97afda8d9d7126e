/* policy.c - a batch's halt policy and the median behind its relative
 * timeout, as pure logic the engine applies (and unit tests check without
 * a server).
 *
 * Halt (GNU parallel's --halt): "fail" counts the jobs that ended failed or
 * timed_out, as GNU parallel counts any non-zero exit (a timeout is one);
 * a canceled job counts for neither side, and an attempt that is retried
 * has not ended.  A percentage is of the batch's jobs, all of them, so
 * "fail=20%" of 10 jobs halts at the second failure, whatever the order.
 *
 * Relative timeout (GNU parallel's --timeout 200%): the median is of the
 * run times of the batch's most recent MEDIAN_WINDOW succeeded jobs.  A
 * window, not every success: 4 KiB per batch whatever its size (a
 * 100,000-job batch would otherwise hold 800 KB), an exact median while a
 * batch has no more than 255 successes, and after that one that follows
 * drift (a batch whose jobs get slower does not kill its new normal).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "jobpool.h"

static const char *const when_names[] = { "", "fail", "success" };

void policy_halt_parse(const char *text, struct halt_policy *h)
{
	json_t *j = text ? json_loads(text, 0, NULL) : NULL;
	const char *when, *mode;
	const json_t *v;

	memset(h, 0, sizeof(*h));
	when = json_string_value(json_object_get(j, "when"));
	mode = json_string_value(json_object_get(j, "mode"));
	if (when && strcmp(when, "fail") == 0)
		h->when = HALT_FAIL;
	else if (when && strcmp(when, "success") == 0)
		h->when = HALT_SUCCESS;
	h->now = mode && strcmp(mode, "now") == 0;
	v = json_object_get(j, "count");
	if (json_is_number(v) && json_number_value(v) >= 1)
		h->count = (int)json_number_value(v);
	v = json_object_get(j, "percent");
	if (!h->count && json_is_number(v) && json_number_value(v) > 0)
		h->percent = json_number_value(v);
	if (!h->count && !h->percent)
		h->when = HALT_NONE;
	json_decref(j);
}

json_t *policy_halt_json(const char *text)
{
	struct halt_policy h;

	policy_halt_parse(text, &h);
	if (h.when == HALT_NONE)
		return json_null();
	return json_pack("{s:s, s:o, s:o, s:s}",
		"when", when_names[h.when],
		"count", h.count ? json_integer(h.count) : json_null(),
		"percent", h.count ? json_null() : json_real(h.percent),
		"mode", h.now ? "now" : "soon");
}

int policy_halt_reached(const struct halt_policy *h, int64_t total,
			int64_t succeeded, int64_t failed, char *reason,
			size_t size)
{
	int64_t n = h->when == HALT_FAIL ? failed :
		    h->when == HALT_SUCCESS ? succeeded : 0;
	const char *verb = h->when == HALT_FAIL ? "failed" : "succeeded";
	int hit;

	if (h->when == HALT_NONE || n < 1)
		return 0;
	/* n / total >= percent / 100, in doubles only for the percent: the
	 * counts are exact integers well below 2^53. */
	hit = h->count ? n >= h->count :
	      (double)n * 100.0 >= h->percent * (double)total;
	if (!hit)
		return 0;
	if (h->count)
		snprintf(reason, size, "%lld job%s %s (halt when %s count %d)",
			 (long long)n, n == 1 ? "" : "s", verb,
			 when_names[h->when], h->count);
	else
		snprintf(reason, size, "%lld of %lld jobs %s (halt when %s "
			 "percent %g%%)", (long long)n, (long long)total, verb,
			 when_names[h->when], h->percent);
	return 1;
}

/* sorted_pos is where v goes in the n sorted values (after its equals). */
static int sorted_pos(const int64_t *a, int n, int64_t v)
{
	int lo = 0, hi = n;

	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;

		if (a[mid] <= v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void policy_median_add(struct median *m, int64_t v)
{
	int i;

	if (v < 0)
		return;
	m->seen++;
	if (m->n == MEDIAN_WINDOW) {
		/* The oldest leaves both orders; its slot takes v. */
		int64_t old = m->ring[m->oldest];

		i = sorted_pos(m->sorted, m->n, old) - 1;
		memmove(&m->sorted[i], &m->sorted[i + 1],
			(size_t)(m->n - i - 1) * sizeof(m->sorted[0]));
		m->n--;
		m->ring[m->oldest] = v;
		m->oldest = (m->oldest + 1) % MEDIAN_WINDOW;
	} else {
		m->ring[(m->oldest + m->n) % MEDIAN_WINDOW] = v;
	}
	i = sorted_pos(m->sorted, m->n, v);
	memmove(&m->sorted[i + 1], &m->sorted[i],
		(size_t)(m->n - i) * sizeof(m->sorted[0]));
	m->sorted[i] = v;
	m->n++;
}

int64_t policy_median_us(const struct median *m)
{
	if (m->n <= 0)
		return -1;
	if (m->n % 2)
		return m->sorted[m->n / 2];
	return (m->sorted[m->n / 2 - 1] + m->sorted[m->n / 2]) / 2;
}

int64_t policy_rel_limit_us(const struct median *m, double pct)
{
	int64_t med;

	if (!m || pct <= 0 || m->n < MEDIAN_MIN ||
	    (med = policy_median_us(m)) < 0)
		return 0;
	/* at least 1 µs: a limit of 0 would mean "none" to the caller */
	return (int64_t)fmax(1.0, floor((double)med * pct / 100.0));
}
