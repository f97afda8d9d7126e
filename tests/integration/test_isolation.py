"""test_isolation.py - promises that must hold off the happy path too: a
command job stored with --allow-command does not run after a restart
without it; a second server on the same database refuses to start and
touches nothing; workers and commands get only their own descriptors; a
stderr nobody reads never stops the server."""

import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from harness import (LISTEN_RE, SANITIZER_RE, Server, server_binary,
                     wait_until)


def test_stored_command_job_does_not_run_after_restart_without_the_flag():
    """A command job queued while the server had --allow-command, then a
    restart without the flag: the worker refuses it, nothing is started."""
    with Server(workers=1, args=["--allow-command"]) as first:
        marker = os.path.join(first.tmpdir, "the-command-ran")
        b = first.submit([
            {"kind": "sleep", "args": {"seconds": 0.5}},
            {"kind": "command", "args": {"argv": ["touch", marker]}},
        ])
        sleep_id, command_id = b["job_ids"]
        first.wait_job_state(sleep_id, "running")
        # SIGTERM drains the sleep; the command job stays queued
        first.stop()
        assert not os.path.exists(marker), "the command ran before the restart"
        with Server(workers=1, tmpdir=first.tmpdir) as second:
            j = second.wait_job(command_id, 10)
            assert j["state"] == "failed", j
            assert "--allow-command" in (j["error"] or ""), j
            time.sleep(0.2)
            assert not os.path.exists(marker), \
                "the stored command ran on a server without --allow-command"
            assert second.batch(b["id"])["counts"]["running"] == 0


def _second_server(db, cwd, timeout=10.0):
    """Start another jobpoold on db; returns (exit code, stderr, seconds).
    One that does not exit within timeout is killed (by its pid) and
    reported with exit code None."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBPOOL_")}
    t0 = time.monotonic()
    p = subprocess.Popen([server_binary(), "--listen", "127.0.0.1:0",
                          "--db", db, "--workers", "1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=cwd, env=env)
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, err.decode("utf-8", "replace"), \
            time.monotonic() - t0
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        return None, err.decode("utf-8", "replace"), time.monotonic() - t0


def test_second_server_on_the_same_database_refuses_to_start():
    """Through the same path, a symlink and another relative path: exit 6
    at once, naming the first server's pid; the first server's running
    command job is untouched and finishes normally."""
    with Server(workers=1, args=["--allow-command"]) as first:
        b = first.submit([{"kind": "command",
                           "args": {"argv": ["sleep", "2"]}}])
        jid = b["job_ids"][0]
        running = first.wait_job_state(jid, "running")
        link = os.path.join(first.tmpdir, "link-to.db")
        os.symlink(first.db, link)
        sub = os.path.join(first.tmpdir, "sub")
        os.mkdir(sub)
        for db, cwd in ((first.db, first.tmpdir), (link, first.tmpdir),
                        ("../jobpool.db", sub)):
            rc, err, took = _second_server(db, cwd)
            assert rc == 6, "second server on %s: exit %s, stderr %r" % (
                db, rc, err[-600:])
            assert "pid %d" % first.pid in err, \
                "the refusal does not name pid %d: %r" % (first.pid, err)
            assert took < 3, "refusing took %.1f s" % took
            j = first.job(jid)
            assert j["state"] == "running" and \
                j["worker"] == running["worker"] and j["attempts"] == 1, j
        fin = first.wait_batch(b["id"], 20)
        assert fin["state"] == "succeeded", fin
        assert fin["counts"]["running"] == 0, fin["counts"]
        j = first.job(jid)
        assert j["attempts"] == 1 and j["result"] == {"exit_code": 0}, j
        assert not os.path.exists(os.path.join(sub, "jobpool.db"))


def _fds(pid):
    return sorted(int(fd) for fd in os.listdir("/proc/%d/fd" % pid))


def test_workers_and_commands_get_only_their_own_fds():
    """jobpoold started with an extra inherited fd: a worker holds only 0-2
    and its channel (3); a command job only 0-2 (ls adds the one it opens
    to read the directory)."""
    # far from the numbers the server, a worker or ls would open next
    pr, pw = os.pipe()
    r, w = os.dup2(pr, 40), os.dup2(pw, 41)
    os.close(pr)
    os.close(pw)
    try:
        with Server(workers=1, args=["--allow-command"],
                    pass_fds=(r, w)) as srv:
            pool = srv.wait_pool_ready(1)
            worker = pool["workers"][0]["pid"]
            assert _fds(worker) == [0, 1, 2, 3], \
                "worker %d holds fds %s (inherited %d, %d)" % (
                    worker, _fds(worker), r, w)
            b = srv.submit([{"kind": "command",
                             "args": {"argv": ["ls", "/proc/self/fd"]}}])
            j = srv.wait_job(b["job_ids"][0], 10)
            assert j["state"] == "succeeded", j
            seen = sorted(int(x) for x in j["output"]["stdout"].split())
            assert seen[:3] == [0, 1, 2] and len(seen) <= 4 and \
                r not in seen and w not in seen, \
                "the command saw fds %s (inherited %d, %d)" % (seen, r, w)
    finally:
        os.close(r)
        os.close(w)


def _http(port, method, path, body=None, timeout=2.0):
    """One request; returns its status.  No answer within timeout fails the
    test: the server is stuck (on its stderr, in this file)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as e:
        raise AssertionError("%s %s: no answer within %.0f s while stderr "
                             "is full (%r)" % (method, path, timeout, e))
    finally:
        conn.close()


def _read_until(fd, pattern, timeout):
    """Read fd until pattern (a compiled regex) matches; returns the match."""
    text, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "stderr closed before %r" % pattern.pattern
            text += chunk
            m = pattern.search(text.decode("utf-8", "replace"))
            if m:
                return m
    raise AssertionError("no %r within %.0f s" % (pattern.pattern, timeout))


def _fill_pipe(w):
    """Fill the pipe whose write end is w, through a description of its own:
    O_NONBLOCK on w itself would be shared with the server's stderr."""
    fd = os.open("/proc/self/fd/%d" % w, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"#" * size)
                except BlockingIOError:
                    break
    finally:
        os.close(fd)


def test_full_stderr_does_not_stop_the_server():
    """stderr is a pipe nobody reads, filled to the brim: every request
    that logs (PUT /v1/pool) and /healthz still answer at once; once the
    pipe is read again, every line comes out, in order."""
    n = 300
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBPOOL_")}
    tmpdir = tempfile.mkdtemp(prefix="jobpool-it-")
    proc = None
    try:
        proc = subprocess.Popen([server_binary(), "--listen", "127.0.0.1:0",
                                 "--db", os.path.join(tmpdir, "jobpool.db"),
                                 "--workers", "1"],
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=w,
                                env=env)
        port = int(_read_until(r, LISTEN_RE, 10).group(1))
        _fill_pipe(w)
        os.close(w)
        w = None
        t0 = time.monotonic()
        for i in range(n):
            st = _http(port, "PUT", "/v1/pool", {"size": 1})
            assert st == 200, "PUT /v1/pool: %d" % st
            if i % 50 == 0:
                h0 = time.monotonic()
                assert _http(port, "GET", "/healthz") == 200
                took = time.monotonic() - h0
                assert took < 1.0, "/healthz took %.2f s" % took
        took = time.monotonic() - t0
        assert took < 15, "%d logging requests took %.1f s" % (n, took)
        # read the pipe again: the waiting lines come out, then shut down
        out = bytearray()
        reader = threading.Thread(target=_drain, args=(r, out), daemon=True)
        reader.start()
        wait_until(lambda: out.count(b"pool: resized to 1") >= n, 10, 0.05,
                   "the %d log lines once stderr is read" % n)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
        reader.join(5)
        text = out.decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if " jobpoold " in ln]
        resized = [i for i, ln in enumerate(lines) if "resized to 1" in ln]
        assert len(resized) == n, "%d of %d lines" % (len(resized), n)
        stopping = [i for i, ln in enumerate(lines) if "draining" in ln]
        assert stopping and stopping[0] > resized[-1], \
            "lines out of order: %s" % lines[-5:]
        assert "dropped" not in text, "lines dropped below the cap"
        assert not SANITIZER_RE.search(text), text[-2000:]
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if w is not None:
            os.close(w)
        os.close(r)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _drain(fd, out):
    """Read fd to EOF into out (a bytearray)."""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            out += chunk
    except OSError:
        return
