/* joblog.c - GET /v1/batches/{id}/joblog: a batch's finished attempts in
 * GNU parallel's --joblog format, so parallel's own --resume,
 * --resume-failed and --retry-failed, and the scripts users wrote for
 * parallel, read it unchanged.
 *
 * The log is built from what the store's reads already return: pages of
 * the batch's jobs (store_job_list), each job with its history, one entry
 * per attempt that ended.  So neither store needs SQL of its own for it,
 * and both give the same text.  The response is an MHD callback response
 * whose reader renders one page of jobs at a time, when the client has
 * taken the previous one: a batch of 100,000 jobs is never held whole, and
 * the loop is not stopped for the time it takes to render it all.
 *
 * The format, as parallel 20221122 writes it (print_joblog): nine columns
 * joined by tabs, the runtime printed with "%10.3f" (padded to ten
 * characters), the start with "%.3f", a command's newlines written as NUL
 * bytes (parallel's --retry-failed turns them back). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* Jobs rendered per store read: a page holds each job's captured output
 * (up to 2 x --max-output-bytes per kept attempt), so pages stay small. */
#define JOBLOG_PAGE 100

static int buf_add(struct joblog_buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

static int buf_addf(struct joblog_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int buf_addf(struct joblog_buf *b, const char *fmt, ...)
{
	char tmp[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -1;
	return buf_add(b, tmp, (size_t)n);
}

/* time_ms reads a time as the API renders it (fmt_time: RFC 3339 UTC with
 * milliseconds) into milliseconds since the epoch; -1 when t is not one. */
static int64_t time_ms(const json_t *t)
{
	const char *s = json_string_value(t);
	struct tm tm = { 0 };
	int ms, n = 0;

	if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &tm.tm_year,
			 &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
			 &tm.tm_sec, &ms, &n) != 7 || n != (int)strlen(s))
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm) * 1000 + ms;
}

/* add_start writes Starttime: Unix seconds with 3 decimals ("%.3f").  An
 * attempt with no start known (none so far) takes its end. */
static int add_start(struct joblog_buf *b, const json_t *entry)
{
	int64_t ms = time_ms(json_object_get(entry, "started_at"));

	if (ms < 0)
		ms = time_ms(json_object_get(entry, "finished_at"));
	if (ms < 0)
		ms = 0;
	return buf_addf(b, "%lld.%03lld", (long long)(ms / 1000),
			(long long)(ms % 1000));
}

/* add_runtime writes JobRuntime as parallel does: "%10.3f" of the run cut
 * (not rounded) to whole milliseconds.  run_ms is null for an attempt the
 * server's death interrupted: how long it ran is not known, 0.000. */
static int add_runtime(struct joblog_buf *b, const json_t *entry)
{
	const json_t *run = json_object_get(entry, "run_ms");
	long long us = 0;

	if (json_is_number(run) && json_number_value(run) > 0)
		us = (long long)(json_number_value(run) * 1000.0 + 0.5);
	return buf_addf(b, "%10.3f", (double)(us / 1000) / 1000.0);
}

/* stdin_bytes is Send: the bytes a command job is given on its stdin. */
static size_t stdin_bytes(const json_t *job)
{
	const json_t *in = json_object_get(json_object_get(job, "args"),
					   "stdin");

	return json_is_string(in) ? json_string_length(in) : 0;
}

/* output_bytes is Receive: the captured stdout and stderr (cut at
 * --max-output-bytes each) of a history entry or a job, as stored. */
static size_t output_bytes(const json_t *job)
{
	const json_t *out = json_object_get(job, "output");

	return json_string_length(json_object_get(out, "stdout")) +
	       json_string_length(json_object_get(out, "stderr"));
}

/* exitval is Exitval, with parallel's meanings: the exit code; 0 for a
 * process killed by a signal (the Signal column says which); -1 for an
 * attempt the runner ended itself (timed out, canceled) unless it exited
 * with a code of its own, as parallel's --timeout.  A failure with neither
 * code nor signal (a function kind's error, an interrupted attempt) is 1,
 * so --resume-failed and --retry-failed count it as failed. */
static long long exitval(const json_t *entry, int sig)
{
	const json_t *code = json_object_get(entry, "exit_code");
	const char *st = json_string_value(json_object_get(entry, "state"));
	long long c = json_is_integer(code) ? json_integer_value(code) : 0;

	if (!st)
		st = "";
	if (strcmp(st, "timed_out") == 0 || strcmp(st, "canceled") == 0)
		return c > 0 ? c : -1;
	if (json_is_integer(code))
		return c;
	return strcmp(st, "failed") == 0 && sig == 0 ? 1 : 0;
}

/* add_command writes Command: a command job's argv joined by spaces,
 * newlines as NUL bytes (parallel's print_joblog: one line per attempt);
 * any other kind as its name and its args in compact JSON. */
static int add_command(struct joblog_buf *b, const json_t *job)
{
	const char *kind = json_string_value(json_object_get(job, "kind"));
	const json_t *args = json_object_get(job, "args"), *a;
	char *text;
	size_t i, j;
	int rc;

	if (!kind)
		kind = "";
	if (strcmp(kind, "command") == 0) {
		json_array_foreach(json_object_get(args, "argv"), i, a) {
			size_t at = b->len;

			if (!json_is_string(a))
				continue;       /* validation allows none */
			if ((i && buf_add(b, " ", 1) < 0) ||
			    buf_add(b, json_string_value(a),
				    json_string_length(a)) < 0)
				return -1;
			for (j = at; j < b->len; j++)
				if (b->p[j] == '\n')
					b->p[j] = 0;
		}
		return 0;
	}
	/* The same digits GET /v1/jobs shows (http_json's precision). */
	text = json_is_object(args) ? json_dumps(args, JSON_COMPACT |
						 JSON_REAL_PRECISION(15)) : NULL;
	rc = buf_addf(b, "%s ", kind) < 0 ||
	     buf_add(b, text ? text : "{}", text ? strlen(text) : 2) < 0;
	free(text);
	return rc ? -1 : 0;
}

/* host is the node that ran the attempt (its history entry's worker, else
 * the job's), or ":", parallel's name for "this machine", when none is
 * known. */
static const char *host(const json_t *job, const json_t *entry)
{
	const char *h = json_string_value(json_object_get(
		json_object_get(entry, "worker"), "node"));

	if (!h)
		h = json_string_value(json_object_get(
			json_object_get(job, "worker"), "node"));
	return h && *h ? h : ":";
}

/* add_line writes the line of one ended attempt; receive is its output's
 * size. */
static int add_line(struct joblog_buf *b, const json_t *job,
		    const json_t *entry, size_t receive)
{
	const char *name = json_string_value(json_object_get(entry, "signal"));
	int sig = name ? signal_number(name) : 0;

	if (buf_addf(b, "%lld\t%s\t",
		     (long long)json_integer_value(json_object_get(job, "index")) + 1,
		     host(job, entry)) < 0 ||
	    add_start(b, entry) < 0 || buf_add(b, "\t", 1) < 0 ||
	    add_runtime(b, entry) < 0 ||
	    buf_addf(b, "\t%zu\t%zu\t%lld\t%d\t", stdin_bytes(job), receive,
		     exitval(entry, sig), sig) < 0 ||
	    add_command(b, job) < 0)
		return -1;
	return buf_add(b, "\n", 1);
}

int joblog_job(struct joblog_buf *b, const json_t *job)
{
	const json_t *history = json_object_get(job, "history"), *entry;
	const char *st = json_string_value(json_object_get(job, "state"));
	size_t i, n = json_array_size(history), receive;
	json_int_t attempts = json_integer_value(json_object_get(job,
								 "attempts"));

	json_array_foreach(history, i, entry) {
		/* Each attempt's entry keeps its output; an entry written
		 * before it did has only the row's, that of the latest ended
		 * attempt until the next one starts. */
		if (json_object_get(entry, "output"))
			receive = output_bytes(entry);
		else
			receive = i + 1 == n && (!st || strcmp(st, "running") != 0) &&
				  json_integer_value(json_object_get(entry, "attempt")) ==
				  attempts ? output_bytes(job) : 0;
		if (add_line(b, job, entry, receive) < 0)
			return -1;
	}
	return 0;
}

/* ---- the response ---- */

struct joblog_stream {
	int64_t batch_id;
	int64_t after;          /* index of the last job rendered, -1: none */
	int done;               /* the last page was read */
	struct joblog_buf b;
	size_t off;             /* of b sent so far */
};

/* next_page renders the next page of jobs into s->b.  Returns 0, or -1
 * when the store could not be read or memory ran out. */
static int next_page(struct joblog_stream *s)
{
	json_t *page = store_job_list(s->batch_id, NULL, s->after, JOBLOG_PAGE);
	json_t *items = json_object_get(page, "items"), *job;
	size_t i;
	int rc = page ? 0 : -1;

	json_array_foreach(items, i, job) {
		if (rc == 0)
			rc = joblog_job(&s->b, job);
		s->after = json_integer_value(json_object_get(job, "index"));
	}
	/* A batch deleted meanwhile reads as an empty last page. */
	if (!json_is_string(json_object_get(page, "next_cursor")))
		s->done = 1;
	json_decref(page);
	return rc;
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct joblog_stream *s = cls;
	size_t n;

	(void)pos;
	while (s->off == s->b.len) {
		if (s->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		s->b.len = s->off = 0;
		if (next_page(s) < 0) {
			log_warn("%s: batch %lld: a page of jobs could not be "
				 "read or rendered; the joblog is cut short",
				 __func__, (long long)s->batch_id);
			/* Closes the connection without the last chunk, so
			 * the client sees the log is incomplete. */
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
	n = s->b.len - s->off < max ? s->b.len - s->off : max;
	memcpy(buf, s->b.p + s->off, n);
	s->off += n;
	return (ssize_t)n;
}

static void stream_free(void *cls)
{
	struct joblog_stream *s = cls;

	free(s->b.p);
	free(s);
}

enum MHD_Result joblog_open(struct request *r, int64_t batch_id)
{
	struct joblog_stream *s = calloc(1, sizeof(*s));
	struct MHD_Response *resp;
	enum MHD_Result rc;

	if (!s || buf_add(&s->b, JOBLOG_HEADER, strlen(JOBLOG_HEADER)) < 0) {
		free(s);
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	}
	s->batch_id = batch_id;
	s->after = -1;
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536,
						 reader, s, stream_free);
	if (!resp) {
		stream_free(s);
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	}
	MHD_add_response_header(resp, "Content-Type",
				"text/tab-separated-values; charset=utf-8");
	/* libmicrohttpd 0.9.75 answers a HEAD of a chunked response with the
	 * last chunk ("0\r\n\r\n") all the same, which a client keeping the
	 * connection alive reads as the start of its next response (Node's
	 * http agent failed "Expected HTTP/").  In its HTTP/1.0-compatible
	 * mode MHD uses no chunking and closes the connection instead. */
	if (strcmp(r->method, "HEAD") == 0)
		MHD_set_response_options(resp, MHD_RF_HTTP_VERSION_1_0_ONLY,
					 MHD_RO_END);
	rc = http_send(r, 200, resp);
	MHD_destroy_response(resp);
	return rc;
}
