#!/usr/bin/env python3
"""seeds.py - write the seed corpora of the fuzz targets.

    python3 tests/fuzz/seeds.py OUTDIR

OUTDIR/batch/ gets request bodies for fuzz_batch, OUTDIR/request/ gets
inputs for fuzz_request: every case of the bad-input catalogue
(tests/integration/test_bad_input.py, CASES) and a set of good requests,
each in the structured form of fuzz_request.c (a flags byte, then
"METHOD\\nTARGET\\nHeader: value\\n...\\n\\nbody") and some as raw HTTP bytes.
File names are content hashes, so running it twice changes nothing.
"""

import hashlib
import json
import os
import sys

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from test_bad_input import CASES  # noqa: E402

# flags of fuzz_request.c
STRUCTURED = 0x01
TOKEN = 0x04
CORS_LIST = 0x08
CORS_ANY = 0x10
HTTP10 = 0x20
KEEP_ALIVE = 0x40

JSON = {"Content-Type": "application/json"}
B1, B2 = "b_000000000001", "b_000000000002"   # queued, canceled (fixture)
J1, J3 = "j_000000000001", "j_000000000003"
FIXTURE_B1 = {"name": "fuzz", "jobs": [{"kind": "noop"},
                                       {"kind": "sleep", "args": {"seconds": 1}}]}

GOOD_BATCHES = [
    {"jobs": [{"kind": "noop"}]},
    {"name": "all", "concurrency": 2, "priority": -5, "jobs": [
        {"kind": "noop", "name": "n", "timeout_s": 1.5, "max_attempts": 3,
         "retry_on": [1, "SIGKILL"], "retry_backoff_s": 0.5},
        {"kind": "sleep", "args": {"seconds": 0.01}},
        {"kind": "echo", "args": {"value": {"a": [1, 2.5, None, True, "\u00e9"]}}},
        {"kind": "primes", "args": {"below": 1000}},
        {"kind": "matmul", "args": {"n": 8}},
        {"kind": "fail", "args": {"mode": "exit", "code": 3}},
        {"kind": "fail", "args": {"mode": "crash"}}]},
    {"jobs": [{"kind": "command", "args": {"argv": ["true"], "env": {"A": "1"},
                                           "cwd": "/", "stdin": "x"}}]},
    {"jobs": [{"kind": "echo", "args": {"value": "x" * 300}}] * 3},
]

# (flags, method, target, headers, body)
GOOD_REQUESTS = [
    (0, "GET", "/", {}, b""),
    (0, "GET", "/healthz", {}, b""),
    (0, "HEAD", "/healthz", {}, b""),
    (0, "GET", "/readyz", {}, b""),
    (0, "GET", "/metrics", {}, b""),
    (0, "GET", "/openapi.yaml", {}, b""),
    (0, "GET", "/v1/batches", {}, b""),
    (0, "GET", "/v1/batches?state=queued&limit=1", {}, b""),
    (0, "GET", "/v1/batches?after=b_000000000001&limit=5", {}, b""),
    (0, "GET", "/v1/batches/" + B1, {}, b""),
    (0, "GET", "/v1/batches/" + B2 + "?wait=0.5", {}, b""),
    (0, "GET", "/v1/batches/" + B1 + "?wait=1", {}, b""),
    (0, "GET", "/v1/batches/" + B1 + "/jobs?state=queued&limit=1&after=j_000000000001",
     {}, b""),
    (0, "GET", "/v1/jobs/" + J1, {}, b""),
    (0, "GET", "/v1/jobs/" + J1 + "?wait=2.5", {}, b""),
    (0, "GET", "/v1/jobs/" + J3 + "?wait=0", {}, b""),
    (0, "POST", "/v1/jobs/" + J1 + "/cancel", {}, b""),
    (0, "POST", "/v1/jobs/" + J3 + "/cancel", {}, b""),
    (0, "POST", "/v1/batches/" + B1 + "/cancel", {}, b""),
    (0, "POST", "/v1/batches/" + B2 + "/cancel", {}, b""),
    (0, "DELETE", "/v1/batches/" + B2, {}, b""),
    (0, "DELETE", "/v1/batches/" + B1, {}, b""),
    (0, "GET", "/v1/events", {}, b""),
    (0, "GET", "/v1/events?batch_id=" + B1 + "&last_event_id=1", {}, b""),
    (0, "GET", "/v1/events", {"Last-Event-ID": "999999999999999999"}, b""),
    (0, "GET", "/v1/pool", {}, b""),
    (0, "PUT", "/v1/pool", JSON, b'{"size":2}'),
    (0, "OPTIONS", "/v1/batches", {}, b""),
    (0, "OPTIONS", "/v1/batches/" + B1,
     {"Origin": "http://a.example", "Access-Control-Request-Method": "DELETE"}, b""),
    (CORS_LIST, "GET", "/v1/pool", {"Origin": "https://b.example:8443"}, b""),
    (CORS_ANY, "GET", "/healthz", {"Origin": "http://x.example"}, b""),
    (TOKEN, "GET", "/v1/batches", {"Authorization": "Bearer fuzz-token"}, b""),
    (TOKEN, "GET", "/v1/batches", {"Authorization": "Bearer wrong"}, b""),
    (TOKEN, "GET", "/v1/batches", {}, b""),
    (TOKEN, "GET", "/", {}, b""),
    (HTTP10, "GET", "/healthz", {}, b""),
    (0, "POST", "/v1/batches",
     dict(JSON, **{"Idempotency-Key": "fuzz-key"}), json.dumps(FIXTURE_B1).encode()),
    (0, "POST", "/v1/batches",
     dict(JSON, **{"Idempotency-Key": "fuzz-key"}), b'{"jobs":[{"kind":"noop"}]}'),
    (0, "POST", "/v1/batches",
     dict(JSON, **{"Idempotency-Key": "new-key"}), b'{"jobs":[{"kind":"noop"}]}'),
    (0, "POST", "/v1/batches",
     {"Content-Type": "application/json; charset=utf-8", "Transfer-Encoding": "chunked"},
     b'1a\r\n{"jobs":[{"kind":"noop"}]}\r\n0\r\n\r\n'),
    (0, "POST", "/v1/batches", {"Content-Type": "application/json",
                                "Content-Length": "99999999999"}, b"{}"),
] + [(0, "POST", "/v1/batches", JSON, json.dumps(b).encode())
     for b in GOOD_BATCHES]


def structured(flags, method, target, headers, body):
    head = "".join("%s: %s\n" % kv for kv in headers.items())
    return (bytes([flags | STRUCTURED]) + method.encode() + b"\n" +
            target.encode() + b"\n" + head.encode() + b"\n" + (body or b""))


def raw(method, target, headers, body, keep_alive=False):
    body = body or b""
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: fuzz"]
    lines += ["%s: %s" % kv for kv in headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    if body and "Transfer-Encoding" not in headers:
        lines.append("Content-Length: %d" % len(body))
    return b"\x00" + ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def write(outdir, data):
    os.makedirs(outdir, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(data)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: seeds.py OUTDIR")
    out = sys.argv[1]
    batch, request = os.path.join(out, "batch"), os.path.join(out, "request")
    for _name, method, path, headers, body, _st, _where in CASES:
        if method == "POST" and path == "/v1/batches" and body is not None:
            write(batch, body)
        write(request, structured(0, method, path, headers, body))
        write(request, raw(method, path, headers, body))
    for b in GOOD_BATCHES + [FIXTURE_B1]:
        write(batch, json.dumps(b).encode())
        write(batch, json.dumps(b, indent=1, sort_keys=True).encode())
    for flags, method, target, headers, body in GOOD_REQUESTS:
        write(request, structured(flags, method, target, headers, body))
        write(request, raw(method, target, headers, body))
    # two requests on one connection, the second after a keep-alive answer
    write(request, raw("GET", "/healthz", {}, b"", keep_alive=True) +
          raw("GET", "/v1/jobs/" + J1, {}, b"")[1:])
    write(request, bytes([STRUCTURED | KEEP_ALIVE]) +
          b"GET\n/v1/pool\n\n")
    # empty lines before a request line are skipped (RFC 9112 2.2): this
    # HEAD of an unknown path gets a 404 without a body, which the harness
    # once took for a GET's problem+json, the next answer for its body
    write(request, b"\x00\r\n\r\n" +
          raw("HEAD", "/v1/nope", {}, b"", keep_alive=True)[1:] +
          raw("GET", "/healthz", {}, b"")[1:])
    # ... and bytes it skips before those empty lines
    write(request, b"\x00" * 20 + b"\r\n\r\n" +
          raw("HEAD", "/v1/nope", {}, b"", keep_alive=True)[1:] +
          raw("GET", "/v1/nope", {}, b"")[1:])
    for d in (batch, request):
        print("%s: %d seeds" % (d, len(os.listdir(d))))


if __name__ == "__main__":
    main()
