/* main.c - jobpool-worker: runs jobs for jobpoold, one at a time.
 *
 * The server starts it as `jobpool-worker --parent PID` with the channel on
 * PROTO_FD (see protocol.h).  It says "ready", then answers each "run" with
 * one "done" until the server closes the channel.  A job that crashes or
 * exits takes the worker with it; the server sees that in wait4() and starts
 * a new one.
 *
 * Exit status: 0 the server closed the channel, 1 the parent was already
 * gone at start, 2 bad usage or a malformed message, 3 the channel or
 * memory failed.  Jobs of kind "fail" exit with their own status.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* die writes "jobpool-worker: what" to stderr and exits with status. */
static void die(int status, const char *what)
{
	fprintf(stderr, "jobpool-worker: %s\n", what);
	exit(status);
}

/* parse_parent returns the PID given as `--parent PID`, or exits. */
static pid_t parse_parent(int argc, char **argv)
{
	char *end;
	long pid;

	if (argc != 3 || strcmp(argv[1], "--parent") != 0)
		die(EXIT_PROTOCOL, "usage: jobpool-worker --parent PID");
	errno = 0;
	pid = strtol(argv[2], &end, 10);
	if (errno || *end || end == argv[2] || pid <= 1)
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
static int send_msg(json_t *msg)
{
	char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	size_t len = text ? strlen(text) : 0;
	ssize_t sent;

	json_decref(msg);
	if (!text)
		die(EXIT_CHANNEL, "out of memory");
	if (len > PROTO_MAX_MSG) {
		free(text);
		return -1;
	}
	do
		sent = send(PROTO_FD, text, len, MSG_NOSIGNAL);
	while (sent == -1 && errno == EINTR);
	free(text);
	if (sent == -1)
		die(EXIT_CHANNEL, strerror(errno));
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
	FILE *status = fopen("/proc/self/status", "re");
	char line[128];
	long long kb = -1;

	if (!status)
		return (json_int_t)usage->ru_maxrss;
	while (kb < 0 && fgets(line, sizeof line, status))
		if (sscanf(line, "VmHWM: %lld kB", &kb) != 1)
			kb = -1;
	fclose(status);
	return kb < 0 ? (json_int_t)usage->ru_maxrss : (json_int_t)kb;
}

/* done_new returns a new "done" message; result is stolen and may be NULL,
 * error is used only when it is.  Returns NULL when out of memory. */
static json_t *done_new(const char *job, json_t *result, const char *error,
			const struct sample *before, const struct sample *after)
{
	json_int_t run_us =
		(json_int_t)(after->clock.tv_sec - before->clock.tv_sec) * 1000000 +
		(after->clock.tv_nsec - before->clock.tv_nsec) / 1000;

	return json_pack("{s:s, s:s, s:b, s:o?, s:s?, s:I, s:I, s:I, s:I}",
			 "t", "done", "job", job, "ok", result != NULL,
			 "result", result, "error", result ? NULL : error,
			 "run_us", run_us,
			 "user_us", tv_us(before->usage.ru_utime, after->usage.ru_utime),
			 "sys_us", tv_us(before->usage.ru_stime, after->usage.ru_stime),
			 "maxrss_kb", peak_rss_kb(&after->usage));
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

/* run_job runs kind on args (borrowed) and returns the new result, or NULL
 * with the reason written to error.  The server validated args already;
 * checking again here keeps a server bug from reaching a kind's run. */
static json_t *run_job(const char *name, const json_t *args, char *error,
		       size_t size)
{
	const struct kind *kind = kind_find(name);
	struct problem problem = { 0 };
	const char *why = "the job failed without a reason";
	json_t *result;

	if (!kind) {
		snprintf(error, size, "unknown kind \"%s\"", name);
		return NULL;
	}
	kind->validate(args, note_problem, &problem);
	if (problem.count) {
		snprintf(error, size, "%s", problem.text);
		return NULL;
	}
	result = kind->run(args, &why);
	if (!result)
		snprintf(error, size, "%s", why);
	return result;
}

/* handle_run answers one "run" message with one "done". */
static void handle_run(const char *job, const char *kind, const json_t *args)
{
	struct sample before, after;
	char error[256] = "";
	json_t *result;

	sample_take(&before);
	result = run_job(kind, args, error, sizeof error);
	sample_take(&after);
	if (send_msg(done_new(job, result, error, &before, &after)) == 0)
		return;
	if (send_msg(done_new(job, NULL, "result too large", &before, &after)) != 0)
		die(EXIT_CHANNEL, "cannot send done");
}

/* handle_message parses one message and acts on it; a message that is not
 * a well-formed "run" means the two sides disagree, so the worker exits. */
static void handle_message(const char *buf, size_t len)
{
	json_error_t jerr;
	json_t *msg = json_loadb(buf, len, 0, &jerr);
	const char *t, *job, *kind;
	json_t *args;
	char line[300];

	if (!msg) {
		snprintf(line, sizeof line, "malformed message: %s", jerr.text);
		die(EXIT_PROTOCOL, line);
	}
	if (json_unpack_ex(msg, &jerr, 0, "{s:s, s:s, s:s, s:o}", "t", &t,
			   "job", &job, "kind", &kind, "args", &args) == -1 ||
	    strcmp(t, "run") != 0 || !json_is_object(args)) {
		snprintf(line, sizeof line, "malformed message: %s",
			 *jerr.text ? jerr.text : "expected a run with args object");
		die(EXIT_PROTOCOL, line);
	}
	handle_run(job, kind, args);
	json_decref(msg);
}

/* recv_msg receives one message into buf.  Returns its length, or 0 when
 * the server closed the channel; exits on errors and oversized messages. */
static size_t recv_msg(char *buf, size_t size)
{
	ssize_t n;

	do
		n = recv(PROTO_FD, buf, size, 0);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		die(EXIT_CHANNEL, strerror(errno));
	/* SEQPACKET truncates silently; a full buffer means it did. */
	if ((size_t)n >= size)
		die(EXIT_PROTOCOL, "malformed message: too large");
	return (size_t)n;
}

int main(int argc, char **argv)
{
	static char buf[PROTO_MAX_MSG + 1];
	size_t len;

	setup_process(parse_parent(argc, argv));
	if (send_msg(json_pack("{s:s, s:I}", "t", "ready",
			       "pid", (json_int_t)getpid())) != 0)
		die(EXIT_CHANNEL, "cannot send ready");
	while ((len = recv_msg(buf, sizeof buf)) > 0)
		handle_message(buf, len);
	return 0;
}
