/* metrics.c - counters and histograms for GET /metrics (Prometheus text).
 *
 * Everything here is updated by the one loop thread, so plain integers
 * suffice.  Job counts by state come from the store (batch counters, so a
 * scrape costs O(batches), never a scan of the jobs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"

/* Seconds, up to a day: jobs range from a noop to a night-long command. */
static const double bounds[] = {
	0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
	60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400
};
#define NBOUNDS (sizeof(bounds) / sizeof(bounds[0]))

struct histogram {
	uint64_t buckets[NBOUNDS];      /* non-cumulative; summed on render */
	uint64_t count;
	double sum;
};

static struct histogram run_hist, wait_hist;
static uint64_t batches_submitted, jobs_grouped;
/* webhook attempts by outcome: delivered, retried, failed (for good) */
static uint64_t webhook_outcomes[3];
static const char *const webhook_outcome_names[3] = {
	"delivered", "retried", "failed"
};

struct http_count {
	const char *route;              /* static pattern, or "other" */
	char method[8];
	unsigned status;
	uint64_t n;
};
static struct http_count *http_counts;
static size_t nhttp, caphttp;

/* Jobs ended after running, by kind and terminal state.  A counter, unlike
 * jobpool_jobs{state} (stored rows, which retention deletes).  Kinds are
 * the worker's closed list, so the table stays small. */
#define KINDS_MAX 32
static struct {
	char kind[32];
	uint64_t n[JS__COUNT];
} finished[KINDS_MAX];
static size_t nfinished;
static uint64_t worker_restarts, retries;

/* HTTP request time by method and status class ("2xx"...): few series,
 * enough to see slow writes or slow errors.  Bounds from 0.5 ms (a read)
 * to 60 s (a long-poll waits up to its timeout). */
static const double http_bounds[] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
	2.5, 5, 10, 30, 60
};
#define NHTTP_BOUNDS (sizeof(http_bounds) / sizeof(http_bounds[0]))
#define HTTP_METHODS 8          /* known_method's list, and OTHER */
struct http_hist {
	uint64_t buckets[NHTTP_BOUNDS];
	uint64_t count;
	double sum;
};
static struct http_hist http_time[HTTP_METHODS][5];     /* 1xx..5xx */

static void observe(struct histogram *h, int64_t us)
{
	double s = (double)us / 1e6;
	size_t i;

	for (i = 0; i < NBOUNDS && s > bounds[i]; i++)
		;
	if (i < NBOUNDS)
		h->buckets[i]++;
	h->count++;
	h->sum += s;
}

void metrics_job_run(int64_t run_us)
{
	observe(&run_hist, run_us);
}

void metrics_queue_wait(int64_t wait_us)
{
	observe(&wait_hist, wait_us);
}

void metrics_batch_submitted(void)
{
	batches_submitted++;
}

void metrics_webhook(const char *outcome)
{
	int i;

	for (i = 0; i < 3; i++)
		if (strcmp(outcome, webhook_outcome_names[i]) == 0)
			webhook_outcomes[i]++;
}

void metrics_grouped(int n)
{
	jobs_grouped += (uint64_t)n;
}

static const char *const known[] = {
	"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", NULL
};

static int known_method(const char *m)
{
	int i;

	for (i = 0; known[i]; i++)
		if (strcmp(known[i], m) == 0)
			return 1;
	return 0;
}

/* metrics_http counts one answered request.  Routes are the patterns of the
 * routing table, so the label set stays small whatever clients send. */
void metrics_http(const char *route, const char *method, unsigned status)
{
	size_t i;

	if (!status)
		return;                 /* never answered (client went away) */
	if (!route)
		route = "other";
	/* Methods come from clients: only known ones become label values,
	 * so the label set stays small and the text stays valid. */
	if (!known_method(method))
		method = "OTHER";
	for (i = 0; i < nhttp; i++)
		if (http_counts[i].route == route &&
		    http_counts[i].status == status &&
		    strcmp(http_counts[i].method, method) == 0) {
			http_counts[i].n++;
			return;
		}
	if (nhttp == caphttp) {
		size_t cap = caphttp ? caphttp * 2 : 32;
		struct http_count *p = realloc(http_counts,
					       cap * sizeof(*p));

		if (!p)
			return;
		http_counts = p;
		caphttp = cap;
	}
	http_counts[nhttp].route = route;
	snprintf(http_counts[nhttp].method, sizeof(http_counts[0].method),
		 "%s", method);
	http_counts[nhttp].status = status;
	http_counts[nhttp].n = 1;
	nhttp++;
}

void metrics_job_finished(const char *kind, enum job_state st)
{
	size_t i;

	if (st < JS_SUCCEEDED || st >= JS__COUNT)
		return;
	for (i = 0; i < nfinished; i++)
		if (strcmp(finished[i].kind, kind) == 0)
			break;
	if (i == nfinished) {
		if (nfinished == KINDS_MAX)
			return;         /* more kinds than the worker has */
		snprintf(finished[i].kind, sizeof(finished[i].kind), "%s",
			 kind);
		nfinished++;
	}
	finished[i].n[st]++;
}

void metrics_http_time(const char *method, unsigned status, int64_t us)
{
	struct http_hist *h;
	double s = (double)us / 1e6;
	size_t i, m;

	if (status < 100 || status > 599)
		return;
	for (m = 0; known[m] && strcmp(known[m], method) != 0; m++)
		;
	h = &http_time[m][status / 100 - 1];
	for (i = 0; i < NHTTP_BOUNDS && s > http_bounds[i]; i++)
		;
	if (i < NHTTP_BOUNDS)
		h->buckets[i]++;
	h->count++;
	h->sum += s;
}

void metrics_worker_restart(void)
{
	worker_restarts++;
}

void metrics_retries(int n)
{
	retries += (uint64_t)n;
}

/* render_http_time writes the series that saw a request: an empty
 * histogram per method and class would be 80 lines of zeros. */
static void render_http_time(FILE *f)
{
	const char *name = "jobpool_http_request_duration_seconds";
	size_t m, c, i;
	uint64_t cum;

	fprintf(f, "# HELP %s Time from a request's arrival to its answer's "
		"end, by method and status class.\n# TYPE %s histogram\n",
		name, name);
	for (m = 0; m < HTTP_METHODS; m++)
		for (c = 0; c < 5; c++) {
			const struct http_hist *h = &http_time[m][c];
			const char *mn = known[m] ? known[m] : "OTHER";

			if (!h->count)
				continue;
			cum = 0;
			for (i = 0; i < NHTTP_BOUNDS; i++) {
				cum += h->buckets[i];
				fprintf(f, "%s_bucket{method=\"%s\",status="
					"\"%zuxx\",le=\"%g\"} %llu\n", name,
					mn, c + 1, http_bounds[i],
					(unsigned long long)cum);
			}
			fprintf(f, "%s_bucket{method=\"%s\",status=\"%zuxx\","
				"le=\"+Inf\"} %llu\n%s_sum{method=\"%s\","
				"status=\"%zuxx\"} %.6f\n%s_count{method=\"%s\","
				"status=\"%zuxx\"} %llu\n", name, mn, c + 1,
				(unsigned long long)h->count, name, mn, c + 1,
				h->sum, name, mn, c + 1,
				(unsigned long long)h->count);
		}
}

/* render_operators: what an operator alerts on (jobs ending badly, workers
 * dying, retries, queues by priority) and what the build is. */
static void render_operators(FILE *f)
{
	int bands[3];
	size_t i, st;

	fprintf(f, "# HELP jobpool_build_info The running version (always 1)."
		"\n# TYPE jobpool_build_info gauge\n"
		"jobpool_build_info{version=\"%s\"} 1\n", JOBPOOL_VERSION);
	fprintf(f, "# HELP jobpool_jobs_finished_total Jobs that ended after "
		"running, since start, by kind and state.\n"
		"# TYPE jobpool_jobs_finished_total counter\n");
	for (i = 0; i < nfinished; i++)
		for (st = JS_SUCCEEDED; st < JS__COUNT; st++)
			fprintf(f, "jobpool_jobs_finished_total{kind=\"%s\","
				"state=\"%s\"} %llu\n", finished[i].kind,
				job_state_name((enum job_state)st),
				(unsigned long long)finished[i].n[st]);
	fprintf(f, "# HELP jobpool_worker_restarts_total Worker processes "
		"that died and were replaced, since start.\n"
		"# TYPE jobpool_worker_restarts_total counter\n"
		"jobpool_worker_restarts_total %llu\n",
		(unsigned long long)worker_restarts);
	fprintf(f, "# HELP jobpool_retries_total Jobs queued again for another "
		"attempt (retry policy or a client's retry), since start.\n"
		"# TYPE jobpool_retries_total counter\n"
		"jobpool_retries_total %llu\n", (unsigned long long)retries);
	sched_queued_bands(bands);
	fprintf(f, "# HELP jobpool_queued_jobs Queued jobs by batch priority "
		"band: high (> 0), normal (0), low (< 0).\n"
		"# TYPE jobpool_queued_jobs gauge\n"
		"jobpool_queued_jobs{priority=\"high\"} %d\n"
		"jobpool_queued_jobs{priority=\"normal\"} %d\n"
		"jobpool_queued_jobs{priority=\"low\"} %d\n", bands[0],
		bands[1], bands[2]);
	fprintf(f, "# HELP jobpool_oldest_queued_seconds How long the oldest "
		"queued job on this node's schedule has waited (0: none).\n"
		"# TYPE jobpool_oldest_queued_seconds gauge\n"
		"jobpool_oldest_queued_seconds %.3f\n",
		(double)sched_oldest_queued_us(now_us()) / 1e6);
	render_http_time(f);
}

static void render_histogram(FILE *f, const char *name, const char *help,
			     const struct histogram *h)
{
	uint64_t cum = 0;
	size_t i;

	fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (i = 0; i < NBOUNDS; i++) {
		cum += h->buckets[i];
		fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
			(unsigned long long)cum);
	}
	fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name,
		(unsigned long long)h->count);
	fprintf(f, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
		(unsigned long long)h->count);
}

/* render_memory shows what each bounded in-memory structure holds, so an
 * operator (and the memory test) can see it stay under its bound. */
static void render_memory(FILE *f)
{
	size_t entries, bytes;

	events_held(&entries, &bytes);
	fprintf(f, "# HELP jobpool_events_buffered Events kept for SSE "
		"reconnects (at most --events-buffer).\n"
		"# TYPE jobpool_events_buffered gauge\n"
		"jobpool_events_buffered %zu\n", entries);
	fprintf(f, "# HELP jobpool_events_buffered_bytes Memory those events "
		"hold (at most --events-buffer-bytes).\n"
		"# TYPE jobpool_events_buffered_bytes gauge\n"
		"jobpool_events_buffered_bytes %zu\n", bytes);
	fprintf(f, "# HELP jobpool_scheduler_batches Unfinished batches the "
		"scheduler holds (at most --max-open-batches).\n"
		"# TYPE jobpool_scheduler_batches gauge\n"
		"jobpool_scheduler_batches %d\n", sched_count());
	fprintf(f, "# HELP jobpool_scheduler_bytes Memory the scheduler "
		"holds for them.\n"
		"# TYPE jobpool_scheduler_bytes gauge\n"
		"jobpool_scheduler_bytes %zu\n", sched_bytes());
	fprintf(f, "# HELP jobpool_sqlite_memory_bytes Memory SQLite holds: "
		"page caches, statements, schema.\n"
		"# TYPE jobpool_sqlite_memory_bytes gauge\n"
		"jobpool_sqlite_memory_bytes %lld\n",
		(long long)store_memory_bytes());
}

char *metrics_render(void)
{
	static const char *const states[] = {
		"queued", "running", "succeeded", "failed", "timed_out",
		"canceled"
	};
	int64_t counts[6];
	char *text = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	fprintf(f, "# HELP jobpool_jobs Stored jobs by state.\n"
		"# TYPE jobpool_jobs gauge\n");
	if (store_job_counts(counts) == 0)
		for (i = 0; i < 6; i++)
			fprintf(f, "jobpool_jobs{state=\"%s\"} %lld\n",
				states[i], (long long)counts[i]);
	fprintf(f, "# HELP jobpool_queue_depth Queued jobs ready to run.\n"
		"# TYPE jobpool_queue_depth gauge\n"
		"jobpool_queue_depth %d\n", sched_queued_total());
	fprintf(f, "# HELP jobpool_jobs_running Jobs running now.\n"
		"# TYPE jobpool_jobs_running gauge\n"
		"jobpool_jobs_running %d\n", pool_busy());
	fprintf(f, "# HELP jobpool_pool_size Configured worker processes.\n"
		"# TYPE jobpool_pool_size gauge\n"
		"jobpool_pool_size %d\n", pool_size());
	fprintf(f, "# HELP jobpool_workers_live Worker processes alive.\n"
		"# TYPE jobpool_workers_live gauge\n"
		"jobpool_workers_live %d\n", pool_live());
	render_memory(f);
	render_operators(f);
	render_histogram(f, "jobpool_job_run_seconds",
			 "Run time of finished job attempts.", &run_hist);
	render_histogram(f, "jobpool_job_queue_wait_seconds",
			 "Time from queued to started, per attempt.",
			 &wait_hist);
	fprintf(f, "# HELP jobpool_batches_submitted_total Batches accepted "
		"since start.\n# TYPE jobpool_batches_submitted_total counter\n"
		"jobpool_batches_submitted_total %llu\n",
		(unsigned long long)batches_submitted);
	fprintf(f, "# HELP jobpool_jobs_grouped_total Jobs handed to workers in "
		"groups (short jobs, many per message) since start.\n"
		"# TYPE jobpool_jobs_grouped_total counter\n"
		"jobpool_jobs_grouped_total %llu\n",
		(unsigned long long)jobs_grouped);
	fprintf(f, "# HELP jobpool_webhook_deliveries_total Webhook delivery "
		"attempts since start, by outcome (retried: failed, tried again "
		"later; failed: failed for good).\n"
		"# TYPE jobpool_webhook_deliveries_total counter\n");
	for (i = 0; i < 3; i++)
		fprintf(f, "jobpool_webhook_deliveries_total{outcome=\"%s\"} "
			"%llu\n", webhook_outcome_names[i],
			(unsigned long long)webhook_outcomes[i]);
	{
		int64_t stale, rescued;

		store_cluster_stats(&stale, &rescued);
		fprintf(f, "# HELP jobpool_stale_outcomes_total Outcomes this "
			"node reported after losing its lease, refused (the "
			"other nodes settled those attempts).\n"
			"# TYPE jobpool_stale_outcomes_total counter\n"
			"jobpool_stale_outcomes_total %lld\n"
			"# HELP jobpool_rescued_jobs_total Running jobs of dead "
			"nodes this node re-queued or ended.\n"
			"# TYPE jobpool_rescued_jobs_total counter\n"
			"jobpool_rescued_jobs_total %lld\n",
			(long long)stale, (long long)rescued);
	}
	fprintf(f, "# HELP jobpool_http_requests_total HTTP requests answered "
		"since start.\n# TYPE jobpool_http_requests_total counter\n");
	for (i = 0; i < nhttp; i++)
		fprintf(f, "jobpool_http_requests_total{route=\"%s\","
			"method=\"%s\",status=\"%u\"} %llu\n",
			http_counts[i].route, http_counts[i].method,
			http_counts[i].status,
			(unsigned long long)http_counts[i].n);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

void metrics_free(void)
{
	free(http_counts);
	http_counts = NULL;
	nhttp = caphttp = 0;
}
