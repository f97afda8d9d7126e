/* matmul.c - the "matmul" kind: multiplies two pseudo-random n x n matrices
 * and returns a checksum of the product.  A CPU- and memory-bound job whose
 * answer depends only on n and seed.
 *
 * The matrices come from splitmix64 seeded by "seed" (default 1): A's
 * entries row by row, then B's, each the top 53 bits of the next output
 * scaled to [0, 1).  Changing the generator changes every checksum, which
 * clients may have recorded, so treat it as part of the API.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kinds.h"

#define MATMUL_MAX_N 2048
#define MATMUL_DEFAULT_SEED 1

static const char *const matmul_fields[] = { "n", "seed", NULL };

/* matmul_validate requires "n" in [1, MATMUL_MAX_N] and allows "seed", an
 * unsigned 32-bit integer. */
static void matmul_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	double n, seed;

	kind_check_only(args, matmul_fields, err, ctx);
	kind_number(args, "n", 1, 1, MATMUL_MAX_N, 1, &n, err, ctx);
	kind_number(args, "seed", 0, 0, 4294967295.0, 1, &seed, err, ctx);
}

/* splitmix64 advances *state and returns the next output (Steele, Lea and
 * Flood 2014); any seed, 0 included, gives a good stream. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* fill sets the count entries of m to the next outputs in [0, 1). */
static void fill(double *m, size_t count, uint64_t *state)
{
	size_t i;

	for (i = 0; i < count; i++)
		m[i] = (double)(splitmix64(state) >> 11) * 0x1.0p-53;
}

/* multiply adds a * b to c (all n x n, row-major).  The i-k-j order walks
 * b and c along rows, so the inner loop streams through memory. */
static void multiply(const double *a, const double *b, double *c, size_t n)
{
	size_t i, j, k;
	double aik;

	for (i = 0; i < n; i++)
		for (k = 0; k < n; k++) {
			aik = a[i * n + k];
			for (j = 0; j < n; j++)
				c[i * n + j] += aik * b[k * n + j];
		}
}

/* checksum returns the sum of the count entries of m, rounded to 6
 * decimals so the result reads the same however it is printed. */
static double checksum(const double *m, size_t count)
{
	double sum = 0;
	size_t i;

	for (i = 0; i < count; i++)
		sum += m[i];
	return round(sum * 1e6) / 1e6;
}

/* matmul_run returns a new {"checksum": sum of A * B}, or NULL with
 * job->error set when n is out of range or memory runs out (n = 2048 needs
 * 96 MiB). */
static json_t *matmul_run(const json_t *args, struct kind_job *job)
{
	double n_arg = json_number_value(json_object_get(args, "n"));
	json_t *seed_arg = json_object_get(args, "seed");
	double seed = seed_arg ? json_number_value(seed_arg) : MATMUL_DEFAULT_SEED;
	uint64_t state;
	size_t n;
	double *a = NULL, *b = NULL, *c = NULL;
	json_t *result = NULL;

	/* Checked again because converting an out-of-range double is undefined. */
	if (!(n_arg >= 1 && n_arg <= MATMUL_MAX_N && seed >= 0 &&
	      seed <= 4294967295.0)) {
		job->error = "n or seed is out of range";
		return NULL;
	}
	n = (size_t)n_arg;
	state = (uint64_t)seed;
	a = malloc(n * n * sizeof *a);
	b = malloc(n * n * sizeof *b);
	c = calloc(n * n, sizeof *c);
	if (!a || !b || !c)
		goto out;
	fill(a, n * n, &state);
	fill(b, n * n, &state);
	multiply(a, b, c, n);
	result = json_pack("{s:f}", "checksum", checksum(c, n * n));
out:
	if (!result)
		job->error = "out of memory";
	free(a);
	free(b);
	free(c);
	return result;
}

const struct kind kind_matmul = {
	.name = "matmul",
	.validate = matmul_validate,
	.run = matmul_run,
};
