/* command.c - the "command" kind: runs a program without a shell, in its own
 * process group, captures its output and makes sure nothing of it outlives
 * the job.
 *
 * The life of a command job:
 *   1. command_spawn forks.  The child makes its own process group, asks for
 *      SIGKILL should the worker die, resets the signal state it inherited,
 *      wires its pipes to 0/1/2, enters cwd and execs argv with the cleaned
 *      environment.  A chdir or exec failure comes back as an errno through
 *      a close-on-exec pipe, which an exec that works simply closes.
 *   2. command_wait polls the output pipes, the stdin pipe, a pidfd of the
 *      child and the server channel until the child exits.  A cancel sends
 *      SIGTERM to the group, and SIGKILL grace_ms later.
 *   3. command_end, with the child exited but not yet reaped (a zombie still
 *      holds its group id, so the id cannot have been reused), SIGKILLs the
 *      group, reaps the child with wait4 for its exact rusage, then kills
 *      every process that was reparented to the worker, which is a child
 *      subreaper: that catches what left the group with setsid or a double
 *      fork.  So no process of a job survives its end, a normal end too.
 *      This kills *every* child of the calling process: run this kind only
 *      where the job's processes are its only children (the worker).
 *   4. The output, made valid UTF-8 (kind_utf8_string), goes back in
 *      job->output.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kinds.h"

#define COMMAND_MAX_ARGV 256
/* Variables the server gives its workers (the token among them); a job must
 * never see them. */
#define HIDDEN_PREFIX "JOBPOOL_"
/* How long the end may wait for the pipes to reach EOF once every process
 * of the job is dead, and for killed strays to go. */
#define DRAIN_MS 500
#define STRAYS_MS 2000
/* Without a pidfd the loop polls for the child's exit this often. */
#define TICK_MS 10

static const char *const command_fields[] = { "argv", "env", "cwd", "stdin",
					      NULL };

/* plain_string returns the value of member when it is a string without NUL
 * (which exec could not pass on), else NULL. */
static const char *plain_string(const json_t *member)
{
	const char *s = json_string_value(member);

	return s && strlen(s) == json_string_length(member) ? s : NULL;
}

/* validate_argv reports argv unless it is an array of 1..COMMAND_MAX_ARGV
 * non-empty strings; only the first bad item is named. */
static void validate_argv(const json_t *argv, kind_err_fn err, void *ctx)
{
	char field[32];
	const char *s;
	size_t i;

	if (!argv) {
		err(ctx, "argv", "is required");
		return;
	}
	if (!json_is_array(argv) || json_array_size(argv) < 1 ||
	    json_array_size(argv) > COMMAND_MAX_ARGV) {
		err(ctx, "argv", "must be an array of 1 to 256 strings");
		return;
	}
	for (i = 0; i < json_array_size(argv); i++) {
		s = plain_string(json_array_get(argv, i));
		if (!s || !*s) {
			snprintf(field, sizeof field, "argv[%zu]", i);
			err(ctx, field, "must be a non-empty string without NUL");
			return;
		}
	}
}

/* validate_env reports env unless it is an object of strings whose names
 * are non-empty and hold no '='; only the first bad member is named. */
static void validate_env(const json_t *env, kind_err_fn err, void *ctx)
{
	char field[96];
	const char *name;
	json_t *value;

	if (!env)
		return;
	if (!json_is_object(env)) {
		err(ctx, "env", "must be an object of strings");
		return;
	}
	json_object_foreach((json_t *)env, name, value) {
		if (!*name || strchr(name, '=')) {
			err(ctx, "env", "names must be non-empty and hold no '='");
			return;
		}
		if (!plain_string(value)) {
			char seg[80];

			kind_pointer_escape(name, seg, sizeof(seg));
			snprintf(field, sizeof field, "env/%s", seg);
			err(ctx, field, "must be a string without NUL");
			return;
		}
	}
}

/* command_validate requires "argv" and allows "env", "cwd" and "stdin". */
static void command_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	const json_t *cwd = json_object_get(args, "cwd");
	const json_t *input = json_object_get(args, "stdin");

	if (kind_check_only(args, command_fields, err, ctx) && !json_is_object(args))
		return;
	validate_argv(json_object_get(args, "argv"), err, ctx);
	validate_env(json_object_get(args, "env"), err, ctx);
	if (cwd && (!plain_string(cwd) || !*json_string_value(cwd)))
		err(ctx, "cwd", "must be a non-empty string without NUL");
	if (input && !json_is_string(input))
		err(ctx, "stdin", "must be a string");
}

/* One output stream of the child: the first cap bytes, and a count of the
 * rest, read and thrown away so the child never blocks on a full pipe. */
struct stream {
	int fd;                 /* read end, -1 once at EOF */
	char *buf;              /* new */
	size_t len, size;
	size_t dropped;
	/* buf[0 .. handed) went to job->on_output as text_len bytes of text;
	 * cut: the text reached the cap, nothing more goes */
	size_t handed, text_len;
	int cut;
};

/* Everything about one running command.  Strings in argv are borrowed from
 * args; argv, envp and the strings in envp are new. */
struct command {
	char **argv;
	char **envp;
	const char *cwd;
	const char *input;      /* stdin text, or NULL for /dev/null */
	size_t input_len, input_done;
	int in_fd;              /* write end of the stdin pipe, or -1 */
	struct stream out[2];   /* stdout, stderr */
	pid_t pid;
	int pidfd;              /* -1 when the kernel has no pidfd_open */
	int chan_fd;            /* -1 once the channel said cancel or closed */
	long long kill_at;      /* when SIGKILL follows SIGTERM; 0 when not due */
	int status;
};

/* A sentence for job->error that needs a detail.  One job runs at a time in
 * a worker, so one buffer does. */
static char message[320];

static long long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* hidden says whether the environment entry var must not reach the job:
 * the server's own variables, and those env (may be NULL) overrides. */
static int hidden(const char *var, const json_t *env)
{
	size_t len = strcspn(var, "=");
	const char *name;
	json_t *value;

	if (strncmp(var, HIDDEN_PREFIX, strlen(HIDDEN_PREFIX)) == 0)
		return 1;
	json_object_foreach((json_t *)env, name, value)
		if (strncmp(name, var, len) == 0 && name[len] == '\0')
			return 1;
	return 0;
}

/* build_envp sets c->envp to a new copy of the worker's environment without
 * hidden variables, plus the members of env (borrowed, may be NULL), plus
 * JOBPOOL_JOB=marker (the job's identity, see kinds.h).
 * Returns 0, or -1 when out of memory (c->envp then holds what was made,
 * for command_free). */
static int build_envp(struct command *c, const json_t *env,
		      const char *marker)
{
	size_t count = 0, n = 0;
	const char *name;
	json_t *value;
	char **var;

	for (var = environ; var && *var; var++)
		count++;
	c->envp = calloc(count + json_object_size(env) + 2, sizeof *c->envp);
	if (!c->envp)
		return -1;
	for (var = environ; var && *var; var++)
		if (!hidden(*var, env) && !(c->envp[n++] = strdup(*var)))
			return -1;
	if (marker && asprintf(&c->envp[n++], "JOBPOOL_JOB=%s", marker) == -1) {
		c->envp[n - 1] = NULL;
		return -1;
	}
	json_object_foreach((json_t *)env, name, value)
		if (asprintf(&c->envp[n++], "%s=%s", name,
			     json_string_value(value)) == -1) {
			c->envp[n - 1] = NULL;
			return -1;
		}
	return 0;
}

/* command_init fills c from args (borrowed, validated).  Returns 0, or -1
 * with job->error set; the caller calls command_free either way. */
static int command_init(struct command *c, const json_t *args,
			struct kind_job *job)
{
	const json_t *argv = json_object_get(args, "argv");
	const json_t *input = json_object_get(args, "stdin");
	size_t i, n = json_array_size(argv);

	c->in_fd = c->out[0].fd = c->out[1].fd = c->pidfd = -1;
	c->chan_fd = job->channel_cancel ? job->channel_fd : -1;
	c->cwd = json_string_value(json_object_get(args, "cwd"));
	c->input = json_string_value(input);
	c->input_len = json_string_length(input);
	if (n < 1 || n > COMMAND_MAX_ARGV) {
		job->error = "argv must be an array of 1 to 256 strings";
		return -1;
	}
	c->argv = calloc(n + 1, sizeof *c->argv);
	if (!c->argv || build_envp(c, json_object_get(args, "env"),
					  job->marker) == -1) {
		job->error = "out of memory";
		return -1;
	}
	for (i = 0; i < n; i++)
		if (!(c->argv[i] = (char *)json_string_value(json_array_get(argv, i)))) {
			job->error = "argv must hold only strings";
			return -1;
		}
	return 0;
}

static void command_free(struct command *c)
{
	char **var;
	int i;

	for (var = c->envp; var && *var; var++)
		free(*var);
	free(c->envp);
	free(c->argv);
	close_fd(&c->in_fd);
	close_fd(&c->pidfd);
	for (i = 0; i < 2; i++) {
		close_fd(&c->out[i].fd);
		free(c->out[i].buf);
	}
}

/* What the child sends back through the error pipe when it cannot exec. */
enum { STAGE_SETUP, STAGE_CHDIR, STAGE_EXEC };
struct child_error {
	int stage;
	int err;
};

/* child_fail reports errno at stage to the parent and leaves.  Only
 * async-signal-safe calls from here on: the caller may have threads, and
 * the child of vfork shares the parent's memory (see command_spawn). */
__attribute__((noreturn))
static void child_fail(int err_fd, int stage)
{
	struct child_error e = { stage, errno };
	ssize_t n = write(err_fd, &e, sizeof e);

	(void)n;
	_exit(127);
}

/* The process group of the command running now, 0: none; read by the
 * lease watchdog (main.c), which must kill it from another thread. */
volatile pid_t command_group;

/* child_fds makes fds[0..2] the child's 0, 1 and 2, and leaves every other
 * descriptor (the server channel among them) to be closed by exec.  Any fd
 * below 3 is moved up first so no dup2 can overwrite one still needed. */
static int child_fds(int fds[3], int *err_fd)
{
	int i, fd;

	for (i = 0; i < 4; i++) {
		int *p = i < 3 ? &fds[i] : err_fd;

		if (*p < 3 && (*p = fcntl(*p, F_DUPFD_CLOEXEC, 3)) == -1)
			return -1;
	}
	for (i = 0; i < 3; i++)
		if (dup2(fds[i], i) == -1)
			return -1;
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == -1)
		for (fd = 3; fd < 65536; fd++)
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	return 0;
}

/* child_main becomes the command; it never returns.  It runs in the
 * parent's memory (vfork): it writes only its own locals and environ,
 * which command_spawn puts back. */
__attribute__((noreturn))
static void child_main(const struct command *c, const int parent_fds[3],
		       int err_fd, pid_t parent)
{
	int fds[3] = { parent_fds[0], parent_fds[1], parent_fds[2] };
	sigset_t none;
	int sig;

	setpgid(0, 0);
	/* PDEATHSIG, then a check the parent had not died already. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
		_exit(127);
	/* The worker ignores SIGINT and SIGPIPE, and exec keeps ignored
	 * signals ignored; a command expects the defaults. */
	for (sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (child_fds(fds, &err_fd) == -1)
		child_fail(err_fd, STAGE_SETUP);
	if (c->cwd && chdir(c->cwd) == -1)
		child_fail(err_fd, STAGE_CHDIR);
	/* Through environ, so execvp searches the job's own PATH. */
	environ = c->envp;
	execvp(c->argv[0], c->argv);
	child_fail(err_fd, STAGE_EXEC);
}

/* start_child starts the child that becomes the command.  Returns its pid,
 * or -1 with errno set.  vfork, not fork: no page tables to copy and no
 * copy-on-write faults in the worker afterwards, the larger part of a
 * short command's cost.  Signals stay blocked until the child has reset
 * every handler, so none runs in the child on our memory. */
static pid_t start_child(const struct command *c, const int ends[5],
			 pid_t parent)
{
	char **const our_environ = environ;
	sigset_t all, old;
	pid_t pid;

	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid = vfork();
	if (pid == 0)
		child_main(c, ends, ends[4], parent);
	environ = our_environ;          /* the child set the job's for exec */
	sigprocmask(SIG_SETMASK, &old, NULL);
	return pid;
}

/* spawn_failed sets job->error from what the child reported, and reaps it. */
static void spawn_failed(struct command *c, const struct child_error *e,
			 struct kind_job *job)
{
	if (e->stage == STAGE_CHDIR)
		snprintf(message, sizeof message, "cannot change to directory %.200s: %s",
			 c->cwd, strerror(e->err));
	else if (e->stage == STAGE_EXEC)
		snprintf(message, sizeof message, "cannot run %.200s: %s",
			 c->argv[0], strerror(e->err));
	else
		snprintf(message, sizeof message, "cannot set up the command: %s",
			 strerror(e->err));
	job->error = message;
	while (waitpid(c->pid, NULL, 0) == -1 && errno == EINTR)
		;
	command_group = 0;
	c->pid = 0;
}

/* open_pipes makes the pipes of a spawn; ends[0..2] are the child's 0, 1,
 * 2, ends[3] the parent's end of the error pipe, ends[4] the child's; the
 * parent's ends of the others go into c.  All close-on-exec.  Returns 0,
 * or -1 with errno set (what was opened stays in ends and c to close). */
static int open_pipes(struct command *c, int ends[5])
{
	int p[2], i;

	if (c->input) {
		if (pipe2(p, O_CLOEXEC) == -1)
			return -1;
		ends[0] = p[0];
		c->in_fd = p[1];
	} else if ((ends[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) == -1) {
		return -1;
	}
	for (i = 0; i < 2; i++) {
		if (pipe2(p, O_CLOEXEC) == -1)
			return -1;
		c->out[i].fd = p[0];
		ends[1 + i] = p[1];
	}
	if (pipe2(p, O_CLOEXEC) == -1)
		return -1;
	ends[3] = p[0];
	ends[4] = p[1];
	return 0;
}

/* command_spawn starts the child.  Returns 0, or -1 with job->error set
 * (the child, if any, already reaped). */
static int command_spawn(struct command *c, struct kind_job *job)
{
	int ends[5] = { -1, -1, -1, -1, -1 };
	struct child_error e;
	pid_t parent = getpid();
	ssize_t n;
	int i, rc = -1;


	if (open_pipes(c, ends) == -1)
		goto fail;
	fflush(NULL);
	c->pid = start_child(c, ends, parent);
	if (c->pid == -1)
		goto fail;
	command_group = c->pid;
	/* Both sides call setpgid so the group exists whoever runs first. */
	setpgid(c->pid, c->pid);
	for (i = 0; i < 5; i++)
		if (i != 3)
			close_fd(&ends[i]);
	do
		n = read(ends[3], &e, sizeof e);
	while (n == -1 && errno == EINTR);
	if (n == (ssize_t)sizeof e) {
		spawn_failed(c, &e, job);
		goto out;
	}
	c->pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
	for (i = 0; i < 2; i++)
		fcntl(c->out[i].fd, F_SETFL, O_NONBLOCK);
	if (c->in_fd >= 0)
		fcntl(c->in_fd, F_SETFL, O_NONBLOCK);
	rc = 0;
	goto out;
fail:
	c->pid = 0;
	snprintf(message, sizeof message, "cannot start the command: %s",
		 strerror(errno));
	job->error = message;
out:
	for (i = 0; i < 5; i++)
		close_fd(&ends[i]);
	return rc;
}

/* stream_read reads what is ready on s, keeping up to cap bytes.  EOF or
 * an error closes it.  Returns the bytes read, 0 when none. */
static size_t stream_read(struct stream *s, size_t cap)
{
	char chunk[64 * 1024];
	ssize_t n = read(s->fd, chunk, sizeof chunk);
	size_t keep, want;
	char *bigger;

	if (n == -1 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (n <= 0) {
		close_fd(&s->fd);
		return 0;
	}
	keep = s->len < cap ? cap - s->len : 0;
	keep = keep < (size_t)n ? keep : (size_t)n;
	if (s->len + keep > s->size) {
		want = s->size ? s->size * 2 : 4096;
		want = want < s->len + keep ? s->len + keep : want;
		want = want > cap ? cap : want;
		bigger = realloc(s->buf, want);
		/* Out of memory: what cannot be kept counts as dropped. */
		keep = bigger ? keep : 0;
		s->buf = bigger ? bigger : s->buf;
		s->size = bigger ? want : s->size;
	}
	if (keep)
		memcpy(s->buf + s->len, chunk, keep);
	s->len += keep;
	s->dropped += (size_t)n - keep;
	return (size_t)n;
}

/* stream_hand gives job->on_output the text of what s read since it last
 * did, as output_new will make it (so the pieces a follower saw are the
 * stored output); at_end hands a last incomplete character as well.  On
 * the stack, in slices: no allocation that could fail and lose a piece. */
static void stream_hand(struct stream *s, int fd, struct kind_job *job,
			int at_end)
{
	char text[3 * 4096];
	size_t used, took, slice;
	int last;

	if (!job->on_output)
		return;
	while (s->handed < s->len && !s->cut) {
		slice = s->len - s->handed < 4096 ? s->len - s->handed : 4096;
		/* A slice's border is no end: a character across it is held
		 * back and starts the next slice. */
		last = s->handed + slice == s->len;
		used = s->text_len;
		took = kind_utf8_text(s->buf + s->handed, slice, text, &used,
				      job->output_cap, last && at_end,
				      &s->cut);
		if (used > s->text_len) {
			job->on_output(job, fd, text, used - s->text_len);
			job->output_handed = 1;
		}
		s->text_len = used;
		s->handed += took;
		if (!took)
			return;
	}
}

/* write_quiet is write without SIGPIPE: a pipe whose reader is gone would
 * raise it, killing a caller that does not ignore it.  It is blocked
 * around the write and the one the write raised is taken back. */
static ssize_t write_quiet(int fd, const void *buf, size_t len)
{
	struct timespec zero = { 0, 0 };
	sigset_t pipe_set, old, pending;
	int was_pending, saved;
	ssize_t n;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigprocmask(SIG_BLOCK, &pipe_set, &old);
	sigpending(&pending);
	was_pending = sigismember(&pending, SIGPIPE);
	n = write(fd, buf, len);
	saved = errno;
	if (n == -1 && saved == EPIPE && !was_pending)
		sigtimedwait(&pipe_set, NULL, &zero);
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = saved;
	return n;
}

/* input_write writes what the stdin pipe takes, and closes it once all of
 * the input is written or the command stopped reading (EPIPE). */
static void input_write(struct command *c)
{
	ssize_t n = 0;

	if (c->input_done < c->input_len)
		n = write_quiet(c->in_fd, c->input + c->input_done,
				c->input_len - c->input_done);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0)
		c->input_done += (size_t)n;
	if (n == -1 || c->input_done == c->input_len)
		close_fd(&c->in_fd);
}

/* kill_job sends sig to the job's group, and to the child itself should it
 * have moved to a group of its own. */
static void kill_job(const struct command *c, int sig)
{
	kill(-c->pid, sig);
	if (getpgid(c->pid) != c->pid)
		kill(c->pid, sig);
}

/* start_cancel begins the TERM-then-KILL of the job, once. */
static void start_cancel(struct command *c, struct kind_job *job)
{
	c->chan_fd = -1;
	if (job->killed)
		return;
	job->killed = 1;
	job->canceled = 1;
	kill_job(c, job->grace_ms > 0 ? SIGTERM : SIGKILL);
	if (job->grace_ms > 0)
		c->kill_at = now_ms() + job->grace_ms;
}

/* child_exited says whether the child has exited, without reaping it. */
static int child_exited(const struct command *c)
{
	siginfo_t info;

	info.si_pid = 0;
	if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG | WNOWAIT) == -1)
		return errno != EINTR;
	return info.si_pid == c->pid;
}

enum { WATCH_OUT, WATCH_ERR, WATCH_IN, WATCH_PID, WATCH_CHAN, WATCH_COUNT };

/* wait_timeout returns poll's timeout: until the SIGKILL is due, and a
 * tick when there is no pidfd to say the child exited. */
static int wait_timeout(const struct command *c)
{
	long long left;

	if (!c->kill_at)
		return c->pidfd >= 0 ? -1 : TICK_MS;
	left = c->kill_at - now_ms();
	left = left < 0 ? 0 : left;
	return (int)(c->pidfd < 0 && left > TICK_MS ? TICK_MS : left);
}

/* command_wait serves the child's pipes and the channel until the child
 * exits. */
static void command_wait(struct command *c, struct kind_job *job)
{
	struct pollfd p[WATCH_COUNT];
	int i;

	while (!child_exited(c)) {
		p[WATCH_OUT] = (struct pollfd){ c->out[0].fd, POLLIN, 0 };
		p[WATCH_ERR] = (struct pollfd){ c->out[1].fd, POLLIN, 0 };
		p[WATCH_IN] = (struct pollfd){ c->in_fd, POLLOUT, 0 };
		p[WATCH_PID] = (struct pollfd){ c->pidfd, POLLIN, 0 };
		p[WATCH_CHAN] = (struct pollfd){ c->chan_fd, POLLIN, 0 };
		if (poll(p, WATCH_COUNT, wait_timeout(c)) == -1 && errno != EINTR) {
			/* Cannot wait any more: end it now rather than hang. */
			kill_job(c, SIGKILL);
			usleep(1000);
			continue;
		}
		for (i = 0; i < 2; i++)
			if (c->out[i].fd >= 0 && p[WATCH_OUT + i].revents &&
			    stream_read(&c->out[i], job->output_cap))
				stream_hand(&c->out[i], i + 1, job, 0);
		if (c->in_fd >= 0 && p[WATCH_IN].revents)
			input_write(c);
		if (c->chan_fd >= 0 && p[WATCH_CHAN].revents &&
		    job->channel_cancel(job) != 0)
			start_cancel(c, job);
		if (c->kill_at && now_ms() >= c->kill_at) {
			kill_job(c, SIGKILL);
			c->kill_at = 0;
		}
	}
}

/* kill_listed SIGKILLs and tries to reap each pid in a /proc/.../children
 * list (pids separated by spaces).  Returns how many it found. */
static int kill_listed(char *list)
{
	char *p, *end;
	long pid;
	int found = 0;

	for (p = list; *p; p = end) {
		pid = strtol(p, &end, 10);
		if (end == p)
			break;
		if (pid > 0) {
			kill((pid_t)pid, SIGKILL);
			waitpid((pid_t)pid, NULL, WNOHANG);
			found++;
		}
	}
	return found;
}

/* kill_children SIGKILLs every child of this process and reaps those
 * already dead.  Returns how many it found, or -1 when the kernel lists
 * no children (it lacks CONFIG_PROC_CHILDREN).  The lists are per thread
 * (/proc/self/task/TID/children): a few small reads, where a walk of all
 * of /proc cost a millisecond or more after every job on a busy machine. */
static int kill_children(void)
{
	DIR *tasks = opendir("/proc/self/task");
	struct dirent *e;
	char path[300], buf[4096], *cut;
	int found = 0, listed = 0, fd;
	ssize_t n;

	if (!tasks)
		return -1;
	while ((e = readdir(tasks))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof path, "/proc/self/task/%s/children",
			 e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd == -1)
			continue;
		listed = 1;
		/* A list longer than buf is killed a part at a time: the
		 * caller calls again until none is found. */
		n = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		if (n == (ssize_t)sizeof buf - 1 && (cut = strrchr(buf, ' ')))
			*cut = '\0';   /* a cut last pid */
		found += kill_listed(buf);
	}
	closedir(tasks);
	return listed ? found : -1;
}

/* parent_of returns the parent pid in /proc/PID/stat (named by its
 * directory name), or -1.  The command name in parentheses may hold
 * anything, so the fields are read after its last ')'. */
static pid_t parent_of(const char *pid)
{
	char path[300], buf[512], *end;
	int fd, ppid;
	ssize_t n;

	snprintf(path, sizeof path, "/proc/%s/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	end = strrchr(buf, ')');
	if (!end || sscanf(end, ") %*c %d", &ppid) != 1)
		return -1;
	return (pid_t)ppid;
}

/* kill_children_walk is kill_children for kernels without the children
 * lists: it reads the parent of every process in /proc. */
static int kill_children_walk(void)
{
	DIR *proc = opendir("/proc");
	pid_t self = getpid(), pid;
	struct dirent *e;
	int found = 0;

	if (!proc)
		return 0;
	while ((e = readdir(proc))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9' ||
		    parent_of(e->d_name) != self)
			continue;
		pid = (pid_t)atoi(e->d_name);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, WNOHANG);
		found++;
	}
	closedir(proc);
	return found;
}

static int kill_any_children(void)
{
	int found = kill_children();

	return found >= 0 ? found : kill_children_walk();
}

/* kill_strays kills the job's processes that were reparented to the
 * worker, and their children as they are reparented in turn, until none
 * is left or STRAYS_MS has passed. */
static void kill_strays(void)
{
	long long give_up = now_ms() + STRAYS_MS;
	struct timespec ms = { 0, 1000000 };

	while (kill_any_children() > 0) {
		if (now_ms() > give_up) {
			fprintf(stderr, "jobpool-worker: %s: processes of a "
				"command job are still alive after %d ms\n",
				__func__, STRAYS_MS);
			return;
		}
		nanosleep(&ms, NULL);
	}
}

/* drain reads both output pipes to EOF, for at most DRAIN_MS: every
 * writer is dead by now unless one escaped to another reaper. */
static void drain(struct command *c, size_t cap)
{
	long long give_up = now_ms() + DRAIN_MS, left;
	struct pollfd p[2];
	int i;

	while ((c->out[0].fd >= 0 || c->out[1].fd >= 0) &&
	       (left = give_up - now_ms()) > 0) {
		for (i = 0; i < 2; i++)
			p[i] = (struct pollfd){ c->out[i].fd, POLLIN, 0 };
		if (poll(p, 2, (int)left) == -1 && errno != EINTR)
			break;
		for (i = 0; i < 2; i++)
			if (c->out[i].fd >= 0 && p[i].revents)
				stream_read(&c->out[i], cap);
	}
}

/* command_end kills what is left of the job, reaps the child into job (its
 * status and rusage), and reads the rest of the output. */
static void command_end(struct command *c, struct kind_job *job)
{
	pid_t pid;

	/* The child is a zombie still: its group id is not free for reuse.
	 * The watchdog must not signal it once it may be. */
	kill(-c->pid, SIGKILL);
	command_group = 0;
	do
		pid = wait4(c->pid, &c->status, 0, &job->ru);
	while (pid == -1 && errno == EINTR);
	job->have_rusage = pid == c->pid;
	kill_strays();
	close_fd(&c->in_fd);
	drain(c, job->output_cap);
	if (pid != c->pid)
		c->status = W_EXITCODE(127, 0);
}

/* output_new returns the new {"stdout","stderr","truncated"} of c, or NULL
 * when out of memory. */
static json_t *output_new(const struct command *c, size_t cap)
{
	int truncated = c->out[0].dropped || c->out[1].dropped;
	json_t *out = kind_utf8_string(c->out[0].buf, c->out[0].len, cap, &truncated);
	json_t *err = kind_utf8_string(c->out[1].buf, c->out[1].len, cap, &truncated);

	if (!out || !err) {
		json_decref(out);
		json_decref(err);
		return NULL;
	}
	return json_pack("{s:o, s:o, s:b}", "stdout", out, "stderr", err,
			 "truncated", truncated);
}

/* command_result fills job's exit fields and error from the child's status
 * and returns the new {"exit_code": N|null}, or NULL when out of memory. */
static json_t *command_result(const struct command *c, struct kind_job *job)
{
	if (WIFEXITED(c->status)) {
		job->exit_code = WEXITSTATUS(c->status);
	} else if (WIFSIGNALED(c->status)) {
		job->signal = WTERMSIG(c->status);
		job->error = "the command was killed by a signal";
	}
	if (job->exit_code > 0) {
		snprintf(message, sizeof message,
			 "the command exited with code %d", job->exit_code);
		job->error = message;
	}
	if (job->killed)
		job->error = "the command was canceled";
	return job->exit_code >= 0
		? json_pack("{s:i}", "exit_code", job->exit_code)
		: json_pack("{s:n}", "exit_code");
}

/* command_run runs argv and returns a new {"exit_code": N|null}, with
 * job->error set unless it exited 0 without a cancel; job->output gets
 * its output.  Returns NULL with job->error set when it could not start
 * or memory ran out. */
static json_t *command_run(const json_t *args, struct kind_job *job)
{
	struct command c = { 0 };
	json_t *result = NULL;

	job->exit_code = -1;
	if (command_init(&c, args, job) == 0 && command_spawn(&c, job) == 0) {
		command_wait(&c, job);
		command_end(&c, job);
		result = command_result(&c, job);
		stream_hand(&c.out[0], 1, job, 1);
		stream_hand(&c.out[1], 2, job, 1);
		job->output = output_new(&c, job->output_cap);
		if (!result || !job->output)
			job->error = "out of memory";
	}
	command_free(&c);
	return result;
}

const struct kind kind_command = {
	.name = "command",
	.validate = command_validate,
	.run = command_run,
};
