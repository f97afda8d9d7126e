#!/usr/bin/env python3
"""cluster.py - several jobpoold nodes on one PostgreSQL, measured.

    python3 tests/bench/cluster.py [--rounds 3] [--noop 20000] [--accept 100000]
                                   [--latency-seconds 20] [--kills 20]
                                   [--workers 2] [--out DIR]

Starts its own throwaway PostgreSQL 15 (tests/pg/pgtmp.py) with durable
settings (fsync and synchronous_commit on), a fresh database per run, and
measures (SCALEOUT.md's B2-B5):
  noop      one batch of --noop noop jobs, POST to terminal: 1 node on
            SQLite, 1 node on PostgreSQL, 3 nodes on PostgreSQL
  latency   one 1-job batch 50 times a second for --latency-seconds, each to
            a random node of 3: the jobs' queue_ms (claim latency: from the
            commit of the submission to the start on a worker), p50 and p99
  accept    the 201 of one --accept-job batch: jobs accepted per second
  rescue    --kills times: a node running jobs killed with SIGKILL; seconds
            from the kill until every job it ran is queued again (the lost
            attempt's end in the job's history), max and median
Prints a table and writes it to DIR/cluster.md (default tests/bench/).
Every wait is bounded; every process is ended by PID.
"""
import argparse
import datetime
import json
import os
import platform
import random
import signal
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.pop("JOBPOOL_TEST_PG", None)    # the nodes get this run's database
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "pg"))
from harness import Server  # noqa: E402
import pgtmp  # noqa: E402

DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


def parse_time(s):
    d = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


def nodes(pg, n, workers, extra=()):
    url = pg.create_db()
    return [Server(workers=workers, args=["--db", url, "--node-name",
                                          "n%d" % (i + 1)] + list(extra))
            for i in range(n)]


def stop_all(servers):
    for s in servers:
        if s.running():
            try:
                s.stop(check_children=False)
            except Exception:
                s.proc.kill()


def wait_batch(srv, bid, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = srv.ok("GET", "/v1/batches/%s?wait=30" % bid)
        if b["state"] not in ("queued", "running"):
            return b
    raise RuntimeError("batch %s did not end in %ds" % (bid, timeout))


def run_noop(servers, n):
    t0 = time.monotonic()
    b = servers[0].ok("POST", "/v1/batches",
                      {"jobs": [{"kind": "noop"}] * n}, expect=201)
    b = wait_batch(servers[0], b["id"])
    assert b["state"] == "succeeded", b
    return n / (time.monotonic() - t0)


def bench_noop(pg, args):
    out = {"sqlite, 1 node": [], "postgresql, 1 node": [],
           "postgresql, 3 nodes": []}
    for _ in range(args.rounds):
        for name, count in (("sqlite, 1 node", 0), ("postgresql, 1 node", 1),
                            ("postgresql, 3 nodes", 3)):
            if count == 0:
                servers = [Server(workers=args.workers)]
            else:
                servers = nodes(pg, count, args.workers)
            try:
                out[name].append(run_noop(servers, args.noop))
            finally:
                stop_all(servers)
    return {k: statistics.median(v) for k, v in out.items()}


def bench_latency(pg, args):
    servers = nodes(pg, 3, args.workers)
    ids = []
    try:
        end = time.monotonic() + args.latency_seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            s = random.choice(servers)
            b = s.ok("POST", "/v1/batches", {"jobs": [{"kind": "noop"}]},
                     expect=201)
            ids.append(b["job_ids"][0])
            nxt += 0.02
            time.sleep(max(0.0, nxt - time.monotonic()))
        q = []
        for j in ids:
            deadline = time.monotonic() + 30
            while True:
                job = servers[0].ok("GET", "/v1/jobs/%s?wait=10" % j)
                if job["state"] == "succeeded":
                    q.append(job["timings"]["queue_ms"])
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("job %s did not end" % j)
        q.sort()
        return {"n": len(q), "p50": q[len(q) // 2],
                "p99": q[min(len(q) - 1, int(len(q) * 0.99))]}
    finally:
        stop_all(servers)


def bench_accept(pg, args):
    servers = nodes(pg, 1, args.workers, ["--max-jobs-per-batch",
                                          str(max(args.accept, 100000))])
    try:
        rates = []
        # Encoded before the clock starts: Python's json.dumps of 100,000
        # jobs alone takes ~165 ms here, which is the client's time, not
        # the server's.
        raw = json.dumps({"jobs": [{"kind": "sleep", "args": {"seconds": 0}}]
                          * args.accept}).encode()
        hdrs = {"Content-Type": "application/json"}
        for _ in range(args.rounds):
            t0 = time.monotonic()
            b = servers[0].ok("POST", "/v1/batches", raw=raw, headers=hdrs,
                              expect=201)
            rates.append(args.accept / (time.monotonic() - t0))
            servers[0].ok("POST", "/v1/batches/%s/cancel" % b["id"])
        return statistics.median(rates)
    finally:
        stop_all(servers)


def bench_rescue(pg, args):
    delays = []
    for k in range(args.kills):
        servers = nodes(pg, 2, args.workers)
        try:
            b = servers[0].ok("POST", "/v1/batches", {"jobs": [
                {"kind": "sleep", "args": {"seconds": 60}, "max_attempts": 2}
                for _ in range(2 * args.workers)]}, expect=201)
            # wait until every job runs, half of them on the victim
            deadline = time.monotonic() + 20
            while True:
                jobs = servers[0].ok("GET", "/v1/batches/%s/jobs" %
                                     b["id"])["items"]
                if all(j["state"] == "running" for j in jobs):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("jobs did not all start")
                time.sleep(0.05)
            victim = servers[1]
            lost = [j["id"] for j in jobs if j["worker"]["node"] == "n2"]
            time.sleep(random.uniform(0, 1.0))
            t_kill = time.time()
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(10)
            worst = 0.0
            for j in lost:
                deadline = time.monotonic() + 20
                while True:
                    job = servers[0].ok("GET", "/v1/jobs/%s" % j)
                    if job["history"]:
                        worst = max(worst, parse_time(
                            job["history"][0]["finished_at"]) - t_kill)
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("job %s not rescued" % j)
                    time.sleep(0.05)
            delays.append(worst)
            servers[0].ok("POST", "/v1/batches/%s/cancel" % b["id"])
        finally:
            stop_all(servers)
        print("  kill %d: rescued in %.2f s" % (k + 1, delays[-1]),
              flush=True)
    return delays


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noop", type=int, default=20000)
    ap.add_argument("--accept", type=int, default=100000)
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    rows = []
    with pgtmp.PgServer(extra_opts=DURABLE) as pg:
        noop = bench_noop(pg, args)
        for k, v in noop.items():
            rows.append(("noop %d jobs, %s" % (args.noop, k),
                         "%.0f jobs/s" % v))
        print(rows[-3:], flush=True)
        lat = bench_latency(pg, args)
        rows.append(("claim latency (queue_ms), %d 1-job batches, 3 nodes"
                     % lat["n"], "p50 %.2f ms, p99 %.2f ms" %
                     (lat["p50"], lat["p99"])))
        print(rows[-1], flush=True)
        acc = bench_accept(pg, args)
        rows.append(("accept one %d-job batch (201)" % args.accept,
                     "%.0f jobs/s" % acc))
        print(rows[-1], flush=True)
        if args.kills:
            d = bench_rescue(pg, args)
            rows.append(("rescue after kill -9, %d kills" % len(d),
                         "max %.2f s, median %.2f s, %d of %d within 5 s" %
                         (max(d), statistics.median(d),
                          sum(1 for x in d if x <= 5.0), len(d))))
    when = datetime.date.today().isoformat()
    text = ["Measured %s on %s (%d cores), PostgreSQL 15 durable (fsync on), "
            "%d workers per node, medians of %d rounds:" %
            (when, platform.machine(), os.cpu_count(), args.workers,
             args.rounds), "", "| measure | result |", "| --- | --- |"]
    text += ["| %s | %s |" % r for r in rows]
    print("\n".join(text))
    with open(os.path.join(args.out, "cluster.md"), "w") as f:
        f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
