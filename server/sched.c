/* sched.c - which batch runs next.
 *
 * Holds the unfinished batches that still have work (queued jobs, or jobs
 * running) in one list ordered by priority (high first), then id (FIFO).
 * sched_pick walks it from the head and returns the first batch with a
 * queued job and room under its own concurrency.  Only batches at their
 * limit are skipped, and each of those holds a running job, so a pick looks
 * at no more than pool-size + 1 entries whatever the queue length, plus the
 * batches a client paused (POST /v1/batches/{id}/pause), which are skipped
 * too.  A server-wide pause (sched_pause_all) picks nothing; jobs already
 * handed to a worker in a group still start, as the worker runs them.
 * Which job of the batch runs next is the store's question (lowest index).
 */
#include <stdlib.h>

#include "jobpool.h"

struct sbatch {
	struct batch_info b;
	struct sbatch *hnext;   /* next in its hash bucket */
	int delayed;            /* queued but waiting out a retry backoff */
	int64_t queued_since;   /* now_us() when queued last rose from 0;
				 * 0 while none is queued (see queued_note) */
	/* groups */
	int runs;               /* finished runs seen, up to RUNS_KNOWN */
	double run_us;          /* their moving average */
	int no_groups;
	int64_t cursor;         /* next unheld job is after this index */
	/* policies (sched_set_policy); window: the succeeded run times
	 * behind timeout_pct, allocated only for such a batch */
	struct halt_policy halt;
	double timeout_pct;
	int halted;
	struct median *window;
	int polled_queued, polled_running;      /* sched_policy_due */
	struct sbatch *prev, *next;
};

static struct sbatch *head, *tail;
static int queued_total;
/* POST /v1/pause: no batch is picked, so nothing new starts on this node
 * (the stored pause, store_dispatch_set: set by the API and at start, and
 * by the tick when another node changed it). */
static int all_paused;
static int nbatches;
static int nmedians;            /* batches holding a run-time window */

/* Finding a batch by id happens for every finished job: a hash keeps it
 * O(1) however many batches wait (ids are sequential, so the low bits
 * spread them well). */
static struct sbatch **buckets;
static size_t nbuckets;

static void hash_put(struct sbatch *n)
{
	size_t i = (size_t)n->b.id & (nbuckets - 1);

	n->hnext = buckets[i];
	buckets[i] = n;
}

static void hash_grow(void)
{
	size_t old = nbuckets, i;
	struct sbatch **ob = buckets, *p, *next;

	nbuckets = old ? old * 2 : 1024;
	buckets = calloc(nbuckets, sizeof(*buckets));
	if (!buckets)
		abort();
	for (i = 0; i < old; i++)
		for (p = ob[i]; p; p = next) {
			next = p->hnext;
			hash_put(p);
		}
	free(ob);
}

static void hash_del(struct sbatch *n)
{
	struct sbatch **pp = &buckets[(size_t)n->b.id & (nbuckets - 1)];

	while (*pp && *pp != n)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = n->hnext;
}

/* queued_note keeps b->queued_since after its queued count changed from
 * old.  It stands in for the queue time of the batch's oldest queued job:
 * jobs are claimed lowest index first, so while the count stays above 0
 * the oldest one is usually still the one that arrived when it rose (a
 * new batch's first job).  It can overstate the age (that job may have
 * started while later ones kept the count up) and, for a batch loaded
 * at start or taken over from another node, counts from then, not from
 * the job's own queue time.  Cheap, which is what a scrape wants. */
static void queued_note(struct sbatch *b, int old)
{
	if (b->b.queued <= 0)
		b->queued_since = 0;
	else if (old <= 0 || !b->queued_since)
		b->queued_since = now_us();
}

static int before(const struct sbatch *a, const struct sbatch *b)
{
	if (a->b.priority != b->b.priority)
		return a->b.priority > b->b.priority;
	return a->b.id < b->b.id;
}

/* link_in puts n in the list at its place.  New batches usually go last
 * among their priority, so the insertion point is searched from the tail. */
static void link_in(struct sbatch *n)
{
	struct sbatch *p;

	for (p = tail; p && before(n, p); p = p->prev)
		;
	n->prev = p;
	n->next = p ? p->next : head;
	if (n->next)
		n->next->prev = n;
	else
		tail = n;
	if (p)
		p->next = n;
	else
		head = n;
}

static void link_out(struct sbatch *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		head = b->next;
	if (b->next)
		b->next->prev = b->prev;
	else
		tail = b->prev;
	b->prev = b->next = NULL;
}

/* sched_add inserts a copy of b. */
void sched_add(const struct batch_info *b)
{
	struct sbatch *n = calloc(1, sizeof(*n));

	if (!n)
		abort();
	n->b = *b;
	n->cursor = -1;
	n->polled_queued = n->polled_running = -1;
	queued_note(n, 0);
	queued_total += b->queued;
	nbatches++;
	if ((size_t)nbatches > nbuckets)
		hash_grow();
	hash_put(n);
	link_in(n);
}

/* sched_set_priority moves b to its place for a new priority (PATCH
 * /v1/batches/{id}), so the next pick already honors it. */
void sched_set_priority(struct sbatch *b, int priority)
{
	if (b->b.priority == priority)
		return;
	link_out(b);
	b->b.priority = priority;
	link_in(b);
}

/* sched_set_paused: a paused batch is skipped by sched_pick; its running
 * jobs finish. */
void sched_set_paused(struct sbatch *b, int paused)
{
	b->b.paused = paused;
}

/* sched_set_concurrency: a PATCHed limit (0: none).  A lower one holds as
 * running jobs end; none is stopped for it. */
void sched_set_concurrency(struct sbatch *b, int concurrency)
{
	b->b.concurrency = concurrency;
}

void sched_pause_all(int paused)
{
	all_paused = paused;
}

int sched_all_paused(void)
{
	return all_paused;
}

struct sbatch *sched_find(int64_t id)
{
	struct sbatch *p;

	if (!nbuckets)
		return NULL;
	for (p = buckets[(size_t)id & (nbuckets - 1)]; p; p = p->hnext)
		if (p->b.id == id)
			return p;
	return NULL;
}

struct sbatch *sched_pick(void)
{
	struct sbatch *p;

	if (all_paused)
		return NULL;
	for (p = head; p; p = p->next) {
		if (p->b.queued <= 0 || p->b.paused)
			continue;
		if (p->b.concurrency > 0 && p->b.running >= p->b.concurrency)
			continue;
		return p;
	}
	return NULL;
}

int64_t sched_id(const struct sbatch *b)
{
	return b->b.id;
}

void sched_started(struct sbatch *b)
{
	b->b.queued--;
	b->b.running++;
	queued_total--;
	queued_note(b, b->b.queued + 1);
}

/* sched_cancel remembers that b was canceled: none of its jobs may be
 * retried any more. */
void sched_cancel(struct sbatch *b)
{
	b->b.cancel_req = 1;
}

int sched_canceled(const struct sbatch *b)
{
	return b->b.cancel_req;
}

int sched_count(void)
{
	return nbatches;
}

/* sched_first_start returns 1 once, for the first job start of b. */
int sched_first_start(struct sbatch *b)
{
	if (b->b.started)
		return 0;
	b->b.started = 1;
	return 1;
}

void sched_finished(struct sbatch *b)
{
	b->b.running--;
}

/* A job back in the queue may sit behind the cursor: the next claim reads
 * the batch from its start. */
void sched_requeued(struct sbatch *b)
{
	b->b.running--;
	b->b.queued++;
	queued_total++;
	queued_note(b, b->b.queued - 1);
	b->cursor = -1;
}

void sched_delayed(struct sbatch *b)
{
	b->b.running--;
	b->delayed++;
}

void sched_ready(struct sbatch *b)
{
	b->delayed--;
	b->b.queued++;
	queued_total++;
	queued_note(b, b->b.queued - 1);
	b->cursor = -1;
}

/* sched_update takes a batch's counts as the store has them now: with
 * several nodes, the others claim and finish its jobs too. */
void sched_update(struct sbatch *b, const struct batch_info *info)
{
	int old = b->b.queued;

	queued_total += info->queued - b->b.queued;
	b->b.queued = info->queued;
	queued_note(b, old);
	b->b.running = info->running;
	b->b.cancel_req = info->cancel_req;
	b->b.started = b->b.started || info->started;
	/* another node's pause or PATCH */
	b->b.paused = info->paused;
	b->b.concurrency = info->concurrency;
	sched_set_priority(b, info->priority);
}

int sched_queued(const struct sbatch *b)
{
	return b->b.queued;
}

void sched_drop_queued(struct sbatch *b, int n)
{
	b->b.queued -= n;
	queued_total -= n;
	queued_note(b, b->b.queued + n);
}

void sched_remove(struct sbatch *b)
{
	link_out(b);
	queued_total -= b->b.queued;
	nbatches--;
	hash_del(b);
	if (b->window)
		nmedians--;
	free(b->window);
	free(b);
}

int sched_queued_total(void)
{
	return queued_total;
}

/* sched_bytes is what the scheduler holds: one entry per unfinished batch
 * (at most --max-open-batches) and the hash, which never shrinks below
 * the largest count seen. */
size_t sched_bytes(void)
{
	return (size_t)nbatches * sizeof(struct sbatch) +
	       nbuckets * sizeof(*buckets) +
	       (size_t)nmedians * sizeof(struct median);
}

void sched_clear(void)
{
	while (head)
		sched_remove(head);
	free(buckets);
	buckets = NULL;
	nbuckets = 0;
}

/* A batch hands groups once this many of its jobs ran, and only while their
 * average run is under GROUP_RUN_US: a group's last job then waits at most
 * about that long for the first, and a job that is not short runs alone,
 * shown running from its start. */
#define RUNS_KNOWN 8
#define GROUP_RUN_US 1000.0

void sched_note_run(struct sbatch *b, int64_t run_us)
{
	if (run_us < 0)
		return;
	if (b->runs < RUNS_KNOWN) {
		b->runs++;
		b->run_us += ((double)run_us - b->run_us) / b->runs;
	} else {
		b->run_us += ((double)run_us - b->run_us) / RUNS_KNOWN;
	}
}

int sched_group_size(const struct sbatch *b)
{
	double n;

	/* A concurrency limit counts jobs, and a group's jobs all count:
	 * such a batch runs one job at a time per worker. */
	if (b->no_groups || b->b.concurrency > 0 || b->runs < RUNS_KNOWN ||
	    cfg.group_max <= 1 || b->run_us >= GROUP_RUN_US)
		return 1;
	/* A worker starts the jobs of its group on its own: a halt could not
	 * stop the next one from starting ("soon" means none starts after
	 * the threshold), and a timeout needs the server to see each start. */
	if (b->halt.when != HALT_NONE || b->timeout_pct > 0)
		return 1;
	n = GROUP_RUN_US / (b->run_us > 1 ? b->run_us : 1);
	return n >= cfg.group_max ? cfg.group_max : n < 1 ? 1 : (int)n;
}

void sched_no_groups(struct sbatch *b)
{
	b->no_groups = 1;
}

int64_t sched_cursor(const struct sbatch *b)
{
	return b->cursor;
}

void sched_set_cursor(struct sbatch *b, int64_t idx)
{
	b->cursor = idx;
}

/* ---- policies (policy.c): halt and relative timeouts ---- */

/* sched_set_policy takes a batch's policies as stored; a batch with a
 * timeout_pct gets its run-time window here (aborts without memory, as
 * sched_add does). */
void sched_set_policy(struct sbatch *b, const struct batch_policy *p)
{
	b->halt = p->halt;
	b->timeout_pct = p->timeout_pct;
	b->halted = b->halted || p->halted;
	if (p->timeout_pct > 0 && !b->window) {
		b->window = calloc(1, sizeof(*b->window));
		if (!b->window)
			abort();
		nmedians++;
	}
}

/* sched_halt is the batch's halt policy while it may still halt: NULL
 * when it has none, has halted, or was canceled. */
const struct halt_policy *sched_halt(const struct sbatch *b)
{
	if (b->halt.when == HALT_NONE || b->halted || b->b.cancel_req)
		return NULL;
	return &b->halt;
}

/* sched_set_halted: the batch halted; like a cancel, none of its jobs may
 * be retried any more. */
void sched_set_halted(struct sbatch *b)
{
	b->halted = 1;
	b->b.cancel_req = 1;
}

int sched_halted(const struct sbatch *b)
{
	return b->halted;
}

double sched_timeout_pct(const struct sbatch *b)
{
	return b->timeout_pct;
}

/* sched_runs is the batch's window of succeeded run times, NULL when it
 * has no timeout_pct. */
struct median *sched_runs(struct sbatch *b)
{
	return b->window;
}

/* sched_policy_due tells whether the batch's stored counts (info, with
 * several nodes) changed since the last call: a job of it started or
 * ended somewhere.  Only then can other nodes' work matter to its
 * policies, so a poll of the store is not needed for every batch at every
 * look. */
int sched_policy_due(struct sbatch *b, const struct batch_info *info)
{
	if (b->polled_queued == info->queued &&
	    b->polled_running == info->running)
		return 0;
	b->polled_queued = info->queued;
	b->polled_running = info->running;
	return 1;
}

/* sched_queued_bands sums queued jobs by priority band: out[0] priority
 * above 0, out[1] exactly 0 (the default), out[2] below 0.  Bands rather
 * than values keep the /metrics label set fixed whatever clients choose;
 * O(unfinished batches), like the rest of a scrape. */
void sched_queued_bands(int out[3])
{
	const struct sbatch *b;

	out[0] = out[1] = out[2] = 0;
	for (b = head; b; b = b->next)
		out[b->b.priority > 0 ? 0 : b->b.priority == 0 ? 1 : 2] +=
			b->b.queued;
}

/* sched_oldest_queued_us is how long, at now (now_us()), the oldest queued
 * job of this node's schedule has waited, by the batches' queued_since
 * (see queued_note for how close that is); 0 when none is queued.
 * O(unfinished batches), like sched_queued_bands. */
int64_t sched_oldest_queued_us(int64_t now)
{
	const struct sbatch *b;
	int64_t oldest = 0;

	for (b = head; b; b = b->next)
		if (b->b.queued > 0 && b->queued_since &&
		    (!oldest || b->queued_since < oldest))
			oldest = b->queued_since;
	return oldest && now > oldest ? now - oldest : 0;
}
