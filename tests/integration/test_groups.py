"""Groups: short jobs handed to a worker many per message (protocol.h).

The worker protocol itself (group, drop, started, results) is checked on a
jobpool-worker started alone; then the server's side: the records of a
batch run in groups, a cancel of a job a worker holds but has not started,
a cancel of the group job running now, and a batch cancel racing groups.
"""

import json
import os
import re
import socket
import subprocess
import time

from harness import Server, server_binary, parse_ts, wait_until


def worker_binary():
    return os.path.join(os.path.dirname(server_binary()), "..", "workers",
                        "jobpool-worker")


class Worker:
    """One jobpool-worker on a SEQPACKET channel, as the server starts it."""

    def __init__(self):
        self.sock, child = socket.socketpair(socket.AF_UNIX,
                                             socket.SOCK_SEQPACKET)
        fd = child.fileno()
        self.proc = subprocess.Popen(
            [worker_binary(), "--parent", str(os.getpid())],
            pass_fds=(fd, 3), preexec_fn=lambda: os.dup2(fd, 3),
            stdin=subprocess.DEVNULL)
        child.close()
        self.sock.settimeout(10)
        assert self.recv()["t"] == "ready"

    def send(self, msg):
        self.sock.send(json.dumps(msg).encode())

    def recv(self):
        data = self.sock.recv(1 << 20)
        assert data, "the worker closed its channel"
        return json.loads(data)

    def close(self):
        self.sock.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def job(i, kind="noop", args=None):
    return {"job": "j_%012d" % i, "kind": kind, "args": args or {}}


def test_worker_group_protocol():
    """A group runs in order; a drop stops a job not started yet and not
    one already running; a job running past a millisecond is announced
    with "started" after the results of the jobs before it."""
    w = Worker()
    try:
        w.send({"t": "group", "jobs": [
            job(1), job(2, "sleep", {"seconds": 0.3}), job(3), job(4)]})
        # While job 2 sleeps: drop it (too late, it runs) and job 3.
        msgs = []
        while True:
            m = w.recv()
            msgs.append(m)
            if m["t"] == "started" and m["job"] == "j_000000000002":
                break
        assert m["run_us"] >= 1000 and m["started_us"] > 0, m
        # The results of job 1 came before the "started" of job 2 (job 1
        # may have been announced too, on a slow machine).
        res = [r["job"] for x in msgs if x["t"] == "results"
               for r in x["jobs"]]
        assert res == ["j_000000000001"], msgs
        assert msgs[-2]["t"] == "results", msgs
        w.send({"t": "drop", "job": "j_000000000002"})
        w.send({"t": "drop", "job": "j_000000000003"})
        w.send({"t": "drop", "job": "j_000000000099"})  # not held: ignored
        rs = {}
        while len(rs) < 3:
            m = w.recv()
            if m["t"] != "started":     # job 4 may run past 1 ms here
                rs.update((r["job"], r) for r in m["jobs"])
        assert list(rs) == ["j_000000000002", "j_000000000003",
                            "j_000000000004"], rs
        two = rs["j_000000000002"]
        assert two["ok"] is True and two["run_us"] >= 300000, two
        assert two["result"]["slept_ms"] >= 299, two
        assert rs["j_000000000003"] == {"job": "j_000000000003",
                                        "dropped": True}, m
        assert rs["j_000000000004"]["ok"] is True, m
        # started + run is the end: job 4 starts after job 2 ended.
        assert rs["j_000000000004"]["started_us"] >= \
            two["started_us"] + two["run_us"], rs
        # A failed job reports its error; a group may follow a group.
        w.send({"t": "group", "jobs": [job(5, "echo", {"bad": 1})]})
        w.send({"t": "group", "jobs": [job(6)]})
        got = []
        while len(got) < 2:
            m = w.recv()
            if m["t"] != "started":     # a slow machine may announce them
                got += m["jobs"]
        assert got[0]["job"] == "j_000000000005" and got[0]["ok"] is False \
            and "invalid args" in got[0]["error"], got
        assert got[1]["job"] == "j_000000000006" and got[1]["ok"], got
    finally:
        assert w.close() == 0


def test_worker_group_malformed():
    """A group the worker cannot take is a protocol error (exit 2)."""
    for bad in ({"t": "group", "jobs": []},
                {"t": "group", "jobs": [{"job": "j_000000000001"}]},
                {"t": "group", "jobs": [job(i) for i in range(65)]}):
        w = Worker()
        w.send(bad)
        assert w.proc.wait(timeout=10) == 2, bad
        w.sock.close()


def jobs_by_index(srv, bid):
    return {j["index"]: j for j in srv.jobs(bid)}


def grouped(srv):
    text = srv.get("/metrics")[2]
    if isinstance(text, bytes):
        text = text.decode()
    m = re.search(r"^jobpool_jobs_grouped_total (\d+)$", text, re.M)
    assert m, "no jobpool_jobs_grouped_total in /metrics"
    return int(m.group(1))


def test_group_batch_records():
    """A batch of short jobs runs in groups, and every job's record is what
    it would be one at a time: started/finished from the worker's clock,
    queue_ms to the real start, one history entry, and no two jobs of one
    worker overlapping."""
    n = 3000
    with Server(workers=2) as srv:
        b = srv.submit([{"kind": "noop"}] * n)
        fin = srv.wait_batch(b["id"], timeout=120)
        assert fin["state"] == "succeeded", fin
        assert fin["counts"]["succeeded"] == n, fin
        assert grouped(srv) > n // 2, "the batch hardly used groups"
        js = srv.jobs(b["id"])
        assert len(js) == n
        per_worker = {}
        for j in js:
            assert j["state"] == "succeeded" and j["attempts"] == 1, j
            assert j["result"] == {} and j["error"] is None, j
            cr, st, fi = (parse_ts(j[k]) for k in
                          ("created_at", "started_at", "finished_at"))
            assert cr <= st <= fi, j
            t = j["timings"]
            assert abs(t["queue_ms"] - (st - cr) * 1000) <= 1.001, j
            assert 0 <= t["run_ms"] <= (fi - st) * 1000 + 1.001, j
            assert t["max_rss_kb"] > 0, j
            assert len(j["history"]) == 1, j
            h = j["history"][0]
            assert h["state"] == "succeeded" and h["attempt"] == 1 and \
                h["started_at"] == j["started_at"] and \
                h["finished_at"] == j["finished_at"] and \
                h["run_ms"] == t["run_ms"] and h["worker"] == j["worker"], j
            per_worker.setdefault(j["worker"]["pid"], []).append((st, fi, j))
        assert len(per_worker) <= 2, list(per_worker)
        # One worker runs one job at a time: its jobs, in start order,
        # never overlap (times are cut to the millisecond, which keeps the
        # order), so at most 2 ran at any instant.
        for pid, lst in per_worker.items():
            lst.sort(key=lambda x: (x[0], x[1]))
            for a, c in zip(lst, lst[1:]):
                assert a[1] <= c[0], "worker %d ran %s and %s at once" % (
                    pid, json.dumps(a[2]), json.dumps(c[2]))
        tm = fin["timings"]
        total = sum(j["timings"]["run_ms"] for j in js)
        assert abs(tm["total_run_ms"] - total) <= 1, (tm, total)


def held_batch(srv, sleep_at, seconds=1.0):
    """A batch whose job sleep_at sleeps: 16 noops first (8 to learn the
    run time, then groups of 4), then job 16 (sleep_at) in the group
    [16, 17, 18, 19]."""
    jobs = [{"kind": "noop"} for _ in range(24)]
    jobs[sleep_at] = {"kind": "sleep", "args": {"seconds": seconds}}
    b = srv.submit(jobs)
    sid = b["job_ids"][sleep_at]
    srv.wait_job_state(sid, "running", timeout=20)
    return b


def test_group_cancel_held_job_never_runs():
    """A job a worker holds in its group but has not started, once
    canceled, ends canceled without having run; the job running before it
    and those after it run as usual."""
    with Server(workers=1, args=["--group-max", "4"]) as srv:
        b = held_batch(srv, 16)
        ids = b["job_ids"]
        # Job 18 is held behind the sleeping job 16: still queued.
        assert srv.job(ids[18])["state"] == "queued"
        st, _, body = srv.post("/v1/jobs/%s/cancel" % ids[18])
        assert st in (200, 202), (st, body)
        fin = srv.wait_batch(b["id"], timeout=30)
        js = jobs_by_index(srv, b["id"])
        c = js[18]
        assert c["state"] == "canceled", c
        assert c["started_at"] is None and c["attempts"] == 0 and \
            c["history"] == [] and c["worker"] is None, c
        assert c["error"] == "canceled before it started", c
        for i in range(24):
            if i != 18:
                assert js[i]["state"] == "succeeded" and \
                    js[i]["attempts"] == 1, js[i]
        s = js[16]
        assert s["timings"]["run_ms"] >= 1000, s
        # Job 16 was shown running from its real start: job 17 started
        # after it ended.
        assert parse_ts(js[17]["started_at"]) >= parse_ts(s["finished_at"])
        assert fin["counts"]["canceled"] == 1 and \
            fin["counts"]["succeeded"] == 23, fin
        assert grouped(srv) >= 4


def test_group_cancel_running_head():
    """Canceling the group job that runs now stops it (its worker is
    killed, as for any function kind); the jobs the worker held go back to
    the queue, run one at a time, and each runs once."""
    with Server(workers=1, args=["--group-max", "4"]) as srv:
        b = held_batch(srv, 16, seconds=30)
        ids = b["job_ids"]
        j = srv.job(ids[16])
        assert j["state"] == "running" and j["started_at"], j
        st, _, body = srv.post("/v1/jobs/%s/cancel" % ids[16])
        assert st in (200, 202), (st, body)
        fin = srv.wait_batch(b["id"], timeout=30)
        js = jobs_by_index(srv, b["id"])
        c = js[16]
        assert c["state"] == "canceled" and c["attempts"] == 1, c
        assert [h["state"] for h in c["history"]] == ["canceled"], c
        for i in list(range(16)) + list(range(17, 24)):
            assert js[i]["state"] == "succeeded", js[i]
            assert js[i]["attempts"] == 1 and len(js[i]["history"]) == 1, \
                js[i]
        assert fin["counts"]["succeeded"] == 23, fin


def test_group_batch_cancel():
    """A batch canceled while its jobs run in groups: every job either ran
    (succeeded, with its record) or never started (canceled, no start, no
    attempt); the counts agree with the jobs."""
    n = 20000
    with Server(workers=2) as srv:
        # noop: on a loaded machine even a 0.2 ms sleep may average over
        # the 1 ms that groups take
        b = srv.submit([{"kind": "noop"}] * n)
        wait_until(lambda: srv.batch(b["id"])["counts"]["succeeded"] > 500,
                   30, what="500 jobs done")
        st, _, body = srv.post("/v1/batches/%s/cancel" % b["id"])
        assert st in (200, 202), (st, body)
        fin = srv.wait_batch(b["id"], timeout=60)
        assert fin["state"] == "canceled", fin
        js = srv.jobs(b["id"])
        ran = never = 0
        for j in js:
            if j["state"] == "succeeded":
                assert j["started_at"] and j["attempts"] == 1 and \
                    len(j["history"]) == 1, j
                ran += 1
            else:
                assert j["state"] == "canceled", j
                if j["history"]:
                    # a function job stopped while it ran
                    assert j["history"][-1]["state"] == "canceled", j
                else:
                    assert j["started_at"] is None and \
                        j["attempts"] == 0, j
                    never += 1
        c = fin["counts"]
        assert c["succeeded"] == ran and c["canceled"] == n - ran, (c, ran)
        assert ran >= 500 and never > 0, (ran, never)
        assert grouped(srv) > 0, "no group was handed: the test's premise"


def test_group_kill9_loses_nothing():
    """kill -9 of the server while a batch runs in groups: after the
    restart every job ends once, none is left running, and a job its
    worker held without reporting ran again as its first recorded attempt
    (its row never left the queue)."""
    n = 30000
    with Server(workers=2) as first:
        b = first.submit([{"kind": "noop"}] * n)
        wait_until(lambda: first.batch(b["id"])["counts"]["succeeded"]
                   > 3000, 30, what="3000 jobs done")
        assert grouped(first) > 0
        first.kill9()
        with Server(workers=2, tmpdir=first.tmpdir) as second:
            fin = second.wait_batch(b["id"], timeout=120)
            js = second.jobs(b["id"])
            assert len(js) == n
            for j in js:
                if j["state"] == "succeeded":
                    assert j["attempts"] == 1 and len(j["history"]) == 1, j
                else:
                    # a job the worker had announced as started
                    assert j["state"] == "failed" and \
                        j["error"] == "interrupted", j
            c = fin["counts"]
            assert c["running"] == 0 and c["queued"] == 0, fin
            assert c["succeeded"] + c["failed"] == n, fin
            assert c["succeeded"] == sum(j["state"] == "succeeded"
                                         for j in js), fin


def test_group_job_that_kills_its_worker():
    """A job of a group that kills its worker (a crash, an exit) is not
    told apart from the jobs the worker held: they all go back to the
    queue, the batch goes on one job at a time, and the culprit gets its
    own outcome (its retry too) while every other job succeeds once."""
    jobs = [{"kind": "noop"} for _ in range(40)]
    jobs[13] = {"kind": "fail", "args": {"mode": "crash"}}
    jobs[22] = {"kind": "fail", "args": {"mode": "exit", "code": 3},
                "max_attempts": 2, "retry_on": [3], "retry_backoff_s": 0.01}
    with Server(workers=1, args=["--group-max", "4"]) as srv:
        b = srv.submit(jobs)
        fin = srv.wait_batch(b["id"], timeout=60)
        js = jobs_by_index(srv, b["id"])
        crash = js[13]
        assert crash["state"] == "failed" and crash["signal"] == "SIGSEGV" \
            and crash["attempts"] == 1 and len(crash["history"]) == 1, crash
        ex = js[22]
        assert ex["state"] == "failed" and ex["exit_code"] == 3 and \
            ex["attempts"] == 2, ex
        assert [h["exit_code"] for h in ex["history"]] == [3, 3], ex
        for i, j in js.items():
            if i not in (13, 22):
                assert j["state"] == "succeeded" and j["attempts"] == 1 \
                    and len(j["history"]) == 1, j
        assert fin["counts"]["failed"] == 2 and \
            fin["counts"]["succeeded"] == 38, fin
        assert grouped(srv) >= 4


FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "fake_worker.py")


def test_group_cancel_of_held_jobs_survives_kill9():
    """A cancel of jobs a worker holds is stored before the worker answers
    it: if the server dies first, the restart ends them canceled, never
    started (a job canceled alone, and a batch canceled whole)."""
    for whole in (False, True):
        with Server(workers=1, args=["--worker-bin", FAKE],
                    env={"FAKE_WORKER_MODE": "hold"}) as first:
            b = first.submit([{"kind": "noop"}] * 12)
            ids = b["job_ids"]
            wait_until(lambda: first.batch(b["id"])["counts"]["succeeded"]
                       == 8, 20, what="8 single jobs done")
            wait_until(lambda: grouped(first) == 4, 20, what="a group")
            path = ("/v1/batches/%s/cancel" % b["id"]) if whole else \
                ("/v1/jobs/%s/cancel" % ids[9])
            st, _, body = first.post(path)
            assert st == 200, (st, body)
            first.kill9()
            with Server(workers=1, tmpdir=first.tmpdir) as second:
                second.wait_batch(b["id"], timeout=30)
                js = jobs_by_index(second, b["id"])
                for i in range(8, 12):
                    j = js[i]
                    if whole or i == 9:
                        assert j["state"] == "canceled" and \
                            j["started_at"] is None and \
                            j["attempts"] == 0, (whole, j)
                    else:
                        assert j["state"] == "succeeded" and \
                            j["attempts"] == 1, (whole, j)


def test_group_kill_for_one_job_spares_the_next():
    """The worker is killed to cancel the head of its group, but the head
    ends first and the next job starts before the worker dies: the head
    keeps its real outcome, and the next job, which nobody canceled, goes
    back to the queue (its attempt not counted) and runs."""
    # A long grace: the fake worker answers SIGTERM from a Python signal
    # handler, which a loaded machine may not schedule within 2 s (the
    # SIGKILL after the grace then ends the head canceled, another race).
    with Server(workers=1, args=["--worker-bin", FAKE,
                                 "--kill-grace-ms", "15000"],
                env={"FAKE_WORKER_MODE": "race"}) as srv:
        b = srv.submit([{"kind": "noop"}] * 12)
        ids = b["job_ids"]
        srv.wait_job_state(ids[8], "running", timeout=20)
        st, _, body = srv.post("/v1/jobs/%s/cancel" % ids[8])
        assert st == 200, (st, body)
        fin = srv.wait_batch(b["id"], timeout=30)
        js = jobs_by_index(srv, b["id"])
        assert js[8]["state"] == "succeeded", js[8]
        for i in range(9, 12):
            assert js[i]["state"] == "succeeded" and \
                js[i]["attempts"] == 1 and len(js[i]["history"]) == 1, js[i]
        assert fin["counts"]["succeeded"] == 12, fin
