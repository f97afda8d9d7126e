/* jobpool.h - the private header of jobpoold.
 *
 * One file per subsystem, named by its prefix: store_ (the only SQL),
 * sched_ (which batch runs next), pool_ (worker processes), engine_ (a job's
 * life: dispatch, finish, cancel, timeout), http_ (libmicrohttpd glue and
 * replies), api_ (one function per endpoint), validate_ (submissions),
 * loop_ (epoll), and small helpers in util.c.
 */
#ifndef JOBPOOL_H
#define JOBPOOL_H

#include <stdarg.h>
#include <stddef.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/types.h>
#include <jansson.h>

/* ---- configuration (main.c) ---- */
struct config {
	char listen_host[64];
	int listen_port;
	const char *db_path;
	int workers;
	const char *worker_bin;
	int kill_grace_ms;
	double drain_timeout_s;
	size_t max_body_bytes;
	size_t max_output_bytes;
	int64_t max_db_bytes;           /* 0: no cap */
	int64_t max_queued_jobs;
	int max_open_batches;
	int64_t retention_us;           /* 0: keep finished batches */
	int64_t idempotency_ttl_us;
	int allow_command;
	const char *token;              /* bearer token, NULL: none */
	const char *cors_origins;       /* comma-separated, "*", or NULL */
	int events_buffer;
	size_t events_buffer_bytes;
	int max_jobs_per_batch;
	int commit_interval_us;
	int max_connections;            /* open HTTP connections in all */
	int max_connections_per_client; /* from one client address */
	int64_t header_timeout_us;      /* to send a request's headers */
	int64_t child_nofile;           /* workers' open-file limit, 0: ours */
	int group_max;                  /* short jobs per group, <= 1: none */
	char node_name[64];             /* this server's name (job worker.node) */
	int64_t node_lease_us;          /* PostgreSQL: a node's lease */
	int64_t poll_interval_us;       /* PostgreSQL: look at the others */
	int64_t started_at;             /* when this server started */
	const char *webhook_allow;      /* --webhook-allow, NULL: none */
	int64_t webhook_backoff_us;     /* first retry delay (--webhook-backoff) */
};
extern struct config cfg;
extern volatile int shutting_down;

/* ---- util.c ---- */
int64_t now_us(void);           /* wall clock, microseconds since the epoch */
int64_t mono_us(void);          /* CLOCK_MONOTONIC, microseconds */
/* fmt_time writes us as RFC 3339 UTC with milliseconds. */
void fmt_time(char *buf, size_t size, int64_t us);
json_t *json_time(int64_t us);          /* new; null when us <= 0 */
json_t *json_ms(int64_t us);            /* new; ms with 3 decimals */
void fmt_id(char *buf, size_t size, char prefix, int64_t id);
/* hash_hex writes a 128-bit hash of s[0..n) as 32 hex digits + NUL. */
void hash_hex(const char *s, size_t n, char *out);
/* parse_duration reads "250ms", "90s", "15m", "12h" or "7d" into
 * microseconds; returns -1 when it is not one.  A unit is required (a bare
 * "7" was taken as seconds and a --retention meant as days purged batches
 * seconds after they ended); only "0" may go without. */
int64_t parse_duration(const char *s);
/* parse_id returns the number in "<prefix>_<12 digits>", or -1. */
int64_t parse_id(const char *s, char prefix);
const char *signal_name(int sig);       /* "SIGSEGV", or NULL */
int signal_number(const char *name);    /* 0 when unknown */
/* log_info and log_warn write one line to stderr without ever blocking the
 * caller: lines wait in a bounded buffer (1 MiB) for a writer thread, and
 * what does not fit is dropped and counted in a later line. */
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));
enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_FATAL };
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* log_error is for what stops the server (start-up failures). */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* log_event logs one thing that happened to a batch or job at level; with
 * --log-format json the line also carries "event" and the ids as the API
 * shows them ("batch_id": "b_...", "job_id": "j_..."; an id <= 0 is left
 * out).  The message should name the ids too, for the text format. */
void log_event(int level, const char *event, int64_t batch_id,
	       int64_t job_id, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* log_setup chooses the format (json: one object a line, else text) and
 * the lowest level written (LOG_DEBUG..LOG_ERROR). */
void log_setup(int json, int min_level);
/* log_level_parse returns the LOG_* of "debug", "info", "warn", "error",
 * or -1. */
int log_level_parse(const char *s);
/* parse_cpu_max reads a cgroup v2 cpu.max ("max 100000", "150000 100000")
 * into the CPUs it allows, rounded up, at least 1; 0 for no limit, -1 when
 * it is not one. */
int parse_cpu_max(const char *s);
/* cpus_usable is the CPUs this process may run on: its affinity mask, cut
 * by the cgroup v2 CPU quota of its cgroup and its ancestors; at least 1. */
int cpus_usable(void);
void log_vwarn(const char *fmt, va_list ap)
	__attribute__((format(printf, 1, 0)));

/* ---- joblog.c ---- */
/* A growing text; it may hold NUL bytes (a command's newlines, as GNU
 * parallel writes them in a joblog), so len, not strlen, is its size. */
struct joblog_buf {
	char *p;                /* new, the owner frees it */
	size_t len, cap;
};
/* The header line of GNU parallel's --joblog (parallel 20221122). */
#define JOBLOG_HEADER "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive" \
	"\tExitval\tSignal\tCommand\n"
/* joblog_job appends to b one joblog line per ended attempt of job (a job
 * as the API renders it, with its history), in attempt order; a queued or
 * running job's current attempt adds nothing.  Returns 0, or -1 when out
 * of memory (b then holds part of the lines; the caller still frees it).
 * job is borrowed. */
int joblog_job(struct joblog_buf *b, const json_t *job);

/* ---- validate.c ---- */
/* A batch's priority and concurrency, at submission and in a PATCH. */
#define PRIORITY_MIN (-1000)
#define PRIORITY_MAX 1000
#define CONCURRENCY_MAX 10000
/* validate_batch checks a decoded submission.  Returns 0 when valid, else
 * the number of problems appended to errors ([{path, message}]). */
int validate_batch(const json_t *body, json_t *errors);
/* validate_int: j is an integer from lo to hi, as a submission's numbers
 * are taken (a real with no fraction counts: 2.0 is 2). */
int validate_int(const json_t *j, double lo, double hi);

/* ---- webhook.c ---- */
/* A batch's webhook (Standard Webhooks): checked, signed and scheduled
 * here; sent by deliver.c; kept in the store's outbox. */
#define WEBHOOK_BATCH_FINISHED 1        /* event bits, as stored */
#define WEBHOOK_JOB_FINISHED 2
#define WEBHOOK_URL_MAX 2048
#define WEBHOOK_KEY_MAX 512             /* bytes of an HMAC key */
#define WEBHOOK_SECRET_MIN 16           /* bytes, or the key is guessable */
#define WEBHOOK_BACKOFF_MAX_US (3600LL * 1000000)
#define WEBHOOK_RETRY_FOR_US (24LL * 3600 * 1000000)
/* webhook_allow_parse replaces the allow-list with list (--webhook-allow:
 * comma-separated host names, "*.suffix" names, IP addresses and CIDRs).
 * Returns 0, or -1 when an entry is none of those (the list is kept). */
int webhook_allow_parse(const char *list);
size_t webhook_allow_count(void);
/* webhook_host_allowed matches a URL's host as curl parses it (an IPv6
 * literal in brackets) against the allow-list; it resolves nothing. */
int webhook_host_allowed(const char *host);
/* webhook_url_check returns NULL when url may be a webhook (http or https,
 * no credentials, its host allowed), else why not, as a message for the
 * client.  With normalized, *normalized is the URL as curl will send it
 * (new, NULL on error). */
const char *webhook_url_check(const char *url, char **normalized);
/* webhook_key turns a secret into the HMAC key: the base64 payload of a
 * "whsec_..." secret, else its bytes; key holds WEBHOOK_KEY_MAX bytes.
 * Returns 0, or -1 when the base64 is malformed or the key too long. */
int webhook_key(const char *secret, unsigned char *key, size_t *len);
/* webhook_new_secret is a random "whsec_" secret of 24 bytes (new). */
char *webhook_new_secret(void);
/* webhook_sign writes "v1,<base64 HMAC-SHA256(key, id.ts.body)>" into out
 * (at least 49 bytes).  Returns 0, or -1 when out of memory. */
int webhook_sign(const unsigned char *key, size_t keylen, const char *msg_id,
		 int64_t ts, const char *body, char *out, size_t size);
/* webhook_events reads a webhook's events (NULL: the default,
 * batch.finished) into a mask of WEBHOOK_* bits; -1 when invalid.
 * webhook_events_json is the mask as the API shows it (new). */
int webhook_events(const json_t *events);
json_t *webhook_events_json(int mask);
/* webhook_next_at is when a delivery whose attempt number `attempts`
 * failed at now is tried again: min_backoff x 2^(attempts-1), at most an
 * hour; -1 when the event (at created_at) is WEBHOOK_RETRY_FOR_US old and
 * the delivery has failed for good. */
int64_t webhook_next_at(int attempts, int64_t created_at, int64_t now,
			int64_t min_backoff_us);
/* webhook_payload is the body of a delivery: {type, timestamp, data}
 * (new text, NULL when out of memory); data is stolen (NULL: {}). */
char *webhook_payload(const char *event, int64_t at, json_t *data);

/* ---- deliver.c ---- */
/* The outbox's sender: libcurl's multi interface on the event loop. */
int deliver_start(void);
/* deliver_next is the monotonic time deliver_tick has work, 0: none. */
int64_t deliver_next(void);
void deliver_tick(int64_t now_mono);
void deliver_stop(void);

/* ---- policy.c ---- */
/* A batch's halt policy (GNU parallel's --halt): when count jobs (or
 * percent of the batch) have ended the way `when` says, the queued rest is
 * canceled, and with `now` the running ones are killed too. */
enum halt_when { HALT_NONE, HALT_FAIL, HALT_SUCCESS };
struct halt_policy {
	enum halt_when when;
	int now;                /* mode "now" (1) or "soon" (0) */
	int count;              /* N, 0: percent is used */
	double percent;         /* P (0, 100], 0: count is used */
};
/* What the engine needs of a batch to apply its policies, as stored
 * (store_batch_policy): the counts include the open transaction. */
struct batch_policy {
	struct halt_policy halt;
	double timeout_pct;     /* 0: none */
	int halted;             /* halted_at is set */
	int64_t total, succeeded, failed;       /* failed: failed + timed_out */
	int64_t unfinished;                     /* queued + running */
};
/* The run times of a batch's most recent succeeded jobs, MEDIAN_WINDOW at
 * most, kept sorted as well as in arrival order so the median is O(1) and
 * adding one is O(MEDIAN_WINDOW). */
#define MEDIAN_WINDOW 255
#define MEDIAN_MIN 3            /* successes before timeout_pct applies */
struct median {
	int n, oldest;          /* samples held; ring index of the oldest */
	int64_t seen;           /* samples ever added (or loaded as seen) */
	int64_t ring[MEDIAN_WINDOW];
	int64_t sorted[MEDIAN_WINDOW];
};
/* policy_halt_parse reads a stored halt policy (JSON text, NULL: none)
 * into h; an unreadable one reads as none.  policy_halt_json renders one
 * as the API shows it (new; null when none). */
void policy_halt_parse(const char *text, struct halt_policy *h);
json_t *policy_halt_json(const char *text);
/* policy_halt_reached tells whether a batch of total jobs, of which
 * succeeded and failed (failed + timed_out) have ended, meets h; when it
 * does it writes why into reason ("2 jobs failed (halt when fail count
 * 2)"). */
int policy_halt_reached(const struct halt_policy *h, int64_t total,
			int64_t succeeded, int64_t failed, char *reason,
			size_t size);
/* policy_median_add adds a run time v (µs; a negative one, unknown, is
 * ignored); in a full window it replaces the oldest. */
void policy_median_add(struct median *m, int64_t v);
/* policy_median_us is the median of the samples held, -1 when none. */
int64_t policy_median_us(const struct median *m);
/* policy_rel_limit_us is pct% of the median once MEDIAN_MIN samples are
 * held, else 0 (no relative limit yet). */
int64_t policy_rel_limit_us(const struct median *m, double pct);

/* ---- store.c ---- */
enum job_state { JS_QUEUED, JS_RUNNING, JS_SUCCEEDED, JS_FAILED,
		 JS_TIMED_OUT, JS_CANCELED, JS__COUNT };
const char *job_state_name(enum job_state s);
int job_state_parse(const char *s);             /* -1 when unknown */
int batch_state_valid(const char *s);

/* Which failures of a job may be retried (its retry_on list). */
struct retry_policy {
	int any;                /* empty list: every failure */
	uint64_t signals;       /* bit n: signal n */
	uint8_t codes[32];      /* bit n: exit code n */
};
void retry_parse(const char *text, struct retry_policy *p);

/* A job being started: what the worker needs and what the engine tracks. */
struct claim {
	int64_t job_id;
	int64_t batch_id;
	int64_t created_at;
	int64_t queued_at;      /* when it (last) entered the queue */
	int attempts;           /* including this one */
	double timeout_s;       /* 0: none */
	char kind[32];
	char *args;             /* new JSON text; the caller frees */
	int max_attempts;
	double backoff_s;
	struct retry_policy retry;
	int64_t idx;            /* its index in the batch */
};

/* An attempt's outcome, written by store_job_finish. */
struct outcome {
	enum job_state state;
	int64_t finished_at;
	int64_t run_us, user_us, sys_us, max_rss_kb;
	int exit_code;          /* -1: none */
	int signal;             /* 0: none */
	const char *error;      /* borrowed, may be NULL */
	json_t *result;         /* borrowed, may be NULL */
	json_t *output;         /* borrowed, may be NULL */
	int64_t busy_us;        /* the run as the worker timed it, -1: unknown */
};

/* Scheduler view of one unfinished batch, filled by store_load_active. */
struct batch_info {
	int64_t id;
	int priority;
	int concurrency;        /* 0: no limit of its own */
	int queued, running;
	int cancel_req;
	int started;            /* a job of it has started */
	int paused;             /* POST /v1/batches/{id}/pause: none starts */
};

/* A job a worker runs now, as memory knows it (store_resync); held: one it
 * holds in a group, not started, whose row stays queued. */
struct live_job {
	int64_t job_id, started_at;
	int attempts, slot;
	pid_t pid;
	int held;
};

/* store_lock takes the database's single-server lock: an exclusive flock
 * on the database file itself, made empty when missing.  On Linux flock
 * and SQLite's POSIX record locks are independent, and the lock belongs to
 * the inode, so the same file reached through a symlink, another relative
 * path or a bind mount meets the same lock.  Returns a new descriptor,
 * close-on-exec so no worker or job holds it; keep it open for the life of
 * the process (closing it releases the lock, and closing it while SQLite
 * has the file open would drop SQLite's own locks).  Returns -1 with errno
 * set otherwise: EWOULDBLOCK when another process holds the lock, with
 * *holder its pid (0 when /proc/locks does not say). */
int store_lock(const char *path, pid_t *holder);
/* store_open opens the store --db names: a postgres:// or postgresql://
 * URL (store_is_url) selects PostgreSQL, anything else is a SQLite file. */
int store_open(const char *path);
int store_is_url(const char *db);
struct change;
/* What store_tick reports to the engine. */
struct store_tick {
	void (*job)(int64_t job_id, int64_t batch_id, enum job_state st,
		    int attempts, void *ctx);
	void (*cancel)(int64_t job_id, void *ctx);
	/* every unfinished batch, as store_load_active reports them */
	void (*batch)(const struct batch_info *b, void *ctx);
	/* this node lost its lease: stop every job now, write nothing */
	void (*fence)(void *ctx);
	/* a change from the shared event log, any node's, in log order */
	void (*event)(const struct change *c, void *ctx);
	/* the jobs this node's workers run or hold now, up to max */
	size_t (*live)(int64_t *ids, size_t max, void *ctx);
	/* the stored server-wide pause, as the store read it (NULL: none) */
	void (*dispatch)(int paused, void *ctx);
	void *ctx;
	int busy, pool_size;    /* this node's workers, for GET /v1/nodes */
};
int store_tick(int64_t now, const struct store_tick *cb);
int store_dispatch_after_commit(void);
/* store_jobs_release: queued jobs this node held for a group and will not
 * run after all may be claimed again (with SQLite nothing marks them). */
int store_jobs_release(const int64_t *ids, size_t n);
/* With several nodes: this node's outcomes its fence refused (it had lost
 * its lease), and jobs its reaper took over from dead nodes; 0 with one. */
void store_cluster_stats(int64_t *stale, int64_t *rescued);
/* store_events_append writes n changes into the store's shared event log,
 * in the open transaction (opened if none is); -1 when the store keeps no
 * log (SQLite: the event stream is this process's own). */
int store_events_append(const struct change *c, size_t n);
/* store_events_start is the id of the first event of the shared log this
 * node will deliver, 0 without a log. */
int64_t store_events_start(void);
json_t *store_nodes_json(void);         /* NULL: this node only */
const char *store_backend(void);        /* "sqlite" or "postgresql" */
void store_close(void);
/* store_flush commits the open transaction.  Returns 0, or -1 when it was
 * lost (the rollback hook has run and the store is degraded). */
int store_flush(void);
int store_dirty(void);
int store_recover(int64_t now, int *requeued, int *interrupted,
		  void (*fn)(int64_t job_id, void *ctx), void *ctx);
/* store_degraded: a write failed or a transaction was lost, so memory and
 * the database may disagree; every write is refused (-1) until
 * store_resync_begin, store_resync, store_resync_end have committed. */
int store_degraded(void);
void store_diverged(void);
void store_set_rollback_hook(void (*fn)(void));
int store_resync_begin(void);
int store_resync(int64_t now, const struct live_job *live, size_t n,
		 int *requeued, int *interrupted);
int store_resync_end(int ok);
int store_load_active(void (*fn)(const struct batch_info *b, void *ctx),
		      void *ctx);
int store_batch_insert(const json_t *req, int64_t now, const char *key,
		       const char *hash, int64_t *id, json_t **job_ids);
int store_idem_get(const char *key, int64_t since, char *hash,
		   int64_t *batch_id);
json_t *store_job_ids(int64_t batch_id);
int store_purge_step(int64_t cutoff, int64_t key_cutoff, int max);
int64_t store_size_bytes(void);
int store_job_counts(int64_t *counts);
int store_full(void);
int store_batch_info(int64_t id, struct batch_info *b);
json_t *store_batch_json(int64_t id);   /* new, as committed */
json_t *store_batch_json_pending(int64_t id);
json_t *store_job_json(int64_t id);
int store_job_batch(int64_t job_id, int64_t *batch_id, enum job_state *st,
		    int *attempts);
json_t *store_batch_list(const char *state, int64_t after, int limit);
json_t *store_job_list(int64_t batch_id, const char *state, int64_t after,
		       int limit);
/* store_jobs_peek reads up to limit queued jobs of a batch that are due
 * (all of them with any_due), in index order from after_idx on, into out
 * without changing them; the caller frees each args.  Returns how many, or
 * -1. */
int store_jobs_peek(int64_t batch_id, int64_t now, int any_due,
		    int64_t after_idx, int limit, struct claim *out);
/* store_job_start records that peeked job c started at started_at on a
 * worker: it becomes running, attempts + 1. */
int store_job_start(const struct claim *c, int slot, pid_t pid,
		    int64_t started_at);
/* store_job_claim peeks the batch's first due job and starts it.  Returns
 * 0, 1 when there is none, -1. */
int store_job_claim(int64_t batch_id, int slot, pid_t pid, int64_t now,
		    int any_due, struct claim *c);
struct slot;
/* A job of a group that ran and ends without a retry: its row goes from
 * queued to its end in one write. */
struct group_done {
	int64_t job_id;
	int attempt;
	int64_t started_at;
	struct outcome o;       /* failed or succeeded */
};
/* store_jobs_done records n such jobs of one batch, run by the worker in
 * slot (pid), with the batch's counters once.  Sets *batch_done when the
 * batch has ended. */
int store_jobs_done(int64_t batch_id, const struct group_done *d, int n,
		    int slot, pid_t pid, int *batch_done);
int store_job_finish(int64_t job_id, int64_t batch_id,
		     const struct outcome *o, const struct slot *w,
		     int *batch_done);
int store_job_requeue(int64_t job_id, int64_t batch_id, int undo_attempt,
		      int64_t not_before);
int store_job_retry(int64_t job_id, int64_t batch_id,
		    const struct outcome *o, const struct slot *w,
		    int64_t not_before);
int store_job_cancel_queued(int64_t job_id, int64_t batch_id, int64_t now,
			    int *batch_done);
/* store_job_cancel_req records a client's cancel of a running job, so
 * recovery ends it canceled if the server dies during the kill. */
int store_job_cancel_req(int64_t job_id);
int store_batch_cancel(int64_t batch_id, int64_t now, int *canceled,
		       int *batch_done,
		       void (*fn)(int64_t job_id, int attempts, void *ctx),
		       void *ctx);
/* store_batch_cancel_except cancels the queued jobs of a batch except the
 * nkeep ids of keep (queued jobs a worker holds: their cancel is the
 * worker's to settle). */
int store_batch_cancel_except(int64_t batch_id, int64_t now, int *canceled,
			      int *batch_done,
			      void (*fn)(int64_t job_id, int attempts,
					 void *ctx),
			      void *ctx, const int64_t *keep, size_t nkeep);
int store_batch_delete(int64_t batch_id);
/* store_jobs_rerun puts ended jobs of batch_id back in the queue as new
 * attempts (a client's retry): job_id alone when not 0, else every job of
 * the batch whose state is in states (a bit 1 << JS_* per state; only
 * ended states count).  History and attempts stay; max_attempts grows to
 * allow one more; the batch is open again (not finished, canceled nor
 * halted).  fn(job_id, attempts, ctx) is called per re-queued job.
 * Returns how many were re-queued (0: none matched), or -1. */
int store_jobs_rerun(int64_t batch_id, int64_t job_id, unsigned states,
		     int64_t now, void (*fn)(int64_t job_id, int attempts,
					     void *ctx), void *ctx);
/* store_then_child is the follow-up batch the end of batch_id created
 * (its `then`), or 0. */
int64_t store_then_child(int64_t batch_id);
/* store_batch_policy reads a batch's halt policy, timeout_pct, whether it
 * halted and its counts as of the open transaction (with PostgreSQL: what
 * every node committed plus this node's turn).  Returns 0, or -1 when
 * there is no such batch or the read failed. */
int store_batch_policy(int64_t batch_id, struct batch_policy *p);
/* store_batch_runs writes the run times (µs) of up to max of the batch's
 * succeeded jobs, the most recently finished first, into out.  Returns how
 * many, or -1. */
int store_batch_runs(int64_t batch_id, int64_t *out, int max);
/* store_batch_halt records that the batch halted at `at` because of reason
 * (borrowed), unless it halted already or was canceled.  soon: its running
 * jobs are left to finish, which other nodes must know (PostgreSQL).  It
 * cancels nothing itself: the caller then cancels the batch's rest.
 * Returns 0 when recorded, 1 when not (halted or canceled first, maybe by
 * another node), -1 on failure.  With reason NULL it records a client's
 * cancel instead: a "soon" halt no longer spares the running jobs on any
 * node (returns 0 or -1). */
int store_batch_halt(int64_t batch_id, const char *reason, int64_t at,
		     int soon);
/* A delivery taken for one attempt (store_webhook_claim). */
struct delivery {
	int64_t id, batch_id, job_id;   /* job_id 0: a batch event */
	int64_t created_at;             /* when the event happened */
	int attempts;                   /* made before this one */
	char event[24];
	char msg_id[64];                /* the webhook-id */
	char *url, *secret;             /* new */
	char *body;                     /* new; NULL: not rendered yet */
};
/* store_webhook_insert stores the webhook of batch batch_id, inside the
 * batch's insert: webhook is the submitted {url, secret, events} (secret
 * filled in by the API when the client gave none, generated then true).
 * Returns 0 or -1. */
int store_webhook_insert(int64_t batch_id, const json_t *webhook,
			 int generated);
/* store_webhook_claim takes up to max deliveries due at now for one
 * attempt each, in the turn's transaction: their next_at moves to
 * lease_until and leased_by to this node, so no other attempt starts
 * before the lease ends (with several nodes, the claim must be committed
 * before anything is sent).  *next_due is the earliest next_at of the
 * pending deliveries not taken (0: none).  Returns how many, or -1; the
 * caller frees each url, secret and body. */
int store_webhook_claim(int64_t now, int64_t lease_until, int max,
			struct delivery *out, int64_t *next_due);
/* store_webhook_body keeps the rendered body of a delivery (first
 * attempt), so every retry sends the same bytes. */
int store_webhook_body(int64_t id, const char *body);
/* store_webhook_result records attempt n of delivery id (began at, took
 * took_us; status 0: no HTTP answer, error NULL: none): delivered, to be
 * retried at next_at (> 0), or failed for good (next_at -1). */
int store_webhook_result(int64_t id, int n, int64_t at, int64_t took_us,
			 int status, const char *error, int delivered,
			 int64_t next_at);
/* store_webhook_release makes this node's leased deliveries due at now
 * (at start: an attempt the previous process began is made again). */
int store_webhook_release(int64_t now);
/* store_webhook_list is GET /v1/batches/{id}/deliveries: {items,
 * next_cursor} (new), NULL on failure. */
json_t *store_webhook_list(int64_t batch_id, const char *state,
			   int64_t after, int limit);
/* store_webhook_json is the batch's webhook as the API shows it: {url,
 * events}, and its secret too with with_secret when the server generated
 * it (the 201 of its submission).  New, NULL when it has none. */
json_t *store_webhook_json(int64_t batch_id, int with_secret);
/* store_batch_set changes a batch's paused flag (paused < 0: kept),
 * priority and concurrency (STORE_KEEP: kept; concurrency 0: none) in the
 * turn's transaction.  Returns 0, 1 when there is no such batch, -1 on
 * failure.  The caller updates the schedule. */
#define STORE_KEEP INT64_MIN
int store_batch_set(int64_t batch_id, int paused, int64_t priority,
		    int64_t concurrency);
/* store_dispatch_set stores the server-wide pause (POST /v1/pause) in the
 * turn's transaction: 0, -1 on failure.  store_dispatch_get reads it: 1
 * paused, 0 not, -1 on failure.  With PostgreSQL every node reads it at
 * its look (store_tick's dispatch callback), so it holds on all of them. */
int store_dispatch_set(int paused);
int store_dispatch_get(void);
/* store_jobs_list is GET /v1/jobs: jobs of every batch in id order after
 * job id `after`, whose state is one of states (a comma list, NULL: any):
 * {items, next_cursor} (new), NULL on failure. */
json_t *store_jobs_list(const char *states, int64_t after, int limit);
int store_ping(void);
/* store_memory_bytes is what SQLite holds now, all connections together
 * (page caches, statements, schema). */
int64_t store_memory_bytes(void);

/* ---- sched.c ---- */
struct sbatch;
void sched_add(const struct batch_info *b);
struct sbatch *sched_find(int64_t id);
struct sbatch *sched_pick(void);
int64_t sched_id(const struct sbatch *b);
void sched_started(struct sbatch *b);
int sched_first_start(struct sbatch *b);
void sched_cancel(struct sbatch *b);
int sched_canceled(const struct sbatch *b);
int sched_count(void);
void sched_finished(struct sbatch *b);
void sched_requeued(struct sbatch *b);
void sched_delayed(struct sbatch *b);
void sched_ready(struct sbatch *b);
void sched_drop_queued(struct sbatch *b, int n);
void sched_update(struct sbatch *b, const struct batch_info *info);
void sched_set_priority(struct sbatch *b, int priority);
void sched_set_paused(struct sbatch *b, int paused);
void sched_set_concurrency(struct sbatch *b, int concurrency);
/* sched_pause_all stops (1) or restarts (0) every pick on this node. */
void sched_pause_all(int paused);
int sched_all_paused(void);
int sched_queued(const struct sbatch *b);
void sched_remove(struct sbatch *b);
int sched_queued_total(void);
/* sched_queued_bands: queued jobs of priority > 0, == 0, < 0 in out[0..2]. */
void sched_queued_bands(int out[3]);
/* sched_oldest_queued_us: the oldest queued job's wait at now (now_us()),
 * approximated per batch (sched.c, queued_note); 0 when none is queued. */
int64_t sched_oldest_queued_us(int64_t now);
size_t sched_bytes(void);       /* memory held for the batches, hash included */
void sched_clear(void);
/* Groups: a batch whose jobs run short is handed to workers many jobs at a
 * time.  sched_note_run learns a finished job's run time; sched_group_size
 * is how many jobs to hand in one group now (1: one at a time);
 * sched_no_groups turns groups off for the batch for good (a worker died
 * during one).  sched_cursor/sched_set_cursor keep the index after which
 * its next job not held by a worker is. */
void sched_note_run(struct sbatch *b, int64_t run_us);
int sched_group_size(const struct sbatch *b);
void sched_no_groups(struct sbatch *b);
int64_t sched_cursor(const struct sbatch *b);
void sched_set_cursor(struct sbatch *b, int64_t idx);
/* Policies (policy.c): sched_set_policy takes them as stored; sched_halt
 * is the halt policy while the batch may still halt (NULL otherwise);
 * sched_runs is its window of succeeded run times (NULL: no timeout_pct),
 * owned by the schedule. */
void sched_set_policy(struct sbatch *b, const struct batch_policy *p);
const struct halt_policy *sched_halt(const struct sbatch *b);
void sched_set_halted(struct sbatch *b);
int sched_halted(const struct sbatch *b);
double sched_timeout_pct(const struct sbatch *b);
struct median *sched_runs(struct sbatch *b);
int sched_policy_due(struct sbatch *b, const struct batch_info *info);

/* ---- pool.c ---- */
enum slot_state { SLOT_EMPTY, SLOT_STARTING, SLOT_IDLE, SLOT_BUSY,
		  SLOT_STOPPING };
enum kill_reason { KILL_NONE, KILL_CANCEL, KILL_TIMEOUT, KILL_SHUTDOWN };

struct slot {
	int index;
	enum slot_state state;
	pid_t pid;
	int fd;
	int64_t spawned_at;
	int jobs_done;
	/* the job it runs, when busy */
	int64_t job_id, batch_id;
	int job_attempts;
	int64_t started_at, started_mono;
	int64_t deadline_mono;          /* timeout, 0: none */
	int64_t kill_at_mono;           /* SIGKILL after grace, 0: none */
	enum kill_reason kill;
	int64_t kill_job;               /* the job the kill was for */
	int64_t rss_kb;
	int retire;                     /* pool shrinking: do not replace */
	int failures;                   /* deaths before "ready", in a row */
	int was_ready;                  /* this process said "ready" */
	int cancel_requested;           /* a client canceled its job */
	int64_t respawn_mono;           /* when to try again, 0: not due */
	/* the job's kind and retry policy */
	char kind[32];
	int is_command;
	int max_attempts;
	double backoff_s;
	struct retry_policy retry;
	/* captured output of a command job ("out" messages, which come while
	 * it runs), NUL-terminated; followers read it (output.c) */
	char *out[2];
	size_t out_len[2];
	/* Jobs handed in groups and not settled yet, in the order the worker
	 * runs them: group[group_pos .. group_pos + group_len).  Their rows
	 * stay queued until the worker reports them; the head is also the
	 * slot's job_id above. */
	struct handed *group;
	int group_pos, group_len;
};

/* A job of a group (see protocol.h), from its claim. */
struct handed {
	int64_t job_id, batch_id, idx, queued_at;
	char kind[32];                  /* for logs and /metrics */
	int attempts;                   /* this attempt's number */
	int max_attempts;
	double backoff_s;
	struct retry_policy retry;
	int cancel;                     /* a client canceled it */
	int announced;                  /* the worker said it started */
	int running;                    /* ... and that start is stored */
};

#define POOL_MAX 1024
/* Most jobs in one group (PROTO_GROUP_MAX, which pool.c checks). */
#define GROUP_MAX 64

/* What a worker tells the pool, handed to its owner (the engine):
 * "done" messages, the death of a worker that ran a job, a job past its
 * timeout. */
struct pool_events {
	void (*job_done)(struct slot *s, const json_t *msg);
	void (*worker_died)(struct slot *s, int status);
	void (*timeout)(struct slot *s);
	/* "results" and "started" of a slot that holds a group */
	void (*group_results)(struct slot *s, const json_t *msg);
	void (*group_started)(struct slot *s, const json_t *msg);
};
/* pool_spawn starts a worker process; it is posix_spawn, and returns what
 * posix_spawn does.  Tests replace it to fail spawns without forking. */
extern int (*pool_spawn)(pid_t *pid, const char *path,
			 const posix_spawn_file_actions_t *fa,
			 const posix_spawnattr_t *attr, char *const argv[],
			 char *const envp[]);
/* The attempts of a job whose history entries keep their output (the
 * first ones; the latest ended attempt's is also the job's `output`). */
#define HISTORY_OUTPUTS 5
/* pool_output_hook, when set, is told of slot s's captured output: after
 * append_output added bytes (ended 0), and when s's job ends, before its
 * buffers are freed (ended 1).  output.c follows running jobs with it; the
 * pool does not know who listens. */
extern void (*pool_output_hook)(const struct slot *s, int ended);
/* pool_start starts size workers; events is borrowed for the pool's life. */
int pool_start(int size, const struct pool_events *events);
int pool_size(void);
struct slot *pool_slot(int index);
struct slot *pool_idle(void);
/* pool_send_run hands claim c to idle slot s; started_mono is the
 * monotonic time read with the claim's wall-clock start, so run_ms and
 * finished_at - started_at agree. */
int pool_send_run(struct slot *s, const struct claim *c, int64_t started_mono);
/* pool_send_group hands the n claims of c to idle slot s as one group and
 * records them in s->group; only as many as fit in one message go.
 * Returns how many went (>= 1), or -1 when the channel is broken. */
int pool_send_group(struct slot *s, const struct claim *c, int n);
/* pool_send_drop asks s's worker not to start job_id of its group. */
void pool_send_drop(struct slot *s, int64_t job_id);
/* pool_group_pop removes the head of s's group; the next one (if any)
 * becomes the slot's job. */
void pool_group_pop(struct slot *s);
/* pool_slot_load makes group job h the slot's job (its fields above). */
void pool_slot_load(struct slot *s, const struct handed *h);
/* pool_job_started tells whether s's job is stored as running (a single
 * job, or the head of a group the worker said it started). */
int pool_job_started(const struct slot *s);
void pool_reap(void);
void pool_kill(struct slot *s, enum kill_reason why, int grace_ms);
void pool_stop_job(struct slot *s, enum kill_reason why);
void pool_job_ended(struct slot *s);
int pool_resize(int size);
int64_t pool_tick(int64_t now_mono);    /* returns next deadline or 0 */
int pool_live(void);
int pool_ready(void);
int pool_busy(void);
void pool_stop_all(void);
void pool_kill_all(void);
/* pool_hold keeps the run messages pool_send_run writes from here on until
 * pool_release: sent when ok, else dropped with their slots made idle again
 * (the claims they carried were not committed). */
int pool_lease_init(void);
void pool_lease_set(int64_t deadline_mono);
void pool_hold(void);
int pool_holding(void);
void pool_release(int ok);
void pool_kill_orphans(void);
void pool_kill_marked(const char *instance, const int64_t *job_ids,
		      size_t n);
json_t *pool_json(void);

/* ---- engine.c ---- */
void engine_dispatch(void);
void engine_dispatched(int ok);
extern const struct pool_events engine_pool_events;
void engine_batch_added(int64_t batch_id);
int engine_cancel_job(int64_t job_id);
int engine_cancel_batch(int64_t batch_id);
/* engine_retry_job and engine_retry_batch put ended jobs back in the
 * queue (store_jobs_rerun) and their batch on the schedule.  Return 0 (or
 * how many jobs of the batch), -404, -409 (the job is queued or running;
 * the batch has queued or running jobs) or -500 (the store refused). */
int engine_retry_job(int64_t job_id);
int engine_retry_batch(int64_t batch_id, unsigned states);
int engine_batch_set(int64_t batch_id, int paused, int64_t priority,
		     int64_t concurrency);
int engine_cancel_all(json_t *ids);
int64_t engine_tick(int64_t now_mono);
int engine_load(void);
int engine_resync(void);

/* ---- publish.c ---- */
/* One committed change: a job's new state, or "this batch changed". */
struct change {
	int is_batch;
	int64_t id, batch_id;
	enum job_state state;   /* jobs only */
	int attempts;
	json_t *batch;          /* batches: as of the change; borrowed */
	/* Its event id when a shared log gave it one (PostgreSQL), 0: the
	 * event stream numbers it. */
	int64_t event_id;
};
/* What a subscriber is told, each optional: every committed change, the
 * outcome of each commit (1) or of a lost transaction (0), and a reset
 * when state changed without notes (a resync). */
struct subscriber {
	void (*change)(const struct change *c);
	void (*commit)(int ok);
	void (*reset)(void);
};
void publish_subscribe(const struct subscriber *s);     /* borrowed */
void publish_job(int64_t job_id, int64_t batch_id, enum job_state state,
		 int attempts);
void publish_batch(int64_t batch_id);
int publish_pending(void);
void publish_commit(int ok);
/* publish_flush commits the turn and then publishes: with a store that
 * keeps a shared event log, the changes go into that log first, in the
 * same transaction, and reach the subscribers from it (publish_deliver)
 * on every node.  Returns store_flush's result. */
int publish_flush(void);
void publish_deliver(const struct change *c);
void publish_reset(void);
void publish_free(void);

/* ---- metrics.c ---- */
void metrics_http(const char *route, const char *method, unsigned status);
void metrics_job_run(int64_t run_us);
void metrics_queue_wait(int64_t wait_us);
void metrics_grouped(int n);            /* jobs handed in a group */
void metrics_batch_submitted(void);
/* metrics_job_finished counts a job that ended (terminal state st) after
 * running; kind is borrowed. */
void metrics_job_finished(const char *kind, enum job_state st);
/* metrics_http_time observes one answered request's time, from its first
 * byte to its completion. */
void metrics_http_time(const char *method, unsigned status, int64_t us);
void metrics_worker_restart(void);      /* a dead worker is replaced */
void metrics_retries(int n);            /* n jobs queued again to retry */
/* metrics_webhook counts an attempt's outcome: "delivered", "retried" or
 * "failed". */
void metrics_webhook(const char *outcome);
char *metrics_render(void);     /* new text; the caller frees */
void metrics_free(void);

/* ---- events.c ---- */
int events_init(void);          /* subscribes to the publisher */
void events_log_start(int64_t first);
int64_t events_tick(int64_t now_mono);
/* events_held reports the window: events kept, and the bytes allocated
 * for them (text buffer and slots), which --events-buffer-bytes bounds. */
void events_held(size_t *entries, size_t *bytes);
void events_close(void);
void events_free(void);

/* ---- loop.c ---- */
typedef void (*loop_fn)(int fd, uint32_t events, void *ctx);
int loop_init(void);
int loop_add(int fd, uint32_t events, loop_fn fn, void *ctx);
void loop_del(int fd);
int loop_wait(int timeout_ms);
void loop_close(void);

/* ---- http.c ---- */
struct request;
int http_start(void);
void http_stop(void);
int http_port(void);
void http_run(void);
int64_t http_timeout_ms(void);
void http_quiesce(void);
int64_t http_tick(int64_t now_mono);
/* http_acks_pending: replies wait for a commit (commit now, not later). */
int http_acks_pending(void);
/* http_pending_load: batches and jobs submitted but not yet committed,
 * which the limits count as if they were. */
void http_pending_load(int *batches, int64_t *jobs);

#endif
