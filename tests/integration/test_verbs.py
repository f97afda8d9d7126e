"""The everyday verbs (SPEC §9): pause and resume (server-wide and per
batch), PATCH priority, cancel everything, GET /v1/jobs with state lists,
live run_ms and parallelism, pool entries, and waiting from a script with
?wait=...&fail=true."""
import json
import shutil
import subprocess
import time

from harness import Server, assert_problem, wait_until


def sleep(seconds, name=None):
    j = {"kind": "sleep", "args": {"seconds": seconds}}
    if name:
        j["name"] = name
    return j


OK = {"kind": "noop"}
FAIL = {"kind": "fail", "args": {"mode": "exit", "code": 3}}


def counts(srv, bid):
    return srv.batch(bid)["counts"]


def test_server_pause_lets_running_finish_and_resume_restarts():
    with Server(workers=2) as srv:
        a = srv.submit([sleep(0.6), sleep(0.6)])
        wait_until(lambda: counts(srv, a["id"])["running"] == 2, 10,
                   what="both running")
        pool = srv.ok("POST", "/v1/pause")
        assert pool["paused"] is True
        assert srv.pool()["paused"] is True
        b = srv.submit([OK, OK])
        # the running ones finish; nothing new starts
        srv.ok("GET", "/v1/batches/%s?wait=10" % a["id"])
        assert srv.batch(a["id"])["state"] == "succeeded"
        time.sleep(0.4)
        assert counts(srv, b["id"])["queued"] == 2
        pool = srv.ok("POST", "/v1/resume")
        assert pool["paused"] is False
        done = srv.ok("GET", "/v1/batches/%s?wait=10" % b["id"])
        assert done["state"] == "succeeded", done
        # a pool of 0, what people try first, is refused with the verb
        st, _, err = srv.request("PUT", "/v1/pool", body={"size": 0})
        assert st == 400 and "POST /v1/pause" in json.dumps(err), err


def test_server_pause_is_stored_across_a_restart():
    """POST /v1/pause is stored: a restart keeps dispatch paused (and says
    so in the log) until POST /v1/resume, which is stored too."""
    with Server(workers=1) as first:
        assert first.ok("POST", "/v1/pause")["paused"] is True
        b = first.submit([OK, OK], name="held over a restart")
        first.stop()
        with Server(workers=1, tmpdir=first.tmpdir) as second:
            assert second.pool()["paused"] is True
            time.sleep(0.4)
            assert counts(second, b["id"])["queued"] == 2
            assert second.ok("POST", "/v1/resume")["paused"] is False
            done = second.ok("GET", "/v1/batches/%s?wait=10" % b["id"])
            assert done["state"] == "succeeded", done
            second.stop()
            with open(second.stderr_path, errors="replace") as f:
                log = f.read()
            assert "dispatch is paused (stored)" in log, log[-2000:]
            with Server(workers=1, tmpdir=first.tmpdir) as third:
                assert third.pool()["paused"] is False
                c = third.submit([OK])
                assert third.ok("GET", "/v1/batches/%s?wait=10" %
                                c["id"])["state"] == "succeeded"


def test_batch_pause_and_resume_are_shown_and_survive_a_restart():
    with Server(workers=1) as first:
        # paused server-wide first, so no job starts before the batch's
        # own pause
        first.ok("POST", "/v1/pause")
        b = first.submit([OK, OK, OK], name="held")
        assert b["paused"] is False
        p = first.ok("POST", "/v1/batches/%s/pause" % b["id"])
        assert p["paused"] is True
        first.ok("POST", "/v1/resume")
        assert first.batch(b["id"])["paused"] is True
        # another batch still runs
        c = first.submit([OK])
        assert first.ok("GET", "/v1/batches/%s?wait=10" %
                        c["id"])["state"] == "succeeded"
        assert first.batch(b["id"])["counts"]["queued"] == 3
        first.stop()
        with Server(workers=1, tmpdir=first.tmpdir) as srv:
            time.sleep(0.3)
            got = srv.batch(b["id"])
            assert got["paused"] is True and \
                got["counts"]["queued"] == 3, got
            r = srv.ok("POST", "/v1/batches/%s/resume" % b["id"])
            assert r["paused"] is False
            done = srv.ok("GET", "/v1/batches/%s?wait=10" % b["id"])
            assert done["state"] == "succeeded", done
            st, h, body = srv.post("/v1/batches/b_999999999999/pause")
            assert_problem(st, h, body, 404)


def test_patch_priority_reorders_the_queue():
    with Server(workers=1) as srv:
        blocker = srv.submit([sleep(0.5)])
        wait_until(lambda: counts(srv, blocker["id"])["running"] == 1, 10,
                   what="blocker running")
        low = srv.submit([OK], name="first-submitted")
        high = srv.submit([OK], name="raised")
        got = srv.ok("PATCH", "/v1/batches/" + high["id"], {"priority": 5})
        assert got["priority"] == 5
        srv.ok("GET", "/v1/batches/%s?wait=10" % low["id"])
        srv.ok("GET", "/v1/batches/%s?wait=10" % high["id"])
        ja = srv.jobs(low["id"])[0]["started_at"]
        jb = srv.jobs(high["id"])[0]["started_at"]
        assert jb <= ja, (ja, jb)
        for body in ({"name": "x"}, {"priority": "high"}, {"priority": 1.5},
                     {}, {"priority": 1, "name": "x"}):
            st, h, b = srv.request("PATCH", "/v1/batches/" + high["id"],
                                   body)
            assert_problem(st, h, b, 400)
        st, h, b = srv.request("PATCH", "/v1/batches/b_999999999999",
                               {"priority": 1})
        assert_problem(st, h, b, 404)


def test_patch_concurrency_raises_lowers_and_lifts_the_limit():
    """PATCH {"concurrency": N | null} while a batch runs: a higher limit
    fills at once, a lower one holds as running jobs end (none is stopped
    for it), null lifts it (the pool is the limit)."""
    with Server(workers=4) as srv:
        b = srv.submit([sleep(0.5) for _ in range(16)], concurrency=1)
        bid = b["id"]
        wait_until(lambda: counts(srv, bid)["running"] == 1, 10,
                   what="one running")
        got = srv.ok("PATCH", "/v1/batches/" + bid, {"concurrency": 3})
        assert got["concurrency"] == 3, got
        wait_until(lambda: counts(srv, bid)["running"] == 3, 10,
                   what="three running after the raise")
        got = srv.ok("PATCH", "/v1/batches/" + bid, {"concurrency": 1})
        assert got["concurrency"] == 1, got
        wait_until(lambda: counts(srv, bid)["running"] <= 1, 10,
                   what="the running ones above the new limit to end")
        seen = []
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            seen.append(counts(srv, bid)["running"])
            time.sleep(0.02)
        assert max(seen) <= 1, seen
        got = srv.ok("PATCH", "/v1/batches/" + bid, {"concurrency": None})
        assert got["concurrency"] is None, got
        wait_until(lambda: counts(srv, bid)["running"] == 4, 10,
                   what="the pool full once the limit is lifted")
        done = srv.ok("GET", "/v1/batches/%s?wait=30" % bid)
        assert done["state"] == "succeeded", done
        for body in ({"concurrency": 0}, {"concurrency": 1.5},
                     {"concurrency": "2"}, {"concurrency": 10001}):
            st, h, e = srv.request("PATCH", "/v1/batches/" + bid, body)
            assert_problem(st, h, e, 400)
            assert any(x.get("path") == "/concurrency"
                       for x in e.get("errors", [])), e


def test_cancel_all_cancels_every_unfinished_batch():
    with Server(workers=1) as srv:
        done = srv.submit([OK])
        srv.ok("GET", "/v1/batches/%s?wait=10" % done["id"])
        a = srv.submit([sleep(5)])
        b = srv.submit([OK, OK])
        r = srv.ok("POST", "/v1/batches/cancel")
        assert r["canceled"] == 2 and sorted(r["batch_ids"]) == \
            sorted([a["id"], b["id"]]), r
        for bid in (a["id"], b["id"]):
            got = srv.ok("GET", "/v1/batches/%s?wait=10" % bid)
            assert got["state"] == "canceled", got
        assert srv.batch(done["id"])["state"] == "succeeded"
        r = srv.ok("POST", "/v1/batches/cancel")
        assert r["canceled"] == 0 and r["batch_ids"] == []


def test_jobs_list_state_lists_pagination_live_timings_and_pool():
    with Server(workers=2) as srv:
        fin = srv.submit([OK, OK, OK])
        srv.ok("GET", "/v1/batches/%s?wait=10" % fin["id"])
        run = srv.submit([sleep(3, "long-a"), sleep(3, "long-b"), OK],
                         concurrency=2)
        wait_until(lambda: counts(srv, run["id"])["running"] == 2, 10,
                   what="two running")
        time.sleep(0.3)
        page = srv.ok("GET", "/v1/jobs?state=running")
        assert [j["name"] for j in page["items"]] == ["long-a", "long-b"]
        for j in page["items"]:
            assert j["timings"]["run_ms"] > 0, j
        both = srv.ok("GET", "/v1/jobs?state=running,queued")
        assert len(both["items"]) == 3
        assert {j["state"] for j in both["items"]} == {"running", "queued"}
        # pagination over all jobs
        seen, after = [], None
        while True:
            q = "/v1/jobs?limit=2" + ("&after=" + after if after else "")
            p = srv.ok("GET", q)
            seen += [j["id"] for j in p["items"]]
            after = p["next_cursor"]
            if after is None:
                break
        assert seen == sorted(seen) and len(seen) == 6, seen
        # the same lists on the other endpoints
        bl = srv.ok("GET", "/v1/batches?state=running,queued")
        assert [b["id"] for b in bl["items"]] == [run["id"]]
        jl = srv.ok("GET", "/v1/batches/%s/jobs?state=running,queued" %
                    run["id"])
        assert len(jl["items"]) == 3
        for bad in ("running,", "running,bogus", ",", "queued,,running"):
            st, h, b = srv.get("/v1/jobs?state=" + bad)
            assert_problem(st, h, b, 400)
        st, h, b = srv.get("/v1/batches?state=running,x")
        assert_problem(st, h, b, 400)
        # a running batch's parallelism counts the runs so far
        got = srv.batch(run["id"])
        assert got["timings"]["parallelism"] > 0, got["timings"]
        # pool entries name their job
        busy = [w for w in srv.pool()["workers"] if w["state"] == "busy"]
        assert len(busy) == 2, busy
        for w in busy:
            assert w["batch_id"] == run["id"]
            assert w["job_kind"] == "sleep"
            assert w["job_name"] in ("long-a", "long-b")
            assert w["job_started_at"]
        srv.ok("POST", "/v1/batches/%s/cancel" % run["id"])


def wait_status(srv, bid, wait):
    """The status of the script one-liner: curl -sf when curl exists
    (its exit code), else the HTTP status through http.client."""
    path = "/v1/batches/%s?wait=%s&fail=true" % (bid, wait)
    if shutil.which("curl"):
        p = subprocess.run(["curl", "-sf", "-o", "/dev/null",
                            "http://127.0.0.1:%d%s" % (srv.port, path)],
                           timeout=60)
        return {0: 200, 22: "error"}.get(p.returncode, p.returncode), path
    st, _, _ = srv.get(path, timeout=60)
    return (200 if st == 200 else "error"), path


def test_wait_from_a_script_exit_statuses():
    with Server(workers=2) as srv:
        ok = srv.submit([OK])
        bad = srv.submit([FAIL])
        slow = srv.submit([sleep(5)])
        assert wait_status(srv, ok["id"], 10)[0] == 200
        assert wait_status(srv, bad["id"], 10)[0] == "error"
        assert wait_status(srv, slow["id"], 0.3)[0] == "error"
        # the statuses themselves
        st, _, b = srv.get("/v1/batches/%s?wait=10&fail=true" % bad["id"])
        assert st == 412 and b["state"] == "failed", (st, b)
        st, _, b = srv.get("/v1/batches/%s?wait=0.2&fail=true" % slow["id"])
        assert st == 408 and b["state"] in ("queued", "running"), (st, b)
        st, _, b = srv.get("/v1/batches/%s?wait=0&fail=false" % bad["id"])
        assert st == 200
        # the cap is an hour
        st, _, b = srv.get("/v1/batches/%s?wait=3600&fail=true" % ok["id"])
        assert st == 200
        for q in ("wait=3601", "fail=yes"):
            st, h, b = srv.get("/v1/batches/%s?%s" % (ok["id"], q))
            assert_problem(st, h, b, 400)
        srv.ok("POST", "/v1/batches/%s/cancel" % slow["id"])
