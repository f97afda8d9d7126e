"""Batch policies: halt (GNU parallel's --halt) and timeout_pct (--timeout
200%), against the real server.

The jobs are `command` jobs (sh -c 'sleep ..; exit ..') on one or two
workers, so which job runs when is decided by the pool, not by timing:
a halt fires while a known job is running and known jobs are queued.  Time
bounds are generous (a killed `sleep 30` must end long before 30 s);
relative-timeout checks compare the server's own measurements.
"""

import json
import re

from harness import SSE, Server, assert_problem, parse_ts, wait_until

CMD = ["--allow-command"]


def sh(script, **job):
    """A command job running `sh -c script`."""
    j = {"kind": "command", "args": {"argv": ["sh", "-c", script]}}
    j.update(job)
    return j


def post_batch(srv, body):
    st, h, b = srv.post("/v1/batches", body)
    assert st == 201, "POST /v1/batches: %d %r" % (st, b)
    return b


def states(srv, bid):
    return [j["state"] for j in srv.jobs(bid)]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# ---------------------------------------------------------------- halt

def test_halt_soon_fail_cancels_the_queued_rest_and_lets_running_finish():
    with Server(workers=2, args=CMD) as srv:
        b = post_batch(srv, {
            "halt": {"when": "fail", "count": 1, "mode": "soon"},
            "jobs": [sh("sleep 0.3; exit 3"),        # fails first
                     sh("sleep 1.5; exit 0")] +      # runs meanwhile
                    [sh("sleep 0.1")] * 4})          # queued
        assert b["halt"] == {"when": "fail", "count": 1, "percent": None,
                             "mode": "soon"}, b["halt"]
        assert b["halted"] is None and b["timeout_pct"] is None, b
        fin = srv.wait_batch(b["id"], timeout=30)
        js = srv.jobs(b["id"])
        assert [j["state"] for j in js] == \
            ["failed", "succeeded"] + ["canceled"] * 4, \
            [j["state"] for j in js]
        for j in js[2:]:
            assert j["started_at"] is None and \
                j["error"] == "canceled before it started", j
        c = fin["counts"]
        assert (c["failed"], c["succeeded"], c["canceled"]) == (1, 1, 4), c
        # the state a cancel of the rest gives: canceled
        assert fin["state"] == "canceled", fin
        h = fin["halted"]
        assert isinstance(h, dict) and set(h) == {"reason", "at"}, h
        assert h["reason"] == "1 job failed (halt when fail count 1)", h
        at = parse_ts(h["at"])
        # halted when the first job failed, before the running one ended
        assert parse_ts(js[0]["finished_at"]) - 0.01 <= at <= \
            parse_ts(js[1]["finished_at"]), (h, js[0], js[1])
        assert js[1]["error"] is None and js[1]["exit_code"] == 0, js[1]


def test_halt_now_fail_percent_kills_running_jobs():
    with Server(workers=2, args=CMD) as srv:
        # 20% of 10 jobs: the second failure halts.  Worker A runs job 0
        # and then job 2, both failing; worker B holds job 1 meanwhile.
        b = post_batch(srv, {
            "halt": {"when": "fail", "percent": 20, "mode": "now"},
            "jobs": [sh("sleep 0.2; exit 1"), sh("sleep 30"),
                     sh("sleep 0.2; exit 2")] + [sh("sleep 30")] * 7})
        fin = srv.wait_batch(b["id"], timeout=25)
        js = srv.jobs(b["id"])
        assert [j["state"] for j in js] == \
            ["failed", "canceled", "failed"] + ["canceled"] * 7, \
            [j["state"] for j in js]
        killed = js[1]
        assert killed["error"] == "canceled while running", killed
        assert killed["timings"]["run_ms"] < 20000, killed["timings"]
        assert all(j["started_at"] is None for j in js[3:]), js[3:]
        assert fin["state"] == "canceled", fin
        assert fin["halted"]["reason"] == \
            "2 of 10 jobs failed (halt when fail percent 20%)", fin["halted"]
        assert fin["halt"]["percent"] == 20 and \
            fin["halt"]["count"] is None, fin["halt"]


def test_halt_fail_counts_a_timeout():
    # GNU parallel counts any non-zero exit as a failure; a job killed by
    # its timeout is one.
    with Server(workers=1, args=CMD) as srv:
        b = post_batch(srv, {
            "halt": {"when": "fail", "count": 1, "mode": "soon"},
            "jobs": [sh("sleep 30", timeout_s=0.3), sh("true"), sh("true")]})
        fin = srv.wait_batch(b["id"], timeout=25)
        assert states(srv, b["id"]) == ["timed_out", "canceled", "canceled"]
        assert fin["halted"]["reason"] == \
            "1 job failed (halt when fail count 1)", fin


def test_halt_now_success_one():
    with Server(workers=2, args=CMD) as srv:
        b = post_batch(srv, {
            "halt": {"when": "success", "count": 1, "mode": "now"},
            "jobs": [sh("sleep 0.3"), sh("sleep 30")] + [sh("sleep 30")] * 3})
        fin = srv.wait_batch(b["id"], timeout=25)
        js = srv.jobs(b["id"])
        assert [j["state"] for j in js] == ["succeeded"] + ["canceled"] * 4, \
            [j["state"] for j in js]
        assert js[1]["error"] == "canceled while running", js[1]
        assert fin["state"] == "canceled", fin
        assert fin["halted"]["reason"] == \
            "1 job succeeded (halt when success count 1)", fin["halted"]


def test_halt_not_met_and_met_by_the_last_job_change_nothing():
    with Server(workers=1, args=CMD) as srv:
        plain = post_batch(srv, {"jobs": [sh("true")]})
        fin = srv.wait_batch(plain["id"])
        assert fin["halted"] is None and fin["halt"] is None and \
            fin["timeout_pct"] is None, fin
        # the threshold is met by the batch's last job: nothing is left to
        # halt, so it ends as any batch does
        last = post_batch(srv, {
            "halt": {"when": "fail", "count": 1, "mode": "now"},
            "jobs": [sh("true"), sh("exit 1")]})
        fin = srv.wait_batch(last["id"])
        assert fin["state"] == "failed" and fin["halted"] is None, fin
        never = post_batch(srv, {
            "halt": {"when": "fail", "count": 2, "mode": "soon"},
            "jobs": [sh("exit 1"), sh("true"), sh("true")]})
        fin = srv.wait_batch(never["id"])
        assert fin["state"] == "failed" and fin["halted"] is None, fin
        assert fin["counts"]["succeeded"] == 2, fin


def test_halted_shows_in_events_and_long_poll_and_survives_restart():
    with Server(workers=1, args=CMD) as srv:
        stream = SSE(srv, timeout=20)
        b = post_batch(srv, {
            "halt": {"when": "fail", "count": 1, "mode": "soon"},
            "jobs": [sh("exit 1"), sh("true"), sh("true")]})
        seen = None
        try:
            while seen is None:
                ev = stream.next()
                d = json.loads(ev["data"])
                if ev["event"] == "batch" and d["id"] == b["id"]:
                    assert "halted" in d, d
                    if d["halted"] is not None:
                        seen = d
        finally:
            stream.close()
        assert seen["halted"]["reason"] == \
            "1 job failed (halt when fail count 1)", seen
        fin = srv.wait_batch(b["id"])     # a long-poll
        assert fin["halted"] == seen["halted"], (fin, seen)
        listed = [x for x in srv.get("/v1/batches")[2]["items"]
                  if x["id"] == b["id"]]
        assert listed and listed[0]["halted"] == seen["halted"], listed
        srv.stop()
        with Server(workers=1, tmpdir=srv.tmpdir, args=CMD) as again:
            after = again.batch(b["id"])
            assert after["halted"] == seen["halted"] and \
                after["state"] == "canceled", after


def test_halt_soon_stays_halted_across_a_restart_with_running_jobs():
    # A batch halted "soon" whose running job is interrupted by a restart
    # does not start anything again: the halt canceled it like a cancel.
    with Server(workers=2, args=CMD + ["--drain-timeout-s", "0"]) as srv:
        b = post_batch(srv, {
            "halt": {"when": "fail", "count": 1, "mode": "soon"},
            "jobs": [sh("sleep 0.2; exit 1"), sh("sleep 30"),
                     sh("sleep 30"), sh("sleep 30")]})
        jid = b["job_ids"][1]

        def halted():
            x = srv.batch(b["id"])
            return x if x["halted"] else None
        h = wait_until(halted, 20, what="the halt")["halted"]
        assert srv.job(jid)["state"] == "running"
        srv.stop()
        with Server(workers=2, tmpdir=srv.tmpdir, args=CMD) as again:
            fin = again.wait_batch(b["id"], timeout=20)
            assert fin["halted"] == h and fin["state"] == "canceled", fin
            assert [j["state"] for j in again.jobs(b["id"])] == \
                ["failed", "canceled", "canceled", "canceled"]


# ---------------------------------------------------------------- timeout_pct

RELATIVE = re.compile(r"^ran longer than (\d+(?:\.\d+)?)% of the batch's "
                      r"median run time \(([0-9.]+) s\) and was killed$")


def check_relative_kill(job, pct, quick):
    """job was stopped by timeout_pct after the quick jobs succeeded."""
    assert job["state"] == "timed_out", job
    m = RELATIVE.match(job["error"] or "")
    assert m, "error %r" % job["error"]
    assert float(m.group(1)) == pct, job["error"]
    med = median([q["timings"]["run_ms"] for q in quick])
    # the error's median is the server's, to 3 digits
    assert abs(float(m.group(2)) * 1000 - med) <= max(5, med * 0.01), \
        (job["error"], med)
    # it ran at least pct% of that median, and was killed long before its
    # own 30 s
    assert job["timings"]["run_ms"] >= med * pct / 100 - 1, \
        (job["timings"], med)
    assert job["timings"]["run_ms"] < 20000, job["timings"]


def test_timeout_pct_kills_a_slow_outlier_after_three_quick_successes():
    with Server(workers=1, args=CMD) as srv:
        b = post_batch(srv, {
            "timeout_pct": 300,
            # a long timeout_s of its own: the relative limit comes first
            "jobs": [sh("sleep 0.2")] * 3 + [sh("sleep 30", timeout_s=60)]})
        assert b["timeout_pct"] == 300, b
        fin = srv.wait_batch(b["id"], timeout=25)
        js = srv.jobs(b["id"])
        assert [j["state"] for j in js[:3]] == ["succeeded"] * 3, js
        check_relative_kill(js[3], 300, js[:3])
        assert fin["state"] == "failed" and fin["halted"] is None, fin


def test_timeout_pct_reaches_a_job_that_started_before_the_median():
    # Job 0 starts at once, with no median yet; it is killed once the other
    # worker's three quick jobs have succeeded and it has run longer than
    # 200% of their median.
    with Server(workers=2, args=CMD) as srv:
        b = post_batch(srv, {"timeout_pct": 200,
                             "jobs": [sh("sleep 30")] + [sh("sleep 0.2")] * 3})
        srv.wait_batch(b["id"], timeout=25)
        js = srv.jobs(b["id"])
        assert [j["state"] for j in js[1:]] == ["succeeded"] * 3, js
        check_relative_kill(js[0], 200, js[1:])
        assert parse_ts(js[0]["finished_at"]) >= \
            parse_ts(js[3]["finished_at"]), (js[0], js[3])


def test_timeout_s_wins_when_it_is_shorter():
    with Server(workers=1, args=CMD) as srv:
        b = post_batch(srv, {
            "timeout_pct": 5000,        # 50x the median: ~10 s
            "jobs": [sh("sleep 0.2")] * 3 + [sh("sleep 30", timeout_s=0.5)]})
        srv.wait_batch(b["id"], timeout=25)
        j = srv.jobs(b["id"])[3]
        assert j["state"] == "timed_out", j
        assert j["error"] == "exceeded its timeout_s and was killed", j
        assert j["timings"]["run_ms"] < 5000, j["timings"]


def test_timeout_pct_keeps_applying_after_a_restart():
    # The slow job is running when the server stops (drained: killed and
    # queued again); the restarted server has the median from the stored
    # successes and stops its new attempt too.
    with Server(workers=1, args=CMD + ["--drain-timeout-s", "0"]) as srv:
        b = post_batch(srv, {"timeout_pct": 1000,
                             "jobs": [sh("sleep 0.2")] * 3 + [sh("sleep 30")]})
        slow = b["job_ids"][3]
        srv.wait_job_state(slow, "running", timeout=20)
        srv.stop()
        with Server(workers=1, tmpdir=srv.tmpdir, args=CMD) as again:
            j = again.job(slow)
            assert j["state"] in ("queued", "running"), j
            again.wait_batch(b["id"], timeout=25)
            js = again.jobs(b["id"])
            check_relative_kill(js[3], 1000, js[:3])


# ---------------------------------------------------------------- validation

def test_policy_validation_is_400_with_every_path():
    with Server(workers=1) as srv:
        jobs = [{"kind": "noop"}]
        cases = [
            ({"halt": {"when": "fail", "mode": "soon"}}, "/halt"),
            ({"halt": {"when": "fail", "count": 1, "percent": 10,
                       "mode": "now"}}, "/halt"),
            ({"halt": {"when": "sometimes", "count": 1, "mode": "now"}},
             "/halt/when"),
            ({"halt": {"when": "fail", "count": 1}}, "/halt/mode"),
            ({"halt": {"when": "fail", "count": 0, "mode": "now"}},
             "/halt/count"),
            ({"halt": {"when": "fail", "percent": 120, "mode": "now"}},
             "/halt/percent"),
            ({"halt": {"when": "fail", "count": 1, "mode": "now",
                       "pct": 1}}, "/halt/pct"),
            ({"halt": "fail=1"}, "/halt"),
            ({"timeout_pct": 100}, "/timeout_pct"),
            ({"timeout_pct": "200%"}, "/timeout_pct"),
        ]
        for extra, path in cases:
            body = dict(extra, jobs=jobs)
            st, h, b = srv.post("/v1/batches", body)
            assert_problem(st, h, b, 400, path)
        # every invalid field at once
        st, h, b = srv.post("/v1/batches", {
            "halt": {"when": "x", "count": 1, "mode": "y"},
            "timeout_pct": 1, "jobs": jobs})
        body = assert_problem(st, h, b, 400)
        paths = sorted(e["path"] for e in body["errors"])
        assert paths == ["/halt/mode", "/halt/when", "/timeout_pct"], paths
        # nothing of them was stored
        assert srv.get("/v1/batches")[2]["items"] == []
        # null is absent, as a read shows it
        ok = post_batch(srv, {"halt": None, "timeout_pct": None,
                              "jobs": jobs})
        assert ok["halt"] is None and ok["timeout_pct"] is None, ok
