/* util.c - clocks, time and id formatting, signal names, logging. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	if (!*end && v == 0)
		return 0;               /* zero is zero in every unit */
	if (strncmp(end, "ms", 2) == 0 && (unit = 0.001))
		end += 2;
	else if (*end == 's')
		end++;
	else if (*end == 'm' && (unit = 60))
		end++;
	else if (*end == 'h' && (unit = 3600))
		end++;
	else if (*end == 'd' && (unit = 86400))
		end++;
	else
		return -1;              /* no unit: see jobpool.h */
	if (*end || v * unit > 1e11)
		return -1;
	return (int64_t)(v * unit * 1e6);
}

int parse_cpu_max(const char *s)
{
	char *end;
	double quota, period;

	if (strncmp(s, "max", 3) == 0 && (s[3] == ' ' || s[3] == '\n' ||
					  !s[3]))
		return 0;
	errno = 0;
	quota = strtod(s, &end);
	if (errno || end == s || *end != ' ' || !(quota > 0))
		return -1;
	period = strtod(end + 1, &end);
	if (errno || !(period > 0) || (*end && *end != '\n') ||
	    quota / period > 1e6)
		return -1;
	/* Rounded up: a quota of 1.5 CPUs can keep two workers busy half
	 * the time, and one worker would leave half a CPU unused. */
	return (int)ceil(quota / period);
}

/* cgroup_cpus is the tightest cpu.max from this process's cgroup up to the
 * root of the hierarchy it sees (a container's own, with a cgroup
 * namespace); 0 when there is none or no cgroup v2 at all. */
static int cgroup_cpus(void)
{
	char line[4096], path[4200], max[128], *dir, *slash;
	int best = 0, n;
	FILE *f = fopen("/proc/self/cgroup", "r");

	if (!f)
		return 0;
	dir = NULL;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "0::", 3) == 0) {     /* the v2 hierarchy */
			line[strcspn(line, "\n")] = 0;
			dir = line + 3;
			break;
		}
	fclose(f);
	while (dir) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup%s/cpu.max",
			 strcmp(dir, "/") == 0 ? "" : dir);
		f = fopen(path, "r");
		if (f) {
			if (fgets(max, sizeof(max), f) &&
			    (n = parse_cpu_max(max)) > 0 && (!best || n < best))
				best = n;
			fclose(f);
		}
		slash = strrchr(dir, '/');
		if (!slash || slash == dir)
			break;
		*slash = 0;
	}
	return best;
}

int cpus_usable(void)
{
	cpu_set_t set;
	int n = 0, quota = cgroup_cpus();

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		n = CPU_COUNT(&set);
	if (n < 1)
		n = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (quota > 0 && quota < n)
		n = quota;
	return n > 0 ? n : 1;
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

/* ---- logging ----
 *
 * Log lines reach stderr through a bounded buffer and a thread of their own,
 * so a stderr nobody reads (a full pipe, a stopped terminal) never blocks
 * the event loop: the loop only copies a line in, and the writer thread
 * does the waiting, in order.  When LOG_CAP bytes already wait, a new line
 * is dropped and counted; the count goes out as a line of its own ("N log
 * lines dropped") as soon as there is room again, and at exit.  At exit the
 * lines still waiting get LOG_EXIT_MS to go out; then the process leaves
 * without them rather than hang on a reader that never comes. */
#define LOG_CAP (1 << 20)
#define LOG_LINE 1200
#define LOG_EXIT_MS 2000

static char log_buf[LOG_CAP];           /* ring: bytes [head, head + used) */
static size_t log_head, log_used;
static unsigned long log_dropped;
static int log_threaded;                /* the writer runs */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t log_more = PTHREAD_COND_INITIALIZER;
static pthread_cond_t log_less = PTHREAD_COND_INITIALIZER;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;
/* The logger's settings (--log-format, --log-level); main.c sets them
 * before its first line, so start-up errors already come out as asked. */
static int log_json;
static int log_min = LOG_INFO;

/* log_write writes up to n bytes at p to stderr, waiting while it is full
 * (also when someone made it non-blocking).  Returns the bytes consumed: on
 * an error all of them, since there is nowhere else to put them. */
static size_t log_write(const char *p, size_t n)
{
	struct pollfd out = { STDERR_FILENO, POLLOUT, 0 };
	ssize_t w;

	for (;;) {
		w = write(STDERR_FILENO, p, n);
		if (w > 0)
			return (size_t)w;
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN && poll(&out, 1, -1) >= 0)
			continue;
		return n;
	}
}

/* log_writer is the thread that empties the ring.  Only it moves log_head,
 * and the loop only writes past head + used, so it may write the bytes at
 * head without holding the lock. */
static void *log_writer(void *arg)
{
	size_t n;

	pthread_mutex_lock(&log_lock);
	for (;;) {
		while (!log_used)
			pthread_cond_wait(&log_more, &log_lock);
		n = log_head + log_used <= LOG_CAP ? log_used : LOG_CAP - log_head;
		pthread_mutex_unlock(&log_lock);
		n = log_write(log_buf + log_head, n);
		pthread_mutex_lock(&log_lock);
		log_head = (log_head + n) % LOG_CAP;
		log_used -= n;
		pthread_cond_broadcast(&log_less);
	}
	return NULL;
}

/* log_append copies len bytes into the ring; the caller holds the lock and
 * checked the room. */
static void log_append(const char *p, size_t len)
{
	size_t tail = (log_head + log_used) % LOG_CAP;
	size_t first = len < LOG_CAP - tail ? len : LOG_CAP - tail;

	memcpy(log_buf + tail, p, first);
	memcpy(log_buf, p + first, len - first);
	log_used += len;
}

/* log_put queues one line (len bytes with its newline), first the count of
 * the lines dropped before it when there is room for both; the caller
 * holds the lock. */
static void log_put(const char *line, size_t len)
{
	char ts[40], note[LOG_LINE];
	int n;

	if (log_dropped) {
		fmt_time(ts, sizeof(ts), now_us());
		n = snprintf(note, sizeof(note), log_json ?
			     "{\"ts\":\"%s\",\"level\":\"warn\",\"msg\":\"%lu "
			     "log lines dropped: stderr was not read\"}\n" :
			     "%s jobpoold warn %lu log lines dropped: stderr "
			     "was not read\n", ts, log_dropped);
		if (n > 0 && log_used + (size_t)n + len > LOG_CAP)
			goto full;
		log_append(note, (size_t)n);
		log_dropped = 0;
	}
	if (log_used + len > LOG_CAP)
		goto full;
	log_append(line, len);
	pthread_cond_signal(&log_more);
	return;
full:
	log_dropped++;
}

/* log_flush gives the lines still waiting, and the count of dropped ones,
 * LOG_EXIT_MS to go out; it runs at exit. */
static void log_flush(void)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += LOG_EXIT_MS / 1000;
	until.tv_nsec += (LOG_EXIT_MS % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&log_lock);
	while (log_used || log_dropped) {
		if (log_dropped && log_used < LOG_CAP - LOG_LINE)
			log_put("", 0);         /* just the count */
		if (log_used && pthread_cond_timedwait(&log_less, &log_lock,
						       &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&log_lock);
}

/* A forked child has no writer thread: it writes its lines itself. */
static void log_forked(void)
{
	log_threaded = 0;
	pthread_mutex_init(&log_lock, NULL);
}

/* log_start starts the writer with every signal blocked, so that SIGTERM
 * or SIGCHLD never lands in it (the loop takes them from a signalfd, and
 * this thread may start before they are blocked).  Without a thread, lines
 * are written directly, as before. */
static void log_start(void)
{
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t t;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	log_threaded = pthread_create(&t, &attr, log_writer, NULL) == 0;
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (log_threaded) {
		atexit(log_flush);
		pthread_atfork(NULL, NULL, log_forked);
	}
}

static const char *const level_names[] = { "debug", "info", "warn", "error",
					   "fatal" };

void log_setup(int json, int min_level)
{
	log_json = json;
	log_min = min_level;
}

int log_level_parse(const char *s)
{
	int i;

	for (i = LOG_DEBUG; i <= LOG_ERROR; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

/* log_format_json renders one JSON line: ts, level, msg, then event and
 * the ids as the API shows them when the caller gave them.  Returns the
 * length, 0 when out of memory (the line is then lost, not the process). */
static size_t log_format_json(char *line, size_t size, const char *ts,
			      int level, const char *msg, const char *event,
			      int64_t batch_id, int64_t job_id)
{
	json_t *o = json_object(), *m = json_string(msg);
	char id[24], *text;
	size_t len = 0;

	/* A path or a client's bytes in an MHD message may not be UTF-8:
	 * say so rather than lose the line that would show the problem. */
	if (!m)
		m = json_string("(message not UTF-8)");
	if (!o) {
		json_decref(m);
		return 0;
	}
	json_object_set_new(o, "ts", json_string(ts));
	json_object_set_new(o, "level", json_string(level_names[level]));
	json_object_set_new(o, "msg", m);
	if (event)
		json_object_set_new(o, "event", json_string(event));
	if (batch_id > 0) {
		fmt_id(id, sizeof(id), 'b', batch_id);
		json_object_set_new(o, "batch_id", json_string(id));
	}
	if (job_id > 0) {
		fmt_id(id, sizeof(id), 'j', job_id);
		json_object_set_new(o, "job_id", json_string(id));
	}
	text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (text) {
		len = (size_t)snprintf(line, size, "%s\n", text);
		if (len >= size) {      /* cut: keep it one line, unparsed */
			len = size - 1;
			line[len - 1] = '\n';
		}
		free(text);
	}
	return len;
}

static void log_emit(int level, const char *event, int64_t batch_id,
		     int64_t job_id, const char *fmt, va_list ap)
{
	char ts[40], msg[1024], line[LOG_LINE];
	size_t len;
	int n;

	if (level < log_min)
		return;
	fmt_time(ts, sizeof(ts), now_us());
	vsnprintf(msg, sizeof(msg), fmt, ap);
	len = strlen(msg);
	while (len && msg[len - 1] == '\n')     /* libmicrohttpd ends its own */
		msg[--len] = 0;
	if (log_json) {
		len = log_format_json(line, sizeof(line), ts, level, msg, event,
				      batch_id, job_id);
	} else {
		n = snprintf(line, sizeof(line), "%s jobpoold %s %s\n", ts,
			     level_names[level], msg);
		len = n < 0 ? 0 : (size_t)n < sizeof(line) ? (size_t)n :
		      sizeof(line) - 1;
	}
	pthread_once(&log_once, log_start);
	if (!log_threaded) {
		fwrite(line, 1, len, stderr);
		return;
	}
	pthread_mutex_lock(&log_lock);
	log_put(line, len);
	pthread_mutex_unlock(&log_lock);
}

static void log_line(int level, const char *fmt, va_list ap)
{
	log_emit(level, NULL, 0, 0, fmt, ap);
}

void log_event(int level, const char *event, int64_t batch_id,
	       int64_t job_id, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(level, event, batch_id, job_id, fmt, ap);
	va_end(ap);
}

void log_debug(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(LOG_DEBUG, fmt, ap);
	va_end(ap);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(LOG_INFO, fmt, ap);
	va_end(ap);
}

void log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(LOG_WARN, fmt, ap);
	va_end(ap);
}

void log_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(LOG_ERROR, fmt, ap);
	va_end(ap);
}

/* fatal is for what cannot happen (out of memory in the loop): it names
 * the function, logs and aborts, so a core dump shows where. */
void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(LOG_FATAL, fmt, ap);
	va_end(ap);
	log_flush();
	abort();
}

void log_vwarn(const char *fmt, va_list ap)
{
	log_line(LOG_WARN, fmt, ap);
}
