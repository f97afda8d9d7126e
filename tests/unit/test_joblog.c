/* test_joblog.c - unit tests for joblog_job: jobs as the API renders them
 * become GNU parallel --joblog lines, byte for byte as parallel 20221122
 * writes them (print_joblog: "%.3f" start, "%10.3f" runtime cut to whole
 * milliseconds, newlines of a command as NUL), one line per ended attempt,
 * with parallel's Exitval for signals and timeouts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "jobpool.h"

/* 2023-11-14T22:13:20.007Z is 1700000000.007 */
#define START "2023-11-14T22:13:20.007Z"
#define END "2023-11-14T22:13:22.011Z"

static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *value = json_loads(text, 0, &jerr);

	cr_assert_not_null(value, "bad JSON in test: %s: %s", text, jerr.text);
	return value;
}

/* entry returns the text of a history entry, run by node "n1". */
static char *entry(char *buf, size_t size, int attempt, const char *state,
		   const char *run_ms, const char *code, const char *sig)
{
	snprintf(buf, size, "{\"attempt\":%d,\"state\":\"%s\",\"started_at\":"
		 "\"" START "\",\"finished_at\":\"" END "\",\"run_ms\":%s,"
		 "\"exit_code\":%s,\"signal\":%s,\"error\":null,\"worker\":"
		 "{\"slot\":0,\"pid\":7,\"node\":\"n1\"}}", attempt, state,
		 run_ms, code, sig);
	return buf;
}

/* lines renders job (JSON text) and returns the new text of its lines;
 * *len gets its length (it may hold NULs). */
static char *lines(const char *job_text, size_t *len)
{
	struct joblog_buf b = { 0 };
	json_t *job = parse(job_text);

	cr_assert_eq(joblog_job(&b, job), 0);
	json_decref(job);
	if (len)
		*len = b.len;
	if (!b.p)
		return strdup("");
	return b.p;
}

/* job_text writes a job of index 4 with the given kind, args, state,
 * attempts, output and history. */
static char *job_text(char *buf, size_t size, const char *kind,
		      const char *args, const char *state, int attempts,
		      const char *output, const char *history)
{
	snprintf(buf, size, "{\"id\":\"j_000000000005\",\"index\":4,"
		 "\"kind\":\"%s\",\"args\":%s,\"state\":\"%s\",\"attempts\":%d,"
		 "\"worker\":{\"slot\":0,\"pid\":7,\"node\":\"n1\"},"
		 "\"output\":%s,\"history\":%s}", kind, args, state, attempts,
		 output, history);
	return buf;
}

Test(joblog, header_is_parallels)
{
	cr_assert_str_eq(JOBLOG_HEADER, "Seq\tHost\tStarttime\tJobRuntime\t"
			 "Send\tReceive\tExitval\tSignal\tCommand\n");
}

Test(joblog, command_line_matches_parallel_formatting)
{
	char e[512], h[600], j[2048], *t;

	snprintf(h, sizeof(h), "[%s]",
		 entry(e, sizeof(e), 1, "succeeded", "2004.1", "0", "null"));
	t = lines(job_text(j, sizeof(j), "command",
			   "{\"argv\":[\"cat\",\"-\"],\"stdin\":\"hello\\n\"}",
			   "succeeded", 1,
			   "{\"stdout\":\"hello\\n\",\"stderr\":\"é\",\"truncated\":false}",
			   h), NULL);
	/* Seq is index + 1; the runtime is padded to ten; Send is the
	 * stdin's bytes, Receive stdout's and stderr's (UTF-8 bytes). */
	cr_assert_str_eq(t, "5\tn1\t1700000000.007\t     2.004\t6\t8\t0\t0\t"
			 "cat -\n");
	free(t);
}

Test(joblog, runtime_is_cut_to_milliseconds_not_rounded)
{
	static const struct {
		const char *run_ms, *text;
	} cases[] = {
		{ "1999.999", "     1.999" },   /* %10.3f alone says 2.000 */
		{ "0.999", "     0.000" },
		{ "0.0", "     0.000" },
		{ "null", "     0.000" },       /* interrupted: not known */
		{ "123456789.0", "123456.789" },
		{ "1234567000.0", "1234567.000" },      /* wider, as parallel */
	};
	char e[512], h[600], j[2048], want[128], *t;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(h, sizeof(h), "[%s]", entry(e, sizeof(e), 1,
			 "succeeded", cases[i].run_ms, "0", "null"));
		t = lines(job_text(j, sizeof(j), "noop", "{}", "succeeded", 1,
				   "null", h), NULL);
		snprintf(want, sizeof(want), "5\tn1\t1700000000.007\t%s\t0\t0"
			 "\t0\t0\tnoop {}\n", cases[i].text);
		cr_assert_str_eq(t, want, "run_ms %s", cases[i].run_ms);
		free(t);
	}
}

Test(joblog, one_line_per_ended_attempt_output_only_on_the_last)
{
	char e1[512], e2[512], h[1200], j[2048], *t;

	snprintf(h, sizeof(h), "[%s,%s]",
		 entry(e1, sizeof(e1), 1, "failed", "10.0", "3", "null"),
		 entry(e2, sizeof(e2), 2, "failed", "20.0", "3", "null"));
	t = lines(job_text(j, sizeof(j), "command",
			   "{\"argv\":[\"sh\",\"-c\",\"exit 3\"]}", "failed", 2,
			   "{\"stdout\":\"abc\",\"stderr\":\"\",\"truncated\":false}",
			   h), NULL);
	cr_assert_str_eq(t,
		"5\tn1\t1700000000.007\t     0.010\t0\t0\t3\t0\tsh -c exit 3\n"
		"5\tn1\t1700000000.007\t     0.020\t0\t3\t3\t0\tsh -c exit 3\n");
	free(t);
}

Test(joblog, running_or_queued_attempts_add_nothing)
{
	char e1[512], h[600], j[2048], *t;

	t = lines(job_text(j, sizeof(j), "noop", "{}", "queued", 0, "null",
			   "[]"), NULL);
	cr_assert_str_eq(t, "");
	free(t);
	/* Attempt 2 runs: attempt 1 is listed, without output (the row's
	 * output is attempt 2's to come). */
	snprintf(h, sizeof(h), "[%s]",
		 entry(e1, sizeof(e1), 1, "failed", "10.0", "1", "null"));
	t = lines(job_text(j, sizeof(j), "command", "{\"argv\":[\"false\"]}",
			   "running", 2,
			   "{\"stdout\":\"x\",\"stderr\":\"\",\"truncated\":false}",
			   h), NULL);
	cr_assert_str_eq(t, "5\tn1\t1700000000.007\t     0.010\t0\t0\t1\t0"
			 "\tfalse\n");
	free(t);
}

Test(joblog, exitval_and_signal_as_parallel_reports_them)
{
	static const struct {
		const char *state, *code, *sig, *cols;
	} cases[] = {
		/* killed by a signal: exit status 0, the signal's number */
		{ "failed", "null", "\"SIGKILL\"", "0\t9" },
		/* parallel's --timeout: -1, unless it exited with a code */
		{ "timed_out", "null", "\"SIGTERM\"", "-1\t15" },
		{ "timed_out", "143", "null", "143\t0" },
		{ "canceled", "null", "\"SIGTERM\"", "-1\t15" },
		{ "canceled", "0", "null", "-1\t0" },
		/* failed without a code (a function kind, interrupted) */
		{ "failed", "null", "null", "1\t0" },
		{ "failed", "4", "null", "4\t0" },
		{ "succeeded", "null", "null", "0\t0" },
	};
	char e[512], h[600], j[2048], want[256], *t;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(h, sizeof(h), "[%s]", entry(e, sizeof(e), 1,
			 cases[i].state, "1.0", cases[i].code, cases[i].sig));
		t = lines(job_text(j, sizeof(j), "fail",
				   "{\"mode\":\"exit\",\"code\":4}",
				   cases[i].state, 1, "null", h), NULL);
		snprintf(want, sizeof(want), "5\tn1\t1700000000.007\t     0.001"
			 "\t0\t0\t%s\tfail {\"mode\":\"exit\",\"code\":4}\n",
			 cases[i].cols);
		cr_assert_str_eq(t, want, "%s %s %s", cases[i].state,
				 cases[i].code, cases[i].sig);
		free(t);
	}
}

Test(joblog, other_kinds_are_the_kind_and_compact_json)
{
	char e[512], h[600], j[2048], *t;

	snprintf(h, sizeof(h), "[%s]",
		 entry(e, sizeof(e), 1, "succeeded", "200.5", "null", "null"));
	t = lines(job_text(j, sizeof(j), "sleep", "{ \"seconds\" : 0.2 }",
			   "succeeded", 1, "null", h), NULL);
	cr_assert_str_eq(t, "5\tn1\t1700000000.007\t     0.200\t0\t0\t0\t0\t"
			 "sleep {\"seconds\":0.2}\n");
	free(t);
	t = lines(job_text(j, sizeof(j), "noop", "null", "succeeded", 1,
			   "null", h), NULL);
	cr_assert_str_eq(t, "5\tn1\t1700000000.007\t     0.200\t0\t0\t0\t0\t"
			 "noop {}\n");
	free(t);
}

Test(joblog, newlines_of_a_command_become_nul_as_in_parallel)
{
	static const char want[] = "5\tn1\t1700000000.007\t     0.001\t0\t0"
				   "\t0\t0\tprintf a\0b\n";
	char e[512], h[600], j[2048], *t;
	size_t len;

	snprintf(h, sizeof(h), "[%s]",
		 entry(e, sizeof(e), 1, "succeeded", "1.0", "0", "null"));
	t = lines(job_text(j, sizeof(j), "command",
			   "{\"argv\":[\"printf\",\"a\\nb\"]}", "succeeded", 1,
			   "null", h), &len);
	cr_assert_eq(len, sizeof(want) - 1);
	cr_assert_eq(memcmp(t, want, len), 0);
	free(t);
}

Test(joblog, host_falls_back_to_the_job_then_to_this_machine)
{
	char j[2048], *t;
	static const char h[] = "[{\"attempt\":1,\"state\":\"failed\","
		"\"started_at\":\"" START "\",\"finished_at\":\"" END "\","
		"\"run_ms\":null,\"exit_code\":null,\"signal\":null,"
		"\"error\":\"interrupted\",\"worker\":null}]";

	t = lines(job_text(j, sizeof(j), "noop", "{}", "failed", 1, "null", h),
		  NULL);
	cr_assert_str_eq(t, "5\tn1\t1700000000.007\t     0.000\t0\t0\t1\t0\t"
			 "noop {}\n");
	free(t);
	snprintf(j, sizeof(j), "{\"index\":0,\"kind\":\"noop\",\"args\":{},"
		 "\"state\":\"failed\",\"attempts\":1,\"worker\":null,"
		 "\"output\":null,\"history\":%s}", h);
	t = lines(j, NULL);
	cr_assert_str_eq(t, "1\t:\t1700000000.007\t     0.000\t0\t0\t1\t0\t"
			 "noop {}\n");
	free(t);
}
