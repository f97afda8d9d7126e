#!/usr/bin/env python3
"""peers.py - jobpool beside the tools a user would pick instead, in one run.

    python3 tests/bench/peers.py [--rounds 3] [--noop 100000] [--command 2000]
                                 [--stored 1000000] [--out DIR]

Workloads, each on 2 workers / 2 processes:
  noop      N empty jobs: jobpool `noop` jobs in one batch (POST to the batch
            being terminal, every outcome committed; a new server and
            database each round) against
            multiprocessing.Pool(2).map(f, range(N), chunksize=1) and
            concurrent.futures.ProcessPoolExecutor(2).map(f, range(N))
  stored    the same jobpool batch on a database that already holds
            --stored finished jobs, against the empty database
  command   N runs of /bin/true: jobpool `command` jobs in one batch against
            `xargs -P2 -n1 /bin/true` and GNU `parallel -j2 /bin/true`
  get       GET /v1/jobs/{id} of random stored jobs (wrk, 2 threads, 50
            connections, 5 s) against libmicrohttpd's hello world (epoll, 2
            threads; tests/bench/hello.c, built as build/tests/bench/hello),
            and the same GETs while a batch of N noop jobs runs; p99 too

The tools run alternating, round after round, and the table reports the
median of the rounds per second and as a ratio to jobpool.  It is printed,
and written with an SVG chart to DIR (default tests/bench/) as peers.md and
peers.svg, which the README shows, with the server's RSS holding the stored
jobs.  Needs GNU parallel and wrk (apt-get install parallel wrk).  Every run
is bounded in time.
"""
import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import Server, server_binary  # noqa: E402

RUN_TIMEOUT = 600


def nothing(x):
    return x


def jobpool(srv, jobs):
    """Seconds from the POST of one batch of jobs to the batch being
    terminal (every job's outcome committed)."""
    t0 = time.monotonic()
    b = srv.ok("POST", "/v1/batches", {"jobs": jobs}, expect=201)
    deadline = t0 + RUN_TIMEOUT
    while time.monotonic() < deadline:
        st, _, got = srv.get("/v1/batches/%s?wait=30" % b["id"],
                             timeout=40)
        if got["state"] not in ("queued", "running"):
            assert got["state"] == "succeeded", got
            return time.monotonic() - t0
    raise AssertionError("batch not finished in %d s" % RUN_TIMEOUT)


def pool_map(n):
    t0 = time.monotonic()
    with multiprocessing.Pool(2) as p:
        p.map(nothing, range(n), chunksize=1)
    return time.monotonic() - t0


def executor_map(n):
    t0 = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        for _ in ex.map(nothing, range(n)):
            pass
    return time.monotonic() - t0


def shell(cmd, stdin):
    t0 = time.monotonic()
    subprocess.run(cmd, input=stdin, check=True, timeout=RUN_TIMEOUT,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


GET_LUA = """
local hi = tonumber(os.getenv("HI"))
request = function()
  return wrk.format("GET", string.format("/v1/jobs/j_%012d",
                                         math.random(1, hi)))
end
"""


def wrk(url, seconds, lua=None, env=None):
    """wrk -t2 -c50; returns (requests/s, p99 ms, errors)."""
    cmd = ["wrk", "-t2", "-c50", "-d%ds" % seconds, "--latency"]
    name = None
    if lua:
        with tempfile.NamedTemporaryFile("w", suffix=".lua",
                                         delete=False) as f:
            f.write(lua)
            name = f.name
        cmd += ["-s", name]
    out = subprocess.run(cmd + [url], env=dict(os.environ, **(env or {})),
                         capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    if name:
        os.unlink(name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: .*", out)
    return rps, p99, (int(bad.group(1)) if bad else 0) + (1 if errs else 0)


def hello_binary():
    return os.path.join(os.path.dirname(server_binary()), "..", "tests",
                        "bench", "hello")


def hello_get(seconds):
    """wrk against the hello world, started for this run only."""
    p = subprocess.Popen([hello_binary(), "0"], stdout=subprocess.PIPE,
                         text=True)
    try:
        port = int(p.stdout.readline().split()[1])
        return wrk("http://127.0.0.1:%d/" % port, seconds)
    finally:
        p.terminate()
        p.wait(10)


def server_args(n):
    return ["--allow-command", "--max-jobs-per-batch", str(n)]


def fresh_noop(n):
    """One noop batch on a new server with an empty database."""
    with Server(workers=2, args=server_args(n)) as srv:
        return jobpool(srv, [{"kind": "noop"}] * n)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(next(x for x in f if x.startswith("VmRSS:")).split()[1])


def get_during_batch(srv, n, seconds):
    """GETs while a batch of n noop jobs runs; the batch is waited for."""
    b = srv.ok("POST", "/v1/batches", {"jobs": [{"kind": "noop"}] * n},
               expect=201)
    r = wrk(srv.url, seconds, GET_LUA, {"HI": "2000"})
    left = srv.get("/v1/batches/%s" % b["id"])[2]["counts"]["queued"]
    wait_terminal(srv, b["id"])
    if left == 0:
        print("  (the batch ended before the GETs did: raise --noop)")
    return r


def wait_terminal(srv, bid):
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        got = srv.get("/v1/batches/%s?wait=30" % bid, timeout=40)[2]
        if got["state"] not in ("queued", "running"):
            return got
    raise AssertionError("batch not finished in %d s" % RUN_TIMEOUT)


def workloads(args, srv):
    """[(workload, n, unit, [(tool, fn)])]; fn returns seconds for n, or
    (rate, p99) for request workloads."""
    n, c = args.noop, args.command
    lines = "".join("%d\n" % i for i in range(c)).encode()
    return [
        ("noop", n, "jobs", [
            ("jobpool", lambda: fresh_noop(n)),
            ("Pool(2).map chunksize=1", lambda: pool_map(n)),
            ("ProcessPoolExecutor(2).map", lambda: executor_map(n)),
        ]),
        ("noop, %s jobs stored" % format(args.stored, ","), n, "jobs", [
            ("jobpool", lambda: jobpool(srv, [{"kind": "noop"}] * n)),
        ]),
        ("command /bin/true", c, "jobs", [
            ("jobpool", lambda: jobpool(srv, [
                {"kind": "command", "args": {"argv": ["/bin/true"]}}] * c)),
            ("xargs -P2 -n1", lambda: shell(
                ["xargs", "-P2", "-n1", "/bin/true"], lines)),
            ("parallel -j2", lambda: shell(
                ["parallel", "-j2", "/bin/true"], lines)),
        ]),
        ("GET /v1/jobs/{id}", 0, "requests", [
            ("jobpool", lambda: wrk(srv.url, 5, GET_LUA,
                                    {"HI": str(args.stored)})),
            ("MHD hello world", lambda: hello_get(5)),
        ]),
        ("GET during a %s-job batch" % format(n, ","), 0, "requests", [
            ("jobpool", lambda: get_during_batch(srv, n, 3)),
        ]),
    ]


def fill(srv, total, per):
    """Runs noop batches on srv until total jobs are stored."""
    t0 = time.monotonic()
    while total > 0:
        k = min(per, total)
        jobpool(srv, [{"kind": "noop"}] * k)
        total -= k
    return time.monotonic() - t0


def svg_chart(rows, stamp):
    """A horizontal bar chart, one group per workload; each group is scaled
    to its own longest bar.  stamp (date, machine) goes under the title."""
    width, bar, gap, left = 900, 22, 6, 230
    scale_w = width - left - 250
    y = 60
    out = []
    for name, n, unit, tools in rows:
        top = max(r for _, r, _ in tools)
        out.append('<text x="10" y="%d" font-weight="bold">%s</text>'
                   % (y, name + (", %s jobs" % format(n, ",") if n else "")))
        y += 12
        for tool, rate, p99 in tools:
            w = max(1, int(scale_w * rate / top))
            colour = "#2b6cb0" if tool == "jobpool" else "#a0aec0"
            label = "%s %s/s" % (format(int(rate), ","), unit)
            if p99 is not None:
                label += ", p99 %.1f ms" % p99
            out.append('<text x="10" y="%d">%s</text>' % (y + 16, tool))
            out.append('<rect x="%d" y="%d" width="%d" height="%d" '
                       'fill="%s"><title>%s: %s</title></rect>'
                       % (left, y, w, bar, colour, tool, label))
            out.append('<text x="%d" y="%d">%s</text>'
                       % (left + w + 6, y + 16, label))
            y += bar + gap
        y += 24
    head = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif" font-size="13">'
            '<rect width="100%%" height="100%%" fill="white"/>'
            '<text x="10" y="20" font-size="15">per second, median of the '
            'rounds (longer is better)</text>'
            '<text x="10" y="38" fill="#4a5568">measured %s</text>'
            % (width, y, stamp))
    return head + "".join(out) + "</svg>\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noop", type=int, default=100000)
    ap.add_argument("--command", type=int, default=2000)
    ap.add_argument("--stored", type=int, default=1000000)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    with Server(workers=2, args=server_args(max(args.noop,
                                                args.command))) as srv:
        took = fill(srv, args.stored, max(args.noop, args.command))
        print("stored %s finished noop jobs in %.1f s" % (
            format(args.stored, ","), took), flush=True)
        loads = workloads(args, srv)
        got = {(w, t): [] for w, _, _, tools in loads for t, _ in tools}
        for rnd in range(args.rounds):
            for w, n, unit, tools in loads:
                for t, fn in tools:
                    r = fn()
                    if isinstance(r, tuple):
                        rate, p99, errors = r
                        assert errors == 0, "%s: %d errors" % (t, errors)
                    else:
                        rate, p99 = n / r, None
                    got[(w, t)].append((rate, p99))
                    print("round %d  %-28s %-28s %9.0f %s/s%s"
                          % (rnd + 1, w, t, rate, unit,
                             "" if p99 is None else "  p99 %.2f ms" % p99),
                          flush=True)
        rss = rss_kb(srv.pid)
    rows = []
    md = ["| workload | tool | per second (median of %d) | jobpool ÷ tool |"
          % args.rounds, "| --- | --- | --- | --- |"]
    empty = None
    for w, n, unit, tools in loads:
        rates = []
        for t, _ in tools:
            rs = got[(w, t)]
            rate = statistics.median(r for r, _ in rs)
            p99 = None if rs[0][1] is None else \
                statistics.median(p for _, p in rs)
            rates.append((t, rate, p99))
        ours = rates[0][1]
        if empty is None:
            empty = ours
        rows.append((w, n, unit, rates))
        for t, r, p99 in rates:
            if t != "jobpool":
                ratio = "%.2f×" % (ours / r)
            elif unit == "jobs" and w.startswith("noop,"):
                ratio = "%+.1f%% vs the empty database" % (
                    (r / empty - 1) * 100)
            else:
                ratio = "—"
            md.append("| %s | %s | %s %s%s | %s |"
                      % (w + (", %s jobs" % format(n, ",") if n else ""), t,
                         format(int(r), ","), unit,
                         "" if p99 is None else ", p99 %.2f ms" % p99,
                         ratio))
    stamp = "%s, %s, %d cores, Python %s" % (
        datetime.date.today().isoformat(), platform.machine(),
        os.cpu_count(), platform.python_version())
    text = ("\n".join(md) + "\n\nServer RSS with %s jobs stored: %.1f MB."
            "\n\nMeasured %s.\n" % (format(args.stored + args.rounds * (
                2 * args.noop + args.command), ","), rss / 1024, stamp))
    print("\n" + text)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "peers.svg"), "w") as f:
        f.write(svg_chart(rows, stamp))


if __name__ == "__main__":
    main()
