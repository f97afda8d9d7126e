"""Follow-up batches (`then`, SPEC §7): created in the transaction that ends
their parent, skipped (and recorded) when `on: "success"` and the parent did
not succeed, chained, and never zero or two of them across a kill -9."""
import random
import time

from harness import Server, assert_problem

OK = [{"kind": "noop"}]
FAIL = [{"kind": "fail", "args": {"mode": "exit", "code": 3}}]


def sh(seconds):
    return {"kind": "command", "args": {"argv": ["sh", "-c",
                                                 "sleep %.3f" % seconds]}}


def children_of(srv, parent_id):
    """Every stored batch whose parent_id is parent_id."""
    st, _, page = srv.request("GET", "/v1/batches?limit=1000")
    assert st == 200, page
    return [b for b in page["items"] if b.get("parent_id") == parent_id]


def wait_then(srv, bid, timeout=20.0):
    """The batch once it ended and its follow-up is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        b = srv.batch(bid)
        if b["state"] not in ("queued", "running") and \
                b["then_state"] != "pending":
            return b
        assert time.monotonic() < deadline, "batch %s: %r" % (bid, b)
        time.sleep(0.05)


def test_completion_follow_up_runs_after_a_failed_parent():
    with Server(workers=2) as srv:
        p = srv.submit(FAIL + OK, name="parent",
                       then={"on": "completion", "batch": {
                           "name": "child", "jobs": OK * 3}})
        assert p["then_state"] == "pending" and p["then_batch_id"] is None
        assert p["parent_id"] is None
        done = wait_then(srv, p["id"])
        assert done["state"] == "failed"
        assert done["then_state"] == "created", done
        cid = done["then_batch_id"]
        child = srv.wait_batch(cid)
        assert child["name"] == "child" and child["state"] == "succeeded"
        assert child["parent_id"] == p["id"]
        assert child["then_state"] is None and child["counts"]["total"] == 3
        assert [c["id"] for c in children_of(srv, p["id"])] == [cid]


def test_success_follow_up_is_skipped_when_the_parent_fails():
    with Server(workers=1, args=["--allow-command"]) as srv:
        p = srv.submit(FAIL, then={"on": "success", "batch": {"jobs": OK}})
        done = wait_then(srv, p["id"])
        assert done["then_state"] == "skipped" and \
            done["then_batch_id"] is None, done
        assert children_of(srv, p["id"]) == []
        # a canceled parent did not succeed either
        q = srv.submit([sh(5)], then={"on": "success", "batch": {"jobs": OK}})
        srv.ok("POST", "/v1/batches/%s/cancel" % q["id"])
        done = wait_then(srv, q["id"])
        assert done["state"] == "canceled" and done["then_state"] == "skipped"


def test_a_chain_of_three():
    with Server(workers=2) as srv:
        a = srv.submit(OK * 2, name="a", then={"on": "success", "batch": {
            "name": "b", "jobs": OK, "then": {"on": "success", "batch": {
                "name": "c", "jobs": OK * 2, "priority": 5}}}})
        b = srv.batch(wait_then(srv, a["id"])["then_batch_id"])
        assert b["name"] == "b" and b["parent_id"] == a["id"]
        b = wait_then(srv, b["id"])
        assert b["then_state"] == "created"
        c = srv.wait_batch(b["then_batch_id"])
        assert c["name"] == "c" and c["parent_id"] == b["id"]
        assert c["priority"] == 5 and c["state"] == "succeeded"
        assert c["then_state"] is None


def test_follow_ups_are_validated_at_submission():
    with Server(workers=1) as srv:
        cases = [
            ({"on": "always", "batch": {"jobs": OK}}, "/then/on"),
            ({"on": "success"}, "/then/batch"),
            ({"on": "success", "batch": {"jobs": [{"kind": "nope"}]}},
             "/then/batch/jobs/0/kind"),
            ({"on": "success", "batch": {"jobs": OK}, "when": 1},
             "/then/when"),
            ({"on": "success", "batch": {"jobs": OK, "then": {
                "on": "success", "batch": {"jobs": []}}}},
             "/then/batch/then/batch/jobs"),
            ("soon", "/then"),
        ]
        for then, path in cases:
            st, h, b = srv.request("POST", "/v1/batches",
                                   body={"jobs": OK, "then": then})
            assert_problem(st, h, b, 400)
            paths = [e["path"] for e in b["errors"]]
            assert path in paths, (then, paths)
        st, _, page = srv.request("GET", "/v1/batches")
        assert page["items"] == [], "a refused batch was stored"


def test_kill9_never_yields_zero_or_two_follow_ups():
    """kill -9 at a random moment around the parent's end, restart on the
    same database: once the parent has ended there is exactly one
    follow-up, and it runs."""
    rng = random.Random(7)
    with Server(workers=2, args=["--allow-command"]) as owner:
        srv = owner
        try:
            for r in range(6):
                p = srv.submit([sh(0.05 * (i % 4)) for i in range(8)],
                               name="k%d" % r,
                               then={"on": "completion", "batch": {
                                   "name": "k%d-child" % r, "jobs": OK}})
                time.sleep(rng.uniform(0.0, 0.6))
                srv.kill9()
                srv = Server(workers=2, tmpdir=owner.tmpdir,
                             args=["--allow-command"])
                done = wait_then(srv, p["id"], timeout=30)
                kids = children_of(srv, p["id"])
                assert len(kids) == 1, "round %d: %d follow-ups: %r" % (
                    r, len(kids), kids)
                assert done["then_batch_id"] == kids[0]["id"]
                assert srv.wait_batch(kids[0]["id"])["state"] == \
                    "succeeded"
        finally:
            if srv is not owner and srv.running():
                srv.stop(check_children=False)
