/* events.c - GET /v1/events: every job and batch state change as
 * Server-Sent Events.
 *
 * Changes go into a ring of the last --events-buffer events, each already
 * formatted, holding at most --events-buffer-bytes: the oldest go first
 * when either bound is reached.  The texts lie end to end in one circular
 * buffer beside a ring of slots; both grow with use, so a small window
 * costs little, and what the window holds is exactly what it counts, with
 * no allocation per event to fragment the heap.  (Bounded in entries
 * alone, with a malloc'd text each, the default window took about 25 MB
 * and RSS kept rising for minutes under steady load until it was full.)
 *
 * Every stream is an MHD callback response whose reader copies the events
 * after the client's cursor; when there is nothing to send the reader
 * suspends its connection (MHD's prescribed pattern) and the next event
 * resumes it.  No thread, no per-client queue: a slow client only
 * holds a cursor, and one that falls out of the window gets a "reset".
 *
 * Ids are wall-clock microseconds, bumped to stay strictly increasing, so
 * they keep increasing across restarts and a Last-Event-ID from before a
 * restart is simply older than the window.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define KEEPALIVE_US (15 * 1000000LL)

struct event {
	int64_t id;
	int64_t batch_id;
	size_t off, len;        /* the text: text[off .. off + len) */
};

struct stream {
	struct MHD_Connection *conn;
	int64_t cursor;         /* id of the last event sent (or skipped) */
	int64_t batch_id;       /* filter, 0: all */
	char *rest;             /* the unsent tail of an event too big for
				 * one write: a copy, so eviction cannot
				 * pull it away mid-event */
	size_t rest_len, rest_off;
	int suspended, closing, reset;
	int64_t last_write;     /* monotonic */
	struct stream *prev, *next;
};

static struct event *ring;
static size_t cap, count, first;        /* first: index of the oldest */
/* The texts, oldest at ring[first].off, the next one goes at head.  When
 * wrapped the live bytes are [oldest, end of the used part) then [0, head);
 * a text never wraps: the space left at the end is skipped. */
static char *text;
static size_t text_cap, head;
static int wrapped;
static int64_t last_id;
static int64_t start_id;        /* no event of this process is older */
static int64_t evicted;         /* id of the newest event dropped */
static struct stream *streams;

static struct event *at(size_t i)
{
	return &ring[(first + i) % cap];
}

/* oldest_after returns the ring position of the first event with an id
 * greater than id (count when none): ids increase along the ring. */
static size_t oldest_after(int64_t id)
{
	size_t lo = 0, hi = count;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (at(mid)->id <= id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* held is what --events-buffer-bytes bounds: the text buffer and the
 * slots. */
static size_t held(void)
{
	return text_cap + cap * sizeof(*ring);
}

static void evict_oldest(void)
{
	size_t off = at(0)->off;

	evicted = at(0)->id;
	first = (first + 1) % cap;
	count--;
	if (!count) {
		head = 0;
		wrapped = 0;
	} else if (wrapped && at(0)->off < off) {
		wrapped = 0;    /* the oldest is now past the wrap */
	}
}

/* grow_slots gives the ring n slots, the events moved to the front in
 * order.  Returns 0, or -1 (out of memory) with the ring as it was. */
static int grow_slots(size_t n)
{
	struct event *p = malloc(n * sizeof(*p));
	size_t i;

	if (!p)
		return -1;
	for (i = 0; i < count; i++)
		p[i] = *at(i);
	free(ring);
	ring = p;
	cap = n;
	first = 0;
	return 0;
}

/* grow_text gives the texts a buffer of n bytes, laid out oldest first
 * from offset 0.  Returns 0, or -1 (out of memory) as it was. */
static int grow_text(size_t n)
{
	char *p = malloc(n);
	size_t i, off = 0;

	if (!p)
		return -1;
	for (i = 0; i < count; i++) {
		struct event *e = at(i);

		memcpy(p + off, text + e->off, e->len);
		e->off = off;
		off += e->len;
	}
	free(text);
	text = p;
	text_cap = n;
	head = off;
	wrapped = 0;
	return 0;
}

/* place finds len bytes for the next text without touching a live one.
 * Returns the offset, or -1 when there is no room. */
static ssize_t place(size_t len)
{
	size_t tail = count ? at(0)->off : 0;

	if (!count)
		head = 0;
	if (wrapped)
		return tail - head >= len ? (ssize_t)head : -1;
	if (text_cap - head >= len)
		return (ssize_t)head;
	if (count && tail >= len) {
		wrapped = 1;
		head = 0;
		return 0;
	}
	return -1;
}

/* The byte bound is split once: a fifth for the slots (32 bytes each),
 * the rest for the texts (130 bytes a job event, 200 a batch event); each
 * grows on demand within its share, so neither can starve the other. */
static size_t slot_share(void)
{
	return cfg.events_buffer_bytes / 5;
}

/* more_slots doubles the slots, up to --events-buffer and their share of
 * the byte bound.  Returns 1 when it grew them. */
static int more_slots(void)
{
	size_t n = cap ? cap * 2 : 64;

	if (n > (size_t)cfg.events_buffer)
		n = (size_t)cfg.events_buffer;
	if (n > slot_share() / sizeof(*ring))
		n = slot_share() / sizeof(*ring);
	return n > cap && grow_slots(n) == 0;
}

/* more_text doubles the text buffer, up to its share of the byte bound;
 * an empty window takes whatever the newest text needs.  Returns 1 when
 * it grew it. */
static int more_text(size_t len)
{
	size_t n = text_cap ? text_cap * 2 : 16384;
	size_t max = cfg.events_buffer_bytes - slot_share();

	if (n > max)
		n = max;
	if (!count && n < len)
		n = len;
	return n > text_cap && grow_text(n) == 0;
}

/* make_room evicts the oldest events until one more text of len bytes
 * fits under both bounds, and returns where it goes: a slot and a stretch
 * of the text buffer, each grown while the bounds allow, else freed by
 * eviction.  The newest event is always kept, however large.  Returns
 * its offset, or -1 when the window is empty and cannot grow (out of
 * memory). */
static ssize_t make_room(size_t len)
{
	ssize_t off;

	for (;;) {
		if (count && count >= (size_t)cfg.events_buffer) {
			evict_oldest();
			continue;
		}
		if (count == cap) {
			if (more_slots())
				continue;
		} else if ((off = place(len)) >= 0) {
			return off;
		} else if (more_text(len)) {
			continue;
		}
		if (!count)
			return -1;
		evict_oldest();
	}
}

static void wake_all(void)
{
	struct stream *s;

	for (s = streams; s; s = s->next)
		if (s->suspended) {
			s->suspended = 0;
			MHD_resume_connection(s->conn);
			http_resumed();
		}
}

/* emit appends one event (data is stolen) and wakes the streams.  Its id
 * is given (log_id, from the shared log of several nodes: the same on
 * each) or the time in µs, made to increase. */
static void emit(const char *type, int64_t batch_id, json_t *data,
		 int64_t log_id)
{
	char *json = json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(15));
	char *t = NULL;
	struct event *e;
	int64_t id = log_id ? log_id : now_us();
	ssize_t off;
	int len;

	json_decref(data);
	if (!json || !cfg.events_buffer)
		goto out;
	if (id <= last_id)
		id = last_id + 1;
	last_id = id;
	len = asprintf(&t, "id: %lld\nevent: %s\ndata: %s\n\n",
		       (long long)id, type, json);
	if (len < 0)
		t = NULL;
	if (!t || (off = make_room((size_t)len)) < 0) {
		evicted = id;   /* a reader past it must hear it missed one */
		goto out;
	}
	e = at(count++);
	e->id = id;
	e->batch_id = batch_id;
	e->off = (size_t)off;
	e->len = (size_t)len;
	memcpy(text + off, t, e->len);
	head = e->off + e->len;
	if (streams)
		wake_all();
out:
	free(t);
	free(json);
}

static void job_event(int64_t job_id, int64_t batch_id, const char *state,
		      int attempts, int64_t log_id)
{
	char id[32], bid[32];

	fmt_id(id, sizeof(id), 'j', job_id);
	fmt_id(bid, sizeof(bid), 'b', batch_id);
	emit("job", batch_id, json_pack("{s:s, s:s, s:s, s:i}", "id", id,
		"batch_id", bid, "state", state, "attempts", attempts), log_id);
}

/* batch_event sends the batch b (borrowed) as it was at its change;
 * halted is null until its halt policy fires. */
static void batch_event(int64_t batch_id, const json_t *b, int64_t log_id)
{
	json_t *halted = json_object_get(b, "halted");

	emit("batch", batch_id, json_pack("{s:O, s:O, s:O, s:O}",
		"id", json_object_get(b, "id"),
		"state", json_object_get(b, "state"),
		"counts", json_object_get(b, "counts"),
		"halted", halted ? halted : json_null()), log_id);
}

static void on_change(const struct change *c)
{
	if (c->is_batch)
		batch_event(c->id, c->batch, c->event_id);
	else
		job_event(c->id, c->batch_id, job_state_name(c->state),
			  c->attempts, c->event_id);
}

/* on_reset: state changed without events (a resync after a lost
 * transaction); every stream is told to reload. */
static void on_reset(void)
{
	struct stream *s;

	for (s = streams; s; s = s->next)
		s->reset = 1;
	wake_all();
}

static const struct subscriber events_sub = {
	.change = on_change,
	.reset = on_reset,
};

/* events_log_start: ids come from a shared log (PostgreSQL) whose events
 * this node reads from first on; no earlier one is known here. */
void events_log_start(int64_t first_id)
{
	start_id = first_id;
	last_id = first_id - 1;
}

int events_init(void)
{
	start_id = last_id = now_us();
	publish_subscribe(&events_sub);
	return 0;
}

void events_held(size_t *entries, size_t *bytes)
{
	*entries = count;
	*bytes = held();
}

/* copy_rest continues an event that did not fit in one write. */
static size_t copy_rest(struct stream *s, char *buf, size_t max)
{
	size_t len = s->rest_len - s->rest_off;

	if (len > max)
		len = max;
	memcpy(buf, s->rest + s->rest_off, len);
	s->rest_off += len;
	if (s->rest_off == s->rest_len) {
		free(s->rest);
		s->rest = NULL;
	}
	return len;
}

/* copy_events fills buf with whole events after the stream's cursor; an
 * event larger than the buffer is started and its tail kept in s->rest.
 * Returns the bytes written. */
static size_t copy_events(struct stream *s, char *buf, size_t max)
{
	size_t i = oldest_after(s->cursor), n = 0;

	for (; i < count && n < max; i++) {
		struct event *e = at(i);

		if (s->batch_id && e->batch_id != s->batch_id) {
			s->cursor = e->id;
			continue;
		}
		if (e->len > max - n) {
			if (n)
				break;          /* send it whole next time */
			s->rest = malloc(e->len - max);
			if (!s->rest)
				break;
			memcpy(s->rest, text + e->off + max, e->len - max);
			s->rest_len = e->len - max;
			s->rest_off = 0;
			memcpy(buf, text + e->off, max);
			s->cursor = e->id;
			return max;
		}
		memcpy(buf + n, text + e->off, e->len);
		n += e->len;
		s->cursor = e->id;
	}
	return n;
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	static const char reset[] = "event: reset\ndata: {\"missed\":true}\n\n";
	static const char ping[] = ": keep-alive\n\n";
	struct stream *s = cls;
	size_t n;

	if (s->closing)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (s->rest) {
		s->last_write = mono_us();
		return (ssize_t)copy_rest(s, buf, max);
	}
	/* A reader too slow for the window: what it missed is gone. */
	if (s->cursor < evicted) {
		s->cursor = evicted;
		s->reset = 1;
	}
	if (s->reset && max >= sizeof(reset)) {
		s->reset = 0;
		memcpy(buf, reset, sizeof(reset) - 1);
		return sizeof(reset) - 1;
	}
	n = copy_events(s, buf, max);
	if (n == 0 && mono_us() - s->last_write >= KEEPALIVE_US &&
	    max >= sizeof(ping)) {
		memcpy(buf, ping, sizeof(ping) - 1);
		n = sizeof(ping) - 1;
	}
	if (n) {
		s->last_write = mono_us();
		return (ssize_t)n;
	}
	s->suspended = 1;
	MHD_suspend_connection(s->conn);
	return 0;
}

static void stream_free(void *cls)
{
	struct stream *s = cls;

	free(s->rest);
	if (s->prev)
		s->prev->next = s->next;
	else
		streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
}

/* events_open answers GET /v1/events with a stream that starts after
 * after_id (0: only new events), for one batch or all (batch_id 0). */
enum MHD_Result events_open(struct request *r, int64_t batch_id,
			    int64_t after_id)
{
	struct MHD_Response *resp;
	struct stream *s = calloc(1, sizeof(*s));
	enum MHD_Result rc;

	if (!s)
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	s->conn = r->conn;
	s->batch_id = batch_id;
	s->last_write = mono_us();
	s->cursor = after_id ? after_id : last_id;
	/* Events after after_id were dropped from the window, or belonged to
	 * a previous run of the server: say that some were missed.  An id
	 * from the future (the clock stepped back across a restart) is no
	 * event this server ever sent: the same. */
	if (after_id && (after_id < evicted || after_id < start_id ||
			 after_id > last_id)) {
		s->reset = 1;
		if (after_id > last_id)
			s->cursor = last_id;
	}
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
						 reader, s, stream_free);
	if (!resp) {
		free(s);
		return http_problem(r, P_INTERNAL, "out of memory", NULL);
	}
	s->next = streams;
	if (streams)
		streams->prev = s;
	streams = s;
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	rc = http_send(r, 200, resp);
	MHD_destroy_response(resp);
	return rc;
}

/* events_tick resumes streams that owe a keep-alive (a dead client is
 * only noticed when we write to it).  Returns the next due time, or 0.
 * Only suspended streams have a due time: one that is not suspended waits
 * for its socket to drain (a client that stopped reading), and counting
 * its past due time made the loop spin until MHD dropped it. */
int64_t events_tick(int64_t now)
{
	struct stream *s;
	int64_t next = 0, due;

	for (s = streams; s; s = s->next) {
		if (!s->suspended)
			continue;
		due = s->last_write + KEEPALIVE_US;
		if (now >= due) {
			s->suspended = 0;
			MHD_resume_connection(s->conn);
			http_resumed();
		} else if (!next || due < next) {
			next = due;
		}
	}
	return next;
}

/* events_close ends every stream (shutdown): MHD cannot stop while
 * connections are suspended. */
void events_close(void)
{
	struct stream *s;

	for (s = streams; s; s = s->next)
		s->closing = 1;
	wake_all();
}

void events_free(void)
{
	free(ring);
	free(text);
	ring = NULL;
	text = NULL;
	count = first = cap = text_cap = head = 0;
	wrapped = 0;
}
