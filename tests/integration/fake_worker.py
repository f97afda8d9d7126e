#!/usr/bin/env python3
"""fake_worker.py - speaks the worker protocol (workers/protocol.h) on fd 3
with the timing a test needs, for races a real worker wins too rarely.

    jobpoold --worker-bin tests/integration/fake_worker.py

FAKE_WORKER_MODE (from the server's environment):
  hold   hold every group and start none of it (drops are ignored)
  race   announce the head of the first group; when SIGTERM comes (the
         server stopping that head), report the head done and announce the
         next job, then die of the signal
Single jobs ("run") are answered at once as succeeded, in every mode.
"""
import json
import os
import signal
import socket
import time

chan = socket.socket(fileno=3)
mode = os.environ.get("FAKE_WORKER_MODE", "")
group = []
t0 = 0


def send(msg):
    chan.send(json.dumps(msg).encode())


def now_us():
    return int(time.time() * 1e6)


def outcome(job, started_us, run_us):
    return {"job": job, "ok": True, "result": {}, "error": None,
            "started_us": started_us, "run_us": run_us, "user_us": 0,
            "sys_us": 0, "maxrss_kb": 1000, "exit_code": None,
            "signal": None, "killed": False, "truncated": False}


def on_term(sig, frame):
    if len(group) >= 2:
        send({"t": "results", "jobs": [outcome(group[0]["job"], t0, 2000)]})
        send({"t": "started", "job": group[1]["job"],
              "started_us": t0 + 2000, "run_us": 1500})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


signal.signal(signal.SIGTERM, on_term)
send({"t": "ready", "pid": os.getpid()})
while True:
    data = chan.recv(1 << 20)
    if not data:
        break
    m = json.loads(data)
    if m["t"] == "run":
        d = outcome(m["job"], now_us(), 10)
        d["t"] = "done"
        del d["started_us"]
        send(d)
    elif m["t"] == "group" and mode == "race" and not group and \
            len(m["jobs"]) >= 2:
        group = m["jobs"]
        t0 = now_us()
        send({"t": "started", "job": group[0]["job"], "started_us": t0,
              "run_us": 1500})
    elif m["t"] == "group" and mode in ("hold", "race"):
        pass
    elif m["t"] == "group":
        send({"t": "results", "jobs": [outcome(j["job"], now_us(), 10)
                                       for j in m["jobs"]]})
