/* kinds.h - the job kind interface and its registration table.
 *
 * A kind is one file in workers/kinds/ that fills in a struct kind, plus one
 * line in kinds/table.c.  The same objects are linked into the server (which
 * only calls validate, at submission time, so a bad job is a 400 and never
 * reaches a worker) and into jobpool-worker (which calls run).
 */
#ifndef JOBPOOL_KINDS_H
#define JOBPOOL_KINDS_H

#include <stddef.h>
#include <sys/resource.h>

#include <jansson.h>

/* struct kind_job is what the worker and a kind's run tell each other about
 * one job.  Function kinds only set error; the command kind uses it all. */
struct kind_job {
	/* set by the worker before run */
	int grace_ms;          /* cancel: SIGTERM the group, SIGKILL after this */
	size_t output_cap;     /* bytes kept per stream (stdout, stderr) */
	int channel_fd;        /* becomes readable when the server sends a message */
	/* channel_cancel reads pending messages from the channel; returns 1 once
	 * a {"t":"cancel"} has arrived (and stays 1), 0 otherwise; -1 when the
	 * channel is closed (treat as cancel). */
	int (*channel_cancel)(struct kind_job *job);
	int canceled;
	/* "<instance>/<job id>": put in a command's environment as
	 * JOBPOOL_JOB, so the processes of a job can be found again by a
	 * server restarted after a crash.  May be NULL. */
	const char *marker;
	/* set by run */
	const char *error;     /* static sentence when the job failed */
	int exit_code;         /* -1 when none */
	int signal;            /* 0 when none */
	int killed;            /* the job was stopped by a cancel */
	json_t *output;        /* new {"stdout","stderr","truncated"}, or NULL */
	/* set by the worker, may be NULL: the command kind hands on_output
	 * its text as it arrives (fd 1 stdout, 2 stderr), in pieces that
	 * together are job->output's, so a client can follow a running
	 * command; it sets output_handed once it did. */
	void (*on_output)(struct kind_job *job, int fd, const char *text,
			  size_t len);
	int output_handed;
	int have_rusage;       /* ru is the job's own process (wait4), exact */
	struct rusage ru;
};

/* kind_err_fn reports one invalid field of args.  field is a JSON Pointer
 * relative to args ("seconds", "argv/2", "env/A~1B"), or "" for args
 * itself; msg is a short sentence. */
typedef void (*kind_err_fn)(void *ctx, const char *field, const char *msg);

struct kind {
	const char *name;
	/* validate checks args (a borrowed JSON object, never NULL: a missing
	 * args is passed as {}) and calls err once per problem.  It must not
	 * keep args.  Unknown members of args are a problem too. */
	void (*validate)(const json_t *args, kind_err_fn err, void *ctx);
	/* run does the job inside the worker process.  args is borrowed and was
	 * validated by the server; job is borrowed, its "set by the worker"
	 * part filled in and the rest zeroed, with exit_code -1.  Returns a
	 * new JSON result, or NULL; job->error is set (to a sentence that
	 * outlives the call) whenever the job failed, which may come with a
	 * result too (a command that exited 3 still has {"exit_code": 3}).
	 * job->output, when set, is the caller's to release. */
	json_t *(*run)(const json_t *args, struct kind_job *job);
};

/* kind_find returns the registered kind called name, or NULL. */
const struct kind *kind_find(const char *name);

/* kind_names writes the registered names, comma-separated, into buf. */
void kind_names(char *buf, size_t size);

/* Helpers for kinds' validate functions. */

/* kind_pointer_escape writes a member name as one JSON Pointer segment;
 * fields passed to kind_err_fn are pointer segments, so names with "/" or
 * "~" must go through it. */
void kind_pointer_escape(const char *name, char *out, size_t size);

/* kind_check_only lets args hold only the listed member names (NULL-ended);
 * every other member is reported as unknown.  Returns the count reported. */
int kind_check_only(const json_t *args, const char *const *allowed,
		    kind_err_fn err, void *ctx);

/* kind_number reads a required (or optional, when required is 0) number
 * member and checks lo <= value <= hi.  Stores it in *out (untouched when
 * absent).  Returns 0, or -1 after reporting the problem. */
int kind_number(const json_t *args, const char *field, int required,
		double lo, double hi, int integer, double *out,
		kind_err_fn err, void *ctx);

/* kind_utf8_string returns a new JSON string of the len bytes at in,
 * every byte that is not part of valid UTF-8 (and every NUL, which clients
 * choke on) replaced by U+FFFD, cut at a character boundary to at most cap
 * bytes; *truncated is set when it was cut.  NULL when out of memory. */
json_t *kind_utf8_string(const char *in, size_t len, size_t cap,
			 int *truncated);

/* kind_utf8_text is kind_utf8_string a piece at a time: it writes the
 * text of the len bytes at in to out (room for len * 3 bytes), adding to
 * *used, and stops where *used would pass cap (setting *cut) or, unless
 * at_end, before a last character that the next bytes may complete.
 * Returns how many bytes of in it consumed.  Pieces fed in order give the
 * text kind_utf8_string gives for all of them. */
size_t kind_utf8_text(const char *in, size_t len, char *out, size_t *used,
		      size_t cap, int at_end, int *cut);

/* command.c: the process group of the command running now (0: none). */
extern volatile pid_t command_group;

#endif
