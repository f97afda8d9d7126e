/* http.h - what http.c shares with the endpoint code in api.c. */
#ifndef JOBPOOL_HTTP_H
#define JOBPOOL_HTTP_H

#include <microhttpd.h>

#include "jobpool.h"

enum problem {
	P_INVALID_JSON, P_INVALID, P_NOT_FOUND, P_METHOD, P_CONFLICT,
	P_TOO_LARGE, P_MEDIA_TYPE, P_INTERNAL, P_UNAVAILABLE, P_QUEUE_FULL,
	P_UNAUTHORIZED
};

enum phase { PH_NEW, PH_ACK, PH_WAIT, PH_RESUMED };

struct request;
typedef enum MHD_Result (*api_fn)(struct request *r);

/* Per-request state: allocated on MHD's first callback, freed only in the
 * completion callback (STYLE 9). */
struct request {
	struct MHD_Connection *conn;
	const char *url, *method;       /* borrowed from MHD */
	char *body;                     /* NUL-terminated, capped */
	size_t len, cap;
	int gated, answered, listed;
	unsigned status;                /* of the answer, for /metrics */
	int64_t start_mono;             /* first callback, for /metrics */
	enum phase phase;
	const struct route *route;
	int64_t ids[2];                 /* ids parsed from the path */
	/* a reply that waits for the commit of its change */
	api_fn on_commit;
	int commit_ok;
	int op_rc;                      /* of a cancel or delete, for its reply */
	/* ack of a submission */
	int64_t ack_batch;
	json_t *job_ids;
	int njobs;
	int replay;                     /* Idempotency-Key seen before */
	/* long-poll */
	int wait_batch;
	int64_t wait_id;
	int64_t deadline;               /* monotonic us, set on first wait */
	size_t heap_idx;                /* in the deadline heap */
	/* in the list of acks, or the waiters' hash bucket */
	struct request *prev, *next;
	/* extra response headers */
	struct {
		char name[32];
		char value[224];
	} headers[6];
	size_t nheaders;
};

struct route {
	const char *pattern;            /* "/v1/batches/{b}/jobs" */
	const char *method;
	api_fn fn;
};

/* http.c */
/* http_cors_allowed tells whether the request's Origin may be given CORS
 * headers (--cors-origin lists it, or is "*"). */
int http_cors_allowed(struct request *r);
void http_header(struct request *r, const char *name, const char *value);
enum MHD_Result http_send(struct request *r, unsigned status,
			  struct MHD_Response *resp);
enum MHD_Result http_json(struct request *r, unsigned status, json_t *body);
enum MHD_Result http_empty(struct request *r, unsigned status);
enum MHD_Result http_text(struct request *r, const char *type,
			  const char *text);
enum MHD_Result http_problem(struct request *r, enum problem p,
			     const char *detail, json_t *errors);
enum MHD_Result http_invalid(struct request *r, const char *path,
			     const char *message);
void http_suspend_commit(struct request *r, api_fn reply);
/* http_suspend_ack is http_suspend_commit for a submission: job_ids is
 * stolen; njobs counts against the queue limits until it is answered. */
void http_suspend_ack(struct request *r, int64_t batch_id, json_t *job_ids,
		      int njobs, api_fn reply);
void http_suspend_wait(struct request *r, int is_batch, int64_t id);

void http_resumed(void);
/* http_daemon: the daemon of http_start (borrowed), or NULL; for tests
 * that feed it sockets of their own. */
struct MHD_Daemon *http_daemon(void);

/* events.c */
enum MHD_Result events_open(struct request *r, int64_t batch_id,
			    int64_t after_id);

/* joblog.c */
/* joblog_open answers GET /v1/batches/{id}/joblog for a batch known to
 * exist: 200 and a stream that reads the batch's jobs a page at a time
 * (the stream owns its state; MHD frees it when the answer ends).  Out of
 * memory it answers 500 itself. */
enum MHD_Result joblog_open(struct request *r, int64_t batch_id);

/* output.c */
/* output_open answers GET /v1/jobs/{id}/output: the captured bytes of
 * stream (0 stdout, 1 stderr) of the job's attempt (0: the running one on
 * this node, else the latest that ended), as text/plain; with follow_it a
 * stream that goes on until that attempt ends (the stream owns its state;
 * MHD frees it when the answer ends).  404 for an unknown job or attempt;
 * out of memory it answers 500 itself. */
enum MHD_Result output_open(struct request *r, int64_t job_id, int stream,
			    int attempt, int follow_it);
/* output_close ends every follow (shutdown). */
void output_close(void);

/* api.c */
enum MHD_Result http_route(struct request *r);
int http_gate(struct request *r);
enum MHD_Result api_resume(struct request *r);

#endif
