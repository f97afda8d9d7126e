/* fuzz_batch.c - libFuzzer target: bytes as the body of POST /v1/batches.
 *
 * The bytes take the path api_batch_create gives a body: json_loadb with
 * JSON_REJECT_DUPLICATES (parse_body), then validate_batch, once without
 * and once with --allow-command (validation only: nothing runs).  Then
 * what the server does next with the verdict: a problem+json of the errors
 * (http_problem's json_pack and dump), or the canonical dump and hash of a
 * valid body (the Idempotency-Key check) and the args text stored per job.
 * Invariants checked on top of the sanitizers: a count is returned iff
 * errors were listed, at most 100 are listed plus one "more" entry, every
 * path is a JSON Pointer, and every reply is valid JSON again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobpool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LISTED 101          /* MAX_ERRORS in validate.c, plus "more" */

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_batch: %s: %s\n", what, detail ? detail : "");
	abort();
}

/* check_errors checks the errors validate_batch listed (borrowed) against
 * the count it returned. */
static void check_errors(const json_t *errors, int n)
{
	const json_t *e;
	size_t i;

	if (n < 0 || (n > 0) != (json_array_size(errors) > 0))
		fail("count and list disagree", NULL);
	if (json_array_size(errors) > MAX_LISTED)
		fail("too many errors listed", NULL);
	json_array_foreach(errors, i, e) {
		const char *path = json_string_value(json_object_get(e, "path"));
		const char *msg = json_string_value(json_object_get(e, "message"));

		if (!path || path[0] != '/' || !msg || !*msg)
			fail("error without a pointer or a message", path);
	}
}

/* reply builds the problem+json the server sends for errors (stolen) and
 * checks it reads back as JSON. */
static void reply(json_t *errors, int n)
{
	char detail[64], *text;
	json_t *body, *back;

	snprintf(detail, sizeof(detail), "%d invalid field%s", n,
		 n == 1 ? "" : "s");
	body = json_pack("{s:s, s:s, s:i, s:s, s:o}",
			 "type", "urn:jobpool:problem:invalid-request",
			 "title", "Request is invalid", "status", 400,
			 "detail", detail, "errors", errors);
	if (!body)
		fail("problem body cannot be built", detail);
	text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	if (!text)
		fail("problem body cannot be dumped", detail);
	back = json_loads(text, 0, NULL);
	if (!back)
		fail("problem body is not JSON", text);
	json_decref(back);
	free(text);
}

/* accepted does what api_batch_create and store_batch_insert do with a
 * valid body (borrowed) before SQL: the canonical text and its hash, and
 * each job's args as stored. */
static void accepted(const json_t *body)
{
	const json_t *jobs = json_object_get(body, "jobs"), *job;
	char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
	char hash[33];
	size_t i;

	if (!canon)
		fail("valid body cannot be dumped", NULL);
	hash_hex(canon, strlen(canon), hash);
	free(canon);
	if (!json_is_array(jobs) || json_array_size(jobs) == 0)
		fail("valid body without jobs", NULL);
	json_array_foreach(jobs, i, job) {
		const json_t *args = json_object_get(job, "args");
		char *text;

		if (!json_is_string(json_object_get(job, "kind")))
			fail("valid job without a kind", NULL);
		if (!args)
			continue;
		text = json_dumps(args, JSON_COMPACT);
		if (!text)
			fail("valid args cannot be dumped", NULL);
		free(text);
	}
}

/* parse_failed builds what parse_body and http_problem answer to a body
 * that is not JSON: jansson's message may quote invalid UTF-8 from the
 * body, and then the fallback without it must still be JSON. */
static void parse_failed(const json_error_t *jerr)
{
	char detail[300], *text;
	json_t *errors, *body;

	snprintf(detail, sizeof(detail), "%s (line %d, column %d)",
		 jerr->text, jerr->line, jerr->column);
	errors = json_pack("[{s:s, s:s}]", "path", "/", "message", jerr->text);
	body = json_pack("{s:s, s:s, s:i, s:s, s:o}",
			 "type", "urn:jobpool:problem:invalid-json",
			 "title", "Body is not valid JSON", "status", 400,
			 "detail", detail,
			 "errors", errors ? errors : json_array());
	if (!body)
		body = json_pack("{s:s, s:s, s:i, s:s, s:[]}",
				 "type", "urn:jobpool:problem:invalid-json",
				 "title", "Body is not valid JSON",
				 "status", 400, "detail",
				 "Body is not valid JSON", "errors");
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text)
		fail("invalid-json problem cannot be built", detail);
	free(text);
}

static void check(const json_t *body, int allow_command)
{
	json_t *errors = json_array();
	int n;

	cfg.allow_command = allow_command;
	n = validate_batch(body, errors);
	check_errors(errors, n);
	if (n > 0) {
		reply(errors, n);
		return;
	}
	json_decref(errors);
	accepted(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	json_t *body;

	/* parse_body: an empty body is passed as "" with length 0 */
	body = json_loadb(size ? (const char *)data : "", size,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!body) {
		parse_failed(&jerr);
		return 0;
	}
	/* the limits the integration catalogue runs with */
	cfg.max_jobs_per_batch = 1000;
	check(body, 0);
	check(body, 1);
	json_decref(body);
	return 0;
}
