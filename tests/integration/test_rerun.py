"""Rerun and resubmission (SPEC §9): POST /v1/jobs/{id}/retry and
/v1/batches/{id}/retry, a batch or job posted back as read, batch defaults."""

import os
import socket

from harness import Server, assert_problem, wait_until

FAIL = {"kind": "fail", "args": {"mode": "exit", "code": 3}}


def sleep(s):
    return {"kind": "sleep", "args": {"seconds": s}}


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_job_retry_keeps_history_and_reopens_the_batch():
    with Server(workers=2) as srv:
        b = srv.submit([sleep(0.4), dict(FAIL)])
        jid = b["job_ids"][0]
        # queued or running: nothing to retry yet
        st, h, p = srv.post("/v1/jobs/%s/retry" % jid)
        assert_problem(st, h, p, 409)
        done = srv.wait_batch(b["id"])
        assert done["state"] == "failed" and done["finished_at"], done
        first = srv.job(jid)
        assert first["state"] == "succeeded" and first["attempts"] == 1

        j = srv.ok("POST", "/v1/jobs/%s/retry" % jid)
        assert j["id"] == jid and j["state"] in ("queued", "running"), j
        assert j["max_attempts"] == 2, j     # room for the new attempt
        assert len(j["history"]) == 1, j
        bb = srv.batch(b["id"])
        assert bb["state"] in ("queued", "running"), bb
        assert bb["finished_at"] is None, bb
        st, h, p = srv.post("/v1/jobs/%s/retry" % jid)
        assert_problem(st, h, p, 409)

        j = srv.wait_job(jid)
        assert j["state"] == "succeeded" and j["attempts"] == 2, j
        assert [e["attempt"] for e in j["history"]] == [1, 2], j["history"]
        bb = srv.wait_batch(b["id"])
        assert bb["state"] == "failed" and bb["finished_at"], bb
        assert bb["counts"]["succeeded"] == 1 and bb["counts"]["failed"] == 1

        st, h, p = srv.post("/v1/jobs/j_999999999999/retry")
        assert_problem(st, h, p, 404)


def test_batch_retry_failures_only():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "noop"}, dict(FAIL), dict(FAIL)])
        srv.wait_batch(b["id"])
        ok_id, f1, f2 = b["job_ids"]

        r = srv.ok("POST", "/v1/batches/%s/retry" % b["id"])
        assert r["retried"] == 2, r
        assert r["id"] == b["id"]
        assert r["state"] in ("queued", "running", "failed"), r
        bb = srv.wait_batch(b["id"])
        assert bb["state"] == "failed", bb
        assert bb["counts"]["failed"] == 2 and bb["counts"]["succeeded"] == 1
        assert srv.job(ok_id)["attempts"] == 1
        for jid in (f1, f2):
            j = srv.job(jid)
            assert j["attempts"] == 2 and len(j["history"]) == 2, j

        # only the successes this time, with a body
        r = srv.ok("POST", "/v1/batches/%s/retry" % b["id"],
                   body={"states": ["succeeded"]})
        assert r["retried"] == 1, r
        srv.wait_batch(b["id"])
        assert srv.job(ok_id)["attempts"] == 2

        # nothing matches: 200, retried 0, the batch stays finished
        r = srv.ok("POST", "/v1/batches/%s/retry" % b["id"],
                   body={"states": ["timed_out"]})
        assert r["retried"] == 0 and r["state"] == "failed", r

        for body, path in (({"states": ["running"]}, "/states/0"),
                           ({"states": ["failed", "x"]}, "/states/1"),
                           ({"states": []}, "/states"),
                           ({"states": "failed"}, "/states"),
                           ({"other": 1}, "/")):
            st, h, p = srv.post("/v1/batches/%s/retry" % b["id"], body)
            assert_problem(st, h, p, 400, path)

        st, h, p = srv.post("/v1/batches/b_999999999999/retry")
        assert_problem(st, h, p, 404)

        # 409 while it has queued or running jobs
        b2 = srv.submit([sleep(1.0)])
        st, h, p = srv.post("/v1/batches/%s/retry" % b2["id"])
        assert_problem(st, h, p, 409)
        srv.wait_batch(b2["id"])


def test_retry_of_a_canceled_batch_runs():
    with Server(workers=1) as srv:
        b = srv.submit([sleep(0.3), sleep(0.05), sleep(0.05)])
        srv.ok("POST", "/v1/batches/%s/cancel" % b["id"])
        bb = srv.wait_batch(b["id"])
        assert bb["state"] == "canceled", bb
        r = srv.ok("POST", "/v1/batches/%s/retry" % b["id"])
        assert r["retried"] == 3, r
        bb = srv.wait_batch(b["id"])
        assert bb["state"] == "succeeded", bb
        assert bb["counts"]["succeeded"] == 3, bb


def test_resubmit_as_read():
    with Server(workers=2) as srv:
        b = srv.submit([sleep(0.01), {"kind": "echo", "args": {"value": 7},
                                      "name": "e", "retry_on": [1, "SIGKILL"],
                                      "max_attempts": 2}],
                       name="again", concurrency=1, priority=3,
                       halt={"when": "fail", "count": 1, "mode": "soon"})
        srv.wait_batch(b["id"])
        body = srv.batch(b["id"])
        body["jobs"] = srv.jobs(b["id"])
        body["job_ids"] = b["job_ids"]
        st, h, nb = srv.post("/v1/batches", body)
        assert st == 201, (st, nb)
        assert nb["id"] != b["id"] and nb["name"] == "again", nb
        assert nb["concurrency"] == 1 and nb["priority"] == 3, nb
        done = srv.wait_batch(nb["id"])
        assert done["state"] == "succeeded", done
        old = srv.jobs(b["id"])
        new = srv.jobs(nb["id"])
        for o, n in zip(old, new):
            for f in ("kind", "args", "name", "max_attempts", "retry_on",
                      "timeout_s"):
                assert o[f] == n[f], (f, o, n)
            assert n["attempts"] == 1 and len(n["history"]) == 1, n

        # a single job as read, with nulls
        j = srv.job(b["job_ids"][0])
        srv.submit([j])


def test_defaults_apply_and_jobs_override():
    cwd = os.path.realpath("/tmp")
    with Server(workers=2, args=["--allow-command"]) as srv:
        b = srv.submit([
            {"kind": "command",
             "args": {"argv": ["sh", "-c", "echo $A $B; pwd"]}},
            {"kind": "command", "timeout_s": 7, "max_attempts": 1,
             "args": {"argv": ["sh", "-c", "echo $A $B; pwd"],
                      "env": {"B": "x"}, "cwd": "/"}},
            {"kind": "noop", "timeout_s": None},
        ], defaults={"env": {"A": "1", "B": "2"}, "cwd": cwd,
                     "timeout_s": 5, "max_attempts": 2,
                     "retry_on": [9], "retry_backoff_s": 0})
        assert srv.wait_batch(b["id"])["state"] == "succeeded"
        j1, j2, j3 = srv.jobs(b["id"])
        assert j1["args"]["env"] == {"A": "1", "B": "2"}, j1["args"]
        assert j1["args"]["cwd"] == cwd
        assert j1["timeout_s"] == 5 and j1["max_attempts"] == 2, j1
        assert j1["retry_on"] == [9] and j1["retry_backoff_s"] == 0, j1
        assert j1["output"]["stdout"] == "1 2\n%s\n" % cwd, j1["output"]
        assert j2["args"]["env"] == {"A": "1", "B": "x"}, j2["args"]
        assert j2["timeout_s"] == 7 and j2["max_attempts"] == 1, j2
        assert j2["output"]["stdout"] == "1 x\n/\n", j2["output"]
        # not a command: the job fields apply, env and cwd do not
        assert j3["timeout_s"] == 5 and j3["max_attempts"] == 2, j3
        assert j3["args"] in ({}, None), j3


def test_defaults_bad_are_400_under_defaults():
    with Server(workers=1, args=["--allow-command"]) as srv:
        job = {"kind": "noop"}
        for d, path in (({"timeout_s": -1}, "/defaults/timeout_s"),
                        ({"max_attempts": 0}, "/defaults/max_attempts"),
                        ({"retry_on": ["SIGNOPE"]}, "/defaults/retry_on/0"),
                        ({"env": {"A": 1}}, "/defaults/env/A"),
                        ({"cwd": ""}, "/defaults/cwd"),
                        ({"bogus": 1}, "/defaults/bogus"),
                        (5, "/defaults")):
            st, h, p = srv.post("/v1/batches", {"jobs": [job],
                                                "defaults": d})
            assert_problem(st, h, p, 400, path)


def test_retry_reopens_a_webhook_batch():
    args = ["--webhook-allow", "127.0.0.1", "--webhook-backoff", "50ms"]
    url = "http://127.0.0.1:%d/hook" % closed_port()
    with Server(workers=1, args=args) as srv:
        b = srv.submit([dict(FAIL)], webhook={"url": url,
                                               "events": ["batch.finished"]})
        srv.wait_batch(b["id"])
        # a batch without a webhook ends meanwhile: the last open batch
        # with one is gone, so SQLite drops the outbox triggers
        srv.wait_batch(srv.submit([{"kind": "noop"}])["id"])
        srv.ok("POST", "/v1/batches/%s/retry" % b["id"])
        srv.wait_batch(b["id"])

        def two():
            d = srv.ok("GET", "/v1/batches/%s/deliveries" % b["id"])
            n = [x for x in d["items"] if x["event"] == "batch.finished"]
            return len(n) == 2 or None
        wait_until(two, 10, 0.05, "a second batch.finished delivery")
