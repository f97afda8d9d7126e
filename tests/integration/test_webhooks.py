"""Signed webhooks delivered from the outbox: signatures as the Standard
Webhooks libraries verify them, retries with a stable webhook-id, delivery
across a kill -9 of jobpoold while the receiver is down (nothing lost,
nothing invented), the deliveries endpoint, metrics, and 400s for URLs the
allow-list refuses and for bad fields.

The receiver is a Python http.server on 127.0.0.1 in a thread; nothing here
talks to any other address."""

import base64
import hashlib
import hmac
import http.server
import json
import os
import socket
import threading
import time

from harness import Server, assert_problem, wait_until

# retries in a test take milliseconds, not seconds (--webhook-backoff)
ARGS = ["--webhook-allow", "127.0.0.1", "--webhook-backoff", "50ms"]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TOLERANCE_S = 300


def verify(secret, headers, body):
    """Checks a delivery as the Standard Webhooks libraries do: HMAC-SHA256
    over "<id>.<timestamp>.<body>" with the base64-decoded whsec_ key, any
    of the space-separated v1 signatures, compared in constant time, and
    the timestamp within the tolerance.  Returns the webhook-id."""
    msg_id = headers["webhook-id"]
    ts = headers["webhook-timestamp"]
    sigs = headers["webhook-signature"]
    assert msg_id and ts and sigs, headers
    assert abs(time.time() - int(ts)) <= TOLERANCE_S, ts
    key = (base64.b64decode(secret[len("whsec_"):])
           if secret.startswith("whsec_") else secret.encode())
    mac = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), ts.encode(), body),
                   hashlib.sha256).digest()
    want = base64.b64encode(mac).decode()
    ok = False
    for s in sigs.split(" "):
        version, _, sig = s.partition(",")
        if version == "v1" and hmac.compare_digest(sig, want):
            ok = True
    assert ok, (sigs, want)
    return msg_id


class Receiver:
    """A webhook receiver: verifies every delivery, answers 500 to the first
    fail_first attempts of each webhook-id, then 204."""

    def __init__(self, secret, fail_first=0, port=0):
        self.secret = secret
        self.fail_first = fail_first
        self.attempts = {}      # webhook-id -> attempts seen
        self.accepted = {}      # webhook-id -> payload, once accepted
        self.bad = []           # deliveries that did not verify
        self.lock = threading.Lock()
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                try:
                    assert self.headers["Content-Type"] == "application/json"
                    msg_id = verify(me.secret, self.headers, body)
                    payload = json.loads(body)
                except Exception as e:  # noqa: BLE001 - recorded
                    with me.lock:
                        me.bad.append(repr(e))
                    self.send_response(400)
                    self.end_headers()
                    return
                with me.lock:
                    k = me.attempts[msg_id] = me.attempts.get(msg_id, 0) + 1
                    fail = k <= me.fail_first
                    if not fail:
                        me.accepted.setdefault(msg_id, payload)
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                     Handler)
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d/hook" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def events(self):
        with self.lock:
            return sorted((p["type"], p["data"]["id"])
                          for p in self.accepted.values())


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def deliveries(srv, bid):
    st, _, body = srv.get("/v1/batches/%s/deliveries" % bid)
    assert st == 200, body
    return body["items"]


def webhook_metric(srv, outcome):
    st, _, text = srv.request("GET", "/metrics")
    line = 'jobpool_webhook_deliveries_total{outcome="%s"} ' % outcome
    text = text if isinstance(text, str) else text.decode()
    for ln in text.splitlines():
        if ln.startswith(line):
            return int(ln[len(line):])
    raise AssertionError("no %s in /metrics" % line)


def test_signed_deliveries_retried_with_a_stable_id():
    rcv = Receiver(SECRET, fail_first=2)
    try:
        with Server(workers=2, args=ARGS) as srv:
            b = srv.submit([{"kind": "noop"}, {"kind": "fail",
                                               "args": {"mode": "exit"}}],
                           webhook={"url": rcv.url, "secret": SECRET,
                                    "events": ["batch.finished",
                                               "job.finished"]})
            assert b["webhook"] == {"url": rcv.url, "events": [
                "batch.finished", "job.finished"]}, b   # no secret echoed
            srv.wait_batch(b["id"])
            want = sorted([("job.finished", b["job_ids"][0]),
                           ("job.finished", b["job_ids"][1]),
                           ("batch.finished", b["id"])])
            wait_until(lambda: rcv.events() == want, 15, what="deliveries")
            assert not rcv.bad, rcv.bad
            # each webhook-id was tried three times: 500, 500, then 204
            assert sorted(rcv.attempts.values()) == [3, 3, 3], rcv.attempts

            def settled():
                return all(d["state"] == "delivered"
                           for d in deliveries(srv, b["id"]))
            wait_until(settled, 10, what="deliveries recorded")
            items = deliveries(srv, b["id"])
            assert sorted(d["id"] for d in items) == sorted(rcv.attempts)
            for d in items:
                assert d["attempts"] == 3 and d["last_status"] == 204, d
                assert [a["status"] for a in d["history"]] == [500, 500, 204]
                assert d["history"][0]["error"], d
                assert d["url"] == rcv.url and "secret" not in d
            payload = rcv.accepted[[d["id"] for d in items
                                    if d["event"] == "batch.finished"][0]]
            assert payload["data"]["state"] == "failed", payload
            assert payload["data"]["counts"]["total"] == 2
            assert payload["timestamp"] == payload["data"]["finished_at"]
            assert webhook_metric(srv, "delivered") == 3
            assert webhook_metric(srv, "retried") == 6
            assert webhook_metric(srv, "failed") == 0
            st, _, page = srv.get("/v1/batches/%s/deliveries?limit=1"
                                  % b["id"])
            assert len(page["items"]) == 1 and page["next_cursor"], page
            st, _, page = srv.get("/v1/batches/%s/deliveries?limit=5&after=%s"
                                  % (b["id"], page["next_cursor"]))
            assert len(page["items"]) == 2 and page["next_cursor"] is None
            st, _, page = srv.get("/v1/batches/%s/deliveries?state=failed"
                                  % b["id"])
            assert page["items"] == [], page
    finally:
        rcv.close()


def test_generated_secret_shown_once():
    """A generated secret is in the 201 only; a read shows url and events;
    the batch posted back as read reports to the same url, newly signed."""
    rcv = None
    try:
        with Server(workers=1, args=ARGS) as srv:
            rcv = Receiver("unset")
            body = {"jobs": [{"kind": "noop"}], "webhook": {"url": rcv.url}}
            st, _, b = srv.request("POST", "/v1/batches", body=body,
                                   headers={"Idempotency-Key": "wh-1"})
            assert st == 201, b
            secret = b["webhook"]["secret"]
            assert secret.startswith("whsec_") and \
                len(base64.b64decode(secret[6:])) == 24, b
            assert b["webhook"]["events"] == ["batch.finished"]
            rcv.secret = secret
            st, _, again = srv.request("POST", "/v1/batches", body=body,
                                       headers={"Idempotency-Key": "wh-1"})
            assert st == 200 and again["id"] == b["id"], again
            assert "secret" not in again["webhook"], again
            srv.wait_batch(b["id"])
            wait_until(lambda: rcv.events() == [("batch.finished", b["id"])],
                       10, what="delivery")
            assert not rcv.bad, rcv.bad
            for path in ("/v1/batches/%s" % b["id"], "/v1/batches",
                         "/v1/batches/%s/deliveries" % b["id"]):
                st, _, got = srv.get(path)
                assert secret not in json.dumps(got), (path, got)
            # a batch read shows where it reports, and posted back as read
            # it keeps reporting there, under a new secret shown once
            st, _, read = srv.get("/v1/batches/%s" % b["id"])
            assert read["webhook"] == {"url": rcv.url,
                                       "events": ["batch.finished"]}, read
            read["jobs"] = [{"kind": "noop"}]
            st, _, b2 = srv.request("POST", "/v1/batches", body=read)
            assert st == 201, b2
            assert b2["webhook"]["url"] == rcv.url, b2
            assert b2["webhook"]["secret"] not in (None, secret), b2
            rcv.secret = b2["webhook"]["secret"]
            srv.wait_batch(b2["id"])
            wait_until(lambda: rcv.events() == [("batch.finished", b["id"]),
                                                ("batch.finished", b2["id"])],
                       10, what="delivery of the batch posted back")
            assert not rcv.bad, rcv.bad
    finally:
        if rcv:
            rcv.close()


def test_receiver_down_across_kill9():
    """The receiver is down while the batch ends and while jobpoold is
    killed with SIGKILL (once during a job, once after the ends); after the
    restart every delivery arrives, once per webhook-id as recorded before
    the kill, and nothing else."""
    port = free_port()
    url = "http://127.0.0.1:%d/hook" % port
    hook = {"url": url, "secret": SECRET,
            "events": ["batch.finished", "job.finished"]}
    first = Server(workers=2, args=ARGS)
    rcv = None
    try:
        b = first.submit([{"kind": "noop"}, {"kind": "sleep",
                                             "args": {"seconds": 1},
                                             "max_attempts": 2}],
                         webhook=hook)
        slow = b["job_ids"][1]
        first.wait_job_state(slow, "running")
        wait_until(lambda: len(deliveries(first, b["id"])) == 1, 10,
                   what="the first job's delivery")
        first.kill9()           # during the sleep: it runs again
        second = Server(workers=2, args=ARGS, tmpdir=first.tmpdir)
        second.wait_batch(b["id"])

        def tried():
            items = deliveries(second, b["id"])
            return len(items) == 3 and all(d["attempts"] >= 1
                                           for d in items)
        wait_until(tried, 15, what="failed attempts")
        before = {d["id"]: d for d in deliveries(second, b["id"])}
        assert all(d["state"] == "pending" and d["last_error"]
                   for d in before.values()), before
        second.kill9()
        rcv = Receiver(SECRET, port=port)
        third = Server(workers=2, args=ARGS, tmpdir=first.tmpdir)
        want = sorted([("job.finished", b["job_ids"][0]),
                       ("job.finished", slow), ("batch.finished", b["id"])])
        wait_until(lambda: rcv.events() == want, 20, what="deliveries")
        assert set(rcv.accepted) == set(before), (rcv.accepted, before)
        assert not rcv.bad, rcv.bad
        job = third.job(slow)
        assert job["state"] == "succeeded" and job["attempts"] == 2, job
        data = [p["data"] for p in rcv.accepted.values()
                if p["type"] == "job.finished" and p["data"]["id"] == slow]
        assert data[0]["state"] == "succeeded", data

        def delivered():
            return all(d["state"] == "delivered"
                       for d in deliveries(third, b["id"]))
        wait_until(delivered, 10, what="deliveries recorded")
        third.stop()
    finally:
        if rcv:
            rcv.close()


test_receiver_down_across_kill9.timeout = 180


def test_bad_webhooks_are_400():
    # the batches accepted below never end (their one job sleeps and the
    # drain kills it), so no host name is ever looked up
    with Server(workers=1, args=["--webhook-allow",
                                 "127.0.0.0/8, hooks.example,*.svc.test,"
                                 "::1", "--drain-timeout-s", "0"]) as srv:
        def post(hook):
            return srv.request("POST", "/v1/batches", body={
                "jobs": [{"kind": "sleep", "args": {"seconds": 60}}],
                "webhook": hook})
        for hook, path in [
                ({"url": "http://10.0.0.1/x"}, "/webhook/url"),
                ({"url": "http://example.com/x"}, "/webhook/url"),
                ({"url": "http://evil.hooks.example/x"}, "/webhook/url"),
                ({"url": "ftp://127.0.0.1/x"}, "/webhook/url"),
                ({"url": "127.0.0.1/x"}, "/webhook/url"),
                ({"url": "http://u:p@127.0.0.1/x"}, "/webhook/url"),
                ({"url": "http://[::2]/x"}, "/webhook/url"),
                ({"url": 5}, "/webhook/url"),
                ({}, "/webhook/url"),
                ({"url": "http://127.0.0.1/x", "secret": "short"},
                 "/webhook/secret"),
                ({"url": "http://127.0.0.1/x", "secret": "whsec_!!!!"},
                 "/webhook/secret"),
                ({"url": "http://127.0.0.1/x", "events": []},
                 "/webhook/events"),
                ({"url": "http://127.0.0.1/x", "events": ["job.started"]},
                 "/webhook/events"),
                ({"url": "http://127.0.0.1/x",
                  "events": ["job.finished", "job.finished"]},
                 "/webhook/events"),
                ({"url": "http://127.0.0.1/x", "extra": 1}, "/webhook/extra"),
                ("http://127.0.0.1/x", "/webhook")]:
            st, h, body = post(hook)
            assert_problem(st, h, body, 400, path)
        # allowed: a CIDR, a literal name, a subdomain pattern, an IPv6
        # literal
        for u in ("http://127.0.0.2:1/x", "https://HOOKS.example./x",
                  "http://a.svc.test/x", "http://[::1]:1/x"):
            st, _, body = post({"url": u, "secret": "s" * 16})
            assert st == 201, (u, body)
            bid = body["id"]
        st, h, body = srv.get("/v1/batches/b_999999999999/deliveries")
        assert_problem(st, h, body, 404)
        st, h, body = srv.get("/v1/batches/%s/deliveries?state=nope"
                              % bid)
        assert_problem(st, h, body, 400, "?state")
    with Server(workers=1) as srv:      # nothing allowed by default
        st, h, body = srv.request("POST", "/v1/batches", body={
            "jobs": [{"kind": "noop"}],
            "webhook": {"url": "http://127.0.0.1/x"}})
        assert_problem(st, h, body, 400, "/webhook/url")
        assert "--webhook-allow" in json.dumps(body)


def test_deliveries_after_batches_without_webhooks():
    """The outbox triggers come and go with the batches that need them
    (SQLite): a batch without a webhook ending between two with one, and
    two with one at once, lose no delivery and invent none."""
    rcv = Receiver(SECRET)
    hook = {"url": rcv.url, "secret": SECRET,
            "events": ["batch.finished", "job.finished"]}
    try:
        with Server(workers=2, args=ARGS) as srv:
            a = srv.submit([{"kind": "noop"}] * 3, webhook=hook)
            srv.wait_batch(a["id"])
            plain = srv.submit([{"kind": "noop"}] * 5)
            srv.wait_batch(plain["id"])
            b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.3}}],
                           webhook=hook)
            c = srv.submit([{"kind": "noop"}] * 2, webhook=hook)
            srv.wait_batch(c["id"])
            srv.wait_batch(b["id"])
            want = sorted([("job.finished", j) for x in (a, b, c)
                           for j in x["job_ids"]] +
                          [("batch.finished", x["id"]) for x in (a, b, c)])
            wait_until(lambda: rcv.events() == want, 15, what="deliveries")
            assert not rcv.bad, rcv.bad
            assert deliveries(srv, plain["id"]) == []
    finally:
        rcv.close()
