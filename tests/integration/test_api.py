"""HTTP API: errors, validation, routing, pagination, long-poll, delete."""

import threading
import time

from harness import Server, assert_problem, wait_until, BATCH_ID_RE

JSON = {"Content-Type": "application/json"}


def bad(srv, method, path, status, raw=None, body=None, headers=None,
        path_substring=None, code=None):
    """A request that must fail with a problem; then the server must still
    answer /healthz.  Returns the problem body."""
    st, h, b = srv.request(method, path, body=body, raw=raw, headers=headers)
    try:
        p = assert_problem(st, h, b, status, path_substring, code)
    except AssertionError as e:
        raise AssertionError("%s %s: %s" % (method, path, e))
    srv.assert_alive()
    return p, h


def no_batches(srv):
    items = srv.ok("GET", "/v1/batches")["items"]
    assert items == [], "a rejected request left batches behind: %r" % items


def has_error(p, path, word=None):
    """errors[] names path exactly, or (for an unknown member `word`) its
    parent path with the member named in the message."""
    for e in p["errors"]:
        if e["path"] == path:
            return True
        if word and path.endswith("/" + word) and \
                e["path"] == path[:-len(word) - 1] and word in e["message"]:
            return True
    return False


def test_bad_json():
    with Server(workers=1) as srv:
        for raw in (b'{"jobs": [{"kind": "noop"}', b'{"jobs": [',
                    b'{"jobs":[{"kind":"noop"}]} x',
                    b'{"jobs":[{"kind":"noop"}]}{}', b'', b'nul',
                    b'\xff\xfe{}'):
            bad(srv, "POST", "/v1/batches", 400, raw=raw, headers=JSON,
                code="invalid-json")
        # well-formed JSON that is not an object: invalid-json or
        # invalid-request are both reasonable readings of the contract
        for raw in (b'[1, 2]', b'"jobs"', b'42', b'null'):
            bad(srv, "POST", "/v1/batches", 400, raw=raw, headers=JSON,
                code=("invalid-json", "invalid-request"))
        no_batches(srv)


def test_validation_lists_every_field():
    with Server(workers=1) as srv:
        p, _ = bad(srv, "POST", "/v1/batches", 400,
                   body={"bogus": 1, "jobs": "x", "concurrency": 0,
                         "priority": 5000},
                   code="invalid-request")
        for path in ("/bogus", "/jobs", "/concurrency", "/priority"):
            assert has_error(p, path, path[1:]), \
                "no error for %s: %r" % (path, p["errors"])

        jobs = [
            {"kind": "nope"},                                     # 0
            {"kind": "sleep", "args": {"seconds": -1}},           # 1
            {"kind": "sleep", "args": {"seconds": "x"}},          # 2
            {"kind": "noop", "max_attempts": 0},                  # 3
            {"kind": "noop", "timeout_s": -1},                    # 4
            {"kind": "noop", "extra": True},                      # 5
            {"kind": "noop"},                                     # 6 fine
            {"kind": "sleep", "args": {"seconds": 1, "sec": 2}},  # 7
            {"kind": "echo", "args": {}},                         # 8
            {"kind": "primes", "args": {"below": 1.5}},           # 9
            {"kind": "noop", "retry_backoff_s": 3601},            # 10
            {"args": {}},                                         # 11
            "notanobject",                                        # 12
        ]
        p, _ = bad(srv, "POST", "/v1/batches", 400, body={"jobs": jobs},
                   code="invalid-request")
        expect = ["/jobs/0/kind", "/jobs/1/args/seconds",
                  "/jobs/2/args/seconds", "/jobs/3/max_attempts",
                  "/jobs/4/timeout_s", "/jobs/5/extra", "/jobs/7/args/sec",
                  "/jobs/8/args/value", "/jobs/9/args/below",
                  "/jobs/10/retry_backoff_s", "/jobs/11/kind", "/jobs/12"]
        missing = [x for x in expect
                   if not has_error(p, x, x.rsplit("/", 1)[1])]
        assert not missing, "errors[] lacks %r; got %r" % (missing,
                                                           p["errors"])
        assert not any(e["path"].startswith("/jobs/6") for e in p["errors"]), \
            "the valid job 6 was reported: %r" % p["errors"]

        bad(srv, "POST", "/v1/batches", 400, body={"jobs": []},
            path_substring="/jobs", code="invalid-request")
        bad(srv, "POST", "/v1/batches", 400, body={"name": "no jobs"},
            path_substring="/jobs", code="invalid-request")
        bad(srv, "POST", "/v1/batches", 400,
            body={"jobs": [{"kind": "noop"}], "concurrency": 10001,
                  "priority": -1001, "name": 5},
            code="invalid-request")
        no_batches(srv)


def test_command_kind_needs_flag():
    with Server(workers=1) as srv:
        p, _ = bad(srv, "POST", "/v1/batches", 400,
                   body={"jobs": [{"kind": "command",
                                   "args": {"argv": ["true"]}}]},
                   path_substring="/jobs/0", code="invalid-request")
        text = p["detail"] + " ".join(e["message"] for e in p["errors"])
        assert "--allow-command" in text, \
            "the problem does not name --allow-command: %r" % p
        no_batches(srv)


def test_limits():
    with Server(workers=1, args=["--max-body-bytes", "1000",
                                 "--max-jobs-per-batch", "5"]) as srv:
        big = {"jobs": [{"kind": "echo", "args": {"value": "x" * 2000}}]}
        bad(srv, "POST", "/v1/batches", 413, body=big)
        bad(srv, "POST", "/v1/batches", 400,
            body={"jobs": [{"kind": "noop"}] * 6}, path_substring="/jobs",
            code="invalid-request")
        no_batches(srv)
        srv.submit([{"kind": "noop"}] * 5)


def test_content_type():
    with Server(workers=1) as srv:
        body = b'{"jobs":[{"kind":"noop"}]}'
        for hdrs in ({"Content-Type": "text/plain"},
                     {"Content-Type": "application/x-www-form-urlencoded"},
                     {}):
            bad(srv, "POST", "/v1/batches", 415, raw=body, headers=hdrs)
        no_batches(srv)
        st, h, b = srv.request("POST", "/v1/batches", raw=body, headers={
            "Content-Type": "application/json; charset=utf-8"})
        assert st == 201, \
            "application/json; charset=utf-8 refused: %d %r" % (st, b)


def test_unknown_paths_404():
    with Server(workers=1) as srv:
        for path in ("/nope", "/v1", "/v1/", "/v1/nope", "/v2/batches",
                     "/v1/batches/b_000000000001/nope",
                     "/v1/jobs/j_000000000001/nope", "/healthz/x"):
            bad(srv, "GET", path, 404)


def test_wrong_method_405():
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "noop"}])
        bid, jid = b["id"], b["job_ids"][0]
        srv.wait_batch(bid, 10)
        cases = [
            ("PUT", "/v1/batches", ("GET", "POST")),
            ("DELETE", "/v1/batches", ("GET", "POST")),
            ("DELETE", "/v1/jobs/" + jid, ("GET",)),
            ("POST", "/v1/jobs/" + jid, ("GET",)),
            ("GET", "/v1/jobs/%s/cancel" % jid, ("POST",)),
            ("GET", "/v1/batches/%s/cancel" % bid, ("POST",)),
            ("POST", "/v1/batches/" + bid, ("GET", "DELETE")),
            ("POST", "/v1/batches/%s/jobs" % bid, ("GET",)),
            ("POST", "/healthz", ("GET",)),
            ("DELETE", "/v1/pool", ("GET",)),
        ]
        for method, path, allowed in cases:
            p, h = bad(srv, method, path, 405)
            allow = [a.strip().upper() for a in h.get("allow", "").split(",")
                     if a.strip()]
            assert allow, "%s %s: 405 without an Allow header" % (method,
                                                                  path)
            for a in allowed:
                assert a in allow, "%s %s: Allow %r lacks %s" % (
                    method, path, h.get("allow"), a)
            assert method not in allow, "%s %s: Allow %r has %s" % (
                method, path, h.get("allow"), method)
        assert srv.batch(bid)["state"] == "succeeded"
        assert srv.job(jid)["state"] == "succeeded"


def test_malformed_and_unknown_ids_404():
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "noop"}])
        srv.wait_batch(b["id"], 10)
        jid = b["job_ids"][0]
        malformed = ["/v1/jobs/xyz", "/v1/batches/xyz", "/v1/batches/b_1",
                     "/v1/batches/" + jid, "/v1/jobs/" + b["id"],
                     "/v1/jobs/j_00000000000a", "/v1/jobs/j_0000000000001",
                     "/v1/batches/b_%2e%2e", "/v1/jobs/J_000000000001",
                     "/v1/batches/xyz/jobs"]
        unknown = ["/v1/batches/b_999999999999", "/v1/jobs/j_999999999999",
                   "/v1/batches/b_999999999999/jobs",
                   "/v1/batches/b_000000000000"]
        for path in malformed + unknown:
            bad(srv, "GET", path, 404)
        for path in ("/v1/batches/b_999999999999/cancel",
                     "/v1/jobs/j_999999999999/cancel",
                     "/v1/jobs/xyz/cancel"):
            bad(srv, "POST", path, 404)
        for path in ("/v1/batches/b_999999999999", "/v1/batches/xyz"):
            bad(srv, "DELETE", path, 404)


def test_bad_query_params_400():
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "noop"}])
        bid, jid = b["id"], b["job_ids"][0]
        cases = [
            ("/v1/batches?limit=0", "limit"),
            ("/v1/batches?limit=1001", "limit"),
            ("/v1/batches?limit=abc", "limit"),
            ("/v1/batches?limit=", "limit"),
            ("/v1/batches?limit=2.5", "limit"),
            ("/v1/batches?state=bogus", "state"),
            ("/v1/batches?state=timed_out", "state"),   # not a batch state
            ("/v1/batches?after=zzz", "after"),
            ("/v1/batches/%s/jobs?limit=0" % bid, "limit"),
            ("/v1/batches/%s/jobs?state=bogus" % bid, "state"),
            ("/v1/batches/%s?wait=3601" % bid, "wait"),
            ("/v1/batches/%s?wait=-1" % bid, "wait"),
            ("/v1/batches/%s?wait=abc" % bid, "wait"),
            ("/v1/jobs/%s?wait=3601" % jid, "wait"),
            ("/v1/jobs/%s?wait=-1" % jid, "wait"),
        ]
        for path, param in cases:
            t0 = time.monotonic()
            p, _ = bad(srv, "GET", path, 400, path_substring=param,
                       code="invalid-request")
            assert time.monotonic() - t0 < 2, "%s was slow" % path
        # the limits themselves are fine
        for path in ("/v1/batches?limit=1", "/v1/batches?limit=1000",
                     "/v1/batches?state=succeeded",
                     "/v1/batches/%s/jobs?state=timed_out" % bid,
                     "/v1/batches/%s?wait=0" % bid,
                     "/v1/jobs/%s?wait=0" % jid):
            srv.ok("GET", path)


def test_batch_pagination_and_state_filter():
    with Server(workers=2) as srv:
        ids = [srv.submit([{"kind": "noop"}], name="b%d" % i)["id"]
               for i in range(7)]
        assert ids == sorted(ids) and len(set(ids)) == 7, ids
        for bid in ids:
            srv.wait_batch(bid, 10)
        pages = []
        after = None
        for _ in range(10):
            q = "/v1/batches?limit=3" + ("&after=" + after if after else "")
            r = srv.ok("GET", q)
            assert set(r) >= {"items", "next_cursor"}, r
            pages.append([b["id"] for b in r["items"]])
            after = r["next_cursor"]
            if after is None:
                break
            assert isinstance(after, str) and after, r["next_cursor"]
        assert [len(p) for p in pages] == [3, 3, 1], pages
        flat = [i for p in pages for i in p]
        assert flat == list(reversed(ids)), \
            "pages %r are not the 7 batches newest first (%r)" % (pages, ids)

        r = srv.ok("GET", "/v1/batches?limit=7")
        assert [b["id"] for b in r["items"]] == list(reversed(ids)) and \
            r["next_cursor"] is None, r["next_cursor"]

        # a canceled batch and the state filter
        c = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}],
                       name="to-cancel")
        srv.wait_job_state(c["job_ids"][0], "running", 5)
        r = srv.ok("GET", "/v1/batches?state=running")
        assert [b["id"] for b in r["items"]] == [c["id"]], r
        srv.ok("POST", "/v1/batches/%s/cancel" % c["id"])
        assert srv.wait_batch(c["id"], 10)["state"] == "canceled"
        r = srv.ok("GET", "/v1/batches?state=succeeded&limit=1000")
        assert [b["id"] for b in r["items"]] == list(reversed(ids)), r
        assert all(b["state"] == "succeeded" for b in r["items"])
        r = srv.ok("GET", "/v1/batches?state=canceled")
        assert [b["id"] for b in r["items"]] == [c["id"]], r
        for s in ("running", "queued", "failed"):
            r = srv.ok("GET", "/v1/batches?state=" + s)
            assert r["items"] == [] and r["next_cursor"] is None, (s, r)
        # pages of the filtered list
        r1 = srv.ok("GET", "/v1/batches?state=succeeded&limit=4")
        r2 = srv.ok("GET", "/v1/batches?state=succeeded&limit=4&after="
                    + r1["next_cursor"])
        assert [b["id"] for b in r1["items"] + r2["items"]] == \
            list(reversed(ids)) and r2["next_cursor"] is None, (r1, r2)


def test_jobs_pagination_and_state_filter():
    with Server(workers=2) as srv:
        jobs = [{"kind": "echo", "args": {"value": i}} for i in range(25)]
        for i in (4, 11, 23):
            jobs[i] = {"kind": "fail", "args": {"mode": "exit", "code": 2}}
        b = srv.submit(jobs)
        assert srv.wait_batch(b["id"], 20)["state"] == "failed"
        pages = []
        after = None
        for _ in range(10):
            q = "/v1/batches/%s/jobs?limit=10" % b["id"]
            if after:
                q += "&after=" + after
            r = srv.ok("GET", q)
            pages.append([j["index"] for j in r["items"]])
            after = r["next_cursor"]
            if after is None:
                break
        assert [len(p) for p in pages] == [10, 10, 5], pages
        assert [i for p in pages for i in p] == list(range(25)), pages
        failed = srv.jobs(b["id"], limit=2, state="failed")
        assert [j["index"] for j in failed] == [4, 11, 23], failed
        ok = srv.jobs(b["id"], limit=7, state="succeeded")
        assert [j["index"] for j in ok] == \
            [i for i in range(25) if i not in (4, 11, 23)], ok
        assert srv.jobs(b["id"], state="canceled") == []


def test_long_poll():
    with Server(workers=2) as srv:
        t0 = time.monotonic()
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.5}}])
        r = srv.ok("GET", "/v1/batches/%s?wait=5" % b["id"])
        took = time.monotonic() - t0
        assert r["state"] == "succeeded", r
        # bounds that tell "woke at the end" from "slept out the wait"
        # with room for a loaded machine (timings belong in benchmarks)
        assert 0.45 <= took <= 3.0, \
            "?wait=5 on a 0.5 s batch returned after %.2f s" % took

        jid = b["job_ids"][0]
        t0 = time.monotonic()
        r = srv.ok("GET", "/v1/jobs/%s?wait=5" % jid)
        assert r["state"] == "succeeded" and time.monotonic() - t0 < 2.5, \
            "long-poll on a finished job did not return at once"

        long = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}])
        lj = long["job_ids"][0]
        srv.wait_job_state(lj, "running", 5)
        for path in ("/v1/jobs/%s?wait=0.3" % lj,
                     "/v1/batches/%s?wait=0.3" % long["id"]):
            t0 = time.monotonic()
            r = srv.ok("GET", path)
            took = time.monotonic() - t0
            assert r["state"] == "running", (path, r)
            assert 0.28 <= took <= 2.5, \
                "%s returned after %.2f s" % (path, took)
        t0 = time.monotonic()
        r = srv.ok("GET", "/v1/jobs/%s?wait=0" % lj)
        assert r["state"] == "running" and time.monotonic() - t0 < 2.5

        # a waiter is woken by cancel, and several waiters at once work
        results = []

        def waiter():
            results.append(srv.get("/v1/batches/%s?wait=20" % long["id"],
                                   timeout=30))
        ths = [threading.Thread(target=waiter) for _ in range(4)]
        for t in ths:
            t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        srv.ok("POST", "/v1/batches/%s/cancel" % long["id"])
        for t in ths:
            t.join(25)
        took = time.monotonic() - t0
        assert len(results) == 4 and all(
            st == 200 and b_["state"] == "canceled"
            for st, _, b_ in results), results
        assert took <= 3.5, "waiters woke %.2f s after cancel" % took
        srv.assert_alive()


def test_delete_batch():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 30}},
                        {"kind": "noop"}])
        srv.wait_job_state(b["job_ids"][0], "running", 5)
        bad(srv, "DELETE", "/v1/batches/" + b["id"], 409)
        assert srv.batch(b["id"])["state"] == "running"
        srv.ok("POST", "/v1/batches/%s/cancel" % b["id"])
        srv.wait_batch(b["id"], 10)
        keep = srv.submit([{"kind": "noop"}])
        srv.wait_batch(keep["id"], 10)

        st, h, body = srv.delete("/v1/batches/" + b["id"])
        assert st == 204 and not body, (st, body)
        bad(srv, "GET", "/v1/batches/" + b["id"], 404)
        bad(srv, "GET", "/v1/batches/%s/jobs" % b["id"], 404)
        for jid in b["job_ids"]:
            bad(srv, "GET", "/v1/jobs/" + jid, 404)
        bad(srv, "DELETE", "/v1/batches/" + b["id"], 404)
        items = srv.ok("GET", "/v1/batches")["items"]
        assert [x["id"] for x in items] == [keep["id"]], items
        assert srv.batch(keep["id"])["state"] == "succeeded"


def test_health_ready_openapi():
    with Server(workers=1) as srv:
        st, h, b = srv.get("/healthz")
        assert st == 200 and b == {"status": "ok"}, (st, b)
        assert h.get("content-type", "").startswith("application/json"), h
        # ready once a worker has said so (a few ms after start; the
        # 503 before that is right: no job could run yet)
        wait_until(lambda: srv.get("/readyz")[0] == 200, 10, 0.01,
                   "/readyz to turn 200")
        st, h, b = srv.get("/readyz")
        assert st == 200 and b == {"status": "ready"}, (st, b)
        st, h, b = srv.get("/openapi.yaml")
        assert st == 200, st
        assert "yaml" in h.get("content-type", ""), h.get("content-type")
        assert isinstance(b, str) and "openapi: 3.1" in b, (b or "")[:200]
        for p in ("/v1/batches", "/v1/pool", "/v1/jobs/"):
            assert p in b, "openapi.yaml does not describe %s" % p


def test_post_response_shape():
    with Server(workers=1) as srv:
        st, h, b = srv.post("/v1/batches", {
            "name": "shape", "concurrency": 2, "priority": -3,
            "jobs": [{"kind": "sleep", "args": {"seconds": 0.01},
                      "name": "a", "timeout_s": 5, "max_attempts": 3,
                      "retry_on": [2, "SIGKILL"], "retry_backoff_s": 0},
                     {"kind": "noop"}]})
        assert st == 201, (st, b)
        assert BATCH_ID_RE.match(b["id"]), b
        assert h.get("location") == "/v1/batches/" + b["id"], h
        assert h.get("content-type", "").startswith("application/json"), h
        assert b["name"] == "shape" and b["concurrency"] == 2 and \
            b["priority"] == -3, b
        assert b["state"] in ("queued", "running", "succeeded"), b
        assert b["counts"]["total"] == 2, b
        j = srv.job(b["job_ids"][0])
        assert (j["name"], j["timeout_s"], j["max_attempts"], j["retry_on"],
                j["retry_backoff_s"]) == ("a", 5, 3, [2, "SIGKILL"], 0), j
        j = srv.job(b["job_ids"][1])
        assert (j["name"], j["timeout_s"], j["max_attempts"], j["retry_on"],
                j["retry_backoff_s"], j["args"]) == \
            (None, None, 1, [], 1.0, {}), j
        fin = srv.wait_batch(b["id"], 10)
        assert fin["state"] == "succeeded", fin
        listed = srv.ok("GET", "/v1/batches")["items"]
        assert [x["id"] for x in listed] == [b["id"]]
        assert "job_ids" not in listed[0] or \
            listed[0]["job_ids"] == b["job_ids"]
        wait_until(lambda: srv.pool()["busy"] == 0, 5, 0.02, "an idle pool")


def test_nodes_and_worker_node():
    """GET /v1/nodes lists this server (with SQLite, the only one); a job's
    worker, and each history entry, name the node it ran on, also after a
    restart under another name."""
    import subprocess
    from harness import server_binary
    with Server(workers=2, args=["--node-name", "alpha-1"]) as srv:
        st, _, body = srv.get("/v1/nodes")
        assert st == 200, (st, body)
        (n,) = body["items"]
        assert n["name"] == "alpha-1" and n["self"] is True, n
        assert n["pool_size"] == 2 and n["busy_workers"] == 0, n
        assert n["started_at"] <= n["last_heartbeat_at"], n
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.5}}])
        jid = b["job_ids"][0]
        srv.wait_job_state(jid, "running")
        assert srv.get("/v1/nodes")[2]["items"][0]["busy_workers"] == 1
        assert srv.job(jid)["worker"]["node"] == "alpha-1"
        j = srv.wait_job(jid)
        assert j["worker"]["node"] == "alpha-1", j
        assert j["history"][0]["worker"]["node"] == "alpha-1", j
        srv.stop()
        with Server(workers=1, tmpdir=srv.tmpdir,
                    args=["--node-name", "beta.2"]) as again:
            assert again.get("/v1/nodes")[2]["items"][0]["name"] == "beta.2"
            assert again.job(jid)["worker"]["node"] == "alpha-1"
    for bad in ("", "has space", "x" * 64, "é"):
        p = subprocess.run([server_binary(), "--node-name", bad,
                            "--listen", "127.0.0.1:0", "--db", ":memory:"],
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and "--node-name" in p.stderr, (bad, p)
