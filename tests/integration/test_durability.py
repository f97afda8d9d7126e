"""Durability and load: Idempotency-Key, back-pressure, retention."""

import sqlite3
import threading
import time

from harness import Server, assert_problem, wait_until

NOOP = [{"kind": "noop"}]


def post(srv, body, key=None):
    h = {"Idempotency-Key": key} if key else None
    return srv.request("POST", "/v1/batches", body=body, headers=h)


def test_idempotency_same_body_same_batch():
    with Server(workers=1) as srv:
        body = {"name": "once", "jobs": [{"kind": "echo", "args": {"value": 1}}]}
        st1, h1, b1 = post(srv, body, "k-1")
        assert st1 == 201, (st1, b1)
        # same body, keys in another order: still the same request
        st2, h2, b2 = post(srv, {"jobs": body["jobs"], "name": "once"}, "k-1")
        assert st2 == 200, (st2, b2)
        assert b2["id"] == b1["id"] and b2["job_ids"] == b1["job_ids"]
        assert h2["location"] == h1["location"]
        st3, h3, b3 = post(srv, {"name": "other", "jobs": NOOP}, "k-1")
        assert_problem(st3, h3, b3, 409)
        st, _, lst = srv.get("/v1/batches")
        assert [b["id"] for b in lst["items"]] == [b1["id"]], lst


def test_idempotency_concurrent_retries_make_one_batch():
    with Server(workers=1) as srv:
        body = {"jobs": NOOP * 3}
        out = []

        def go():
            out.append(post(srv, body, "race"))
        ts = [threading.Thread(target=go) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        ids = {b["id"] for st, h, b in out if st in (200, 201)}
        assert len(out) == 8 and len(ids) == 1, out
        assert sorted(st for st, h, b in out).count(201) == 1, \
            [st for st, h, b in out]
        st, _, lst = srv.get("/v1/batches")
        assert len(lst["items"]) == 1


def test_idempotency_key_expires_and_bad_key():
    with Server(workers=1, args=["--idempotency-ttl", "1s"]) as srv:
        st1, _, b1 = post(srv, {"jobs": NOOP}, "k")
        time.sleep(1.2)
        st2, _, b2 = post(srv, {"jobs": NOOP}, "k")
        assert st1 == 201 and st2 == 201 and b1["id"] != b2["id"]
        for bad in ("", "x" * 256, "caf\u00e9"):
            st, h, b = srv.request("POST", "/v1/batches", body={"jobs": NOOP},
                                   headers={"Idempotency-Key": bad.encode(
                                       "utf-8").decode("latin-1")})
            assert_problem(st, h, b, 400, "Idempotency-Key")


def test_idempotency_survives_restart():
    with Server(workers=1) as first:
        st, _, b1 = post(first, {"jobs": NOOP}, "durable-key")
        assert st == 201
        first.kill9()
        with Server(workers=1, tmpdir=first.tmpdir) as second:
            st, _, b2 = post(second, {"jobs": NOOP}, "durable-key")
            assert st == 200 and b2["id"] == b1["id"], (st, b2)


def test_queue_cap_is_429_and_reads_work():
    with Server(workers=1, args=["--max-queued-jobs", "5"]) as srv:
        srv.submit([{"kind": "sleep", "args": {"seconds": 5}}])
        b = srv.submit(NOOP * 4)
        st, h, body = post(srv, {"jobs": NOOP * 3})
        assert_problem(st, h, body, 429)
        assert h.get("retry-after", "").isdigit(), h
        assert srv.get("/v1/batches/%s" % b["id"])[0] == 200
        assert srv.get("/healthz")[0] == 200
        srv.post("/v1/batches/%s/cancel" % b["id"])
        assert post(srv, {"jobs": NOOP * 3})[0] == 201


def test_db_cap_is_503_keeps_reads_and_integrity():
    big = {"kind": "echo", "args": {"value": "x" * 60000}}
    with Server(workers=1, args=["--max-db-bytes", "2000000"]) as srv:
        got = []
        for _ in range(60):
            st, h, b = post(srv, {"jobs": [big] * 4})
            got.append(st)
            if st != 201:
                assert_problem(st, h, b, 503)
                assert h.get("retry-after", "").isdigit(), h
                break
        assert 503 in got, "never refused: %r" % got
        st, _, lst = srv.get("/v1/batches?limit=1000")
        assert st == 200 and len(lst["items"]) == got.count(201)
        for item in lst["items"]:
            fin = srv.wait_batch(item["id"], timeout=20)
            assert fin["state"] == "succeeded", fin
        # deleting finished batches makes room again
        for item in lst["items"]:
            assert srv.delete("/v1/batches/%s" % item["id"])[0] == 204
        # a batch bigger than all the room up to the hard cap: SQLITE_FULL
        # while inserting, a 503, and nothing of it stored
        huge = [{"kind": "echo", "args": {"value": "y" * 200}}] * 20000
        st, h, b = post(srv, {"name": "huge", "jobs": huge})
        assert_problem(st, h, b, 503)
        assert "full" in b["detail"], b
        st, _, lst2 = srv.get("/v1/batches?limit=1000")
        assert lst2["items"] == [], lst2
        assert post(srv, {"jobs": [big] * 4})[0] == 201
        # the cap was met by refusing early, never by a failed write
        # that rolls back a turn (which would make the server unready)
        assert srv.get("/readyz")[0] == 200
        srv.stop()
        db = sqlite3.connect(srv.db)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()


def test_retention_purges_finished_batches_only():
    with Server(workers=1, args=["--retention", "1s"]) as srv:
        done = srv.submit(NOOP * 1200)
        srv.wait_batch(done["id"])
        running = srv.submit([{"kind": "sleep", "args": {"seconds": 4}}])
        wait_until(lambda: srv.get("/v1/batches/%s" % done["id"])[0] == 404,
                   10, 0.1, "the finished batch to be purged")
        assert srv.get("/v1/jobs/%s" % done["job_ids"][-1])[0] == 404
        assert srv.batch(running["id"])["state"] == "running"
        srv.post("/v1/batches/%s/cancel" % running["id"])


def test_open_batches_cap_is_429():
    with Server(workers=1, args=["--max-open-batches", "2"]) as srv:
        a = srv.submit([{"kind": "sleep", "args": {"seconds": 5}}])
        srv.submit(NOOP)
        st, h, b = post(srv, {"jobs": NOOP})
        assert_problem(st, h, b, 429)
        assert "--max-open-batches" in b["detail"], b
        srv.post("/v1/batches/%s/cancel" % a["id"])
        srv.wait_batch(a["id"])
        assert post(srv, {"jobs": NOOP})[0] == 201
