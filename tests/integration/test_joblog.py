"""GET /v1/batches/{id}/joblog: GNU parallel's --joblog format, checked
against a joblog that `parallel --joblog` itself writes for the same
commands, and read back by parallel's own --resume-failed.

Needs GNU parallel (Debian's `parallel`; .ci/run installs it): without it
every test here FAILS with a message saying so, since the comparison is
the point.  The commands are chosen so that their argv joined by spaces
(jobpool's Command column) is the shell command parallel runs.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile

from harness import (Server, assert_problem, parse_ts, send_until_close,
                     wait_until)

HEADER = ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive",
          "Exitval", "Signal", "Command"]
TSV = "text/tab-separated-values"
START_RE = re.compile(r"^\d+\.\d{3}$")          # "%.3f"
RUNTIME_RE = re.compile(r"^ *\d+\.\d{3}$")      # "%10.3f"


def parallel_bin():
    """The path of GNU parallel; fails the test when it is missing (or is
    moreutils' parallel, which writes no joblog)."""
    path = shutil.which("parallel")
    if not path:
        raise AssertionError(
            "GNU parallel is not installed: this test compares jobpool's "
            "joblog with the one `parallel --joblog` writes (apt-get "
            "install parallel; .ci/run installs it)")
    out = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=30).stdout.decode("utf-8", "replace")
    if "GNU parallel" not in out:
        raise AssertionError("%s is not GNU parallel (moreutils' parallel?)"
                             ": %r; apt-get install parallel" % (path, out[:200]))
    return path


class Scripts:
    """A temp directory with the small scripts both runners run: their
    paths have no spaces, so argv joined by spaces stays one command."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="jobpool-joblog-")
        self.exitwith = self._script("exitwith", 'exit "$1"\n')
        self.killself = self._script("killself", 'kill -"$1" $$\n')
        # fails the first time it runs with a given file, succeeds after
        self.flaky = self._script(
            "flaky", 'if [ -e "$1" ]; then exit 0; fi\n: > "$1"\nexit 3\n')

    def _script(self, name, body):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(path, 0o755)
        return path

    def path(self, name):
        return os.path.join(self.dir, name)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def parse_joblog(text, where):
    """[header, rows...] of a joblog, each a list of its 9 tab-separated
    columns (a reader such as parallel's --resume splits on tabs)."""
    assert text.endswith("\n"), "%s: joblog does not end with a newline: " \
        "%r" % (where, text[-80:])
    rows = [line.split("\t") for line in text[:-1].split("\n")]
    for r in rows:
        assert len(r) == 9, "%s: a line has %d columns, not 9: %r" % (
            where, len(r), r)
    assert rows[0] == HEADER, "%s: header %r" % (where, rows[0])
    return rows


def run_parallel(commands, tmpdir, args=(), stdin=b""):
    """Runs `parallel --joblog FILE [args] ::: commands`; returns the
    joblog's rows (header first), sorted by Seq as jobpool lists them
    (parallel writes them as jobs end)."""
    log = os.path.join(tmpdir, "parallel-%d.joblog" % len(os.listdir(tmpdir)))
    cmd = [parallel_bin(), "--joblog", log] + list(args)
    if commands:
        cmd += [":::"] + list(commands)
    env = dict(os.environ, HOME=tmpdir, LC_ALL="C")
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, cwd=tmpdir,
                   timeout=60)
    with open(log, "rb") as f:
        rows = parse_joblog(f.read().decode("utf-8"), "parallel")
    return [rows[0]] + sorted(rows[1:], key=lambda r: int(r[0]))


def get_joblog(srv, bid):
    st, h, body = srv.get("/v1/batches/%s/joblog" % bid)
    assert st == 200, "GET joblog: %d %r" % (st, body)
    ct = h.get("content-type", "")
    assert ct.split(";")[0].strip() == TSV, "content-type %r" % ct
    return body


def node_name(srv):
    items = srv.ok("GET", "/v1/nodes")["items"]
    return [n["name"] for n in items if n.get("self")][0]


def command_job(line, **extra):
    job = {"kind": "command", "args": {"argv": line.split(" ")}}
    job.update(extra)
    return job


def check_numbers(row, where):
    """Starttime and JobRuntime are formatted as parallel formats them."""
    assert START_RE.match(row[2]), "%s: Starttime %r is not %%.3f" % (
        where, row[2])
    assert RUNTIME_RE.match(row[3]) and len(row[3]) >= 10, \
        "%s: JobRuntime %r is not %%10.3f" % (where, row[3])
    assert len(row[3]) == 10 or not row[3].startswith(" "), \
        "%s: JobRuntime %r is padded past ten" % (where, row[3])
    for col in (4, 5, 6, 7):
        int(row[col])


def test_joblog_matches_parallels():
    s = Scripts()
    tmp = tempfile.mkdtemp(prefix="jobpool-joblog-p-")
    try:
        commands = ["echo a", s.exitwith + " 3", "sleep 0.2",
                    s.killself + " 9", "printf abc", "true",
                    "ls " + s.path("missing")]
        want = run_parallel(commands, tmp, ["-j4"])
        with Server(workers=4, args=["--allow-command"],
                    env={"LC_ALL": "C"}) as srv:
            b = srv.submit([command_job(c) for c in commands])
            done = srv.wait_batch(b["id"])
            text = get_joblog(srv, b["id"])
            got = parse_joblog(text, "jobpool")
            node = node_name(srv)
            jobs = srv.jobs(b["id"])
        assert len(got) == len(want) == len(commands) + 1, \
            "lines: jobpool %d, parallel %d" % (len(got), len(want))
        t0 = parse_ts(done["created_at"])
        t1 = parse_ts(done["finished_at"])
        for g, w, job in zip(got[1:], want[1:], jobs):
            where = "Seq %s" % g[0]
            # Seq, Exitval, Signal and Command as parallel writes them
            for col in (0, 6, 7, 8):
                assert g[col] == w[col], "%s: %s is %r, parallel's %r" % (
                    where, HEADER[col], g[col], w[col])
            # Send: no stdin; Receive: parallel counts stdout only, jobpool
            # every captured byte, the same where nothing goes to stderr
            assert g[4] == w[4] == "0", "%s: Send %r / %r" % (where, g[4],
                                                             w[4])
            out = job["output"]
            assert int(g[5]) == len(out["stdout"].encode()) + \
                len(out["stderr"].encode()), "%s: Receive %r" % (where, g[5])
            if not out["stderr"]:
                assert g[5] == w[5], "%s: Receive %r, parallel's %r" % (
                    where, g[5], w[5])
            assert g[1] == node, "%s: Host %r, not the node %r" % (
                where, g[1], node)
            check_numbers(g, where)
            check_numbers(w, where + " (parallel)")
            assert t0 - 0.001 <= float(g[2]) <= t1, \
                "%s: Starttime %s outside the batch's %s..%s" % (
                    where, g[2], t0, t1)
            assert abs(float(g[2]) - parse_ts(job["started_at"])) < 5e-4, \
                "%s: Starttime %s, job started_at %s" % (
                    where, g[2], job["started_at"])
            assert float(g[3]) <= job["timings"]["run_ms"] / 1000.0 + 1e-9, \
                "%s: JobRuntime %s over run_ms %s" % (
                    where, g[3], job["timings"]["run_ms"])
        assert float(got[3][3]) >= 0.2, "sleep 0.2 ran %s s" % got[3][3]
        # the failing ls wrote to stderr only: counted, where parallel
        # counts stdout alone
        assert int(got[7][5]) > 0 and want[7][5] == "0", (got[7], want[7])
    finally:
        s.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def test_stdin_and_timeout_match_parallels():
    s = Scripts()
    tmp = tempfile.mkdtemp(prefix="jobpool-joblog-p-")
    try:
        # Send is the stdin's bytes: parallel --pipe feeds stdin
        piped = run_parallel([], tmp, ["--pipe", "cat"], stdin=b"hello\n")
        # --timeout: Exitval -1 and the signal that ended it
        timed = run_parallel(["sleep 5"], tmp, ["--timeout", "0.5"])
        with Server(workers=2, args=["--allow-command"]) as srv:
            b = srv.submit([
                {"kind": "command",
                 "args": {"argv": ["cat"], "stdin": "hello\n"}},
                command_job("sleep 5", timeout_s=0.5)])
            srv.wait_batch(b["id"])
            got = parse_joblog(get_joblog(srv, b["id"]), "jobpool")
        assert len(got) == 3, got
        for g, w in ((got[1], piped[1]), (got[2], timed[1])):
            for col in (4, 5, 6, 7, 8):
                assert g[col] == w[col], "%s: %s is %r, parallel's %r" % (
                    g[8], HEADER[col], g[col], w[col])
            check_numbers(g, g[8])
        assert got[2][0] == "2" and got[2][6] == "-1", got[2]
    finally:
        s.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_ended_attempt_and_parallel_reads_it_back():
    """Retries give one line per ended attempt, in attempt order, so a
    Seq's last line is its outcome; parallel --resume-failed reads the log
    and reruns exactly the jobs that did not succeed."""
    s = Scripts()
    tmp = tempfile.mkdtemp(prefix="jobpool-joblog-p-")
    try:
        flag = s.path("flag")
        commands = ["echo a", s.flaky + " " + flag, s.exitwith + " 3"]
        jobs = [command_job(commands[0]),
                command_job(commands[1], max_attempts=2, retry_backoff_s=0),
                command_job(commands[2], max_attempts=2, retry_backoff_s=0),
                {"kind": "echo", "args": {"value": [1, "x"]}}]
        with Server(workers=2, args=["--allow-command"]) as srv:
            b = srv.submit(jobs)
            srv.wait_batch(b["id"])
            text = get_joblog(srv, b["id"])
        rows = parse_joblog(text, "jobpool")
        seen = [(r[0], r[6], r[7], r[8]) for r in rows[1:]]
        assert seen == [
            ("1", "0", "0", commands[0]),
            ("2", "3", "0", commands[1]),
            ("2", "0", "0", commands[1]),
            ("3", "3", "0", commands[2]),
            ("3", "3", "0", commands[2]),
            ("4", "0", "0", 'echo {"value":[1,"x"]}'),
        ], seen
        # Each attempt's output is kept; these print nothing: Receive 0.
        assert rows[2][5] == "0" and rows[3][5] == "0", rows[2:4]
        # parallel reads it unchanged: it reruns only job 3 (its last line
        # failed); jobs 1, 2 (whose last line succeeded) and 4 are done
        log = os.path.join(tmp, "resume.joblog")
        with open(log, "w") as f:
            f.write(text)
        os.unlink(flag)
        r = subprocess.run(
            [parallel_bin(), "--resume-failed", "--joblog", log, ":::",
             "echo a", s.flaky + " " + flag, s.exitwith + " 3",
             "echo x"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=dict(os.environ, HOME=tmp),
            timeout=60)
        assert b"wrong" not in r.stderr, \
            "parallel could not read the joblog: %r" % r.stderr
        with open(log) as f:
            after = parse_joblog(f.read(), "resumed")
        added = [(x[0], x[8]) for x in after[len(rows):]]
        assert added == [("3", commands[2])], \
            "parallel --resume-failed reran %r (stderr %r)" % (added,
                                                                r.stderr)
        assert not os.path.exists(flag), "job 2 was run again"
    finally:
        s.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def test_unfinished_attempts_add_nothing():
    """A running job's current attempt and a job canceled before it
    started have no line; a running job canceled ends as parallel's killed
    jobs do (Exitval -1 and the signal)."""
    parallel_bin()
    with Server(workers=2, args=["--allow-command"]) as srv:
        b = srv.submit([command_job("sleep 30"), {"kind": "noop"}],
                       concurrency=1)
        srv.wait_job_state(b["job_ids"][0], "running")
        rows = parse_joblog(get_joblog(srv, b["id"]), "running batch")
        assert rows == [HEADER], rows
        srv.ok("POST", "/v1/batches/%s/cancel" % b["id"])
        srv.wait_batch(b["id"])
        rows = parse_joblog(get_joblog(srv, b["id"]), "canceled batch")
        assert [(r[0], r[6], r[7]) for r in rows[1:]] == [("1", "-1", "15")], \
            rows


def test_joblog_pages_through_a_large_batch():
    """Several store pages (the reader renders 100 jobs at a time): every
    job once, in submission order."""
    parallel_bin()
    n = 2500
    with Server(workers=4) as srv:
        b = srv.submit([{"kind": "noop"}] * n)
        srv.wait_batch(b["id"], timeout=120)
        rows = parse_joblog(get_joblog(srv, b["id"]), "large batch")
    assert [int(r[0]) for r in rows[1:]] == list(range(1, n + 1))
    assert all(r[6] == "0" and r[8] == "noop {}" for r in rows[1:])


test_joblog_pages_through_a_large_batch.timeout = 180


def head_then_get(srv, path):
    """A HEAD of path, then a GET on the same connection: the HEAD's
    answer carries no body bytes, so the next answer starts where its
    headers end (libmicrohttpd 0.9.75 sent a chunked response's last chunk
    after a HEAD, and a keep-alive client read it as its next answer)."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        data = send_until_close(sock, (
            "HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n"
            "GET /healthz HTTP/1.1\r\nHost: t\r\n"
            "Connection: close\r\n\r\n" % path).encode())
    finally:
        sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    assert rest == b"" or rest.startswith(b"HTTP/1.1 200"), \
        "bytes after the HEAD's headers: %r" % rest[:80]


def test_unknown_batch_and_bad_requests():
    parallel_bin()
    with Server(workers=1) as srv:
        for path in ("/v1/batches/b_999999999999/joblog",
                     "/v1/batches/xyz/joblog"):
            st, h, body = srv.get(path)
            assert_problem(st, h, body, 404)
        b = srv.submit([{"kind": "noop"}])
        srv.wait_batch(b["id"])
        st, h, body = srv.get("/v1/batches/%s/joblog?format=csv" % b["id"])
        assert_problem(st, h, body, 400, "?format")
        st, h, body = srv.post("/v1/batches/%s/joblog" % b["id"], {})
        assert_problem(st, h, body, 405)
        assert "GET" in h.get("allow", ""), h
        # HEAD: the GET's status and headers, no body
        st, h, body = srv.request("HEAD", "/v1/batches/%s/joblog" % b["id"])
        assert st == 200 and not body, (st, body)
        assert h.get("content-type", "").startswith(TSV), h
        head_then_get(srv, "/v1/batches/%s/joblog" % b["id"])
        # deleted: gone
        srv.ok("DELETE", "/v1/batches/" + b["id"], expect=204)
        wait_until(lambda: srv.get("/v1/batches/%s/joblog" % b["id"])[0]
                   == 404, 5, what="the deleted batch's joblog to be 404")
