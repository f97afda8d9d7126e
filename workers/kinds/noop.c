/* noop.c - the "noop" kind: takes no args and does nothing.  It measures
 * the pool's own overhead per job. */
#include "kinds.h"

static const char *const noop_fields[] = { NULL };

/* noop_validate rejects every member of args. */
static void noop_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	kind_check_only(args, noop_fields, err, ctx);
}

/* noop_run returns a new empty object, or NULL when out of memory. */
static json_t *noop_run(const json_t *args, struct kind_job *job)
{
	json_t *result = json_object();

	if (!result)
		job->error = "out of memory";
	return result;
}

const struct kind kind_noop = {
	.name = "noop",
	.validate = noop_validate,
	.run = noop_run,
};
