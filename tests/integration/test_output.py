"""GET /v1/jobs/{id}/output: a command job's captured stdout or stderr as
text/plain, read while the job runs, followed (?follow=true) until it ends,
and kept for every attempt of a retried job (?attempt=N, and each history
entry's `output`).
"""

import http.client
import os
import shutil
import tempfile
import time

from harness import Server, assert_problem, wait_until

TEXT = "text/plain; charset=utf-8"
# one line every 0.2 s: about a second in all
LINES = "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done"
EXPECTED = "".join("line %d\n" % i for i in range(1, 6))


def sh(script, **extra):
    job = {"kind": "command", "args": {"argv": ["sh", "-c", script]}}
    job.update(extra)
    return job


def output(srv, jid, query=""):
    """The body of GET /v1/jobs/{jid}/output?query, asserting 200 text."""
    st, h, b = srv.get("/v1/jobs/%s/output%s" % (jid, query))
    assert st == 200, "output%s: %d %r" % (query, st, b)
    assert h.get("content-type") == TEXT, "content-type %r" % (
        h.get("content-type"),)
    return b or ""


class Follow:
    """A GET ...?follow=true read line by line as it arrives."""

    def __init__(self, srv, jid, query=""):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port,
                                               timeout=15)
        self.conn.request("GET", "/v1/jobs/%s/output?follow=true%s" % (
            jid, query))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, "follow: %d %r" % (
            self.resp.status, self.resp.read()[:300])
        assert self.resp.getheader("content-type") == TEXT

    def lines(self):
        """[(line, monotonic time it arrived)] until the response ends."""
        got = []
        while True:
            line = self.resp.readline()
            if not line:
                return got
            got.append((line.decode(), time.monotonic()))

    def close(self):
        self.conn.close()


def test_read_while_running_and_follow_to_the_end():
    with Server(workers=2, args=["--allow-command"]) as srv:
        jid = srv.submit([sh(LINES)])["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        f = Follow(srv, jid)
        try:
            first = f.resp.readline().decode()
            assert first == "line 1\n", "first line followed: %r" % first
            # the plain GET is answered at once from the running slot:
            # some lines, not all
            part = output(srv, jid)
            assert part.startswith("line 1\n") and EXPECTED.startswith(part) \
                and part != EXPECTED, "output while running: %r" % part
            rest = f.lines()
        finally:
            f.close()
        text = first + "".join(line for line, _ in rest)
        assert text == EXPECTED, "followed: %r" % text
        # they came as printed, not all at the end
        assert rest[-1][1] - rest[0][1] > 0.4, "lines arrived together: %r" % (
            rest,)
        job = srv.job(jid)
        assert job["state"] == "succeeded", job["state"]
        assert output(srv, jid) == EXPECTED
        assert output(srv, jid, "?follow=true") == EXPECTED, \
            "a follow of an ended job is its output, then the end"


def test_follow_from_submission():
    """A follow asked for before the job starts waits for it."""
    with Server(workers=1, args=["--allow-command"]) as srv:
        bid = srv.submit([sh("sleep 0.5"), sh(LINES)])["id"]
        jid = srv.jobs(bid)[1]["id"]
        f = Follow(srv, jid)
        try:
            text = "".join(line for line, _ in f.lines())
        finally:
            f.close()
        assert text == EXPECTED, "followed from the queue: %r" % text
        assert srv.job(jid)["state"] == "succeeded"


def test_follower_that_leaves_and_a_cancel_mid_follow():
    """A client that hangs up mid-follow costs nothing; a cancel ends the
    follow with what the job printed."""
    with Server(workers=2, args=["--allow-command"]) as srv:
        jid = srv.submit([sh(LINES)])["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        f = Follow(srv, jid)
        assert f.resp.readline() == b"line 1\n"
        f.close()
        assert srv.wait_job(jid)["state"] == "succeeded"
        assert output(srv, jid) == EXPECTED
        jid = srv.submit([sh("echo start; sleep 30")])["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        f = Follow(srv, jid)
        try:
            assert f.resp.readline() == b"start\n"
            srv.ok("POST", "/v1/jobs/%s/cancel" % jid)
            rest = f.lines()
        finally:
            f.close()
        assert rest == [], rest
        assert srv.job(jid)["state"] == "canceled"
        srv.assert_alive()


def test_stderr_stream():
    with Server(workers=1, args=["--allow-command"]) as srv:
        jid = srv.submit([sh("echo out; echo err >&2; sleep 0.6; "
                             "echo err2 >&2")])["job_ids"][0]
        srv.wait_job_state(jid, ("running",))
        wait_until(lambda: output(srv, jid, "?stream=stderr") == "err\n",
                   5, what="stderr while running")
        f = Follow(srv, jid, "&stream=stderr")
        try:
            text = "".join(line for line, _ in f.lines())
        finally:
            f.close()
        assert text == "err\nerr2\n", "followed stderr: %r" % text
        srv.wait_job(jid)
        assert output(srv, jid, "?stream=stdout") == "out\n"
        assert output(srv, jid, "?stream=stderr") == "err\nerr2\n"


def test_retried_job_keeps_each_attempts_output():
    tmp = tempfile.mkdtemp(prefix="jobpool-output-")
    try:
        mark = os.path.join(tmp, "mark")
        script = ('if [ -e %s ]; then echo second; echo e2 >&2; exit 0; fi; '
                  ': > %s; echo first; echo e1 >&2; exit 3' % (mark, mark))
        with Server(workers=1, args=["--allow-command"]) as srv:
            jid = srv.submit([sh(script, max_attempts=2,
                                 retry_backoff_s=0)])["job_ids"][0]
            job = srv.wait_job(jid)
            assert job["state"] == "succeeded" and job["attempts"] == 2, job
            assert output(srv, jid) == "second\n"
            assert output(srv, jid, "?attempt=1") == "first\n"
            assert output(srv, jid, "?attempt=1&stream=stderr") == "e1\n"
            assert output(srv, jid, "?attempt=2") == "second\n"
            hist = job["history"]
            assert [h["output"]["stdout"] for h in hist] == \
                ["first\n", "second\n"], hist
            assert [h["output"]["truncated"] for h in hist] == \
                [False, False], hist
            st, h, b = srv.get("/v1/jobs/%s/output?attempt=3" % jid)
            assert_problem(st, h, b, 404)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_outputs_kept_for_the_first_attempts_and_the_last():
    """History entries keep the output of the first HISTORY_OUTPUTS (5)
    attempts; the last ended attempt's is the job's `output`."""
    tmp = tempfile.mkdtemp(prefix="jobpool-output-")
    try:
        count = os.path.join(tmp, "count")
        script = ('echo x >> %s; echo try $(wc -l < %s | tr -d " "); exit 3'
                  % (count, count))
        with Server(workers=1, args=["--allow-command"]) as srv:
            jid = srv.submit([sh(script, max_attempts=7,
                                 retry_backoff_s=0)])["job_ids"][0]
            job = srv.wait_job(jid)
            assert job["state"] == "failed" and job["attempts"] == 7, job
            kept = [h.get("output", {}).get("stdout")
                    for h in job["history"]]
            assert kept == ["try %d\n" % i for i in range(1, 6)] + \
                [None, None], kept
            for n in range(1, 6):
                assert output(srv, jid, "?attempt=%d" % n) == "try %d\n" % n
            assert output(srv, jid, "?attempt=6") == ""
            assert output(srv, jid, "?attempt=7") == "try 7\n"
            assert output(srv, jid) == "try 7\n"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_not_found_and_bad_parameters():
    with Server(workers=1, args=["--allow-command"]) as srv:
        st, h, b = srv.get("/v1/jobs/j_999999999999/output")
        assert_problem(st, h, b, 404)
        jid = srv.submit([sh("echo hi")])["job_ids"][0]
        srv.wait_job(jid)
        assert output(srv, jid, "?stream=stdout&follow=false") == "hi\n"
        for q, where in (("?stream=stdin", "stream"),
                         ("?stream=", "stream"),
                         ("?follow=yes", "follow"),
                         ("?attempt=0", "attempt"),
                         ("?attempt=x", "attempt"),
                         ("?tail=3", "tail")):
            st, h, b = srv.get("/v1/jobs/%s/output%s" % (jid, q))
            assert_problem(st, h, b, 400, where, code="invalid-request")
