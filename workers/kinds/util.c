/* util.c - helpers shared by the kinds.
 *
 * Every kind reports problems through the same few sentences, so a client
 * sees "must be an integer between 1 and 2048" whatever kind it submitted.
 * Output a job produced becomes JSON text here, valid UTF-8 whatever the
 * bytes were.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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
			char field[128];

			kind_pointer_escape(key, field, sizeof(field));
			err(ctx, field, "is not a known field");
			count++;
		}
	}
	return count;
}

/* kind_pointer_escape writes name as one JSON Pointer segment (RFC 6901:
 * "~" as "~0", "/" as "~1"), cut short to fit size. */
void kind_pointer_escape(const char *name, char *out, size_t size)
{
	size_t n = 0;

	for (; *name && n + 3 < size; name++) {
		if (*name == '~' || *name == '/') {
			out[n++] = '~';
			out[n++] = *name == '~' ? '0' : '1';
		} else {
			out[n++] = *name;
		}
	}
	out[n] = 0;
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

/* utf8_length returns the length of the valid UTF-8 character at s (len
 * bytes available), or 0 for an invalid byte.  NUL counts as invalid:
 * clients choke on it.  The rules are jansson's: no overlong forms, no
 * surrogates, nothing past U+10FFFF. */
static size_t utf8_length(const unsigned char *s, size_t len)
{
	unsigned cp, min;
	size_t n, i;

	if (s[0] < 0x80)
		return s[0] ? 1 : 0;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f, min = 0x80;
	else if ((s[0] & 0xf0) == 0xe0)
		n = 3, cp = s[0] & 0x0f, min = 0x800;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07, min = 0x10000;
	else
		return 0;
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : n;
}

/* may_complete tells whether the len bytes at s (fewer than their lead
 * byte asks for) could still become a valid character when more come. */
static int may_complete(const unsigned char *s, size_t len)
{
	size_t need = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2, i;

	if (s[0] < 0xc2 || s[0] > 0xf4 || len >= need)
		return 0;
	for (i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return 1;
}

size_t kind_utf8_text(const char *in, size_t len, char *out, size_t *used,
		      size_t cap, int at_end, int *cut)
{
	static const char replacement[] = "\xef\xbf\xbd";
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, n;

	while (i < len) {
		n = utf8_length(s + i, len - i);
		/* Held back, not replaced: the rest may be in the next read,
		 * and the text must come out as it would from all at once. */
		if (!n && !at_end && may_complete(s + i, len - i))
			break;
		if (*used + (n ? n : 3) > cap) {
			*cut = 1;
			break;
		}
		memcpy(out, n ? in + i : replacement, n ? n : 3);
		out += n ? n : 3;
		*used += n ? n : 3;
		i += n ? n : 1;
	}
	return i;
}

/* kind_utf8_string returns a new JSON string of the len bytes at in, each
 * invalid byte (NUL too) replaced by U+FFFD, and cut at a character
 * boundary to at most cap bytes, setting *truncated when it was cut.
 * Returns NULL when out of memory; in stays the caller's. */
json_t *kind_utf8_string(const char *in, size_t len, size_t cap,
			 int *truncated)
{
	size_t used = 0;
	char *out = malloc(len * 3 + 1);
	json_t *str;

	if (!out)
		return NULL;
	kind_utf8_text(in, len, out, &used, cap, 1, truncated);
	str = json_stringn(out, used);
	free(out);
	return str;
}
