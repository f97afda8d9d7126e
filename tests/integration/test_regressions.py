"""test_regressions.py - one test per defect fixed: each asserts the right
behaviour (retries and the concurrency limit, cancel during a timeout kill,
shutdown with long-polls, metrics labels, worker respawn backoff, the token
kept from jobs)."""

import time

from harness import Server, parse_ts


def _overlap(a, b):
    """True if jobs a and b ran at the same time."""
    a0, a1 = parse_ts(a["started_at"]), parse_ts(a["finished_at"])
    b0, b1 = parse_ts(b["started_at"]), parse_ts(b["finished_at"])
    return a0 < b1 - 0.05 and b0 < a1 - 0.05


def test_retry_double_decrements_running_breaks_concurrency():
    """engine.c finish() calls sched_finished(b) and then retry() calls
    sched_requeued()/sched_delayed(), which decrement running again: after
    one retry the batch's running count is one too low, so concurrency=1
    lets two jobs run at once."""
    with Server(workers=3) as srv:
        b = srv.submit([
            {"kind": "fail", "args": {"mode": "exit", "code": 1},
             "max_attempts": 2, "retry_backoff_s": 0},
            {"kind": "sleep", "args": {"seconds": 1}},
            {"kind": "sleep", "args": {"seconds": 1}},
        ], concurrency=1)
        fin = srv.wait_batch(b["id"], 20)
        assert fin["counts"]["running"] == 0, fin
        j1, j2 = srv.job(b["job_ids"][1]), srv.job(b["job_ids"][2])
        assert not _overlap(j1, j2), \
            "concurrency 1 but jobs ran together: %s..%s and %s..%s" % (
                j1["started_at"], j1["finished_at"],
                j2["started_at"], j2["finished_at"])


def test_retry_with_backoff_double_decrements_running():
    """Same as above through sched_delayed() (retry_backoff_s > 0)."""
    with Server(workers=3) as srv:
        b = srv.submit([
            {"kind": "fail", "args": {"mode": "exit", "code": 1},
             "max_attempts": 2, "retry_backoff_s": 0.1},
            {"kind": "sleep", "args": {"seconds": 1}},
            {"kind": "sleep", "args": {"seconds": 1}},
            {"kind": "sleep", "args": {"seconds": 1}},
        ], concurrency=1)
        srv.wait_batch(b["id"], 20)
        jobs = [srv.job(j) for j in b["job_ids"]]
        for i in range(len(jobs)):
            for k in range(i + 1, len(jobs)):
                assert not _overlap(jobs[i], jobs[k]), \
                    "concurrency 1 but jobs %d and %d ran together" % (i, k)


TRAP_TERM = {"kind": "command",
             "args": {"argv": ["sh", "-c",
                               "trap '' TERM; while :; do sleep 0.05; done"]},
             "timeout_s": 0.5, "max_attempts": 3, "retry_backoff_s": 0}


def _cancel_in_timeout_grace(srv, path_of):
    b = srv.submit([dict(TRAP_TERM)])
    jid = b["job_ids"][0]
    srv.wait_job_state(jid, "running", 10)
    time.sleep(0.9)        # timeout fired at 0.5 s; SIGKILL due at 1.5 s
    st, _, body = srv.post(path_of(b["id"], jid))
    assert st == 200, (st, body)
    fin = srv.wait_batch(b["id"], 30)
    j = srv.job(jid)
    return fin, j


def test_job_cancel_during_timeout_grace_is_lost_and_job_retried():
    """engine.c retry_allowed() ignores a cancel that arrived while a
    timeout kill was in progress (pool_stop_job keeps the first kill
    reason): the attempt ends timed_out and is retried, so a job the
    client canceled (200) runs again, up to max_attempts times."""
    with Server(workers=1, args=["--allow-command",
                                 "--kill-grace-ms", "1000"]) as srv:
        fin, j = _cancel_in_timeout_grace(
            srv, lambda b, j: "/v1/jobs/%s/cancel" % j)
        assert j["attempts"] == 1, \
            "canceled job was retried: attempts %d, state %s, history %r" % (
                j["attempts"], j["state"],
                [h["state"] for h in j["history"]])


def test_batch_cancel_during_timeout_grace_requeues_job():
    """Same through POST /v1/batches/{id}/cancel: the batch is canceled
    (cancel_req set) yet its job is re-queued and started again."""
    with Server(workers=1, args=["--allow-command",
                                 "--kill-grace-ms", "1000"]) as srv:
        fin, j = _cancel_in_timeout_grace(
            srv, lambda b, j: "/v1/batches/%s/cancel" % b)
        assert j["attempts"] == 1, \
            "job of a canceled batch was retried: attempts %d, history %r" \
            % (j["attempts"], [h["state"] for h in j["history"]])
        assert fin["state"] == "canceled", fin


def test_shutdown_with_longpoll_on_unfinished_job_aborts():
    """http.c http_stop() resumes the waiters, but api_resume ->
    get_or_wait() suspends them again (the job is still queued and the
    wait deadline is far), so MHD_stop_daemon() panics: "called while we
    have suspended connections" -> abort, exit code != 0."""
    import threading
    with Server(workers=1) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 1}},
                        {"kind": "noop"}])
        jid = b["job_ids"][1]
        box = {}

        def poll():
            try:
                box["r"] = srv.get("/v1/jobs/%s?wait=30" % jid, timeout=40)
            except Exception as e:          # noqa: BLE001
                box["e"] = e
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        time.sleep(0.3)
        srv.stop(expect_rc=0, timeout=15)   # raises on a non-zero exit
        t.join(5)
        assert "r" in box, "long-poll got no answer at shutdown: %r" % (
            box.get("e"),)


def _raw(srv, method):
    import socket
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        s.sendall(("%s /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                   % method).encode())
        return s.recv(100)
    finally:
        s.close()


def test_metrics_method_label_unescaped_and_unbounded():
    """metrics.c metrics_http() stores the client's method verbatim (up to
    7 bytes) as a label: an unauthenticated request with method A"B makes
    /metrics invalid Prometheus text, and every new method is a new series
    (unbounded memory, linear scan per request)."""
    import re
    with Server(workers=1, args=["--token", "t0k"]) as srv:
        _raw(srv, 'A"B')
        for i in range(40):
            _raw(srv, "M%04d" % i)
        st, _, text = srv.get("/metrics",
                              headers={"Authorization": "Bearer t0k"})
        assert st == 200
        lines = [ln for ln in text.splitlines()
                 if ln.startswith("jobpool_http_requests_total{")]
        label = r'"(?:[^"\\\n]|\\.)*"'
        ok = re.compile(r'^jobpool_http_requests_total\{route=%s,method=%s,'
                        r'status=%s\} \d+$' % (label, label, label))
        bad = [ln for ln in lines if not ok.match(ln)]
        assert not bad, "invalid exposition lines: %r" % bad[:3]
        assert len(lines) < 20, \
            "%d series after 41 bogus methods: the label set is unbounded" \
            % len(lines)


def test_respawn_backoff_never_grows():
    """pool.c spawn_worker() memsets the slot from job_id to the end, which
    clears `failures`; so pool_reap() always sees failures == 1 and a
    worker that dies before "ready" is respawned every 200 ms forever
    instead of backing off 0.2 s .. 6.4 s as respawn() intends."""
    import os
    import tempfile
    d = tempfile.mkdtemp(prefix="jobpool-regr-")
    bad = os.path.join(d, "badworker")
    with open(bad, "w") as f:
        f.write("#!/bin/sh\nexit 7\n")
    os.chmod(bad, 0o755)
    with Server(workers=1, args=["--worker-bin", bad]) as srv:
        time.sleep(4)
        with open(srv.stderr_path, "rb") as f:
            n = f.read().decode().count("died before it was ready")
    # 0.2 + 0.4 + 0.8 + 1.6 s: at most ~5 deaths in 4 s with a growing delay
    assert n <= 6, "%d respawns of a failing worker in 4 s" % n


def test_command_job_reads_token_from_server_environ():
    """command.c hides JOBPOOL_* from a job's environment "so a job never
    sees the token", but the job runs as the server's uid and can read
    /proc/<jobpoold>/environ (the server is not PR_SET_DUMPABLE 0), so
    JOBPOOL_TOKEN leaks anyway."""
    tok = "regression-secret-token"
    hdr = {"Authorization": "Bearer " + tok}
    with Server(workers=1, args=["--allow-command"],
                env={"JOBPOOL_TOKEN": tok}) as srv:
        script = ("cat /proc/%d/environ 2>/dev/null | tr '\\0' '\\n' | "
                  "grep JOBPOOL_TOKEN || true" % srv.pid)
        st, _, b = srv.request("POST", "/v1/batches", body={"jobs": [
            {"kind": "command", "args": {"argv": ["sh", "-c", script]}}]},
            headers=hdr)
        assert st == 201, (st, b)
        jid = b["job_ids"][0]
        st, _, j = srv.request("GET", "/v1/jobs/%s?wait=10" % jid,
                               headers=hdr)
        assert j["state"] == "succeeded", j
        assert tok not in j["output"]["stdout"], \
            "a command job read the token: %r" % j["output"]["stdout"]
