"""Batches: the seed workload, throughput, ordering, priority, kinds, pool."""

import heapq
import time

from harness import (Server, parse_ts, is_number, pid_alive, wait_until,
                     BATCH_ID_RE, JOB_ID_RE, JOB_STATES)

SEED_SECONDS = [2.92, 1.08, 1.83, 1.67, 3.21, 3.03, 3.68, 1.26, 2.27, 1.09,
                1.66, 2.52, 1.08, 1.60, 2.95]
SCALE = 0.1


def list_schedule(durations, slots):
    """Makespan of FIFO list scheduling: each job, in order, goes to the slot
    that frees first."""
    free = [0.0] * slots
    end = 0.0
    for d in durations:
        t = heapq.heappop(free)
        heapq.heappush(free, t + d)
        end = max(end, t + d)
    return end


def max_overlap(intervals):
    """Largest number of [start, end) intervals open at once."""
    ev = []
    for s, e in intervals:
        ev.append((s, 1))
        ev.append((e, -1))
    ev.sort(key=lambda x: (x[0], x[1]))    # an end sorts before a start
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def check_job_shape(j):
    for f in ("id", "batch_id", "index", "name", "kind", "args", "state",
              "attempts", "max_attempts", "retry_on", "retry_backoff_s",
              "timeout_s", "created_at", "started_at", "finished_at",
              "timings", "worker", "exit_code", "signal", "error", "result",
              "output", "history"):
        assert f in j, "job %s lacks field %r: %r" % (j.get("id"), f, j)
    assert JOB_ID_RE.match(j["id"]), j["id"]
    assert j["state"] in JOB_STATES, j["state"]
    assert isinstance(j["history"], list)
    for f in ("queue_ms", "run_ms", "user_cpu_ms", "sys_cpu_ms",
              "max_rss_kb"):
        assert f in j["timings"], "job timings lack %r: %r" % (f, j["timings"])


def check_batch_shape(b):
    for f in ("id", "name", "state", "concurrency", "priority", "created_at",
              "started_at", "finished_at", "counts", "progress", "timings"):
        assert f in b, "batch lacks field %r: %r" % (f, b)
    assert BATCH_ID_RE.match(b["id"]), b["id"]
    for f in ("total", "queued", "running", "succeeded", "failed",
              "timed_out", "canceled"):
        assert isinstance(b["counts"].get(f), int), \
            "batch counts.%s: %r" % (f, b["counts"])
    for f in ("makespan_ms", "total_run_ms", "total_cpu_ms", "parallelism"):
        assert f in b["timings"], "batch timings lack %r" % f


def test_seed_workload():
    secs = [round(s * SCALE, 4) for s in SEED_SECONDS]
    with Server(workers=6) as srv:
        jobs = [{"kind": "sleep", "args": {"seconds": s}, "name": "w%d" % i}
                for i, s in enumerate(secs)]
        t_submit = time.time()
        b = srv.submit(jobs, name="seed", concurrency=5)
        check_batch_shape(b)
        assert b["concurrency"] == 5 and b["name"] == "seed", b
        assert b["counts"]["total"] == 15, b["counts"]
        ids = b["job_ids"]
        assert all(JOB_ID_RE.match(i) for i in ids), ids
        assert len(set(ids)) == 15 and ids == sorted(ids), \
            "job ids not unique/in creation order: %r" % ids

        fin = srv.wait_batch(b["id"], timeout=20)
        assert fin["state"] == "succeeded", fin
        check_batch_shape(fin)
        c = fin["counts"]
        assert c["succeeded"] == 15 and c["total"] == 15 and \
            sum(c[k] for k in ("queued", "running", "failed", "timed_out",
                               "canceled")) == 0, c
        assert fin["progress"] == 1, fin["progress"]
        for f in ("created_at", "started_at", "finished_at"):
            parse_ts(fin[f])

        js = srv.jobs(b["id"])
        assert [j["index"] for j in js] == list(range(15)), \
            [j["index"] for j in js]
        assert [j["id"] for j in js] == ids, "jobs not in job_ids order"
        assert [j["name"] for j in js] == ["w%d" % i for i in range(15)]
        intervals = []
        for j, s in zip(js, secs):
            check_job_shape(j)
            assert j["state"] == "succeeded", j
            assert j["kind"] == "sleep" and j["args"] == {"seconds": s}, j
            assert j["batch_id"] == b["id"], j
            assert j["attempts"] == 1 and j["max_attempts"] == 1, j
            assert j["error"] is None and j["exit_code"] in (None, 0) \
                and j["signal"] is None, j
            assert isinstance(j["result"], dict) and \
                is_number(j["result"].get("slept_ms")) and \
                j["result"]["slept_ms"] >= s * 1000 - 1, j["result"]
            cr, st, fi = (parse_ts(j[k]) for k in
                          ("created_at", "started_at", "finished_at"))
            assert t_submit - 1 <= cr <= st <= fi, j
            t = j["timings"]
            for f in ("queue_ms", "run_ms", "user_cpu_ms", "sys_cpu_ms"):
                assert is_number(t[f]) and t[f] >= 0, \
                    "job %d timings.%s = %r" % (j["index"], f, t[f])
            assert isinstance(t["max_rss_kb"], int) and t["max_rss_kb"] > 0, t
            assert t["run_ms"] >= s * 1000 - 1, \
                "job %d ran %r ms for a %.3f s sleep" % (j["index"],
                                                         t["run_ms"], s)
            assert abs(t["queue_ms"] - (st - cr) * 1000) <= 3, \
                "job %d queue_ms %r but started-created = %.0f ms" % (
                    j["index"], t["queue_ms"], (st - cr) * 1000)
            assert abs(t["run_ms"] - (fi - st) * 1000) <= 10, \
                "job %d run_ms %r but finished-started = %.0f ms" % (
                    j["index"], t["run_ms"], (fi - st) * 1000)
            w = j["worker"]
            assert isinstance(w, dict) and isinstance(w.get("slot"), int) \
                and 0 <= w["slot"] < 6 and isinstance(w.get("pid"), int) \
                and w["pid"] > 0, "job %d worker %r" % (j["index"], w)
            assert len(j["history"]) == 1 and \
                j["history"][0].get("state") == "succeeded", j["history"]
            intervals.append((st, fi))

        ov = max_overlap(intervals)
        assert ov <= 5, "%d jobs of a concurrency-5 batch ran at once" % ov
        assert ov == 5, "at most %d jobs ran at once, expected 5" % ov

        tm = fin["timings"]
        L = list_schedule(secs, 5) * 1000
        assert is_number(tm["makespan_ms"]), tm
        assert L - 5 <= tm["makespan_ms"] <= L + 250, \
            "makespan %.1f ms, FIFO list schedule %.1f ms" % (
                tm["makespan_ms"], L)
        span = (max(i[1] for i in intervals) - min(i[0] for i in intervals))
        assert abs(tm["makespan_ms"] - span * 1000) <= 3, \
            "makespan_ms %r vs first start->last finish %.0f ms" % (
                tm["makespan_ms"], span * 1000)
        total_run = sum(j["timings"]["run_ms"] for j in js)
        assert abs(tm["total_run_ms"] - total_run) <= 1, \
            "total_run_ms %r, sum of run_ms %r" % (tm["total_run_ms"],
                                                   total_run)
        assert is_number(tm["total_cpu_ms"]) and tm["total_cpu_ms"] >= 0, tm
        p = tm["parallelism"]
        assert is_number(p) and 1 <= p <= 5.001, "parallelism %r" % p
        assert abs(p - tm["total_run_ms"] / tm["makespan_ms"]) <= 0.01, tm
        print("    seed: makespan %.1f ms (list schedule %.1f ms), "
              "parallelism %.2f" % (tm["makespan_ms"], L, p))


def test_noop_10000_throughput():
    n = 10000
    with Server(workers=None) as srv:
        size = srv.pool()["size"]
        t0 = time.monotonic()
        b = srv.submit([{"kind": "noop"}] * n)
        t1 = time.monotonic()
        fin = srv.wait_batch(b["id"], timeout=100)
        t2 = time.monotonic()
        assert fin["state"] == "succeeded", fin
        assert fin["counts"]["succeeded"] == n, fin["counts"]
        js = srv.jobs(b["id"], limit=1000)
        assert [j["index"] for j in js] == list(range(n)), \
            "jobs list of %d jobs not 0..%d in order" % (len(js), n - 1)
        assert all(j["state"] == "succeeded" and j["result"] == {}
                   for j in js), "a noop job did not succeed with {}"
        print("    noop: %d jobs, pool %d, submit %.2f s, run %.2f s -> "
              "%.0f jobs/s" % (n, size, t1 - t0, t2 - t1, n / (t2 - t0)))


test_noop_10000_throughput.timeout = 150


def test_echo_results_in_submission_order():
    values = [0, 1, -7, 12345678901, 1.5, "a", "héllo ✓", "", True, False,
              [1, 2, [3]], {"k": "v", "n": {"x": 1}}, [], {}, "z" * 500,
              {"i": 15}, [None], 3.25, "last-but-one", "last"]
    with Server(workers=3) as srv:
        b = srv.submit([{"kind": "echo", "args": {"value": v}}
                        for v in values])
        fin = srv.wait_batch(b["id"], timeout=20)
        assert fin["state"] == "succeeded", fin
        js = srv.jobs(b["id"])
        assert [j["id"] for j in js] == b["job_ids"]
        for i, (j, v) in enumerate(zip(js, values)):
            assert j["index"] == i, j
            assert j["name"] is None, j
            assert j["result"] == {"value": v}, \
                "job %d: result %r, expected value %r" % (i, j["result"], v)
            single = srv.job(j["id"])
            assert single["result"] == {"value": v}, single


def test_priority_runs_first():
    with Server(workers=1) as srv:
        low = srv.submit([{"kind": "sleep", "args": {"seconds": 0.3}}] * 5,
                         name="low")
        wait_until(lambda: srv.batch(low["id"])["counts"]["running"] >= 1,
                   5, 0.01, "the low batch to start")
        high = srv.submit([{"kind": "sleep", "args": {"seconds": 0.05}}] * 2,
                          name="high", priority=10)
        assert high["priority"] == 10 and low["priority"] == 0, \
            (high["priority"], low["priority"])
        hfin = srv.wait_batch(high["id"], timeout=10)
        lfin = srv.wait_batch(low["id"], timeout=10)
        assert hfin["state"] == "succeeded" and lfin["state"] == "succeeded"
        hcreated = parse_ts(high["created_at"])
        hstarts = [parse_ts(j["started_at"]) for j in srv.jobs(high["id"])]
        lstarts = [parse_ts(j["started_at"]) for j in srv.jobs(low["id"])]
        remaining = [t for t in lstarts if t > hcreated]
        assert len(remaining) >= 3, \
            "only %d low jobs were still queued when the high batch came" \
            % len(remaining)
        assert max(hstarts) <= min(remaining), \
            "a low-priority job started at %.3f before the last " \
            "high-priority job (%.3f)" % (min(remaining), max(hstarts))


def test_primes_and_matmul():
    with Server(workers=2) as srv:
        b = srv.submit([
            {"kind": "primes", "args": {"below": 100000}},
            {"kind": "matmul", "args": {"n": 8}},
            {"kind": "matmul", "args": {"n": 8, "seed": 7}},
            {"kind": "matmul", "args": {"n": 8, "seed": 7}},
            {"kind": "primes", "args": {"below": 2}},
        ])
        fin = srv.wait_batch(b["id"], timeout=30)
        assert fin["state"] == "succeeded", fin
        js = srv.jobs(b["id"])
        assert js[0]["result"] == {"count": 9592}, js[0]["result"]
        assert js[4]["result"] == {"count": 0}, js[4]["result"]
        for j in js[1:4]:
            r = j["result"]
            assert isinstance(r, dict) and set(r) == {"checksum"} and \
                is_number(r["checksum"]), "matmul result %r" % (r,)
        assert js[2]["result"] == js[3]["result"], \
            "matmul not deterministic: %r vs %r" % (js[2]["result"],
                                                    js[3]["result"])
        assert fin["timings"]["total_cpu_ms"] >= 0, fin["timings"]


def test_pool():
    with Server(workers=3) as srv:
        p = srv.wait_pool_ready(3)
        assert p["size"] == 3 and p["busy"] == 0 and p["idle"] == 3, p
        ws = p["workers"]
        assert sorted(w["slot"] for w in ws) == [0, 1, 2], ws
        pids = [w["pid"] for w in ws]
        assert len(set(pids)) == 3 and srv.pid not in pids, pids
        for w in ws:
            assert pid_alive(w["pid"]), "worker pid %r not alive" % w["pid"]
            assert w["job_id"] is None and isinstance(w["jobs_done"], int), w
            parse_ts(w["started_at"])
            assert w["rss_kb"] is None or isinstance(w["rss_kb"], int), w

        b = srv.submit([{"kind": "sleep", "args": {"seconds": 0.6}}] * 2)

        def two_busy():
            q = srv.pool()
            return q if q["busy"] == 2 else None
        q = wait_until(two_busy, 5, 0.02, "2 busy workers")
        assert q["size"] == 3 and q["idle"] == 1, q
        busy = [w for w in q["workers"] if w["state"] == "busy"]
        assert sorted(w["job_id"] for w in busy) == sorted(b["job_ids"]), q
        srv.wait_batch(b["id"], timeout=10)
        done = srv.wait_pool_ready(3)
        assert sum(w["jobs_done"] for w in done["workers"]) >= 2, done
        assert sorted(w["pid"] for w in done["workers"]) == sorted(pids), \
            "workers were replaced after normal jobs: %r -> %r" % (
                pids, [w["pid"] for w in done["workers"]])
