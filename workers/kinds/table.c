/* table.c - the one registration table of job kinds.
 *
 * Adding a kind: write kinds/<name>.c defining kind_<name>, declare it
 * below, add it to kinds[], and list the file in workers/meson.build.
 */
#include <stdio.h>
#include <string.h>

#include "kinds.h"

extern const struct kind kind_sleep;
extern const struct kind kind_noop;
extern const struct kind kind_echo;
extern const struct kind kind_primes;
extern const struct kind kind_matmul;
extern const struct kind kind_fail;
extern const struct kind kind_command;

/* The order here is the order kind_names lists them in. */
static const struct kind *const kinds[] = {
	&kind_sleep,
	&kind_noop,
	&kind_echo,
	&kind_primes,
	&kind_matmul,
	&kind_fail,
	&kind_command,
};

#define KIND_COUNT (sizeof kinds / sizeof kinds[0])

/* kind_find returns the registered kind called name (borrowed, static), or
 * NULL when there is none or name is NULL. */
const struct kind *kind_find(const char *name)
{
	size_t i;

	if (!name)
		return NULL;
	for (i = 0; i < KIND_COUNT; i++)
		if (strcmp(kinds[i]->name, name) == 0)
			return kinds[i];
	return NULL;
}

/* kind_names writes "sleep, noop, ..." into buf for error messages.  A buf
 * too small gets a truncated but NUL-terminated list; size 0 writes nothing. */
void kind_names(char *buf, size_t size)
{
	size_t used = 0;
	size_t i;
	int n;

	if (size == 0)
		return;
	buf[0] = '\0';
	for (i = 0; i < KIND_COUNT && used < size; i++) {
		n = snprintf(buf + used, size - used, "%s%s",
			     i ? ", " : "", kinds[i]->name);
		if (n < 0)
			return;
		used += (size_t)n;
	}
}
