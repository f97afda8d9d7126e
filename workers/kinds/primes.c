/* primes.c - the "primes" kind: counts the primes below "below" with a
 * segmented sieve of Eratosthenes.  A CPU-bound job with a known answer.
 *
 * Only odd numbers are sieved, one byte each, one cache-sized segment at a
 * time, so below = 1e9 needs ~64 KiB for the segment plus a few KiB of
 * sieving primes instead of a 1 GB table.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kinds.h"

#define PRIMES_MAX 1000000000.0
/* Odd numbers per segment: 64 KiB fits in L2 on anything current. */
#define SEGMENT (64 * 1024)

static const char *const primes_fields[] = { "below", NULL };

/* primes_validate requires "below", an integer in [0, PRIMES_MAX]. */
static void primes_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	double below;

	kind_check_only(args, primes_fields, err, ctx);
	kind_number(args, "below", 1, 0, PRIMES_MAX, 1, &below, err, ctx);
}

/* sieving primes: the odd primes p with p * p <= the largest candidate, and
 * for each the next odd multiple still to cross off. */
struct sievers {
	uint32_t *prime;
	uint64_t *next;
	size_t count;
};

/* sievers_init fills s with the odd primes up to root by a plain sieve.
 * Returns 0, or -1 when out of memory.  The caller calls sievers_free
 * either way, so s must start zeroed. */
static int sievers_init(struct sievers *s, uint32_t root)
{
	char *composite = calloc((size_t)root + 1, 1);
	uint32_t i, j;

	s->prime = malloc(((size_t)root / 2 + 1) * sizeof *s->prime);
	s->next = malloc(((size_t)root / 2 + 1) * sizeof *s->next);
	if (!composite || !s->prime || !s->next) {
		free(composite);
		return -1;
	}
	for (i = 3; i <= root; i += 2) {
		if (composite[i])
			continue;
		s->prime[s->count] = i;
		s->next[s->count++] = (uint64_t)i * i;
		for (j = i * i; j <= root; j += 2 * i)
			composite[j] = 1;
	}
	free(composite);
	return 0;
}

static void sievers_free(struct sievers *s)
{
	free(s->prime);
	free(s->next);
}

/* sieve_segment crosses off, in seg, the odd composites in [low, high);
 * seg[i] stands for low + 2i and low is odd. */
static void sieve_segment(struct sievers *s, char *seg, uint64_t low,
			  uint64_t high)
{
	size_t k;
	uint64_t m, step;

	memset(seg, 1, (size_t)((high - low) / 2));
	for (k = 0; k < s->count; k++) {
		step = 2 * (uint64_t)s->prime[k];
		for (m = s->next[k]; m < high; m += step)
			seg[(m - low) / 2] = 0;
		s->next[k] = m;
	}
}

/* count_odd_primes returns the primes in seg, which holds the odd numbers
 * from low up to below or a full segment, whichever ends first. */
static long long count_odd_primes(const char *seg, uint64_t low, uint64_t below)
{
	uint64_t n = (below - low + 1) / 2;
	long long count = 0;
	uint64_t i;

	if (n > SEGMENT)
		n = SEGMENT;
	for (i = 0; i < n; i++)
		count += seg[i];
	return count;
}

/* count_below returns the number of primes < below, or -1 when out of
 * memory. */
static long long count_below(uint64_t below)
{
	struct sievers s = { 0 };
	char *seg = NULL;
	long long count = -1;
	uint64_t low;

	if (below <= 2)
		return 0;
	seg = malloc(SEGMENT);
	if (!seg || sievers_init(&s, (uint32_t)sqrt((double)(below - 1))) == -1)
		goto out;
	count = 1; /* the prime 2 */
	/* Every segment is full-length even past below: the tail is sieved
	 * but not counted, which keeps the bounds arithmetic trivial. */
	for (low = 3; low < below; low += 2 * SEGMENT) {
		sieve_segment(&s, seg, low, low + 2 * SEGMENT);
		count += count_odd_primes(seg, low, below);
	}
out:
	sievers_free(&s);
	free(seg);
	return count;
}

/* primes_run returns a new {"count": primes < below}, or NULL with job->error
 * set when memory runs out. */
static json_t *primes_run(const json_t *args, struct kind_job *job)
{
	double below = json_number_value(json_object_get(args, "below"));
	long long count;
	json_t *result;

	if (!(below >= 0 && below <= PRIMES_MAX)) {
		job->error = "below is out of range";
		return NULL;
	}
	count = count_below((uint64_t)below);
	result = count < 0 ? NULL : json_pack("{s:I}", "count", (json_int_t)count);
	if (!result)
		job->error = "out of memory";
	return result;
}

const struct kind kind_primes = {
	.name = "primes",
	.validate = primes_validate,
	.run = primes_run,
};
