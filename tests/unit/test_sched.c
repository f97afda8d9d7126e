/* test_sched.c - unit tests for the scheduler list: order (priority, then
 * id), concurrency limits, the queued-job counters, and list integrity
 * across removals.  Each test runs in its own process, so the list starts
 * empty; the fini still clears it so the leak checker stays quiet. */
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "jobpool.h"

static void clear(void)
{
	sched_clear();
}

TestSuite(sched, .fini = clear);

/* add puts a batch with the given fields on the schedule and returns it. */
static struct sbatch *add(int64_t id, int priority, int concurrency,
			  int queued, int running)
{
	struct batch_info b = {
		.id = id, .priority = priority, .concurrency = concurrency,
		.queued = queued, .running = running,
	};
	struct sbatch *s;

	sched_add(&b);
	s = sched_find(id);
	cr_assert_not_null(s, "batch %lld not found after add", (long long)id);
	cr_assert_eq(sched_id(s), id);
	return s;
}

/* drain empties the schedule by picking and removing, and writes the ids in
 * pick order to out.  Returns how many there were.  Every batch must have a
 * queued job and room, or it would not be picked. */
static int drain(int64_t *out, int max)
{
	struct sbatch *b;
	int n = 0;

	while ((b = sched_pick())) {
		cr_assert_lt(n, max, "more batches than expected");
		out[n++] = sched_id(b);
		sched_remove(b);
	}
	return n;
}

static void assert_order(const int64_t *want, int n_want)
{
	int64_t got[16];
	int n = drain(got, 16), i;

	cr_assert_eq(n, n_want, "want %d batches, picked %d", n_want, n);
	for (i = 0; i < n; i++)
		cr_assert_eq(got[i], want[i], "pick %d: want b%lld, got b%lld",
			     i, (long long)want[i], (long long)got[i]);
	cr_assert_eq(sched_queued_total(), 0);
}

Test(sched, empty)
{
	cr_assert_null(sched_pick());
	cr_assert_null(sched_find(1));
	cr_assert_eq(sched_queued_total(), 0);
	sched_clear();
	cr_assert_null(sched_pick());
}

Test(sched, priority_then_fifo)
{
	const int64_t want[] = { 2, 5, 1, 3, 4 };

	add(1, 0, 0, 1, 0);
	add(2, 5, 0, 1, 0);
	add(3, 0, 0, 1, 0);
	add(4, -1, 0, 1, 0);
	add(5, 5, 0, 1, 0);
	cr_assert_eq(sched_queued_total(), 5);
	assert_order(want, 5);
}

Test(sched, fifo_by_id_not_by_insertion)
{
	const int64_t want[] = { 1, 2, 3, 4 };

	add(3, 0, 0, 1, 0);
	add(1, 0, 0, 1, 0);
	add(4, 0, 0, 1, 0);
	add(2, 0, 0, 1, 0);
	assert_order(want, 4);
}

Test(sched, later_higher_priority_goes_first)
{
	const int64_t want[] = { 4, 3, 1, 2 };

	add(1, 0, 0, 1, 0);
	add(2, 0, 0, 1, 0);
	add(3, 10, 0, 1, 0);
	add(4, 1000, 0, 1, 0);
	assert_order(want, 4);
}

Test(sched, negative_priorities_go_last)
{
	const int64_t want[] = { 3, 1, 2 };

	add(1, -5, 0, 1, 0);
	add(2, -1000, 0, 1, 0);
	add(3, 0, 0, 1, 0);
	assert_order(want, 3);
}

Test(sched, batch_without_queued_jobs_is_skipped)
{
	struct sbatch *b;

	add(1, 9, 0, 0, 2);     /* only running jobs */
	add(2, 0, 0, 1, 0);
	b = sched_pick();
	cr_assert_not_null(b);
	cr_assert_eq(sched_id(b), 2);
}

Test(sched, batch_at_its_limit_is_skipped)
{
	struct sbatch *hi = add(1, 5, 2, 5, 0);
	struct sbatch *lo = add(2, 0, 0, 3, 0);

	cr_assert_eq(sched_pick(), hi);
	sched_started(hi);
	cr_assert_eq(sched_pick(), hi);
	sched_started(hi);
	/* hi runs 2 of 2: the lower priority batch gets the slot */
	cr_assert_eq(sched_pick(), lo);
	sched_started(lo);
	cr_assert_eq(sched_pick(), lo);
	sched_finished(hi);
	cr_assert_eq(sched_pick(), hi, "room again after a job finished");
}

Test(sched, running_at_add_counts_against_the_limit)
{
	add(1, 5, 3, 4, 3);
	cr_assert_null(sched_pick());
	add(2, 0, 1, 1, 0);
	cr_assert_eq(sched_id(sched_pick()), 2);
}

Test(sched, concurrency_zero_is_unlimited)
{
	struct sbatch *b = add(1, 0, 0, 50, 0);
	int i;

	for (i = 0; i < 50; i++) {
		cr_assert_eq(sched_pick(), b, "pick %d", i);
		sched_started(b);
	}
	cr_assert_null(sched_pick(), "no queued job left");
	cr_assert_eq(sched_queued_total(), 0);
}

Test(sched, concurrency_one)
{
	struct sbatch *b = add(1, 0, 1, 3, 0);

	cr_assert_eq(sched_pick(), b);
	sched_started(b);
	cr_assert_null(sched_pick());
	sched_requeued(b);
	cr_assert_eq(sched_pick(), b, "a requeued job frees its slot");
}

Test(sched, counts_stay_consistent)
{
	struct sbatch *a = add(1, 0, 0, 4, 0);
	struct sbatch *b = add(2, 0, 0, 3, 1);

	cr_assert_eq(sched_queued_total(), 7);
	sched_started(a);
	sched_started(a);
	cr_assert_eq(sched_queued_total(), 5);
	sched_finished(a);
	cr_assert_eq(sched_queued_total(), 5, "finishing changes no queue");
	sched_requeued(a);
	cr_assert_eq(sched_queued_total(), 6);
	sched_drop_queued(b, 3);
	cr_assert_eq(sched_queued_total(), 3);
	/* b has nothing queued now, only its running job */
	cr_assert_eq(sched_pick(), a);
	sched_remove(b);
	cr_assert_eq(sched_queued_total(), 3, "b had no queued jobs left");
	sched_remove(a);
	cr_assert_eq(sched_queued_total(), 0,
		     "removing a batch drops its queued jobs");
}

Test(sched, remove_subtracts_remaining_queued)
{
	struct sbatch *a = add(1, 0, 0, 4, 0);

	add(2, 0, 0, 2, 0);
	sched_started(a);
	cr_assert_eq(sched_queued_total(), 5);
	sched_remove(a);
	cr_assert_eq(sched_queued_total(), 2);
}

Test(sched, remove_head_middle_tail)
{
	const int64_t want[] = { 0, 2, 4, 6 };
	int i;

	for (i = 1; i <= 5; i++)
		add(i, 0, 0, 1, 0);
	sched_remove(sched_find(1));    /* head */
	sched_remove(sched_find(3));    /* middle */
	sched_remove(sched_find(5));    /* tail */
	cr_assert_null(sched_find(1));
	cr_assert_null(sched_find(3));
	cr_assert_null(sched_find(5));
	cr_assert_eq(sched_queued_total(), 2);
	/* new head and tail are linked right: inserting at both ends works */
	add(6, 0, 0, 1, 0);
	add(0, 0, 0, 1, 0);
	assert_order(want, 4);
}

Test(sched, remove_only_entry_then_add)
{
	const int64_t want[] = { 8, 7 };

	sched_remove(add(7, 0, 0, 1, 0));
	cr_assert_null(sched_pick());
	cr_assert_null(sched_find(7));
	add(7, 0, 0, 1, 0);
	add(8, 1, 0, 1, 0);
	assert_order(want, 2);
}

Test(sched, remove_while_others_are_limited)
{
	struct sbatch *a = add(1, 5, 1, 2, 1);

	add(2, 1, 0, 1, 0);
	add(3, 0, 0, 1, 0);
	cr_assert_eq(sched_id(sched_pick()), 2, "a is at its limit");
	sched_remove(sched_find(2));
	cr_assert_eq(sched_id(sched_pick()), 3);
	sched_finished(a);
	cr_assert_eq(sched_pick(), a);
}

Test(sched, clear_empties)
{
	int i;

	for (i = 1; i <= 10; i++)
		add(i, i % 3, 0, i, 0);
	cr_assert_eq(sched_queued_total(), 55);
	sched_clear();
	cr_assert_eq(sched_queued_total(), 0);
	cr_assert_null(sched_pick());
	for (i = 1; i <= 10; i++)
		cr_assert_null(sched_find(i));
	add(11, 0, 0, 1, 0);
	cr_assert_eq(sched_id(sched_pick()), 11, "usable after clear");
}

Test(sched, add_copies_the_info)
{
	struct batch_info b = { .id = 1, .queued = 1 };
	struct sbatch *s;

	sched_add(&b);
	b.queued = 0;
	b.id = 99;
	s = sched_pick();
	cr_assert_not_null(s);
	cr_assert_eq(sched_id(s), 1);
}

Test(sched, many_batches_keep_order)
{
	int64_t got[16], prev_prio = 1000000, prev_id = 0;
	int prio[16], n, i;

	/* ids 1..16 with priorities cycling 3,1,2,0 */
	for (i = 0; i < 16; i++) {
		prio[i] = (int[]){ 3, 1, 2, 0 }[i % 4];
		add(i + 1, prio[i], 0, 1, 0);
	}
	n = drain(got, 16);
	cr_assert_eq(n, 16);
	for (i = 0; i < n; i++) {
		int p = prio[got[i] - 1];

		cr_assert(p < prev_prio || (p == prev_prio && got[i] > prev_id),
			  "b%lld (priority %d) out of order", (long long)got[i], p);
		prev_prio = p;
		prev_id = got[i];
	}
}

/* Many batches: the id lookup keeps finding every one while the table
 * grows and after removals (ids that share low bits share a bucket). */
Test(sched, find_many_across_growth_and_removal)
{
	int64_t id;

	for (id = 1; id <= 5000; id++)
		add(id * 1024, 0, 0, 1, 0);
	cr_assert_eq(sched_count(), 5000);
	for (id = 2; id <= 5000; id += 2)
		sched_remove(sched_find(id * 1024));
	for (id = 1; id <= 5000; id++) {
		struct sbatch *s = sched_find(id * 1024);

		if (id % 2)
			cr_assert(s && sched_id(s) == id * 1024,
				  "batch %lld lost", (long long)id);
		else
			cr_assert_null(s, "removed batch %lld found",
				       (long long)id);
	}
	cr_assert_eq(sched_count(), 2500);
	cr_assert_eq(sched_queued_total(), 2500);
	cr_assert_null(sched_find(7));
}
