#!/usr/bin/env python3
"""bench.py - the benchmark suite: speed and timing accuracy, not behaviour.

    python3 tests/bench/bench.py [seed] [noop] [cpu] [accept] [submit] [scale]
                                [exposure] [memory]

submit, scale and memory drive the server with wrk (apt-get install wrk).

Each benchmark starts its own jobpoold (JOBPOOLD, default build/server/
jobpoold) on a free loopback port with a temp database, prints what it
measured and whether it met its target, and stops the server.  Exit status
is 1 when a target was missed.  Timing targets live here, not in the test
suite, because the machines the tests run on are shared and noisy.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


def bench_cpu(jobs=8, below=200000000):
    """CPU-bound jobs (primes) on 1 worker, then on 2: the speedup."""
    def makespan(workers):
        with Server(workers=workers) as srv:
            b = srv.submit([{"kind": "primes", "args": {"below": below}}] *
                           jobs)
            fin = wait_done(srv, b["id"])
            assert fin["counts"]["succeeded"] == jobs, fin
            return fin["timings"]["makespan_ms"]
    runs = [(makespan(1), makespan(2)) for _ in range(3)]
    one = statistics.median(a for a, _ in runs)
    two = statistics.median(b for _, b in runs)
    ok = one / two >= 1.95
    print("cpu: %d primes jobs: makespan %.0f ms on 1 worker, %.0f ms on 2 "
          "(medians of 3): speedup %.2fx (target >= 1.95x): %s"
          % (jobs, one, two, one / two, "ok" if ok else "MISSED"))
    return ok


def bench_accept(n=10000, rounds=7):
    """Durable acceptance of one n-job batch (no job runs: pool of 1 busy
    worker would still dispatch, so the rate is the POST's wall time)."""
    with Server(workers=1) as srv:
        # Encoded before the clock starts: the client's json.dumps is not
        # the server's time (as in cluster.py's accept).
        raw = json.dumps({"jobs": [{"kind": "noop"}] * n}).encode()
        hdrs = {"Content-Type": "application/json"}
        times = []
        for _ in range(rounds):
            t0 = time.monotonic()
            st, _, b = srv.request("POST", "/v1/batches", raw=raw,
                                   headers=hdrs)
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


POST_LUA = """
wrk.method = "POST"
wrk.body = '{"jobs":[{"kind":"noop"}]}'
wrk.headers["Content-Type"] = "application/json"
"""

GET_LUA = """
local lo = tonumber(os.getenv("LO"))
local hi = tonumber(os.getenv("HI"))
request = function()
  return wrk.format("GET", string.format("/v1/jobs/j_%012d", math.random(lo, hi)))
end
"""


def wrk(url, lua, seconds, conns, env=None):
    """Runs wrk; returns (requests/s, mean latency ms, non-2xx count)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    e = dict(os.environ, **(env or {}))
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds,
                          "--latency", "-s", f.name, url], env=e,
                         capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    ms = float(lat.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[lat.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: .*", out)
    return rps, ms, (int(bad.group(1)) if bad else 0) + (1 if errs else 0)


def bench_submit(seconds=10):
    """Durable 1-job batches from 50 concurrent keep-alive clients.  The
    caps are raised: this measures acceptance, not back-pressure (at this
    rate the default --max-open-batches is reached in a few seconds)."""
    with Server(workers=None, args=["--max-open-batches", "10000000"]) as srv:
        rps, ms, bad = wrk(srv.url + "/v1/batches", POST_LUA, seconds, 50)
        ok = rps >= 5000 and bad == 0
        print("submit: 1-job batches, 50 keep-alive clients, %d s: %.0f "
              "durable batches/s, mean latency %.2f ms, %d failed "
              "(target 5000/s): %s" % (seconds, rps, ms, bad,
                                       "ok" if ok else "MISSED"))
        return ok


MIXED_LUA = """
-- 10% POST /v1/batches with 2 noop jobs, 90% GET of a batch or a job seen
local maxb, maxj = 0, 0
local body = '{"jobs":[{"kind":"noop"},{"kind":"noop"}]}'
request = function()
  local r = math.random(100)
  if r <= 10 or maxb == 0 then
    return wrk.format("POST", "/v1/batches",
                      {["Content-Type"] = "application/json"}, body)
  elseif r <= 55 then
    return wrk.format("GET", string.format("/v1/batches/b_%012d",
                                           math.random(1, maxb)))
  end
  return wrk.format("GET", string.format("/v1/jobs/j_%012d",
                                         math.random(1, maxj)))
end
response = function(status, headers, body)
  if status == 201 then
    local b = tonumber(string.match(body, '"id":"b_(%d+)"'))
    if b and b > maxb then maxb = b end
    for j in string.gmatch(body, 'j_(%d+)') do
      if tonumber(j) > maxj then maxj = tonumber(j) end
    end
  end
end
"""


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


def gauges(srv):
    text = srv.get("/metrics")[2]
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"^(jobpool_[a-z_]+) (\d+)$", text, re.M)}


def bench_memory(rounds=7, warmup=3, seconds=15):
    """Steady mixed load in consecutive rounds: wrk, 50 connections, 10%
    POST of 2-job batches, 90% GET of batches and jobs; the server's
    anonymous RSS after each round.  --max-open-batches 2000: on two cores
    wrk submits faster than the jobs run, and the backlog would grow (up to
    the default 100,000 open batches, 64 bytes each in the scheduler) and
    hide whether anything else grows; with it, batches are accepted as
    fast as they finish (the rest get 429), a steady state.  Target: after
    the warm-up rounds, each round's RSS within 5% of the one before."""
    with Server(workers=None, args=["--max-open-batches", "2000"]) as srv:
        rss = []
        before = gauges(srv).get("jobpool_batches_submitted_total", 0)
        for r in range(rounds):
            rps, ms, bad = wrk(srv.url, MIXED_LUA, seconds, 50)
            time.sleep(1)
            g = gauges(srv)
            rss.append(rss_anon_kb(srv.pid))
            done = g.get("jobpool_batches_submitted_total", 0)
            print("memory: round %d%s: %.0f req/s, %d batches accepted, "
                  "%d refused; RssAnon %d kB; event window %s events, %s "
                  "bytes; SQLite %s bytes; scheduler %s batches"
                  % (r + 1, " (warm-up)" if r < warmup else "", rps,
                     done - before, bad, rss[-1],
                     g.get("jobpool_events_buffered", "?"),
                     g.get("jobpool_events_buffered_bytes", "?"),
                     g.get("jobpool_sqlite_memory_bytes", "?"),
                     g.get("jobpool_scheduler_batches", "?")))
            before = done
        steps = [rss[i] / rss[i - 1] - 1 for i in range(warmup, rounds)]
        ok = all(abs(x) <= 0.05 for x in steps)
        print("memory: RssAnon %s kB; after warm-up, round to round %s "
              "(target within 5%%): %s"
              % (" -> ".join(str(x) for x in rss),
                 ", ".join("%+.1f%%" % (x * 100) for x in steps),
                 "ok" if ok else "MISSED"))
        return ok


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def bench_scale(batches=100, per=10000, seconds=5):
    """GET /v1/jobs/{id} latency and dispatch rate with 1,000 jobs stored
    versus 1,000,000; the server's memory before and after."""
    def measure(srv, lo, hi):
        return wrk(srv.url, GET_LUA, seconds, 10,
                   env={"LO": str(lo), "HI": str(hi)})

    def run_rate(srv):
        b = srv.submit([{"kind": "noop"}] * 10000)
        fin = wait_done(srv, b["id"])
        return 10000 / fin["timings"]["makespan_ms"] * 1000

    with Server(workers=2) as srv:
        small = srv.submit([{"kind": "noop"}] * 1000)
        wait_done(srv, small["id"])
        rate_small = run_rate(srv)
        rps1, ms1, _ = measure(srv, 1, 1000)
        rss1 = rss_kb(srv.pid)
        # keep the pool busy so the million jobs stay stored and queued
        srv.request("PUT", "/v1/pool", body={"size": 1})
        block = srv.submit([{"kind": "sleep", "args": {"seconds": 3600}}],
                           priority=1000)
        t0 = time.monotonic()
        for i in range(batches):
            srv.submit([{"kind": "noop"}] * per)
        fill = time.monotonic() - t0
        total = 1000 + 10000 + 1 + batches * per
        rps2, ms2, _ = measure(srv, 1, total)
        rss2 = rss_kb(srv.pid)
        srv.post("/v1/batches/%s/cancel" % block["id"])
        st, _, page = srv.get("/v1/batches?limit=1000&state=queued")
        for b in page["items"]:
            srv.post("/v1/batches/%s/cancel" % b["id"])
        srv.request("PUT", "/v1/pool", body={"size": 2})
        rate_big = run_rate(srv)
        ok = ms2 <= ms1 * 1.2 and rate_big >= rate_small * 0.8
        print("scale: %d jobs stored in %.1f s; GET /v1/jobs/{id}: %.3f ms "
              "mean (%.0f req/s) with 1,000 jobs, %.3f ms (%.0f req/s) with "
              "%d (%+.0f%%); 10,000-job run rate %.0f -> %.0f jobs/s; server "
              "RSS %d -> %d kB (target within 20%%): %s"
              % (total, fill, ms1, rps1, ms2, rps2, total,
                 (ms2 / ms1 - 1) * 100, rate_small, rate_big, rss1, rss2,
                 "ok" if ok else "MISSED"))
        return ok


def _flood(port, conns, stop, tries):
    """conns threads that each send 16 MiB bodies without a token until
    stop (a monotonic time); the number of uploads goes to tries."""
    import socket
    import threading
    head = (b"POST /v1/batches HTTP/1.1\r\nHost: b\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n" % (16 << 20))
    chunk = b" " * 65536
    count = [0]

    def one():
        while time.monotonic() < stop:
            s = None
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(head)
                sent = 0
                while sent < 16 << 20 and time.monotonic() < stop:
                    sent += s.send(chunk)
            except OSError:
                pass
            finally:
                if s:
                    s.close()
            count[0] += 1
            time.sleep(0.5)     # then tries again, like a retrying client
    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    tries.value += count[0]


def bench_exposure(conns=200, seconds=10):
    """conns clients without the token (in two processes of their own), each
    trying to send 16 MiB bodies over and over for a bounded time, against
    a server with --token; /healthz is timed meanwhile from another loopback
    address by this process."""
    import multiprocessing
    import socket
    with Server(workers=1, args=["--token", "bench"]) as srv:
        rss0 = rss_kb(srv.pid)
        stop = time.monotonic() + seconds
        tries = multiprocessing.Value("l", 0)
        procs = [multiprocessing.Process(target=_flood, args=(
            srv.port, conns // 2, stop, tries)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(1)
        lat = []
        while time.monotonic() < stop - 0.5:
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            t0 = time.monotonic()
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
            got = s.recv(4096)
            lat.append((time.monotonic() - t0) * 1000)
            s.close()
            assert got.startswith(b"HTTP/1.1 200"), got
            time.sleep(0.02)
        for p in procs:
            p.join(40)
        with open("/proc/%d/status" % srv.pid) as f:
            hwm = int(next(x for x in f if x.startswith("VmHWM:")).split()[1])
        lat.sort()
        p99 = lat[int(len(lat) * 0.99)]
        ok = hwm < 64 * 1024 and p99 < 10
        print("exposure: %d token-less clients trying to send 16 MiB bodies "
              "for %d s (%d uploads refused): server RSS %d kB, peak %d kB "
              "(target < 65536); /healthz from another address p50 %.2f ms, "
              "p99 %.2f ms, max %.2f ms over %d probes (target p99 < 10): %s"
              % (conns, seconds, tries.value, rss0, hwm, lat[len(lat) // 2],
                 p99, lat[-1], len(lat), "ok" if ok else "MISSED"))
        return ok


BENCHES = {"seed": bench_seed, "noop": bench_noop, "cpu": bench_cpu,
           "accept": bench_accept,
           "submit": bench_submit, "scale": bench_scale,
           "exposure": bench_exposure, "memory": bench_memory}

if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHES)
    results = [BENCHES[name]() for name in names]
    print("bench: %d met, %d missed" % (results.count(True),
                                         results.count(False)))
    sys.exit(0 if all(results) else 1)
