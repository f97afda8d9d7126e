/* echo.c - the "echo" kind: returns its "value" argument unchanged.  Any
 * JSON is a value, null included; the server caps args at PROTO_MAX_ARGS, so
 * the result always fits in a "done" message. */
#include "kinds.h"

static const char *const echo_fields[] = { "value", NULL };

/* echo_validate requires "value" and nothing else. */
static void echo_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	kind_check_only(args, echo_fields, err, ctx);
	if (!json_object_get(args, "value"))
		err(ctx, "value", "is required");
}

/* echo_run returns a new {"value": copy}.  It copies rather than sharing
 * references so the result never aliases the caller's args.  Returns NULL
 * with job->error set when value is missing or memory runs out. */
static json_t *echo_run(const json_t *args, struct kind_job *job)
{
	json_t *value = json_object_get(args, "value");
	json_t *result;

	if (!value) {
		job->error = "value is required";
		return NULL;
	}
	result = json_pack("{s:o}", "value", json_deep_copy(value));
	if (!result)
		job->error = "out of memory";
	return result;
}

const struct kind kind_echo = {
	.name = "echo",
	.validate = echo_validate,
	.run = echo_run,
};
