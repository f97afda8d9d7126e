/* config.c - the settings and their defaults (main.c applies flags and
 * JOBPOOL_* variables over them; tests use the defaults as they are). */
#include "jobpool.h"

struct config cfg = {
	.listen_host = "127.0.0.1",
	.listen_port = 8080,
	.db_path = "./jobpool.db",
	.kill_grace_ms = 2000,
	.drain_timeout_s = 30,
	.max_body_bytes = 16 << 20,
	.max_output_bytes = 1 << 20,
	.max_queued_jobs = 2000000,
	.max_open_batches = 100000,
	.idempotency_ttl_us = 86400LL * 1000000,
	.events_buffer = 100000,
	.events_buffer_bytes = 8 << 20,
	.max_jobs_per_batch = 100000,
	.commit_interval_us = 2000,
	.max_connections = 1024,
	.max_connections_per_client = 256,
	.header_timeout_us = 10 * 1000000,
	/* Not GROUP_MAX: the server spends ~20 us on each outcome, and a
	 * message of 64 held the loop long enough to push GET p99 past 5 ms
	 * while a 100,000-job batch ran; 16 keeps it near 3 ms at the same
	 * run rate (peers.py). */
	.group_max = 16,
	.node_lease_us = 4 * 1000000,
	.poll_interval_us = 250000,
	.webhook_backoff_us = 1000000,
};
volatile int shutting_down;
