"""test_exposure.py - requests without the token, oversized or trickled
requests and floods of connections cost the server nothing.

Before the fix a request was authenticated only after its whole body was
read: 12 token-less 16 MiB uploads took the server from 7 MB to 200 MB, a
Content-Length of 100 GB was read to the end, and a client sending one
header byte a second kept its connection for as long as it liked.
"""

import http.client
import resource
import socket
import threading
import time

from harness import Server, proc_status_kb, wait_until

JSON_HDR = b"Content-Type: application/json\r\n"
MIB = 1 << 20


def connect(srv, source="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", srv.port))
    return s


def read_reply(s, limit=65536):
    """Read until the server closes or a whole small reply is in."""
    data = b""
    try:
        while len(data) < limit:
            got = s.recv(limit)
            if not got:
                break
            data += got
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1]:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def closed_by_server(s, timeout):
    """True when the server closes s (without a reply) within timeout."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def upload(srv, size, headers=b"", results=None, i=0):
    """POST a size-byte body; returns (bytes sent, status line)."""
    s = connect(srv)
    s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\n" + JSON_HDR +
              headers + b"Content-Length: %d\r\n\r\n" % size)
    sent, chunk = 0, b" " * 65536
    try:
        while sent < size:
            sent += s.send(chunk[:min(len(chunk), size - sent)])
    except OSError:
        pass            # the server answered and closed: the point
    reply = read_reply(s)
    s.close()
    out = (sent, reply.split(b"\r\n", 1)[0])
    if results is not None:
        results[i] = out
    return out


def test_token_less_uploads_are_refused_before_their_bodies():
    with Server(workers=1, args=["--token", "s3cret"]) as srv:
        before = proc_status_kb(srv.pid, "VmRSS")
        n, size = 24, 16 * MIB
        results = [None] * n
        ts = [threading.Thread(target=upload, args=(srv, size, b"", results,
                                                    i)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        for sent, line in results:
            assert line.startswith(b"HTTP/1.1 401"), line
        # Nothing but the socket buffers took the bodies: before, each was
        # read to the end (16 MiB) and held until the reply.
        assert sum(r[0] for r in results) < n * size // 2, results
        grown = proc_status_kb(srv.pid, "VmHWM") - before
        assert grown < 32 * 1024, "peak RSS grew by %d kB" % grown
        st, _, _ = srv.get("/healthz")
        assert st == 200


def test_an_announced_oversize_body_is_answered_at_once():
    with Server(workers=1, args=["--token", "s3cret"]) as srv:
        for auth, want in ((b"", b"401"),
                           (b"Authorization: Bearer s3cret\r\n", b"413")):
            s = connect(srv)
            t0 = time.monotonic()
            s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\n" + JSON_HDR +
                      auth + b"Content-Length: 100000000000\r\n\r\n")
            reply = read_reply(s)
            assert reply.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 " + want), \
                reply[:200]
            assert b"Connection: close" in reply, reply[:300]
            assert closed_by_server(s, 5), "connection left open"
            assert time.monotonic() - t0 < 5
            s.close()
        # Expect: 100-continue clients (curl over 1 MiB) get the answer
        # instead of the go-ahead.
        s = connect(srv)
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\n" + JSON_HDR +
                  b"Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n")
        assert read_reply(s).startswith(b"HTTP/1.1 401"), "no early 401"
        s.close()


def test_a_chunked_body_is_cut_at_the_limit():
    with Server(workers=1, args=["--max-body-bytes", str(MIB)]) as srv:
        s = connect(srv)
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\n" + JSON_HDR +
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        sent = 0
        try:
            while sent < 64 * MIB:
                s.sendall(chunk)
                sent += 65536
        except OSError:
            pass
        s.close()
        assert sent < 16 * MIB, "read %d bytes past a 1 MiB limit" % sent
        # a chunked body within the limit is still taken
        s = connect(srv)
        body = b'{"jobs":[{"kind":"noop"}]}'
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: t\r\n" + JSON_HDR +
                  b"Transfer-Encoding: chunked\r\n\r\n" +
                  b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert read_reply(s).startswith(b"HTTP/1.1 201")
        s.close()


def test_trickled_headers_are_dropped_in_seconds():
    with Server(workers=1, args=["--header-timeout", "1s"]) as srv:
        silent = connect(srv)
        trickle = connect(srv)
        t0 = time.monotonic()
        dropped = None
        line = b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200
        for c in line:
            try:
                trickle.send(bytes([c]))
            except OSError:
                dropped = time.monotonic() - t0
                break
            time.sleep(0.05)
        assert dropped is not None, "a trickling client kept its connection"
        assert dropped < 4, "dropped only after %.1fs" % dropped
        assert closed_by_server(silent, 3), "a silent connection stayed"
        # a keep-alive client that asks in time is served on one connection
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        for _ in range(3):
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() is not None
            time.sleep(0.3)
        conn.close()
        # a long-poll is not a slow client: it outlives the header timeout
        st, _, _ = srv.get("/v1/batches/%s?wait=2" % srv.submit(
            [{"kind": "sleep", "args": {"seconds": 3}}])["id"])
        assert st == 200


def test_connection_limits_in_all_and_per_client():
    with Server(workers=1, args=["--max-connections", "12",
                                 "--max-connections-per-client", "4",
                                 "--header-timeout", "60s"]) as srv:
        held = [connect(srv, "127.0.0.2") for _ in range(4)]
        extra = connect(srv, "127.0.0.2")
        assert closed_by_server(extra, 5), "5th connection of one client kept"
        # another client address is still served
        s = connect(srv, "127.0.0.3")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_reply(s).startswith(b"HTTP/1.1 200")
        s.close()
        for src in ("127.0.0.4", "127.0.0.5"):
            held += [connect(srv, src) for _ in range(4)]
        time.sleep(0.2)
        # At the total limit the server stops accepting: a 13th connection
        # waits in the listen queue, unserved, until one closes.
        waiting = connect(srv, "127.0.0.6")
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        waiting.settimeout(1)
        try:
            early = waiting.recv(100)
        except socket.timeout:
            early = None
        assert early is None, "served past the limit: %r" % early
        for s in held:
            s.close()
        waiting.settimeout(10)
        assert read_reply(waiting).startswith(b"HTTP/1.1 200")
        waiting.close()


def _soft_nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-file limit for %d" % pid)


def test_the_raised_open_file_limit_stays_in_the_server():
    """The server raises its soft open-file limit to serve its connections;
    workers and the programs they run keep the one it was started with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(512, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        srv = Server(workers=1, args=["--allow-command"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with srv:
        assert _soft_nofile(srv.pid) == hard
        worker = srv.wait_pool_ready(1)["workers"][0]["pid"]
        assert _soft_nofile(worker) == low
        b = srv.submit([{"kind": "command",
                         "args": {"argv": ["sh", "-c", "ulimit -n"]}}])
        j = srv.wait_job(b["job_ids"][0], 10)
        assert j["output"]["stdout"].strip() == str(low), j
