"""test_commit.py - answers describe only committed state, off the happy
path too: a database that fills up mid-turn, limits within one turn,
cancels racing a crash, /metrics with many rows, event ids from the
future, an event reader that stops reading.

Each test here failed on the server before the publisher (every reply and
notice after its commit) and passes with it.
"""

import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time

from harness import (Server, assert_problem, wait_until, BATCH_ID_RE,
                     TERMINAL_BATCH)
from test_edges import SSE


def _parallel(n, fn):
    """Run fn(i) in n threads released together; returns the results."""
    go = threading.Barrier(n)
    out = [None] * n

    def run(i):
        go.wait()
        try:
            out[i] = fn(i)
        except Exception as e:      # a refused connection is a result too
            out[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


class Tmpfs:
    """A small tmpfs mounted on a temp directory (tests run as root)."""

    def __init__(self, size):
        self.path = tempfile.mkdtemp(prefix="jobpool-full-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size,
                        "tmpfs", self.path], check=True)

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self):
        subprocess.run(["umount", "-l", self.path], check=False)
        os.rmdir(self.path)


def test_disk_full_acks_only_what_committed_and_recovers():
    fs = Tmpfs("4m")
    try:
        srv = Server(workers=1, tmpdir=fs.path)
        try:
            srv.submit([{"kind": "noop"}])
            # Leave about 1.5 MB: a 100,000-job batch cannot fit, and
            # SQLite rolls the whole turn back when the WAL cannot grow.
            filler = os.path.join(fs.path, "filler")
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, fs.free() - 1500 * 1024))
            big = {"jobs": [{"kind": "noop"}] * 100000}
            small = {"jobs": [{"kind": "noop"}]}

            def submit(i):
                return srv.post("/v1/batches", big if i == 3 else small)

            results = _parallel(8, submit)
            acked = []
            for r in results:
                assert not isinstance(r, Exception), r
                st, h, b = r
                if st == 201:
                    acked.append(b["id"])
                else:
                    assert_problem(st, h, b, 503)
                    assert h.get("retry-after"), h
            assert len(acked) == len(set(acked)), \
                "one id acknowledged twice: %r" % acked
            for bid in acked:
                srv.batch(bid)          # every 201 names a stored batch
            # Space returns: the server recovers without a restart.
            os.unlink(filler)
            wait_until(lambda: srv.get("/readyz")[0] == 200, 10,
                       what="/readyz 200 after space returned")
            after = srv.submit([{"kind": "noop"}] * 3)
            assert after["id"] not in acked
            ids_seen = [int(x[2:]) for x in acked]
            assert not ids_seen or int(after["id"][2:]) > max(ids_seen)
            for bid in acked + [after["id"]]:
                assert srv.wait_batch(bid, 20)["state"] == "succeeded", bid
            m = srv.get("/metrics")[2]
            assert 'jobpool_jobs{state="running"} 0' in m, m
            srv.stop()
        finally:
            srv.abort()
        con = sqlite3.connect(os.path.join(fs.path, "jobpool.db"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bad = con.execute("SELECT count(*) FROM batches WHERE n_running < 0 "
                          "OR n_queued < 0").fetchone()[0]
        con.close()
        assert bad == 0
    finally:
        fs.close()


def test_limits_hold_within_one_turn():
    with Server(workers=1, args=["--max-open-batches", "2",
                                 "--max-queued-jobs", "2"]) as srv:
        def submit(i):
            return srv.post("/v1/batches", {"jobs": [
                {"kind": "sleep", "args": {"seconds": 5}}]})[0]

        codes = _parallel(40, submit)
        assert all(c in (201, 429) for c in codes), codes
        assert codes.count(201) <= 2, \
            "%d of 40 accepted past --max-open-batches 2" % codes.count(201)
        srv.post("/v1/batches/b_000000000001/cancel")
        srv.post("/v1/batches/b_000000000002/cancel")


def test_cancel_reply_is_committed_before_a_crash():
    srv = Server(workers=1, args=["--commit-interval-us", "1000000"])
    try:
        blocker = srv.submit([{"kind": "sleep", "args": {"seconds": 3}}])
        b = srv.submit([{"kind": "echo", "args": {"value": 1}}])
        jid = b["job_ids"][0]
        srv.wait_job_state(blocker["job_ids"][0], ("running",))
        st, h, body = srv.post("/v1/jobs/%s/cancel" % jid)
        assert st == 200 and body["state"] == "canceled", (st, body)
        srv.kill9()
        again = Server(workers=1, tmpdir=srv.tmpdir)
        with again:
            j = again.job(jid)
            assert j["state"] == "canceled", j
            assert again.wait_batch(blocker["id"], 20)["state"] in \
                TERMINAL_BATCH
            time.sleep(0.2)
            j = again.job(jid)
            assert j["state"] == "canceled" and j["attempts"] == 0, j
    finally:
        srv.abort()


def _cancel_during_kill(cancel_path, batch_state):
    """Start a command job that ignores SIGTERM (the kill waits out a long
    grace), cancel it through cancel_path % (batch id, job id), kill -9
    the server mid-kill and restart it: the job must end canceled, having
    started once, and its batch end batch_state."""
    marker = tempfile.mktemp(prefix="jobpool-starts-")
    job = {"kind": "command", "max_attempts": 3, "args": {"argv": [
        "sh", "-c", "echo x >> %s; trap '' TERM; sleep 30" % marker]}}
    args = ["--allow-command", "--kill-grace-ms", "20000"]
    srv = Server(workers=1, args=args)
    try:
        b = srv.submit([job])
        jid = b["job_ids"][0]
        wait_until(lambda: os.path.exists(marker), 10, what="job started")
        st, h, body = srv.post(cancel_path % {"b": b["id"], "j": jid})
        assert st == 200, (st, body)
        srv.kill9()
        again = Server(workers=1, tmpdir=srv.tmpdir, args=args)
        with again:
            done = again.wait_batch(b["id"], 10)
            assert done["state"] == batch_state, done
            assert done["counts"]["canceled"] == 1, done
            time.sleep(0.5)
            with open(marker) as f:
                starts = f.read().count("x")
            assert starts == 1, "the canceled job ran %d times" % starts
            j = again.job(jid)
            assert j["state"] == "canceled", j
            assert j["history"][-1]["state"] == "canceled", j["history"]
    finally:
        srv.abort()
        if os.path.exists(marker):
            os.unlink(marker)


def test_batch_cancel_in_flight_survives_a_crash():
    _cancel_during_kill("/v1/batches/%(b)s/cancel", "canceled")


def test_running_job_cancel_survives_a_crash():
    # A batch is canceled only by its own cancel; one canceled job of it
    # makes it end failed.
    _cancel_during_kill("/v1/jobs/%(j)s/cancel", "failed")


def test_metrics_scrape_is_o1_in_stored_rows():
    srv = Server(workers=1)
    srv.stop()
    con = sqlite3.connect(srv.db)
    now = int(time.time() * 1e6)
    con.executemany(
        "INSERT INTO batches (state, created_at, started_at, finished_at, "
        "n_total, n_queued, n_succeeded) VALUES ('succeeded', ?, ?, ?, 1, "
        "0, 1)", ((now, now, now) for _ in range(1000000)))
    con.commit()
    con.close()
    with Server(workers=1, tmpdir=srv.tmpdir) as again:
        text = again.get("/metrics")[2]
        assert 'jobpool_jobs{state="succeeded"} 1000000' in text, \
            [l for l in text.splitlines() if l.startswith("jobpool_jobs")]
        times = []
        for _ in range(7):
            t = time.monotonic()
            again.get("/metrics")
            times.append(time.monotonic() - t)
        times.sort()
        # 0.3 s a scrape when it summed the batches table
        assert times[3] < 0.1, "median scrape %.3f s" % times[3]
        b = again.submit([{"kind": "noop"}] * 3)
        again.wait_batch(b["id"])
        wait_until(lambda: 'jobpool_jobs{state="succeeded"} 1000003' in
                   again.get("/metrics")[2], 5, what="counts follow jobs")


def test_event_id_from_the_future_resets():
    with Server(workers=1) as srv:
        future = int((time.time() + 3600) * 1e6)
        s = SSE(srv, last_id=future)
        srv.submit([{"kind": "noop"}])
        ev = s.next()
        assert ev["event"] == "reset", ev
        ev = s.next()
        assert ev["event"] in ("batch", "job"), ev
        s.close()


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def test_stalled_event_reader_costs_no_cpu():
    with Server(workers=2) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        # Enough events (60,000, ~7 MB) to fill both socket buffers; then
        # never read.
        b = srv.submit([{"kind": "noop"}] * 30000)
        srv.wait_batch(b["id"], 60)
        # Past the 15 s keep-alive, a stalled stream used to spin the loop.
        time.sleep(16)
        before = _cpu_seconds(srv.pid)
        time.sleep(3)
        used = _cpu_seconds(srv.pid) - before
        sock.close()
        assert used < 0.5, "%.2f s of CPU in 3 s with a stalled reader" % used
        assert srv.get("/healthz")[0] == 200


test_stalled_event_reader_costs_no_cpu.timeout = 90
test_metrics_scrape_is_o1_in_stored_rows.timeout = 180


def test_a_refusal_decided_on_uncommitted_state_waits_for_the_commit():
    """A job ends; its outcome waits (--commit-interval-us 1 s) for company
    in the group commit.  A cancel arriving meanwhile is refused (409: it
    has finished), and that answer must not come before the finish is
    committed: a GET right after it sees the job ended.  Before, the 409
    came at once while every reader still saw the job running."""
    with Server(workers=1, args=["--commit-interval-us", "1000000"]) as srv:
        t0 = time.monotonic()
        b = srv.submit([{"kind": "sleep", "args": {"seconds": 1.5}}])
        jid = b["job_ids"][0]
        srv.wait_job_state(jid, ("running",), 5)
        # ended at 1.5 s; its outcome is committed about 1 s later
        time.sleep(max(0, t0 + 1.8 - time.monotonic()))
        st, _, body = srv.post("/v1/jobs/%s/cancel" % jid)
        assert st == 409, (st, body)
        st, _, job = srv.get("/v1/jobs/" + jid)
        assert job["state"] == "succeeded", \
            "409 'already finished' answered while the job reads %s" % \
            job["state"]
