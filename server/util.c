/* util.c - clocks, time and id formatting, signal names, logging. */
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobpool.h"

int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void fmt_time(char *buf, size_t size, int64_t us)
{
	time_t secs = (time_t)(us / 1000000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(us % 1000000 / 1000));
}

json_t *json_time(int64_t us)
{
	char buf[40];

	if (us <= 0)
		return json_null();
	fmt_time(buf, sizeof(buf), us);
	return json_string(buf);
}

/* json_ms renders a microsecond duration as milliseconds with at most three
 * decimals; the dump uses JSON_REAL_PRECISION so 2003.417 stays 2003.417. */
json_t *json_ms(int64_t us)
{
	return json_real((double)us / 1000.0);
}

void fmt_id(char *buf, size_t size, char prefix, int64_t id)
{
	snprintf(buf, size, "%c_%012lld", prefix, (long long)id);
}

int64_t parse_id(const char *s, char prefix)
{
	int64_t v = 0;
	int i;

	if (!s || s[0] != prefix || s[1] != '_' || strlen(s) != 14)
		return -1;
	for (i = 2; i < 14; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v > 0 ? v : -1;
}

/* hash_hex: two FNV-1a 64 passes with different offsets.  Not a
 * cryptographic hash: it only tells an Idempotency-Key's retry (same body)
 * from its misuse (another body). */
void hash_hex(const char *s, size_t n, char *out)
{
	uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
	size_t i;

	for (i = 0; i < n; i++) {
		a = (a ^ (unsigned char)s[i]) * 0x100000001b3ULL;
		b = (b ^ (unsigned char)s[i]) * 0x100000001b3ULL;
		b ^= b >> 29;
	}
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)a,
		 (unsigned long long)b);
}

int64_t parse_duration(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	double unit = 1;

	if (end == s || !isfinite(v) || v < 0)
		return -1;
	if (*end == 's')
		end++;
	else if (*end == 'm' && (unit = 60))
		end++;
	else if (*end == 'h' && (unit = 3600))
		end++;
	else if (*end == 'd' && (unit = 86400))
		end++;
	if (*end || v * unit > 1e11)
		return -1;
	return (int64_t)(v * unit * 1e6);
}

static const struct {
	int sig;
	const char *name;
} signals[] = {
	{SIGHUP, "SIGHUP"}, {SIGINT, "SIGINT"}, {SIGQUIT, "SIGQUIT"},
	{SIGILL, "SIGILL"}, {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"},
	{SIGBUS, "SIGBUS"}, {SIGFPE, "SIGFPE"}, {SIGKILL, "SIGKILL"},
	{SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
	{SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
	{SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
};

const char *signal_name(int sig)
{
	size_t i;

	for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
		if (signals[i].sig == sig)
			return signals[i].name;
	return NULL;
}

int signal_number(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
		if (strcmp(signals[i].name, name) == 0)
			return signals[i].sig;
	return 0;
}

static void log_line(const char *level, const char *fmt, va_list ap)
{
	char ts[40];
	char msg[1024];

	fmt_time(ts, sizeof(ts), now_us());
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* One write per line so lines from a crashing worker and the server
	 * never interleave mid-line on a shared stderr. */
	fprintf(stderr, "%s jobpoold %s %s\n", ts, level, msg);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line("info", fmt, ap);
	va_end(ap);
}

void log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line("warn", fmt, ap);
	va_end(ap);
}

/* fatal is for what cannot happen (out of memory in the loop): it names
 * the function, logs and aborts, so a core dump shows where. */
void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line("fatal", fmt, ap);
	va_end(ap);
	abort();
}
