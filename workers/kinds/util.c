/* util.c - helpers shared by the kinds' validate functions.
 *
 * Every kind reports problems through the same few sentences, so a client
 * sees "must be an integer between 1 and 2048" whatever kind it submitted.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kinds.h"

/* is_allowed says whether key is one of the NULL-ended names in allowed. */
static int is_allowed(const char *key, const char *const *allowed)
{
	for (; *allowed; allowed++)
		if (strcmp(key, *allowed) == 0)
			return 1;
	return 0;
}

/* kind_check_only reports every member of args not named in allowed, and
 * args itself when it is not an object.  Returns the count reported; it
 * never fails otherwise and keeps nothing. */
int kind_check_only(const json_t *args, const char *const *allowed,
		    kind_err_fn err, void *ctx)
{
	const char *key;
	json_t *value;
	int count = 0;

	if (!json_is_object(args)) {
		err(ctx, "", "must be an object");
		return 1;
	}
	/* The iteration macro wants a non-const object; it does not modify it. */
	json_object_foreach((json_t *)args, key, value) {
		if (!is_allowed(key, allowed)) {
			err(ctx, key, "is not a known field");
			count++;
		}
	}
	return count;
}

/* report_range reports field as not a number (or integer) in [lo, hi].
 * One sentence covers wrong types, fractions and out-of-range values alike:
 * it tells the client what would be accepted. */
static void report_range(const char *field, double lo, double hi, int integer,
			 kind_err_fn err, void *ctx)
{
	char msg[96];

	/* %.15g prints 4294967295 and 86400 as written, not in e-notation. */
	snprintf(msg, sizeof msg, "must be %s between %.15g and %.15g",
		 integer ? "an integer" : "a number", lo, hi);
	err(ctx, field, msg);
}

/* number_fits says whether member is a JSON number in [lo, hi], and with no
 * fraction when integer is set.  jansson keeps integers and reals apart;
 * json_number_value reads both, so "seconds": 1 is as good as 1.0. */
static int number_fits(const json_t *member, double lo, double hi, int integer)
{
	double value;

	if (!json_is_number(member))
		return 0;
	value = json_number_value(member);
	if (!(value >= lo && value <= hi))
		return 0;
	return !integer || value == floor(value);
}

/* kind_number reads the number member field of args into *out.  For integer
 * fields a real with no fraction (3.0) is accepted too; booleans, strings
 * and null never are.  Returns 0 (also when an optional field is absent,
 * leaving *out untouched), or -1 after reporting exactly one problem. */
int kind_number(const json_t *args, const char *field, int required,
		double lo, double hi, int integer, double *out,
		kind_err_fn err, void *ctx)
{
	json_t *member = json_object_get(args, field);

	if (!member) {
		if (required)
			err(ctx, field, "is required");
		return required ? -1 : 0;
	}
	if (!number_fits(member, lo, hi, integer)) {
		report_range(field, lo, hi, integer, err, ctx);
		return -1;
	}
	*out = json_number_value(member);
	return 0;
}
