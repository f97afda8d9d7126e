"""Process control: pool resizing, drain on SIGTERM, retries, command jobs."""

import os
import time

from harness import (Server, assert_problem, children_of, parse_ts,
                     wait_until)

SH_TREE = ["sh", "-c", "sleep 300 & sleep 300"]


def descendants(pid):
    """Every live process below pid (by walking /proc parent links)."""
    found, frontier = set(), [pid]
    while frontier:
        p = frontier.pop()
        for c in children_of(p):
            if c not in found:
                found.add(c)
                frontier.append(c)
    return found


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def sleepers(pid):
    return [p for p in descendants(pid) if cmdline(p).startswith("sleep ")]


def test_pool_resize_while_running_loses_nothing():
    with Server(workers=2) as srv:
        n = 60
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.03}}] * n)
        for size in (4, 1, 3, 2):
            st, _, p = srv.request("PUT", "/v1/pool", body={"size": size})
            assert st == 200 and p["size"] == size, (st, p)
            time.sleep(0.1)
        fin = srv.wait_batch(b["id"], timeout=30)
        assert fin["state"] == "succeeded", fin
        jobs = srv.jobs(b["id"])
        assert len(jobs) == n
        for j in jobs:
            assert j["attempts"] == 1 and len(j["history"]) == 1, j
        p = srv.wait_pool_ready(2, timeout=10)
        assert len([w for w in p["workers"] if w["pid"]]) == 2, p


def test_pool_shrink_lets_busy_worker_finish():
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.5}}] * 2)
        jid = b["job_ids"][1]
        srv.wait_job_state(jid, ("running",))
        st, _, p = srv.request("PUT", "/v1/pool", body={"size": 1})
        assert st == 200 and p["size"] == 1
        fin = srv.wait_batch(b["id"], timeout=10)
        assert fin["state"] == "succeeded", fin
        assert all(j["attempts"] == 1 for j in srv.jobs(b["id"]))
        p = srv.wait_pool_ready(1, timeout=10)
        assert [w["slot"] for w in p["workers"]] == [0], p


def test_pool_put_bad_input():
    with Server(workers=1) as srv:
        for body in ({"size": 0}, {"size": 1025}, {"size": "2"},
                     {"size": 2, "x": 1}, {}, [2], {"size": 1.5}):
            st, h, b = srv.request("PUT", "/v1/pool", body=body)
            assert_problem(st, h, b, 400)
        st, h, b = srv.request("PUT", "/v1/pool", raw=b'{"size": 2}',
                               headers={"Content-Type": "text/plain"})
        assert_problem(st, h, b, 415)
        assert srv.pool()["size"] == 1


def test_drain_lets_short_jobs_finish():
    with Server(workers=2, args=["--drain-timeout-s", "10"]) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.4}}] * 2)
        for jid in b["job_ids"]:
            srv.wait_job_state(jid, ("running",))
        took = srv.stop()
        assert took >= 0.2, "exited before the running jobs finished"
        with Server(workers=1, tmpdir=srv.tmpdir) as again:
            fin = again.batch(b["id"])
            assert fin["state"] == "succeeded", fin


def test_drain_timeout_requeues_without_counting():
    with Server(workers=2, args=["--drain-timeout-s", "0"]) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}] * 3)
        for jid in b["job_ids"][:2]:
            srv.wait_job_state(jid, ("running",))
        took = srv.stop()
        assert took < 5, took
        with Server(workers=2, tmpdir=srv.tmpdir) as again:
            for jid in b["job_ids"]:
                j = again.job(jid)
                assert j["state"] in ("queued", "running"), j
                assert j["attempts"] <= 1 and j["history"] == [], j
            again.post("/v1/batches/%s/cancel" % b["id"])


def test_retry_backoff_grows():
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "fail", "args": {"mode": "exit", "code": 5},
                         "max_attempts": 3, "retry_backoff_s": 0.1}])
        j = srv.wait_job(b["job_ids"][0], timeout=10)
        assert j["state"] == "failed" and j["attempts"] == 3, j
        h = j["history"]
        assert [e["exit_code"] for e in h] == [5, 5, 5], h
        gaps = []
        for a, c in zip(h, h[1:]):
            gaps.append(parse_ts(c["started_at"]) - parse_ts(a["finished_at"]))
        assert gaps[0] >= 0.099 and gaps[1] >= 0.199, gaps


def test_command_off_by_default_and_on_with_flag():
    with Server(workers=1) as srv:
        st, h, b = srv.post("/v1/batches", {"jobs": [
            {"kind": "command", "args": {"argv": ["true"]}}]})
        assert_problem(st, h, b, 400, "/jobs/0/kind")
        assert "--allow-command" in b["errors"][0]["message"]
    with Server(workers=1, args=["--allow-command"]) as srv:
        b = srv.submit([{"kind": "command", "args": {
            "argv": ["sh", "-c", "echo out; echo err >&2; exit 0"]}}])
        j = srv.wait_job(b["job_ids"][0])
        assert j["state"] == "succeeded", j
        assert j["output"] == {"stdout": "out\n", "stderr": "err\n",
                               "truncated": False}, j["output"]
        assert j["result"] == {"exit_code": 0} and j["exit_code"] == 0, j


def test_command_exit_code_and_output_cap():
    with Server(workers=1, args=["--allow-command",
                                 "--max-output-bytes", "10"]) as srv:
        b = srv.submit([
            {"kind": "command", "args": {"argv": ["sh", "-c", "exit 4"]}},
            {"kind": "command", "args": {
                "argv": ["sh", "-c", "printf 0123456789abcdef"]}},
            {"kind": "command", "args": {"argv": ["cat"], "stdin": "hi"}},
            {"kind": "command", "args": {"argv": ["/no/such/program"]}}])
        srv.wait_batch(b["id"])
        e, cap, cat, missing = [srv.job(j) for j in b["job_ids"]]
        assert e["state"] == "failed" and e["exit_code"] == 4, e
        assert cap["output"]["stdout"] == "0123456789" and \
            cap["output"]["truncated"] is True, cap["output"]
        assert cat["output"]["stdout"] == "hi", cat
        assert missing["state"] == "failed" and \
            "/no/such/program" in missing["error"], missing


def test_command_cancel_kills_whole_tree():
    with Server(workers=1, args=["--allow-command",
                                 "--kill-grace-ms", "300"]) as srv:
        b = srv.submit([{"kind": "command", "args": {"argv": SH_TREE}}])
        jid = b["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        wait_until(lambda: len(sleepers(srv.pid)) == 2, 5, 0.02,
                   "both sleeps to start")
        t0 = time.monotonic()
        srv.post("/v1/jobs/%s/cancel" % jid)
        j = srv.wait_job(jid, timeout=5)
        took = time.monotonic() - t0
        assert j["state"] == "canceled", j
        assert took < 0.3 + 0.1 + 0.2, "cancel took %.3f s" % took
        assert sleepers(srv.pid) == [], "sleep processes left after cancel"
        assert srv.pool()["workers"][0]["jobs_done"] >= 1


def test_command_timeout_with_term_ignored():
    with Server(workers=1, args=["--allow-command",
                                 "--kill-grace-ms", "200"]) as srv:
        b = srv.submit([{"kind": "command", "timeout_s": 0.2, "args": {
            "argv": ["sh", "-c", "trap '' TERM; sleep 300 & wait"]}}])
        jid = b["job_ids"][0]
        j = srv.wait_job(jid, timeout=5)
        run = j["timings"]["run_ms"]
        assert j["state"] == "timed_out", j
        assert 200 <= run <= 200 + 200 + 100, \
            "timed-out job ran %.1f ms (timeout 200 + grace 200)" % run
        assert sleepers(srv.pid) == []


def _sleep300():
    return {p for p in os.listdir("/proc") if p.isdigit()
            and cmdline(int(p)) == "sleep 300 "}


def test_command_escaped_grandchild_does_not_survive():
    # other tests' (or other runs') sleeps are not this job's
    foreign = _sleep300()
    with Server(workers=1, args=["--allow-command"]) as srv:
        b = srv.submit([{"kind": "command", "args": {
            "argv": ["sh", "-c", "setsid sleep 300 & exit 0"]}}])
        j = srv.wait_job(b["job_ids"][0])
        assert j["state"] == "succeeded", j
        assert sleepers(srv.pid) == [], "escaped grandchild survived its job"
        mine = _sleep300() - foreign
        assert not mine, "a sleep 300 still runs: %r" % sorted(mine)


def test_command_cpu_is_the_commands_own():
    with Server(workers=1, args=["--allow-command"]) as srv:
        b = srv.submit([{"kind": "command", "args": {"argv": [
            "sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"]}}])
        j = srv.wait_job(b["job_ids"][0], timeout=60)
        t = j["timings"]
        assert j["state"] == "succeeded", j
        assert t["user_cpu_ms"] > 10, t
        assert t["user_cpu_ms"] + t["sys_cpu_ms"] <= t["run_ms"] * 1.1 + 5, t


def own_marker(srv):
    """The JOBPOOL_JOB prefix of srv's jobs (JOBPOOL_INSTANCE/): other
    servers on this machine, of other tests or sessions, have their own."""
    # the server sets it after its start: its workers' environment has it
    srv.wait_pool_ready(1)
    worker = srv.pool()["workers"][0]["pid"]
    with open("/proc/%d/environ" % worker, "rb") as f:
        for e in f.read().split(b"\0"):
            if e.startswith(b"JOBPOOL_INSTANCE="):
                return "JOBPOOL_JOB=%s/" % e.split(b"=", 1)[1].decode()
    raise AssertionError("jobpoold has no JOBPOOL_INSTANCE")


def marked(marker_prefix="JOBPOOL_JOB="):
    """pids of live processes carrying a JOBPOOL_JOB marker."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % p, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/stat" % p) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if any(e.startswith(marker_prefix.encode()) for e in env):
            out.append(int(p))
    return out


def test_worker_death_mid_command_leaves_nothing():
    with Server(workers=1, args=["--allow-command"]) as srv:
        mine = own_marker(srv)
        b = srv.submit([{"kind": "command", "args": {
            "argv": ["sh", "-c", "setsid sleep 300 & sleep 300 & wait"]}}])
        jid = b["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        wait_until(lambda: len(marked(mine)) >= 3, 5, 0.02,
                   "the job's processes")
        worker = srv.pool()["workers"][0]["pid"]
        os.kill(worker, 9)
        j = srv.wait_job(jid, timeout=5)
        assert j["state"] == "failed" and j["signal"] == "SIGKILL", j
        wait_until(lambda: not marked(mine), 3, 0.05,
                   "the dead job's processes to be killed")
        srv.wait_pool_ready(1)


def test_restart_after_kill9_kills_orphaned_job_processes():
    with Server(workers=2, args=["--allow-command"]) as first:
        # other servers' leftovers (zombies' parents, slow deaths) are not
        # this job's: count only what appears after the submission
        foreign = set(marked())
        b = first.submit([{"kind": "command", "max_attempts": 2, "args": {
            "argv": ["sh", "-c", "setsid sleep 300 & sleep 300 & wait"]}}])
        jid = b["job_ids"][0]
        first.wait_job_state(jid, ("running",))
        wait_until(lambda: len(set(marked()) - foreign) >= 3, 5, 0.02,
                   "the job's processes")
        before = set(marked()) - foreign
        first.kill9()
        with Server(workers=2, args=["--allow-command"],
                    tmpdir=first.tmpdir) as second:
            j = second.job(jid)
            assert j["state"] in ("queued", "running") and \
                j["attempts"] <= 2, j
            # SIGKILLed at recovery, they are gone within moments (a
            # loaded machine delays the kill); one recovery missed would
            # live on for 300 s
            wait_until(lambda: before.isdisjoint(marked()), 3, 0.05,
                       "the interrupted attempt's processes to die")
            second.post("/v1/jobs/%s/cancel" % jid)
            second.wait_job(jid)


def test_broken_worker_binary_backs_off_and_is_not_ready():
    with Server(workers=2, args=["--worker-bin", "/bin/false"]) as srv:
        time.sleep(1.5)
        st, h, b = srv.get("/readyz")
        assert_problem(st, h, b, 503)
        assert srv.get("/healthz")[0] == 200
        with open(srv.stderr_path) as f:
            deaths = f.read().count("died before it was ready")
        # without a backoff this is hundreds per second
        assert 2 <= deaths <= 20, "%d worker deaths in 1.5 s" % deaths


def test_shutdown_kills_what_a_running_command_left():
    with Server(workers=1, args=["--allow-command",
                                 "--drain-timeout-s", "0"]) as srv:
        mine = own_marker(srv)
        b = srv.submit([{"kind": "command", "args": {
            "argv": ["sh", "-c", "setsid sleep 300 & sleep 300 & wait"]}}])
        srv.wait_job_state(b["job_ids"][0], ("running",))
        wait_until(lambda: len(marked(mine)) >= 3, 5, 0.02,
                   "the job's processes")
        srv.stop()
        wait_until(lambda: not marked(mine), 2, 0.05,
                   "no process of the job after shutdown")
