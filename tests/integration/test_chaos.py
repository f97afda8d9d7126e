"""Chaos: kill -9 the server again and again under load; nothing acked is lost.

Every round starts jobpoold on the same database, lets 4-6 client threads
POST batches over keep-alive connections, then SIGKILLs the server at a
random moment.  Between rounds, with no server running, the SQLite file
must pass PRAGMA integrity_check; after each restart every batch that ever
got a 201 must be there exactly once with exactly its jobs, no job may be
`running` without a worker holding it, and no job may have more attempts
than max_attempts.  At the end everything must run to completion.

Knobs (environment): CHAOS_SEED (default: random, printed), CHAOS_ROUNDS
(default 20).
"""

import http.client
import json
import os
import random
import sqlite3
import threading
import time

from harness import (Server, TERMINAL_BATCH, BATCH_ID_RE, JOB_ID_RE,
                     kill_pids, pid_alive, proc_stat, wait_pids_gone)

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "20"))
WORKERS = 2
LOAD_MIN_S, LOAD_MAX_S = 0.3, 1.2     # load before the kill, per round
CLIENTS_MIN, CLIENTS_MAX = 4, 6
MAX_BATCHES_PER_CLIENT = 400          # per round; bounds every client loop
CLIENT_PAUSE_S = (0.01, 0.05)          # between two POSTs of one client
CLIENT_TIMEOUT_S = 10.0               # socket timeout of a client request
JOIN_TIMEOUT_S = 15.0
SAMPLE_OLD = 25                       # old batches whose jobs are re-read
# The largest max_attempts; a job would have to be running at more than
# that many kills to fail, so it must end succeeded.
HIGH_ATTEMPTS = 100
FINAL_WAIT_S = 60.0


class Ledger:
    """What the clients know.  acked: name -> record of a 201; unknown:
    name -> record of a POST whose outcome is unknown (connection failed);
    absent: unknown names found missing after a restart (must never show
    up later)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}
        self.unknown = {}
        self.absent = set()
        self.appeared = set()     # unknown names found stored (then acked)
        self.requests = 0
        self.unknown_total = 0
        self.pre_kill_errors = []  # connection errors while not yet killed
        self.failures = []        # protocol violations seen by clients


def make_batch(rng, name):
    n = min(50, int(50.99 ** rng.random()))   # 1..50, mostly small
    low = rng.random() < 0.2       # default max_attempts (1) or 2
    max_attempts = rng.choice((1, 2)) if low else HIGH_ATTEMPTS
    jobs = []
    for i in range(n):
        x = rng.random()
        if x < 0.04:
            j = {"kind": "sleep",
                 "args": {"seconds": rng.choice((0.01, 0.02, 0.03, 0.05))}}
        elif x < 0.5:
            j = {"kind": "noop"}
        else:
            j = {"kind": "echo", "args": {"value": "%s#%d" % (name, i)}}
        if max_attempts != 1:
            j["max_attempts"] = max_attempts
            j["retry_backoff_s"] = 0
        jobs.append(j)
    body = {"name": name, "jobs": jobs}
    if rng.random() < 0.2:
        body["priority"] = rng.randint(-5, 5)
    return body


class Client(threading.Thread):
    def __init__(self, port, tag, rnd, cid, seed, ledger, killed, stop_at):
        threading.Thread.__init__(self, daemon=True,
                                  name="chaos-r%d-c%d" % (rnd, cid))
        self.port = port
        self.tag = tag
        self.rnd = rnd
        self.cid = cid
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.killed = killed
        self.stop_at = stop_at

    def run(self):
        L = self.ledger
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=CLIENT_TIMEOUT_S)
        try:
            for seq in range(MAX_BATCHES_PER_CLIENT):
                if time.monotonic() >= self.stop_at:
                    break
                name = "%s-r%02d-c%d-s%04d" % (self.tag, self.rnd, self.cid,
                                               seq)
                body = make_batch(self.rng, name)
                data = json.dumps(body).encode()
                with L.lock:
                    L.requests += 1
                try:
                    conn.request("POST", "/v1/batches", body=data, headers={
                        "Content-Type": "application/json"})
                    resp = conn.getresponse()
                    payload = resp.read()
                    status = resp.status
                    location = resp.getheader("Location")
                except (OSError, http.client.HTTPException) as e:
                    with L.lock:
                        L.unknown[name] = {"n": len(body["jobs"]),
                                           "body": body, "round": self.rnd}
                        L.unknown_total += 1
                        if not self.killed.is_set():
                            L.pre_kill_errors.append("%s: %r" % (name, e))
                    return
                err = None
                try:
                    b = json.loads(payload.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    b = None
                if status != 201:
                    err = "POST %s: status %d: %r" % (name, status,
                                                      payload[:300])
                elif not isinstance(b, dict) or \
                        not BATCH_ID_RE.match(str(b.get("id"))) or \
                        b.get("name") != name or \
                        not isinstance(b.get("job_ids"), list) or \
                        len(b["job_ids"]) != len(body["jobs"]) or \
                        not all(isinstance(j, str) and JOB_ID_RE.match(j)
                                for j in b["job_ids"]) or \
                        (b.get("counts") or {}).get("total") != \
                        len(body["jobs"]) or \
                        location != "/v1/batches/%s" % b.get("id"):
                    err = "POST %s: bad 201 (Location %r): %r" % (
                        name, location, payload[:300])
                with L.lock:
                    if err:
                        L.failures.append(err)
                        return
                    L.acked[name] = {"id": b["id"], "n": len(body["jobs"]),
                                     "job_ids": list(b["job_ids"]),
                                     "body": body, "round": self.rnd}
                lo, hi = CLIENT_PAUSE_S
                if hi > 0:
                    time.sleep(self.rng.uniform(lo, hi))
        finally:
            conn.close()


class Http:
    """Keep-alive client for the verification requests (server must be up)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def get(self, path, timeout=30.0):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=timeout)
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == 0 and isinstance(
                        e, (http.client.RemoteDisconnected,
                            BrokenPipeError, ConnectionResetError)):
                    continue           # an idle keep-alive connection closed
                raise AssertionError("GET %s failed: %r" % (path, e))
            assert resp.status == 200, "GET %s: %d %r" % (
                path, resp.status, payload[:300])
            return json.loads(payload.decode("utf-8"))

    def pages(self, path):
        """All items of a paginated list (limit=1000)."""
        out = []
        after = None
        sep = "&" if "?" in path else "?"
        for _ in range(10000):
            q = "%s%slimit=1000" % (path, sep)
            if after is not None:
                q += "&after=" + after
            b = self.get(q)
            out.extend(b["items"])
            after = b["next_cursor"]
            if after is None:
                return out
        raise AssertionError("pagination of %s never ended" % path)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------- checks

def integrity_check(db):
    """PRAGMA integrity_check on the file of a stopped server."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        con.close()
    assert rows == [("ok",)], "PRAGMA integrity_check: %r" % (rows[:20],)
    assert fk == [], "PRAGMA foreign_key_check: %r" % (fk[:20],)


def procs_with_cwd(path):
    """{pid: starttime} of processes whose cwd is path (the server runs in
    its tmpdir, and so do the workers it spawns)."""
    out = {}
    me = os.getpid()
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == me:
            continue
        try:
            if os.readlink("/proc/%s/cwd" % e) != path:
                continue
        except OSError:
            continue
        st = proc_stat(int(e))
        if st is not None and st[0] not in ("Z", "X", "x"):
            out[int(e)] = st[2]
    return out


def check_job(j, rec, i, name):
    """A listed job against what was submitted."""
    spec = rec["body"]["jobs"][i]
    where = "batch %s (%s) job %d %s" % (rec["id"], name, i, j.get("id"))
    assert j["index"] == i and j["batch_id"] == rec["id"], \
        "%s: index/batch_id %r/%r" % (where, j["index"], j["batch_id"])
    assert j["kind"] == spec["kind"], "%s: kind %r, submitted %r" % (
        where, j["kind"], spec["kind"])
    if "args" in spec:
        assert j["args"] == spec["args"], "%s: args %r, submitted %r" % (
            where, j["args"], spec["args"])
    want_max = spec.get("max_attempts", 1)
    assert j["max_attempts"] == want_max, "%s: max_attempts %r, sent %r" % (
        where, j["max_attempts"], want_max)
    assert isinstance(j["attempts"], int) and \
        0 <= j["attempts"] <= j["max_attempts"], \
        "%s: attempts %r > max_attempts %r (state %s)" % (
            where, j["attempts"], j["max_attempts"], j["state"])


def check_running(h, srv, running, dead_pids):
    """Every job in `running` (job dicts seen as running) must be held by a
    worker of this server's pool; jobs that moved on meanwhile are fine."""
    pending = list(running)
    pool = None
    for _ in range(6):
        if not pending:
            return
        pool = h.get("/v1/pool")
        held = {w["job_id"]: w for w in pool["workers"] if w.get("job_id")}
        still = []
        for j in pending:
            w = held.get(j["id"])
            if w is not None and pid_alive(w["pid"]) and \
                    not pid_alive(w["pid"], dead_pids.get(w["pid"], -1)):
                continue
            j2 = h.get("/v1/jobs/" + j["id"])
            if j2["state"] != "running":
                continue
            still.append(j2)
        pending = still
        if pending:
            time.sleep(0.05)
    if pending:
        j = pending[0]
        raise AssertionError(
            "%d job(s) running without a worker holding them, e.g. %s "
            "(batch %s, attempts %s, worker %r, started_at %s); pool: %s"
            % (len(pending), j["id"], j["batch_id"], j["attempts"],
               j.get("worker"), j.get("started_at"),
               json.dumps(pool["workers"])))


def verify(srv, ledger, rnd, rng, dead_pids, full=False):
    """After a restart: acked batches present once with exactly their jobs;
    unknown ones present at most once; nothing else; running jobs held."""
    h = Http(srv.port)
    try:
        batches = h.pages("/v1/batches")
        by_name = {}
        for b in batches:
            by_name.setdefault(b["name"], []).append(b)
        dups = {n: [x["id"] for x in v] for n, v in by_name.items()
                if len(v) > 1}
        assert not dups, "batch name(s) stored more than once: %s" % (
            json.dumps(dict(list(dups.items())[:5])))
        ids = [b["id"] for b in batches]
        assert len(set(ids)) == len(ids), "a batch id listed twice"
        with ledger.lock:
            acked = dict(ledger.acked)
            unknown = dict(ledger.unknown)
            absent = set(ledger.absent)
        missing = [n for n in acked if n not in by_name]
        assert not missing, \
            "%d acknowledged batch(es) lost after kill -9, e.g. %s (%s, " \
            "acked in round %d)" % (len(missing), missing[0],
                                    acked[missing[0]]["id"],
                                    acked[missing[0]]["round"])
        fresh = []                       # batches to re-read jobs of
        for name, b in by_name.items():
            b = b[0]
            c = b["counts"]
            assert sum(c[k] for k in ("queued", "running", "succeeded",
                                      "failed", "timed_out",
                                      "canceled")) == c["total"], \
                "batch %s counts do not add up: %r" % (b["id"], c)
            if b["state"] in TERMINAL_BATCH:
                assert c["queued"] == 0 and c["running"] == 0, \
                    "terminal batch %s with unfinished jobs: %r" % (
                        b["id"], c)
            if name in acked:
                rec = acked[name]
                assert b["id"] == rec["id"], \
                    "batch %s is stored as %s, acked as %s" % (
                        name, b["id"], rec["id"])
                assert c["total"] == rec["n"], \
                    "batch %s (%s): counts.total %d, %d jobs acked" % (
                        b["id"], name, c["total"], rec["n"])
                if rec["round"] == rnd or full:
                    fresh.append(name)
            elif name in unknown:
                rec = unknown[name]
                assert c["total"] == rec["n"], \
                    "unacked batch %s (%s) stored with %d jobs, %d sent" % (
                        b["id"], name, c["total"], rec["n"])
                fresh.append(name)
            elif name in absent:
                raise AssertionError(
                    "batch %s (%s) appeared after an earlier restart had "
                    "shown it was not stored" % (b["id"], name))
            else:
                raise AssertionError("batch %s has name %r that no client "
                                     "sent" % (b["id"], name))
        # outcomes of the unknown requests are now known, for good
        with ledger.lock:
            for name, rec in unknown.items():
                del ledger.unknown[name]
                if name in by_name:
                    b = by_name[name][0]
                    ledger.appeared.add(name)
                    ledger.acked[name] = {"id": b["id"], "n": rec["n"],
                                          "job_ids": None,
                                          "body": rec["body"],
                                          "round": rec["round"]}
                else:
                    ledger.absent.add(name)
            acked = dict(ledger.acked)
        # running jobs: only where a batch is not terminal
        running = []
        for b in batches:
            if b["state"] == "running" or b["counts"]["running"]:
                running.extend(h.pages("/v1/batches/%s/jobs?state=running"
                                       % b["id"]))
        # jobs, exactly as submitted: this round's batches, the ones whose
        # outcome was unknown, and a sample of older ones (all when full)
        old = [n for n in acked if n not in fresh]
        rng.shuffle(old)
        for name in fresh + old[:SAMPLE_OLD]:
            rec = acked[name]
            js = h.pages("/v1/batches/%s/jobs" % rec["id"])
            got = [j["id"] for j in js]
            if rec["job_ids"] is None:       # an unknown that was stored
                assert len(got) == rec["n"] and len(set(got)) == len(got), \
                    "batch %s (%s): %d job ids for %d jobs" % (
                        rec["id"], name, len(got), rec["n"])
                with ledger.lock:
                    ledger.acked[name]["job_ids"] = got
            else:
                assert got == rec["job_ids"], \
                    "batch %s (%s): jobs %d listed vs %d acked; lost %s, " \
                    "extra %s" % (rec["id"], name, len(got),
                                  len(rec["job_ids"]),
                                  sorted(set(rec["job_ids"]) - set(got))[:5],
                                  sorted(set(got) - set(rec["job_ids"]))[:5])
            for i, j in enumerate(js):
                check_job(j, rec, i, name)
                if j["state"] == "running":
                    running.append(j)
        check_running(h, srv, running, dead_pids)
        return batches
    finally:
        h.close()


# ---------------------------------------------------------------- the test

def kill_round(srv, dead_pids):
    """kill -9 the server; its workers must be gone within 2 s."""
    kids = srv.kill9()
    kids.update(procs_with_cwd(os.path.realpath(srv.tmpdir)))
    kids.pop(srv.pid, None)
    dead_pids.update(kids)
    left = wait_pids_gone(kids, 2.0)
    if left:
        info = {p: (proc_stat(p) or ("?", "?", "?"))[:2] for p in left}
        kill_pids(left)
        raise AssertionError("process(es) of the killed jobpoold still ran "
                             "2 s after kill -9: %r (pid: (state, ppid))"
                             % info)
    srv.check_stderr()
    return len(kids)


def run_load(srv, rnd, rng, tag, ledger):
    """Clients POST until the server is killed; returns after the kill."""
    killed = threading.Event()
    load_s = rng.uniform(LOAD_MIN_S, LOAD_MAX_S)
    stop_at = time.monotonic() + load_s + 5.0   # clients' own bound
    clients = [Client(srv.port, tag, rnd, cid, rng.getrandbits(32), ledger,
                      killed, stop_at)
               for cid in range(rng.randint(CLIENTS_MIN, CLIENTS_MAX))]
    for c in clients:
        c.start()
    time.sleep(load_s)
    killed.set()
    return clients, killed


def join_clients(clients):
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for c in clients:
        c.join(max(0.0, deadline - time.monotonic()))
    alive = [c.name for c in clients if c.is_alive()]
    assert not alive, "client threads did not stop after the kill: %s" % alive


def final_check(srv, ledger):
    """Everything runs to completion; jobs with enough attempts succeed."""
    h = Http(srv.port)
    try:
        deadline = time.monotonic() + FINAL_WAIT_S
        for _ in range(10000):
            open_ = h.pages("/v1/batches?state=queued") + \
                h.pages("/v1/batches?state=running")
            if not open_:
                break
            rem = deadline - time.monotonic()
            assert rem > 0, "%d batch(es) still not terminal %.0f s after " \
                "the last restart, e.g. %s" % (len(open_), FINAL_WAIT_S,
                                               json.dumps(open_[0])[:400])
            # newest last in FIFO order: wait on the newest open batch
            newest = max(open_, key=lambda b: b["id"])
            w = min(rem, 10.0)
            h.get("/v1/batches/%s?wait=%.3f" % (newest["id"], w),
                  timeout=w + 15)
        else:
            raise AssertionError("final wait loop never ended")
        with ledger.lock:
            acked = dict(ledger.acked)
        jobs_total = 0
        notes = []
        for name, rec in acked.items():
            b = h.get("/v1/batches/" + rec["id"])
            js = h.pages("/v1/batches/%s/jobs" % rec["id"])
            assert [j["id"] for j in js] == rec["job_ids"], \
                "batch %s (%s): job ids changed" % (rec["id"], name)
            all_ok = True
            for i, j in enumerate(js):
                check_job(j, rec, i, name)
                jobs_total += 1
                spec = rec["body"]["jobs"][i]
                if j["state"] != "succeeded":
                    all_ok = False
                    # only an interrupted job that had used every attempt
                    assert j["max_attempts"] < HIGH_ATTEMPTS and \
                        j["state"] == "failed" and \
                        j["error"] == "interrupted" and \
                        j["attempts"] == j["max_attempts"], \
                        "job %s of batch %s (%s) ended %s: %s" % (
                            j["id"], rec["id"], name, j["state"],
                            json.dumps(j)[:600])
                elif spec["kind"] == "echo":
                    assert j["result"] == {"value": spec["args"]["value"]}, \
                        "job %s: result %r" % (j["id"], j["result"])
                # every finished attempt, interrupted ones too, is one
                # entry of history
                assert len(j["history"]) == j["attempts"], \
                    "job %s %s: attempts %d, history %d" % (
                        j["id"], j["state"], j["attempts"],
                        len(j["history"]))
            want = "succeeded" if all_ok else "failed"
            assert b["state"] == want, "batch %s (%s) is %s, its jobs say " \
                "%s: %r" % (rec["id"], name, b["state"], want, b["counts"])
        return jobs_total, notes
    finally:
        h.close()


def test_kill9_chaos():
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom()
               .getrandbits(32))
    rng = random.Random(seed)
    tag = "chaos%08x" % seed
    ledger = Ledger()
    dead_pids = {}
    kills = 0
    reaped = 0
    t_verify = t_final = 0.0
    t_start = time.monotonic()
    srv = None
    try:
        with Server(workers=WORKERS) as first:
            db = first.db
            srv = first
            for rnd in range(ROUNDS):
                if rnd > 0:
                    srv = Server(workers=WORKERS, tmpdir=first.tmpdir)
                    t0 = time.monotonic()
                    verify(srv, ledger, rnd - 1, rng, dead_pids)
                    t_verify += time.monotonic() - t0
                clients, _ = run_load(srv, rnd, rng, tag, ledger)
                try:
                    reaped += kill_round(srv, dead_pids)
                    kills += 1
                finally:
                    join_clients(clients)
                with ledger.lock:
                    assert not ledger.failures, ledger.failures[0]
                integrity_check(db)
            srv = Server(workers=WORKERS, tmpdir=first.tmpdir)
            t0 = time.monotonic()
            verify(srv, ledger, ROUNDS - 1, rng, dead_pids, full=True)
            jobs_total, notes = final_check(srv, ledger)
            t_final = time.monotonic() - t0
            srv.stop(expect_rc=0)           # exit 0, no child left
            srv = None
            integrity_check(db)
    except BaseException:
        if srv is not None and srv.running():
            srv.abort()
        print("chaos: CHAOS_SEED=%d (rerun with it to repeat the load)"
              % seed)
        raise
    with ledger.lock:
        assert not ledger.unknown
        n_acked = len(ledger.acked) - len(ledger.appeared)
        jobs_acked = sum(r["n"] for n, r in ledger.acked.items()
                         if n not in ledger.appeared)
        print("chaos: seed %d, %d rounds, %d batches acknowledged (%d jobs), "
              "%d requests, %d with unknown outcome (%d of them stored, "
              "%d connection errors before a kill), %d kills (%d worker "
              "processes seen gone), %d jobs "
              "checked at the end, %.1f s (%.1f s verifying restarts, "
              "%.1f s final drain and check)"
              % (seed, ROUNDS, n_acked, jobs_acked, ledger.requests,
                 ledger.unknown_total, len(ledger.appeared),
                 len(ledger.pre_kill_errors), kills, reaped, jobs_total,
                 time.monotonic() - t_start, t_verify, t_final))
        if ledger.pre_kill_errors:
            print("chaos: NOTE connection errors before the kill: %s"
                  % "; ".join(ledger.pre_kill_errors[:3]))
        if notes:
            print("chaos: NOTE history length != attempts: %s"
                  % "; ".join(notes))


test_kill9_chaos.timeout = max(240, 12 * ROUNDS)
