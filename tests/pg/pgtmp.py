#!/usr/bin/env python3
"""pgtmp.py - a throwaway PostgreSQL server for the tests (stdlib only).

    python3 tests/pg/pgtmp.py run -- CMD ARGS...

starts a server on a free 127.0.0.1 port in a temp directory, runs CMD with
JOBPOOL_TEST_PG=postgresql://jobpool@127.0.0.1:PORT/ (no database name:
append one made with create_database()), stops the server, removes the
directory and exits with CMD's status.  `pgtmp.py check` exits 0 when the
PostgreSQL binaries are there (meson asks it at setup).

As a module:

    with PgServer() as pg:            # or pg = PgServer(); pg.start() ... pg.stop()
        url = pg.create_db()          # a fresh jp_<random> database
        pg.restart(down_seconds=2)    # an outage: same port, same data
        pg.pid                        # the postmaster

The binaries come from /usr/lib/postgresql/15/bin (JOBPOOL_PG_BIN
overrides).  initdb and postgres refuse to run as root, so as root they run
as the `postgres` user through runuser; as any other user, directly.  The
server listens on 127.0.0.1 only (its Unix socket in the temp directory),
trusts every local connection to user `jobpool`, and runs with fsync off:
for functional tests only.

Every wait is bounded.  Nothing outlives its owner: stop() ends the server,
an atexit hook stops any server still up, and a small watchdog process
(its own session, so a signal to the test's process group does not reach
it) stops the server and removes its directory if the owner dies without
doing so (kill -9, a test runner's timeout).  Processes are signalled by
PID only.
"""

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

DEFAULT_BIN = "/usr/lib/postgresql/15/bin"
USER = "jobpool"
SERVER_OPTS = ("-c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=200")
PORT_TRIES = 20
START_TIMEOUT = 30          # pg_ctl -t, seconds
STOP_TIMEOUT = 30

_LIVE = []                  # PgServer objects started and not yet stopped


def bindir():
    return os.environ.get("JOBPOOL_PG_BIN") or DEFAULT_BIN


def binaries_present(path=None):
    path = path or bindir()
    return all(os.access(os.path.join(path, b), os.X_OK)
               for b in ("initdb", "pg_ctl", "postgres", "psql"))


def _clean_env():
    """The environment without PG* variables (PGDATA, PGPORT, PGOPTIONS ...
    would change what initdb, pg_ctl and psql do)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _proc_start(pid):
    """(state, starttime) of pid from /proc, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, starttime=None):
    st = _proc_start(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return starttime is None or st[1] == starttime


def _children(pid):
    """{pid: starttime} of the live direct children of pid."""
    out = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[1]) == pid and rest[0] not in ("Z", "X", "x"):
            out[int(e)] = int(rest[19])
    return out


def _wait_gone(pids, timeout):
    """Wait until none of {pid: starttime} runs; returns the ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p: s for p, s in pids.items() if _alive(p, s)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _read_pidfile(datadir):
    """(postmaster pid, starttime) from DATA/postmaster.pid, or None.  Only
    a live process whose command line names datadir counts (a stale pid
    file's pid may belong to another process by now)."""
    try:
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            pid = int(f.readline().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if os.fsencode(datadir) not in argv:
        return None
    st = _proc_start(pid)
    return (pid, st[1]) if st else None


def _shutdown_pid(pid, starttime, timeout=STOP_TIMEOUT):
    """Fast shutdown of a postmaster by signal (SIGINT), then immediate
    (SIGQUIT), then SIGKILL of it and its children.  True once gone."""
    if not _alive(pid, starttime):
        return True
    kids = _children(pid)
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0),
                      (signal.SIGKILL, 5.0)):
        if sig == signal.SIGKILL:
            for k, s in kids.items():
                if _alive(k, s):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except OSError:
                        pass
        try:
            os.kill(pid, sig)
        except OSError:
            pass
        if not _wait_gone({pid: starttime}, wait):
            _wait_gone(kids, 5.0)
            return True
    return False


def create_database(base_url, psql=None, name=None, timeout=30):
    """CREATE DATABASE jp_<random> on the server at base_url
    (postgresql://user@host:port/); returns the new database's URL."""
    if not base_url.endswith("/"):
        base_url += "/"
    name = name or "jp_" + secrets.token_hex(6)
    run_psql(base_url + "postgres", 'CREATE DATABASE "%s"' % name,
             psql=psql, timeout=timeout)
    return base_url + name


def drop_database(url, psql=None, timeout=30):
    """DROP DATABASE ... WITH (FORCE) of the database at url (best for
    cleaning up: it ends any session still connected)."""
    base, _, name = url.rstrip("/").rpartition("/")
    run_psql(base + "/postgres",
             'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name,
             psql=psql, timeout=timeout)


def run_psql(url, sql, psql=None, timeout=30):
    """Run sql with psql over TCP; returns its stdout (unaligned, tuples
    only).  Raises RuntimeError with psql's stderr on failure."""
    psql = psql or os.path.join(bindir(), "psql")
    env = _clean_env()
    env["PGCONNECT_TIMEOUT"] = "10"
    try:
        p = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v",
                            "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError("psql %r: no answer within %ds" % (sql, timeout))
    if p.returncode != 0:
        raise RuntimeError("psql %r failed (exit %d): %s"
                           % (sql, p.returncode, p.stderr.strip()))
    return p.stdout


class PgError(RuntimeError):
    pass


class PgServer:
    """One throwaway PostgreSQL server; see the module docstring."""

    def __init__(self, bin_dir=None, port=None, extra_opts=""):
        self.bin = bin_dir or bindir()
        self.port = port            # None: pick a free one at start()
        self.extra_opts = extra_opts
        self.tmpdir = None
        self.datadir = None
        self.logfile = None
        self.pid = None
        self._start = None          # the postmaster's /proc starttime
        self._watchdog = None
        self._as = []               # runuser prefix when root

    # -- helpers

    def _run(self, argv, timeout, what):
        try:
            p = subprocess.run(self._as + argv, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               timeout=timeout, env=_clean_env(),
                               cwd=self.tmpdir)
        except subprocess.TimeoutExpired:
            raise PgError("%s did not finish within %ds" % (what, timeout))
        return p

    def log_tail(self, n=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except (OSError, TypeError):
            return "(no server log)"

    def _log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def _log_since(self, offset):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- lifecycle

    def start(self):
        """initdb in a new temp directory, then start the server on a free
        loopback port (another port is tried when the chosen one is taken
        between choosing and binding).  Returns self."""
        if self.pid is not None:
            raise PgError("already started")
        if not binaries_present(self.bin):
            raise PgError("PostgreSQL binaries not found in %s (set "
                          "JOBPOOL_PG_BIN)" % self.bin)
        base = tempfile.gettempdir()
        if os.geteuid() == 0:
            # the postgres user must reach the directory
            if not os.stat(base).st_mode & 0o001:
                base = "/tmp"
            self._as = ["runuser", "-u", "postgres", "--"]
        self.tmpdir = tempfile.mkdtemp(prefix="jobpool-pg-", dir=base)
        _LIVE.append(self)
        try:
            os.chmod(self.tmpdir, 0o700)
            if self._as:
                shutil.chown(self.tmpdir, "postgres", "postgres")
            self.datadir = os.path.join(self.tmpdir, "data")
            self.logfile = os.path.join(self.tmpdir, "pg.log")
            self._start_watchdog()
            p = self._run([os.path.join(self.bin, "initdb"), "-D",
                           self.datadir, "-U", USER, "--auth=trust",
                           "--no-sync", "--no-instructions", "-E", "UTF8",
                           "--locale=C.UTF-8"], 120, "initdb")
            if p.returncode != 0:
                raise PgError("initdb failed (exit %d): %s"
                              % (p.returncode, (p.stderr or p.stdout)[-2000:]))
            fixed = self.port is not None
            for _ in range(1 if fixed else PORT_TRIES):
                if not fixed:
                    self.port = _free_port()
                if self._pg_ctl_start():
                    return self
            raise PgError("no free port after %d tries" % PORT_TRIES)
        except BaseException:
            self.stop()
            raise

    def _pg_ctl_start(self, tries_on_busy_port=1, busy_wait=0.0):
        """pg_ctl start on self.port.  True once up; False when the port
        was taken (after the given tries); raises on other failures."""
        for attempt in range(tries_on_busy_port):
            offset = self._log_size()
            opts = "%s -p %d -k %s %s" % (SERVER_OPTS, self.port, self.tmpdir,
                                          self.extra_opts)
            p = self._run([os.path.join(self.bin, "pg_ctl"), "-D",
                           self.datadir, "-l", self.logfile, "-w", "-t",
                           str(START_TIMEOUT), "-o", opts, "start"],
                          START_TIMEOUT + 15, "pg_ctl start")
            info = _read_pidfile(self.datadir)
            if p.returncode == 0 and info is not None:
                self.pid, self._start = info
                return True
            log = self._log_since(offset)
            if info is not None:     # a postmaster that is not ready in time
                _shutdown_pid(*info, timeout=5.0)
            if "could not bind" in log or "already in use" in log:
                if attempt + 1 < tries_on_busy_port:
                    time.sleep(busy_wait)
                continue
            raise PgError("pg_ctl start on port %d failed (exit %d): %s\n%s"
                          % (self.port, p.returncode,
                             (p.stderr or p.stdout).strip()[-1000:],
                             log[-2000:]))
        return False

    def _pg_ctl_stop(self):
        """Fast shutdown; falls back to signals by PID.  Bounded."""
        if self.pid is None:
            return
        pid, start = self.pid, self._start
        if _alive(pid, start):
            kids = _children(pid)
            try:
                self._run([os.path.join(self.bin, "pg_ctl"), "-D",
                           self.datadir, "-m", "fast", "-w", "-t",
                           str(STOP_TIMEOUT), "stop"],
                          STOP_TIMEOUT + 15, "pg_ctl stop")
            except PgError:
                pass
            if not _shutdown_pid(pid, start, timeout=5.0):
                raise PgError("postmaster %d did not exit" % pid)
            left = _wait_gone(kids, 5.0)
            for k, s in left.items():
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
        self.pid = self._start = None

    def stop(self):
        """Stop the server (fast) and remove its directory.  Safe to call
        twice and after a failed start."""
        try:
            self._pg_ctl_stop()
        finally:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = self.datadir = None
            self._stop_watchdog()
            if self in _LIVE:
                _LIVE.remove(self)

    def restart(self, down_seconds=0):
        """Stop (fast), stay down down_seconds, start again on the same port
        and data directory.  If something else took the port meanwhile,
        keeps trying for up to 10 s."""
        if self.pid is None:
            raise PgError("not started")
        self._pg_ctl_stop()
        if down_seconds > 0:
            time.sleep(down_seconds)
        if not self._pg_ctl_start(tries_on_busy_port=50, busy_wait=0.2):
            raise PgError("port %d stayed taken after the restart"
                          % self.port)
        return self

    # -- URLs and databases

    def url(self, dbname=""):
        return "postgresql://%s@127.0.0.1:%d/%s" % (USER, self.port, dbname)

    def create_db(self):
        """A fresh jp_<random> database; returns its URL."""
        return create_database(self.url(), psql=os.path.join(self.bin,
                                                              "psql"))

    def psql(self, dbname, sql, timeout=30):
        return run_psql(self.url(dbname), sql,
                        psql=os.path.join(self.bin, "psql"), timeout=timeout)

    def __enter__(self):
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, et, ev, tb):
        self.stop()
        return False

    # -- watchdog

    def _start_watchdog(self):
        """A process in its own session that cleans up if we die first."""
        self._watchdog = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_watch",
             str(os.getpid()), self.tmpdir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True, cwd="/")

    def _stop_watchdog(self):
        w, self._watchdog = self._watchdog, None
        if w is None:
            return
        if w.poll() is None:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            w.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _watch(owner, tmpdir):
    """Watchdog body: while owner lives (we are its child: our parent pid
    changes when it dies), do nothing; then stop the postmaster whose
    pid file is in tmpdir/data and remove tmpdir."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while os.getppid() == owner:
        if not os.path.isdir(tmpdir):
            return 0
        time.sleep(0.2)
    info = _read_pidfile(os.path.join(tmpdir, "data"))
    if info is not None:
        _shutdown_pid(*info, timeout=10.0)
    shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


def _stop_all():
    for pg in list(_LIVE):
        try:
            pg.stop()
        except Exception as e:       # noqa: BLE001 - report, go on
            sys.stderr.write("pgtmp: stopping the server failed: %s\n" % e)


atexit.register(_stop_all)


# ---------------------------------------------------------------- CLI

class _Stop(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


def _cli_run(cmd):
    """Start a server, run cmd with JOBPOOL_TEST_PG, stop; cmd's status.
    On SIGTERM/SIGINT/SIGHUP: cmd (usually in our process group, so it
    got the signal too) has 0.5 s to exit before it gets the signal from
    us, then 10 s before SIGKILL; then the server is stopped."""
    def on_signal(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise _Stop(signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    pg = PgServer()
    child = None
    try:
        t0 = time.monotonic()
        try:
            pg.start()
        except PgError as e:
            sys.stderr.write("pgtmp: cannot start PostgreSQL: %s\n" % e)
            return 1
        sys.stderr.write("pgtmp: PostgreSQL on 127.0.0.1:%d, pid %d, up in "
                         "%.2f s\n" % (pg.port, pg.pid,
                                        time.monotonic() - t0))
        sys.stderr.flush()
        env = dict(os.environ)
        env["JOBPOOL_TEST_PG"] = pg.url()
        child = subprocess.Popen(cmd, env=env)
        rc = child.wait()
        if rc != 0:
            sys.stderr.write("pgtmp: %s exited with %d; last lines of the "
                             "PostgreSQL log:\n%s"
                             % (cmd[0], rc, pg.log_tail(30)))
        return rc if rc >= 0 else 128 - rc
    except _Stop as e:
        if child is not None:
            for sig, grace in ((None, 0.5), (e.signum, 10.0),
                               (signal.SIGKILL, 10.0)):
                if child.poll() is not None:
                    break
                if sig is not None:
                    try:
                        os.kill(child.pid, sig)
                    except OSError:
                        pass
                try:
                    child.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
        sys.stderr.write("pgtmp: stopped by signal %d\n" % e.signum)
        return 128 + e.signum
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if child is not None and child.poll() is None:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                pass
        pg.stop()


def main(argv):
    if len(argv) >= 3 and argv[0] == "_watch":
        return _watch(int(argv[1]), argv[2])
    if argv == ["check"]:
        # exit 0 when the binaries are there (meson asks this at setup)
        ok = binaries_present()
        print("%s: PostgreSQL binaries %s" % (bindir(), "found" if ok else
                                              "missing"))
        return 0 if ok else 1
    if argv and argv[0] == "run":
        rest = argv[1:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        if rest:
            return _cli_run(rest)
    sys.stderr.write("usage: pgtmp.py run -- CMD [ARGS...] | pgtmp.py check\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
