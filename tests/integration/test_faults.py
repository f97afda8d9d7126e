"""Faults: cancel, timeouts, crashes, exits, restart recovery, shutdown."""

import time

from harness import (Server, assert_problem, parse_ts, pid_alive,
                     pid_zombie_of, proc_stat, wait_pids_gone, kill_pids,
                     wait_until)

SLEEP30 = {"kind": "sleep", "args": {"seconds": 30}}


def assert_pool_intact(srv, size, old_pids=()):
    """The pool is back to `size` live, distinct workers; none of old_pids
    is among them.  Returns the pool."""
    p = srv.wait_pool_ready(size, timeout=10)
    pids = [w["pid"] for w in p["workers"]]
    assert len(set(pids)) == size, "duplicate worker pids %r" % pids
    for op in old_pids:
        assert op not in pids, "dead worker pid %d still listed: %r" % (
            op, p["workers"])
    return p


def assert_worker_gone(srv, pid, timeout=2.0):
    st = proc_stat(pid)
    start = st[2] if st else None
    left = wait_pids_gone({pid: start}, timeout)
    assert not left, "worker pid %d still runs %.1f s after its job ended" \
        % (pid, timeout)
    # the server must reap it too (no zombies)
    wait_until(lambda: not pid_zombie_of(pid, srv.pid), 2, 0.02,
               "jobpoold to reap worker %d" % pid)


def assert_normal_batch(srv):
    b = srv.submit([{"kind": "echo", "args": {"value": i}} for i in range(6)]
                   + [{"kind": "sleep", "args": {"seconds": 0.05}}] * 2)
    fin = srv.wait_batch(b["id"], timeout=15)
    assert fin["state"] == "succeeded", "normal batch after faults: %r" % fin


def test_cancel_running_job():
    with Server(workers=2) as srv:
        before = srv.wait_pool_ready(2)
        b = srv.submit([SLEEP30])
        jid = b["job_ids"][0]
        j = srv.wait_job_state(jid, "running", 5)
        wpid = j["worker"]["pid"]
        assert wpid in [w["pid"] for w in before["workers"]], \
            "job ran on pid %r, not a pool worker %r" % (wpid,
                                                         before["workers"])
        t0 = time.monotonic()
        st, h, c = srv.post("/v1/jobs/%s/cancel" % jid)
        assert st == 200 and c["id"] == jid, (st, c)
        assert c["state"] in ("running", "canceled"), c
        fin = srv.wait_job(jid, timeout=10)
        took = time.monotonic() - t0
        assert fin["state"] == "canceled", fin
        assert took <= 3.0, "cancel took %.2f s" % took
        assert fin["finished_at"] is not None and fin["error"], fin
        assert_worker_gone(srv, wpid)
        p = assert_pool_intact(srv, 2, [wpid])
        new = set(w["pid"] for w in p["workers"]) - \
            set(w["pid"] for w in before["workers"])
        assert len(new) == 1, "expected one replacement worker: %r -> %r" % (
            before["workers"], p["workers"])
        bfin = srv.wait_batch(b["id"], timeout=5)
        assert bfin["state"] == "failed" and bfin["counts"]["canceled"] == 1, \
            "batch after a job cancel: %r" % bfin
        assert_normal_batch(srv)


def test_cancel_batch():
    with Server(workers=2) as srv:
        b = srv.submit([SLEEP30] * 6)
        wait_until(lambda: srv.batch(b["id"])["counts"]["running"] == 2,
                   5, 0.01, "2 running jobs")
        running_pids = [w["pid"] for w in srv.pool()["workers"]]
        t0 = time.monotonic()
        st, h, c = srv.post("/v1/batches/%s/cancel" % b["id"])
        assert st == 200 and c["id"] == b["id"], (st, c)
        assert c["counts"]["queued"] == 0 and c["counts"]["canceled"] >= 4, \
            "queued jobs not canceled at once: %r" % c["counts"]
        fin = srv.wait_batch(b["id"], timeout=10)
        took = time.monotonic() - t0
        assert fin["state"] == "canceled", fin
        assert fin["counts"]["canceled"] == 6, fin["counts"]
        assert took <= 3.0, "batch cancel took %.2f s" % took
        js = srv.jobs(b["id"])
        assert all(j["state"] == "canceled" for j in js), \
            [j["state"] for j in js]
        never = [j for j in js if j["started_at"] is None]
        assert len(never) == 4, "4 jobs should never have started: %r" % (
            [(j["index"], j["started_at"]) for j in js])
        for pid in running_pids:
            assert_worker_gone(srv, pid)
        assert_pool_intact(srv, 2, running_pids)
        st, h, body = srv.post("/v1/batches/%s/cancel" % b["id"])
        assert_problem(st, h, body, 409)
        assert_normal_batch(srv)


def test_timeout_hang():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "fail", "args": {"mode": "hang"},
                         "timeout_s": 0.3}])
        jid = b["job_ids"][0]
        j = srv.wait_job_state(jid, "running", 5)
        wpid = j["worker"]["pid"]
        fin = srv.wait_job(jid, timeout=10)
        assert fin["state"] == "timed_out", fin
        assert fin["timeout_s"] == 0.3, fin
        assert isinstance(fin["error"], str) and fin["error"], fin
        held = parse_ts(fin["finished_at"]) - parse_ts(fin["started_at"])
        assert 0.29 <= held <= 0.3 + 2.0 + 0.5, \
            "timed out after %.3f s (timeout 0.3 s, grace 2 s)" % held
        assert srv.wait_batch(b["id"], 5)["state"] == "failed"
        assert_worker_gone(srv, wpid)
        assert_pool_intact(srv, 2, [wpid])
        assert_normal_batch(srv)


def test_crash_segv():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "fail", "args": {"mode": "crash"}}])
        jid = b["job_ids"][0]
        fin = srv.wait_job(jid, timeout=10)
        assert fin["state"] == "failed", fin
        assert fin["signal"] == "SIGSEGV", fin
        assert fin["exit_code"] is None, fin
        assert isinstance(fin["error"], str) and fin["error"], fin
        assert fin["worker"] and fin["worker"]["pid"], fin
        assert len(fin["history"]) == 1 and \
            fin["history"][0]["signal"] == "SIGSEGV", fin["history"]
        wpid = fin["worker"]["pid"]
        assert_worker_gone(srv, wpid)
        assert_pool_intact(srv, 2, [wpid])
        assert_normal_batch(srv)


def test_exit_code():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "fail", "args": {"mode": "exit", "code": 3}},
                        {"kind": "fail", "args": {"mode": "exit"}}])
        fin = srv.wait_batch(b["id"], timeout=10)
        assert fin["state"] == "failed" and fin["counts"]["failed"] == 2, fin
        j3, j1 = srv.jobs(b["id"])
        for j, code in ((j3, 3), (j1, 1)):
            assert j["state"] == "failed", j
            assert j["exit_code"] == code, "exit_code %r, expected %d" % (
                j["exit_code"], code)
            assert j["signal"] is None, j
            assert isinstance(j["error"], str) and j["error"], j
        assert_pool_intact(srv, 2, [j3["worker"]["pid"], j1["worker"]["pid"]])
        assert_normal_batch(srv)


def test_cancel_terminal_job_409():
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "noop"}])
        jid = b["job_ids"][0]
        assert srv.wait_job(jid, 10)["state"] == "succeeded"
        st, h, body = srv.post("/v1/jobs/%s/cancel" % jid)
        assert_problem(st, h, body, 409)
        assert srv.job(jid)["state"] == "succeeded"
        st, h, body = srv.post("/v1/batches/%s/cancel" % b["id"])
        assert_problem(st, h, body, 409)
        assert srv.batch(b["id"])["state"] == "succeeded"


def test_all_faults_then_normal_batch():
    """Every fault in one batch on one pool, then the pool still works."""
    with Server(workers=3) as srv:
        b = srv.submit([
            {"kind": "fail", "args": {"mode": "crash"}},
            {"kind": "fail", "args": {"mode": "exit", "code": 3}},
            {"kind": "fail", "args": {"mode": "hang"}, "timeout_s": 0.3},
            SLEEP30,
            {"kind": "noop"},
        ])
        sleeper = b["job_ids"][3]
        srv.wait_job_state(sleeper, "running", 10)
        assert srv.ok("POST", "/v1/jobs/%s/cancel" % sleeper)["id"] == sleeper
        fin = srv.wait_batch(b["id"], timeout=15)
        assert fin["state"] == "failed", fin
        states = [j["state"] for j in srv.jobs(b["id"])]
        assert states == ["failed", "failed", "timed_out", "canceled",
                          "succeeded"], states
        c = fin["counts"]
        assert (c["failed"], c["timed_out"], c["canceled"], c["succeeded"]) \
            == (2, 1, 1, 1), c
        assert fin["progress"] == 1, fin
        assert_pool_intact(srv, 3)
        assert_normal_batch(srv)
        assert_pool_intact(srv, 3)


def test_restart_recovery():
    problems = []
    with Server(workers=2) as first:
        b = first.submit([dict(SLEEP30, max_attempts=1),
                          dict(SLEEP30, max_attempts=2),
                          {"kind": "echo", "args": {"value": "queued"}}])
        j1, j2, j3 = b["job_ids"]
        first.wait_job_state(j1, "running", 5)
        first.wait_job_state(j2, "running", 5)
        workers = {}
        for w in first.pool()["workers"]:
            st = proc_stat(w["pid"])
            workers[w["pid"]] = st[2] if st else None
        first.kill9()
        left = wait_pids_gone(workers, 2.0)
        if left:
            problems.append("worker pids %s still ran 2 s after kill -9 of "
                            "the server" % sorted(left))
            kill_pids(left)

        with Server(workers=2, tmpdir=first.tmpdir) as second:
            r1 = second.job(j1)
            assert r1["state"] == "failed" and r1["error"] == "interrupted", \
                "max_attempts=1 job after restart: %r" % r1
            r2 = second.job(j2)
            assert r2["state"] in ("queued", "running"), \
                "max_attempts=2 job after restart: %r" % r2
            assert r2["attempts"] >= 1, r2
            # the job that was still queued is not lost and runs
            r3 = second.wait_job(j3, 10)
            assert r3["state"] == "succeeded" and \
                r3["result"] == {"value": "queued"}, r3
            r2 = second.wait_job_state(j2, "running", 5)
            assert r2["attempts"] == 2, "second run of j2: %r" % r2
            p = second.pool()
            busy = {w["pid"]: w["job_id"] for w in p["workers"]}
            for j in second.jobs(b["id"]):
                if j["state"] == "running":
                    pid = j["worker"]["pid"]
                    assert pid in busy and busy[pid] == j["id"] and \
                        pid_alive(pid), \
                        "job %s running without a live worker: %r / %r" % (
                            j["id"], j["worker"], p["workers"])
                    assert pid not in workers, \
                        "job %s claims the dead worker %d" % (j["id"], pid)
            bs = second.batch(b["id"])
            assert bs["counts"]["failed"] == 1 and \
                bs["counts"]["running"] == 1 and \
                bs["counts"]["succeeded"] == 1, bs["counts"]
            second.ok("POST", "/v1/batches/%s/cancel" % b["id"])
            assert second.wait_batch(b["id"], 10)["state"] == "canceled"
    assert not problems, "; ".join(problems)


def test_sigterm_busy_pool():
    with Server(workers=2, args=["--drain-timeout-s", "1"]) as srv:
        b = srv.submit([SLEEP30] * 3)
        wait_until(lambda: srv.batch(b["id"])["counts"]["running"] == 2,
                   5, 0.01, "2 running jobs")
        pids = {}
        for w in srv.pool()["workers"]:
            st = proc_stat(w["pid"])
            pids[w["pid"]] = st[2] if st else None
        took = srv.stop(expect_rc=0, timeout=15)   # asserts exit 0, no kids
        assert took <= 1 + 2 + 2, \
            "shutdown took %.1f s (drain 1 s, kill grace 2 s)" % took
        left = wait_pids_gone(pids, 2.0)
        assert not left, "worker pids %s survived shutdown" % sorted(left)

        with Server(workers=2, tmpdir=srv.tmpdir,
                    args=["--drain-timeout-s", "1"]) as again:
            states = [j["state"] for j in again.jobs(b["id"])]
            assert all(s in ("queued", "running") for s in states), \
                "jobs killed by shutdown were not re-queued: %r" % states
            again.ok("POST", "/v1/batches/%s/cancel" % b["id"])
            assert again.wait_batch(b["id"], 10)["state"] == "canceled"


def test_retry_on_exit_code():
    with Server(workers=1) as srv:
        b = srv.submit([
            {"kind": "fail", "args": {"mode": "exit", "code": 3},
             "max_attempts": 3, "retry_on": [3], "retry_backoff_s": 0},
            {"kind": "fail", "args": {"mode": "exit", "code": 4},
             "max_attempts": 3, "retry_on": [3], "retry_backoff_s": 0},
            {"kind": "fail", "args": {"mode": "crash"},
             "max_attempts": 2, "retry_on": ["SIGSEGV"],
             "retry_backoff_s": 0.2},
        ])
        j_retry, j_noretry, j_sig = b["job_ids"]
        fin = srv.wait_batch(b["id"], 10)
        assert fin["state"] == "failed", fin
        r = srv.job(j_retry)
        assert r["state"] == "failed" and r["attempts"] == 3 and \
            r["exit_code"] == 3, \
            "exit 3 with retry_on [3], max_attempts 3: attempts %r, " \
            "history %d entries" % (r["attempts"], len(r["history"]))
        assert [h["attempt"] for h in r["history"]] == [1, 2, 3] and \
            all(h["exit_code"] == 3 and h["state"] == "failed"
                for h in r["history"]), r["history"]
        r = srv.job(j_noretry)
        assert r["state"] == "failed" and r["attempts"] == 1 and \
            len(r["history"]) == 1, "exit 4 is not in retry_on: %r" % r
        r = srv.job(j_sig)
        assert r["state"] == "failed" and r["attempts"] == 2 and \
            r["signal"] == "SIGSEGV" and len(r["history"]) == 2, \
            "SIGSEGV with retry_on [SIGSEGV], max_attempts 2: attempts %r" \
            % r["attempts"]
        gap = parse_ts(r["history"][1]["started_at"]) - \
            parse_ts(r["history"][0]["finished_at"])
        assert gap >= 0.19, "retry_backoff_s 0.2 but retried after %.3f s" \
            % gap
        assert_pool_intact(srv, 1)
        assert_normal_batch(srv)


def test_queued_cancel_and_sleep_timeout():
    with Server(workers=1) as srv:
        b = srv.submit([
            {"kind": "sleep", "args": {"seconds": 0.3}, "timeout_s": 0.1},
            SLEEP30,
            {"kind": "noop"},
        ])
        j_to, j_long, j_q = b["job_ids"]
        srv.wait_job_state(j_long, "running", 10)
        # the job behind the long one is still queued: cancel is immediate
        c = srv.ok("POST", "/v1/jobs/%s/cancel" % j_q)
        assert c["state"] == "canceled" and c["started_at"] is None, c
        srv.ok("POST", "/v1/jobs/%s/cancel" % j_long)
        fin = srv.wait_batch(b["id"], 10)
        assert fin["state"] == "failed", fin
        r = srv.job(j_to)
        assert r["state"] == "timed_out" and r["error"], r
        held = parse_ts(r["finished_at"]) - parse_ts(r["started_at"])
        assert held < 0.3, "a 0.3 s sleep with timeout_s 0.1 held its " \
            "worker %.3f s" % held
        assert srv.job(j_q)["attempts"] == 0
        assert srv.job(j_long)["state"] == "canceled"
        assert_pool_intact(srv, 1)
        assert_normal_batch(srv)


def test_ack_is_durable():
    with Server(workers=1) as first:
        b = first.submit([{"kind": "echo", "args": {"value": i}}
                          for i in range(50)], name="durable")
        first.kill9()
        with Server(workers=1, tmpdir=first.tmpdir) as second:
            got = second.batch(b["id"])
            assert got["name"] == "durable" and \
                got["counts"]["total"] == 50, got
            fin = second.wait_batch(b["id"], 10)
            assert fin["state"] in ("succeeded", "failed"), fin
            js = second.jobs(b["id"])
            assert [j["id"] for j in js] == b["job_ids"]
            for i, j in enumerate(js):
                assert j["state"] == "succeeded" or \
                    (j["state"] == "failed" and j["error"] == "interrupted"), \
                    "job %d after restart: %r" % (i, j)
                if j["state"] == "succeeded":
                    assert j["result"] == {"value": i}, j
