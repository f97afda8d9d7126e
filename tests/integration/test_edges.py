"""Edges of the contract: auth, CORS, /metrics, Server-Sent Events."""

import json
import re
import subprocess
import time

from harness import SSE, Server, assert_problem, server_binary

TOKEN = "s3cret-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


def test_token_guards_everything_but_healthz():
    with Server(workers=1, env={"JOBPOOL_TOKEN": TOKEN}) as srv:
        st, h, b = srv.request("GET", "/healthz")
        assert st == 200
        for method, path in (("GET", "/v1/batches"), ("GET", "/metrics"),
                             ("GET", "/readyz"), ("GET", "/v1/pool"),
                             ("GET", "/openapi.yaml"),
                             ("POST", "/v1/batches"),
                             ("GET", "/v1/jobs/j_000000000001")):
            st, h, b = srv.request(method, path, body={"jobs": []} if
                                   method == "POST" else None)
            assert_problem(st, h, b, 401)
            assert h.get("www-authenticate", "").startswith("Bearer"), h
        for bad in ("Bearer wrong", "Bearer " + TOKEN + "x", "Basic abc",
                    "Bearer " + TOKEN[:-1]):
            st, h, b = srv.request("GET", "/v1/batches",
                                   headers={"Authorization": bad})
            assert_problem(st, h, b, 401)
        st, h, b = srv.request("GET", "/v1/batches", headers=AUTH)
        assert st == 200, (st, b)
        st, h, b = srv.request("POST", "/v1/batches", headers=AUTH,
                               body={"jobs": [{"kind": "noop"}]})
        assert st == 201, (st, b)


def test_dashboard_files_are_public_and_locked_down():
    """The page and its two files need no token; the page forbids inline
    script and style, so markup from a job cannot run in it."""
    with Server(workers=1, env={"JOBPOOL_TOKEN": TOKEN}) as srv:
        for path, ctype in (("/", "text/html"),
                            ("/dashboard.js", "text/javascript"),
                            ("/dashboard.css", "text/css")):
            for method in ("GET", "HEAD"):
                st, h, b = srv.request(method, path)
                assert st == 200, (method, path, st)
                assert h.get("content-type", "").startswith(ctype), h
                assert h.get("x-content-type-options") == "nosniff", h
        st, h, b = srv.request("GET", "/")
        csp = h.get("content-security-policy", "")
        for part in ("default-src 'self'", "script-src 'self';",
                     "style-src 'self';", "frame-ancestors 'none'"):
            assert part in csp, csp
        assert "unsafe" not in csp, csp
        assert '<script src="/dashboard.js"' in b, b[:300]
        assert "<style" not in b and " style=" not in b, b[:300]
        st, h, b = srv.request("POST", "/dashboard.js", body={})
        assert_problem(st, h, b, 401)
        st, h, b = srv.request("GET", "/dashboard.jsx")
        assert_problem(st, h, b, 401)
        st, h, b = srv.request("POST", "/dashboard.css", headers=AUTH,
                               body={})
        assert_problem(st, h, b, 405)


def test_refuses_public_listen_without_token():
    p = subprocess.run([server_binary(), "--listen", "0.0.0.0:0", "--db",
                        "/nonexistent/never-opened.db"], capture_output=True,
                       text=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "token" in p.stderr, p.stderr


def test_cors_allowed_origin_and_preflight():
    origin = "http://dash.example:3000"
    with Server(workers=1, args=["--cors-origin",
                                 "http://other.example," + origin]) as srv:
        st, h, b = srv.request("GET", "/v1/batches",
                               headers={"Origin": origin})
        assert st == 200
        assert h.get("access-control-allow-origin") == origin, h
        assert "Location" in h.get("access-control-expose-headers", ""), h
        st, h, b = srv.request("GET", "/v1/batches",
                               headers={"Origin": "http://evil.example"})
        assert st == 200 and "access-control-allow-origin" not in h, h
        st, h, b = srv.request("OPTIONS", "/v1/batches", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert st == 204, (st, b)
        assert "POST" in h.get("access-control-allow-methods", ""), h
        assert "Content-Type" in h.get("access-control-allow-headers", "")
        assert h.get("access-control-allow-origin") == origin, h
        assert "POST" in h.get("allow", ""), h
        st, h, b = srv.request("OPTIONS", "/nope", headers={"Origin": origin})
        assert st == 404
    with Server(workers=1, args=["--cors-origin", "*"],
                env={"JOBPOOL_TOKEN": TOKEN}) as srv:
        st, h, b = srv.request("OPTIONS", "/v1/pool", headers={
            "Origin": "http://x.example",
            "Access-Control-Request-Method": "PUT"})
        assert st == 204 and h.get("access-control-allow-origin") == "*", h


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*)?\})? (-?[0-9.e+]+|\+Inf|NaN)$')


def parse_metrics(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) \S+ .+$", line), line
            continue
        m = METRIC_LINE.match(line)
        assert m, "not Prometheus text: %r" % line
        samples[(m.group(1), m.group(3) or "")] = float(m.group(5))
    return samples


def test_metrics_parse_and_add_up():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "noop"}] * 5 +
                       [{"kind": "fail", "args": {"mode": "exit"}}])
        srv.wait_batch(b["id"])
        srv.get("/v1/nope")
        st, h, text = srv.request("GET", "/metrics")
        assert st == 200 and h["content-type"].startswith("text/plain"), h
        s = parse_metrics(text)
        assert s[("jobpool_jobs", 'state="succeeded"')] == 5
        assert s[("jobpool_jobs", 'state="failed"')] == 1
        assert s[("jobpool_pool_size", "")] == 2
        assert s[("jobpool_batches_submitted_total", "")] == 1
        for hist in ("jobpool_job_run_seconds",
                     "jobpool_job_queue_wait_seconds"):
            buckets = sorted(((float(k[1][4:-1]) if "+Inf" not in k[1]
                               else float("inf")), v)
                             for k, v in s.items() if k[0] == hist + "_bucket")
            assert buckets[-1][0] == float("inf") and \
                buckets[-1][1] == s[(hist + "_count", "")] == 6, buckets
            assert any(b[0] >= 3600 for b in buckets[:-1]), "no hour bucket"
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), "buckets not cumulative"
        assert s[("jobpool_http_requests_total",
                  'route="/v1/batches",method="POST",status="201"')] == 1
        assert s[("jobpool_http_requests_total",
                  'route="other",method="GET",status="404"')] == 1
        # the fail job's worker is being replaced; on a slow machine (ASan)
        # it may have been the only one up, and /readyz says so until then
        srv.wait_pool_ready(2)
        st, h, b = srv.get("/readyz")
        assert st == 200 and b == {"status": "ready"}, b


def test_events_reconnect_sees_every_change_once():
    with Server(workers=2) as srv:
        first = SSE(srv)
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.05}}] * 12,
                       concurrency=2)
        seen = []
        while len(seen) < 8:
            seen.append(first.next())
        first.close()               # disconnect mid-batch
        time.sleep(0.2)             # changes happen while away
        again = SSE(srv, last_id=seen[-1]["id"])
        while True:
            ev = again.next()
            seen.append(ev)
            if ev["event"] == "batch" and \
                    json.loads(ev["data"])["state"] == "succeeded":
                break
        again.close()
        ids = [int(e["id"]) for e in seen]
        assert ids == sorted(set(ids)), "ids not strictly increasing/unique"
        changes = [(json.loads(e["data"])["id"], json.loads(e["data"])["state"])
                   for e in seen]
        assert len(changes) == len(set(changes)), "a change seen twice"
        for jid in b["job_ids"]:
            assert (jid, "running") in changes and \
                (jid, "succeeded") in changes, "missed a change of %s" % jid
        for state in ("queued", "running", "succeeded"):
            assert (b["id"], state) in changes, state


def test_events_filter_and_reset():
    with Server(workers=1, args=["--events-buffer", "16"]) as srv:
        other = srv.submit([{"kind": "noop"}] * 20)
        srv.wait_batch(other["id"])
        s = SSE(srv, "?last_event_id=1")
        ev = s.next()
        assert ev["event"] == "reset", ev
        s.close()
        s = SSE(srv, "?batch_id=" + "b_000000000002")
        mine = srv.submit([{"kind": "noop"}])
        srv.submit([{"kind": "noop"}])
        got = []
        while True:
            ev = s.next()
            got.append(json.loads(ev["data"]))
            if ev["event"] == "batch" and got[-1]["state"] == "succeeded":
                break
        s.close()
        assert all(g.get("batch_id", g["id"]) == mine["id"] for g in got), got
        for q in ("?batch_id=nope", "?last_event_id=x", "?foo=1"):
            st, h, b = srv.get("/v1/events" + q)
            assert_problem(st, h, b, 400)
