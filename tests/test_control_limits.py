"""The HTTP control port of a real ``twistd hoopd`` under hostile clients (raw sockets):
no unauthenticated or oversize body is read, slow and idle connections are cut, the
connection cap holds, and normal API calls keep working."""
from __future__ import annotations

import http.client
import json
import select
import socket
import time

import pytest

from hoopd.control.tokens import hash_token
from tests.gateway import Gateway, free_port

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789abcdef0123456789"
CLAIM = 200 << 20  # the Content-Length a client claims: 200 MiB


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    port = free_port()
    g = Gateway(folder, f'http = "tcp:{port}:interface=127.0.0.1"\n'
                        '[control]\nhttp_request_timeout = "1s"\nhttp_idle_timeout = "2s"\nhttp_max_connections = 4\n'
                        f'[[control.tokens]]\nname = "ops"\nrole = "admin"\ntoken_hash = "{hash_token(ADMIN)}"\n'
                        '[connections.down]\nhost = "127.0.0.1"\nport = 1\ntls = "disable"\n'
                        '[connections.down.credentials.default]\nuser = "x"\n')
    g.http_port = port
    g.start()
    wait_http(port)
    yield g
    g.stop()
    assert "Traceback" not in g.log()


def wait_http(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the control port never listened"
            time.sleep(0.05)


def connect(gw: Gateway) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    return s


def head(path: str, token: str | None, *extra: str, method: str = "POST", length: int = CLAIM) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}",
             "Content-Type: application/json", *extra] + ([f"Authorization: Bearer {token}"] if token else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(s: socket.socket, wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (read until the body is complete or EOF)."""
    s.settimeout(wait)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {buf!r}"
        buf += chunk
    top, _, body = buf.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_peer(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("token,status,code", [(None, 401, "unauthorized"), ("wrong-token", 401, "unauthorized"),
                                               (ADMIN, 413, "too_large")])
def test_a_200_mib_claim_is_answered_at_once_without_the_body(gw, token, status, code):
    with connect(gw) as s:
        s.sendall(head("/api/v1/reload", token, "Expect: 100-continue"))
        got, headers, body = read_answer(s)  # nothing of the body was sent
        assert (got, json.loads(body)["error"]) == (status, code)
        assert headers["connection"] == "close" and b"100 Continue" not in body
        if status == 401:
            assert headers["www-authenticate"] == 'Bearer realm="hoopd"'
        assert closed_by_peer(s, 5)


def test_a_client_that_streams_the_body_sees_the_401_before_sending_much(gw):
    rss_before = gw.rss_kib()
    chunk = b"x" * (64 << 10)
    sent = 0
    with connect(gw) as s:
        s.sendall(head("/api/v1/reload", None))
        s.setblocking(False)
        while sent < CLAIM:
            readable, writable, _ = select.select([s], [s], [], 5)
            if readable:
                break
            assert writable, "the gateway neither read nor answered"
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                pass
        s.setblocking(True)
        status, _, _ = read_answer(s)
    assert status == 401
    assert sent < 16 << 20, f"{sent >> 20} MiB went out before the answer"  # socket buffers, not 200 MiB
    assert gw.rss_kib() - rss_before < 16 << 10  # KiB: the body was not spooled into memory
    print(f"\nbytes sent before the 401: {sent}; RSS change {gw.rss_kib() - rss_before} KiB")


def test_chunked_bodies_are_capped_while_read(gw):
    with connect(gw) as s:
        s.sendall("POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  f"Authorization: Bearer {ADMIN}\r\n\r\n".encode())
        piece = b"x" * 8192
        try:
            for _ in range(16):  # 128 KiB, twice the cap
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_answer(s)
    assert status == 413 and json.loads(body)["error"] == "too_large"


def test_unknown_paths_and_methods_are_refused_before_the_body(gw):
    for method, path, status in (("POST", "/api/v1/nothing", 404), ("DELETE", "/api/v1/reload", 405)):
        with connect(gw) as s:
            s.sendall(head(path, ADMIN, method=method))
            got, headers, _ = read_answer(s)
            assert got == status
            if status == 405:
                assert headers["allow"] == "POST"


def test_slow_headers_are_cut_after_the_request_timeout(gw):
    with connect(gw) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for c in b"X-Slow: " + b"a" * 40:  # one byte every 0.2 s resets any idle timer
                s.sendall(bytes([c]))
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_answer(s)
        assert status == 408 and json.loads(body)["error"] == "request_timeout"
        assert time.monotonic() - t0 < 4
    assert "did not send a whole request within 1 s; closed" in gw.log()


def test_idle_keepalive_connections_are_closed(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    conn.request("GET", "/healthz")  # the same connection serves a second request
    assert conn.getresponse().read()
    t0 = time.monotonic()
    assert closed_by_peer(conn.sock, 10)
    assert 1.5 < time.monotonic() - t0 < 6  # http_idle_timeout = 2s
    conn.close()


def test_connections_above_the_cap_get_503_and_normal_calls_work_again(gw):
    held = [connect(gw) for _ in range(4)]
    try:
        time.sleep(0.2)
        with connect(gw) as extra:
            status, headers, body = read_answer(extra)
            assert status == 503 and json.loads(body)["error"] == "busy"
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.request("POST", "/api/v1/reload", body=b"{}", headers={"Authorization": f"Bearer {ADMIN}"})
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())) == (200, {"reloaded": True})
    conn.request("POST", "/api/v1/sessions/nope/kill", body=json.dumps({"reason": "x" * 400}),
                 headers={"Authorization": f"Bearer {ADMIN}"})
    r = conn.getresponse()
    assert r.status == 404 and json.loads(r.read())["error"] == "not_found"
    conn.close()
