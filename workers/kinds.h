/* kinds.h - the job kind interface and its registration table.
 *
 * A kind is one file in workers/kinds/ that fills in a struct kind, plus one
 * line in kinds/table.c.  The same objects are linked into the server (which
 * only calls validate, at submission time, so a bad job is a 400 and never
 * reaches a worker) and into jobpool-worker (which calls run).
 */
#ifndef JOBPOOL_KINDS_H
#define JOBPOOL_KINDS_H

#include <jansson.h>

/* kind_err_fn reports one invalid field of args.  field is relative to args
 * ("seconds", "value"), or "" for args itself; msg is a short sentence. */
typedef void (*kind_err_fn)(void *ctx, const char *field, const char *msg);

struct kind {
	const char *name;
	/* validate checks args (a borrowed JSON object, never NULL: a missing
	 * args is passed as {}) and calls err once per problem.  It must not
	 * keep args.  Unknown members of args are a problem too. */
	void (*validate)(const json_t *args, kind_err_fn err, void *ctx);
	/* run does the job inside the worker process.  args is borrowed and was
	 * validated by the server.  Returns a new JSON result, or NULL with
	 * *error set to a static sentence. */
	json_t *(*run)(const json_t *args, const char **error);
};

/* kind_find returns the registered kind called name, or NULL. */
const struct kind *kind_find(const char *name);

/* kind_names writes the registered names, comma-separated, into buf. */
void kind_names(char *buf, size_t size);

/* Helpers for kinds' validate functions. */

/* kind_check_only lets args hold only the listed member names (NULL-ended);
 * every other member is reported as unknown.  Returns the count reported. */
int kind_check_only(const json_t *args, const char *const *allowed,
		    kind_err_fn err, void *ctx);

/* kind_number reads a required (or optional, when required is 0) number
 * member and checks lo <= value <= hi.  Stores it in *out (untouched when
 * absent).  Returns 0, or -1 after reporting the problem. */
int kind_number(const json_t *args, const char *field, int required,
		double lo, double hi, int integer, double *out,
		kind_err_fn err, void *ctx);

#endif
