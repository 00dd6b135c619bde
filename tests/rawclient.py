"""A tiny blocking PostgreSQL client on a raw socket, for the things real drivers hide
(protocol 3.2 keys, direct TLS, cancel inside TLS, reading slowly)."""
from __future__ import annotations

import socket
import ssl
import struct

from hoopd.pgwire import messages as m
from hoopd.pgwire.scram import ScramClientExchange


class RawClient:
    def __init__(self, port: int, *, tls: str = "off", alpn: bool = True) -> None:
        """tls: off | ssl_request | direct."""
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.key: tuple[int, bytes] | None = None
        if tls == "ssl_request":
            self.sock.sendall(m.ssl_request())
            assert self.sock.recv(1) == b"S"
        if tls != "off":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols(["postgresql"])
            self.sock = ctx.wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                (n,) = struct.unpack_from("!i", self.buf, 1)
                if len(self.buf) >= n + 1:
                    t, body = self.buf[:1], self.buf[5:n + 1]
                    self.buf = self.buf[n + 1:]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Messages up to ReadyForQuery, or up to a FATAL error the server closed after."""
        out = []
        while True:
            try:
                t, body = self.read_message()
            except ConnectionError:
                if out and out[-1][0] == b"E":
                    return out
                raise
            out.append((t, body))
            if t == b"K":
                self.key = (struct.unpack_from("!i", body)[0], body[4:])
            if t == b"Z":
                return out

    def login(self, user: str, password: str, database: str = "shop", version: int = m.PROTOCOL_3_0,
              extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
        self.send(m.startup_message({"user": user, "database": database, **(extra or {})}, version))
        pre = []
        while True:
            t, body = self.read_message()
            if t != b"R":
                pre.append((t, body))
                if t == b"E":
                    return pre
                continue
            (code,) = struct.unpack_from("!i", body)
            if code == 10:
                scram = ScramClientExchange(user, password, ["SCRAM-SHA-256"])
                self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
            elif code == 11:
                self.send(m.password_message(scram.server_first(body[4:])))
            elif code == 3:
                self.send(m.password_message(m.cstr(password)))
            elif code == 0:
                return pre + self.until_ready()

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(m.query(sql))
        return self.until_ready()

    def close(self) -> None:
        self.sock.close()


def error_of(msgs: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    for t, body in msgs:
        if t == b"E":
            return m.decode_fields(body)
    return None
