/* test_util.c - unit tests for util.c: durations, the request hash, times
 * and ids as the API renders them, signal names, millisecond numbers, and
 * a logger that never blocks. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "jobpool.h"

/* 2023-11-14T22:13:20.000Z */
#define T0 INT64_C(1700000000000000)
#define SEC INT64_C(1000000)

/* ---- parse_duration ---- */

Test(util, parse_duration_units)
{
	cr_assert_eq(parse_duration("90s"), 90 * SEC);
	cr_assert_eq(parse_duration("15m"), 15 * 60 * SEC);
	cr_assert_eq(parse_duration("12h"), 12 * 3600 * SEC);
	cr_assert_eq(parse_duration("7d"), 7 * 86400 * SEC);
	cr_assert_eq(parse_duration("1.5h"), 5400 * SEC);
	cr_assert_eq(parse_duration("250ms"), SEC / 4);
	cr_assert_eq(parse_duration("0"), 0, "zero needs no unit");
	cr_assert_eq(parse_duration("0s"), 0);
	cr_assert_eq(parse_duration("0.25s"), SEC / 4);
}

/* A bare number was seconds: "--retention 7" meant to keep a week purged
 * batches 7 s after they ended.  Now every non-zero duration needs a unit. */
Test(util, parse_duration_needs_a_unit)
{
	const char *bare[] = { "7", "30", "0.5", "1e3", "86400" };
	size_t i;

	for (i = 0; i < sizeof(bare) / sizeof(bare[0]); i++)
		cr_assert_eq(parse_duration(bare[i]), -1, "\"%s\" accepted",
			     bare[i]);
}

/* ---- parse_cpu_max (cgroup v2 cpu.max) ---- */

Test(util, parse_cpu_max_quota_rounds_up)
{
	cr_assert_eq(parse_cpu_max("max 100000\n"), 0, "no limit");
	cr_assert_eq(parse_cpu_max("max"), 0);
	cr_assert_eq(parse_cpu_max("100000 100000\n"), 1);
	cr_assert_eq(parse_cpu_max("200000 100000"), 2);
	cr_assert_eq(parse_cpu_max("150000 100000\n"), 2, "1.5 CPUs");
	cr_assert_eq(parse_cpu_max("50000 100000\n"), 1, "at least 1");
	cr_assert_eq(parse_cpu_max("1000 100000\n"), 1);
	cr_assert_eq(parse_cpu_max("400000 100000\n"), 4);
}

Test(util, parse_cpu_max_rejects)
{
	const char *bad[] = { "", "\n", "abc", "100000", "100000\n",
			      "0 100000", "-5 100000", "100000 0",
			      "100000 x", "maxi 100000", "100000 100000 7" };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse_cpu_max(bad[i]), -1, "\"%s\" accepted",
			     bad[i]);
}

Test(util, cpus_usable_is_at_least_one_and_at_most_online)
{
	int n = cpus_usable();

	cr_assert_geq(n, 1);
	cr_assert_leq(n, sysconf(_SC_NPROCESSORS_CONF));
}

Test(util, parse_duration_rejects)
{
	const char *bad[] = { "", "x", "-1", "-1s", "5w", "1e20d", "1e20s",
			      "s", "5ss", "5 s", "inf", "nan", "10sx" };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse_duration(bad[i]), -1, "\"%s\" accepted",
			     bad[i]);
}

/* ---- hash_hex ---- */

static int all_hex(const char *s)
{
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return 0;
	return 1;
}

Test(util, hash_hex_is_32_hex_digits_and_deterministic)
{
	const char *body = "{\"jobs\":[{\"kind\":\"noop\"}]}";
	char a[33], b[33];

	memset(a, 'X', sizeof(a));
	hash_hex(body, strlen(body), a);
	hash_hex(body, strlen(body), b);
	cr_assert_eq(strlen(a), 32);
	cr_assert(all_hex(a), "not lower-case hex: %s", a);
	cr_assert_str_eq(a, b);
	hash_hex("", 0, a);
	cr_assert_eq(strlen(a), 32);
	cr_assert(all_hex(a));
}

Test(util, hash_hex_differs)
{
	char a[33], b[33];

	hash_hex("abc", 3, a);
	hash_hex("abd", 3, b);
	cr_assert_str_neq(a, b, "different input");
	hash_hex("ab", 2, a);
	hash_hex("ba", 2, b);
	cr_assert_str_neq(a, b, "reordered input");
	hash_hex("{\"a\":1,\"b\":2}", 13, a);
	hash_hex("{\"b\":2,\"a\":1}", 13, b);
	cr_assert_str_neq(a, b, "reordered members");
	hash_hex("", 0, a);
	hash_hex("a", 1, b);
	cr_assert_str_neq(a, b, "empty input");
}

Test(util, hash_hex_reads_only_n_bytes)
{
	char a[33], b[33];

	hash_hex("abcdef", 3, a);
	hash_hex("abc", 3, b);
	cr_assert_str_eq(a, b);
	hash_hex("a\0b", 3, a);
	hash_hex("a\0c", 3, b);
	cr_assert_str_neq(a, b, "bytes after a NUL count");
}

/* ---- fmt_time and json_time ---- */

Test(util, fmt_time_rfc3339_utc_millis)
{
	char buf[40];

	fmt_time(buf, sizeof(buf), T0);
	cr_assert_str_eq(buf, "2023-11-14T22:13:20.000Z");
	fmt_time(buf, sizeof(buf), T0 + 123456);
	cr_assert_str_eq(buf, "2023-11-14T22:13:20.123Z", "ms, truncated");
	fmt_time(buf, sizeof(buf), T0 + 59 * SEC + 999999);
	cr_assert_str_eq(buf, "2023-11-14T22:14:19.999Z");
	fmt_time(buf, sizeof(buf), 1);
	cr_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
	fmt_time(buf, sizeof(buf), INT64_C(951782400) * SEC + 1000);
	cr_assert_str_eq(buf, "2000-02-29T00:00:00.001Z", "leap day");
}

Test(util, json_time_string_or_null)
{
	json_t *t = json_time(T0 + 5 * SEC + 7000);

	cr_assert(json_is_string(t));
	cr_assert_str_eq(json_string_value(t), "2023-11-14T22:13:25.007Z");
	json_decref(t);
	t = json_time(0);
	cr_assert(json_is_null(t), "0 is no time");
	json_decref(t);
	t = json_time(-SEC);
	cr_assert(json_is_null(t));
	json_decref(t);
}

/* ---- fmt_id and parse_id ---- */

Test(util, fmt_id_and_parse_id_round_trip)
{
	const int64_t ids[] = { 1, 42, 1000000, INT64_C(999999999999) };
	char buf[32];
	size_t i;

	fmt_id(buf, sizeof(buf), 'b', 1);
	cr_assert_str_eq(buf, "b_000000000001");
	fmt_id(buf, sizeof(buf), 'j', 1234567);
	cr_assert_str_eq(buf, "j_000001234567");
	for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		fmt_id(buf, sizeof(buf), 'j', ids[i]);
		cr_assert_eq(strlen(buf), 14);
		cr_assert_eq(parse_id(buf, 'j'), ids[i], "%s", buf);
		fmt_id(buf, sizeof(buf), 'b', ids[i]);
		cr_assert_eq(parse_id(buf, 'b'), ids[i], "%s", buf);
	}
}

Test(util, parse_id_rejects_malformed)
{
	const char *bad[] = { "b_1", "b_0000000000001", "b_00000000001",
			      "b_00000000000x", "b_0000000a0001", "b-000000000001",
			      "B_000000000001", "b__00000000001", "",
			      "b_000000000000", "b_-00000000001", "b_+00000000001",
			      " b_00000000001", "b_000000000001 " };
	size_t i;

	cr_assert_eq(parse_id("j_000000000001", 'b'), -1, "wrong prefix");
	cr_assert_eq(parse_id("b_000000000001", 'j'), -1, "wrong prefix");
	cr_assert_eq(parse_id(NULL, 'b'), -1);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse_id(bad[i], 'b'), -1, "\"%s\" accepted",
			     bad[i]);
}

/* ---- signal names ---- */

Test(util, signal_names_round_trip)
{
	const int sigs[] = { SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT,
			     SIGBUS, SIGFPE, SIGKILL, SIGUSR1, SIGSEGV,
			     SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGXCPU,
			     SIGXFSZ, SIGSYS };
	size_t i;

	cr_assert_str_eq(signal_name(SIGKILL), "SIGKILL");
	cr_assert_str_eq(signal_name(SIGSEGV), "SIGSEGV");
	cr_assert_eq(signal_number("SIGTERM"), SIGTERM);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		const char *name = signal_name(sigs[i]);

		cr_assert_not_null(name, "signal %d has no name", sigs[i]);
		cr_assert_eq(strncmp(name, "SIG", 3), 0, "%s", name);
		cr_assert_eq(signal_number(name), sigs[i], "%s", name);
	}
}

Test(util, unknown_signals)
{
	cr_assert_null(signal_name(0));
	cr_assert_null(signal_name(-1));
	cr_assert_null(signal_name(1000));
	cr_assert_eq(signal_number("SIGNOPE"), 0);
	cr_assert_eq(signal_number("KILL"), 0);
	cr_assert_eq(signal_number(""), 0);
}

/* ---- json_ms ---- */

Test(util, json_ms_three_decimals)
{
	json_t *v = json_ms(2003417);
	char *text;

	cr_assert(json_is_real(v));
	cr_assert_float_eq(json_real_value(v), 2003.417, 1e-9);
	/* dumped the way http.c dumps replies */
	text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT |
			  JSON_REAL_PRECISION(15));
	cr_assert_str_eq(text, "2003.417");
	free(text);
	json_decref(v);

	v = json_ms(0);
	cr_assert(json_is_real(v));
	cr_assert_float_eq(json_real_value(v), 0.0, 1e-12);
	json_decref(v);
	v = json_ms(1);
	cr_assert_float_eq(json_real_value(v), 0.001, 1e-12);
	json_decref(v);
}

/* ---- clocks ---- */

Test(util, clocks_move_forward)
{
	int64_t w = now_us(), m = mono_us();

	cr_assert_gt(w, T0, "wall clock before 2023");
	cr_assert_gt(m, 0);
	cr_assert_geq(mono_us(), m);
}

/* ---- logging ---- */

/* read_until appends what fd gives to *text (size *len, new) until it
 * holds want, or, with want NULL, until fd stays silent for quiet_ms. */
static void read_until(int fd, char **text, size_t *len, const char *want,
		       int quiet_ms)
{
	struct pollfd in = { fd, POLLIN, 0 };
	int64_t give_up = mono_us() + 10 * SEC;
	char chunk[65536];
	ssize_t n;

	while (mono_us() < give_up) {
		if (want && *text && strstr(*text, want))
			return;
		if (poll(&in, 1, want ? 100 : quiet_ms) == 0) {
			if (!want)
				return;
			continue;
		}
		n = read(fd, chunk, sizeof(chunk));
		cr_assert_gt(n, 0, "stderr pipe closed");
		*text = realloc(*text, *len + (size_t)n + 1);
		cr_assert_not_null(*text);
		memcpy(*text + *len, chunk, (size_t)n);
		*len += (size_t)n;
		(*text)[*len] = 0;
	}
	cr_assert_fail("stderr never said %s", want ? want : "nothing more");
}

/* Lines go through a bounded buffer: logging into a stderr nobody reads
 * returns at once, and every line is either written in order or counted in
 * a "N log lines dropped" line where it would have been. */
Test(util, log_never_blocks_and_counts_what_it_drops)
{
	enum { LINES = 4000 };
	char pad[901], *text = NULL, *line, *save;
	size_t len = 0;
	long expected = 0, n;
	int p[2], i;
	int64_t t0;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
	memset(pad, 'x', sizeof(pad) - 1);
	pad[sizeof(pad) - 1] = 0;
	t0 = mono_us();
	for (i = 0; i < LINES; i++)
		log_info("line %d %s", i, pad);
	/* 3.7 MB against a 64 KiB pipe and a 1 MiB buffer: not one wait. */
	cr_assert_lt(mono_us() - t0, 2 * SEC, "logging blocked");
	read_until(p[0], &text, &len, NULL, 300);
	log_info("after");
	read_until(p[0], &text, &len, "after\n", 0);
	cr_assert_not_null(strstr(text, " log lines dropped"), "no drop count");
	for (line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (sscanf(line, "%*s jobpoold info line %ld", &n) == 1) {
			cr_assert_eq(n, expected, "line %ld where %ld was due",
				     n, expected);
			expected++;
		} else if (sscanf(line, "%*s jobpoold warn %ld log lines "
				  "dropped", &n) == 1) {
			expected += n;
		} else {
			cr_assert(strstr(line, "jobpoold info after"),
				  "unexpected line: %.80s", line);
		}
	}
	cr_assert_eq(expected, LINES, "lines written plus dropped");
	free(text);
}
