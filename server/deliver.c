/* deliver.c - sends the webhook outbox: libcurl's multi interface driven by
 * the event loop, so no attempt ever blocks it (curl resolves names in its
 * own thread and hands us its sockets and one timer).
 *
 * A delivery's life here: the store's claim leases it in the turn's
 * transaction (held); the commit of that transaction makes it ready (with
 * several nodes on PostgreSQL, only a committed lease keeps the others
 * off it; a rolled-back claim is dropped and the row stays due); the next
 * deliver_tick renders its body on its first attempt, signs it and starts
 * the transfer (in flight); the transfer's end records the attempt and
 * what follows (delivered, retried at its backoff, failed for good).
 * Delivery is at least once: a process that dies mid-attempt leaves the
 * row leased, and it goes out again when the lease ends (at the next
 * start, with SQLite).  Receivers deduplicate by webhook-id.
 *
 * Sockets: curl tells us through sock_cb which of its sockets to watch,
 * and with CURL_POLL_REMOVE before it closes one, so the loop's handler of
 * that fd number is removed before the number can be reused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <curl/curl.h>

#include "jobpool.h"

#define INFLIGHT_MAX 16                 /* attempts at once */
#define ATTEMPT_TIMEOUT_MS 10000
#define CONNECT_TIMEOUT_MS 5000
/* A lease outlasts the attempt it covers, with room for a slow commit. */
#define LEASE_US ((ATTEMPT_TIMEOUT_MS + 20000) * 1000LL)
/* How often the store is asked for due deliveries when nothing is known
 * to be due: a change this node commits pokes at once; this bounds the
 * wait for other nodes' (PostgreSQL) and for rows left by a restart. */
#define POLL_US 1000000

struct attempt {
	struct delivery d;
	CURL *easy;
	struct curl_slist *headers;
	int64_t started_at;             /* wall clock */
	int64_t started_mono;
	char error[CURL_ERROR_SIZE];
	struct attempt *next;           /* in held, ready or flight */
};

static CURLM *multi;
static struct attempt *held, *ready, *flight;
static int nheld, nready, nflight;
static int64_t timer_at;                /* curl's timer, monotonic; 0: none */
static int64_t poll_at;                 /* next claim, monotonic */
static int started;

static void free_attempt(struct attempt *a)
{
	if (a->easy)
		curl_easy_cleanup(a->easy);
	curl_slist_free_all(a->headers);
	free(a->d.url);
	free(a->d.secret);
	free(a->d.body);
	free(a);
}

static void free_list(struct attempt **list, int *n)
{
	struct attempt *a;

	while ((a = *list)) {
		*list = a->next;
		free_attempt(a);
	}
	*n = 0;
}

/* ---- curl's sockets and timer on the loop ---- */

static void check_done(void);

static void on_socket(int fd, uint32_t events, void *ctx)
{
	int flags = 0, running;

	if (events & EPOLLIN)
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(multi, fd, flags, &running);
	check_done();
}

/* sock_cb: curl wants fd watched for what (or no more, before it closes
 * it).  The loop has no "modify": a change is a delete and an add. */
static int sock_cb(CURL *e, curl_socket_t fd, int what, void *cls,
		   void *sockp)
{
	uint32_t ev = 0;

	loop_del(fd);
	if (what == CURL_POLL_REMOVE)
		return 0;
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (loop_add(fd, ev, on_socket, NULL) < 0) {
		log_warn("%s: fd %d: %s", __func__, (int)fd, strerror(errno));
		return -1;      /* curl fails the transfer */
	}
	return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *cls)
{
	timer_at = timeout_ms < 0 ? 0 : mono_us() + timeout_ms * 1000;
	if (timeout_ms == 0)
		timer_at = mono_us();
	return 0;
}

/* ---- attempts ---- */

static size_t discard(char *p, size_t size, size_t n, void *ctx)
{
	return size * n;        /* the receiver's answer body is not kept */
}

/* render gives a delivery its body on its first attempt: the batch or job
 * as GET shows it now (committed), kept so every retry sends the same. */
static int render(struct delivery *d)
{
	json_t *data = d->job_id ? store_job_json(d->job_id) :
		       store_batch_json(d->batch_id);
	char id[32];

	if (!data) {
		/* deleted before its first attempt: the id is all there is */
		fmt_id(id, sizeof(id), d->job_id ? 'j' : 'b',
		       d->job_id ? d->job_id : d->batch_id);
		data = json_pack("{s:s}", "id", id);
	}
	d->body = webhook_payload(d->event, d->created_at, data);
	if (!d->body)
		return -1;
	store_webhook_body(d->id, d->body);
	return 0;
}

/* add_header appends "name: value" to a's headers. */
static int add_header(struct attempt *a, const char *name, const char *value)
{
	char line[160];
	struct curl_slist *l;

	snprintf(line, sizeof(line), "%s: %s", name, value);
	l = curl_slist_append(a->headers, line);
	if (!l)
		return -1;
	a->headers = l;
	return 0;
}

/* prepare signs a's body for now and sets up its transfer.  Returns 0,
 * or -1 with a->error set. */
static int prepare(struct attempt *a)
{
	unsigned char key[WEBHOOK_KEY_MAX];
	char sig[128], ts[32];
	const char *why;
	char *url = NULL;
	size_t keylen;

	/* Checked again: the allow-list may have changed since the batch
	 * came in, or this node's differs. */
	why = webhook_url_check(a->d.url, &url);
	if (why) {
		snprintf(a->error, sizeof(a->error), "url: %s", why);
		return -1;
	}
	snprintf(ts, sizeof(ts), "%lld", (long long)(a->started_at / 1000000));
	if (webhook_key(a->d.secret, key, &keylen) < 0 ||
	    webhook_sign(key, keylen, a->d.msg_id, a->started_at / 1000000,
			 a->d.body, sig, sizeof(sig)) < 0 ||
	    add_header(a, "Content-Type", "application/json") < 0 ||
	    add_header(a, "webhook-id", a->d.msg_id) < 0 ||
	    add_header(a, "webhook-timestamp", ts) < 0 ||
	    add_header(a, "webhook-signature", sig) < 0 ||
	    add_header(a, "Expect", "") < 0 || !(a->easy = curl_easy_init())) {
		free(url);
		snprintf(a->error, sizeof(a->error), "could not sign or "
			 "prepare the request (out of memory?)");
		return -1;
	}
	curl_easy_setopt(a->easy, CURLOPT_URL, url);
	free(url);
	curl_easy_setopt(a->easy, CURLOPT_PRIVATE, a);
	curl_easy_setopt(a->easy, CURLOPT_HTTPHEADER, a->headers);
	curl_easy_setopt(a->easy, CURLOPT_POSTFIELDS, a->d.body);
	curl_easy_setopt(a->easy, CURLOPT_POSTFIELDSIZE_LARGE,
			 (curl_off_t)strlen(a->d.body));
	curl_easy_setopt(a->easy, CURLOPT_ERRORBUFFER, a->error);
	curl_easy_setopt(a->easy, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(a->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(a->easy, CURLOPT_TIMEOUT_MS, (long)ATTEMPT_TIMEOUT_MS);
	curl_easy_setopt(a->easy, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)CONNECT_TIMEOUT_MS);
	curl_easy_setopt(a->easy, CURLOPT_USERAGENT, "jobpool-webhooks/1");
	/* Only http(s), no redirects (a 3xx is a failed attempt: following
	 * one would leave the allow-list), and no proxy from the
	 * environment: the host checked is the host connected to. */
	curl_easy_setopt(a->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(a->easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(a->easy, CURLOPT_PROXY, "");
	return 0;
}

/* settle records the end of attempt a (status 0: no HTTP answer). */
static void settle(struct attempt *a, int status, const char *error)
{
	int64_t now = now_us(), next = 0;
	int n = a->d.attempts + 1, ok = status >= 200 && status < 300;
	char why[CURL_ERROR_SIZE + 32];

	if (!ok && !error) {
		snprintf(why, sizeof(why), "the receiver answered %d", status);
		error = why;
	}
	if (!ok)
		next = webhook_next_at(n, a->d.created_at, now,
				       cfg.webhook_backoff_us);
	metrics_webhook(ok ? "delivered" : next < 0 ? "failed" : "retried");
	if (!ok)
		log_info("webhook: %s (batch b_%012lld) attempt %d failed: %s%s",
			 a->d.msg_id, (long long)a->d.batch_id, n, error,
			 next < 0 ? "; giving up" : "");
	if (store_webhook_result(a->d.id, n, a->started_at,
				 mono_us() - a->started_mono, status,
				 ok ? NULL : error, ok, next) < 0)
		log_warn("webhook: %s: attempt %d not recorded; it is made "
			 "again when its lease ends", a->d.msg_id, n);
	if (next > 0) {
		int64_t at = mono_us() + (next - now);

		if (!poll_at || at < poll_at)
			poll_at = at;
	}
}

/* check_done settles every transfer curl has finished. */
static void check_done(void)
{
	struct attempt **p, *a;
	CURLMsg *m;
	long status;
	int left;

	while ((m = curl_multi_info_read(multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		a = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
		status = 0;
		if (m->data.result == CURLE_OK)
			curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE,
					  &status);
		if (!a->error[0] && m->data.result != CURLE_OK)
			snprintf(a->error, sizeof(a->error), "%s",
				 curl_easy_strerror(m->data.result));
		settle(a, (int)status, m->data.result == CURLE_OK ? NULL :
		       a->error);
		curl_multi_remove_handle(multi, a->easy);
		for (p = &flight; *p; p = &(*p)->next)
			if (*p == a) {
				*p = a->next;
				break;
			}
		nflight--;
		free_attempt(a);
	}
	/* room for more: look for them now, not at the next poll */
	if (nflight + nready + nheld < INFLIGHT_MAX && poll_at > mono_us())
		poll_at = mono_us();
}

/* launch starts attempt a (from ready).  One that cannot start is
 * settled at once as a failed attempt. */
static void launch(struct attempt *a)
{
	a->started_at = now_us();
	a->started_mono = mono_us();
	if ((!a->d.body && render(&a->d) < 0) || prepare(a) < 0 ||
	    curl_multi_add_handle(multi, a->easy) != CURLM_OK) {
		if (!a->error[0])
			snprintf(a->error, sizeof(a->error), "could not start "
				 "the request");
		settle(a, 0, a->error);
		free_attempt(a);
		return;
	}
	a->next = flight;
	flight = a;
	nflight++;
}

/* claim asks the store for due deliveries, as many as there is room for;
 * they are held until the claim commits (on_commit). */
static void claim(int64_t now_mono)
{
	struct delivery d[INFLIGHT_MAX];
	int64_t now = now_us(), next_due = 0;
	int room = INFLIGHT_MAX - nflight - nready - nheld, n, i;
	struct attempt *a;

	poll_at = now_mono + POLL_US;
	if (room <= 0 || store_degraded())
		return;
	n = store_webhook_claim(now, now + LEASE_US, room, d, &next_due);
	for (i = 0; i < n; i++) {
		a = calloc(1, sizeof(*a));
		if (!a) {
			/* its lease runs out, then it is due again */
			free(d[i].url);
			free(d[i].secret);
			free(d[i].body);
			continue;
		}
		a->d = d[i];
		a->next = held;
		held = a;
		nheld++;
	}
	if (n == room)
		poll_at = now_mono;             /* more may be due */
	else if (next_due > 0 && next_due - now < POLL_US)
		poll_at = now_mono + (next_due > now ? next_due - now : 0);
}

/* ---- the publisher tells us about commits and changes ---- */

static void on_commit(int ok)
{
	struct attempt *a;

	if (!ok) {
		/* the leases were rolled back: the rows are due as before */
		free_list(&held, &nheld);
		return;
	}
	while ((a = held)) {
		held = a->next;
		a->next = ready;
		ready = a;
		nready++;
	}
	nheld = 0;
}

/* on_change pokes the claim when a job or batch ended: its outbox row, if
 * it has one, was committed with it. */
static void on_change(const struct change *c)
{
	if (c->is_batch || c->state >= JS_SUCCEEDED)
		poll_at = poll_at && poll_at < mono_us() ? poll_at : mono_us();
}

static const struct subscriber subscriber = {
	.change = on_change,
	.commit = on_commit,
};

/* ---- the loop's side ---- */

int deliver_start(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	multi = curl_multi_init();
	if (!multi)
		return -1;
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	publish_subscribe(&subscriber);
	/* An attempt the previous process began is made again. */
	if (store_webhook_release(now_us()) < 0)
		log_warn("webhook: leases of a previous run not released; "
			 "their deliveries wait for the leases to end");
	poll_at = mono_us();
	started = 1;
	return 0;
}

int64_t deliver_next(void)
{
	int64_t next = poll_at;

	if (!started)
		return 0;
	if (nready && !shutting_down)
		return mono_us();
	if (shutting_down)
		next = 0;
	if (timer_at && (!next || timer_at < next))
		next = timer_at;
	return next;
}

void deliver_tick(int64_t now)
{
	struct attempt *a;
	int running;

	if (!started)
		return;
	if (timer_at && now >= timer_at) {
		timer_at = 0;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0,
					 &running);
		check_done();
	}
	/* Draining: the attempts under way may end, no new one starts. */
	if (shutting_down)
		return;
	while ((a = ready)) {
		ready = a->next;
		nready--;
		launch(a);
	}
	if (poll_at && now >= poll_at)
		claim(now);
}

/* deliver_stop abandons the attempts under way (their rows stay leased,
 * so they are made again: at least once). */
void deliver_stop(void)
{
	struct attempt *a;

	if (!started)
		return;
	while ((a = flight)) {
		flight = a->next;
		curl_multi_remove_handle(multi, a->easy);
		free_attempt(a);
	}
	nflight = 0;
	free_list(&held, &nheld);
	free_list(&ready, &nready);
	curl_multi_cleanup(multi);
	multi = NULL;
	curl_global_cleanup();
	started = 0;
}
