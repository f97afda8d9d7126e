"""harness.py - start, talk to and stop a jobpoold for the integration tests.

Standard library only.  Every server this module starts is recorded in ALL;
kill_all() (called by the runner's watchdog and at exit) SIGKILLs the ones
still running, and the worker processes they left behind, by PID only.
"""

import atexit
import calendar
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TERMINAL_JOB = ("succeeded", "failed", "timed_out", "canceled")
TERMINAL_BATCH = ("succeeded", "failed", "canceled")
JOB_STATES = ("queued", "running") + TERMINAL_JOB
BATCH_STATES = ("queued", "running") + TERMINAL_BATCH

BATCH_ID_RE = re.compile(r"^b_[0-9]{12}$")
JOB_ID_RE = re.compile(r"^j_[0-9]{12}$")
TS_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$")
LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
# sanitizer reports in the server's stderr fail the test even when the
# process exits 0 (UBSan only prints by default)
SANITIZER_RE = re.compile(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|"
                          r"runtime error:|WARNING: ThreadSanitizer)")

PROBLEM_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    500: "internal",
    503: "unavailable",
}

ALL = []                 # every Server started, in order
DEFER_TAILS = False      # run.py sets this and prints tails after FAIL lines
_LOCK = threading.Lock()

# PostgreSQL mode: with JOBPOOL_TEST_PG=postgresql://user@host:port/ (as
# tests/pg/pgtmp.py run sets it) every Server gets a fresh jp_<random>
# database of that server instead of a SQLite file; a Server started with
# another's tmpdir (a restart) gets that server's database.
PG_BASE = os.environ.get("JOBPOOL_TEST_PG") or None
SUITE = "integration-pg" if PG_BASE else "integration"
_PG_DBS = {}             # tmpdir -> database URL

# Tests that need the SQLite file itself, skipped in PostgreSQL mode, with
# the reason each is printed with ("SKIP name: reason").  A new test can
# say the same with the @sqlite_only("reason") marker.
SQLITE_ONLY = {
    "test_commit.test_disk_full_acks_only_what_committed_and_recovers":
        "sqlite-only: fills a tmpfs under the SQLite file, then opens it "
        "with sqlite3",
    "test_commit.test_metrics_scrape_is_o1_in_stored_rows":
        "sqlite-only: writes 1,000,000 rows into the SQLite file with "
        "sqlite3",
    "test_durability.test_db_cap_is_503_keeps_reads_and_integrity":
        "sqlite-only: --max-db-bytes caps the SQLite file's size; PRAGMA "
        "integrity_check on the file",
    "test_isolation.test_second_server_on_the_same_database_refuses_to_start":
        "sqlite-only: the single-server flock on the SQLite file (N nodes "
        "share one PostgreSQL database)",
    "test_chaos.test_kill9_chaos":
        "sqlite-only: PRAGMA integrity_check on the SQLite file between "
        "kills",
}


def sqlite_only(reason):
    """Marker: the decorated test needs the SQLite file (reason says why)
    and is skipped in PostgreSQL mode."""
    def mark(fn):
        fn.sqlite_only = "sqlite-only: " + reason
        return fn
    return mark


def skip_reason(name, fn=None):
    """Why test `module.function` is skipped in this mode, or None."""
    if not PG_BASE:
        return None
    return SQLITE_ONLY.get(name) or getattr(fn, "sqlite_only", None)


def _pgtmp():
    here = os.path.dirname(os.path.abspath(__file__))
    pgdir = os.path.join(here, "..", "pg")
    if pgdir not in sys.path:
        sys.path.insert(0, pgdir)
    import pgtmp
    return pgtmp


def pg_database(tmpdir):
    """The PostgreSQL database of tmpdir's servers, created on first use."""
    with _LOCK:
        url = _PG_DBS.get(tmpdir)
        if url is None:
            url = _pgtmp().create_database(PG_BASE)
            _PG_DBS[tmpdir] = url
        return url


def _pg_drop(tmpdir):
    url = _PG_DBS.pop(tmpdir, None)
    if url is not None:
        try:
            _pgtmp().drop_database(url)
        except Exception as e:   # noqa: BLE001 - cleanup only
            sys.stdout.write("NOTE could not drop %s: %s\n" % (url, e))


def server_binary():
    path = os.environ.get("JOBPOOLD")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "build", "server", "jobpoold")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise RuntimeError("jobpoold not found or not executable: %s "
                           "(set JOBPOOLD)" % path)
    return path


# ---------------------------------------------------------------- processes

def proc_status_kb(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def proc_stat(pid):
    """(state, ppid, starttime) of pid from /proc, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[1]), int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid, starttime=None):
    """True if pid runs (a zombie counts as gone).  With starttime, only the
    very process that had that start time counts (guards against reuse)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    if starttime is not None and st[2] != starttime:
        return False
    return True


def pid_zombie_of(pid, parent):
    """True if pid is an unreaped zombie child of parent."""
    st = proc_stat(pid)
    return st is not None and st[0] == "Z" and st[1] == parent


def children_of(pid):
    """{child pid: starttime} of every live descendant of pid."""
    out = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    table = {}
    for e in entries:
        if e.isdigit():
            st = proc_stat(int(e))
            if st is not None:
                table[int(e)] = st
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, st in table.items():
            if st[1] == parent and p not in out and st[0] not in ("Z", "X"):
                out[p] = st[2]
                frontier.append(p)
    return out


def wait_pids_gone(pids, timeout):
    """Wait until none of {pid: starttime|None} runs; returns the ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p: s for p, s in pids.items() if pid_alive(p, s)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def kill_pids(pids):
    """SIGKILL each {pid: starttime} that is still that very process."""
    for p, s in pids.items():
        if pid_alive(p, s):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


# ---------------------------------------------------------------- time

def parse_ts(s):
    """RFC 3339 ms UTC timestamp -> float seconds since the epoch."""
    assert isinstance(s, str), "timestamp is not a string: %r" % (s,)
    m = TS_RE.match(s)
    assert m, "timestamp not RFC 3339 UTC with milliseconds: %r" % s
    y, mo, d, h, mi, se, ms = (int(g) for g in m.groups())
    return calendar.timegm((y, mo, d, h, mi, se, 0, 0, 0)) + ms / 1000.0


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) \
        and math.isfinite(x)


def send_until_close(sock, request):
    """Send raw request bytes on sock and read every byte the server sends
    until it closes the connection (ask with Connection: close)."""
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------- problems

def assert_problem(status, headers, body, expected_status, path_substring=None,
                   code=None):
    """Check an RFC 9457 problem response; returns the body."""
    ctx = "status %s body %r" % (status, body)
    assert status == expected_status, \
        "expected status %d, got %s" % (expected_status, ctx)
    ct = headers.get("content-type", "")
    assert ct.split(";")[0].strip().lower() == "application/problem+json", \
        "content-type %r is not application/problem+json (%s)" % (ct, ctx)
    assert isinstance(body, dict), \
        "problem body is not an object: %r" % (body,)
    for f in ("type", "title", "detail"):
        assert isinstance(body.get(f), str), \
            "problem.%s missing (%s)" % (f, ctx)
    assert body.get("status") == expected_status, \
        "problem.status %r != %d" % (body.get("status"), expected_status)
    assert body["type"].startswith("urn:jobpool:problem:"), \
        "problem.type %r" % body["type"]
    if code is None:
        code = PROBLEM_CODES.get(expected_status)
    if code is not None:
        codes = code if isinstance(code, (tuple, list)) else (code,)
        assert body["type"] in ["urn:jobpool:problem:" + c for c in codes], \
            "problem.type %r, expected %s" % (body["type"], " or ".join(codes))
    errs = body.get("errors")
    assert isinstance(errs, list), "problem.errors missing (%s)" % ctx
    for e in errs:
        assert isinstance(e, dict) and isinstance(e.get("path"), str) \
            and isinstance(e.get("message"), str), \
            "malformed errors[] entry %r" % (e,)
    if path_substring is not None:
        assert any(path_substring in e["path"] for e in errs), \
            "no errors[].path contains %r: %r" % (path_substring, errs)
    return body


# ---------------------------------------------------------------- server

class ServerError(AssertionError):
    pass


class Server:
    """One jobpoold.  Server(workers=N, args=[...]) starts it at once.

    workers=None leaves --workers out (the default pool size).  Pass
    tmpdir=<other server>.tmpdir to reuse another server's database
    (restart recovery); the directory then belongs to the first server.
    pass_fds: descriptors the server inherits, as from a careless shell."""

    def __init__(self, workers=2, args=(), tmpdir=None, env=None,
                 start_timeout=10.0, pass_fds=()):
        self.workers = workers
        self.args = list(args)
        self.own_tmpdir = tmpdir is None
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="jobpool-it-")
        self.db = os.path.join(self.tmpdir, "jobpool.db")
        if PG_BASE:
            self.db = pg_database(self.tmpdir)
        n = sum(1 for s in ALL if s.tmpdir == self.tmpdir)
        self.stderr_path = os.path.join(self.tmpdir, "stderr.%d.log" % n)
        self.proc = None
        self.pid = None
        self.url = None
        self.port = None
        self.known_children = {}   # pid -> starttime, learned along the way
        self._learned_at = 0.0
        self.tail_printed = False
        self.failed = False
        self.exit_code = None
        binary = server_binary()
        cmd = [binary, "--listen", "127.0.0.1:0", "--db", self.db]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        cmd += self.args
        self.cmd = cmd
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("JOBPOOL_")}
        if env:
            e.update(env)
        with _LOCK:
            self._errf = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=self._errf,
                                         stderr=self._errf, env=e,
                                         cwd=self.tmpdir,
                                         pass_fds=tuple(pass_fds))
            self.pid = self.proc.pid
            ALL.append(self)
        try:
            self._wait_listening(start_timeout)
        except BaseException:
            self.failed = True
            self._auto_tail()
            self._kill_hard()
            raise

    # -- lifecycle

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.stderr_path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                text = ""
            m = LISTEN_RE.search(text)
            if m:
                self.port = int(m.group(1))
                self.url = "http://127.0.0.1:%d" % self.port
                return
            rc = self.proc.poll()
            if rc is not None:
                raise ServerError("jobpoold exited with %s before listening "
                                  "(%s)" % (rc, " ".join(self.cmd)))
            if time.monotonic() >= deadline:
                raise ServerError("jobpoold printed no 'listening on' line "
                                  "within %.0fs" % timeout)
            time.sleep(0.01)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _learn_children(self, throttle=0.0):
        now = time.monotonic()
        if self.running() and now - self._learned_at >= throttle:
            self._learned_at = now
            self.known_children.update(children_of(self.pid))

    def stop(self, expect_rc=0, timeout=15.0, check_children=True):
        """SIGTERM, wait up to timeout, then SIGKILL.  Asserts the exit code
        and that no process the server started outlives it.  Returns the
        seconds the server took to exit."""
        if not self.running():
            rc = self.proc.poll()
            self._cleanup()
            raise ServerError("jobpoold was not running at stop "
                              "(exit code %s)" % rc)
        self._learn_children()
        kids = dict(self.known_children)
        t0 = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.failed = True
            self._kill_hard()
            self._auto_tail()
            raise ServerError("jobpoold did not exit within %.0fs of SIGTERM"
                              % timeout)
        took = time.monotonic() - t0
        self.exit_code = rc
        left = wait_pids_gone(kids, 2.0) if check_children else {}
        if left:
            kill_pids(left)
        if rc != expect_rc:
            self.failed = True
            self._auto_tail()
            self._cleanup()
            raise ServerError("jobpoold exited with %s after SIGTERM, "
                              "expected %s" % (rc, expect_rc))
        if left:
            self.failed = True
            self._auto_tail()
            self._cleanup()
            raise ServerError("processes started by jobpoold still ran 2 s "
                              "after it exited: %s" % sorted(left))
        self._cleanup()
        self.check_stderr()
        return took

    def check_stderr(self):
        """Fail on sanitizer reports in the server's stderr."""
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return
        m = SANITIZER_RE.search(text)
        if m:
            self.failed = True
            self._auto_tail()
            line = text[text.rfind("\n", 0, m.start()) + 1:].split("\n")[0]
            raise ServerError("sanitizer report in jobpoold stderr: %s"
                              % line.strip())

    def kill9(self):
        """SIGKILL the server only (not its workers); returns the pids of
        the workers it had, {pid: starttime}."""
        self._learn_children()
        kids = dict(self.known_children)
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.exit_code = self.proc.returncode
        self._errf.close()
        return kids

    def _kill_hard(self):
        self._learn_children()
        if self.running():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        kill_pids(self.known_children)
        try:
            self._errf.close()
        except Exception:
            pass

    def _cleanup(self):
        try:
            self._errf.close()
        except Exception:
            pass

    def _remove_tmpdir(self):
        if self.own_tmpdir and not self.failed and \
                not any(s.failed for s in ALL if s.tmpdir == self.tmpdir):
            others = [s for s in ALL if s.tmpdir == self.tmpdir
                      and s is not self and s.running()]
            if not others:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                if PG_BASE:
                    _pg_drop(self.tmpdir)

    def abort(self):
        """Cleanup after a failed test: SIGTERM briefly, then SIGKILL the
        server and every process it started."""
        self.failed = True
        self._learn_children()
        if self.running():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill_hard()

    def stderr_tail(self, n=40):
        try:
            with open(self.stderr_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no stderr file)"
        return "\n".join(lines[-n:])

    def _auto_tail(self):
        if not DEFER_TAILS:
            self.print_tail()

    def print_tail(self, n=40):
        if self.tail_printed:
            return
        self.tail_printed = True
        sys.stdout.write("---- jobpoold pid %s stderr (last %d lines, %s) "
                         "----\n" % (self.pid, n, self.stderr_path))
        sys.stdout.write(self.stderr_tail(n) + "\n---- end ----\n")
        sys.stdout.flush()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            self._auto_tail()
            self.abort()
        elif self.running():
            self.stop()
        else:
            self._cleanup()
            self.check_stderr()
        self._cleanup()
        self._remove_tmpdir()
        return False

    # -- HTTP

    def request(self, method, path, body=None, headers=None, raw=None,
                timeout=30.0):
        """-> (status, {lower-case header: value}, json | text | None)."""
        hdrs = {}
        data = None
        if raw is not None:
            data = raw.encode() if isinstance(raw, str) else raw
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        if self.port is None:
            raise ServerError("server is not listening")
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
            rh = {}
            for k, v in resp.getheaders():
                k = k.lower()
                rh[k] = v if k not in rh else rh[k] + ", " + v
        except (OSError, http.client.HTTPException) as e:
            alive = self.running()
            raise ServerError("%s %s failed: %r (server %s)" % (
                method, path, e,
                "still running" if alive else
                "exited with %s" % self.proc.poll()))
        finally:
            conn.close()
        self._learn_children(throttle=0.1)
        ct = rh.get("content-type", "").lower()
        if not payload:
            parsed = None
        elif "json" in ct:
            try:
                parsed = json.loads(payload.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise AssertionError("%s %s: %s body is not JSON (%s): %r" % (
                    method, path, ct, e, payload[:300]))
        else:
            parsed = payload.decode("utf-8", "replace")
        return status, rh, parsed

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # -- higher level

    def ok(self, method, path, body=None, expect=200, **kw):
        """Request that must answer `expect`; returns the body."""
        st, h, b = self.request(method, path, body=body, **kw)
        assert st == expect, "%s %s: expected %d, got %d: %r" % (
            method, path, expect, st, b)
        return b

    def submit(self, jobs, **fields):
        """POST /v1/batches; asserts 201 and returns the batch."""
        body = dict(fields)
        body["jobs"] = jobs
        st, h, b = self.post("/v1/batches", body)
        assert st == 201, \
            "POST /v1/batches: expected 201, got %d: %r" % (st, b)
        assert isinstance(b, dict) and BATCH_ID_RE.match(b.get("id", "")), \
            "bad batch id in %r" % (b,)
        assert h.get("location") == "/v1/batches/" + b["id"], \
            "Location %r for batch %s" % (h.get("location"), b["id"])
        ids = b.get("job_ids")
        assert isinstance(ids, list) and len(ids) == len(jobs), \
            "job_ids %r for %d jobs" % (ids if not isinstance(ids, list)
                                        else len(ids), len(jobs))
        return b

    def batch(self, bid):
        return self.ok("GET", "/v1/batches/" + bid)

    def job(self, jid):
        return self.ok("GET", "/v1/jobs/" + jid)

    def pool(self):
        return self.ok("GET", "/v1/pool")

    def jobs(self, bid, limit=1000, state=None):
        """All jobs of a batch, following next_cursor."""
        out = []
        after = None
        for _ in range(100000):
            q = "limit=%d" % limit
            if state:
                q += "&state=" + state
            if after is not None:
                q += "&after=" + after
            b = self.ok("GET", "/v1/batches/%s/jobs?%s" % (bid, q))
            out.extend(b["items"])
            after = b["next_cursor"]
            if after is None:
                return out
        raise AssertionError("job pagination never ended")

    def _wait(self, path, terminal, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            rem = deadline - time.monotonic()
            if rem <= 0:
                raise AssertionError("%s not terminal within %.1fs; last: %s"
                                     % (path, timeout, json.dumps(last)[:600]))
            w = min(rem, 20.0)
            t0 = time.monotonic()
            st, h, b = self.get("%s?wait=%.3f" % (path, w), timeout=w + 15)
            assert st == 200, "GET %s?wait: %d %r" % (path, st, b)
            last = b
            if b.get("state") in terminal:
                return b
            if time.monotonic() - t0 < 0.05:
                time.sleep(0.02)   # long-poll returned early: do not spin

    def wait_batch(self, bid, timeout=30.0):
        return self._wait("/v1/batches/" + bid, TERMINAL_BATCH, timeout)

    def wait_job(self, jid, timeout=30.0):
        return self._wait("/v1/jobs/" + jid, TERMINAL_JOB, timeout)

    def wait_job_state(self, jid, states, timeout=10.0):
        """Poll a job until its state is in states (e.g. running)."""
        if isinstance(states, str):
            states = (states,)

        def check():
            j = self.job(jid)
            return j if j["state"] in states else None
        return wait_until(check, timeout, 0.01,
                          "job %s to be %s" % (jid, "/".join(states)))

    def wait_pool_ready(self, size, timeout=10.0):
        """Wait until the pool has `size` live workers, none starting or
        stopping, none busy; returns the pool."""
        def check():
            p = self.pool()
            ws = p.get("workers", [])
            if p.get("size") != size or len(ws) != size:
                return None
            for w in ws:
                if w.get("state") != "idle" or not pid_alive(w.get("pid")):
                    return None
            return p
        return wait_until(check, timeout, 0.02,
                          "a pool of %d idle live workers (last: %s)"
                          % (size, "see GET /v1/pool"))

    def assert_alive(self):
        """The server process still runs and answers /healthz."""
        assert self.running(), "jobpoold exited with %s" % self.proc.poll()
        st, h, b = self.get("/healthz")
        assert st == 200 and isinstance(b, dict) and b.get("status") == "ok", \
            "/healthz: %d %r" % (st, b)


def kill_all():
    """SIGKILL every server still running and its processes (by PID)."""
    for s in list(ALL):
        try:
            if s.running():
                s.failed = True
                s._kill_hard()
        except Exception:
            pass


atexit.register(kill_all)


class SSE:
    """A minimal Server-Sent Events client over http.client."""

    def __init__(self, srv, query="", last_id=None, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port,
                                               timeout=timeout)
        h = {"Accept": "text/event-stream"}
        if last_id:
            h["Last-Event-ID"] = str(last_id)
        self.conn.request("GET", "/v1/events" + query, headers=h)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("content-type") == "text/event-stream"

    def next(self):
        ev = {}
        while True:
            line = self.resp.fp.readline().decode()
            if line == "":
                raise EOFError
            line = line.rstrip("\n")
            if line == "":
                if ev:
                    return ev
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            ev[k] = v

    def close(self):
        self.conn.close()
