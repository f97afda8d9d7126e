"""test_memory.py - memory stays bounded under a steady mixed load.

Rounds of submissions (batches of noop jobs) and reads (GET of batches and
jobs) run until every batch has finished; after each round the test reads
the server's anonymous RSS and the /metrics gauges of its in-memory
structures.  Before the event window had a bound in bytes it held up to
--events-buffer (100,000) formatted events, over 20 MB, so RSS grew
round after round long after the load had become steady (here 12.7 ->
17.2 -> 21.3 MB after the warm-up); now the window stops at
--events-buffer-bytes (8 MiB) and RSS stays flat (13.6 -> 14.0 -> 14.0).

The RSS assertion is skipped under AddressSanitizer (its quarantine and
shadow memory make RSS meaningless); the gauges are checked everywhere.
"""

import http.client
import json
import random
import re
import threading
import time

from harness import Server, proc_status_kb, wait_until
from test_edges import SSE

EVENTS_BYTES = 8 << 20          # the default --events-buffer-bytes
SQLITE_BOUND = 8 << 20          # 2 x 2 MiB page caches + 256 KiB + schema
WARMUP_ROUNDS = 2
ROUNDS = 5
BATCHES = 250                   # per round, 50 jobs each: ~26,000 events
JOBS = 50
SUBMITTERS = 4
READERS = 6
RSS_GROWTH_KB = 4096            # the old window grew 8.6 MB in 3 rounds


def rss_anon_kb(pid):
    return proc_status_kb(pid, "RssAnon")


def sanitized(srv):
    """True when the server runs with AddressSanitizer."""
    with open("/proc/%d/maps" % srv.pid) as f:
        if "libasan" in f.read():
            return True
    with open(srv.cmd[0], "rb") as f:
        return b"__asan_init" in f.read()


def metrics(srv):
    st, _, text = srv.get("/metrics")
    assert st == 200, st
    out = {}
    for m in re.finditer(r"^(jobpool_[a-z_]+) (\d+)$", text, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def idle(srv):
    m = metrics(srv)
    return m.get("jobpool_queue_depth") == 0 and \
        m.get("jobpool_jobs_running") == 0


class Client:
    """One keep-alive connection."""

    def __init__(self, srv):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port,
                                               timeout=30)

    def call(self, method, path, body=None):
        hdrs = {}
        if body is not None:
            body = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, data

    def close(self):
        self.conn.close()


def one_round(srv, known):
    """Submit BATCHES batches while readers GET known batches and jobs;
    returns when the submissions are in (not yet finished)."""
    done = threading.Event()
    errors = []
    lock = threading.Lock()
    per = BATCHES // SUBMITTERS

    def submit():
        c = Client(srv)
        try:
            for _ in range(per):
                st, data = c.call("POST", "/v1/batches",
                                  {"jobs": [{"kind": "noop"}] * JOBS})
                if st != 201:
                    errors.append("POST /v1/batches: %d %r" % (st, data[:200]))
                    return
                b = json.loads(data)
                with lock:
                    known.append((b["id"], b["job_ids"][0]))
        finally:
            c.close()

    def read():
        c = Client(srv)
        rnd = random.Random()
        try:
            while not done.is_set():
                with lock:
                    bid, jid = known[rnd.randrange(len(known))]
                st, _ = c.call("GET", "/v1/batches/" + bid if rnd.random()
                               < 0.5 else "/v1/jobs/" + jid)
                if st != 200:
                    errors.append("GET: %d" % st)
                    return
        finally:
            c.close()

    subs = [threading.Thread(target=submit) for _ in range(SUBMITTERS)]
    readers = [threading.Thread(target=read) for _ in range(READERS)]
    for t in subs + readers:
        t.start()
    for t in subs:
        t.join(120)
    done.set()
    for t in readers:
        t.join(30)
    assert not errors, errors[:3]


def test_memory_plateaus_under_mixed_load():
    with Server(workers=2) as srv:
        known = [(b["id"], b["job_ids"][0])
                 for b in [srv.submit([{"kind": "noop"}])]]
        samples = []
        for r in range(ROUNDS):
            one_round(srv, known)
            wait_until(lambda: idle(srv), 120, 0.1,
                       "every job of round %d to finish" % r)
            time.sleep(0.2)
            samples.append((rss_anon_kb(srv.pid), metrics(srv)))
        rss = [s[0] for s in samples]
        report = "RssAnon by round (kB): %s" % rss
        print(report)
        if not sanitized(srv):
            base = rss[WARMUP_ROUNDS - 1]
            assert max(rss[WARMUP_ROUNDS:]) - base <= RSS_GROWTH_KB, \
                "RSS grew after warm-up: %s" % report
        for i, (_, m) in enumerate(samples):
            assert "jobpool_events_buffered_bytes" in m, \
                "no jobpool_events_buffered_bytes in /metrics"
            assert m["jobpool_events_buffered_bytes"] <= EVENTS_BYTES, \
                "round %d: event window holds %d bytes" % (
                    i, m["jobpool_events_buffered_bytes"])
            # finished batches are gone from the scheduler
            assert m["jobpool_scheduler_batches"] == 0, \
                "round %d: %d finished batches still scheduled" % (
                    i, m["jobpool_scheduler_batches"])
            assert m["jobpool_sqlite_memory_bytes"] <= SQLITE_BOUND, \
                "round %d: SQLite holds %d bytes" % (
                    i, m["jobpool_sqlite_memory_bytes"])
        # the load was large enough for the byte bound to be what held
        last = samples[-1][1]
        assert last["jobpool_events_buffered_bytes"] > EVENTS_BYTES * 0.75, \
            "the window never filled: %r" % last
        assert last["jobpool_events_buffered"] < 100000, last


test_memory_plateaus_under_mixed_load.timeout = 400


def test_events_buffer_bytes_bounds_the_window():
    """A small --events-buffer-bytes keeps the newest events that fit; a
    client whose Last-Event-ID fell out of it is told it missed some."""
    with Server(workers=2, args=["--events-buffer-bytes", "65536"]) as srv:
        first = SSE(srv)
        b = srv.submit([{"kind": "noop"}] * 2000)
        ev = first.next()
        first.close()
        # a reader that keeps up sees every event whole while the window
        # wraps hundreds of times (or, if it fell behind, a reset)
        follower = SSE(srv, last_id=ev["id"])
        seen, ids = set(), []
        while True:
            e = follower.next()
            if e["event"] == "reset":
                seen = None
                break
            ids.append(int(e["id"]))
            d = json.loads(e["data"])
            seen.add((d["id"], d["state"]))
            if d["id"] == b["id"] and d["state"] == "succeeded":
                break
        follower.close()
        assert ids == sorted(set(ids)), "event ids not strictly increasing"
        if seen is not None:
            for jid in b["job_ids"]:
                assert (jid, "succeeded") in seen, "missed %s" % jid
        srv.wait_batch(b["id"], timeout=60)
        m = metrics(srv)
        assert m["jobpool_events_buffered_bytes"] <= 65536, m
        # 4,003 events happened; far fewer fit in 64 KiB
        assert 100 < m["jobpool_events_buffered"] < 1000, m
        again = SSE(srv, last_id=ev["id"])
        assert again.next()["event"] == "reset"
        again.close()
