/* fail.c - the "fail" kind: fails on purpose, the way real jobs do, so the
 * server's handling of dead and stuck workers can be exercised. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kinds.h"

static const char *const fail_fields[] = { "mode", "code", NULL };

/* fail_mode returns "mode" if it is one of exit, crash, hang, else NULL. */
static const char *fail_mode(const json_t *args)
{
	const char *mode = json_string_value(json_object_get(args, "mode"));

	if (mode && (strcmp(mode, "exit") == 0 || strcmp(mode, "crash") == 0 ||
		     strcmp(mode, "hang") == 0))
		return mode;
	return NULL;
}

/* fail_validate requires "mode" and allows "code" (0..255) only with
 * mode exit, where it is the worker's exit status. */
static void fail_validate(const json_t *args, kind_err_fn err, void *ctx)
{
	const char *mode = fail_mode(args);
	double code;

	kind_check_only(args, fail_fields, err, ctx);
	if (!json_object_get(args, "mode"))
		err(ctx, "mode", "is required");
	else if (!mode)
		err(ctx, "mode", "must be one of exit, crash, hang");
	if (json_object_get(args, "code") && mode && strcmp(mode, "exit") != 0)
		err(ctx, "code", "is only allowed with mode exit");
	else
		kind_number(args, "code", 0, 0, 255, 1, &code, err, ctx);
}

/* fail_crash dies of SIGSEGV.  The handler is reset first because a
 * sanitizer or debugger may have installed one that would turn the signal
 * into an ordinary exit. */
static void fail_crash(void)
{
	signal(SIGSEGV, SIG_DFL);
	raise(SIGSEGV);
	_exit(128 + SIGSEGV); /* not reached unless SIGSEGV is blocked */
}

/* fail_run never returns for a valid mode: exit leaves with "code" (default
 * 1), crash dies of SIGSEGV, hang waits for a signal forever.  _exit skips
 * atexit handlers, as a dying job would; stdio is flushed first so any
 * output is not lost.  Returns NULL with job->error set for an unknown mode. */
static json_t *fail_run(const json_t *args, struct kind_job *job)
{
	const char *mode = fail_mode(args);
	json_t *code = json_object_get(args, "code");

	if (!mode) {
		job->error = "mode must be one of exit, crash, hang";
		return NULL;
	}
	if (strcmp(mode, "exit") == 0) {
		fflush(NULL);
		_exit(code ? (int)json_number_value(code) : 1);
	}
	if (strcmp(mode, "crash") == 0)
		fail_crash();
	for (;;)
		pause();
}

const struct kind kind_fail = {
	.name = "fail",
	.validate = fail_validate,
	.run = fail_run,
};
