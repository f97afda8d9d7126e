#!/usr/bin/env python3
"""run.py - run integration test files.

    JOBPOOLD=build/server/jobpoold python3 run.py [-k SUBSTR] test_x.py [...]

Runs every function named test_* of each file in definition order, prints
PASS/FAIL per test and ends with exactly one line
`integration: N passed, M failed`; exits 1 if M > 0.  Each test is bounded
(its `timeout` attribute, default 120 s, or $INTEGRATION_TEST_TIMEOUT): a hung
test gets its servers killed and is counted as failed; if it still does not
return, the runner stops.

With JOBPOOL_TEST_PG set (`tests/pg/pgtmp.py run -- ...` sets it) the
servers use PostgreSQL, the tests that need the SQLite file are not run but
printed as `SKIP name: reason`, and the last line reads
`integration-pg: N passed, M failed`.
"""

import importlib.util
import os
import signal
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

harness.DEFER_TAILS = True

DEFAULT_TIMEOUT = float(os.environ.get("INTEGRATION_TEST_TIMEOUT", "120"))


def load(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def tests_of(mod):
    return [(k, v) for k, v in vars(mod).items()
            if k.startswith("test_") and callable(v)
            and getattr(v, "__module__", None) == mod.__name__]


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_one(fn):
    """Run fn in a daemon thread; returns (outcome, error, tb, seconds) where
    outcome is 'pass', 'fail' or 'hung'."""
    box = {}

    def body():
        try:
            fn()
            box["ok"] = True
        except BaseException as e:  # noqa: B902 - report everything
            box["err"] = e
            box["tb"] = traceback.format_exc()

    limit = getattr(fn, "timeout", DEFAULT_TIMEOUT)
    t0 = time.monotonic()
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(limit)
    if th.is_alive():
        harness.kill_all()          # usually unblocks a test waiting on HTTP
        th.join(10)
        took = time.monotonic() - t0
        err = AssertionError("timed out after %.0fs (servers killed)" % limit)
        return ("fail" if not th.is_alive() else "hung"), err, \
            box.get("tb", ""), took
    took = time.monotonic() - t0
    if box.get("ok"):
        return "pass", None, None, took
    return "fail", box.get("err"), box.get("tb", ""), took


def main(argv):
    sel = None
    files = []
    it = iter(argv)
    for a in it:
        if a == "-k":
            sel = next(it, None)
        else:
            files.append(a)
    if not files:
        out("usage: run.py [-k SUBSTR] test_file.py [...]")
        return 2

    def on_term(signum, frame):
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, on_term)

    passed = failed = 0
    plan = []
    skipped = []
    for path in files:
        mname = os.path.splitext(os.path.basename(path))[0]
        try:
            mod = load(path if os.path.isabs(path) else
                       os.path.join(os.getcwd(), path))
        except BaseException as e:  # noqa: B902
            failed += 1
            out("FAIL %s: import failed: %s" % (mname, e))
            out(traceback.format_exc())
            continue
        for name, fn in tests_of(mod):
            full = "%s.%s" % (mname, name)
            if sel and sel not in full:
                continue
            why = harness.skip_reason(full, fn)
            if why:
                skipped.append((full, why))
                continue
            plan.append((full, fn))

    for full, why in skipped:
        out("SKIP %s: %s" % (full, why))

    for i, (full, fn) in enumerate(plan):
        before = len(harness.ALL)
        outcome, err, tb, took = run_one(fn)
        started = harness.ALL[before:]
        if outcome == "pass":
            passed += 1
            out("PASS %s (%.2fs)" % (full, took))
        else:
            failed += 1
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            out("FAIL %s: %s (%.2fs)" % (full, reason, took))
            if tb:
                out(tb.rstrip())
            for s in started:
                s.print_tail()
        leftover = [s for s in started if s.running()]
        for s in leftover:
            out("NOTE %s left jobpoold pid %d running; killed" % (full, s.pid))
            s.abort()
        if outcome == "hung":
            rest = plan[i + 1:]
            for r, _ in rest:
                out("FAIL %s: not run (runner stopped after a hung test)" % r)
            failed += len(rest)
            harness.kill_all()
            out("%s: %d passed, %d failed" % (harness.SUITE, passed, failed))
            os._exit(1)

    harness.kill_all()
    out("%s: %d passed, %d failed" % (harness.SUITE, passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
