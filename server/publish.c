/* publish.c - the one publisher: changes are recorded as they are made and
 * handed to their subscribers only after the commit that holds them.
 *
 * The engine, the scheduler and the store never call up into HTTP or the
 * event streams.  They note "job 7 is now canceled" here; after the loop
 * turn's COMMIT has returned, publish_commit gives each note to every
 * subscriber (long-polls, SSE) and then tells them the commit's outcome
 * (replies that waited for it).  When the transaction is lost instead,
 * the notes are dropped: no client ever hears of a change that a crash or
 * a full disk could still undo.  (redis's signalListAsReady, drained by
 * handleClientsBlockedOnLists after the command, works the same way.)
 */
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"

/* Long-polls, SSE, webhooks and output follows (output.c), with room. */
#define MAX_SUBSCRIBERS 8
/* Above this many entries the array is given back after publishing, so a
 * burst (a 100,000-job cancel) does not pin its memory. */
#define KEEP_CHANGES 4096

static const struct subscriber *subs[MAX_SUBSCRIBERS];
static int nsubs;
static struct change *changes;
static size_t nchanges, capchanges;
/* The pending changes went into the store's shared log: subscribers get
 * them from there. */
static int logged;

void publish_subscribe(const struct subscriber *s)
{
	if (nsubs < MAX_SUBSCRIBERS)
		subs[nsubs++] = s;
}

static void record(const struct change *c)
{
	if (nchanges == capchanges) {
		size_t cap = capchanges ? capchanges * 2 : 64;
		struct change *p = realloc(changes, cap * sizeof(*p));

		if (!p)
			fatal("%s: realloc", __func__);
		changes = p;
		capchanges = cap;
	}
	changes[nchanges++] = *c;
}

void publish_job(int64_t job_id, int64_t batch_id, enum job_state state,
		 int attempts)
{
	struct change c = { .is_batch = 0, .id = job_id, .batch_id = batch_id,
			    .state = state, .attempts = attempts };

	record(&c);
}

/* publish_batch notes that a batch changed, with the batch as it is now
 * (state, counts): each step a subscriber sees is the one that happened,
 * not what a later commit shows. */
void publish_batch(int64_t batch_id)
{
	struct change c = { .is_batch = 1, .id = batch_id,
			    .batch_id = batch_id };

	c.batch = store_batch_json_pending(batch_id);
	if (c.batch)
		record(&c);
}

int publish_pending(void)
{
	return nchanges > 0;
}

/* publish_commit hands the notes to the subscribers when the commit
 * holding them succeeded (ok), or drops them, then tells every subscriber
 * the outcome.  Notes made by the subscribers meanwhile wait for the next
 * commit. */
void publish_commit(int ok)
{
	struct change *list = changes;
	size_t n = nchanges, cap = capchanges, i;
	int k;

	changes = NULL;
	nchanges = capchanges = 0;
	for (i = 0; i < n; i++) {
		/* In the shared log, they come back through publish_deliver. */
		for (k = 0; ok && !logged && k < nsubs; k++)
			if (subs[k]->change)
				subs[k]->change(&list[i]);
		json_decref(list[i].batch);
	}
	logged = 0;
	if (!changes && cap <= KEEP_CHANGES) {
		changes = list;         /* keep the array for the next turn */
		capchanges = cap;
		list = NULL;
	}
	free(list);
	for (k = 0; k < nsubs; k++)
		if (subs[k]->commit)
			subs[k]->commit(ok);
}

int publish_flush(void)
{
	int rc;

	if (nchanges && store_events_append(changes, nchanges) == 0)
		logged = 1;
	rc = store_flush();
	if (rc == 0)
		publish_commit(1);      /* a failure ran the rollback hook */
	return rc;
}

/* publish_deliver hands one change read from the shared log to the
 * subscribers. */
void publish_deliver(const struct change *c)
{
	int k;

	for (k = 0; k < nsubs; k++)
		if (subs[k]->change)
			subs[k]->change(c);
}

/* publish_reset tells the subscribers that state changed in ways no note
 * describes (a resync after a lost transaction): look again. */
void publish_reset(void)
{
	int k;

	for (k = 0; k < nsubs; k++)
		if (subs[k]->reset)
			subs[k]->reset();
}

void publish_free(void)
{
	size_t i;

	for (i = 0; i < nchanges; i++)
		json_decref(changes[i].batch);
	free(changes);
	changes = NULL;
	nchanges = capchanges = 0;
	nsubs = 0;
}
