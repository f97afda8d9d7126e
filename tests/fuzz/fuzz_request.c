/* fuzz_request.c - libFuzzer target: one HTTP exchange with the real
 * server, in process.
 *
 * The server's own http_start runs libmicrohttpd on loopback port 0 (no
 * client ever connects there); each input goes to it over a socketpair
 * handed in with MHD_add_connection, so MHD parses it, and the access
 * handler, http_gate, http_route, the query and id parsing and the
 * endpoint run exactly as in jobpoold.  The store is a real SQLite file in
 * a temporary directory holding two batches; there are no workers (spawns
 * fail through pool_spawn) and no dispatch, so a submission is stored and
 * acknowledged but never runs, and command stays off.  When an input
 * changed the database it is put back from a copy, so inputs do not
 * depend on the ones before them.
 *
 * Input: the first byte chooses; with its low two bits 0 the rest is sent
 * as is, else the rest is "METHOD\nTARGET\nHeader: v\n...\n\nbody" and
 * becomes a request line, those headers, Host, Content-Length and
 * Connection: close (bits below say which), and the body.  The other bits
 * turn on --token, --cors-origin lists and HTTP/1.0.
 *
 * Checks, on top of the sanitizers: what comes back starts with a
 * well-formed status line and header block; a problem+json body is JSON
 * whose status is the status line's; no answer is a 500; and every
 * connection is gone once its client has gone (nothing left suspended).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sqlite3.h>

#include "http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

extern sqlite3 *store_db;       /* store.c: to see whether an input wrote */

#define F_RAW_MASK 0x03
#define F_TOKEN 0x04
#define F_CORS_LIST 0x08
#define F_CORS_ANY 0x10
#define F_HTTP10 0x20
#define F_KEEP_ALIVE 0x40
#define F_NO_LENGTH 0x80

#define TOKEN "fuzz-token"
#define MAX_RESPONSE (4 << 20)

static char dir[64], db[PATH_MAX], template_db[PATH_MAX];
/* stderr as it was at start: run with -close_fd_mask=2 the server's log
 * goes nowhere, and our own reports still reach the terminal */
static FILE *report;
static int verbose;             /* FUZZ_VERBOSE=1: show every exchange */

static void fail(const char *what, const char *detail, size_t len)
{
	fprintf(report, "fuzz_request: %s\n", what);
	if (detail)
		fprintf(report, "---- response ----\n%.*s\n------------------\n",
			(int)(len > 4096 ? 4096 : len), detail);
	fflush(report);
	abort();
}

/* no_spawn stands in for posix_spawn: a fuzzer starts no process. */
static int no_spawn(pid_t *pid, const char *path,
		    const posix_spawn_file_actions_t *fa,
		    const posix_spawnattr_t *attr, char *const argv[],
		    char *const envp[])
{
	return EAGAIN;
}

static int copy_file(const char *from, const char *to)
{
	char buf[65536];
	int in = open(from, O_RDONLY | O_CLOEXEC), out;
	ssize_t n;

	if (in < 0)
		return -1;
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0) {
		close(in);
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n) {
			n = -1;
			break;
		}
	close(in);
	close(out);
	return n < 0 ? -1 : 0;
}

static void remove_side_files(void)
{
	char p[PATH_MAX + 8];

	snprintf(p, sizeof(p), "%s-wal", db);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", db);
	unlink(p);
}

/* add_batch stores a batch from its JSON text and joins it to the
 * scheduler; key may be NULL.  Returns its id. */
static int64_t add_batch(const char *text, const char *key)
{
	json_t *body = json_loads(text, 0, NULL), *ids = NULL;
	char hash[33], *canon;
	int64_t id;

	canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
	hash_hex(canon, strlen(canon), hash);
	free(canon);
	if (store_batch_insert(body, now_us(), key, key ? hash : NULL, &id,
			       &ids) < 0 || store_flush() < 0)
		fail("fixture: cannot store a batch", NULL, 0);
	engine_batch_added(id);
	json_decref(ids);
	json_decref(body);
	return id;
}

/* make_template writes the database every input starts from: batch
 * b_000000000001 queued (j_..1, j_..2, Idempotency-Key "fuzz-key"), and
 * b_000000000002 canceled (j_..3), so GET, wait, cancel, delete, replay and
 * conflict all have something to find. */
static void make_template(void)
{
	int64_t b2;

	if (store_open(db) < 0 || engine_load() < 0)
		fail("fixture: cannot open the store", db, strlen(db));
	add_batch("{\"name\":\"fuzz\",\"jobs\":[{\"kind\":\"noop\"},"
		  "{\"kind\":\"sleep\",\"args\":{\"seconds\":1}}]}", "fuzz-key");
	b2 = add_batch("{\"jobs\":[{\"kind\":\"echo\",\"args\":{\"value\":1}}]}",
		       NULL);
	if (engine_cancel_batch(b2) < 0 || store_flush() < 0)
		fail("fixture: cannot cancel a batch", NULL, 0);
	publish_commit(1);
	sched_clear();
	store_close();
	remove_side_files();
	if (copy_file(db, template_db) < 0)
		fail("fixture: cannot copy the database", template_db, 0);
}

/* reset_store puts the database and the scheduler back as the template
 * has them. */
static void reset_store(void)
{
	store_close();
	sched_clear();
	remove_side_files();
	if (copy_file(template_db, db) < 0 || store_open(db) < 0 ||
	    engine_load() < 0)
		fail("cannot reset the store", db, strlen(db));
}

static void teardown(void)
{
	store_close();
	remove_side_files();
	unlink(db);
	unlink(template_db);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);

	report = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!report)
		report = stderr;
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/dev/shm/jobpool-fuzz-XXXXXX");
	if (!mkdtemp(dir)) {
		snprintf(dir, sizeof(dir), "/tmp/jobpool-fuzz-XXXXXX");
		if (!mkdtemp(dir))
			fail("mkdtemp failed", NULL, 0);
	}
	snprintf(db, sizeof(db), "%s/jobpool.db", dir);
	snprintf(template_db, sizeof(template_db), "%s/template.db", dir);
	atexit(teardown);
	/* the limits of the integration catalogue, a body limit the fuzzer
	 * can reach, and a small events window */
	cfg.listen_port = 0;
	cfg.db_path = db;
	cfg.max_body_bytes = 8192;
	cfg.max_jobs_per_batch = 1000;
	cfg.events_buffer = 64;
	cfg.worker_bin = "/nonexistent/jobpool-worker";
	pool_spawn = no_spawn;
	make_template();
	if (copy_file(template_db, db) < 0 || store_open(db) < 0 ||
	    events_init() < 0 || engine_load() < 0 || loop_init() < 0 ||
	    http_start() < 0 || pool_start(0, &engine_pool_events) < 0)
		fail("cannot start the server", NULL, 0);
	return 0;
}

/* turn is the part of the server's loop turn that answers: MHD, then the
 * group commit that acknowledged submissions and cancels wait for.  No
 * dispatch: nothing ever runs. */
static void turn(void)
{
	http_run();
	if (http_acks_pending() || store_dirty()) {
		if (store_flush() == 0)
			publish_commit(1);
		http_run();
	}
	if (!store_dirty() && publish_pending()) {
		publish_commit(1);
		http_run();
	}
}

static unsigned connections(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(http_daemon(),
				   MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return info ? info->num_connections : 0;
}

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;

		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			fail("out of memory", NULL, 0);
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void puts_buf(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static int has_header(const char *lines, size_t n, const char *name)
{
	size_t k = strlen(name);
	const char *p = lines, *end = lines + n;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		if ((size_t)(end - p) > k && strncasecmp(p, name, k) == 0 &&
		    p[k] == ':')
			return 1;
		if (!nl)
			break;
		p = nl + 1;
	}
	return 0;
}

/* is_head tells whether the request line at p names HEAD, as MHD reads it
 * (empty lines before it are skipped, as RFC 9112 2.2 allows; the method
 * ends at the first space): no body comes back. */
static int is_head(const void *p, size_t n)
{
	const char *s = p;

	while (n > 0 && (*s == '\r' || *s == '\n')) {
		s++;
		n--;
	}
	return n >= 4 && memcmp(s, "HEAD", 4) == 0 && (n == 4 || s[4] == ' ');
}

/* build turns a structured input into request bytes; *head says whether
 * its method is HEAD (no body comes back). */
static void build(const uint8_t *data, size_t size, uint8_t flags,
		  struct buf *req, int *head)
{
	const char *s = (const char *)data, *end = s + size;
	const char *method, *target, *hdrs, *body;
	size_t mlen, tlen, hlen;
	const char *nl, *blank;
	char line[64];

	method = s;
	nl = memchr(s, '\n', size);
	mlen = nl ? (size_t)(nl - s) : size;
	target = nl ? nl + 1 : end;
	nl = memchr(target, '\n', (size_t)(end - target));
	tlen = nl ? (size_t)(nl - target) : (size_t)(end - target);
	hdrs = nl ? nl + 1 : end;
	/* headers end at an empty line; the body is what follows */
	if (hdrs < end && *hdrs == '\n') {
		blank = hdrs;
	} else {
		blank = NULL;
		for (nl = hdrs; nl + 1 < end; nl++)
			if (nl[0] == '\n' && nl[1] == '\n') {
				blank = nl + 1;
				break;
			}
	}
	hlen = blank ? (size_t)(blank - hdrs) : (size_t)(end - hdrs);
	body = blank ? blank + 1 : end;
	*head = is_head(method, mlen);

	put(req, method, mlen);
	puts_buf(req, " ");
	put(req, target, tlen);
	puts_buf(req, flags & F_HTTP10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
	if (!has_header(hdrs, hlen, "Host"))
		puts_buf(req, "Host: fuzz\r\n");
	for (s = hdrs; s < hdrs + hlen;) {
		nl = memchr(s, '\n', (size_t)(hdrs + hlen - s));
		put(req, s, nl ? (size_t)(nl - s) : (size_t)(hdrs + hlen - s));
		puts_buf(req, "\r\n");
		s = nl ? nl + 1 : hdrs + hlen;
	}
	if (!(flags & F_KEEP_ALIVE))
		puts_buf(req, "Connection: close\r\n");
	if (!(flags & F_NO_LENGTH) && !has_header(hdrs, hlen, "Content-Length") &&
	    !has_header(hdrs, hlen, "Transfer-Encoding")) {
		snprintf(line, sizeof(line), "Content-Length: %zu\r\n",
			 (size_t)(end - body));
		puts_buf(req, line);
	}
	puts_buf(req, "\r\n");
	put(req, body, (size_t)(end - body));
}

/* check_response checks the first response in what came back. */
static void check_response(const char *r, size_t len, int head)
{
	const char *eoh, *p, *ct = NULL, *cl = NULL;
	unsigned status;
	json_t *json;
	size_t n;

	if (len < 12 || (memcmp(r, "HTTP/1.1 ", 9) != 0 &&
			 memcmp(r, "HTTP/1.0 ", 9) != 0) ||
	    r[9] < '1' || r[9] > '5' || r[10] < '0' || r[10] > '9' ||
	    r[11] < '0' || r[11] > '9')
		fail("no status line", r, len);
	status = (unsigned)((r[9] - '0') * 100 + (r[10] - '0') * 10 +
			    (r[11] - '0'));
	eoh = memmem(r, len, "\r\n\r\n", 4);
	if (!eoh)
		return;         /* the client left before the whole head */
	if (status == 500)
		fail("500: the server faulted", r, len);
	for (p = strstr(r, "\r\n") + 2; p < eoh; p = strstr(p, "\r\n") + 2) {
		const char *colon = memchr(p, ':', (size_t)(eoh - p));
		const char *crlf = strstr(p, "\r\n");

		if (!colon || colon > crlf || colon == p)
			fail("malformed response header", r, len);
		if (strncasecmp(p, "Content-Type: ", 14) == 0)
			ct = p + 14;
		if (strncasecmp(p, "Content-Length: ", 16) == 0)
			cl = p + 16;
	}
	if (!ct || strncmp(ct, "application/problem+json", 24) != 0 || head)
		return;
	if (!cl)
		fail("problem+json without Content-Length", r, len);
	n = strtoul(cl, NULL, 10);
	if ((size_t)(r + len - (eoh + 4)) < n)
		return;         /* cut short by the client leaving */
	/* The answer to a HEAD has no body: the next answer follows at once.
	 * Which request is a HEAD is libmicrohttpd's reading of the bytes
	 * (it skips more before a request line than empty lines), so tell it
	 * from the answer; a problem+json body starts with '{', never so. */
	if (n >= 5 && memcmp(eoh + 4, "HTTP/", 5) == 0)
		return;
	json = json_loadb(eoh + 4, n, 0, NULL);
	if (!json || !json_is_object(json))
		fail("problem+json body is not a JSON object", r, len);
	if (json_integer_value(json_object_get(json, "status")) != status ||
	    !json_is_string(json_object_get(json, "type")) ||
	    !json_is_array(json_object_get(json, "errors")))
		fail("problem+json does not match its status line", r, len);
	json_decref(json);
}

/* exchange sends req over a new connection and collects the answer until
 * MHD closes it or nothing more moves; then the client goes away. */
static void exchange(const struct buf *req, struct buf *resp)
{
	/* an AF_UNIX peer, so MHD sets no TCP options on the socketpair */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t sent = 0;
	int sv[2], idle = 0, i;
	char chunk[16384];
	ssize_t n;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		fail("socketpair failed", NULL, 0);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	if (MHD_add_connection(http_daemon(), sv[1], (struct sockaddr *)&sa,
			       sizeof(sa)) != MHD_YES)
		fail("MHD_add_connection failed", NULL, 0);
	for (i = 0; i < 1000 && idle < 3; i++) {
		int moved = 0;

		if (sent < req->len) {
			n = write(sv[0], req->p + sent, req->len - sent);
			if (n > 0) {
				sent += (size_t)n;
				moved = 1;
			}
		}
		turn();
		while ((n = read(sv[0], chunk, sizeof(chunk))) > 0) {
			if (resp->len < MAX_RESPONSE)
				put(resp, chunk, (size_t)n);
			moved = 1;
		}
		if (n == 0)
			break;  /* MHD closed the connection */
		idle = moved || http_acks_pending() ? 0 : idle + 1;
	}
	close(sv[0]);
}

/* settle ends what the client left: MHD sees it gone on the next run;
 * long-polls and event streams are suspended and cannot see it, so they
 * are answered as at shutdown (http_stop does the same). */
static void settle(void)
{
	int i;

	for (i = 0; i < 3 && connections(); i++)
		turn();
	if (connections()) {
		shutting_down = 1;
		events_close();
		http_tick(INT64_MAX);
		for (i = 0; i < 10 && connections(); i++)
			turn();
		shutting_down = 0;
	}
	if (connections())
		fail("a connection outlived its client", NULL, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf req = { 0 }, resp = { 0 };
	int changes, head = 0;
	uint8_t flags;

	if (size < 1)
		return 0;
	flags = data[0];
	cfg.token = flags & F_TOKEN ? TOKEN : NULL;
	cfg.cors_origins = flags & F_CORS_ANY ? "*" : flags & F_CORS_LIST ?
			   "http://a.example,https://b.example:8443" : NULL;
	if ((flags & F_RAW_MASK) == 0) {
		put(&req, data + 1, size - 1);
		head = is_head(data + 1, size - 1);
	} else {
		build(data + 1, size - 1, flags, &req, &head);
	}
	changes = sqlite3_total_changes(store_db);
	exchange(&req, &resp);
	settle();
	if (verbose)
		fprintf(report, ">>>>\n%.*s\n<<<<\n%.*s\n====\n", (int)req.len,
			req.p, (int)resp.len, resp.p);
	if (resp.len)
		check_response(resp.p, resp.len, head);
	if (sqlite3_total_changes(store_db) != changes)
		reset_store();
	free(req.p);
	free(resp.p);
	return 0;
}
