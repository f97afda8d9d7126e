/* output.c - GET /v1/jobs/{id}/output: a command job's captured stdout or
 * stderr as text/plain, also while it runs, and ?follow=true to stream it
 * as it arrives (pueue follow, ts -t).
 *
 * While a job runs, its output exists only in its slot's buffers on the
 * node that runs it (pool.c, append_output); it reaches the store when the
 * attempt ends, in the job's `output` and in the attempt's history entry.
 * So a running job is answered from the slot, and anything else from the
 * store.  On PostgreSQL with several nodes, a node that does not run the
 * job has nothing live to give: it answers what is stored, and a follow
 * there waits for the attempt's end and then sends its output whole.  A
 * stream of one node's slot to another was judged not worth its cost.
 *
 * A follow is an MHD callback response whose reader copies the slot's new
 * bytes; with none, it suspends its connection (MHD's prescribed pattern,
 * as events.c) and pool_output_hook resumes it when bytes arrive or the
 * attempt ends.  At the end the pool frees the slot's buffers, so the hook
 * first copies the bytes the follower has not sent yet.  A follower that
 * waits for a queued job to start, or for another node, is woken by the
 * job's committed state changes (a publish subscriber) and looks again.
 * No thread, no timer: the loop never waits for a client. */
#include <stdlib.h>
#include <string.h>

#include "http.h"

struct follower {
	struct MHD_Connection *conn;
	int64_t job_id;
	int stream;             /* 0 stdout, 1 stderr */
	int attempt;            /* the attempt followed; 0: not started */
	size_t off;             /* bytes of the attempt's stream sent */
	char *tail;             /* what was left unsent when it ended */
	size_t tail_len;
	int ended, suspended, closing;
	int committed;          /* the end is in the store: clients see it */
	struct follower *prev, *next;
};

static struct follower *followers;
static int hooked;

/* wake resumes f's connection if it waits, so MHD calls its reader. */
static void wake(struct follower *f)
{
	if (!f->suspended)
		return;
	f->suspended = 0;
	MHD_resume_connection(f->conn);
	http_resumed();
}

/* running_slot is the slot of this node that runs job_id, or NULL. */
static const struct slot *running_slot(int64_t job_id)
{
	int i, n = pool_size();

	for (i = 0; i < n; i++) {
		const struct slot *s = pool_slot(i);

		if (s && s->job_id == job_id && s->is_command &&
		    pool_job_started(s))
			return s;
	}
	return NULL;
}

/* on_output is pool_output_hook: wake the followers of s's attempt, and
 * when it ended keep the bytes each has not sent, before the pool frees
 * them.  Out of memory, the follower ends short (its client sees the
 * chunked stream end without its last chunk). */
static void on_output(const struct slot *s, int ended)
{
	struct follower *f;

	for (f = followers; f; f = f->next) {
		if (f->job_id != s->job_id || f->ended ||
		    (f->attempt && f->attempt != s->job_attempts))
			continue;
		if (ended && f->attempt) {
			size_t len = s->out_len[f->stream];

			/* Woken after the commit (on_change), not now: a client
			 * that reads the job when its follow ends must find it
			 * ended. */
			f->ended = 1;
			if (len > f->off) {
				f->tail = malloc(len - f->off);
				if (f->tail) {
					memcpy(f->tail, s->out[f->stream] +
					       f->off, len - f->off);
					f->tail_len = len - f->off;
				}
			}
			f->off = 0;
			continue;
		}
		wake(f);
	}
}

/* on_change: a followed job changed state (it started, or ended on some
 * node); its followers look again. */
static void on_change(const struct change *c)
{
	struct follower *f;

	if (c->is_batch)
		return;
	for (f = followers; f; f = f->next)
		if (f->job_id == c->id) {
			if (c->state != JS_RUNNING)
				f->committed = 1;
			wake(f);
		}
}

static void on_reset(void)
{
	struct follower *f;

	for (f = followers; f; f = f->next) {
		f->committed = 1;
		wake(f);
	}
}

static const struct subscriber output_sub = {
	.change = on_change,
	.reset = on_reset,
};

/* job_over_or_queued: job is not running (its row's output is that of
 * its latest ended attempt, if any). */
static int job_over_or_queued(const json_t *job)
{
	const char *st = json_string_value(json_object_get(job, "state"));

	return !st || strcmp(st, "running") != 0;
}

/* stored_text is the stored output of job's attempt (0: its latest ended
 * one) on stream, borrowed from job; "" when there is none (not a command,
 * not ended, dropped for room); NULL when the job has no such attempt. */
static const char *stored_text(const json_t *job, int attempt, int stream,
			       size_t *len)
{
	const char *key = stream ? "stderr" : "stdout";
	const json_t *out = json_object_get(job, "output"), *e, *v;
	size_t i;

	if (attempt) {
		json_int_t last = json_integer_value(json_object_get(job,
								     "attempts"));

		if (attempt > last)
			return NULL;
		/* The row's output is that of attempt `attempts` once it
		 * ended; an entry past HISTORY_OUTPUTS has none of its own. */
		if (attempt != last || !job_over_or_queued(job))
			out = NULL;
		json_array_foreach(json_object_get(job, "history"), i, e)
			if (json_integer_value(json_object_get(e, "attempt")) ==
			    attempt && json_object_get(e, "output"))
				out = json_object_get(e, "output");
	}
	v = json_object_get(out, key);
	*len = json_string_length(v);
	return json_is_string(v) ? json_string_value(v) : "";
}

/* job_over tells whether job is in an end state: a follow of it that
 * finds no slot running it has nothing more to wait for. */
static int job_over(const json_t *job)
{
	const char *st = json_string_value(json_object_get(job, "state"));

	return !st || (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0);
}

/* settle looks for the attempt f waits for: the slot that runs it now,
 * or, when the job ended while no slot of this node ran it, its stored
 * output as the tail.  Returns 1 when f can go on, 0 to wait. */
static int settle(struct follower *f)
{
	const struct slot *s = running_slot(f->job_id);
	json_t *job;
	const char *text;
	size_t len = 0;

	if (s) {
		f->attempt = s->job_attempts;
		return 1;
	}
	job = store_job_json(f->job_id);
	if (job && !job_over(job)) {
		json_decref(job);
		return 0;
	}
	f->ended = 1;
	f->committed = 1;
	text = job ? stored_text(job, 0, f->stream, &len) : NULL;
	if (text && len) {
		f->tail = malloc(len);
		if (f->tail) {
			memcpy(f->tail, text, len);
			f->tail_len = len;
		}
	}
	json_decref(job);
	return 1;
}

/* copy_out copies what fits in max of from[*off .. len) into buf. */
static ssize_t copy_out(char *buf, size_t max, const char *from, size_t len,
			size_t *off)
{
	size_t n = len - *off < max ? len - *off : max;

	memcpy(buf, from + *off, n);
	*off += n;
	return (ssize_t)n;
}

/* reader is the follow's MHD content reader: the attempt's new bytes, or
 * its tail once it ended, or a suspend until there is more to say. */
static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct follower *f = cls;
	const struct slot *s;

	(void)pos;
	if (f->closing)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (!f->attempt && !f->ended && !settle(f))
		goto wait;
	if (f->ended) {
		if (f->off < f->tail_len)
			return copy_out(buf, max, f->tail, f->tail_len,
					&f->off);
		if (!f->committed)
			goto wait;
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	s = running_slot(f->job_id);
	if (!s || s->job_attempts != f->attempt)
		/* Its end went by without the hook (cannot happen: every
		 * end passes pool_job_ended); end rather than hang. */
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (s->out_len[f->stream] > f->off)
		return copy_out(buf, max, s->out[f->stream],
				s->out_len[f->stream], &f->off);
wait:
	f->suspended = 1;
	MHD_suspend_connection(f->conn);
	return 0;
}

/* follower_free is MHD's free callback for a follow: it owns f. */
static void follower_free(void *cls)
{
	struct follower *f = cls;

	free(f->tail);
	if (f->prev)
		f->prev->next = f->next;
	else
		followers = f->next;
	if (f->next)
		f->next->prev = f->prev;
	free(f);
}

/* send_text answers 200 with a copy of text (len bytes) as text/plain. */
static enum MHD_Result send_text(struct request *r, const char *text,
				 size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		len, (void *)text, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result rc;

	if (!resp)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	MHD_add_response_header(resp, "Content-Type",
				"text/plain; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	rc = http_send(r, 200, resp);
	MHD_destroy_response(resp);
	return rc;
}

/* follow answers 200 with a stream of job_id's stream for its attempt
 * (0: the next to start here or anywhere); the stream owns its state. */
static enum MHD_Result follow(struct request *r, int64_t job_id, int stream,
			      int attempt)
{
	struct follower *f = calloc(1, sizeof(*f));
	struct MHD_Response *resp;
	enum MHD_Result rc;

	if (!f)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	if (!hooked) {
		/* Installed on first use: a server nobody follows pays
		 * nothing per output chunk. */
		pool_output_hook = on_output;
		publish_subscribe(&output_sub);
		hooked = 1;
	}
	f->conn = r->conn;
	f->job_id = job_id;
	f->stream = stream;
	f->attempt = attempt;
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
						 reader, f, follower_free);
	if (!resp) {
		free(f);
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	}
	f->next = followers;
	if (followers)
		followers->prev = f;
	followers = f;
	MHD_add_response_header(resp, "Content-Type",
				"text/plain; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	/* Tell proxies not to hold the stream back (nginx buffers it). */
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	rc = http_send(r, 200, resp);
	MHD_destroy_response(resp);
	return rc;
}

enum MHD_Result output_open(struct request *r, int64_t job_id, int stream,
			    int attempt, int follow_it)
{
	const struct slot *s = running_slot(job_id);
	json_t *job;
	const char *text;
	size_t len = 0;
	enum MHD_Result rc;

	if (s && (!attempt || attempt == s->job_attempts)) {
		/* HEAD gets no stream: libmicrohttpd mishandles a HEAD of a
		 * chunked response (see joblog.c). */
		if (follow_it && strcmp(r->method, "HEAD") != 0)
			return follow(r, job_id, stream, s->job_attempts);
		return send_text(r, s->out[stream] ? s->out[stream] : "",
				 s->out_len[stream]);
	}
	job = store_job_json(job_id);
	if (!job)
		return http_problem(r, P_NOT_FOUND, "no such job", NULL);
	text = stored_text(job, attempt, stream, &len);
	if (!text) {
		json_decref(job);
		return http_problem(r, P_NOT_FOUND, "the job has no such attempt",
				    NULL);
	}
	if (follow_it && !attempt && !job_over(job) &&
	    strcmp(r->method, "HEAD") != 0) {
		/* Queued, or running on another node: wait for it. */
		json_decref(job);
		return follow(r, job_id, stream, 0);
	}
	rc = send_text(r, text, len);
	json_decref(job);
	return rc;
}

/* output_close ends every follow (shutdown): MHD cannot stop while
 * connections are suspended. */
void output_close(void)
{
	struct follower *f;

	for (f = followers; f; f = f->next) {
		f->closing = 1;
		wake(f);
	}
}
