/* test_pool.c - unit tests for pool.c through its spawn hook: a worker that
 * cannot be started is retried, never forgotten.  No process is started;
 * pool_spawn is replaced by a fake that fails or pretends. */
#include <errno.h>

#include <criterion/criterion.h>

#include "jobpool.h"

static int spawn_errno;         /* what the fake returns; 0: success */
static int spawns;

/* fake_spawn counts the spawns and fails with spawn_errno, or succeeds
 * with a pid no process has (nothing is ever signaled in these tests). */
static int fake_spawn(pid_t *pid, const char *path,
		      const posix_spawn_file_actions_t *fa,
		      const posix_spawnattr_t *attr, char *const argv[],
		      char *const envp[])
{
	spawns++;
	if (spawn_errno)
		return spawn_errno;
	*pid = 4000000 + spawns;
	return 0;
}

static void no_event(struct slot *s)
{
}

static void no_done(struct slot *s, const json_t *msg)
{
}

static void no_death(struct slot *s, int status)
{
}

static const struct pool_events events = {
	.job_done = no_done,
	.worker_died = no_death,
	.timeout = no_event,
};

static void setup(void)
{
	cfg.worker_bin = "/nonexistent/jobpool-worker";
	pool_spawn = fake_spawn;
	cr_assert_eq(loop_init(), 0);
	cr_assert_eq(pool_start(0, &events), 0);
}

TestSuite(pool, .init = setup);

/* Regression: PUT /v1/pool grew the pool with spawns whose failure was
 * ignored; those slots stayed empty for good (no retry was due) while
 * GET /v1/pool counted them. */
Test(pool, resize_retries_a_failed_spawn)
{
	struct slot *s;
	int i;

	spawn_errno = EAGAIN;
	cr_assert_eq(pool_resize(2), 0);
	cr_assert_eq(spawns, 2);
	cr_assert_eq(pool_size(), 2);
	cr_assert_not(pool_ready(), "a pool that could not start is not ready");
	for (i = 0; i < 2; i++) {
		s = pool_slot(i);
		cr_assert_eq(s->state, SLOT_EMPTY);
		cr_assert_gt(s->respawn_mono, 0, "slot %d: no retry is due", i);
	}
	/* the retry, once due, starts the workers */
	spawn_errno = 0;
	pool_tick(mono_us() + 2000000);
	cr_assert_eq(spawns, 4);
	for (i = 0; i < 2; i++)
		cr_assert_eq(pool_slot(i)->state, SLOT_STARTING, "slot %d", i);
}

Test(pool, retry_waits_while_spawning_still_fails)
{
	spawn_errno = ENOMEM;
	cr_assert_eq(pool_resize(1), 0);
	pool_tick(mono_us() + 2000000);
	cr_assert_eq(spawns, 2, "retried once when due");
	cr_assert_eq(pool_slot(0)->state, SLOT_EMPTY);
	cr_assert_gt(pool_slot(0)->respawn_mono, 0, "and due again later");
	pool_tick(mono_us());
	cr_assert_eq(spawns, 2, "not before it is due");
}
