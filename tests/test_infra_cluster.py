"""The shared test cluster: each role logs in over TCP with its own auth method, TLS verifies."""
from __future__ import annotations

import socket
import struct

import psycopg
import pytest

pytestmark = pytest.mark.integration

ROLES = ["app_scram", "app_md5", "app_clear", "app_trust"]
# AuthenticationRequest codes the server must answer a startup packet with, per pg_hba method.
AUTH_CODE = {"scram-sha-256": 10, "md5": 5, "password": 3, "trust": 0}


def first_auth_request(port: int, user: str) -> int:
    """Send a plaintext StartupMessage; the code of the server's AuthenticationRequest."""
    params = b"".join(k + b"\0" + v.encode() + b"\0" for k, v in ((b"user", user), (b"database", "shop"))) + b"\0"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        head = s.recv(9, socket.MSG_WAITALL)
    kind, _length, code = struct.unpack("!cii", head)
    assert kind == b"R", head
    return code


@pytest.mark.parametrize("name", ROLES)
def test_role_logs_in_over_tcp(pg, name):
    role = getattr(pg, name)
    with psycopg.connect(pg.dsn(role)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (3,)


@pytest.mark.parametrize("name", ROLES)
def test_role_gets_its_auth_method(pg, name):
    role = getattr(pg, name)
    assert first_auth_request(pg.port, role.name) == AUTH_CODE[role.method]


@pytest.mark.parametrize("name", ["app_scram", "app_md5", "app_clear"])
def test_wrong_password_is_rejected(pg, name):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(getattr(pg, name), password="not-the-password"))


def test_tls_verify_full_against_localhost(pg):
    dsn = pg.dsn(pg.app_scram, host="localhost", sslmode="verify-full", sslrootcert=str(pg.ca_file))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_tls_verify_full_rejects_another_ca(pg, tmp_tls):
    dsn = pg.dsn(pg.app_scram, host="localhost", sslmode="verify-full", sslrootcert=str(tmp_tls.ca))
    with pytest.raises(psycopg.OperationalError, match="SSL error"):
        psycopg.connect(dsn)


def test_shop_is_owned_by_app_scram(pg):
    out = pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop';"
                  "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public';", dbname="shop")
    assert out.split() == ["app_scram", "app_scram"]
