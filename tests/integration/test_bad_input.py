"""A catalogue of bad requests: each gets the documented problem+json that
names the culprit, nothing is written, and the server stays healthy."""

import json

from harness import Server, assert_problem

JSON = {"Content-Type": "application/json"}
NOOP = {"kind": "noop"}


def batch(**fields):
    b = {"jobs": [NOOP]}
    b.update(fields)
    return json.dumps(b).encode()


def job(**fields):
    j = {"kind": "noop"}
    j.update(fields)
    return json.dumps({"jobs": [j]}).encode()


def nested(depth):
    return b'{"jobs":[{"kind":"echo","args":{"value":' + b"[" * depth + \
        b"]" * depth + b"}}]}"


# (name, method, path, headers, raw body, status, errors[].path substring)
CASES = [
    ("truncated json", "POST", "/v1/batches", JSON, b'{"jobs": [', 400, "/"),
    ("not json", "POST", "/v1/batches", JSON, b"hello", 400, "/"),
    ("empty body", "POST", "/v1/batches", JSON, b"", 400, "/"),
    ("json array", "POST", "/v1/batches", JSON, b"[]", 400, "/"),
    ("json null", "POST", "/v1/batches", JSON, b"null", 400, "/"),
    ("trailing garbage", "POST", "/v1/batches", JSON,
     b'{"jobs":[{"kind":"noop"}]} x', 400, "/"),
    ("duplicate keys", "POST", "/v1/batches", JSON,
     b'{"jobs":[{"kind":"noop"}],"jobs":[]}', 400, "/"),
    ("invalid utf-8", "POST", "/v1/batches", JSON,
     b'{"name":"\xff","jobs":[{"kind":"noop"}]}', 400, "/"),
    ("overlong utf-8", "POST", "/v1/batches", JSON,
     b'{"name":"\xc0\xaf","jobs":[{"kind":"noop"}]}', 400, "/"),
    ("lone surrogate", "POST", "/v1/batches", JSON,
     b'{"name":"\\ud800","jobs":[{"kind":"noop"}]}', 400, "/"),
    ("escaped NUL", "POST", "/v1/batches", JSON,
     b'{"name":"a\\u0000b","jobs":[{"kind":"noop"}]}', 400, "/"),
    ("raw NUL byte", "POST", "/v1/batches", JSON,
     b'{"jobs":[{"kind":"noop"}]}\x00', 400, "/"),
    ("nesting 5000 deep", "POST", "/v1/batches", JSON, nested(5000), 400, "/"),
    ("number overflow", "POST", "/v1/batches", JSON,
     b'{"jobs":[{"kind":"sleep","args":{"seconds":1e400}}]}', 400, "/"),
    ("integer overflow", "POST", "/v1/batches", JSON,
     b'{"priority":123456789012345678901234567890,"jobs":[]}', 400, "/"),
    ("too many jobs", "POST", "/v1/batches", JSON,
     json.dumps({"jobs": [NOOP] * 1001}).encode(), 400, "/jobs"),
    ("body over limit", "POST", "/v1/batches", JSON,
     json.dumps({"jobs": [{"kind": "echo", "args": {"value": "x" * 70000}}]}
                ).encode(), 413, None),
    ("text/plain", "POST", "/v1/batches", {"Content-Type": "text/plain"},
     batch(), 415, None),
    ("no content type", "POST", "/v1/batches", {}, batch(), 415, None),
    ("unknown top field", "POST", "/v1/batches", JSON, batch(nmae="x"), 400,
     "/nmae"),
    ("field with slash", "POST", "/v1/batches", JSON,
     batch(**{"a/b": 1}), 400, "/a~1b"),
    ("jobs not array", "POST", "/v1/batches", JSON, b'{"jobs":{}}', 400,
     "/jobs"),
    ("jobs empty", "POST", "/v1/batches", JSON, b'{"jobs":[]}', 400, "/jobs"),
    ("jobs missing", "POST", "/v1/batches", JSON, b'{}', 400, "/jobs"),
    ("job not object", "POST", "/v1/batches", JSON, b'{"jobs":[1]}', 400,
     "/jobs/0"),
    ("kind missing", "POST", "/v1/batches", JSON, b'{"jobs":[{}]}', 400,
     "/jobs/0/kind"),
    ("kind unknown", "POST", "/v1/batches", JSON, job(kind="nope"), 400,
     "/jobs/0/kind"),
    ("kind not string", "POST", "/v1/batches", JSON, job(kind=5), 400,
     "/jobs/0/kind"),
    ("command without flag", "POST", "/v1/batches", JSON,
     job(kind="command", args={"argv": ["true"]}), 400, "/jobs/0/kind"),
    ("unknown job field", "POST", "/v1/batches", JSON, job(kindd="x"), 400,
     "/jobs/0/kindd"),
    ("args not object", "POST", "/v1/batches", JSON, job(args=[1]), 400,
     "/jobs/0/args"),
    ("noop with args", "POST", "/v1/batches", JSON, job(args={"x": 1}), 400,
     "/jobs/0/args/x"),
    ("sleep negative", "POST", "/v1/batches", JSON,
     job(kind="sleep", args={"seconds": -1}), 400, "/jobs/0/args/seconds"),
    ("sleep absurd", "POST", "/v1/batches", JSON,
     job(kind="sleep", args={"seconds": 1e308}), 400, "/jobs/0/args/seconds"),
    ("sleep string", "POST", "/v1/batches", JSON,
     job(kind="sleep", args={"seconds": "1"}), 400, "/jobs/0/args/seconds"),
    ("primes too big", "POST", "/v1/batches", JSON,
     job(kind="primes", args={"below": 2e9}), 400, "/jobs/0/args/below"),
    ("matmul too big", "POST", "/v1/batches", JSON,
     job(kind="matmul", args={"n": 5000}), 400, "/jobs/0/args/n"),
    ("fail bad mode", "POST", "/v1/batches", JSON,
     job(kind="fail", args={"mode": "explode"}), 400, "/jobs/0/args/mode"),
    ("echo no value", "POST", "/v1/batches", JSON,
     job(kind="echo", args={}), 400, "/jobs/0/args/value"),
    ("concurrency 0", "POST", "/v1/batches", JSON, batch(concurrency=0), 400,
     "/concurrency"),
    ("concurrency negative", "POST", "/v1/batches", JSON,
     batch(concurrency=-5), 400, "/concurrency"),
    ("concurrency string", "POST", "/v1/batches", JSON,
     batch(concurrency="5"), 400, "/concurrency"),
    ("concurrency fraction", "POST", "/v1/batches", JSON,
     batch(concurrency=1.5), 400, "/concurrency"),
    ("priority absurd", "POST", "/v1/batches", JSON, batch(priority=10**6),
     400, "/priority"),
    ("name not string", "POST", "/v1/batches", JSON, batch(name=5), 400,
     "/name"),
    ("name too long", "POST", "/v1/batches", JSON, batch(name="n" * 300),
     400, "/name"),
    ("timeout zero", "POST", "/v1/batches", JSON, job(timeout_s=0), 400,
     "/jobs/0/timeout_s"),
    ("timeout absurd", "POST", "/v1/batches", JSON, job(timeout_s=1e9), 400,
     "/jobs/0/timeout_s"),
    ("max_attempts 101", "POST", "/v1/batches", JSON, job(max_attempts=101),
     400, "/jobs/0/max_attempts"),
    ("retry_on bad signal", "POST", "/v1/batches", JSON,
     job(retry_on=["SIGFOO"]), 400, "/jobs/0/retry_on/0"),
    ("retry_on bad code", "POST", "/v1/batches", JSON, job(retry_on=[300]),
     400, "/jobs/0/retry_on/0"),
    ("backoff negative", "POST", "/v1/batches", JSON,
     job(retry_backoff_s=-1), 400, "/jobs/0/retry_backoff_s"),
    ("idempotency key too long", "POST", "/v1/batches",
     dict(JSON, **{"Idempotency-Key": "k" * 256}), batch(), 400,
     "Idempotency-Key"),
    ("limit 0", "GET", "/v1/batches?limit=0", {}, None, 400, "?limit"),
    ("limit 1001", "GET", "/v1/batches?limit=1001", {}, None, 400, "?limit"),
    ("limit not a number", "GET", "/v1/batches?limit=abc", {}, None, 400,
     "?limit"),
    ("bad cursor", "GET", "/v1/batches?after=zzz", {}, None, 400, "?after"),
    ("bad state", "GET", "/v1/batches?state=bogus", {}, None, 400, "?state"),
    ("unknown query", "GET", "/v1/batches?foo=1", {}, None, 400, "?foo"),
    ("wait 3601", "GET", "/v1/jobs/j_000000000001?wait=3601", {}, None, 400,
     "?wait"),
    ("wait negative", "GET", "/v1/jobs/j_000000000001?wait=-1", {}, None, 400,
     "?wait"),
    ("wait nan", "GET", "/v1/jobs/j_000000000001?wait=nan", {}, None, 400,
     "?wait"),
    ("malformed batch id", "GET", "/v1/batches/b_1", {}, None, 404, None),
    ("unknown job id", "GET", "/v1/jobs/j_999999999999", {}, None, 404, None),
    ("cancel unknown batch", "POST", "/v1/batches/b_000000000099/cancel", {},
     None, 404, None),
    ("unknown path", "GET", "/nope", {}, None, 404, None),
    ("delete a job", "DELETE", "/v1/jobs/j_000000000001", {}, None, 405, None),
    ("patch batches", "PATCH", "/v1/batches", JSON, b"{}", 405, None),
    ("pool size 0", "PUT", "/v1/pool", JSON, b'{"size":0}', 400, "/size"),
    ("pool text/plain", "PUT", "/v1/pool", {"Content-Type": "text/plain"},
     b'{"size":2}', 415, None),
    ("events bad batch", "GET", "/v1/events?batch_id=x", {}, None, 400,
     "?batch_id"),
    ("events bad last id", "GET", "/v1/events",
     {"Last-Event-ID": "abc"}, None, 400, "Last-Event-ID"),
]


def test_bad_request_catalogue():
    assert len(CASES) >= 40
    with Server(workers=1, args=["--max-body-bytes", "65536",
                                 "--max-jobs-per-batch", "1000"]) as srv:
        seen = set()
        for name, method, path, headers, raw, status, where in CASES:
            assert name not in seen, "duplicate case " + name
            seen.add(name)
            st, h, b = srv.request(method, path, raw=raw, headers=headers)
            try:
                assert_problem(st, h, b, status, where)
                if status == 405:
                    assert h.get("allow"), "405 without Allow"
            except AssertionError as e:
                raise AssertionError("%s: %s %s -> %s %r: %s"
                                     % (name, method, path, st, b, e))
            srv.assert_alive()
        # nothing was half-written by any of them
        st, _, lst = srv.get("/v1/batches")
        assert st == 200 and lst["items"] == [], lst
        assert srv.pool()["size"] == 1
        print("    %d bad requests, each a problem+json" % len(CASES))
