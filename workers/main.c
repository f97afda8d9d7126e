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
		.exit_code = -1,
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
	result = run_job(kind, args, &job, error, sizeof error);
	sample_take(&after);
	ok = result && !*error;
	send_output(id, job.output, "stdout", 1);
	send_output(id, job.output, "stderr", 2);
	if (send_msg(done_new(id, ok, result, error, &job, &before, &after)) != 0 &&
	    send_msg(done_new(id, 0, NULL, "result too large", &job, &before,
			      &after)) != 0)
		die(EXIT_CHANNEL, "cannot send done");
	json_decref(job.output);
}

/* handle_message acts on one message received between jobs: a "run" runs;
 * a "cancel" is late (its job ended already) and ignored; anything else
 * makes the worker exit. */
static void handle_message(const char *buf, size_t len)
{
	json_int_t output_cap = DEFAULT_OUTPUT_CAP;
	int grace_ms = DEFAULT_GRACE_MS;
	const char *t, *id, *kind;
	json_error_t jerr;
	json_t *msg = parse_msg(buf, len, &t);
	json_t *args;
	char line[300];

	if (strcmp(t, "cancel") == 0) {
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

int main(int argc, char **argv)
{
	static char buf[PROTO_MAX_MSG + 1];
	ssize_t len;

	setup_process(parse_args(argc, argv));
	if (send_msg(json_pack("{s:s, s:I}", "t", "ready",
			       "pid", (json_int_t)getpid())) != 0)
		die(EXIT_CHANNEL, "cannot send ready");
	while ((len = recv_msg(buf, sizeof buf, 0)) > 0)
		handle_message(buf, (size_t)len);
	return 0;
}
