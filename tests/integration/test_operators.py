"""test_operators.py - what an operator sees: --version, durations with
units, start-up errors that say what to fix, JSON logs with a line for each
event (ids as the API shows them), [::1] as loopback, unknown JOBPOOL_*
variables warned about, and the /metrics an alert is built on.

Before: `--retention 7` meant seven seconds (a batch vanished 8 s after it
ended, unlogged), a missing --db directory said "unable to open database
file", a bad --worker-bin said "use --worker-bin", [::1] was refused as a
public address, and nothing was logged for submissions, failures or purges.
"""

import json
import os
import re
import socket
import subprocess
import tempfile
import time

from harness import (PG_BASE, Server, pg_database, send_until_close,
                     server_binary, wait_until)
from test_edges import parse_metrics

ID_RE = {"batch_id": re.compile(r"^b_[0-9]{12}$"),
         "job_id": re.compile(r"^j_[0-9]{12}$")}


def run_server(args, env=None, timeout=10):
    """Run jobpoold to its exit (a start-up that must fail); returns
    (exit code, stdout + stderr)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    e.update(env or {})
    with tempfile.TemporaryDirectory(prefix="jobpool-it-") as d:
        p = subprocess.run([server_binary()] + args, cwd=d, env=e,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def stderr_of(srv):
    with open(srv.stderr_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def json_lines(srv):
    """Every log line of srv, parsed: each must be one JSON object."""
    out = []
    for line in stderr_of(srv).splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        for k in ("ts", "level", "msg"):
            assert k in obj, "no %s in %r" % (k, line)
        assert obj["level"] in ("debug", "info", "warn", "error"), line
        out.append(obj)
    return out


def test_version_prints_and_exits_0():
    rc, out = run_server(["--version"])
    assert rc == 0, (rc, out)
    assert re.match(r"^jobpoold \d+\.\d+\.\d+\n$", out), out


def test_duration_without_unit_is_refused():
    for args, env in ((["--retention", "7"], None),
                      ([], {"JOBPOOL_RETENTION": "7"}),
                      (["--header-timeout", "10"], None),
                      (["--idempotency-ttl", "24"], None)):
        rc, out = run_server(["--listen", "127.0.0.1:0", "--db", "j.db"] +
                             args, env)
        assert rc == 2, (args, env, rc, out)
        assert "a duration needs a unit" in out and "ms, s, m, h or d" in out, \
            out
        assert " error " in out, "not logged as an error: %s" % out


def test_bad_start_up_flags_say_what_to_fix():
    rc, out = run_server(["--listen", "127.0.0.1:0", "--db", "j.db",
                          "--workers", "-1"])
    assert rc == 2 and "1 to 1024" in out and " error " in out, (rc, out)
    rc, out = run_server(["--listen", "127.0.0.1:0", "--db",
                          "/nonexistent-jobpool/dir/j.db"])
    assert rc == 3, (rc, out)
    assert "/nonexistent-jobpool/dir does not exist" in out, out
    assert "unable to open database file" not in out, out
    rc, out = run_server(["--listen", "127.0.0.1:0", "--db", "j.db",
                          "--worker-bin", "/nonexistent-jobpool-worker"])
    assert rc != 0 and "--worker-bin /nonexistent-jobpool-worker" in out, out
    assert "No such file or directory" in out, out
    rc, out = run_server(["--listen", "127.0.0.1:0", "--db", "j.db",
                          "--log-format", "json", "--workers", "0"])
    assert rc == 2, (rc, out)
    line = json.loads(out.strip().splitlines()[-1])
    assert line["level"] == "error" and "1 to 1024" in line["msg"], line


def test_unknown_jobpool_variable_is_warned_about():
    with Server(workers=1, env={"JOBPOOL_FOO": "1",
                                "JOBPOOL_WORKER": "3"}) as srv:
        text = stderr_of(srv)
    assert re.search(r" warn unknown environment variable JOBPOOL_FOO", text), \
        text
    assert "JOBPOOL_WORKER " in text, text
    # the known ones are not
    assert "JOBPOOL_LISTEN" not in text and "JOBPOOL_DB " not in text, text


def test_settings_logged_once_at_start():
    with Server(workers=1, args=["--retention", "7d"]) as srv:
        lines = [l for l in stderr_of(srv).splitlines() if " settings: " in l]
    assert len(lines) == 1, lines
    assert "retention=7d" in lines[0] and "workers=1" in lines[0], lines
    assert "token=none" in lines[0], lines


def ipv6_loopback():
    try:
        with open("/proc/net/if_inet6") as f:
            return any(l.split()[0] == "0" * 31 + "1" for l in f)
    except OSError:
        return False


def test_ipv6_loopback_is_loopback():
    b = server_binary()
    e = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    with tempfile.TemporaryDirectory(prefix="jobpool-it-") as d:
        log = open(os.path.join(d, "stderr"), "wb")
        db = pg_database(d) if PG_BASE else os.path.join(d, "j.db")
        p = subprocess.Popen([b, "--listen", "[::1]:0", "--db", db,
                              "--workers", "1"], cwd=d, env=e,
                             stdin=subprocess.DEVNULL, stdout=log,
                             stderr=log)
        try:
            def text():
                with open(os.path.join(d, "stderr")) as f:
                    return f.read()
            if not ipv6_loopback():
                # Without ::1 the bind fails, but not as "beyond loopback"
                p.wait(10)
                print("NOTE: this machine has no IPv6 loopback (no ::1 in "
                      "/proc/net/if_inet6): checked only that [::1] is not "
                      "refused as a public address")
                assert "without a token" not in text(), text()
                return
            wait_until(lambda: "listening on http://[::1]:" in text() or
                       p.poll() is not None, 10, what="listening")
            m = re.search(r"listening on http://\[::1\]:(\d+)", text())
            assert m, text()
            s = socket.create_connection(("::1", int(m.group(1))), timeout=5)
            reply = send_until_close(
                s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                   b"Connection: close\r\n\r\n")
            s.close()
            assert reply.startswith(b"HTTP/1.1 200"), reply
        finally:
            if p.poll() is None:
                p.terminate()
                p.wait(15)
            log.close()


def events_in(srv):
    got = {}
    for obj in json_lines(srv):
        if "event" in obj:
            for k, rx in ID_RE.items():
                if k in obj:
                    assert rx.match(obj[k]), obj
            got.setdefault(obj["event"], []).append(obj)
    return got


def test_json_logs_one_line_per_event_with_api_ids():
    with Server(workers=1, args=["--log-format", "json",
                                 "--retention", "1s"]) as srv:
        b = srv.submit([{"kind": "noop"},
                        {"kind": "fail", "args": {"mode": "exit"},
                         "max_attempts": 2, "retry_backoff_s": 0},
                        {"kind": "fail", "args": {"mode": "crash"}}])
        srv.wait_batch(b["id"])
        b2 = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}])
        jid = srv.jobs(b2["id"])[0]["id"]
        srv.wait_job_state(jid, ("running",))
        st = srv.post("/v1/jobs/%s/cancel" % jid)[0]
        assert st in (200, 202), st
        srv.wait_batch(b2["id"])
        # retention 1s: both batches go, each with a line
        wait_until(lambda: len(events_in(srv).get("purge", [])) >= 2, 15,
                   what="purge lines")
        ev = events_in(srv)
    assert [e["batch_id"] for e in ev["submit"]] == [b["id"], b2["id"]], ev
    for kind in ("submit", "failure", "crash", "worker_replaced", "cancel",
                 "retry", "purge"):
        assert kind in ev, "no %s line: %s" % (kind, sorted(ev))
    assert any(e.get("job_id") == jid for e in ev["cancel"]), ev["cancel"]
    assert {e["batch_id"] for e in ev["purge"]} == {b["id"], b2["id"]}, ev
    assert all(e["level"] == "warn" for e in ev["failure"]), ev["failure"]
    assert all("j_" in e["msg"] for e in ev["failure"]), ev["failure"]


def test_operator_metrics_present_and_moving():
    with Server(workers=1) as srv:
        s0 = parse_metrics(srv.get("/metrics")[2])
        assert s0[("jobpool_build_info", 'version="%s"' % run_server(
            ["--version"])[1].split()[1])] == 1, s0
        assert s0[("jobpool_worker_restarts_total", "")] == 0
        assert s0[("jobpool_retries_total", "")] == 0
        b = srv.submit([{"kind": "noop"}] * 3 +
                       [{"kind": "fail", "args": {"mode": "exit"},
                         "max_attempts": 2, "retry_backoff_s": 0}])
        srv.wait_batch(b["id"])
        s = parse_metrics(srv.get("/metrics")[2])
        assert s[("jobpool_jobs_finished_total",
                  'kind="noop",state="succeeded"')] == 3, s
        assert s[("jobpool_jobs_finished_total",
                  'kind="fail",state="failed"')] == 1, s
        assert s[("jobpool_retries_total", "")] == 1, s
        # fail/exit takes its worker with it, twice (two attempts)
        wait_until(lambda: parse_metrics(srv.get("/metrics")[2])[
            ("jobpool_worker_restarts_total", "")] == 2, 10,
            what="worker restarts counted")
        post = s[("jobpool_http_request_duration_seconds_count",
                  'method="POST",status="2xx"')]
        assert post == 1, post
        assert ("jobpool_http_request_duration_seconds_bucket",
                'method="GET",status="2xx",le="+Inf"') in s, s
        for band in ("high", "normal", "low"):
            assert s[("jobpool_queued_jobs", 'priority="%s"' % band)] == 0
        # a queued job shows in its band
        b2 = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}] * 3,
                        priority=5)
        wait_until(lambda: parse_metrics(srv.get("/metrics")[2])[
            ("jobpool_queued_jobs", 'priority="high"')] == 2, 10,
            what="two queued in the high band")
        srv.post("/v1/batches/%s/cancel" % b2["id"])
        srv.wait_batch(b2["id"])


def test_oldest_queued_seconds_gauge():
    """jobpool_oldest_queued_seconds is 0 with nothing queued and grows
    while a job waits behind the only, busy, worker."""
    with Server(workers=1) as srv:
        s0 = parse_metrics(srv.get("/metrics")[2])
        assert s0[("jobpool_oldest_queued_seconds", "")] == 0, s0
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 30}}] * 2)
        wait_until(lambda: parse_metrics(srv.get("/metrics")[2])[
            ("jobpool_oldest_queued_seconds", "")] > 0, 10,
            what="the queued job's age above 0")
        srv.post("/v1/batches/%s/cancel" % b["id"])
        srv.wait_batch(b["id"])
        s = parse_metrics(srv.get("/metrics")[2])
        assert s[("jobpool_oldest_queued_seconds", "")] == 0, s
