/* store_fixture.h - what the store's unit tests share: a fresh database in
 * a temporary directory per test, fake clocks, and small JSON readers
 * that fail the test on a missing or mistyped member.  Functions are
 * static inline so a test file may leave some unused. */
#ifndef JOBPOOL_STORE_FIXTURE_H
#define JOBPOOL_STORE_FIXTURE_H

#include <limits.h>
#include <stdio.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "jobpool.h"

/* 2023-11-14T22:13:20.000Z */
#define T0 INT64_C(1700000000000000)
#define SEC INT64_C(1000000)

static char dir[64];
static char db_path[PATH_MAX];

static inline void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/jobpool-store-XXXXXX");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp failed");
	snprintf(db_path, sizeof(db_path), "%s/jobpool.db", dir);
	cr_assert_eq(store_open(db_path), 0, "store_open %s", db_path);
}

static inline void remove_db_file(const char *suffix)
{
	char p[PATH_MAX + 8];

	snprintf(p, sizeof(p), "%s%s", db_path, suffix);
	unlink(p);
}

static inline void teardown(void)
{
	store_close();
	remove_db_file("");
	remove_db_file("-wal");
	remove_db_file("-shm");
	rmdir(dir);
}

static inline const char *str(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	cr_assert(json_is_string(v), "%s is not a string", key);
	return json_string_value(v);
}

static inline json_int_t integer(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	cr_assert(json_is_integer(v), "%s is not an integer", key);
	return json_integer_value(v);
}

static inline double number(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	cr_assert(json_is_number(v), "%s is not a number", key);
	return json_number_value(v);
}

static inline int is_null(const json_t *obj, const char *key)
{
	return json_is_null(json_object_get(obj, key));
}

/* batch returns the new JSON of batch id, failing the test if absent.
 * Clients read what is committed, so the open transaction is first. */
static inline json_t *batch(int64_t id)
{
	json_t *b;

	cr_assert_eq(store_flush(), 0, "commit");
	b = store_batch_json(id);

	cr_assert_not_null(b, "batch %lld not found", (long long)id);
	return b;
}

static inline json_t *job(int64_t id)
{
	json_t *j;

	cr_assert_eq(store_flush(), 0, "commit");
	j = store_job_json(id);

	cr_assert_not_null(j, "job %lld not found", (long long)id);
	return j;
}

static inline void assert_time(const json_t *obj, const char *key, int64_t us)
{
	char want[40];

	fmt_time(want, sizeof(want), us);
	cr_assert_str_eq(str(obj, key), want, "%s", key);
}

#endif
