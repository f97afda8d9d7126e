/* http.c - libmicrohttpd glue: per-request state, routing, replies,
 * suspended requests (durable acks and long-polls).
 *
 * MHD runs in external epoll mode inside the one event loop, so handlers
 * never race with the scheduler and need no lock.  A request that
 * must wait (its batch is not yet on disk, or a client long-polls) is
 * suspended, never blocked on: the loop resumes it later and MHD calls the
 * access handler again, which then answers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <microhttpd.h>

#include "http.h"

static struct MHD_Daemon *daemon_;
static struct request *acks;            /* replies awaiting the commit */
static int ack_batches;                 /* submissions among them */
static int64_t ack_jobs;                /* and their jobs */
static int resumed;                     /* a resume awaits MHD_run */

/* Long-polls, found by what they wait for (a hash of lists, so a finished
 * job wakes only its own waiters) and by deadline (a binary heap). */
static struct request **wbuckets;
static size_t nwbuckets, nwaiters;
static struct request **heap;
static size_t nheap, capheap;

/* Connections waiting for a request's headers, oldest deadline first: a
 * client that trickles its headers (or opens a connection and says
 * nothing) is dropped at its deadline, not at MHD's idle timeout, which
 * each byte would push back.  Deadlines are now + cfg.header_timeout_us
 * at the time a connection starts waiting, so appending keeps the list
 * sorted. */
struct conn_watch {
	int fd;                         /* borrowed from MHD */
	int64_t deadline;               /* monotonic us */
	int listed;
	struct conn_watch *prev, *next;
};
static struct conn_watch *watch_head, *watch_tail;

/* The closed table of client-visible errors (STYLE 8). */
static const struct {
	const char *code;
	unsigned status;
	const char *title;
} problems[] = {
	[P_INVALID_JSON] = {"invalid-json", 400, "Body is not valid JSON"},
	[P_INVALID] = {"invalid-request", 400, "Request is invalid"},
	[P_NOT_FOUND] = {"not-found", 404, "Not found"},
	[P_METHOD] = {"method-not-allowed", 405, "Method not allowed"},
	[P_CONFLICT] = {"conflict", 409, "Conflict with the current state"},
	[P_TOO_LARGE] = {"body-too-large", 413, "Request body too large"},
	[P_MEDIA_TYPE] = {"unsupported-media-type", 415,
			  "Content-Type must be application/json"},
	[P_INTERNAL] = {"internal", 500, "Internal server error"},
	[P_UNAVAILABLE] = {"unavailable", 503, "Service unavailable"},
	[P_QUEUE_FULL] = {"queue-full", 429, "Too many queued jobs"},
	[P_UNAUTHORIZED] = {"unauthorized", 401,
			    "Missing or wrong bearer token"},
};

static void list_remove(struct request **head, struct request *r)
{
	if (!r->listed)
		return;
	if (r->prev)
		r->prev->next = r->next;
	else
		*head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	r->listed = 0;
}

static void list_push(struct request **head, struct request *r)
{
	r->prev = NULL;
	r->next = *head;
	if (*head)
		(*head)->prev = r;
	*head = r;
	r->listed = 1;
}

/* ---- replies ---- */

/* cors_origin returns what Access-Control-Allow-Origin should say for this
 * request's Origin, or NULL when the origin is not allowed. */
static const char *cors_origin(struct request *r)
{
	const char *origin = MHD_lookup_connection_value(r->conn,
							 MHD_HEADER_KIND,
							 "Origin");
	const char *p;
	size_t n;

	if (!origin || !cfg.cors_origins)
		return NULL;
	if (strcmp(cfg.cors_origins, "*") == 0)
		return "*";
	n = strlen(origin);
	for (p = cfg.cors_origins; *p; p += strcspn(p, ",")) {
		p += strspn(p, ", ");
		if (strncmp(p, origin, n) == 0 && (p[n] == ',' || !p[n]))
			return origin;
	}
	return NULL;
}

int http_cors_allowed(struct request *r)
{
	return cors_origin(r) != NULL;
}

/* http_send queues resp (borrowed) with the request's extra headers and
 * the CORS headers of an allowed origin. */
enum MHD_Result http_send(struct request *r, unsigned status,
			  struct MHD_Response *resp)
{
	const char *origin = cors_origin(r);
	enum MHD_Result rc;
	size_t i;

	for (i = 0; i < r->nheaders; i++)
		MHD_add_response_header(resp, r->headers[i].name,
					r->headers[i].value);
	if (origin) {
		MHD_add_response_header(resp, "Access-Control-Allow-Origin",
					origin);
		MHD_add_response_header(resp, "Vary", "Origin");
		MHD_add_response_header(resp, "Access-Control-Expose-Headers",
					"Location, Retry-After");
	}
	rc = MHD_queue_response(r->conn, status, resp);
	r->answered = 1;
	r->status = status;
	return rc;
}

static enum MHD_Result queue(struct request *r, unsigned status,
			     const char *type, char *body, size_t len)
{
	struct MHD_Response *resp;
	enum MHD_Result rc;

	resp = MHD_create_response_from_buffer(len, body,
					       MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	if (type)
		MHD_add_response_header(resp, "Content-Type", type);
	rc = http_send(r, status, resp);
	MHD_destroy_response(resp);
	return rc;
}

void http_header(struct request *r, const char *name, const char *value)
{
	if (r->nheaders >= sizeof(r->headers) / sizeof(r->headers[0]))
		return;
	snprintf(r->headers[r->nheaders].name, sizeof(r->headers[0].name),
		 "%s", name);
	snprintf(r->headers[r->nheaders].value, sizeof(r->headers[0].value),
		 "%s", value);
	r->nheaders++;
}

enum MHD_Result http_json(struct request *r, unsigned status, json_t *body)
{
	char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));

	json_decref(body);
	if (!text)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	return queue(r, status, "application/json", text, strlen(text));
}

enum MHD_Result http_empty(struct request *r, unsigned status)
{
	return queue(r, status, NULL, NULL, 0);
}

enum MHD_Result http_text(struct request *r, const char *type,
			  const char *text)
{
	char *copy = strdup(text);

	if (!copy)
		return MHD_NO;
	return queue(r, 200, type, copy, strlen(copy));
}

enum MHD_Result http_problem(struct request *r, enum problem p,
			     const char *detail, json_t *errors)
{
	json_t *body;
	char *text;

	if (problems[p].status >= 500)
		log_warn("%s %s: %u %s", r->method, r->url, problems[p].status,
			 detail);
	body = json_pack("{s:s+, s:s, s:i, s:s, s:o}",
			 "type", "urn:jobpool:problem:", problems[p].code,
			 "title", problems[p].title,
			 "status", (int)problems[p].status,
			 "detail", detail,
			 "errors", errors ? errors : json_array());
	if (!body)      /* detail or errors not valid UTF-8 (client input) */
		body = json_pack("{s:s+, s:s, s:i, s:s, s:[]}",
				 "type", "urn:jobpool:problem:",
				 problems[p].code, "title", problems[p].title,
				 "status", (int)problems[p].status,
				 "detail", problems[p].title, "errors");
	text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (!text)
		return MHD_NO;
	return queue(r, problems[p].status, "application/problem+json", text,
		     strlen(text));
}

/* http_invalid answers 400 invalid-request naming one field. */
enum MHD_Result http_invalid(struct request *r, const char *path,
			     const char *message)
{
	json_t *errors = json_pack("[{s:s, s:s}]", "path", path,
				   "message", message);
	char detail[256];

	snprintf(detail, sizeof(detail), "%s %s", path, message);
	return http_problem(r, P_INVALID, detail, errors);
}

/* ---- suspension ---- */

/* ---- the deadline heap of long-polls ---- */

static void heap_set(size_t i, struct request *r)
{
	heap[i] = r;
	r->heap_idx = i;
}

static void heap_up(size_t i)
{
	struct request *r = heap[i];

	while (i > 0 && heap[(i - 1) / 2]->deadline > r->deadline) {
		heap_set(i, heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(i, r);
}

static void heap_down(size_t i)
{
	struct request *r = heap[i];
	size_t c;

	while ((c = 2 * i + 1) < nheap) {
		if (c + 1 < nheap && heap[c + 1]->deadline < heap[c]->deadline)
			c++;
		if (heap[c]->deadline >= r->deadline)
			break;
		heap_set(i, heap[c]);
		i = c;
	}
	heap_set(i, r);
}

static void heap_push(struct request *r)
{
	if (nheap == capheap) {
		size_t cap = capheap ? capheap * 2 : 64;
		struct request **p = realloc(heap, cap * sizeof(*p));

		if (!p)
			fatal("%s: realloc", __func__);
		heap = p;
		capheap = cap;
	}
	heap_set(nheap++, r);
	heap_up(nheap - 1);
}

static void heap_remove(struct request *r)
{
	size_t i = r->heap_idx;

	if (--nheap == i)
		return;
	heap_set(i, heap[nheap]);
	heap_up(i);
	heap_down(heap[i]->heap_idx);
}

/* ---- the waiters' hash ---- */

static struct request **bucket_of(int is_batch, int64_t id)
{
	uint64_t h = ((uint64_t)id << 1 | (uint64_t)is_batch) *
		     0x9e3779b97f4a7c15ULL;

	return &wbuckets[h >> 32 & (nwbuckets - 1)];
}

static void waiters_grow(void)
{
	struct request **old = wbuckets, *r, *next;
	size_t n = nwbuckets, i;

	nwbuckets = n ? n * 2 : 256;
	wbuckets = calloc(nwbuckets, sizeof(*wbuckets));
	if (!wbuckets)
		fatal("%s: calloc", __func__);
	for (i = 0; i < n; i++)
		for (r = old[i]; r; r = next) {
			next = r->next;
			r->listed = 0;
			list_push(bucket_of(r->wait_batch, r->wait_id), r);
		}
	free(old);
}

static void waiter_remove(struct request *r)
{
	if (!r->listed || r->phase != PH_WAIT)
		return;
	list_remove(bucket_of(r->wait_batch, r->wait_id), r);
	heap_remove(r);
	nwaiters--;
}

/* ---- replies that wait for a commit ---- */

/* http_suspend_commit holds the answer to r until the transaction that
 * holds its change is committed; then reply(r) answers, with
 * r->commit_ok saying whether the commit succeeded. */
void http_suspend_commit(struct request *r, api_fn reply)
{
	r->phase = PH_ACK;
	r->on_commit = reply;
	list_push(&acks, r);
	MHD_suspend_connection(r->conn);
}

void http_suspend_ack(struct request *r, int64_t batch_id, json_t *job_ids,
		      int njobs, api_fn reply)
{
	r->ack_batch = batch_id;
	r->job_ids = job_ids;
	if (!r->replay) {
		r->njobs = njobs;
		ack_batches++;
		ack_jobs += njobs;
	}
	http_suspend_commit(r, reply);
}

int http_acks_pending(void)
{
	return acks != NULL;
}

void http_pending_load(int *batches, int64_t *jobs)
{
	*batches = ack_batches;
	*jobs = ack_jobs;
}

static void ack_forget(struct request *r)
{
	list_remove(&acks, r);
	if (r->ack_batch && !r->replay) {
		ack_batches--;
		ack_jobs -= r->njobs;
	}
}

/* on_commit resumes every reply that waited for the commit once it is
 * durable (ok) or lost; batches join the scheduler only when they are on
 * disk, so a job never runs from a batch that was never stored. */
static void on_commit(int ok)
{
	struct request *r;

	while ((r = acks)) {
		ack_forget(r);
		r->commit_ok = ok;
		r->phase = PH_RESUMED;
		if (ok && r->ack_batch && !r->replay) {
			engine_batch_added(r->ack_batch);
			metrics_batch_submitted();
			/* Logged once durable: a batch whose commit failed
			 * was never submitted. */
			log_event(LOG_INFO, "submit", r->ack_batch, 0,
				  "api: batch b_%012lld submitted: %d job(s)",
				  (long long)r->ack_batch, r->njobs);
		}
		MHD_resume_connection(r->conn);
		resumed = 1;
	}
}

/* ---- header deadlines ---- */

static void watch_unlist(struct conn_watch *w)
{
	if (!w || !w->listed)
		return;
	if (w->prev)
		w->prev->next = w->next;
	else
		watch_head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		watch_tail = w->prev;
	w->prev = w->next = NULL;
	w->listed = 0;
}

/* watch_arm gives w's connection cfg.header_timeout_us from now to send
 * the headers of its next request. */
static void watch_arm(struct conn_watch *w)
{
	if (!w)                 /* a connection MHD started without one */
		return;
	watch_unlist(w);
	w->deadline = mono_us() + cfg.header_timeout_us;
	w->prev = watch_tail;
	w->next = NULL;
	if (watch_tail)
		watch_tail->next = w;
	else
		watch_head = w;
	watch_tail = w;
	w->listed = 1;
}

static struct conn_watch *watch_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return info ? info->socket_context : NULL;
}

/* watch_expire drops the connections whose headers are overdue.  The
 * socket stays MHD's: shutdown makes MHD read an end of stream and close
 * it through its own path (and call on_connection to free the watch). */
static int64_t watch_expire(int64_t now)
{
	struct conn_watch *w;

	while ((w = watch_head) && w->deadline <= now) {
		watch_unlist(w);
		shutdown(w->fd, SHUT_RDWR);
		resumed = 1;    /* let MHD_run see it this turn */
	}
	return watch_head ? watch_head->deadline : 0;
}

static void on_connection(void *cls, struct MHD_Connection *conn,
			  void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	const union MHD_ConnectionInfo *info;
	struct conn_watch *w = *socket_context;

	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		watch_unlist(w);
		free(w);
		*socket_context = NULL;
		return;
	}
	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	w = calloc(1, sizeof(*w));
	if (!w || !info) {      /* not watched: MHD's idle timeout still is */
		free(w);
		return;
	}
	w->fd = info->connect_fd;
	*socket_context = w;
	watch_arm(w);
}

/* ---- long-polls ---- */

void http_suspend_wait(struct request *r, int is_batch, int64_t id)
{
	r->phase = PH_WAIT;
	r->wait_batch = is_batch;
	r->wait_id = id;
	if (nwaiters >= nwbuckets)
		waiters_grow();
	list_push(bucket_of(is_batch, id), r);
	heap_push(r);
	nwaiters++;
	MHD_suspend_connection(r->conn);
}

static void resume_wait(struct request *r)
{
	waiter_remove(r);
	r->phase = PH_RESUMED;
	MHD_resume_connection(r->conn);
	resumed = 1;
}

/* wake resumes the long-polls on one job or batch; each looks again and
 * waits again when it is not terminal yet. */
static void wake(int is_batch, int64_t id)
{
	struct request *r, *next;

	if (!nwaiters)
		return;
	for (r = *bucket_of(is_batch, id); r; r = next) {
		next = r->next;
		if (r->wait_batch == is_batch && r->wait_id == id)
			resume_wait(r);
	}
}

static void wake_all(void)
{
	while (nheap)
		resume_wait(heap[0]);
}

static void on_change(const struct change *c)
{
	wake(c->is_batch, c->id);
}

static const struct subscriber http_sub = {
	.change = on_change,
	.commit = on_commit,
	.reset = wake_all,
};

/* http_tick answers the long-polls whose wait is over and drops the
 * connections whose headers are overdue.  Returns the next deadline, or
 * 0. */
int64_t http_tick(int64_t now)
{
	int64_t next;

	while (nheap && heap[0]->deadline <= now)
		resume_wait(heap[0]);
	next = watch_expire(now);
	if (nheap && (!next || heap[0]->deadline < next))
		next = heap[0]->deadline;
	return next;
}

/* ---- MHD callbacks ---- */

/* append_body adds a piece of the body.  A body that passes the limit
 * without announcing its length (chunked) is cut there: MHD 0.9 cannot
 * queue an answer in the middle of an upload, so the connection closes. */
static enum MHD_Result append_body(struct request *r, const char *data,
				   size_t size)
{
	char *p;

	if (r->len + size > cfg.max_body_bytes)
		return MHD_NO;
	if (r->len + size + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;

		while (cap < r->len + size + 1)
			cap *= 2;
		if (cap > cfg.max_body_bytes + 1)
			cap = cfg.max_body_bytes + 1;
		p = realloc(r->body, cap);
		if (!p)
			return MHD_NO;
		r->body = p;
		r->cap = cap;
	}
	memcpy(r->body + r->len, data, size);
	r->len += size;
	r->body[r->len] = 0;
	return MHD_YES;
}

/* body_length returns the length a request announces for its body: 0
 * for none, UINT64_MAX for one of unknown length (chunked). */
static uint64_t body_length(struct request *r)
{
	const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_LENGTH);

	if (cl)
		return strtoull(cl, NULL, 10);
	if (MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
					MHD_HTTP_HEADER_TRANSFER_ENCODING))
		return UINT64_MAX;
	return 0;
}

/* first_call runs when a request's headers are in.  When a body follows,
 * a preflight, a request without the right token and a body announced
 * over the limit are answered now, so that MHD never reads the body (it
 * closes the connection after the answer instead); without a body they
 * wait for the last call, which keeps the connection alive. */
static enum MHD_Result first_call(struct MHD_Connection *conn,
				  const char *url, const char *method,
				  void **con_cls)
{
	struct request *r = calloc(1, sizeof(*r));
	uint64_t len;
	char detail[96];

	if (!r)
		return MHD_NO;
	watch_unlist(watch_of(conn));
	r->conn = conn;
	r->url = url;
	r->method = method;
	r->start_mono = mono_us();
	*con_cls = r;
	len = body_length(r);
	if (!len)
		return MHD_YES;
	r->gated = 1;
	if (http_gate(r) == 0)
		return MHD_YES;
	if (len == UINT64_MAX || len <= cfg.max_body_bytes)
		return MHD_YES;
	snprintf(detail, sizeof(detail),
		 "the body exceeds the limit of %zu bytes", cfg.max_body_bytes);
	return http_problem(r, P_TOO_LARGE, detail, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct request *r = *con_cls;

	if (!r)
		return first_call(conn, url, method, con_cls);
	if (*upload_data_size) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		return r->answered ? MHD_YES : append_body(r, upload_data, n);
	}
	if (r->answered)
		return MHD_YES;
	if (r->phase == PH_RESUMED)
		return api_resume(r);
	if (r->phase != PH_NEW)
		return MHD_YES;
	if (!r->gated && http_gate(r) == 0)
		return MHD_YES;         /* answered: preflight or 401 */
	return http_route(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn,
			 void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct request *r = *con_cls;
	int big;

	if (!r)
		return;
	metrics_http(r->route ? r->route->pattern : NULL, r->method,
		     r->status);
	if (r->status)
		metrics_http_time(r->method, r->status,
				  mono_us() - r->start_mono);
	if (r->phase == PH_WAIT)
		waiter_remove(r);
	else if (r->phase == PH_ACK)
		ack_forget(r);
	/* The connection now waits for the headers of its next request (a
	 * closing one is unlisted again by on_connection). */
	if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
		watch_arm(watch_of(conn));
	json_decref(r->job_ids);
	big = r->len >= (1 << 20);
	free(r->body);
	free(r);
	*con_cls = NULL;
	/* A big body (a 100,000-job batch is ~2 MB of text and ~40 MB once
	 * parsed) leaves free pages among the ones still in use, and glibc
	 * gives back only the top of the heap: without this, RSS stayed at
	 * 55 MB after one such submission instead of 22 MB. */
	if (big)
		malloc_trim(0);
}

static void on_mhd(int fd, uint32_t events, void *ctx)
{
	MHD_run(daemon_);
}

/* mhd_log sends libmicrohttpd's own messages through the server's logger,
 * so they are formatted like every other line and, like them, never block
 * the loop on a full stderr (MHD's default writes to stderr directly). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[900];

	/* Prefixed, so a line like "Failed to bind to port 0" says whose it
	 * is (http_start logs the address we asked for right after). */
	vsnprintf(msg, sizeof(msg), fmt, ap);
	log_warn("http: libmicrohttpd: %s", msg);
}

/* listen_addr fills sa from --listen: an IPv4 address, or an IPv6 one
 * ("::1", given as [::1]:PORT).  Returns its length, 0 when neither. */
static socklen_t listen_addr(struct sockaddr_storage *ss)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, cfg.listen_host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)cfg.listen_port);
		return sizeof(*in4);
	}
	if (inet_pton(AF_INET6, cfg.listen_host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)cfg.listen_port);
		return sizeof(*in6);
	}
	return 0;
}

int http_start(void)
{
	struct sockaddr_storage sa;
	const union MHD_DaemonInfo *info;
	unsigned v6;

	if (!listen_addr(&sa)) {
		log_error("http: --listen: not an IPv4 or IPv6 address: %s",
			  cfg.listen_host);
		return -1;
	}
	/* MHD takes the family from the address, but wants to be told it
	 * is IPv6 too, or it treats the port as an IPv4 one. */
	v6 = sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0;
	daemon_ = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
				   MHD_USE_ERROR_LOG | v6,
				   0, NULL, NULL, on_request, NULL,
				   /* first, or MHD says its earlier
				    * messages went to stderr */
				   MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				   MHD_OPTION_SOCK_ADDR, &sa,
				   MHD_OPTION_NOTIFY_COMPLETED, on_completed,
				   NULL,
				   MHD_OPTION_NOTIFY_CONNECTION, on_connection,
				   NULL,
				   MHD_OPTION_CONNECTION_LIMIT,
				   (unsigned)cfg.max_connections,
				   MHD_OPTION_PER_IP_CONNECTION_LIMIT,
				   (unsigned)cfg.max_connections_per_client,
				   MHD_OPTION_CONNECTION_TIMEOUT, 120,
				   MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024,
				   MHD_OPTION_END);
	if (!daemon_) {
		log_error("http: cannot listen on %s:%d: %s", cfg.listen_host,
			  cfg.listen_port, strerror(errno));
		return -1;
	}
	publish_subscribe(&http_sub);
	info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info || loop_add(info->epoll_fd, EPOLLIN, on_mhd, NULL) < 0)
		return -1;
	return 0;
}

int http_port(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
	return info ? info->port : -1;
}

/* http_daemon returns the running daemon (borrowed), for tests that hand
 * it connections with MHD_add_connection instead of over the network. */
struct MHD_Daemon *http_daemon(void)
{
	return daemon_;
}

/* http_resumed notes a resume made outside this file (event streams). */
void http_resumed(void)
{
	resumed = 1;
}

/* http_run lets MHD do its work at the end of a turn.  In external epoll
 * mode MHD only moves a resumed connection back to its lists in one
 * MHD_run and calls the handler in the next, and nothing on the socket
 * will wake the loop for it: so run it again while resumes are pending. */
void http_run(void)
{
	int i;

	MHD_run(daemon_);
	for (i = 0; resumed && i < 3; i++) {
		resumed = 0;
		MHD_run(daemon_);
	}
	resumed = 0;
}

/* http_timeout_ms returns how long the loop may sleep for MHD's sake. */
int64_t http_timeout_ms(void)
{
	MHD_UNSIGNED_LONG_LONG ms;

	if (MHD_get_timeout(daemon_, &ms) == MHD_YES)
		return (int64_t)ms;
	return -1;
}

/* http_quiesce stops accepting new connections (shutdown has begun). */
void http_quiesce(void)
{
	MHD_socket fd = MHD_quiesce_daemon(daemon_);

	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

void http_stop(void)
{
	/* Answer suspended requests before MHD tears their connections down:
	 * MHD refuses to stop with suspended connections. */
	wake_all();
	publish_flush();
	events_close();
	output_close();
	http_run();
	http_run();
	MHD_stop_daemon(daemon_);
	daemon_ = NULL;
	free(heap);
	free(wbuckets);
	heap = NULL;
	wbuckets = NULL;
	nheap = capheap = nwbuckets = nwaiters = 0;
}
