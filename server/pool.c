/* pool.c - the worker processes: spawn, talk, kill, reap.
 *
 * Each slot holds one jobpool-worker process and the server's end of its
 * SOCK_SEQPACKET channel.  A worker is exec'd from its own binary so it
 * starts with a clean address space: no listen socket, no client sockets,
 * no SQLite handle, no fd jobpoold inherited (only 0-2 and the channel,
 * dup'ed to fd 3, stay open).  A worker is replaced whenever it dies, so
 * the number of live workers stays the configured size.
 *
 * The outcome of a job whose worker died is decided only when the process
 * is reaped, because only wait4() knows the exit status and the rusage.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobpool.h"
#include "protocol.h"

extern char **environ;

/* Slots are allocated once for the largest pool: the loop's fd table keeps
 * pointers to them, so they must never move. */
static struct slot *slots;
static int nslots;              /* ever used: max of all sizes */
static int target;              /* configured size */

/* What the pool reports, and to whom: the engine, given at start; the
 * pool never names it (it sits below). */
static const struct pool_events *ev;

static void on_channel(int fd, uint32_t events, void *ctx);
void pool_kill_orphans(void);
static void respawn(struct slot *s);
static int send_run(struct slot *s, char *msg);
/* Run messages kept until the claims they carry commit (pool_hold). */
struct held_msg {
	int slot;
	char *msg;
};
static struct held_msg *held_msgs;
static size_t nheld_msgs;
static int holding;
/* The lease page workers watch (pool_lease_init), and its fd in them. */
#define LEASE_FD (PROTO_FD + 1)
static int lease_fd = -1;
static _Atomic int64_t *lease_deadline;

/* Every worker starts through this pointer: a test replaces it to make
 * spawning fail (a fuzzer must start no process at all). */
int (*pool_spawn)(pid_t *pid, const char *path,
		  const posix_spawn_file_actions_t *fa,
		  const posix_spawnattr_t *attr, char *const argv[],
		  char *const envp[]) = posix_spawn;

/* spawn_worker starts one worker process for slot s.  Returns 0, or -1 with
 * errno set (the slot stays empty and is retried on the next reap). */
static int spawn_worker(struct slot *s)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, dfl;
	char parent[24];
	/* --allow-command last: the worker refuses command jobs without it. */
	char *argv[] = { (char *)cfg.worker_bin, "--parent", parent,
			 cfg.allow_command ? "--allow-command" : NULL, NULL };
	int sv[2], rc, child;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	child = sv[1];
	/* dup2 onto the same number would leave CLOEXEC set on fd 3. */
	if (child == PROTO_FD) {
		child = fcntl(sv[1], F_DUPFD_CLOEXEC, PROTO_FD + 1);
		close(sv[1]);
	}
	snprintf(parent, sizeof(parent), "%d", (int)getpid());
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, child, PROTO_FD);
	if (lease_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, lease_fd, LEASE_FD);
	/* Our own fds are CLOEXEC, but not those we inherited (a shell's, a
	 * supervisor's): a worker, and so a job, gets 0-2 and its channel
	 * (and the lease page, which the worker closes). */
	rc = posix_spawn_file_actions_addclosefrom_np(&fa, lease_fd >= 0 ?
						       LEASE_FD + 1 :
						       PROTO_FD + 1);
	/* The server blocks SIGCHLD/SIGTERM/SIGINT (they go to its signalfd)
	 * and ignores SIGPIPE; a worker must start with neither, or SIGTERM
	 * would not stop it. */
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	sigaddset(&dfl, SIGTERM);
	sigaddset(&dfl, SIGINT);
	sigaddset(&dfl, SIGCHLD);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK |
				 POSIX_SPAWN_SETSIGDEF);
	fflush(NULL);
	if (rc == 0)
		rc = pool_spawn(&pid, cfg.worker_bin, &fa, &attr, argv,
				environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	close(child);
	if (rc != 0) {
		close(sv[0]);
		errno = rc;
		log_warn("pool: cannot start %s: %s", cfg.worker_bin,
			 strerror(rc));
		return -1;
	}
	{
		/* Clear the per-process fields; the respawn backoff and the
		 * retirement survive a new process. */
		int failures = s->failures, retire = s->retire;
		struct handed *group = s->group;

		memset(&s->job_id, 0, sizeof(*s) - offsetof(struct slot,
							   job_id));
		s->failures = failures;
		s->retire = retire;
		s->group = group;
	}
	if (cfg.child_nofile > 0) {
		/* Before its first job (it has none until "ready"), so every
		 * command it starts inherits this. */
		struct rlimit rl;

		if (prlimit(pid, RLIMIT_NOFILE, NULL, &rl) == 0) {
			rl.rlim_cur = (rlim_t)cfg.child_nofile;
			prlimit(pid, RLIMIT_NOFILE, &rl, NULL);
		}
	}
	s->state = SLOT_STARTING;
	s->was_ready = 0;
	s->pid = pid;
	s->fd = sv[0];
	s->spawned_at = now_us();
	s->jobs_done = 0;
	s->rss_kb = -1;
	loop_add(s->fd, EPOLLIN, on_channel, s);
	return 0;
}

int pool_start(int size, const struct pool_events *events)
{
	int i;

	ev = events;
	slots = calloc(POOL_MAX, sizeof(*slots));
	if (!slots)
		return -1;
	for (i = 0; i < POOL_MAX; i++) {
		slots[i].index = i;
		slots[i].fd = -1;
	}
	nslots = target = size;
	for (i = 0; i < size; i++)
		if (spawn_worker(&slots[i]) < 0)
			return -1;
	return 0;
}

int pool_size(void)
{
	return target;
}

struct slot *pool_slot(int index)
{
	return index >= 0 && index < nslots ? &slots[index] : NULL;
}

struct slot *pool_idle(void)
{
	int i;

	for (i = 0; i < nslots; i++)
		if (slots[i].state == SLOT_IDLE && !slots[i].retire)
			return &slots[i];
	return NULL;
}

int pool_live(void)
{
	int i, n = 0;

	for (i = 0; i < nslots; i++)
		n += slots[i].state != SLOT_EMPTY;
	return n;
}

/* pool_ready tells whether the pool can run jobs: some worker is up, and
 * no slot is failing to start one (a worker that dies before "ready" is a
 * broken install, not a job's crash).  A worker being replaced after a
 * job killed it does not make the pool unready: that is routine. */
int pool_ready(void)
{
	int i, up = 0;

	for (i = 0; i < nslots && i < target; i++) {
		if (slots[i].failures > 0)
			return 0;
		up += slots[i].state == SLOT_IDLE || slots[i].state == SLOT_BUSY;
	}
	return up > 0;
}

int pool_busy(void)
{
	int i, n = 0;

	for (i = 0; i < nslots; i++)
		n += slots[i].state == SLOT_BUSY || slots[i].job_id != 0;
	return n;
}

static void close_channel(struct slot *s)
{
	if (s->fd < 0)
		return;
	loop_del(s->fd);
	close(s->fd);
	s->fd = -1;
}

_Static_assert(GROUP_MAX == PROTO_GROUP_MAX, "one group size");

void pool_slot_load(struct slot *s, const struct handed *h)
{
	s->job_id = h->job_id;
	s->batch_id = h->batch_id;
	s->job_attempts = h->attempts;
	s->max_attempts = h->max_attempts;
	s->backoff_s = h->backoff_s;
	s->retry = h->retry;
	memcpy(s->kind, h->kind, sizeof(s->kind));
	s->is_command = 0;
	s->cancel_requested = h->cancel;
	s->started_mono = 0;
	s->deadline_mono = 0;
}

/* handed_of fills h, a job as a slot holds it, from its claim. */
static void handed_of(struct handed *h, const struct claim *c)
{
	h->job_id = c->job_id;
	h->batch_id = c->batch_id;
	h->idx = c->idx;
	h->queued_at = c->queued_at;
	h->attempts = c->attempts;
	h->max_attempts = c->max_attempts;
	h->backoff_s = c->backoff_s;
	h->retry = c->retry;
	memcpy(h->kind, c->kind, sizeof(h->kind));
	h->cancel = 0;
	h->announced = 0;
	h->running = 0;
}

/* pool_send_run hands claim c to idle slot s.  Returns 0, or -1 when the
 * channel is broken (the worker is dying; its reap will settle the job). */
int pool_send_run(struct slot *s, const struct claim *c, int64_t started_mono)
{
	struct handed h;
	char id[32], *msg;
	json_t *args, *m;

	fmt_id(id, sizeof(id), 'j', c->job_id);
	args = json_loads(c->args, 0, NULL);
	m = json_pack("{s:s, s:s, s:s, s:o, s:i, s:I}", "t", "run", "job", id,
		      "kind", c->kind, "args", args ? args : json_object(),
		      "grace_ms", cfg.kill_grace_ms,
		      "output_cap", (json_int_t)cfg.max_output_bytes);
	msg = json_dumps(m, JSON_COMPACT);
	json_decref(m);
	handed_of(&h, c);
	pool_slot_load(s, &h);
	s->state = SLOT_BUSY;
	s->is_command = strcmp(c->kind, "command") == 0;
	s->kill = KILL_NONE;
	s->kill_at_mono = 0;
	s->started_mono = started_mono;
	s->deadline_mono = c->timeout_s > 0 ?
		s->started_mono + (int64_t)(c->timeout_s * 1e6) : 0;
	if (holding && msg) {
		struct held_msg *p = realloc(held_msgs, (nheld_msgs + 1) *
					     sizeof(*p));

		if (p) {
			held_msgs = p;
			held_msgs[nheld_msgs].slot = s->index;
			held_msgs[nheld_msgs++].msg = msg;
			return 0;
		}
	}
	return send_run(s, msg);
}

/* send_run writes a run message (and frees it). */
static int send_run(struct slot *s, char *msg)
{
	ssize_t n = msg ? send(s->fd, msg, strlen(msg),
			       MSG_NOSIGNAL | MSG_DONTWAIT) : -1;

	free(msg);
	if (n < 0) {
		log_warn("pool: slot %d: send: %s", s->index, strerror(errno));
		pool_kill(s, KILL_NONE, 0);
		return -1;
	}
	return 0;
}

/* pool_lease_init shares a page with every worker started from now on,
 * holding the monotonic time until which this node's lease is good: a
 * worker kills its job and exits past it, even when this server is frozen
 * and cannot tell it (workers/main.c, watchdog). */
int pool_lease_init(void)
{
	void *page;
	char num[16];

	if (lease_fd >= 0)
		return 0;
	lease_fd = memfd_create("jobpool-lease", MFD_CLOEXEC);
	if (lease_fd < 0 || ftruncate(lease_fd, sizeof(int64_t)) < 0)
		return -1;
	page = mmap(NULL, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED,
		    lease_fd, 0);
	if (page == MAP_FAILED)
		return -1;
	lease_deadline = page;
	snprintf(num, sizeof(num), "%d", LEASE_FD);
	setenv("JOBPOOL_LEASE_FD", num, 1);
	return 0;
}

/* pool_lease_set moves the deadline (0: none); safe from any thread. */
void pool_lease_set(int64_t deadline_mono)
{
	if (lease_deadline)
		atomic_store(lease_deadline, deadline_mono);
}

void pool_hold(void)
{
	holding = 1;
}

int pool_holding(void)
{
	return holding && nheld_msgs > 0;
}

void pool_release(int ok)
{
	size_t i;

	holding = 0;
	for (i = 0; i < nheld_msgs; i++) {
		struct slot *s = &slots[held_msgs[i].slot];

		if (ok) {
			send_run(s, held_msgs[i].msg);
			continue;
		}
		free(held_msgs[i].msg);
		s->group_len = 0;       /* never ran: idle again */
		pool_job_ended(s);
	}
	nheld_msgs = 0;
}

/* load_head makes the head of s's group the slot's job. */
static void load_head(struct slot *s)
{
	pool_slot_load(s, &s->group[s->group_pos]);
}

/* A group message is built as text: the args are stored as JSON text
 * already, and parsing them only to print them again is most of what a
 * short job would cost. */
struct text {
	char *p;
	size_t len, cap;
};

static int text_add(struct text *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4096;
		char *p;

		while (cap < t->len + n + 1)
			cap *= 2;
		p = realloc(t->p, cap);
		if (!p)
			return -1;
		t->p = p;
		t->cap = cap;
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = 0;
	return 0;
}

int pool_send_group(struct slot *s, const struct claim *c, int n)
{
	static const char open[] = "{\"t\":\"group\",\"jobs\":[";
	static struct text t;
	char head[96];
	size_t mark;
	int i, len, sent = 0;
	ssize_t rc;

	if (!s->group) {
		s->group = calloc(GROUP_MAX, sizeof(*s->group));
		if (!s->group)
			return -1;
	}
	t.len = 0;
	if (text_add(&t, open, sizeof(open) - 1) < 0)
		return -1;
	for (i = 0; i < n && i < GROUP_MAX; i++) {
		mark = t.len;
		len = snprintf(head, sizeof(head), "%s{\"job\":\"j_%012lld\","
			       "\"kind\":\"%s\",\"args\":", i ? "," : "",
			       (long long)c[i].job_id, c[i].kind);
		if (len < 0 || len >= (int)sizeof(head) ||
		    text_add(&t, head, (size_t)len) < 0 ||
		    text_add(&t, c[i].args, strlen(c[i].args)) < 0 ||
		    text_add(&t, "}", 1) < 0)
			return -1;
		if (t.len + 2 > PROTO_MAX_MSG) {
			t.len = mark;   /* the rest waits for the next group */
			break;
		}
	}
	if (i == 0 || text_add(&t, "]}", 2) < 0)
		return -1;
	for (sent = 0; sent < i; sent++)
		handed_of(&s->group[sent], &c[sent]);
	s->group_pos = 0;
	s->group_len = sent;
	s->state = SLOT_BUSY;
	s->kill = KILL_NONE;
	s->kill_at_mono = 0;
	load_head(s);
	if (holding) {
		struct held_msg *p = realloc(held_msgs, (nheld_msgs + 1) *
					     sizeof(*p));
		char *copy = malloc(t.len + 1);

		if (p && copy) {
			memcpy(copy, t.p, t.len);
			copy[t.len] = 0;
			held_msgs = p;
			held_msgs[nheld_msgs].slot = s->index;
			held_msgs[nheld_msgs++].msg = copy;
			return sent;
		}
		free(copy);
		if (p)
			held_msgs = p;
	}
	rc = send(s->fd, t.p, t.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (rc < 0) {
		/* Nothing was handed: the worker's death settles no job. */
		log_warn("pool: slot %d: send: %s", s->index, strerror(errno));
		s->group_len = 0;
		s->job_id = 0;
		pool_kill(s, KILL_NONE, 0);
		return -1;
	}
	return sent;
}

void pool_send_drop(struct slot *s, int64_t job_id)
{
	char msg[64];
	int n = snprintf(msg, sizeof(msg), "{\"t\":\"drop\",\"job\":"
			 "\"j_%012lld\"}", (long long)job_id);

	if (s->fd >= 0 &&
	    send(s->fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		pool_kill(s, KILL_NONE, 0);     /* its reap settles the group */
}

void pool_group_pop(struct slot *s)
{
	if (s->group_len <= 0)
		return;
	s->group_pos++;
	s->group_len--;
	if (s->group_len > 0)
		load_head(s);
}

int pool_job_started(const struct slot *s)
{
	if (!s->job_id)
		return 0;
	return s->group_len <= 0 || s->group[s->group_pos].announced;
}

void (*pool_output_hook)(const struct slot *s, int ended);

/* append_output keeps a chunk of a command's captured output.  The worker
 * already capped it (output_cap bytes of raw output per stream); the bound
 * here only protects the server from a worker that does not. */
static void append_output(struct slot *s, json_int_t fd, const json_t *data)
{
	size_t n = json_string_length(data), cap = cfg.max_output_bytes * 3 + 16;
	char *p;
	int i = (int)fd - 1;

	if ((i != 0 && i != 1) || !json_is_string(data) ||
	    s->out_len[i] + n > cap)
		return;
	p = realloc(s->out[i], s->out_len[i] + n + 1);
	if (!p)
		return;
	memcpy(p + s->out_len[i], json_string_value(data), n);
	s->out_len[i] += n;
	p[s->out_len[i]] = 0;
	s->out[i] = p;
	if (pool_output_hook)
		pool_output_hook(s, 0);
}

static void handle_message(struct slot *s, const char *buf, size_t len)
{
	json_t *m = json_loadb(buf, len, 0, NULL);
	const char *t = json_string_value(json_object_get(m, "t"));

	if (t && strcmp(t, "ready") == 0 && s->state == SLOT_STARTING) {
		s->state = SLOT_IDLE;
		s->failures = 0;
		s->was_ready = 1;
	} else if (t && strcmp(t, "out") == 0 && s->job_id) {
		append_output(s, json_integer_value(json_object_get(m, "fd")),
			      json_object_get(m, "data"));
	} else if (t && strcmp(t, "results") == 0 && s->group_len > 0) {
		ev->group_results(s, m);
	} else if (t && strcmp(t, "started") == 0 && s->group_len > 0) {
		ev->group_started(s, m);
	} else if (t && strcmp(t, "done") == 0 && s->job_id &&
		   s->group_len <= 0) {
		/* Also when a kill is on its way: the job did finish, and
		 * the truth beats the intent. */
		s->rss_kb = json_integer_value(json_object_get(m,
							       "maxrss_kb"));
		ev->job_done(s, m);
	} else if (!t || strcmp(t, "done") != 0) {
		/* A worker that says something unexpected cannot be trusted
		 * with the next job. */
		log_warn("pool: slot %d pid %d: bad message", s->index,
			 (int)s->pid);
		pool_kill(s, KILL_NONE, 0);
	}
	json_decref(m);
}

static void on_channel(int fd, uint32_t events, void *ctx)
{
	static char buf[PROTO_MAX_MSG + 1];
	struct slot *s = ctx;
	ssize_t n;

	for (;;) {
		n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0) {
			handle_message(s, buf, (size_t)n);
			if (s->fd != fd)
				return;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* EOF or error: the worker is gone or going; its reap
		 * settles any job it held. */
		close_channel(s);
		if (s->state != SLOT_STOPPING)
			s->state = SLOT_STOPPING;
		return;
	}
}

void pool_kill(struct slot *s, enum kill_reason why, int grace_ms)
{
	if (s->pid <= 0)
		return;
	if (why != KILL_NONE && s->kill == KILL_NONE) {
		s->kill = why;
		s->kill_job = s->job_id;
	}
	if (grace_ms <= 0) {
		kill(s->pid, SIGKILL);
	} else {
		kill(s->pid, SIGTERM);
		if (!s->kill_at_mono)
			s->kill_at_mono = mono_us() + (int64_t)grace_ms * 1000;
	}
	if (s->state != SLOT_EMPTY)
		s->state = SLOT_STOPPING;
}

/* pool_stop_job stops the job running in s (cancel, timeout).  A command
 * job is stopped by its worker, which signals the job's whole process tree
 * (TERM, then KILL after the grace) and stays in the pool; the server only
 * kills that worker if it has not answered a second after the grace.  A
 * function kind runs inside the worker, so the worker itself is stopped. */
void pool_stop_job(struct slot *s, enum kill_reason why)
{
	static const char cancel[] = "{\"t\":\"cancel\"}";

	if (why == KILL_CANCEL)
		s->cancel_requested = 1;
	if (!s->is_command || s->fd < 0) {
		pool_kill(s, why, cfg.kill_grace_ms);
		return;
	}
	if (s->kill == KILL_NONE) {
		s->kill = why;
		s->kill_job = s->job_id;
	}
	if (why == KILL_CANCEL)
		s->cancel_requested = 1;
	if (s->kill_at_mono)
		return;
	s->kill_at_mono = mono_us() + (int64_t)(cfg.kill_grace_ms + 1000) * 1000;
	if (send(s->fd, cancel, sizeof(cancel) - 1,
		 MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		pool_kill(s, why, 0);
}

/* pool_job_ended puts slot s back to work after its job was settled. */
void pool_job_ended(struct slot *s)
{
	int i;

	/* Before the buffers go: a follower still owes its client the
	 * bytes it has not sent yet. */
	if (pool_output_hook && s->job_id)
		pool_output_hook(s, 1);
	for (i = 0; i < 2; i++) {
		free(s->out[i]);
		s->out[i] = NULL;
		s->out_len[i] = 0;
	}
	s->job_id = 0;
	s->deadline_mono = 0;
	if (s->group_len > 0) {
		load_head(s);   /* the group goes on */
		return;
	}
	if (s->state != SLOT_BUSY)
		return;         /* being killed: the reap replaces it */
	s->kill = KILL_NONE;
	s->kill_at_mono = 0;
	if (s->retire) {
		close_channel(s);       /* it exits on EOF */
		s->state = SLOT_STOPPING;
	} else {
		s->state = SLOT_IDLE;
	}
}

/* pool_resize grows or shrinks the pool.  Growing starts workers at once;
 * shrinking retires the highest slots: idle ones exit now, busy ones after
 * their job, so no job is lost or run twice.  Returns 0 or -1. */
int pool_resize(int size)
{
	int i;

	if (size < 1 || size > POOL_MAX)
		return -1;
	for (i = 0; i < size; i++) {
		struct slot *s = &slots[i];

		s->retire = 0;
		/* A spawn that fails (EAGAIN at the process limit, ENOMEM) is
		 * retried by pool_tick, as after a death; ignoring it left the
		 * slot empty for good while /v1/pool counted it. */
		if (s->state == SLOT_EMPTY && !shutting_down &&
		    spawn_worker(s) < 0) {
			s->failures++;
			s->respawn_mono = mono_us() + 1000000;
		}
	}
	for (i = size; i < nslots; i++) {
		struct slot *s = &slots[i];

		s->retire = 1;
		if (s->state == SLOT_IDLE || s->state == SLOT_STARTING) {
			close_channel(s);
			s->state = SLOT_STOPPING;
		}
	}
	if (size > nslots)
		nslots = size;
	target = size;
	return 0;
}

static struct slot *slot_by_pid(pid_t pid)
{
	int i;

	for (i = 0; i < nslots; i++)
		if (slots[i].pid == pid)
			return &slots[i];
	return NULL;
}

/* How many processes the last pool_kill_orphans killed. */
static int orphans_killed;

/* pool_reap collects every exited child.  Unknown pids are reaped too and
 * ignored: as PID 1 in a container we inherit orphans.  /proc is walked
 * (pool_kill_orphans, O(processes on the host)) only when something of a
 * job can be left: a worker died during a command job, or an orphan we
 * killed died and its children came to us.  A worker that dies between
 * jobs or during a function kind had no child left (the command kind
 * kills them all at the end of its job), so its death costs no walk. */
void pool_reap(void)
{
	struct rusage ru;
	struct slot *s;
	int status, orphans = 0;
	pid_t pid;

	while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
		s = slot_by_pid(pid);
		if (!s) {
			/* An orphan we killed: its own children are ours now,
			 * and one walk after each kill finds them. */
			orphans |= orphans_killed > 0;
			continue;
		}
		/* Read what the worker said before it died (a "done" sent
		 * just before a crash must win over the crash). */
		if (s->fd >= 0)
			on_channel(s->fd, EPOLLIN, s);
		close_channel(s);
		if (s->job_id && s->is_command)
			orphans = 1;
		if (s->job_id)
			ev->worker_died(s, status);
		/* A worker that dies before it is ready will likely do so
		 * again (wrong binary, no memory): retry with a growing
		 * delay instead of a tight loop of spawns and logs. */
		if (!s->was_ready) {
			s->failures++;
			log_warn("pool: slot %d: worker %d died before it was "
				 "ready (status %d)", s->index, (int)pid,
				 status);
		}
		s->pid = 0;
		s->state = SLOT_EMPTY;
		s->job_id = 0;
		if (!shutting_down && !s->retire && s->index < target) {
			log_event(LOG_WARN, "worker_replaced", 0, 0, "pool: "
				  "slot %d: worker %d %s %d; starting a new one",
				  s->index, (int)pid, WIFSIGNALED(status) ?
				  "was killed by signal" : "exited with code",
				  WIFSIGNALED(status) ? WTERMSIG(status) :
				  WEXITSTATUS(status));
			metrics_worker_restart();
			respawn(s);
		}
	}
	if (orphans)
		pool_kill_orphans();
}

static void respawn(struct slot *s)
{
	int64_t delay = 0;

	if (s->failures > 0) {
		int shift = s->failures < 6 ? s->failures : 6;

		delay = 100000LL << shift;      /* 0.2 s .. 6.4 s */
	}
	if (delay) {
		s->respawn_mono = mono_us() + delay;
		return;
	}
	if (spawn_worker(s) < 0) {
		s->failures++;
		s->respawn_mono = mono_us() + 1000000;
	}
}

/* pool_tick enforces job timeouts and kill grace periods.  Returns the next
 * monotonic deadline, or 0 when there is none. */
int64_t pool_tick(int64_t now)
{
	int64_t next = 0;
	int i;

	for (i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];

		if (s->respawn_mono && s->state == SLOT_EMPTY) {
			if (now >= s->respawn_mono && !shutting_down &&
			    !s->retire && s->index < target) {
				s->respawn_mono = 0;
				if (spawn_worker(s) < 0) {
					s->failures++;
					s->respawn_mono = now + 1000000;
				}
			}
			if (s->respawn_mono && (!next || s->respawn_mono < next))
				next = s->respawn_mono;
		}
		if (s->pid <= 0)
			continue;
		if (s->kill_at_mono && now >= s->kill_at_mono) {
			kill(s->pid, SIGKILL);
			s->kill_at_mono = 0;
		}
		if (s->state == SLOT_BUSY && s->deadline_mono &&
		    now >= s->deadline_mono) {
			s->deadline_mono = 0;
			ev->timeout(s);
		}
		if (s->kill_at_mono && (!next || s->kill_at_mono < next))
			next = s->kill_at_mono;
		if (s->state == SLOT_BUSY && s->deadline_mono &&
		    (!next || s->deadline_mono < next))
			next = s->deadline_mono;
	}
	return next;
}

/* pool_stop_all closes every channel (an idle worker exits on EOF) and
 * kills workers still holding a job; used at shutdown after draining. */
void pool_stop_all(void)
{
	int i;

	for (i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];

		if (s->pid <= 0)
			continue;
		if (s->job_id)
			pool_kill(s, KILL_SHUTDOWN, 0);
		else
			close_channel(s);
	}
}

void pool_kill_all(void)
{
	int i;

	for (i = 0; i < nslots; i++)
		if (slots[i].pid > 0)
			kill(slots[i].pid, SIGKILL);
}

static int64_t proc_rss_kb(pid_t pid)
{
	char path[64], line[256];
	int64_t kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lld", (long long *)&kb) == 1)
			break;
	fclose(f);
	return kb;
}

json_t *pool_json(void)
{
	static const char *const names[] = {
		"stopped", "starting", "idle", "busy", "stopping"
	};
	json_t *workers = json_array();
	char id[32];
	int i, busy = 0, idle = 0;

	for (i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];
		int64_t rss;

		if (s->state == SLOT_EMPTY && s->index >= target)
			continue;
		busy += s->state == SLOT_BUSY;
		idle += s->state == SLOT_IDLE;
		fmt_id(id, sizeof(id), 'j', s->job_id);
		rss = s->pid > 0 ? proc_rss_kb(s->pid) : -1;
		json_array_append_new(workers, json_pack(
			"{s:i, s:o, s:s, s:o, s:i, s:o, s:o}",
			"slot", s->index,
			"pid", s->pid > 0 ? json_integer(s->pid) : json_null(),
			"state", names[s->state],
			"job_id", s->job_id ? json_string(id) : json_null(),
			"jobs_done", s->jobs_done,
			"started_at", json_time(s->spawned_at),
			"rss_kb", rss >= 0 ? json_integer(rss) : json_null()));
	}
	return json_pack("{s:i, s:i, s:i, s:o}", "size", target, "busy", busy,
			 "idle", idle, "workers", workers);
}

/* ---- processes a dead job left behind ----
 *
 * jobpoold is a child subreaper (main.c), and so is every worker: while a
 * worker lives it kills whatever its command job left; when a worker dies
 * in the middle of a command job, the job's remaining processes are
 * reparented to jobpoold.  Every child of jobpoold that is not a worker is
 * such an orphan, so killing them all is exact. */

static int is_worker(pid_t pid)
{
	return slot_by_pid(pid) != NULL;
}

/* parent_of reads the ppid from /proc/PID/stat (after the command name,
 * which may hold spaces and parentheses: parse from the last ')'). */
static pid_t parent_of(const char *pid)
{
	char path[300], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%s/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (!p)
		return -1;
	return (pid_t)strtol(p + 4, NULL, 10);  /* ") S ppid" */
}

static int64_t job_of(const char *pid, const char *instance);

void pool_kill_orphans(void)
{
	pid_t me = getpid(), pid;
	int killed = 0;
	const char *instance = getenv("JOBPOOL_INSTANCE");
	struct dirent *e;
	DIR *d = opendir("/proc");

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		pid = (pid_t)atoi(e->d_name);
		if (parent_of(e->d_name) != me || is_worker(pid))
			continue;
		/* As PID 1 in a container we also inherit processes that are
		 * not ours (say, from `docker exec`): there, kill only what
		 * carries this server's job marker. */
		if (me == 1 && !(instance && job_of(e->d_name, instance) > 0))
			continue;
		log_info("pool: killing pid %d left by a dead job", (int)pid);
		kill(pid, SIGKILL);
		killed++;
	}
	closedir(d);
	orphans_killed = killed;
}

/* job_of reads the JOBPOOL_JOB=<instance>/<job id> marker the worker puts
 * in a command's environment.  Returns the job id when process pid carries
 * one of this instance, else 0 (no marker, another server's, or gone). */
static int64_t job_of(const char *pid, const char *instance)
{
	static char buf[65536];
	size_t ilen = strlen(instance);
	char path[300], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%s/environ", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (p = buf; p < buf + n; p += strlen(p) + 1)
		if (strncmp(p, "JOBPOOL_JOB=", 12) == 0 &&
		    strncmp(p + 12, instance, ilen) == 0 && p[12 + ilen] == '/')
			return parse_id(p + 13 + ilen, 'j');
	return 0;
}

/* pool_kill_marked runs at start, before any worker: the previous server
 * died (kill -9) with command jobs running; their workers died with it
 * (PR_SET_PDEATHSIG) but processes those jobs started may live on.  Find
 * them by the JOBPOOL_JOB marker of this database and kill them, so no
 * orphan keeps running a job this server is about to run again. */
void pool_kill_marked(const char *instance, const int64_t *job_ids, size_t n)
{
	struct dirent *e;
	int64_t job;
	size_t i;
	DIR *d;
	int round, killed;

	for (round = 0; round < 50; round++) {
		killed = 0;
		d = opendir("/proc");
		if (!d)
			return;
		while ((e = readdir(d))) {
			if (e->d_name[0] < '1' || e->d_name[0] > '9' ||
			    (job = job_of(e->d_name, instance)) <= 0)
				continue;
			for (i = 0; i < n && job_ids[i] != job; i++)
				;
			if (i == n)
				continue;
			log_info("recovery: killing pid %s of interrupted job "
				 "%lld", e->d_name, (long long)job);
			kill(atoi(e->d_name), SIGKILL);
			killed++;
		}
		closedir(d);
		if (!killed)
			return;
		usleep(20000);  /* let them die, then look again */
	}
}
