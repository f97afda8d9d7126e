/* main.c - jobpoold: flags, startup, the loop turn, shutdown.
 *
 * Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage, 3 database
 * cannot be opened or migrated, 4 cannot listen, 5 cannot start workers,
 * 6 another jobpoold already serves this database.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobpool.h"


static int64_t drain_deadline;
static int purge_more;          /* retention has work left: do not sleep */
static int stop_loop;
static char worker_path[PATH_MAX];
static int log_json_opt, log_level_opt = LOG_INFO;
static int workers_from_cpus;   /* --workers not given: CPUs usable */

extern char **environ;

static const char usage[] =
"usage: jobpoold [options]\n"
"\n"
"A durable job runner: POST a batch of jobs, a pool of worker processes\n"
"runs them, poll or long-poll for state and timings.\n"
"\n"
"  --listen HOST:PORT     address to serve HTTP on      [127.0.0.1:8080]\n"
"                         (port 0 picks a free port; the log says which;\n"
"                         IPv6 in brackets: [::1]:8080)\n"
"  --db PATH|URL          SQLite database file, or a PostgreSQL URL\n"
"                         (postgresql://user@host:port/db) that several\n"
"                         nodes share                   [./jobpool.db]\n"
"  --workers N            worker processes, 1 to 1024   [CPUs this process\n"
"                         may use: affinity and cgroup CPU quota]\n"
"  --worker-bin PATH      the jobpool-worker program    [next to jobpoold]\n"
"  --kill-grace-ms MS     SIGTERM-to-SIGKILL grace when a running job is\n"
"                         canceled or times out         [2000]\n"
"  --drain-timeout-s S    on SIGTERM, how long running jobs may finish\n"
"                         before they are killed and re-queued [30]\n"
"  --max-body-bytes N     largest request body          [16777216]\n"
"  --max-jobs-per-batch N largest batch                 [100000]\n"
"  --max-output-bytes N   output kept per stream of a command job [1048576]\n"
"  --max-queued-jobs N    queued jobs past which submissions get 429\n"
"                                                       [2000000]\n"
"  --max-open-batches N   unfinished batches past which submissions get\n"
"                         429                            [100000]\n"
"  --max-db-bytes N       data size past which submissions get 503; the\n"
"                         file may grow 25% more while accepted jobs end\n"
"                                                       [no cap]\n"
"  --retention DURATION   delete finished batches this long after they\n"
"                         end, e.g. 7d, 12h, 30m, 90s    [keep]\n"
"  --idempotency-ttl DURATION  how long an Idempotency-Key is remembered\n"
"                                                       [24h]\n"
"  --token TOKEN          require Authorization: Bearer TOKEN on every\n"
"                         request but GET /healthz; required when\n"
"                         listening beyond loopback (use JOBPOOL_TOKEN to\n"
"                         keep it out of ps)\n"
"  --cors-origin LIST     origins allowed to call from a browser,\n"
"                         comma-separated, or *          [none]\n"
"  --events-buffer N      state changes kept for SSE reconnects [100000]\n"
"  --events-buffer-bytes N  memory those changes may hold [8388608]\n"
"  --max-connections N    open HTTP connections, in all [1024]\n"
"  --max-connections-per-client N  open HTTP connections from one client\n"
"                         address                        [256]\n"
"  --header-timeout DURATION  time a connection has to send a request's\n"
"                         headers, from its opening or from the end of its\n"
"                         last request; also the keep-alive idle time [10s]\n"
"  --node-name NAME       this server's name, shown as a job's\n"
"                         worker.node and in GET /v1/nodes [host name]\n"
"  --node-lease DURATION  with PostgreSQL: how long a node may go without\n"
"                         renewing its lease before the others re-queue\n"
"                         its jobs; it stops them itself 1s before (2s\n"
"                         to 10m)                        [4s]\n"
"  --poll-interval DURATION  with PostgreSQL: how often a node looks for\n"
"                         other nodes' batches and cancels [250ms]\n"
"  --group-max N          short jobs (averaging under 1 ms) handed to a\n"
"                         worker in one message; 1: one job at a time\n"
"                         (up to 64)                     [16]\n"
"  --allow-command        enable the command kind (runs programs as this\n"
"                         server's user; off by default)\n"
"  --webhook-allow LIST   hosts a batch's webhook may be sent to, comma-\n"
"                         separated: host names (matched literally, or\n"
"                         *.suffix), IP addresses and CIDRs; a host name\n"
"                         allowed is trusted whatever it resolves to\n"
"                                                       [none]\n"
"  --webhook-backoff DURATION  delay before a failed webhook delivery's\n"
"                         first retry; it doubles per attempt up to 1h\n"
"                         (tests shorten it, e.g. 100ms) [1s]\n"
"  --commit-interval-us N longest delay before job state changes are\n"
"                         committed (submissions never wait) [2000]\n"
"  --log-format FORMAT    text or json (one object a line: ts, level, msg,\n"
"                         and event, batch_id, job_id where they apply)\n"
"                                                        [text]\n"
"  --log-level LEVEL      debug, info, warn or error    [info]\n"
"  --version              print the version and exit\n"
"  -h, --help             this text\n"
"\n"
"A DURATION needs a unit: ms, s, m, h or d (250ms, 90s, 12h, 7d).\n"
"\n"
"Every option can also be set in the environment as JOBPOOL_<NAME>, e.g.\n"
"JOBPOOL_LISTEN, JOBPOOL_DB, JOBPOOL_WORKERS; a flag wins over the\n"
"environment.\n";

/* die_usage logs a bad flag or variable as an error (through the logger,
 * so --log-format json still gets JSON) and exits 2. */
static void __attribute__((noreturn))
die_usage(const char *what, const char *value)
{
	log_error("invalid %s: %s (jobpoold --help lists the options)", what,
		  value);
	exit(2);
}

/* number reads a whole decimal in [lo, hi]; out of it, the error says the
 * range, so the fix needs no trip to --help. */
static long number(const char *what, const char *s, long lo, long hi)
{
	char buf[160];
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || !*s || *end || v < lo || v > hi) {
		snprintf(buf, sizeof(buf), "%s (want a whole number from %ld "
			 "to %ld)", what, lo, hi);
		die_usage(buf, s);
	}
	return v;
}

/* duration reads a DURATION (a unit is a must) into microseconds and
 * checks it against [lo, hi]; range says that range in words. */
static int64_t duration(const char *what, const char *s, int64_t lo,
			int64_t hi, const char *range)
{
	char buf[160];
	int64_t v = parse_duration(s);

	if (v < 0) {
		snprintf(buf, sizeof(buf), "%s (a duration needs a unit: ms, "
			 "s, m, h or d, e.g. 90s, 12h, 7d)", what);
		die_usage(buf, s);
	}
	if (v < lo || v > hi) {
		snprintf(buf, sizeof(buf), "%s (want %s)", what, range);
		die_usage(buf, s);
	}
	return v;
}

/* set_listen takes HOST:PORT, or [IPV6]:PORT as in a URL. */
static void set_listen(const char *s)
{
	const char *colon = strrchr(s, ':'), *host = s;
	size_t n;

	if (colon && s[0] == '[' && colon > s && colon[-1] == ']') {
		host = s + 1;
		n = (size_t)(colon - s) - 2;
	} else {
		n = colon ? (size_t)(colon - s) : 0;
	}
	if (!colon || n == 0 || n >= sizeof(cfg.listen_host))
		die_usage("--listen (want HOST:PORT or [IPV6]:PORT)", s);
	memcpy(cfg.listen_host, host, n);
	cfg.listen_host[n] = 0;
	cfg.listen_port = (int)number("--listen port", colon + 1, 0, 65535);
}

enum opt { O_LISTEN = 1, O_DB, O_WORKERS, O_WORKER_BIN, O_GRACE, O_DRAIN,
	   O_BODY, O_JOBS, O_COMMIT, O_OUTPUT, O_ALLOW_COMMAND, O_QUEUED,
	   O_DB_BYTES, O_RETENTION, O_IDEM_TTL, O_TOKEN, O_CORS, O_EVENTS,
	   O_OPEN_BATCHES, O_CONNS, O_CONNS_CLIENT, O_HEADER_TIMEOUT,
	   O_EVENTS_BYTES, O_GROUP_MAX, O_NODE_NAME, O_NODE_LEASE,
	   O_POLL_INTERVAL, O_WEBHOOK_ALLOW, O_WEBHOOK_BACKOFF, O_LOG_FORMAT,
	   O_LOG_LEVEL, O_VERSION };

static const struct option options[] = {
	{"listen", required_argument, NULL, O_LISTEN},
	{"db", required_argument, NULL, O_DB},
	{"workers", required_argument, NULL, O_WORKERS},
	{"worker-bin", required_argument, NULL, O_WORKER_BIN},
	{"kill-grace-ms", required_argument, NULL, O_GRACE},
	{"drain-timeout-s", required_argument, NULL, O_DRAIN},
	{"max-body-bytes", required_argument, NULL, O_BODY},
	{"max-jobs-per-batch", required_argument, NULL, O_JOBS},
	{"commit-interval-us", required_argument, NULL, O_COMMIT},
	{"max-output-bytes", required_argument, NULL, O_OUTPUT},
	{"allow-command", no_argument, NULL, O_ALLOW_COMMAND},
	{"max-queued-jobs", required_argument, NULL, O_QUEUED},
	{"max-db-bytes", required_argument, NULL, O_DB_BYTES},
	{"max-open-batches", required_argument, NULL, O_OPEN_BATCHES},
	{"retention", required_argument, NULL, O_RETENTION},
	{"idempotency-ttl", required_argument, NULL, O_IDEM_TTL},
	{"token", required_argument, NULL, O_TOKEN},
	{"cors-origin", required_argument, NULL, O_CORS},
	{"events-buffer", required_argument, NULL, O_EVENTS},
	{"events-buffer-bytes", required_argument, NULL, O_EVENTS_BYTES},
	{"max-connections", required_argument, NULL, O_CONNS},
	{"max-connections-per-client", required_argument, NULL,
	 O_CONNS_CLIENT},
	{"header-timeout", required_argument, NULL, O_HEADER_TIMEOUT},
	{"group-max", required_argument, NULL, O_GROUP_MAX},
	{"node-name", required_argument, NULL, O_NODE_NAME},
	{"node-lease", required_argument, NULL, O_NODE_LEASE},
	{"poll-interval", required_argument, NULL, O_POLL_INTERVAL},
	{"webhook-allow", required_argument, NULL, O_WEBHOOK_ALLOW},
	{"webhook-backoff", required_argument, NULL, O_WEBHOOK_BACKOFF},
	{"log-format", required_argument, NULL, O_LOG_FORMAT},
	{"log-level", required_argument, NULL, O_LOG_LEVEL},
	{"version", no_argument, NULL, O_VERSION},
	{"help", no_argument, NULL, 'h'},
	{NULL, 0, NULL, 0}
};

/* node_name_valid accepts 1 to 63 characters of A-Z a-z 0-9 . _ -: a name
 * that needs no escaping anywhere it goes (JSON, logs, a URL). */
static int node_name_valid(const char *v)
{
	size_t n = strlen(v);

	return n >= 1 && n <= 63 && strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
					   "abcdefghijklmnopqrstuvwxyz"
					   "0123456789._-") == n;
}

/* default_node_name is the host's name, its other characters replaced by
 * '-', or "jobpool" when it has none. */
static void default_node_name(char *out, size_t size)
{
	char host[256] = "";
	size_t i;

	if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
		strcpy(host, "jobpool");
	host[63] = 0;
	for (i = 0; host[i]; i++)
		if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			    "0123456789._-", host[i]))
			host[i] = '-';
	snprintf(out, size, "%s", host);
}

static void set_option(int o, const char *v)
{
	switch (o) {
	case O_LISTEN: set_listen(v); break;
	case O_DB: cfg.db_path = v; break;
	case O_WORKERS: cfg.workers = (int)number("--workers", v, 1, 1024); break;
	case O_WORKER_BIN: cfg.worker_bin = v; break;
	case O_GRACE:
		cfg.kill_grace_ms = (int)number("--kill-grace-ms", v, 0, 600000);
		break;
	case O_DRAIN:
		cfg.drain_timeout_s = number("--drain-timeout-s", v, 0, 86400);
		break;
	case O_BODY:
		cfg.max_body_bytes = (size_t)number("--max-body-bytes", v,
						    64, 1L << 30);
		break;
	case O_JOBS:
		cfg.max_jobs_per_batch = (int)number("--max-jobs-per-batch", v,
						     1, 1000000);
		break;
	case O_OUTPUT:
		cfg.max_output_bytes = (size_t)number("--max-output-bytes", v,
						      0, 64L << 20);
		break;
	case O_ALLOW_COMMAND:
		/* from the environment: JOBPOOL_ALLOW_COMMAND=1 (or true) */
		cfg.allow_command = !v || strcmp(v, "1") == 0 ||
				    strcmp(v, "true") == 0 || strcmp(v, "yes") == 0;
		break;
	case O_QUEUED:
		cfg.max_queued_jobs = number("--max-queued-jobs", v, 1,
					     1000000000L);
		break;
	case O_OPEN_BATCHES:
		cfg.max_open_batches = (int)number("--max-open-batches", v, 1,
						   100000000);
		break;
	case O_DB_BYTES:
		cfg.max_db_bytes = number("--max-db-bytes", v, 65536,
					  1L << 50);
		break;
	case O_RETENTION:
		cfg.retention_us = duration("--retention", v, 1, INT64_MAX,
					    "more than 0, e.g. 7d");
		break;
	case O_IDEM_TTL:
		cfg.idempotency_ttl_us = duration("--idempotency-ttl", v, 1,
						  INT64_MAX,
						  "more than 0, e.g. 24h");
		break;
	case O_TOKEN:
		if (!*v)
			die_usage("--token (empty)", v);
		cfg.token = v;
		break;
	case O_CORS:
		cfg.cors_origins = v;
		break;
	case O_EVENTS:
		cfg.events_buffer = (int)number("--events-buffer", v, 16,
						10000000);
		break;
	case O_EVENTS_BYTES:
		cfg.events_buffer_bytes = (size_t)number("--events-buffer-bytes",
							 v, 65536, 1L << 40);
		break;
	case O_COMMIT:
		cfg.commit_interval_us = (int)number("--commit-interval-us", v,
						     0, 1000000);
		break;
	case O_CONNS:
		cfg.max_connections = (int)number("--max-connections", v, 1,
						  1000000);
		break;
	case O_CONNS_CLIENT:
		cfg.max_connections_per_client = (int)number(
			"--max-connections-per-client", v, 1, 1000000);
		break;
	case O_GROUP_MAX:
		cfg.group_max = (int)number("--group-max", v, 1, GROUP_MAX);
		break;
	case O_NODE_NAME:
		if (!node_name_valid(v))
			die_usage("--node-name (1 to 63 of A-Z a-z 0-9 . _ -)",
				  v);
		snprintf(cfg.node_name, sizeof(cfg.node_name), "%s", v);
		break;
	case O_NODE_LEASE:
		cfg.node_lease_us = duration("--node-lease", v, 2000000,
					     600LL * 1000000, "2s to 10m");
		break;
	case O_POLL_INTERVAL:
		cfg.poll_interval_us = duration("--poll-interval", v, 10000,
						60LL * 1000000, "10ms to 60s");
		break;
	case O_WEBHOOK_ALLOW:
		if (webhook_allow_parse(v) < 0)
			die_usage("--webhook-allow (want host names, IP addresses "
				  "or CIDRs, comma-separated)", v);
		cfg.webhook_allow = v;
		break;
	case O_WEBHOOK_BACKOFF:
		cfg.webhook_backoff_us = duration("--webhook-backoff", v, 1000,
						  3600LL * 1000000,
						  "1ms to 1h");
		break;
	case O_HEADER_TIMEOUT:
		cfg.header_timeout_us = duration("--header-timeout", v, 1,
						 3600LL * 1000000,
						 "more than 0, up to 1h");
		break;
	case O_LOG_FORMAT:
		if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0)
			die_usage("--log-format (want text or json)", v);
		log_json_opt = strcmp(v, "json") == 0;
		log_setup(log_json_opt, log_level_opt);
		break;
	case O_LOG_LEVEL:
		if (log_level_parse(v) < 0)
			die_usage("--log-level (want debug, info, warn or error)",
				  v);
		log_level_opt = log_level_parse(v);
		log_setup(log_json_opt, log_level_opt);
		break;
	case O_VERSION:
		printf("jobpoold %s\n", JOBPOOL_VERSION);
		exit(0);
	}
}

/* env_name writes the JOBPOOL_<NAME> of a long option. */
static void env_name(char *env, size_t size, const char *name)
{
	char *p;

	snprintf(env, size, "JOBPOOL_%s", name);
	for (p = env; *p; p++)
		*p = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ?
					      *p - 32 : *p);
}

/* env_only: options with no environment form (they act and exit). */
static int env_only_skip(int val)
{
	return val == 'h' || val == O_VERSION;
}

/* warn_unknown_env names every JOBPOOL_* variable no option reads: a typo
 * (JOBPOOL_WORKER=4) would otherwise be ignored without a word.  The ones
 * the server and its workers pass to jobs are known too: a jobpoold
 * started from a command job inherits them. */
static void warn_unknown_env(void)
{
	static const char *const passed[] = { "JOBPOOL_INSTANCE",
					      "JOBPOOL_JOB",
					      "JOBPOOL_LEASE_FD", NULL };
	const struct option *o;
	char env[64], **e;
	size_t n;
	int i, known;

	for (e = environ; *e; e++) {
		if (strncmp(*e, "JOBPOOL_", 8) != 0)
			continue;
		n = strcspn(*e, "=");
		known = 0;
		for (o = options; o->name && !known; o++) {
			env_name(env, sizeof(env), o->name);
			known = !env_only_skip(o->val) && strlen(env) == n &&
				strncmp(env, *e, n) == 0;
		}
		for (i = 0; passed[i] && !known; i++)
			known = strlen(passed[i]) == n &&
				strncmp(passed[i], *e, n) == 0;
		if (!known)
			log_warn("unknown environment variable %.*s ignored "
				 "(jobpoold --help lists the options; each is "
				 "also JOBPOOL_<NAME>)", (int)n, *e);
	}
}

/* log_options applies --log-format and --log-level (flag or variable)
 * before anything else, so that even a bad flag is reported as asked. */
static void log_options(int argc, char **argv)
{
	const char *v;
	int c;

	if ((v = getenv("JOBPOOL_LOG_FORMAT")) && *v)
		set_option(O_LOG_FORMAT, v);
	if ((v = getenv("JOBPOOL_LOG_LEVEL")) && *v)
		set_option(O_LOG_LEVEL, v);
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1)
		if (c == O_LOG_FORMAT || c == O_LOG_LEVEL)
			set_option(c, optarg);
	opterr = 1;
	optind = 0;             /* glibc: rescan from the start */
}

/* listen_loopback: 127.0.0.0/8 or ::1, reachable from this host only. */
static int listen_loopback(void)
{
	return strncmp(cfg.listen_host, "127.", 4) == 0 ||
	       strcmp(cfg.listen_host, "::1") == 0;
}

/* parse_config applies JOBPOOL_* variables first, then flags over them. */
static void parse_config(int argc, char **argv)
{
	const struct option *o;
	char env[64];
	const char *v;
	int c;

	log_options(argc, argv);
	for (o = options; o->name; o++) {
		if (env_only_skip(o->val))
			continue;
		env_name(env, sizeof(env), o->name);
		v = getenv(env);
		if (v && *v)
			set_option(o->val, v);
	}
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage, stdout);
			exit(0);
		}
		if (c == '?')
			die_usage("option", argv[optind - 1]);
		set_option(c, optarg);
	}
	if (optind < argc)
		die_usage("argument", argv[optind]);
	warn_unknown_env();
	if (strcmp(cfg.listen_host, "localhost") == 0)
		strcpy(cfg.listen_host, "127.0.0.1");
	/* Anyone who can reach the port can run jobs (and with
	 * --allow-command, programs): beyond loopback a token is a must. */
	if (!listen_loopback() && !cfg.token) {
		log_error("refusing to listen on %s without a token; set "
			  "--token or JOBPOOL_TOKEN", cfg.listen_host);
		exit(2);
	}
	/* In a container the host's core count overstates what we get:
	 * taskset and --cpus (cgroup cpu.max) both cut it. */
	if (!cfg.workers) {
		cfg.workers = cpus_usable();
		workers_from_cpus = 1;
	}
	if (!cfg.node_name[0])
		default_node_name(cfg.node_name, sizeof(cfg.node_name));
}

/* hide_token keeps the bearer token from the processes this server runs:
 * jobs run as our user and could read /proc/<pid>/environ and cmdline.
 * The token is copied, its original bytes are wiped, and the process is
 * made non-dumpable (which also makes its /proc files root-only). */
static void hide_token(void)
{
	static char *copy;
	char *env = getenv("JOBPOOL_TOKEN");

	if (cfg.token) {
		copy = strdup(cfg.token);
		if (!copy) {
			log_error("out of memory");
			exit(1);
		}
		/* cfg.token points into argv or environ: wipe both. */
		memset((char *)cfg.token, 'x', strlen(cfg.token));
		if (env && env != cfg.token)
			memset(env, 'x', strlen(env));
		cfg.token = copy;
	}
	unsetenv("JOBPOOL_TOKEN");
	prctl(PR_SET_DUMPABLE, 0);
}

/* program_ok: path is an executable regular file (access(X_OK) alone
 * also passes a directory).  Returns 0, or -1 with errno set. */
static int program_ok(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0 || access(path, X_OK) < 0)
		return -1;
	if (!S_ISREG(st.st_mode)) {
		errno = S_ISDIR(st.st_mode) ? EISDIR : EACCES;
		return -1;
	}
	return 0;
}

/* find_worker locates jobpool-worker: the flag, else beside this binary
 * (installed), else ../workers/ (the build tree).  On failure it logs what
 * it tried and why each failed, and returns -1. */
static int find_worker(void)
{
	static const char *const rel[] = { "/jobpool-worker",
					   "/../workers/jobpool-worker" };
	char self[PATH_MAX - 32], tried[2][PATH_MAX + 64];
	ssize_t n;
	size_t i;

	if (cfg.worker_bin) {
		if (program_ok(cfg.worker_bin) == 0)
			return 0;
		log_error("--worker-bin %s: %s (want the path of the "
			  "jobpool-worker program)", cfg.worker_bin,
			  strerror(errno));
		return -1;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		log_error("cannot find jobpool-worker: /proc/self/exe: %s; "
			  "set --worker-bin", strerror(errno));
		return -1;
	}
	self[n] = 0;
	*strrchr(self, '/') = 0;
	for (i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		snprintf(worker_path, sizeof(worker_path), "%s%s", self, rel[i]);
		if (program_ok(worker_path) == 0) {
			cfg.worker_bin = worker_path;
			return 0;
		}
		snprintf(tried[i], sizeof(tried[i]), "%s (%s)", worker_path,
			 strerror(errno));
	}
	log_error("cannot find jobpool-worker: tried %s and %s; set "
		  "--worker-bin", tried[0], tried[1]);
	return -1;
}

/* check_db_dir: SQLite's own word for a missing directory is "unable to
 * open database file", which names neither the path nor the cause. */
static int check_db_dir(void)
{
	char dir[PATH_MAX];
	const char *slash, *why;
	struct stat st;

	if (!*cfg.db_path || strcmp(cfg.db_path, ":memory:") == 0 ||
	    store_is_url(cfg.db_path) || strncmp(cfg.db_path, "file:", 5) == 0)
		return 0;
	slash = strrchr(cfg.db_path, '/');
	if (!slash)
		return 0;               /* the current directory */
	snprintf(dir, sizeof(dir), "%.*s", slash == cfg.db_path ? 1 :
		 (int)(slash - cfg.db_path), cfg.db_path);
	if (stat(dir, &st) < 0)
		why = errno == ENOENT ? "does not exist" : strerror(errno);
	else if (!S_ISDIR(st.st_mode))
		why = "is not a directory";
	else
		return 0;
	log_error("--db %s: the directory %s %s; create it first", cfg.db_path,
		  dir, why);
	return -1;
}

static void on_signal(int fd, uint32_t events, void *ctx)
{
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGCHLD) {
			pool_reap();
		} else if (!shutting_down) {
			log_info("%s: draining (up to %g s), then exiting",
				 signal_name((int)si.ssi_signo),
				 cfg.drain_timeout_s);
			shutting_down = 1;
			drain_deadline = mono_us() +
				(int64_t)(cfg.drain_timeout_s * 1e6);
		} else {
			/* A second signal: stop waiting for running jobs. */
			drain_deadline = mono_us();
		}
	}
}

static int setup_signals(void)
{
	sigset_t set;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	/* Blocked so that only the signalfd sees them; workers get a clean
	 * mask back through posix_spawn attributes. */
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -1;
	return loop_add(fd, EPOLLIN, on_signal, NULL);
}

/* lock_db makes this the only server of its database, before anything
 * reads or writes it: a second server would migrate under the first, re-queue
 * its running jobs as "interrupted", kill their processes and run them
 * again.  The descriptor stays open (and locked) until the process exits.
 * Returns 0, or -1 when another process holds the lock (exit 6); exits 3
 * when the file cannot be opened at all. */
static int lock_db(void)
{
	pid_t holder;

	/* SQLite's private databases have no file to share; PostgreSQL is
	 * shared by design (nodes hold leases instead). */
	if (!*cfg.db_path || strcmp(cfg.db_path, ":memory:") == 0 ||
	    store_is_url(cfg.db_path))
		return 0;
	if (store_lock(cfg.db_path, &holder) >= 0)
		return 0;
	if (errno != EWOULDBLOCK) {
		log_error("cannot open %s: %s", cfg.db_path, strerror(errno));
		exit(3);
	}
	if (holder > 0)
		log_error("%s is in use by another jobpoold (pid %d); one "
			  "database has one server", cfg.db_path, (int)holder);
	else
		log_error("%s is in use by another jobpoold (pid unknown); one "
			  "database has one server", cfg.db_path);
	return -1;
}

/* The instance names this database among servers on one host; workers
 * pass it to command jobs in JOBPOOL_JOB=<instance>/<job id>. */
static char instance[40];
static int64_t *orphan_jobs;
static size_t norphan_jobs;

static void set_instance(void)
{
	char path[PATH_MAX];
	const char *p = realpath(cfg.db_path, path) ? path : cfg.db_path;
	char hash[33];

	/* Nodes of one PostgreSQL database may share a host: each its own. */
	if (store_is_url(cfg.db_path)) {
		snprintf(path, sizeof(path), "%s#%s", cfg.db_path,
			 cfg.node_name);
		p = path;
	}
	hash_hex(p, strlen(p), hash);
	snprintf(instance, sizeof(instance), "%.16s", hash);
	setenv("JOBPOOL_INSTANCE", instance, 1);
}

static void note_orphan(int64_t job_id, void *ctx)
{
	int64_t *p = realloc(orphan_jobs, (norphan_jobs + 1) * sizeof(*p));

	if (!p)
		return;
	orphan_jobs = p;
	orphan_jobs[norphan_jobs++] = job_id;
}

static int64_t min_deadline(int64_t a, int64_t b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	return a < b ? a : b;
}

/* purge runs retention in bounded steps: at most PURGE_ROWS deleted rows
 * per loop turn, again at once while there is more, else once a second. */
#define PURGE_ROWS 500
static void purge(int64_t now)
{
	static int64_t next;
	int64_t wall = now_us();
	int n;

	if (now < next)
		return;
	n = store_purge_step(cfg.retention_us ? wall - cfg.retention_us : 0,
			     wall - cfg.idempotency_ttl_us, PURGE_ROWS);
	purge_more = n >= PURGE_ROWS;
	next = purge_more ? now : now + 1000000;
}

/* commit ends the open transaction and hands what it held to the
 * publisher: every reply and notice that waited for it. */
static int commit(int64_t *dirty_since)
{
	int rc = publish_flush();

	if (rc < 0)
		log_warn("store: commit failed");
	*dirty_since = 0;
	return rc;
}

/* dispatch gives queued jobs to idle workers.  With PostgreSQL the claims
 * are committed first and only then sent (pool_hold): until the commit,
 * another node could still claim the same rows. */
static void dispatch(int64_t *dirty_since)
{
	int ok = 1;

	engine_dispatch();
	if (pool_holding())
		ok = commit(dirty_since) == 0;
	pool_release(ok);
	engine_dispatched(ok);
}

/* on_rollback: the open transaction is gone (SQLite rolled it back, or its
 * COMMIT failed): drop its notices and fail the replies that waited. */
static void on_rollback(void)
{
	publish_commit(0);
}

/* resync tries, at most twice a second, to put the database back in line
 * with memory after a lost write (engine_resync); until it succeeds no
 * write is taken and no job starts. */
static void resync(int64_t now)
{
	static int64_t next;

	if (!store_degraded() || now < next)
		return;
	next = now + 500000;
	engine_resync();
}

/* turn runs one loop iteration: wait for events, then timers, dispatch,
 * group commit and answers. */
static int turn(int64_t *dirty_since)
{
	int64_t now = mono_us(), next, wait_ms = 1000;
	int64_t mhd_ms = http_timeout_ms();

	next = min_deadline(pool_tick(now), http_tick(now));
	next = min_deadline(next, engine_tick(now));
	next = min_deadline(next, events_tick(now));
	next = min_deadline(next, deliver_next());
	if (*dirty_since)
		next = min_deadline(next, *dirty_since + cfg.commit_interval_us);
	if (shutting_down)
		next = min_deadline(next, drain_deadline);
	if (store_degraded())
		next = min_deadline(next, now + 500000);
	if (next)
		wait_ms = next > now ? (next - now + 999) / 1000 : 0;
	if (mhd_ms >= 0 && mhd_ms < wait_ms)
		wait_ms = mhd_ms;
	if (http_acks_pending() || purge_more)
		wait_ms = 0;    /* a submission arrived after the last commit */
	if (loop_wait((int)wait_ms) < 0)
		return -1;

	now = mono_us();
	resync(now);
	pool_tick(now);
	http_tick(now);
	engine_tick(now);
	events_tick(now);
	deliver_tick(now);
	dispatch(dirty_since);
	http_run();
	purge(now);
	if (store_dirty() && !*dirty_since)
		*dirty_since = now;
	/* Replies that wait for a commit (submissions, cancels) are answered
	 * in this turn; other changes may wait a little to share an fsync
	 * with the next ones. */
	if (http_acks_pending() || (store_dirty() &&
	    now - *dirty_since >= cfg.commit_interval_us)) {
		commit(dirty_since);
		dispatch(dirty_since);  /* batches acknowledged just now */
		http_run();
	}
	/* Notices of changes already committed (a batch joining the
	 * scheduler after its ack) need no further commit. */
	if (!store_dirty() && publish_pending()) {
		publish_flush();
		http_run();
	}
	if (shutting_down) {
		if (pool_busy() == 0)
			stop_loop = 1;
		else if (mono_us() >= drain_deadline)
			pool_stop_all();
	}
	return 0;
}

/* wait_children ends every worker after the loop: idle ones exit when
 * their channel closes; SIGKILL after a bound so exit never hangs on a
 * stuck child.  Unknown children (PID 1 in a container) are reaped too. */
static void wait_children(void)
{
	int64_t start = mono_us();

	pool_stop_all();
	for (;;) {
		pool_reap();
		/* Workers gone: kill what their jobs left (it was reparented
		 * to us) and wait until no child at all remains. */
		if (pool_live() == 0) {
			pool_kill_orphans();
			if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
				break;
		}
		if (mono_us() - start > 5000000)
			pool_kill_all();
		if (mono_us() - start > 10000000)
			break;
		usleep(2000);
	}
}

/* fit_fd_limit raises the soft limit on open files to the hard one, so
 * --max-connections can be served, and lowers --max-connections when
 * even the hard limit cannot hold it (with room for the database, the
 * workers' channels and the loop's own descriptors). */
static void fit_fd_limit(void)
{
	struct rlimit rl;
	long room;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	/* Workers, and the programs they run, keep the limit we were given:
	 * some size tables by it or loop up to it. */
	cfg.child_nofile = rl.rlim_cur == RLIM_INFINITY ? 0 :
			   (int64_t)rl.rlim_cur;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	room = rl.rlim_cur == RLIM_INFINITY ? LONG_MAX :
	       (long)rl.rlim_cur - 64 - 2L * cfg.workers;
	if (room < cfg.max_connections) {
		log_warn("--max-connections %d lowered to %ld: the open file "
			 "limit is %ld", cfg.max_connections, room > 1 ? room : 1,
			 (long)rl.rlim_cur);
		cfg.max_connections = room > 1 ? (int)room : 1;
	}
}

/* db_shown is --db as logs may show it: a URL without its password. */
static const char *db_shown(void)
{
	static char buf[512];
	const char *at, *colon, *user;

	if (!store_is_url(cfg.db_path))
		return cfg.db_path;
	user = strstr(cfg.db_path, "://") + 3;
	at = strchr(user, '@');
	colon = memchr(user, ':', at ? (size_t)(at - user) : 0);
	if (!at || !colon)
		return cfg.db_path;
	snprintf(buf, sizeof(buf), "%.*s:***%s", (int)(colon - cfg.db_path),
		 cfg.db_path, at);
	return buf;
}

/* fmt_duration writes us in the largest unit that holds it whole, as
 * --retention and the others accept it back; "off" for 0. */
static const char *fmt_duration(char *buf, size_t size, int64_t us)
{
	static const struct { int64_t us; const char *unit; } units[] = {
		{ 86400LL * 1000000, "d" }, { 3600LL * 1000000, "h" },
		{ 60LL * 1000000, "m" }, { 1000000, "s" }, { 1000, "ms" },
	};
	size_t i;

	if (us <= 0)
		return "off";
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (us % units[i].us == 0)
			break;
	if (i == sizeof(units) / sizeof(units[0]))
		snprintf(buf, size, "%.3fms", (double)us / 1000);
	else
		snprintf(buf, size, "%lld%s", (long long)(us / units[i].us),
			 units[i].unit);
	return buf;
}

/* log_settings writes the effective settings on one line (flags over
 * variables over defaults), so a log shows what a server ran with; the
 * token is only said to be set. */
static void log_settings(void)
{
	char ret[32], ttl[32], hdr[32], lease[32], poll[32], hook[32];

	log_info("settings: version=%s listen=%s%s%s:%d db=%s workers=%d%s "
		 "worker-bin=%s retention=%s idempotency-ttl=%s "
		 "header-timeout=%s kill-grace-ms=%d drain-timeout-s=%g "
		 "max-body-bytes=%zu max-jobs-per-batch=%d "
		 "max-queued-jobs=%lld max-open-batches=%d max-db-bytes=%lld "
		 "max-output-bytes=%zu max-connections=%d "
		 "max-connections-per-client=%d group-max=%d "
		 "commit-interval-us=%d allow-command=%s token=%s "
		 "cors-origin=%.100s webhook-allow=%.100s webhook-backoff=%s "
		 "node-name=%s node-lease=%s poll-interval=%s log-format=%s "
		 "log-level=%s", JOBPOOL_VERSION,
		 strchr(cfg.listen_host, ':') ? "[" : "", cfg.listen_host,
		 strchr(cfg.listen_host, ':') ? "]" : "", cfg.listen_port,
		 db_shown(), cfg.workers,
		 workers_from_cpus ? " (CPUs usable)" : "", cfg.worker_bin,
		 fmt_duration(ret, sizeof(ret), cfg.retention_us),
		 fmt_duration(ttl, sizeof(ttl), cfg.idempotency_ttl_us),
		 fmt_duration(hdr, sizeof(hdr), cfg.header_timeout_us),
		 cfg.kill_grace_ms, cfg.drain_timeout_s, cfg.max_body_bytes,
		 cfg.max_jobs_per_batch, (long long)cfg.max_queued_jobs,
		 cfg.max_open_batches, (long long)cfg.max_db_bytes,
		 cfg.max_output_bytes, cfg.max_connections,
		 cfg.max_connections_per_client, cfg.group_max,
		 cfg.commit_interval_us, cfg.allow_command ? "yes" : "no",
		 cfg.token ? "set" : "none",
		 cfg.cors_origins ? cfg.cors_origins : "none",
		 cfg.webhook_allow ? cfg.webhook_allow : "none",
		 fmt_duration(hook, sizeof(hook), cfg.webhook_backoff_us),
		 cfg.node_name,
		 fmt_duration(lease, sizeof(lease), cfg.node_lease_us),
		 fmt_duration(poll, sizeof(poll), cfg.poll_interval_us),
		 log_json_opt ? "json" : "text",
		 log_level_opt == LOG_DEBUG ? "debug" :
		 log_level_opt == LOG_INFO ? "info" :
		 log_level_opt == LOG_WARN ? "warn" : "error");
}

int main(int argc, char **argv)
{
	int64_t dirty_since = 0;
	int requeued = 0, interrupted = 0, n;

	parse_config(argc, argv);
	cfg.started_at = now_us();
	hide_token();
	srandom((unsigned)(now_us() ^ getpid()));
	if (find_worker() < 0)
		return 2;
	log_settings();
	if (check_db_dir() < 0)
		return 3;
	if (lock_db() < 0)
		return 6;
	if (store_open(cfg.db_path) < 0) {
		log_error("cannot open the database %s; exiting", db_shown());
		return 3;
	}
	store_set_rollback_hook(on_rollback);
	set_instance();
	if (store_recover(now_us(), &requeued, &interrupted, note_orphan,
			  NULL) < 0) {
		log_error("cannot recover the database %s; exiting",
			  db_shown());
		return 3;
	}
	if (norphan_jobs)
		pool_kill_marked(instance, orphan_jobs, norphan_jobs);
	free(orphan_jobs);
	if (requeued || interrupted)
		log_info("recovery: %d running job(s) re-queued, %d failed as "
			 "interrupted", requeued, interrupted);
	if (events_init() < 0) {
		log_error("cannot set up the event buffer; exiting");
		return 1;
	}
	if (store_events_start() > 0)
		events_log_start(store_events_start());
	n = engine_load();
	/* Processes a dying worker's command job leaves behind come to us,
	 * not to init, so they can be killed (pool_kill_orphans). */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (loop_init() < 0 || setup_signals() < 0) {
		log_error("cannot set up the event loop: %s", strerror(errno));
		return 1;
	}
	fit_fd_limit();
	if (http_start() < 0)
		return 4;
	if (pool_start(cfg.workers, &engine_pool_events) < 0) {
		log_error("cannot start %d worker(s) from %s; exiting",
			  cfg.workers, cfg.worker_bin);
		return 5;
	}
	if (deliver_start() < 0) {
		log_error("cannot start webhook delivery (libcurl)");
		return 1;
	}
	log_info("listening on http://%s%s%s:%d (db %s, %d workers, %d "
		 "unfinished batch(es))", strchr(cfg.listen_host, ':') ? "[" :
		 "", cfg.listen_host, strchr(cfg.listen_host, ':') ? "]" : "",
		 http_port(), db_shown(), cfg.workers, n);
	while (!stop_loop)
		if (turn(&dirty_since) < 0) {
			log_warn("event loop: %s", strerror(errno));
			break;
		}
	log_info("drained; stopping");
	deliver_stop();
	http_quiesce();
	wait_children();
	http_stop();
	store_close();
	sched_clear();
	events_free();
	publish_free();
	metrics_free();
	loop_close();
	log_info("stopped");
	return 0;
}
