/* main.c - jobpool-worker: runs jobs for jobpoold, one at a time.
 *
 * The server starts it as `jobpool-worker --parent PID [--allow-command]`
 * with the channel on PROTO_FD (see protocol.h).  It says "ready", then answers each "run" with
 * the job's "out" messages, if any, and one "done" until the server closes
 * the channel.  A job that crashes or exits takes the worker with it; the
 * server sees that in wait4() and starts a new one.  While a command job
 * runs, the kind itself watches the channel for a "cancel" (channel_cancel).
 *
 * Exit status: 0 the server closed the channel, 1 the parent was already
 * gone at start, 2 bad usage or a malformed message, 3 the channel or
 * memory failed.  Jobs of kind "fail" exit with their own status.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kinds.h"
#include "protocol.h"

#define EXIT_PARENT_GONE 1
#define EXIT_PROTOCOL 2
#define EXIT_CHANNEL 3
#define EXIT_FENCED 4           /* the node's lease ran out: see watchdog */

/* What a "run" that does not say gets. */
#define DEFAULT_GRACE_MS 2000
#define DEFAULT_OUTPUT_CAP (1024 * 1024)
/* Output text per "out" message, counted JSON-escaped: with the envelope it
 * stays far below PROTO_MAX_MSG whatever the bytes are. */
#define OUT_CHUNK (64 * 1024)

/* die writes "jobpool-worker: what" to stderr and exits with status. */
static void die(int status, const char *what)
{
	fprintf(stderr, "jobpool-worker: %s\n", what);
	exit(status);
}

/* Whether the command kind may run here: only when the server says so in
 * this process's arguments, not in a message, so that no "run" can turn it
 * on. */
static int allow_command;

/* parse_args returns the PID given as `--parent PID` and notes a trailing
 * `--allow-command`, or exits. */
static pid_t parse_args(int argc, char **argv)
{
	char *end;
	long pid;

	if (argc == 4 && strcmp(argv[3], "--allow-command") == 0) {
		allow_command = 1;
		argc--;
	}
	if (argc != 3 || strcmp(argv[1], "--parent") != 0)
		die(EXIT_PROTOCOL, "usage: jobpool-worker --parent PID "
		    "[--allow-command]");
	errno = 0;
	pid = strtol(argv[2], &end, 10);
	/* 1 is a valid parent: jobpoold runs as PID 1 in a container. */
	if (errno || *end || end == argv[2] || pid < 1)
		die(EXIT_PROTOCOL, "--parent needs a process id");
	return (pid_t)pid;
}

/* setup_process ties the worker's life to the server's and clears signal
 * state inherited across exec.  Exits when the parent is already gone. */
static void setup_process(pid_t parent)
{
	sigset_t none;

	/* Ask for SIGKILL when the parent dies, then check it had not died
	 * already: otherwise a worker started just before a server crash
	 * would be orphaned and never told. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1)
		die(EXIT_CHANNEL, "prctl(PR_SET_PDEATHSIG) failed");
	if (getppid() != parent)
		_exit(EXIT_PARENT_GONE);
	/* A command job's processes that leave its group (setsid, a double
	 * fork) are reparented here rather than to init, so the command kind
	 * can still find and kill them when the job ends. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
		die(EXIT_CHANNEL, "prctl(PR_SET_CHILD_SUBREAPER) failed");
	/* A server that blocks signals for its own loop would pass the mask
	 * on, and a "hang" job could then not be stopped with SIGTERM. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* send() uses MSG_NOSIGNAL; this also covers anything a kind writes. */
	signal(SIGPIPE, SIG_IGN);
	/* Ctrl-C at a terminal reaches the whole process group; the server
	 * drains its jobs on SIGINT, which must not kill them under it. */
	signal(SIGINT, SIG_IGN);
}

/* send_msg sends msg (stolen) as one message.  Returns 0, or -1 when it
 * would be larger than PROTO_MAX_MSG; exits when the channel fails. */
/* send_text sends len bytes of text as one message; exits when the channel
 * fails. */
static void send_text(const char *text, size_t len)
{
	ssize_t sent;

	do
		sent = send(PROTO_FD, text, len, MSG_NOSIGNAL);
	while (sent == -1 && errno == EINTR);
	if (sent == -1)
		die(EXIT_CHANNEL, strerror(errno));
}

static int send_msg(json_t *msg)
{
	char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	size_t len = text ? strlen(text) : 0;

	json_decref(msg);
	if (!text)
		die(EXIT_CHANNEL, "out of memory");
	if (len > PROTO_MAX_MSG) {
		free(text);
		return -1;
	}
	send_text(text, len);
	free(text);
	return 0;
}

/* A point in time and CPU use, taken on both sides of a job. */
struct sample {
	struct timespec clock;
	struct rusage usage;
};

static void sample_take(struct sample *s)
{
	clock_gettime(CLOCK_MONOTONIC, &s->clock);
	getrusage(RUSAGE_SELF, &s->usage);
}

static json_int_t tv_us(struct timeval a, struct timeval b)
{
	return (json_int_t)(b.tv_sec - a.tv_sec) * 1000000 + (b.tv_usec - a.tv_usec);
}

/* peak_rss_kb returns the worker's peak resident set in KiB.  It reads
 * VmHWM rather than getrusage's ru_maxrss because Linux carries ru_maxrss
 * across execve: a worker spawned by a 200 MB server would report 200 MB
 * (measured: 215460 kB from ru_maxrss against a VmHWM of 1932 kB).  Falls
 * back to ru_maxrss when /proc is not mounted. */
static json_int_t peak_rss_kb(const struct rusage *usage)
{
	/* The resident set grows only through page faults: with no fault
	 * since the last read, the peak has not moved, and a short job costs
	 * no open and parse of /proc. */
	static long faults = -1;
	static json_int_t last;
	FILE *status;
	char line[128];
	long long kb = -1;

	if (usage->ru_minflt + usage->ru_majflt == faults)
		return last;
	status = fopen("/proc/self/status", "re");
	if (!status)
		return (json_int_t)usage->ru_maxrss;
	while (kb < 0 && fgets(line, sizeof line, status))
		if (sscanf(line, "VmHWM: %lld kB", &kb) != 1)
			kb = -1;
	fclose(status);
	/* Reading /proc faulted pages in too: count from after it. */
	{
		struct rusage now;

		getrusage(RUSAGE_SELF, &now);
		faults = now.ru_minflt + now.ru_majflt;
	}
	last = kb < 0 ? (json_int_t)usage->ru_maxrss : (json_int_t)kb;
	return last;
}

/* job_usage sets user_us, sys_us and maxrss_kb of a job: the command's own
 * process when the kind reaped one (exact, and without the worker's other
 * jobs), else the worker's CPU delta over the job and its peak RSS. */
static void job_usage(const struct kind_job *job, const struct sample *before,
		      const struct sample *after, json_int_t usage[3])
{
	static const struct timeval zero;

	if (job->have_rusage) {
		usage[0] = tv_us(zero, job->ru.ru_utime);
		usage[1] = tv_us(zero, job->ru.ru_stime);
		usage[2] = (json_int_t)job->ru.ru_maxrss;
		return;
	}
	usage[0] = tv_us(before->usage.ru_utime, after->usage.ru_utime);
	usage[1] = tv_us(before->usage.ru_stime, after->usage.ru_stime);
	usage[2] = peak_rss_kb(&after->usage);
}

/* int_or_null returns a new JSON integer of value, or null when it is below
 * least. */
static json_t *int_or_null(int value, int least)
{
	return value >= least ? json_integer(value) : json_null();
}

/* done_new returns a new "done" message for job; result is stolen and may
 * be NULL, error is sent only when ok is 0.  Returns NULL when out of
 * memory. */
static json_t *done_new(const char *id, int ok, json_t *result,
			const char *error, const struct kind_job *job,
			const struct sample *before, const struct sample *after)
{
	json_int_t run_us =
		(json_int_t)(after->clock.tv_sec - before->clock.tv_sec) * 1000000 +
		(after->clock.tv_nsec - before->clock.tv_nsec) / 1000;
	json_int_t usage[3];

	job_usage(job, before, after, usage);
	return json_pack("{s:s, s:s, s:b, s:o?, s:s?, s:I, s:I, s:I, s:I,"
			 " s:o, s:o, s:b, s:b}",
			 "t", "done", "job", id, "ok", ok,
			 "result", result, "error", ok ? NULL : error,
			 "run_us", run_us, "user_us", usage[0],
			 "sys_us", usage[1], "maxrss_kb", usage[2],
			 "exit_code", int_or_null(job->exit_code, 0),
			 "signal", int_or_null(job->signal, 1),
			 "killed", job->killed != 0,
			 "truncated", json_is_true(json_object_get(job->output,
								   "truncated")));
}

/* out_chunk returns how many bytes of text (len, valid UTF-8) to send in
 * one "out" message: as many whole characters as fit in OUT_CHUNK once
 * JSON-escaped.  A control character may take 6 bytes escaped. */
static size_t out_chunk(const char *text, size_t len)
{
	size_t i, cost = 0, cut = 0;
	unsigned char c;

	for (i = 0; i < len; i++) {
		c = (unsigned char)text[i];
		/* A byte that starts a character is a place to cut. */
		if ((c & 0xc0) != 0x80)
			cut = i;
		cost += c < 0x20 ? 6 : (c == '"' || c == '\\') ? 2 : 1;
		if (cost > OUT_CHUNK)
			return cut;
	}
	return len;
}

/* send_output sends the text of one stream (output member name, fd 1 or
 * 2) as "out" messages; an empty stream sends none. */
static void send_output(const char *id, const json_t *output,
			const char *name, int fd)
{
	const json_t *data = json_object_get(output, name);
	const char *text = json_string_value(data);
	size_t len = json_string_length(data), n;

	while (text && len > 0) {
		n = out_chunk(text, len);
		if (send_msg(json_pack("{s:s, s:s, s:i, s:s%}", "t", "out",
				       "job", id, "fd", fd, "data", text, n)) != 0)
			die(EXIT_CHANNEL, "cannot send out");
		text += n;
		len -= n;
	}
}

/* The id of the job handle_run runs, for hand_output. */
static const char *running_id;

/* hand_output is the command kind's on_output: its text goes to the server
 * as it arrives, so a client can follow the job while it runs (GET
 * /v1/jobs/{id}/output?follow=true); nothing of it is sent again at the
 * end. */
static void hand_output(struct kind_job *job, int fd, const char *text,
			size_t len)
{
	size_t n;

	(void)job;
	while (len > 0) {
		n = out_chunk(text, len);
		if (send_msg(json_pack("{s:s, s:s, s:i, s:s%}", "t", "out",
				       "job", running_id, "fd", fd, "data",
				       text, n)) != 0)
			die(EXIT_CHANNEL, "cannot send out");
		text += n;
		len -= n;
	}
}

/* The first problem validate reports, as the job's error sentence. */
struct problem {
	int count;
	char text[200];
};

static void note_problem(void *ctx, const char *field, const char *msg)
{
	struct problem *p = ctx;

	if (p->count++ == 0)
		snprintf(p->text, sizeof p->text, "invalid args: %s%s%s",
			 field, *field ? " " : "", msg);
}

/* run_job runs kind on args (borrowed) for job and returns the new result
 * (or NULL); when the job failed the reason is written to error.  The
 * server validated args already; checking again here keeps a server bug
 * from reaching a kind's run. */
static json_t *run_job(const char *name, const json_t *args,
		       struct kind_job *job, char *error, size_t size)
{
	const struct kind *kind = kind_find(name);
	struct problem problem = { 0 };
	json_t *result;

	if (!kind) {
		snprintf(error, size, "unknown kind \"%s\"", name);
		return NULL;
	}
	/* The server refuses command jobs at submission when it runs without
	 * --allow-command, but a job stored while it ran with the flag is
	 * still in the database after a restart without it: where programs
	 * would be started has the last word, and starts nothing. */
	if (strcmp(name, "command") == 0 && !allow_command) {
		snprintf(error, size, "the command kind is off: the server runs "
			 "without --allow-command");
		return NULL;
	}
	kind->validate(args, note_problem, &problem);
	if (problem.count) {
		snprintf(error, size, "%s", problem.text);
		return NULL;
	}
	result = kind->run(args, job);
	if (job->error || !result)
		snprintf(error, size, "%s",
			 job->error ? job->error : "the job failed without a reason");
	return result;
}

/* recv_msg receives one message into buf, waiting for it unless flags
 * hold MSG_DONTWAIT.  Returns its length, 0 when the server closed the
 * channel, -1 when nothing is pending; exits on errors and oversized
 * messages. */
static ssize_t recv_msg(char *buf, size_t size, int flags)
{
	ssize_t n;

	do
		n = recv(PROTO_FD, buf, size, flags);
	while (n == -1 && errno == EINTR);
	if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -1;
	if (n == -1)
		die(EXIT_CHANNEL, strerror(errno));
	/* SEQPACKET truncates silently; a full buffer means it did. */
	if ((size_t)n >= size)
		die(EXIT_PROTOCOL, "malformed message: too large");
	return n;
}

/* parse_msg returns the new message in buf, whose "t" goes to *t; a
 * message that is not JSON with a "t" means the two sides disagree, so the
 * worker exits. */
static json_t *parse_msg(const char *buf, size_t len, const char **t)
{
	json_error_t jerr;
	json_t *msg = json_loadb(buf, len, 0, &jerr);
	char line[300];

	if (!msg) {
		snprintf(line, sizeof line, "malformed message: %s", jerr.text);
		die(EXIT_PROTOCOL, line);
	}
	if (json_unpack_ex(msg, &jerr, 0, "{s:s}", "t", t) == -1) {
		snprintf(line, sizeof line, "malformed message: %s", jerr.text);
		die(EXIT_PROTOCOL, line);
	}
	return msg;
}

/* channel_cancel is the kinds' look at the channel during a job (see
 * kinds.h): it reads every pending message.  Only "cancel" may come while
 * a job runs; anything else means the sides disagree and the worker exits.
 * Returns 1 once a cancel came, 0 before, -1 when the server closed the
 * channel. */
static int channel_cancel(struct kind_job *job)
{
	static char buf[PROTO_MAX_MSG + 1];
	const char *t;
	json_t *msg;
	ssize_t n;

	while ((n = recv_msg(buf, sizeof buf, MSG_DONTWAIT)) > 0) {
		msg = parse_msg(buf, (size_t)n, &t);
		if (strcmp(t, "cancel") != 0)
			die(EXIT_PROTOCOL, "malformed message: only cancel may "
			    "come while a job runs");
		json_decref(msg);
		job->canceled = 1;
	}
	return n == 0 ? -1 : job->canceled;
}

/* handle_run answers one "run" (job id, kind, args borrowed; grace_ms and
 * output_cap already defaulted) with its "out" messages, then one "done". */
static void handle_run(const char *id, const char *kind, const json_t *args,
		       int grace_ms, json_int_t output_cap)
{
	struct kind_job job = {
		.grace_ms = grace_ms, .output_cap = (size_t)output_cap,
		.channel_fd = PROTO_FD, .channel_cancel = channel_cancel,
		.exit_code = -1, .on_output = hand_output,
	};
	struct sample before, after;
	char error[256] = "", marker[96];
	const char *instance = getenv("JOBPOOL_INSTANCE");

	if (instance) {
		snprintf(marker, sizeof marker, "%.40s/%.40s", instance, id);
		job.marker = marker;
	}
	json_t *result;
	int ok;

	sample_take(&before);
	running_id = id;
	result = run_job(kind, args, &job, error, sizeof error);
	sample_take(&after);
	ok = result && !*error;
	if (!job.output_handed) {
		send_output(id, job.output, "stdout", 1);
		send_output(id, job.output, "stderr", 2);
	}
	if (send_msg(done_new(id, ok, result, error, &job, &before, &after)) != 0 &&
	    send_msg(done_new(id, 0, NULL, "result too large", &job, &before,
			      &after)) != 0)
		die(EXIT_CHANNEL, "cannot send done");
	json_decref(job.output);
}

/* ---- groups (see protocol.h) ---- */

struct gjob {
	char id[32];
	char kind[32];
	json_t *args;           /* owned */
	int dropped;
};

/* Group jobs received and not started yet, oldest first.  The server hands
 * a worker at most two groups ahead, so this never fills; a server that
 * overfills it is a protocol error. */
#define QUEUE_MAX (4 * PROTO_GROUP_MAX)
static struct gjob queue[QUEUE_MAX];
static int qhead, qlen;

/* Shared with the reporter thread, under lock: whether group jobs are
 * queued or running, the job running now, and the results not sent yet. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int in_group;
static struct {
	int active, announced;
	char id[32];
	json_int_t wall_us;
	struct timespec mono;
} cur;
static const char results_head[] = "{\"t\":\"results\",\"jobs\":[";
static char results[PROTO_MAX_MSG + 1];
static size_t results_len;
static int results_n;

/* flush_results sends the results gathered so far; lock is held. */
static void flush_results(void)
{
	if (!results_n)
		return;
	memcpy(results + results_len, "]}", 2);
	send_text(results, results_len + 2);
	results_len = 0;
	results_n = 0;
}

/* add_result appends one job's outcome (JSON text of len bytes) to the
 * results, sending them first when it would not fit; lock is held.
 * Returns -1 when the text alone is too large for any message. */
static int add_result(const char *text, size_t len)
{
	size_t room = PROTO_MAX_MSG - sizeof(results_head) - 4;

	if (len > room)
		return -1;
	if (results_n && results_len + 1 + len + 2 > PROTO_MAX_MSG)
		flush_results();
	if (!results_n) {
		memcpy(results, results_head, sizeof(results_head) - 1);
		results_len = sizeof(results_head) - 1;
	} else {
		results[results_len++] = ',';
	}
	memcpy(results + results_len, text, len);
	results_len += len;
	results_n++;
	return 0;
}

static json_int_t elapsed_us(const struct timespec *a, const struct timespec *b)
{
	return (json_int_t)(b->tv_sec - a->tv_sec) * 1000000 +
	       (b->tv_nsec - a->tv_nsec) / 1000;
}

/* reporter is the second thread: while group jobs are on hand it looks,
 * every millisecond, whether the job running now has run for a
 * millisecond, and then tells the server which job it is (after the results
 * of the jobs before it).  A function kind holds the main thread until it
 * returns, so only another thread can say this in time. */
static void *reporter(void *unused)
{
	const struct timespec tick = { 0, 1000000 };
	struct timespec now;
	char msg[160];
	int n;

	for (;;) {
		pthread_mutex_lock(&lock);
		while (!in_group)
			pthread_cond_wait(&wake, &lock);
		pthread_mutex_unlock(&lock);
		nanosleep(&tick, NULL);
		pthread_mutex_lock(&lock);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (cur.active && !cur.announced &&
		    elapsed_us(&cur.mono, &now) >= 1000) {
			flush_results();
			n = snprintf(msg, sizeof msg, "{\"t\":\"started\","
				     "\"job\":\"%s\",\"started_us\":%lld,"
				     "\"run_us\":%lld}", cur.id,
				     (long long)cur.wall_us,
				     (long long)elapsed_us(&cur.mono, &now));
			send_text(msg, (size_t)n);
			cur.announced = 1;
		}
		pthread_mutex_unlock(&lock);
	}
	return NULL;
}

/* result_text returns the new JSON text of one group job's outcome. */
static char *result_text(const char *id, int ok, json_t *result,
			 const char *error, const struct kind_job *job,
			 const struct sample *before, const struct sample *after,
			 json_int_t started_us)
{
	json_t *m = done_new(id, ok, result, error, job, before, after);
	char *text;

	if (!m || json_object_del(m, "t") != 0 ||
	    json_object_set_new(m, "started_us", json_integer(started_us)) != 0)
		die(EXIT_CHANNEL, "out of memory");
	text = json_dumps(m, JSON_COMPACT);
	json_decref(m);
	if (!text)
		die(EXIT_CHANNEL, "out of memory");
	return text;
}

/* When the last group job ended, by the wall clock (see run_group_job). */
static json_int_t last_end_us;

/* clock_pair reads the monotonic clock and the wall clock at (nearly) one
 * instant: a job's end is reported as its wall-clock start plus its
 * monotonic run, so a gap between the two readings (the worker preempted
 * in between, which a loaded machine does for milliseconds) would move
 * the end past the real one.  The wall clock is read between two
 * monotonic readings, again if they are more than 20 us apart, and the
 * later one is kept: the reported end is then never late. */
static void clock_pair(struct timespec *mono, json_int_t *wall_us)
{
	struct timespec before, wall;
	int i;

	for (i = 0; i < 5; i++) {
		clock_gettime(CLOCK_MONOTONIC, &before);
		clock_gettime(CLOCK_REALTIME, &wall);
		clock_gettime(CLOCK_MONOTONIC, mono);
		if (elapsed_us(&before, mono) <= 20)
			break;
	}
	*wall_us = (json_int_t)wall.tv_sec * 1000000 + wall.tv_nsec / 1000;
}

/* run_group_job runs one job of a group and adds its outcome to the
 * results. */
static void run_group_job(const struct gjob *g)
{
	struct kind_job job = {
		.grace_ms = DEFAULT_GRACE_MS, .output_cap = DEFAULT_OUTPUT_CAP,
		.channel_fd = -1, .exit_code = -1,
	};
	struct sample before, after;
	char error[256] = "", *text;
	json_t *result;
	json_int_t started_us;
	int ok;

	getrusage(RUSAGE_SELF, &before.usage);
	clock_pair(&before.clock, &started_us);
	/* The end is the start plus the monotonic run; should the wall clock
	 * be stepped back, a start never goes before the last job's end, so
	 * this worker's jobs never seem to overlap. */
	if (started_us < last_end_us)
		started_us = last_end_us;
	pthread_mutex_lock(&lock);
	cur.active = 1;
	cur.announced = 0;
	memcpy(cur.id, g->id, sizeof(cur.id));
	cur.wall_us = started_us;
	cur.mono = before.clock;
	pthread_mutex_unlock(&lock);
	result = run_job(g->kind, g->args, &job, error, sizeof error);
	sample_take(&after);
	last_end_us = started_us + elapsed_us(&before.clock, &after.clock);
	ok = result && !*error;
	text = result_text(g->id, ok, result, error, &job, &before, &after,
			   started_us);
	pthread_mutex_lock(&lock);
	cur.active = 0;
	if (add_result(text, strlen(text)) != 0) {
		free(text);
		text = result_text(g->id, 0, NULL, "result too large", &job,
				   &before, &after, started_us);
		if (add_result(text, strlen(text)) != 0)
			die(EXIT_CHANNEL, "cannot send results");
	}
	pthread_mutex_unlock(&lock);
	free(text);
	json_decref(job.output);
}

/* run_next takes the oldest queued group job and runs it, or answers it as
 * dropped. */
static void run_next(void)
{
	struct gjob *g = &queue[qhead];
	char text[96];
	int n;

	qhead = (qhead + 1) % QUEUE_MAX;
	qlen--;
	if (g->dropped) {
		n = snprintf(text, sizeof text, "{\"job\":\"%s\","
			     "\"dropped\":true}", g->id);
		pthread_mutex_lock(&lock);
		add_result(text, (size_t)n);
		pthread_mutex_unlock(&lock);
	} else {
		run_group_job(g);
	}
	json_decref(g->args);
	g->args = NULL;
}

/* add_group queues the jobs of a "group" message, or exits when it is
 * malformed. */
static void add_group(json_t *msg)
{
	const json_t *jobs = json_object_get(msg, "jobs");
	json_t *j;
	const char *id, *kind;
	json_t *args;
	struct gjob *g;
	size_t i;

	if (!json_is_array(jobs) || json_array_size(jobs) == 0 ||
	    json_array_size(jobs) > PROTO_GROUP_MAX ||
	    qlen + (int)json_array_size(jobs) > QUEUE_MAX)
		die(EXIT_PROTOCOL, "malformed message: bad group");
	json_array_foreach(jobs, i, j) {
		if (json_unpack(j, "{s:s, s:s, s:o}", "job", &id, "kind", &kind,
				"args", &args) == -1 || !json_is_object(args) ||
		    strlen(id) >= sizeof(g->id) || strlen(kind) >= sizeof(g->kind))
			die(EXIT_PROTOCOL, "malformed message: bad group job");
		g = &queue[(qhead + qlen) % QUEUE_MAX];
		strcpy(g->id, id);
		strcpy(g->kind, kind);
		g->args = json_incref(args);
		g->dropped = 0;
		qlen++;
	}
	pthread_mutex_lock(&lock);
	if (!in_group) {
		in_group = 1;
		pthread_cond_signal(&wake);
	}
	pthread_mutex_unlock(&lock);
}

/* drop marks a queued group job not to be started; a job not held (it
 * ran already) is left alone: its outcome is on its way. */
static void drop(const json_t *msg)
{
	const char *id = json_string_value(json_object_get(msg, "job"));
	int i;

	for (i = 0; id && i < qlen; i++)
		if (strcmp(queue[(qhead + i) % QUEUE_MAX].id, id) == 0)
			queue[(qhead + i) % QUEUE_MAX].dropped = 1;
}

/* handle_message acts on one message received between jobs: a "run" runs;
 * a "group" is queued and a "drop" marks a queued job; a "cancel" is late
 * (its job ended already) and ignored; anything else makes the worker
 * exit. */
static void handle_message(const char *buf, size_t len)
{
	json_int_t output_cap = DEFAULT_OUTPUT_CAP;
	int grace_ms = DEFAULT_GRACE_MS;
	const char *t, *id, *kind;
	json_error_t jerr;
	json_t *msg = parse_msg(buf, len, &t);
	json_t *args;
	char line[300];

	if (strcmp(t, "cancel") == 0 || strcmp(t, "group") == 0 ||
	    strcmp(t, "drop") == 0) {
		if (*t == 'g')
			add_group(msg);
		else if (*t == 'd')
			drop(msg);
		json_decref(msg);
		return;
	}
	if (strcmp(t, "run") != 0 ||
	    json_unpack_ex(msg, &jerr, 0, "{s:s, s:s, s:o, s?:i, s?:I}",
			   "job", &id, "kind", &kind, "args", &args,
			   "grace_ms", &grace_ms, "output_cap", &output_cap) == -1 ||
	    !json_is_object(args) || grace_ms < 0 || output_cap < 0) {
		snprintf(line, sizeof line, "malformed message: %s",
			 strcmp(t, "run") != 0 ? "unknown type" :
			 *jerr.text ? jerr.text : "bad args, grace_ms or output_cap");
		die(EXIT_PROTOCOL, line);
	}
	handle_run(id, kind, args, grace_ms, output_cap);
	json_decref(msg);
}

/* ---- the lease watchdog ----
 *
 * With several nodes on one database, a node that stops renewing its lease
 * has its jobs re-queued by the others.  A frozen server (SIGSTOP, a paused
 * VM) cannot stop its workers then, so each worker stops itself: the server
 * shares one page (JOBPOOL_LEASE_FD) holding the CLOCK_MONOTONIC deadline,
 * in µs, until which its lease is known good, moved on at every renewal.
 * Past it, the worker kills its command's process group and exits, before
 * any other node may run the job again. */
static void *watchdog(void *arg)
{
	const _Atomic int64_t *deadline = arg;
	struct timespec now;
	int64_t d;

	for (;;) {
		usleep(100000);
		d = atomic_load(deadline);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (d > 0 && (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000 > d) {
			pid_t g = command_group;

			if (g > 0)
				kill(-g, SIGKILL);
			_exit(EXIT_FENCED);
		}
	}
	return NULL;
}

static void start_watchdog(void)
{
	const char *v = getenv("JOBPOOL_LEASE_FD");
	pthread_t thread;
	void *page;
	int fd;

	if (!v)
		return;
	fd = atoi(v);
	unsetenv("JOBPOOL_LEASE_FD");   /* not for the jobs */
	page = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (page == MAP_FAILED)
		die(EXIT_CHANNEL, "cannot map the lease page");
	if (pthread_create(&thread, NULL, watchdog, page) != 0)
		die(EXIT_CHANNEL, "cannot start the lease watchdog");
}

int main(int argc, char **argv)
{
	static char buf[PROTO_MAX_MSG + 1];
	pthread_t thread;
	ssize_t len;

	setup_process(parse_args(argc, argv));
	start_watchdog();
	if (send_msg(json_pack("{s:s, s:I}", "t", "ready",
			       "pid", (json_int_t)getpid())) != 0)
		die(EXIT_CHANNEL, "cannot send ready");
	if (pthread_create(&thread, NULL, reporter, NULL) != 0)
		die(EXIT_CHANNEL, "cannot start the reporter thread");
	for (;;) {
		if (!qlen) {
			/* Nothing on hand: send what is done, then wait. */
			pthread_mutex_lock(&lock);
			flush_results();
			in_group = 0;
			pthread_mutex_unlock(&lock);
			len = recv_msg(buf, sizeof buf, 0);
			if (len <= 0)
				break;
			handle_message(buf, (size_t)len);
			continue;
		}
		/* Before each group job: drops (and more groups) first. */
		while ((len = recv_msg(buf, sizeof buf, MSG_DONTWAIT)) > 0)
			handle_message(buf, (size_t)len);
		if (len == 0)
			break;  /* the server closed: it settles what it handed */
		if (qlen)
			run_next();
	}
	return 0;
}
