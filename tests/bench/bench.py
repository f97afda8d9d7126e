#!/usr/bin/env python3
"""bench.py - the benchmark suite: speed and timing accuracy, not behaviour.

    python3 tests/bench/bench.py [seed] [noop] [accept]

Each benchmark starts its own jobpoold (JOBPOOLD, default build/server/
jobpoold) on a free loopback port with a temp database, prints what it
measured and whether it met its target, and stops the server.  Exit status
is 1 when a target was missed.  Timing targets live here, not in the test
suite, because the machines the tests run on are shared and noisy.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Server  # noqa: E402

SEED = [2.92, 1.08, 1.83, 1.67, 3.21, 3.03, 3.68, 1.26, 2.27, 1.09, 1.66,
        2.52, 1.08, 1.60, 2.95]


def list_schedule(durations, slots):
    """FIFO list schedule: each job, in order, goes to the slot free first."""
    free = [0.0] * slots
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def wait_done(srv, bid, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st, _, b = srv.request("GET", "/v1/batches/%s?wait=30" % bid)
        if b["state"] not in ("queued", "running"):
            return b
    raise RuntimeError("batch %s did not finish" % bid)


def bench_seed():
    """The seed's Pool(5) example, unscaled: makespan vs the list schedule."""
    with Server(workers=5) as srv:
        b = srv.submit([{"kind": "sleep", "args": {"seconds": s}}
                        for s in SEED], concurrency=5)
        b = wait_done(srv, b["id"])
        ideal = list_schedule(SEED, 5) * 1000
        got = b["timings"]["makespan_ms"]
        ok = b["state"] == "succeeded" and abs(got - ideal) <= 50
        print("seed: makespan %.1f ms, FIFO list schedule %.1f ms, "
              "off by %+.1f ms (target within 50 ms): %s"
              % (got, ideal, got - ideal, "ok" if ok else "MISSED"))
        return ok


def bench_noop(n=10000):
    """One batch of n noop jobs on the default pool: run rate."""
    with Server(workers=None) as srv:
        t0 = time.monotonic()
        b = srv.submit([{"kind": "noop"}] * n)
        t1 = time.monotonic()
        b = wait_done(srv, b["id"])
        t2 = time.monotonic()
        ok = b["counts"]["succeeded"] == n
        print("noop: %d jobs on %d workers: accepted in %.3f s, all done "
              "%.3f s after submission -> %.0f jobs/s end to end "
              "(makespan %.0f ms -> %.0f jobs/s run rate): %s"
              % (n, len(srv.get("/v1/pool")[2]["workers"]), t1 - t0,
                 t2 - t0, n / (t2 - t0), b["timings"]["makespan_ms"],
                 n / b["timings"]["makespan_ms"] * 1000,
                 "ok" if ok else "MISSED"))
        return ok


def bench_accept(n=10000, rounds=7):
    """Durable acceptance of one n-job batch (no job runs: pool of 1 busy
    worker would still dispatch, so the rate is the POST's wall time)."""
    with Server(workers=1) as srv:
        jobs = [{"kind": "noop"}] * n
        times = []
        for _ in range(rounds):
            t0 = time.monotonic()
            st, _, b = srv.request("POST", "/v1/batches", body={"jobs": jobs})
            times.append(time.monotonic() - t0)
            assert st == 201, st
        med = statistics.median(times)
        rate = n / med
        ok = rate >= 250000
        print("accept: %d-job batch, median %.1f ms over %d rounds (best "
              "%.1f ms) -> %.0f jobs/s accepted durably (target 250000): %s"
              % (n, med * 1000, rounds, min(times) * 1000, rate,
                 "ok" if ok else "MISSED"))
        return ok


BENCHES = {"seed": bench_seed, "noop": bench_noop, "accept": bench_accept}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHES)
    results = [BENCHES[name]() for name in names]
    print("bench: %d met, %d missed" % (results.count(True),
                                         results.count(False)))
    sys.exit(0 if all(results) else 1)
