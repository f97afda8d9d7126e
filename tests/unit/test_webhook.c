/* test_webhook.c - unit tests for webhook.c: the Standard Webhooks
 * signature (known vectors, computed with Python's hmac and base64; the
 * first is the example of the Standard Webhooks specification), secrets
 * (whsec_ base64, raw bytes, generated), the --webhook-allow matching
 * (names, wildcards, IPv4/IPv6 CIDRs, curl's normalized hosts), URL checks,
 * events, the retry schedule and the payload. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "jobpool.h"

/* ---- signatures ---- */

Test(sign, standard_webhooks_example)
{
	unsigned char key[WEBHOOK_KEY_MAX];
	size_t len;
	char sig[128];

	cr_assert_eq(webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key,
				 &len), 0);
	cr_assert_eq(len, 24);
	cr_assert_eq(webhook_sign(key, len, "msg_p5jXN8AQM9LWM0D4loKWxJek",
				  1614265330, "{\"test\": 2432232314}", sig,
				  sizeof(sig)), 0);
	cr_assert_str_eq(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

Test(sign, raw_secret_is_its_bytes)
{
	unsigned char key[WEBHOOK_KEY_MAX];
	size_t len;
	char sig[128];

	cr_assert_eq(webhook_key("a raw secret of 20 b", key, &len), 0);
	cr_assert_eq(len, 20);
	cr_assert_eq(webhook_sign(key, len, "msg_1", 1700000000, "{\"a\":1}",
				  sig, sizeof(sig)), 0);
	cr_assert_str_eq(sig, "v1,poqkxenNWePF1ROsaG8gRwqQ0BOy5wORnG9mk2+bybc=");
}

Test(sign, bad_whsec_and_padding)
{
	unsigned char key[WEBHOOK_KEY_MAX];
	size_t len;

	cr_assert_eq(webhook_key("whsec_", key, &len), -1);
	cr_assert_eq(webhook_key("whsec_abc", key, &len), -1);     /* not 4n */
	cr_assert_eq(webhook_key("whsec_ab!d", key, &len), -1);
	cr_assert_eq(webhook_key("whsec_a=bc", key, &len), -1);
	cr_assert_eq(webhook_key("whsec_YQ==", key, &len), 0);
	cr_assert_eq(len, 1);
	cr_assert_eq(key[0], 'a');
	cr_assert_eq(webhook_key("whsec_YWI=", key, &len), 0);
	cr_assert_eq(len, 2);
}

Test(sign, generated_secret)
{
	unsigned char key[WEBHOOK_KEY_MAX];
	char *a = webhook_new_secret(), *b = webhook_new_secret();
	size_t len;

	cr_assert(a && b);
	cr_assert_eq(strncmp(a, "whsec_", 6), 0);
	cr_assert_str_neq(a, b);
	cr_assert_eq(webhook_key(a, key, &len), 0);
	cr_assert_eq(len, 24);
	free(a);
	free(b);
}

/* ---- the allow-list ---- */

Test(allow, names_and_wildcards)
{
	cr_assert_eq(webhook_allow_parse("hooks.example, *.svc.test"), 0);
	cr_assert_eq(webhook_allow_count(), 2);
	cr_assert(webhook_host_allowed("hooks.example"));
	cr_assert(webhook_host_allowed("HOOKS.Example."));
	cr_assert_not(webhook_host_allowed("evil.hooks.example"));
	cr_assert_not(webhook_host_allowed("hooks.example.evil"));
	cr_assert(webhook_host_allowed("a.svc.test"));
	cr_assert(webhook_host_allowed("a.b.svc.test"));
	cr_assert_not(webhook_host_allowed("svc.test"));
	cr_assert_not(webhook_host_allowed("xsvc.test"));
	cr_assert_not(webhook_host_allowed("127.0.0.1"));
}

Test(allow, cidrs)
{
	cr_assert_eq(webhook_allow_parse("10.1.0.0/16,192.168.1.7,fd00::/8,"
					 "::1"), 0);
	cr_assert(webhook_host_allowed("10.1.255.3"));
	cr_assert_not(webhook_host_allowed("10.2.0.1"));
	cr_assert(webhook_host_allowed("192.168.1.7"));
	cr_assert_not(webhook_host_allowed("192.168.1.8"));
	cr_assert(webhook_host_allowed("[fd12::1]"));
	cr_assert_not(webhook_host_allowed("[fe80::1]"));
	cr_assert(webhook_host_allowed("[::1]"));
	/* a name is never resolved, so it never matches an address */
	cr_assert_not(webhook_host_allowed("localhost"));
	cr_assert_eq(webhook_allow_parse("0.0.0.0/0"), 0);
	cr_assert(webhook_host_allowed("8.8.8.8"));
	cr_assert_not(webhook_host_allowed("[::1]"));
	cr_assert_eq(webhook_allow_parse("10.0.0.0/7"), 0);
	cr_assert(webhook_host_allowed("11.255.0.1"));
	cr_assert_not(webhook_host_allowed("12.0.0.1"));
}

Test(allow, bad_entries_keep_the_list)
{
	cr_assert_eq(webhook_allow_parse("10.0.0.0/8"), 0);
	cr_assert_eq(webhook_allow_parse("10.0.0.0/33"), -1);
	cr_assert_eq(webhook_allow_parse("host/8"), -1);
	cr_assert_eq(webhook_allow_parse("a*.b"), -1);
	cr_assert_eq(webhook_allow_parse("http://x"), -1);
	cr_assert_eq(webhook_allow_parse("::1/129"), -1);
	cr_assert(webhook_host_allowed("10.9.9.9"));
	cr_assert_eq(webhook_allow_parse(""), 0);
	cr_assert_eq(webhook_allow_count(), 0);
	cr_assert_not(webhook_host_allowed("10.9.9.9"));
}

Test(allow, urls_as_curl_reads_them)
{
	char *norm = NULL;

	cr_assert_eq(webhook_allow_parse("127.0.0.0/8,hooks.example"), 0);
	cr_assert_null(webhook_url_check("http://127.0.0.1:9/x?y=1", &norm));
	cr_assert_str_eq(norm, "http://127.0.0.1:9/x?y=1");
	free(norm);
	/* curl's forms of an IPv4 address are checked as the address */
	cr_assert_null(webhook_url_check("http://127.1/x", NULL));
	cr_assert_null(webhook_url_check("http://2130706433/x", NULL));
	cr_assert_not_null(webhook_url_check("http://167772161/x", NULL));
	cr_assert_null(webhook_url_check("https://HOOKS.example/x", NULL));
	cr_assert_not_null(webhook_url_check("http://hooks.example.evil/", NULL));
	cr_assert_not_null(webhook_url_check("ftp://127.0.0.1/", NULL));
	cr_assert_not_null(webhook_url_check("file:///etc/passwd", NULL));
	cr_assert_not_null(webhook_url_check("127.0.0.1/x", NULL));
	cr_assert_not_null(webhook_url_check("http://u:p@127.0.0.1/", NULL));
	cr_assert_not_null(webhook_url_check("http://", NULL));
	cr_assert_not_null(webhook_url_check("http://[::1]/", NULL));
}

/* ---- events, retries, payload ---- */

Test(events, masks)
{
	json_t *e = json_loads("[\"job.finished\", \"batch.finished\"]", 0,
			       NULL);
	json_t *j;

	cr_assert_eq(webhook_events(NULL), WEBHOOK_BATCH_FINISHED);
	cr_assert_eq(webhook_events(e), 3);
	json_decref(e);
	e = json_loads("[\"job.finished\", \"job.finished\"]", 0, NULL);
	cr_assert_eq(webhook_events(e), -1);
	json_decref(e);
	e = json_array();
	cr_assert_eq(webhook_events(e), -1);
	json_decref(e);
	j = webhook_events_json(3);
	cr_assert_eq(json_array_size(j), 2);
	cr_assert_str_eq(json_string_value(json_array_get(j, 0)),
			 "batch.finished");
	json_decref(j);
}

Test(retry, backoff_doubles_to_an_hour_for_a_day)
{
	int64_t s = 1000000, t0 = 1000 * s;

	cr_assert_eq(webhook_next_at(1, t0, t0, s), t0 + s);
	cr_assert_eq(webhook_next_at(2, t0, t0, s), t0 + 2 * s);
	cr_assert_eq(webhook_next_at(4, t0, t0, s), t0 + 8 * s);
	cr_assert_eq(webhook_next_at(13, t0, t0, s), t0 + 3600 * s);
	cr_assert_eq(webhook_next_at(1000, t0, t0, s), t0 + 3600 * s);
	/* still retried just before a day, given up after */
	cr_assert_gt(webhook_next_at(30, t0, t0 + 86399 * s, s), 0);
	cr_assert_eq(webhook_next_at(30, t0, t0 + 86400 * s, s), -1);
	/* the test knob: 50 ms first */
	cr_assert_eq(webhook_next_at(3, t0, t0, 50000), t0 + 200000);
}

Test(payload, envelope)
{
	char *p = webhook_payload("batch.finished", 1614265330000000LL,
				  json_pack("{s:s}", "id", "b_000000000001"));
	json_t *j = json_loads(p, 0, NULL);

	cr_assert_not_null(j);
	cr_assert_str_eq(json_string_value(json_object_get(j, "type")),
			 "batch.finished");
	cr_assert_str_eq(json_string_value(json_object_get(j, "timestamp")),
			 "2021-02-25T15:02:10.000Z");
	cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j,
		"data"), "id")), "b_000000000001");
	json_decref(j);
	free(p);
}
