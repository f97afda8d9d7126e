#!/usr/bin/env python3
"""test_cluster.py - three jobpoold nodes on one PostgreSQL (SCALEOUT.md §5).

    JOBPOOLD=build/server/jobpoold python3 tests/cluster/test_cluster.py \
        [-k SUBSTR]

Standard library only.  Each test gets a fresh database on one throwaway
PostgreSQL (tests/pg/pgtmp.py, started here; or the one $JOBPOOL_TEST_PG names,
as `pgtmp.py run -- CMD` exports it) and three nodes started as

    jobpoold --listen 127.0.0.1:0 --db <url> --workers 2 --node-name nX
             --node-lease 4s --allow-command

Jobs are `command` jobs running sidelog_job.py, which appends `S`/`T`/`E`
lines to a log file (O_APPEND): every attempt's start, heartbeats and normal
end, with its pid and the pid chain that names its node.  The log is checked
against the jobs' records: each attempt recorded once or reported lost, no two
attempts of a job overlapping, at most `concurrency` attempts of a batch at
once.

Tests (SCALEOUT §5): C1 spread, C2 limit, C3 kill -9 (CLUSTER_C3_ROUNDS
rounds, default 3), C4 freeze, C6 cross-node cancel, C8 idempotency race,
GET /v1/nodes, a long-poll on one node for a batch run by the others, and
halt policies across nodes.
Every wait is bounded; every process started here is killed by PID at the
end, also on failure.  Ends with `cluster: N passed, M failed` and a non-zero
exit on failure.  JOBPOOL_SKIP_CLUSTER=1 skips the suite (exit 77);
a jobpoold without PostgreSQL support is a failure, not a skip.
"""

import atexit
import http.client
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
IT_DIR = os.path.normpath(os.path.join(HERE, "..", "integration"))
PG_DIR = os.path.normpath(os.path.join(HERE, "..", "pg"))
sys.path.insert(0, IT_DIR)

import harness  # noqa: E402

JOB_SCRIPT = os.path.join(HERE, "sidelog_job.py")
PY = sys.executable or "/usr/bin/python3"

# sh -c SH_JOB LOG TAG SECONDS: sidelog_job.py's S and E lines; the pid
# chain is the worker ($PPID) and its parent, read with the builtin `read`.
SH_JOB = ('read -r _ _ _ g _ < /proc/$PPID/stat; j=${JOBPOOL_JOB##*/}; '
          'echo "S ${j:--} $$ $(date +%s%N) $1 $PPID,$g" >> "$0"; '
          'sleep "$2"; '
          'echo "E ${j:--} $$ $(date +%s%N) $1 $PPID,$g" >> "$0"')

NAMES = ("n1", "n2", "n3")
LEASE = "4s"
RESCUE_LIMIT_S = 5.0    # a lost node's running jobs leave `running` by then
POLL_SLACK_S = 0.25     # what our 50 ms polling over HTTP may add
CANCEL_LIMIT_S = 2.5    # "a couple of seconds": grace 2 s, SIGTERM suffices
LOST_RE = re.compile(r"lost|interrupt", re.I)
C3_ROUNDS = int(os.environ.get("CLUSTER_C3_ROUNDS", "10"))
NS = 1000000000


def note(msg):
    sys.stdout.write("NOTE %s\n" % msg)
    sys.stdout.flush()


# ------------------------------------------------------------- PostgreSQL

class Pg:
    """One PostgreSQL for the whole run: the one $JOBPOOL_TEST_PG names
    (postgresql://jobpool@127.0.0.1:PORT/, as `pgtmp.py run -- CMD` exports
    it), or a pgtmp.PgServer started on first use and stopped by stop()."""

    def __init__(self):
        self.base = os.environ.get("JOBPOOL_TEST_PG") or None
        self.mod = None
        self.server = None
        self.lock = threading.Lock()

    def _load(self):
        if self.mod is None:
            path = os.path.join(PG_DIR, "pgtmp.py")
            if not os.path.exists(path):
                raise RuntimeError("no PostgreSQL: %s is missing" % path)
            spec = importlib.util.spec_from_file_location("pgtmp", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["pgtmp"] = mod
            spec.loader.exec_module(mod)
            self.mod = mod
        return self.mod

    def start(self):
        with self.lock:
            mod = self._load()
            if self.base or self.server is not None:
                return
            srv = mod.PgServer()
            self.server = srv
            srv.start()

    def new_db(self):
        self.start()
        if self.server is not None:
            return self.server.create_db()
        return self.mod.create_database(self.base)

    def drop(self, url):
        """Drop a database that is no longer needed (best effort)."""
        try:
            self._load().drop_database(url)
        except Exception as e:  # noqa: B902 - cleanup only
            note("could not drop %s: %s" % (url, e))

    def stop(self):
        with self.lock:
            srv, self.server = self.server, None
        if srv is not None:
            try:
                srv.stop()
            except Exception as e:  # noqa: B902 - report, go on
                note("stopping PostgreSQL: %r" % (e,))


PG = Pg()
atexit.register(PG.stop)


# ------------------------------------------------------------- light HTTP

def call(node, method, path, body=None, headers=None, timeout=10.0):
    """-> (status, {lower header: value}, parsed body).  No /proc scan, for
    tight polling loops (harness.Server.request learns children each call)."""
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        rh = {k.lower(): v for k, v in resp.getheaders()}
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        raise AssertionError("%s %s on %s failed: %r" % (method, path,
                                                         node.name, e))
    finally:
        conn.close()
    if payload and "json" in rh.get("content-type", ""):
        return status, rh, json.loads(payload.decode())
    return status, rh, payload.decode("utf-8", "replace") if payload else None


def get_ok(node, path, timeout=10.0):
    st, h, b = call(node, "GET", path, timeout=timeout)
    assert st == 200, "GET %s on %s: %d %r" % (path, node.name, st, b)
    return b


def ts_ns(s):
    return None if s is None else int(round(harness.parse_ts(s) * 1000)) \
        * 1000000


# ------------------------------------------------------------- nodes

class Node(harness.Server):
    """One jobpoold of a cluster: harness.Server's process handling and HTTP
    helpers, started with a PostgreSQL URL and a node name instead of a
    database file of its own."""

    def __init__(self, cluster, name, workers=2, lease=LEASE, args=(),
                 start_timeout=30.0):
        self.name = name
        self.cluster = cluster
        self.workers = workers
        self.args = list(args)
        self.own_tmpdir = False
        self.tmpdir = cluster.tmpdir
        self.db = cluster.db_url
        k = sum(1 for s in harness.ALL if s.tmpdir == self.tmpdir
                and getattr(s, "name", None) == name)
        self.stderr_path = os.path.join(self.tmpdir,
                                        "stderr.%s.%d.log" % (name, k))
        self.proc = None
        self.pid = None
        self.url = None
        self.port = None
        self.known_children = {}
        self._learned_at = 0.0
        self.tail_printed = False
        self.failed = False
        self.exit_code = None
        self.cmd = [harness.server_binary(), "--listen", "127.0.0.1:0",
                    "--db", self.db, "--workers", str(workers),
                    "--node-name", name, "--node-lease", lease,
                    "--allow-command"] + self.args
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("JOBPOOL_")}
        with harness._LOCK:
            self._errf = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=self._errf, stderr=self._errf,
                                         env=env, cwd=self.tmpdir)
            self.pid = self.proc.pid
            harness.ALL.append(self)
        try:
            self._wait_listening(start_timeout)
        except BaseException:
            self.failed = True
            self._auto_tail()
            self._kill_hard()
            raise

    def print_tail(self, n=40):
        if not self.tail_printed:
            sys.stdout.write("(node %s)\n" % self.name)
        super().print_tail(n)

    def freeze(self):
        os.kill(self.pid, signal.SIGSTOP)
        harness.wait_until(lambda: (harness.proc_stat(self.pid) or "T")[0]
                           in ("T", "t"), 5, 0.005, "%s stopped" % self.name)

    def thaw(self):
        if self.running():
            os.kill(self.pid, signal.SIGCONT)

    def nodes(self):
        return get_ok(self, "/v1/nodes")["items"]


class Cluster:
    """A fresh database and three nodes; a context manager that ends every
    process it started by PID (a clean SIGTERM stop that must exit 0 when the
    test passed, SIGKILL otherwise)."""

    def __init__(self, n=3, workers=2, args=(), pg=None):
        self.pg = pg or PG
        self.db_url = self.pg.new_db()
        self.tmpdir = tempfile.mkdtemp(prefix="jobpool-cluster-")
        self.log = os.path.join(self.tmpdir, "side.log")
        open(self.log, "wb").close()
        self.workers = workers
        self.args = list(args)
        self.nodes = {}          # name -> current incarnation
        self.every = []          # every incarnation, in start order
        try:
            for i in range(1, n + 1):
                self.start_node("n%d" % i)
        except BaseException:
            self.close(ok=False)
            raise

    def start_node(self, name):
        node = Node(self, name, workers=self.workers, args=self.args)
        self.nodes[name] = node
        self.every.append(node)
        return node

    def __getitem__(self, name):
        return self.nodes[name]

    def live(self):
        return [n for n in self.nodes.values() if n.running()]

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close(ok=et is None)
        return False

    def close(self, ok):
        for n in self.every:
            try:
                n.thaw()
            except OSError:
                pass
        err = None
        for n in self.every:
            if ok and n.running():
                try:
                    n.stop(timeout=40)
                except AssertionError as e:
                    err = err or e
            else:
                if not ok:
                    n.failed = True
                n._kill_hard()
        for n in self.every:
            harness.kill_pids(n.known_children)
        if ok and err is None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.pg.drop(self.db_url)
        else:
            note("cluster files kept in %s (db %s)" % (self.tmpdir,
                                                       self.db_url))
        if err is not None:
            raise err

    # -- which node ran a process

    def node_of_chain(self, chain):
        pids = {n.pid: n.name for n in self.every}
        for p in chain:
            if p in pids:
                return pids[p]
        return None

    # -- jobs

    def job(self, tag, seconds, beat=0.0, **fields):
        j = {"kind": "command", "args": {"argv": [
            PY, "-S", "-I", JOB_SCRIPT, self.log, tag, "%.3f" % seconds,
            "%.3f" % beat]}}
        j.update(fields)
        return j

    def sh_job(self, tag, seconds, **fields):
        """A lighter job (sh, date, sleep: a few ms to start, where python
        takes 20-60 ms) writing the same S and E lines, without T lines.
        Only for tests that kill no node: the `sleep` child has no
        PDEATHSIG and would outlive a SIGKILLed node by `seconds`."""
        j = {"kind": "command", "args": {"argv": [
            "sh", "-c", SH_JOB, self.log, tag, "%.3f" % seconds]}}
        j.update(fields)
        return j

    def read_log(self):
        return SideLog(self, self.log)


class Attempt:
    __slots__ = ("tag", "job", "pid", "chain", "node", "s_ns", "last_ns",
                 "e_ns", "n_s", "n_e")

    def __repr__(self):
        return "<attempt %s pid %d on %s S=%s E=%s last=%s>" % (
            self.tag, self.pid, self.node, self.s_ns, self.e_ns, self.last_ns)


class SideLog:
    """The side-effect log: {tag: [Attempt by start]} plus anomalies."""

    def __init__(self, cluster, path):
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        byk = {}
        self.problems = []
        for ln in text.splitlines():
            parts = ln.split()
            if len(parts) != 6 or parts[0] not in ("S", "T", "E"):
                self.problems.append("malformed log line %r" % ln)
                continue
            kind, job, pid, ns, tag, chain = parts
            pid, ns = int(pid), int(ns)
            a = byk.get((tag, pid))
            if a is None:
                a = Attempt()
                a.tag, a.job, a.pid = tag, job, pid
                a.chain = [int(x) for x in chain.split(",") if x.isdigit()]
                a.node = cluster.node_of_chain(a.chain)
                a.s_ns = a.e_ns = None
                a.last_ns = ns
                a.n_s = a.n_e = 0
                byk[(tag, pid)] = a
            if kind == "S":
                a.n_s += 1
                a.s_ns = ns if a.s_ns is None else min(a.s_ns, ns)
            elif kind == "E":
                a.n_e += 1
                a.e_ns = ns
            a.last_ns = max(a.last_ns, ns)
        self.by_tag = {}
        for a in byk.values():
            if a.n_s != 1:
                self.problems.append("%r has %d S lines" % (a, a.n_s))
                if a.s_ns is None:
                    a.s_ns = a.last_ns
            if a.n_e > 1:
                self.problems.append("%r has %d E lines" % (a, a.n_e))
            if a.node is None:
                self.problems.append("%r: no node among its ancestors %s"
                                     % (a, a.chain))
            self.by_tag.setdefault(a.tag, []).append(a)
        for lst in self.by_tag.values():
            lst.sort(key=lambda a: a.s_ns)

    def attempts(self, tag):
        return self.by_tag.get(tag, [])

    def all(self, prefix=""):
        return [a for t, lst in self.by_tag.items() if t.startswith(prefix)
                for a in lst]

    def running_on(self, node_name, prefix=""):
        return [a for a in self.all(prefix)
                if a.node == node_name and a.e_ns is None]


def max_overlap(attempts):
    """Largest number of [S, E] intervals open at one instant (an end at the
    same ns as a start closes first)."""
    ev = []
    for a in attempts:
        end = a.e_ns if a.e_ns is not None else a.last_ns
        ev.append((a.s_ns, 1))
        ev.append((end, -1))
    ev.sort(key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def tally(jobs):
    out = {}
    for j in jobs:
        out[j["state"]] = out.get(j["state"], 0) + 1
    return out


def check_counts(batch, jobs, where):
    """A batch's counts agree with its jobs' states."""
    t = tally(jobs)
    c = batch.get("counts") or {}
    for state in harness.JOB_STATES:
        assert c.get(state, 0) == t.get(state, 0), \
            "%s: counts %r but the jobs are %r" % (where, c, t)
    assert sum(c.get(s, 0) for s in harness.JOB_STATES) == len(jobs), \
        "%s: counts %r for %d jobs" % (where, c, len(jobs))


def first_diff(a, b, path=""):
    if type(a) is not type(b):
        return "%s: %r vs %r" % (path or "/", a, b)
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return "%s/%s present on one side only" % (path, k)
            d = first_diff(a[k], b[k], path + "/" + k)
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return "%s: %d vs %d items" % (path or "/", len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, "%s/%d" % (path, i))
            if d:
                return d
        return None
    return None if a == b else "%s: %r vs %r" % (path or "/", a, b)


def assert_same_everywhere(nodes, path):
    """GET path answers the same on every node (terminal data only)."""
    ref = get_ok(nodes[0], path)
    for n in nodes[1:]:
        b = get_ok(n, path)
        d = first_diff(ref, b)
        assert d is None, "GET %s differs between %s and %s: %s" % (
            path, nodes[0].name, n.name, d)
    return ref


def all_jobs(node, bid):
    return node.jobs(bid)


def poll_until(node, path, pred, timeout, interval=0.05, what=None):
    """GET path on node every interval until pred(body); returns the body.
    Short GETs, not ?wait= long-polls: how fast a long-poll on one node
    hears of another node's change is test_longpoll_across_nodes' business,
    not every test's."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st, h, b = call(node, "GET", path, timeout=10)
        if st == 200:
            last = b
            if pred(b):
                return b
        if time.monotonic() >= deadline:
            raise AssertionError("%s on %s: %s not reached within %.1f s; "
                                 "last %s" % (path, node.name,
                                              what or "condition", timeout,
                                              json.dumps(last)[:400]))
        time.sleep(interval)


def wait_batch(node, bid, timeout=60.0):
    return poll_until(node, "/v1/batches/" + bid,
                      lambda b: b["state"] in harness.TERMINAL_BATCH,
                      timeout, 0.1, "a terminal state")


def wait_job(node, jid, timeout=60.0, interval=0.05):
    return poll_until(node, "/v1/jobs/" + jid,
                      lambda b: b["state"] in harness.TERMINAL_JOB,
                      timeout, interval, "a terminal state")


def wait_log(cluster, pred, timeout, what):
    """Poll the side log until pred(SideLog) is truthy; returns it."""
    box = {}

    def check():
        box["log"] = cluster.read_log()
        return pred(box["log"])
    harness.wait_until(check, timeout, 0.02, what)
    return box["log"]


# ------------------------------------------------------------- rescue checks

def job_node(job):
    return (job.get("worker") or {}).get("node")


def is_lost(h):
    return h.get("state") != "succeeded" and LOST_RE.search(h.get("error")
                                                           or "") is not None


def measure_rescue(observer, lost, victim, t_event, limit):
    """lost: {job id: attempt number running on victim}.  Polls the jobs on
    observer until each is no longer that attempt running on victim; returns
    ({job id: seconds after t_event}, [job ids never rescued])."""
    pending = dict(lost)
    took = {}
    deadline = time.monotonic() + limit
    while pending and time.monotonic() < deadline:
        for jid in list(pending):
            try:
                st, h, j = call(observer, "GET", "/v1/jobs/" + jid,
                                timeout=5)
            except AssertionError:
                continue
            if st != 200:
                continue
            # a running job whose record names no node is not rescued
            if j["state"] != "running" or j["attempts"] > pending[jid] \
                    or job_node(j) not in (None, victim):
                took[jid] = time.time() - t_event
                del pending[jid]
        time.sleep(0.05)
    return took, sorted(pending)


def check_attempts(cl, jobs, log, tags, victim, t_event_ns, victim_end_ns,
                   problems):
    """The side log against the jobs' records, after node `victim` was
    killed or frozen at t_event_ns.  Each history entry is paired with the log
    attempt that ran it; checks: every attempt that started is recorded
    exactly once (succeeded, or lost on the victim), an attempt without an
    E line is reported lost, no two attempts of a job overlap, nothing of the
    victim ran after victim_end_ns, a rescued attempt started after the
    event, and the final state follows from the last attempt."""
    for jid, job in jobs.items():
        tag = tags[jid]
        where = "%s (%s)" % (jid, tag)
        logs = log.attempts(tag)
        hist = sorted(job.get("history") or [], key=lambda h: h["attempt"])
        if [h["attempt"] for h in hist] != list(range(1, len(hist) + 1)):
            problems.append("%s: history attempts %r" % (
                where, [h["attempt"] for h in hist]))
            continue
        if job["state"] not in harness.TERMINAL_JOB:
            problems.append("%s: not terminal: %s" % (where, job["state"]))
            continue
        if len(hist) != job["attempts"]:
            problems.append("%s: %d history entries for %d attempts" % (
                where, len(hist), job["attempts"]))
        if len(logs) > job["attempts"]:
            problems.append("%s: %d attempts started (log) but attempts=%d"
                            % (where, len(logs), job["attempts"]))
        # pair history entries with log attempts, in order
        pairs = []
        i = 0
        for h in hist:
            a = logs[i] if i < len(logs) else None
            hs, hf = ts_ns(h.get("started_at")), ts_ns(h.get("finished_at"))
            hn = (h.get("worker") or {}).get("node")
            if hn is None:
                problems.append("%s: history entry %d has no worker.node: %r"
                                % (where, h["attempt"], h))
            if a is not None and a.node == hn \
                    and (hs is None or a.s_ns >= hs - 5000000) \
                    and (hf is None or a.s_ns <= hf + 5000000):
                pairs.append((h, a))
                i += 1
            else:
                pairs.append((h, None))
        if i < len(logs):
            problems.append("%s: attempts ran without a history entry of "
                            "their own: %r (history %s)" % (
                                where, logs[i:], json.dumps(hist)[:400]))
        prev = None
        for h, a in pairs:
            hn = (h.get("worker") or {}).get("node")
            lost_here = is_lost(h) and hn == victim
            if a is None:
                if not lost_here:
                    problems.append("%s: attempt %d is %s on %s but never "
                                    "started (no S line)" % (
                                        where, h["attempt"], h.get("state"),
                                        hn))
                continue
            if a.e_ns is not None:
                if h.get("state") != "succeeded" and not (
                        lost_here and a.e_ns <= victim_end_ns):
                    problems.append("%s: attempt %d ended normally (E) but "
                                    "is recorded %s: %r" % (
                                        where, h["attempt"], h.get("state"),
                                        h.get("error")))
            elif not lost_here:
                problems.append("%s: attempt %d has no E line but is "
                                "recorded %s on %s (error %r), not lost on %s"
                                % (where, h["attempt"], h.get("state"), hn,
                                   h.get("error"), victim))
            if a.node == victim and a.last_ns > victim_end_ns:
                problems.append("%s: attempt %d on %s still ran %.3f s after "
                                "the event" % (where, h["attempt"], victim,
                                               (a.last_ns - t_event_ns) / NS))
            if prev is not None:
                pa, ph = prev
                if pa.last_ns >= a.s_ns:
                    problems.append("%s: attempts %d and %d overlap (%d ns)"
                                    % (where, ph["attempt"], h["attempt"],
                                       pa.last_ns - a.s_ns))
                if pa.node == victim and is_lost(ph) \
                        and a.s_ns <= t_event_ns:
                    problems.append("%s: attempt %d started before %s was "
                                    "lost" % (where, h["attempt"], victim))
            prev = (a, h)
        # the final state
        if hist:
            last_h, last_a = pairs[-1]
            if job["state"] == "succeeded":
                if last_h.get("state") != "succeeded" or last_a is None \
                        or last_a.e_ns is None:
                    problems.append("%s: succeeded but its last attempt is "
                                    "%r / %r" % (where, last_h, last_a))
            elif job["state"] == "failed":
                if not is_lost(last_h) or not LOST_RE.search(
                        job.get("error") or ""):
                    problems.append("%s: failed, error %r (expected node "
                                    "lost / interrupted)" % (
                                        where, job.get("error")))
                if job["attempts"] != job["max_attempts"]:
                    problems.append("%s: failed with %d of %d attempts" % (
                        where, job["attempts"], job["max_attempts"]))
            else:
                problems.append("%s: ended %s" % (where, job["state"]))
            if job_node(job) != (last_h.get("worker") or {}).get("node"):
                problems.append("%s: worker.node %r but last history entry "
                                "%r" % (where, job_node(job),
                                        last_h.get("worker")))
        else:
            problems.append("%s: terminal with an empty history" % where)


def assert_no_problems(problems, what):
    if problems:
        raise AssertionError("%s: %d problem(s): %s" % (
            what, len(problems), " | ".join(problems[:12])))


# ------------------------------------------------------------- tests

def test_nodes_listed():
    """GET /v1/nodes on every node lists the three, itself as self."""
    with Cluster() as cl:
        deadline = time.monotonic() + 10
        while True:
            views = {n.name: n.nodes() for n in cl.live()}
            ok = all(sorted(i["name"] for i in v) == list(NAMES)
                     for v in views.values())
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for name, items in views.items():
            names = sorted(i["name"] for i in items)
            assert names == list(NAMES), \
                "GET /v1/nodes on %s lists %r" % (name, names)
            now = time.time()
            for i in items:
                assert set(i) >= {"name", "self", "started_at",
                                  "last_heartbeat_at", "pool_size",
                                  "busy_workers"}, "node entry %r" % i
                assert i["self"] is (i["name"] == name), \
                    "on %s: %r has self=%r" % (name, i["name"], i["self"])
                assert i["pool_size"] == 2, "pool_size in %r" % i
                assert i["busy_workers"] == 0, "busy_workers in %r" % i
                age = now - harness.parse_ts(i["last_heartbeat_at"])
                assert age < 3.0, "%s's heartbeat seen from %s is %.1f s " \
                    "old" % (i["name"], name, age)
                assert harness.parse_ts(i["started_at"]) <= \
                    harness.parse_ts(i["last_heartbeat_at"]) + 0.001, i


test_nodes_listed.timeout = 60


def test_c1_spread():
    """C1: 300 short jobs POSTed to n1 run on all three nodes (each >= 20%),
    once each; GET of the batch and jobs is the same on every node."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        jobs = [cl.sh_job("c1.%d" % i, 0.02) for i in range(300)]
        b = n1.submit(jobs, name="c1")
        tags = dict(zip(b["job_ids"], ("c1.%d" % i for i in range(300))))
        done = wait_batch(n1, b["id"], timeout=90)
        assert done["state"] == "succeeded", "batch %s: %r" % (
            done["state"], done.get("counts"))
        js = all_jobs(n1, b["id"])
        per = {}
        log = cl.read_log()
        problems = list(log.problems)
        for j in js:
            node = job_node(j)
            per[node] = per.get(node, 0) + 1
            hist = j.get("history") or []
            if j["attempts"] != 1 or len(hist) != 1:
                problems.append("%s: attempts %d, %d history entries" % (
                    j["id"], j["attempts"], len(hist)))
                continue
            if (hist[0].get("worker") or {}).get("node") != node:
                problems.append("%s: worker.node %r, history %r" % (
                    j["id"], node, hist[0].get("worker")))
            att = log.attempts(tags[j["id"]])
            if len(att) != 1 or att[0].e_ns is None:
                problems.append("%s: log attempts %r" % (j["id"], att))
            elif att[0].node != node:
                problems.append("%s: ran on %s (log) but worker.node %r" % (
                    j["id"], att[0].node, node))
            elif att[0].job not in ("-", j["id"]):
                problems.append("%s: JOBPOOL_JOB names %s" % (j["id"],
                                                               att[0].job))
        assert_no_problems(problems, "C1")
        note("C1 jobs per node: %s" % json.dumps(per, sort_keys=True))
        assert set(per) <= set(NAMES), "worker.node values %r" % per
        for name in NAMES:
            assert per.get(name, 0) >= 60, \
                "node %s ran %d of 300 jobs (< 20%%): %r" % (
                    name, per.get(name, 0), per)
        nodes = [n1, n2, n3]
        assert_same_everywhere(nodes, "/v1/batches/" + b["id"])
        assert_same_everywhere(nodes, "/v1/batches/%s/jobs?limit=1000"
                               % b["id"])
        for jid in random.Random(1).sample(b["job_ids"], 10):
            assert_same_everywhere(nodes, "/v1/jobs/" + jid)
        check_counts(get_ok(n2, "/v1/batches/" + b["id"]), js, "C1")
        # busy_workers travels with the heartbeats (every lease / 4)
        for n in nodes:
            harness.wait_until(
                lambda: all(i["busy_workers"] == 0 for i in n.nodes()), 3.0,
                0.1, "%s to report every node idle after the batch"
                % n.name)


test_c1_spread.timeout = 150


def test_longpoll_across_nodes():
    """A long-poll (?wait=) on n2 and n3 for a batch submitted to n1, and on
    n3 for one of its jobs, returns once the batch or job is done (within
    1 s of its finished_at), not when the wait runs out (SPEC §8: long-polls
    on any node see changes made on any other)."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        b = n1.submit([cl.sh_job("lp.%d" % i, 0.5) for i in range(6)],
                      name="lp")
        got = {}

        def hold(node, path, key):
            t0 = time.time()
            try:
                st, h, body = call(node, "GET", path + "?wait=20", timeout=40)
                got[key] = (st, body, time.time(), time.time() - t0)
            except Exception as e:  # noqa: B902
                got[key] = (None, repr(e), time.time(), time.time() - t0)
        ths = [threading.Thread(target=hold, args=a, daemon=True) for a in (
            (n2, "/v1/batches/" + b["id"], "batch@n2"),
            (n3, "/v1/batches/" + b["id"], "batch@n3"),
            (n3, "/v1/jobs/" + b["job_ids"][0], "job@n3"))]
        for t in ths:
            t.start()
        for t in ths:
            t.join(45)
        problems = []
        for key, (st, body, t_back, held) in sorted(got.items()):
            if st != 200:
                problems.append("%s: %s %r" % (key, st, body))
                continue
            terminal = harness.TERMINAL_BATCH if key.startswith("batch") \
                else harness.TERMINAL_JOB
            if body["state"] not in terminal:
                problems.append("%s returned after %.2f s with state %s" % (
                    key, held, body["state"]))
                continue
            lag = t_back - harness.parse_ts(body["finished_at"])
            note("long-poll %s returned %.3f s after finished_at" % (key, lag))
            if lag > 1.0:
                problems.append("%s returned %.2f s after the end (held "
                                "%.2f s)" % (key, lag, held))
        assert_no_problems(problems, "long-poll")


test_longpoll_across_nodes.timeout = 90


def test_c2_limit():
    """C2: five batches with concurrency 1, 2, 3, 4 and 6 (120 jobs of 80-160
    ms, 3 nodes x 4 workers): the attempts of a batch never overlap more than
    its concurrency (exact, from the log), and a 10 ms sampler of the
    batches' running counts never sees more. Each batch also reaches its
    limit, seen in the log or by the sampler: the log only covers the shell's
    own run, so under a sanitizer build a slow fork can hide the last slot
    from it while the server did hand all of them out (the sampler reads the
    count the gate keeps)."""
    with Cluster() as cl:
        nodes = [cl[n] for n in NAMES]
        for n in nodes:
            n.ok("PUT", "/v1/pool", {"size": 4})
        for n in nodes:
            n.wait_pool_ready(4, timeout=15)
        rnd = random.Random(2)
        limits = (1, 2, 3, 4, 6)
        bodies = []
        for c in limits:
            k = int(round(120 * c / sum(limits)))
            bodies.append((c, [cl.sh_job("c2.%d.%d" % (c, i),
                                         rnd.uniform(0.08, 0.16))
                               for i in range(k)]))
        stop = threading.Event()
        seen = {}
        errors = []
        bids = {}

        def sampler():
            i = 0
            while not stop.is_set():
                node = nodes[i % 3]
                i += 1
                try:
                    st, h, page = call(node, "GET", "/v1/batches?limit=100",
                                       timeout=5)
                    if st == 200:
                        for it in page["items"]:
                            r = (it.get("counts") or {}).get("running", 0)
                            seen[it["id"]] = max(seen.get(it["id"], 0), r)
                except Exception as e:  # noqa: B902
                    errors.append(repr(e))
                stop.wait(0.01)
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            for i, (c, jobs) in enumerate(bodies):
                b = nodes[i % 3].submit(jobs, name="c2-%d" % c, concurrency=c)
                bids[c] = b["id"]
            for i, c in enumerate(limits):
                d = wait_batch(nodes[(i + 1) % 3], bids[c], timeout=90)
                assert d["state"] == "succeeded", \
                    "batch c=%d ended %s %r" % (c, d["state"], d["counts"])
        finally:
            stop.set()
            th.join(10)
        log = cl.read_log()
        problems = list(log.problems)
        reached = {}
        for c, jobs in bodies:
            att = log.all("c2.%d." % c)
            if len(att) != len(jobs) or any(a.e_ns is None for a in att):
                problems.append("c=%d: %d attempts logged for %d jobs" % (
                    c, len(att), len(jobs)))
            m = max_overlap(att)
            reached[c] = max(m, seen.get(bids[c], 0))
            if m > c:
                problems.append("c=%d: %d attempts overlapped" % (c, m))
            if seen.get(bids[c], 0) > c:
                problems.append("c=%d: GET showed %d running" % (
                    c, seen[bids[c]]))
            for j in all_jobs(nodes[0], bids[c]):
                if j["attempts"] != 1 or j["state"] != "succeeded":
                    problems.append("%s: %s after %d attempts" % (
                        j["id"], j["state"], j["attempts"]))
        note("C2 max overlap per concurrency %s, sampled running %s, "
             "%d sampler errors" % (
                 json.dumps(reached, sort_keys=True),
                 json.dumps({c: seen.get(bids[c], 0) for c in limits},
                            sort_keys=True), len(errors)))
        assert_no_problems(problems, "C2")
        for c in limits:
            assert reached[c] == c, \
                "c=%d: at most %d attempts ran at once, never the limit " \
                "(log and sampler together: %r)" % (c, reached[c], reached)


test_c2_limit.timeout = 150


def _c3_round(rnd_seed):
    rnd = random.Random(rnd_seed)
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        njobs = 150
        specs = [cl.job("c3.%d" % i, 0.3, beat=0.05,
                        max_attempts=2 if i % 2 == 0 else 1)
                 for i in range(njobs)]
        t_submit = time.monotonic()
        b = n1.submit(specs, name="c3")
        tags = dict(zip(b["job_ids"], ("c3.%d" % i for i in range(njobs))))
        by_tag = {v: k for k, v in tags.items()}
        kill_at = t_submit + rnd.uniform(1.0, 3.0)
        time.sleep(max(0.0, kill_at - time.monotonic()))
        n2._learn_children()
        # kill while an attempt on n2 has most of its 0.3 s ahead of it
        wait_log(cl, lambda lg: any(a.s_ns > time.time_ns() - NS // 8
                                    for a in lg.running_on("n2")), 8.0,
                 "n2 to start an attempt")
        kids = dict(n2.known_children)
        t_kill = time.time()
        after_submit = time.monotonic() - t_submit
        os.kill(n2.pid, signal.SIGKILL)
        n2.proc.wait(10)
        t_kill_ns = int(t_kill * NS)
        left = harness.wait_pids_gone(kids, 3.0)
        harness.kill_pids(left)
        assert not left, "processes of the killed n2 outlived it by 3 s: " \
            "%s" % sorted(left)
        log = cl.read_log()
        lost = {}
        for a in log.running_on("n2"):
            lost[by_tag[a.tag]] = len(log.attempts(a.tag))
        took, never = measure_rescue(n1, lost, "n2", t_kill,
                                     RESCUE_LIMIT_S + 4)
        note("C3 seed %d: n2 killed %.2f s after submit with %d attempts "
             "running; rescued after %s s" % (
                 rnd_seed, after_submit, len(lost),
                 sorted(round(v, 2) for v in took.values())))
        assert lost, "n2 was killed with no attempt running"
        assert not never, "jobs still running on the killed n2 after " \
            "%.0f s: %s" % (RESCUE_LIMIT_S + 4, never)
        slow = {j: t for j, t in took.items()
                if t > RESCUE_LIMIT_S + POLL_SLACK_S}
        assert not slow, "rescue slower than %.1f s: %r" % (RESCUE_LIMIT_S,
                                                             slow)
        done = wait_batch(n3, b["id"], timeout=90)
        assert done["state"] in ("succeeded", "failed"), done["state"]
        js = {j["id"]: j for j in all_jobs(n1, b["id"])}
        log = cl.read_log()
        problems = list(log.problems)
        check_attempts(cl, js, log, tags, "n2", t_kill_ns,
                       t_kill_ns + NS // 2, problems)
        assert_no_problems(problems, "C3")
        for j in js.values():
            if j["max_attempts"] == 2:
                assert j["state"] == "succeeded", \
                    "%s (2 attempts allowed) ended %s: %r" % (
                        j["id"], j["state"], j.get("error"))
        check_counts(get_ok(n3, "/v1/batches/" + b["id"]), list(js.values()),
                     "C3")
        assert_same_everywhere([n1, n3], "/v1/batches/" + b["id"])
        assert_same_everywhere([n1, n3], "/v1/batches/%s/jobs?limit=1000"
                               % b["id"])
        # the dead incarnation no longer renews
        for n in (n1, n3):
            items = n.nodes()
            for i in items:
                if i["name"] == "n2":
                    hb = harness.parse_ts(i["last_heartbeat_at"])
                    assert hb <= t_kill + 0.01, \
                        "%s lists n2 with a heartbeat %.2f s after its kill" \
                        % (n.name, hb - t_kill)
            live = {i["name"] for i in items
                    if time.time() - harness.parse_ts(i["last_heartbeat_at"])
                    < 3}
            assert live == {"n1", "n3"}, \
                "%s lists these nodes as alive: %r" % (n.name, items)


def _make_c3(k):
    def t():
        _c3_round(1000 + k)
    t.__name__ = "test_c3_kill9_round%d" % k
    t.__qualname__ = t.__name__
    t.__doc__ = "C3 round %d: kill -9 of n2 mid-batch" % k
    t.timeout = 150
    return t


for _k in range(1, C3_ROUNDS + 1):
    globals()["test_c3_kill9_round%d" % _k] = _make_c3(_k)
del _k


def test_c4_freeze():
    """C4: SIGSTOP n3 for 8 s while it runs jobs.  Its jobs are rescued by
    n1/n2 within 5 s; its own workers stop their jobs before (no two attempts
    overlap); after SIGCONT its late outcomes change nothing, and it is back
    (heartbeats, answers)."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        njobs = 8
        specs = [cl.job("c4.%d" % i, 6.0, beat=0.05,
                        max_attempts=2 if i % 2 == 0 else 1)
                 for i in range(njobs)]
        b = n1.submit(specs, name="c4")
        tags = dict(zip(b["job_ids"], ("c4.%d" % i for i in range(njobs))))
        by_tag = {v: k for k, v in tags.items()}
        wait_log(cl, lambda lg: len(lg.running_on("n3")) == 2, 10.0,
                 "n3 to run two attempts")
        n3._learn_children()
        t_stop = time.time()
        n3.freeze()
        t_stop_ns = int(t_stop * NS)
        log = cl.read_log()
        lost = {by_tag[a.tag]: len(log.attempts(a.tag))
                for a in log.running_on("n3")}
        try:
            took, never = measure_rescue(n1, lost, "n3", t_stop,
                                         RESCUE_LIMIT_S + 2.5)
            note("C4: n3 frozen with %d attempts running; rescued after %s s"
                 % (len(lost), sorted(round(v, 2) for v in took.values())))
            assert not never, "jobs of the frozen n3 still running after " \
                "%.1f s: %s" % (RESCUE_LIMIT_S + 2.5, never)
            slow = {j: t for j, t in took.items()
                    if t > RESCUE_LIMIT_S + POLL_SLACK_S}
            assert not slow, "rescue slower than %.1f s: %r" % (
                RESCUE_LIMIT_S, slow)
            time.sleep(max(0.0, t_stop + 8.0 - time.time()))
            before = {j["id"]: j for j in all_jobs(n1, b["id"])}
        finally:
            t_cont = time.time()
            n3.thaw()
        # n3 answers again and renews under its name
        harness.wait_until(lambda: call(n3, "GET", "/healthz",
                                        timeout=2)[0] == 200,
                           10, 0.1, "n3 to answer after SIGCONT")

        def n3_back():
            for i in n1.nodes():
                if i["name"] == "n3" and \
                        harness.parse_ts(i["last_heartbeat_at"]) > t_cont:
                    return i
            return None
        back = harness.wait_until(n3_back, 8, 0.1,
                                  "n1 to see n3 heartbeat after SIGCONT")
        done = wait_batch(n2, b["id"], timeout=60)
        assert done["state"] in ("succeeded", "failed"), done["state"]
        time.sleep(1.5)         # room for a late outcome to do harm
        js = {j["id"]: j for j in all_jobs(n1, b["id"])}
        log = cl.read_log()
        problems = list(log.problems)
        # the frozen node's workers fence at lease - margin (3 s) after the
        # last renewal, which was before t_stop
        check_attempts(cl, js, log, tags, "n3", t_stop_ns,
                       t_stop_ns + 4 * NS, problems)
        gaps = []
        for jid in lost:
            att = log.attempts(tags[jid])
            if len(att) >= 2:
                gaps.append("%s: stopped +%.2f s, rerun +%.2f s" % (
                    tags[jid], (att[0].last_ns - t_stop_ns) / NS,
                    (att[1].s_ns - t_stop_ns) / NS))
            elif att:
                gaps.append("%s: stopped +%.2f s" % (
                    tags[jid], (att[0].last_ns - t_stop_ns) / NS))
        note("C4: n3's attempts after SIGSTOP: %s" % "; ".join(gaps))
        for jid, old in before.items():
            new = js[jid]
            if old["state"] in harness.TERMINAL_JOB:
                d = first_diff(old, new)
                if d:
                    problems.append("%s changed after SIGCONT: %s" % (jid, d))
            else:
                oh, nh = old.get("history") or [], new.get("history") or []
                d = first_diff(oh, nh[:len(oh)])
                if d:
                    problems.append("%s: history rewritten after SIGCONT: %s"
                                    % (jid, d))
        assert_no_problems(problems, "C4")
        st, h, text = call(n3, "GET", "/metrics")
        m = re.search(r"^jobpool_stale_outcomes_total(?:\{[^}]*\})? (\S+)",
                      text or "", re.M)
        note("C4: n3 back as started_at %s; jobpool_stale_outcomes_total %s"
             % (back["started_at"], m.group(1) if m else "(absent)"))
        check_counts(get_ok(n2, "/v1/batches/" + b["id"]), list(js.values()),
                     "C4")
        nodes = [n1, n2, n3]
        assert_same_everywhere(nodes, "/v1/batches/" + b["id"])
        assert_same_everywhere(nodes, "/v1/batches/%s/jobs?limit=1000"
                               % b["id"])
        # n3 serves and runs again
        b2 = n3.submit([cl.job("c4b.%d" % i, 0.2) for i in range(12)],
                       name="c4-after")
        d2 = wait_batch(n3, b2["id"], timeout=30)
        assert d2["state"] == "succeeded", d2
        assert_same_everywhere(nodes, "/v1/batches/" + b2["id"])


test_c4_freeze.timeout = 180


def _c5(down_s, njobs, seconds, attempts):
    """A PostgreSQL outage of down_s seconds (pg_ctl stop -m fast, wait,
    start on the same port) while three nodes run a batch.  Returns the
    batch's jobs, the side log and the tags, after checking that every job
    succeeded and no two attempts of a job overlapped."""
    pg = Pg()
    pg.base = None               # its own server: this test restarts it
    try:
        with Cluster(pg=pg) as cl:
            n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
            specs = [cl.sh_job("c5.%d" % i, seconds, max_attempts=attempts)
                     for i in range(njobs)]
            b = n1.submit(specs, name="c5")
            tags = dict(zip(b["job_ids"], ("c5.%d" % i
                                           for i in range(njobs))))
            wait_log(cl, lambda lg: len(lg.all("c5.")) >= 6, 20.0,
                     "attempts to start")
            t0 = time.monotonic()
            pg.server.restart(down_seconds=down_s)
            note("C5: PostgreSQL down for %.1f s (asked %.1f s)" % (
                time.monotonic() - t0, down_s))
            done = wait_batch(n2, b["id"], timeout=120)
            js = {j["id"]: j for j in all_jobs(n3, b["id"])}
            log = cl.read_log()
            problems = list(log.problems)
            for jid, tag in tags.items():
                if max_overlap(log.attempts(tag)) > 1:
                    problems.append("%s: attempts overlap: %r" % (
                        tag, log.attempts(tag)))
            assert_no_problems(problems, "C5")
            assert done["state"] == "succeeded", \
                "batch ended %s: %r" % (done["state"], tally(js.values()))
            for n in (n1, n2, n3):
                assert n.running(), "%s exited during the outage" % n.name
            assert_same_everywhere([n1, n2, n3], "/v1/batches/" + b["id"])
            fenced = []
            for n in cl.every:
                with open(n.stderr_path, "rb") as f:
                    if b"lost its lease" in f.read():
                        fenced.append(n.name)
            return js, log, tags, fenced
    finally:
        pg.stop()


def test_c5_short_db_restart():
    """C5: a 1 s PostgreSQL restart mid-batch loses nothing: the outcomes of
    the turn lost with the connection are written again after it, so every
    job succeeds at its first attempt (unless a loaded machine delayed the
    lease past the outage: then no job may overlap or be lost either)."""
    js, log, tags, fenced = _c5(1.0, 90, 0.3, 2)
    again = [j["id"] for j in js.values() if j["attempts"] != 1]
    if fenced:
        # the machine was too loaded for the lease to outlast the restart:
        # then this is the long outage's case, checked as such
        note("C5: %s fenced during a short outage (a loaded machine); %d "
             "job(s) ran again" % (fenced, len(again)))
        return
    assert not again, "jobs run more than once after a 1 s outage: %r" % again
    for jid, tag in tags.items():
        assert len(log.attempts(tag)) == 1, \
            "%s ran %d times" % (tag, len(log.attempts(tag)))


test_c5_short_db_restart.timeout = 200


def test_c5_long_db_restart():
    """C5: a 6 s PostgreSQL outage fences every node (their leases run out
    with the database away): the attempts in flight are stopped, reported
    in history as lost, and run again; none overlaps another, and the batch
    completes."""
    js, log, tags, fenced = _c5(6.0, 90, 0.5, 3)
    again = [j for j in js.values() if j["attempts"] > 1]
    assert again, "a 6 s outage re-ran no job: the nodes were not fenced"
    for j in again:
        lost = [h for h in j["history"][:-1] if h.get("error") in (
            "node lost", "interrupted")]
        assert len(lost) == j["attempts"] - 1, \
            "%s: %d attempts, history %r" % (j["id"], j["attempts"],
                                              j["history"])


test_c5_long_db_restart.timeout = 200


def test_c5_worker_channel_after_outage():
    """C5: a worker started while PostgreSQL is down gets the descriptor
    number libpq's dropped socket had; the node's reconnect must not unhook
    that worker's channel (it once did: the worker's next job ran, its
    "done" was never read, and the job stayed running for good).  One
    node, a lease long enough to ride out the outage; a job kills its own
    worker during the outage, so the replacement starts then."""
    pg = Pg()
    pg.base = None               # its own server: this test restarts it
    try:
        with Cluster(n=1, workers=2, args=["--node-lease", "20s"],
                     pg=pg) as cl:
            n1 = cl["n1"]
            a = n1.submit([{"kind": "command", "args": {"argv": [
                "sh", "-c", "sleep 1.2; kill -9 $PPID"]}}], name="c5fd")
            poll_until(n1, "/v1/batches/" + a["id"],
                       lambda b: b["counts"]["running"] == 1, 10.0,
                       what="the worker-killing job to start")
            pg.server.restart(down_seconds=3.0)
            b = None
            deadline = time.monotonic() + 30
            while b is None and time.monotonic() < deadline:
                st, h, body = call(n1, "POST", "/v1/batches", {"jobs": [
                    {"kind": "command", "args": {"argv": ["sh", "-c",
                                                          "sleep 0.1"]}}
                    for _ in range(8)]})
                if st == 201:
                    b = body
                else:
                    time.sleep(0.2)
            assert b, "no submission accepted after the outage"
            done = wait_batch(n1, b["id"], timeout=30)
            assert done["state"] == "succeeded", done
            pool = poll_until(n1, "/v1/pool",
                              lambda p: p["idle"] == 2, 10.0,
                              what="both workers idle")
            assert [w["state"] for w in pool["workers"]] == ["idle"] * 2
            # the channels still carry messages: one job per worker
            c = n1.submit([{"kind": "command", "args": {"argv": [
                "sh", "-c", "sleep 0.3"]}} for _ in range(2)])
            assert wait_batch(n1, c["id"], timeout=20)["state"] == \
                "succeeded"
    finally:
        pg.stop()


test_c5_worker_channel_after_outage.timeout = 120


def test_batch_pause_holds_on_every_node():
    """A batch paused through one node starts no job on any node; resumed
    through another, it runs to the end."""
    with Cluster(n=2, workers=2) as cl:
        n1, n2 = cl["n1"], cl["n2"]
        # paused server-wide first (stored: every node follows), so no job
        # starts before the batch's own pause
        st, h, body = call(n1, "POST", "/v1/pause")
        assert st == 200, body
        harness.wait_until(
            lambda: get_ok(n2, "/v1/pool")["paused"] is True, 5,
            what="n2 to follow n1's pause")
        b = n1.submit([{"kind": "noop"}] * 3, name="paused")
        st, h, body = call(n1, "POST", "/v1/batches/%s/pause" % b["id"])
        assert st == 200, body
        st, h, body = call(n1, "POST", "/v1/resume")
        assert st == 200, body
        time.sleep(1.0)         # several --poll-interval looks
        got = get_ok(n2, "/v1/batches/" + b["id"])
        assert got["paused"] is True and got["counts"]["queued"] == 3, got
        st, h, body = call(n2, "POST", "/v1/batches/%s/resume" % b["id"])
        assert st == 200, body
        done = wait_batch(n1, b["id"], timeout=20)
        assert done["state"] == "succeeded", done


def test_server_pause_holds_on_every_node():
    """POST /v1/pause through one node stops dispatch on every node (each
    reads the stored pause every --poll-interval): a batch submitted to
    another node starts nowhere; POST /v1/resume through that other node
    restarts every node."""
    with Cluster(n=2, workers=2) as cl:
        n1, n2 = cl["n1"], cl["n2"]
        st, h, body = call(n1, "POST", "/v1/pause")
        assert st == 200 and body["paused"] is True, body
        harness.wait_until(
            lambda: get_ok(n2, "/v1/pool")["paused"] is True, 5,
            what="n2 to follow n1's pause")
        b = n2.submit([{"kind": "noop"}] * 3, name="held everywhere")
        time.sleep(1.0)         # several --poll-interval looks
        got = get_ok(n1, "/v1/batches/" + b["id"])
        assert got["counts"]["queued"] == 3, got
        st, h, body = call(n2, "POST", "/v1/resume")
        assert st == 200 and body["paused"] is False, body
        harness.wait_until(
            lambda: get_ok(n1, "/v1/pool")["paused"] is False, 5,
            what="n1 to follow n2's resume")
        done = wait_batch(n1, b["id"], timeout=20)
        assert done["state"] == "succeeded", done


def test_patch_concurrency_holds_on_every_node():
    """PATCH {"concurrency"} through one node while the batch runs on two:
    raised, the nodes together reach the new limit; lowered through the
    other node, once the attempts started before it have ended (0.3 s) and
    every node has looked (--poll-interval), no instant has more attempts
    running than the new limit (exact, from the log)."""
    with Cluster(n=2, workers=3) as cl:
        n1, n2 = cl["n1"], cl["n2"]
        b = n1.submit([cl.sh_job("pc.%d" % i, 0.3) for i in range(40)],
                      name="patched", concurrency=1)
        bid = b["id"]
        harness.wait_until(
            lambda: get_ok(n2, "/v1/batches/" + bid)["counts"]["running"]
            == 1, 10, what="one running")
        st, h, got = call(n2, "PATCH", "/v1/batches/" + bid,
                          {"concurrency": 4})
        assert st == 200 and got["concurrency"] == 4, got
        harness.wait_until(
            lambda: get_ok(n1, "/v1/batches/" + bid)["counts"]["running"]
            == 4, 10, 0.01, what="four running after the raise")
        t_low = time.time_ns()
        st, h, got = call(n1, "PATCH", "/v1/batches/" + bid,
                          {"concurrency": 2})
        assert st == 200 and got["concurrency"] == 2, got
        done = wait_batch(n2, bid, timeout=60)
        assert done["state"] == "succeeded", done
        att = cl.read_log().all("pc.")
        assert len(att) == 40, "%d attempts logged" % len(att)
        t_from = t_low + int((0.3 + 0.25 + 0.2) * 1e9)
        after = [Clip(a, t_from) for a in att
                 if (a.e_ns or a.last_ns) > t_from]
        m = max_overlap(after)
        nodes = sorted({a.node for a in att})
        note("PATCH concurrency: %d attempts after the lowering window, "
             "at most %d at once; ran on %s" % (len(after), m, nodes))
        assert m <= 2, "%d attempts at once under concurrency 2" % m
        assert after, "no attempt after the lowering window"


class Clip:
    """An attempt of the side log seen from t_ns on (for max_overlap)."""

    def __init__(self, a, t_ns):
        self.s_ns = max(a.s_ns, t_ns)
        self.e_ns = a.e_ns
        self.last_ns = a.last_ns


def test_c6_cancel_across_nodes():
    """C6: a job running on n3 canceled through n1; a batch running on all
    nodes canceled through n3; a batch canceled through n2 while the nodes
    claim from it: no job starts after the cancel, no process outlives it."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        nodes = [n1, n2, n3]
        # A: one job
        a = n2.submit([cl.job("c6a.%d" % i, 30.0, beat=0.05)
                       for i in range(6)], name="c6a")
        a_tags = dict(zip(a["job_ids"], ("c6a.%d" % i for i in range(6))))
        by_tag = {v: k for k, v in a_tags.items()}
        log = wait_log(cl, lambda lg: len(lg.running_on("n3", "c6a.")) >= 1
                       and len(lg.all("c6a.")) == 6, 15.0,
                       "all six c6a jobs running, one on n3")
        victim = log.running_on("n3", "c6a.")[0]
        jid = by_tag[victim.tag]
        t0 = time.time()
        st, h, body = call(n1, "POST", "/v1/jobs/%s/cancel" % jid)
        assert st == 200, "cancel via n1: %d %r" % (st, body)
        j = wait_job(n1, jid, timeout=10)
        took = time.time() - t0
        assert j["state"] == "canceled", "job %s ended %s" % (jid, j["state"])
        assert took <= CANCEL_LIMIT_S, \
            "job on n3 canceled via n1 took %.2f s" % took
        assert job_node(j) == "n3", "canceled job's worker %r" % j["worker"]
        hist = j.get("history") or []
        assert hist and hist[-1]["state"] == "canceled" and \
            (hist[-1].get("worker") or {}).get("node") == "n3", hist
        a_fin = time.time_ns()
        log = cl.read_log()
        att = log.attempts(victim.tag)
        assert len(att) == 1 and att[0].e_ns is None and \
            att[0].last_ns <= a_fin, "canceled attempt in the log: %r" % att
        note("C6: job on n3 canceled via n1 in %.2f s" % took)
        for other in a["job_ids"]:
            if other != jid:
                oj = get_ok(n3, "/v1/jobs/" + other)
                assert oj["state"] == "running", \
                    "%s is %s after canceling %s" % (other, oj["state"], jid)
        # B: the whole batch, its jobs on all three nodes, via n3
        t0 = time.time()
        st, h, body = call(n3, "POST", "/v1/batches/%s/cancel" % a["id"])
        assert st == 200, "batch cancel via n3: %d %r" % (st, body)
        d = wait_batch(n1, a["id"], timeout=10)
        took = time.time() - t0
        t_fin = time.time_ns()
        assert d["state"] == "canceled", d
        assert took <= CANCEL_LIMIT_S, "batch cancel took %.2f s" % took
        ja = all_jobs(n2, a["id"])
        assert all(x["state"] == "canceled" for x in ja), tally(ja)
        log = cl.read_log()
        for x in log.all("c6a."):
            assert x.e_ns is None and x.last_ns <= t_fin, \
                "attempt of the canceled batch: %r" % x
        assert {x.node for x in log.all("c6a.")} == set(NAMES), \
            "c6a ran on %r" % {x.node for x in log.all("c6a.")}
        note("C6: batch on three nodes canceled via n3 in %.2f s" % took)
        # C: a batch canceled via n2 while everyone claims from it
        nb = 60
        bb = n1.submit([cl.job("c6b.%d" % i, 0.3) for i in range(nb)],
                       name="c6b")
        wait_log(cl, lambda lg: sum(1 for x in lg.all("c6b.")
                                    if x.e_ns is not None) >= 8, 20.0,
                 "eight c6b jobs done")
        t_req = time.time()
        st, h, body = call(n2, "POST", "/v1/batches/%s/cancel" % bb["id"])
        t_ack = time.time()
        assert st == 200, "batch cancel via n2: %d %r" % (st, body)
        d = wait_batch(n3, bb["id"], timeout=10)
        t_fin = time.time_ns()
        assert d["state"] == "canceled", d
        jb = all_jobs(n1, bb["id"])
        t = tally(jb)
        assert set(t) <= {"succeeded", "canceled"}, t
        assert t.get("canceled", 0) >= 1 and t.get("succeeded", 0) >= 1, t
        log = cl.read_log()
        problems = list(log.problems)
        b_tags = dict(zip(bb["job_ids"], ("c6b.%d" % i for i in range(nb))))
        for x in jb:
            att = log.attempts(b_tags[x["id"]])
            if x["state"] == "succeeded" and (len(att) != 1
                                              or att[0].e_ns is None):
                problems.append("%s succeeded, log %r" % (x["id"], att))
            for y in att:
                if y.s_ns > int((t_ack + 0.5) * NS):
                    problems.append("%s started %.3f s after the cancel's "
                                    "answer" % (x["id"], y.s_ns / NS - t_ack))
                if y.last_ns > t_fin:
                    problems.append("%s: its process ran after the batch "
                                    "was canceled" % x["id"])
        assert_no_problems(problems, "C6")
        note("C6: batch canceled via n2 (answer in %.3f s): %r" % (
            t_ack - t_req, t))
        check_counts(d, jb, "C6")
        for bid in (a["id"], bb["id"]):
            assert_same_everywhere(nodes, "/v1/batches/" + bid)
        # finished: another cancel is a 409 on any node
        for n in nodes:
            st, h, body = call(n, "POST", "/v1/batches/%s/cancel" % bb["id"])
            assert st == 409, "second cancel via %s: %d %r" % (n.name, st,
                                                               body)


test_c6_cancel_across_nodes.timeout = 150


def _sh(script):
    return {"kind": "command", "args": {"argv": ["sh", "-c", script]}}


def _halt_batch(cl, node, mode, count, fail_s, run_s, slots=6):
    """A batch of which the pool's slots run count jobs that fail after
    fail_s and run_s jobs, with 10 more queued; returns (batch, its jobs,
    the node that ran job 0) once it ended."""
    jobs = ([_sh("sleep %.1f; exit 1" % fail_s)] * count +
            [_sh("sleep %.1f" % run_s)] * (slots - count) +
            [_sh("sleep %.1f" % run_s)] * 10)
    b = node.submit(jobs, halt={"when": "fail", "count": count,
                                "mode": mode})
    d = wait_batch(node, b["id"], timeout=run_s + 20)
    js = all_jobs(node, b["id"])
    return d, js, job_node(js[0])


def test_halt_across_nodes():
    """A halt policy holds across nodes: "soon" cancels the queued jobs
    everywhere and lets the other nodes' running jobs finish; "now" kills
    them on every node; two failures on two nodes at once, each counted by
    its own node, still halt the batch (the poll sees both)."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        d, js, where = _halt_batch(cl, n1, "soon", 1, 1.5, 4.0)
        t = tally(js)
        assert d["state"] == "canceled" and d["halted"] and \
            d["halted"]["reason"] == "1 job failed (halt when fail count 1)", d
        assert t == {"failed": 1, "succeeded": 5, "canceled": 10}, t
        ran = {job_node(j) for j in js[1:6]}
        assert len(ran | {where}) >= 2, "the first six ran on %r" % ran
        for j in js[6:]:
            assert j["started_at"] is None, j
        note("halt soon: failed on %s, running ones finished on %r" % (
            where, sorted(ran)))
        d, js, where = _halt_batch(cl, n2, "now", 1, 1.5, 30.0)
        t = tally(js)
        assert d["state"] == "canceled" and d["halted"], d
        assert t == {"failed": 1, "canceled": 15}, t
        killed = [j for j in js[1:6] if j["started_at"]]
        assert len(killed) == 5, tally(js[1:6])
        for j in killed:
            assert j["error"] == "canceled while running" and \
                j["timings"]["run_ms"] < 15000, j
        others = {job_node(j) for j in killed} - {where}
        assert others, "no running job on another node than %s" % where
        note("halt now: failed on %s, killed on %r" % (where,
                                                       sorted(others)))
        assert_same_everywhere([n1, n2, n3], "/v1/batches/" + d["id"])
    # One worker a node: the two failures end at once on two nodes, and
    # each node's own count (its end not yet committed by the other) is 1.
    with Cluster(workers=1) as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        d, js, where = _halt_batch(cl, n3, "now", 2, 1.5, 30.0, slots=3)
        t = tally(js)
        assert d["state"] == "canceled" and d["halted"] and \
            d["halted"]["reason"] == "2 jobs failed (halt when fail count 2)", \
            d
        assert t == {"failed": 2, "canceled": 11}, t
        note("halt now, 2 failures on %r" % sorted(
            {job_node(j) for j in js[:2]}))
        assert_same_everywhere([n1, n2, n3], "/v1/batches/" + d["id"])


test_halt_across_nodes.timeout = 150


def test_c8_idempotency_race():
    """C8: 50 keys, each POSTed at the same moment to n1 and n2 with the
    same body: one batch per key, 201 + 200 with the same id; the same key
    with another body is a 409 on any node."""
    with Cluster() as cl:
        n1, n2, n3 = cl["n1"], cl["n2"], cl["n3"]
        keys = ["c8-%s-%d" % (uuid.uuid4().hex[:8], i) for i in range(50)]
        results = {k: [None, None] for k in keys}
        sem = threading.Semaphore(10)

        def body_of(k):
            return {"name": "c8:" + k, "jobs": [{"kind": "noop"}]}

        def post(k, idx, node, barrier):
            try:
                barrier.wait(10)
                results[k][idx] = call(node, "POST", "/v1/batches",
                                       body_of(k), {"Idempotency-Key": k},
                                       timeout=30)
            except Exception as e:  # noqa: B902
                results[k][idx] = ("error", {}, repr(e))

        def pair(k):
            with sem:
                bar = threading.Barrier(2)
                ts = [threading.Thread(target=post, args=(k, 0, n1, bar)),
                      threading.Thread(target=post, args=(k, 1, n2, bar))]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(40)
        ths = [threading.Thread(target=pair, args=(k,), daemon=True)
               for k in keys]
        for t in ths:
            t.start()
        deadline = time.monotonic() + 90
        for t in ths:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in ths), "POSTs did not return"
        problems = []
        ids = {}
        for k in keys:
            r = results[k]
            sts = sorted(x[0] for x in r if x is not None)
            if sts != [200, 201]:
                problems.append("%s: statuses %r (%s)" % (
                    k, sts, [str(x[2])[:300] for x in r if x]))
                continue
            a, b = r[0][2], r[1][2]
            if a.get("id") != b.get("id"):
                problems.append("%s: ids %s and %s" % (k, a.get("id"),
                                                       b.get("id")))
                continue
            ids[k] = a["id"]
        assert_no_problems(problems, "C8")
        # one batch per key, seen from n3
        page = get_ok(n3, "/v1/batches?limit=1000")
        mine = [i for i in page["items"]
                if (i.get("name") or "").startswith("c8:")]
        assert len(mine) == len(keys), \
            "%d c8 batches for %d keys" % (len(mine), len(keys))
        assert {i["id"] for i in mine} == set(ids.values())
        k = keys[0]
        for n in (n1, n2, n3):
            st, h, b = call(n, "POST", "/v1/batches", body_of(k),
                            {"Idempotency-Key": k})
            assert st == 200 and b["id"] == ids[k], \
                "same key and body again via %s: %d %r" % (n.name, st, b)
            other = body_of(k)
            other["name"] = "c8:other"
            st, h, b = call(n, "POST", "/v1/batches", other,
                            {"Idempotency-Key": k})
            harness.assert_problem(st, h, b, 409)
        for k in keys[:5]:
            wait_batch(n1, ids[k], timeout=30)
            assert_same_everywhere([n1, n2, n3], "/v1/batches/" + ids[k])


test_c8_idempotency_race.timeout = 150


# ------------------------------------------------------------- runner

def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "integration_run", os.path.join(IT_DIR, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv):
    sel = None
    it = iter(argv)
    for a in it:
        if a == "-k":
            sel = next(it, None)
        else:
            _out("usage: test_cluster.py [-k SUBSTR]")
            return 2
    if os.environ.get("JOBPOOL_SKIP_CLUSTER") == "1":
        _out("SKIP cluster: JOBPOOL_SKIP_CLUSTER=1")
        _out("cluster: 0 passed, 0 failed")
        return 77

    def on_term(signum, frame):
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, on_term)

    runner = _load_runner()          # run_one: per-test bound, kill_all
    harness.DEFER_TAILS = True
    mod = sys.modules[__name__]
    plan = [(n, f) for n, f in runner.tests_of(mod)
            if sel is None or sel in n]
    passed = failed = 0
    try:
        try:
            binary = harness.server_binary()
            r = subprocess.run([binary, "--help"], capture_output=True,
                               text=True, timeout=10)
            if "postgres" not in (r.stdout + r.stderr).lower():
                raise RuntimeError("%s --help does not mention PostgreSQL: "
                                   "built without it (or before it)" % binary)
            t0 = time.monotonic()
            PG.start()
            _out("NOTE PostgreSQL %s (%.1f s)" % (
                PG.base or "started by tests/pg/pgtmp.py",
                time.monotonic() - t0))
        except Exception as e:  # noqa: B902
            _out("FAIL cluster setup: %s" % e)
            _out("cluster: 0 passed, %d failed" % max(1, len(plan)))
            return 1
        for i, (name, fn) in enumerate(plan):
            before = len(harness.ALL)
            outcome, err, tb, took = runner.run_one(fn)
            started = harness.ALL[before:]
            if outcome == "pass":
                passed += 1
                _out("PASS %s (%.2fs)" % (name, took))
            else:
                failed += 1
                reason = (str(err).strip().splitlines()
                          or [type(err).__name__])[0]
                _out("FAIL %s: %s (%.2fs)" % (name, reason, took))
                if tb:
                    _out(tb.rstrip())
                for s in started:
                    s.print_tail()
            for s in started:
                if s.running():
                    _out("NOTE %s left jobpoold pid %d running; killed"
                         % (name, s.pid))
                    s.thaw()
                    s.abort()
            if outcome == "hung":
                rest = plan[i + 1:]
                for r, _ in rest:
                    _out("FAIL %s: not run (runner stopped after a hung "
                         "test)" % r)
                failed += len(rest)
                harness.kill_all()
                PG.stop()
                _out("cluster: %d passed, %d failed" % (passed, failed))
                os._exit(1)
    finally:
        harness.kill_all()
        PG.stop()
    _out("cluster: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
