#!/usr/bin/env python3
"""peers.py - jobpool beside the tools a user would pick instead, in one run.

    python3 tests/bench/peers.py [--rounds 3] [--noop 100000] [--command 2000]
                                 [--out DIR]

Workloads, each on 2 workers / 2 processes:
  noop      N empty jobs: jobpool `noop` jobs in one batch (POST to the batch
            being terminal, every outcome committed) against
            multiprocessing.Pool(2).map(f, range(N), chunksize=1) and
            concurrent.futures.ProcessPoolExecutor(2).map(f, range(N))
  command   N runs of /bin/true: jobpool `command` jobs in one batch against
            `xargs -P2 -n1 /bin/true` and GNU `parallel -j2 /bin/true`

The tools run alternating, round after round, and the table reports the
median of the rounds in jobs per second and as a ratio to jobpool.  It is
printed, and written with an SVG chart to DIR (default tests/bench/) as
peers.md and peers.svg, which the README shows.  Needs GNU parallel
(apt-get install parallel).  Every run is bounded in time.
"""
import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import Server  # noqa: E402

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


def workloads(args, srv):
    n, c = args.noop, args.command
    lines = "".join("%d\n" % i for i in range(c)).encode()
    return [
        ("noop", n, [
            ("jobpool", lambda: jobpool(srv, [{"kind": "noop"}] * n)),
            ("Pool(2).map chunksize=1", lambda: pool_map(n)),
            ("ProcessPoolExecutor(2).map", lambda: executor_map(n)),
        ]),
        ("command /bin/true", c, [
            ("jobpool", lambda: jobpool(srv, [
                {"kind": "command", "args": {"argv": ["/bin/true"]}}] * c)),
            ("xargs -P2 -n1", lambda: shell(
                ["xargs", "-P2", "-n1", "/bin/true"], lines)),
            ("parallel -j2", lambda: shell(
                ["parallel", "-j2", "/bin/true"], lines)),
        ]),
    ]


def svg_chart(rows):
    """A horizontal bar chart of jobs/s, one group per workload."""
    width, bar, gap, left = 760, 22, 6, 250
    scale_w = width - left - 110
    y = 40
    out = []
    for name, n, tools in rows:
        top = max(r for _, r in tools)
        out.append('<text x="10" y="%d" font-weight="bold">%s, %s jobs</text>'
                   % (y, name, format(n, ",")))
        y += 12
        for tool, rate in tools:
            w = max(1, int(scale_w * rate / top))
            colour = "#2b6cb0" if tool == "jobpool" else "#a0aec0"
            out.append('<text x="10" y="%d">%s</text>' % (y + 16, tool))
            out.append('<rect x="%d" y="%d" width="%d" height="%d" '
                       'fill="%s"><title>%s: %.0f jobs/s</title></rect>'
                       % (left, y, w, bar, colour, tool, rate))
            out.append('<text x="%d" y="%d">%s/s</text>'
                       % (left + w + 6, y + 16, format(int(rate), ",")))
            y += bar + gap
        y += 24
    head = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif" font-size="13">'
            '<rect width="100%%" height="100%%" fill="white"/>'
            '<text x="10" y="20" font-size="15">jobs per second, median '
            'of the rounds (longer is better)</text>' % (width, y))
    return head + "".join(out) + "</svg>\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--noop", type=int, default=100000)
    ap.add_argument("--command", type=int, default=2000)
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    with Server(workers=2, args=["--allow-command",
                                 "--max-jobs-per-batch",
                                 str(max(args.noop, args.command))]) as srv:
        loads = workloads(args, srv)
        times = {(w, t): [] for w, _, tools in loads for t, _ in tools}
        for rnd in range(args.rounds):
            for w, n, tools in loads:
                for t, fn in tools:
                    s = fn()
                    times[(w, t)].append(s)
                    print("round %d  %-18s %-28s %8.3f s  %9.0f jobs/s"
                          % (rnd + 1, w, t, s, n / s), flush=True)
    rows = []
    md = ["| workload | tool | jobs/s (median of %d) | jobpool ÷ tool |"
          % args.rounds, "| --- | --- | --- | --- |"]
    for w, n, tools in loads:
        rates = [(t, n / statistics.median(times[(w, t)])) for t, _ in tools]
        ours = rates[0][1]
        rows.append((w, n, rates))
        for t, r in rates:
            md.append("| %s, %s jobs | %s | %s | %s |"
                      % (w, format(n, ","), t, format(int(r), ","),
                         "—" if t == "jobpool" else "%.2f×" % (ours / r)))
    stamp = "%s, %s, %d cores, Python %s" % (
        datetime.date.today().isoformat(), platform.machine(),
        os.cpu_count(), platform.python_version())
    text = "\n".join(md) + "\n\nMeasured %s.\n" % stamp
    print("\n" + text)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "peers.svg"), "w") as f:
        f.write(svg_chart(rows))


if __name__ == "__main__":
    main()
