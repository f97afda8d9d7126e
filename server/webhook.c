/* webhook.c - what a batch's webhook is: its URL checked against
 * --webhook-allow, its secret, its signature (Standard Webhooks), its
 * payload and its retry schedule.  No I/O here: deliver.c sends, the store
 * keeps the outbox, so this file is what the unit tests pin down.
 *
 * The allow-list exists so that jobpool is never an open SSRF proxy: a
 * client may only make the server POST to hosts the operator named.  It is
 * matched at submission and again before every attempt, and it resolves
 * nothing: a host name matches literally (case-insensitive; "*.example.com"
 * matches its subdomains), an IP literal matches an allowed address or
 * CIDR.  A host name allowed is trusted whatever it resolves to.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "jobpool.h"

struct allow {
	int family;             /* 0: a host name, AF_INET, AF_INET6 */
	char host[256];         /* lower case, no trailing dot */
	unsigned char addr[16];
	int prefix;             /* bits */
};
static struct allow *allows;
static size_t nallows;

/* lower_host copies a host name in lower case without its trailing dot;
 * returns -1 when it does not fit. */
static int lower_host(char *out, size_t size, const char *s, size_t n)
{
	size_t i;

	if (n && s[n - 1] == '.')
		n--;
	if (n == 0 || n >= size)
		return -1;
	for (i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)s[i]);
	out[n] = 0;
	return 0;
}

/* parse_ip reads an address (IPv6 possibly in brackets) into a, its family
 * into *family.  Returns 0, or -1 when s is no IP literal. */
static int parse_ip(const char *s, unsigned char *a, int *family)
{
	char buf[64];
	size_t n = strlen(s);

	if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
		s++;
		n -= 2;
	}
	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = 0;
	if (inet_pton(AF_INET, buf, a) == 1) {
		*family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, buf, a) == 1) {
		*family = AF_INET6;
		return 0;
	}
	return -1;
}

/* allow_entry parses one entry of --webhook-allow into e. */
static int allow_entry(const char *s, size_t n, struct allow *e)
{
	char buf[300];
	char *slash, *end;
	long bits;
	int max;

	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = 0;
	memset(e, 0, sizeof(*e));
	slash = strchr(buf, '/');
	if (slash)
		*slash = 0;
	if (parse_ip(buf, e->addr, &e->family) == 0) {
		max = e->family == AF_INET ? 32 : 128;
		e->prefix = max;
		if (slash) {
			bits = strtol(slash + 1, &end, 10);
			if (!slash[1] || *end || bits < 0 || bits > max)
				return -1;
			e->prefix = (int)bits;
		}
		return 0;
	}
	if (slash || strspn(buf, "abcdefghijklmnopqrstuvwxyz"
			    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*") != n)
		return -1;
	/* "*" only as a whole first label: "*.example.com" */
	if (strchr(buf + 1, '*') || (buf[0] == '*' && buf[1] != '.'))
		return -1;
	return lower_host(e->host, sizeof(e->host), buf, n);
}

int webhook_allow_parse(const char *list)
{
	struct allow *a = NULL, *p;
	const char *s = list, *comma;
	size_t n = 0, len;

	while (*s) {
		comma = strchr(s, ',');
		len = comma ? (size_t)(comma - s) : strlen(s);
		while (len && isspace((unsigned char)*s)) {
			s++;
			len--;
		}
		while (len && isspace((unsigned char)s[len - 1]))
			len--;
		if (len) {
			p = realloc(a, (n + 1) * sizeof(*a));
			if (!p || allow_entry(s, len, &p[n]) < 0) {
				free(p ? p : a);
				return -1;
			}
			a = p;
			n++;
		}
		if (!comma)
			break;
		s = comma + 1;
	}
	free(allows);
	allows = a;
	nallows = n;
	return 0;
}

size_t webhook_allow_count(void)
{
	return nallows;
}

static int in_prefix(const unsigned char *a, const unsigned char *net,
		     int bits)
{
	int full = bits / 8, rest = bits % 8;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));

	if (memcmp(a, net, (size_t)full) != 0)
		return 0;
	return rest == 0 || ((a[full] ^ net[full]) & mask) == 0;
}

int webhook_host_allowed(const char *host)
{
	unsigned char a[16];
	char h[256];
	size_t i, n, m;
	int family;

	if (parse_ip(host, a, &family) == 0) {
		for (i = 0; i < nallows; i++)
			if (allows[i].family == family &&
			    in_prefix(a, allows[i].addr, allows[i].prefix))
				return 1;
		return 0;
	}
	if (lower_host(h, sizeof(h), host, strlen(host)) < 0)
		return 0;
	n = strlen(h);
	for (i = 0; i < nallows; i++) {
		if (allows[i].family)
			continue;
		if (allows[i].host[0] != '*') {
			if (strcmp(allows[i].host, h) == 0)
				return 1;
			continue;
		}
		/* "*.example.com": ".example.com" ends h, and more precedes */
		m = strlen(allows[i].host + 1);
		if (n > m && strcmp(h + n - m, allows[i].host + 1) == 0)
			return 1;
	}
	return 0;
}

const char *webhook_url_check(const char *url, char **normalized)
{
	const char *err = NULL;
	char *scheme = NULL, *host = NULL, *user = NULL, *out = NULL;
	CURLU *u;

	if (normalized)
		*normalized = NULL;
	if (strlen(url) > WEBHOOK_URL_MAX)
		return "must be at most 2048 characters";
	u = curl_url();
	if (!u)
		return "could not be parsed (out of memory)";
	/* curl's own parser, so the host checked here is the host curl
	 * connects to (it normalizes "127.1" and "0x7f.1" alike). */
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		err = "must be an absolute http:// or https:// URL";
		goto out;
	}
	if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
		err = "must be an http:// or https:// URL";
		goto out;
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
		err = "must not carry credentials (the secret signs each "
		      "delivery)";
		goto out;
	}
	if (!webhook_host_allowed(host)) {
		err = "its host is not allowed by the server's --webhook-allow";
		goto out;
	}
	if (normalized && curl_url_get(u, CURLUPART_URL, &out, 0) == CURLUE_OK) {
		*normalized = strdup(out);
		if (!*normalized)
			err = "could not be parsed (out of memory)";
	}
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(out);
	curl_url_cleanup(u);
	return err;
}

int webhook_key(const char *secret, unsigned char *key, size_t *len)
{
	size_t n = strlen(secret), pad = 0;
	int got;

	if (strncmp(secret, "whsec_", 6) != 0) {
		if (n > WEBHOOK_KEY_MAX)
			return -1;
		memcpy(key, secret, n);
		*len = n;
		return 0;
	}
	secret += 6;
	n -= 6;
	/* EVP_DecodeBlock wants whole 4-character groups and counts the
	 * padding as zero bytes. */
	if (n == 0 || n % 4 != 0 || n / 4 * 3 > WEBHOOK_KEY_MAX)
		return -1;
	if (secret[n - 1] == '=')
		pad++;
	if (secret[n - 2] == '=')
		pad++;
	if (strspn(secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		   "0123456789+/") != n - pad)
		return -1;
	got = EVP_DecodeBlock(key, (const unsigned char *)secret, (int)n);
	if (got < 0 || (size_t)got < pad)
		return -1;
	*len = (size_t)got - pad;
	return 0;
}

char *webhook_new_secret(void)
{
	unsigned char key[24];
	char *s = malloc(6 + 4 * sizeof(key) / 3 + 1);

	if (!s)
		return NULL;
	if (RAND_bytes(key, sizeof(key)) != 1) {
		free(s);
		return NULL;
	}
	memcpy(s, "whsec_", 6);
	EVP_EncodeBlock((unsigned char *)s + 6, key, sizeof(key));
	return s;
}

int webhook_sign(const unsigned char *key, size_t keylen, const char *msg_id,
		 int64_t ts, const char *body, char *out, size_t size)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char head[96];
	int hn = snprintf(head, sizeof(head), "%s.%lld.", msg_id, (long long)ts);
	size_t bn = strlen(body);
	unsigned char *msg;

	if (hn < 0 || (size_t)hn >= sizeof(head) || size < 4 + 45)
		return -1;
	msg = malloc((size_t)hn + bn);
	if (!msg)
		return -1;
	memcpy(msg, head, (size_t)hn);
	memcpy(msg + hn, body, bn);
	if (!HMAC(EVP_sha256(), key, (int)keylen, msg, (size_t)hn + bn, mac,
		  &maclen)) {
		free(msg);
		return -1;
	}
	free(msg);
	memcpy(out, "v1,", 3);
	EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)maclen);
	return 0;
}

int webhook_events(const json_t *events)
{
	const json_t *e;
	size_t i;
	int mask = 0, bit;

	if (!events || json_is_null(events))
		return WEBHOOK_BATCH_FINISHED;
	if (!json_is_array(events) || json_array_size(events) == 0)
		return -1;
	json_array_foreach(events, i, e) {
		const char *s = json_string_value(e);

		if (!s)
			return -1;
		if (strcmp(s, "batch.finished") == 0)
			bit = WEBHOOK_BATCH_FINISHED;
		else if (strcmp(s, "job.finished") == 0)
			bit = WEBHOOK_JOB_FINISHED;
		else
			return -1;
		if (mask & bit)
			return -1;      /* a repeated event is a typo */
		mask |= bit;
	}
	return mask;
}

json_t *webhook_events_json(int mask)
{
	json_t *a = json_array();

	if (mask & WEBHOOK_BATCH_FINISHED)
		json_array_append_new(a, json_string("batch.finished"));
	if (mask & WEBHOOK_JOB_FINISHED)
		json_array_append_new(a, json_string("job.finished"));
	return a;
}

int64_t webhook_next_at(int attempts, int64_t created_at, int64_t now,
			int64_t min_backoff_us)
{
	int64_t delay = min_backoff_us > 0 ? min_backoff_us : 1;
	int i;

	/* min * 2^(attempts - 1), doubled without overflow up to the cap */
	for (i = 1; i < attempts && delay < WEBHOOK_BACKOFF_MAX_US; i++)
		delay *= 2;
	if (delay > WEBHOOK_BACKOFF_MAX_US)
		delay = WEBHOOK_BACKOFF_MAX_US;
	/* Retried for at least WEBHOOK_RETRY_FOR_US after the event: an
	 * attempt that fails later than that is the last. */
	if (now - created_at >= WEBHOOK_RETRY_FOR_US)
		return -1;
	return now + delay;
}

char *webhook_payload(const char *event, int64_t at, json_t *data)
{
	json_t *p = json_pack("{s:s, s:o, s:o}", "type", event,
			      "timestamp", json_time(at),
			      "data", data ? data : json_object());
	char *text;

	if (!p)
		return NULL;
	text = json_dumps(p, JSON_COMPACT);
	json_decref(p);
	return text;
}
