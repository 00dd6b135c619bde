"""Core config validation, the example config, and the CLI around it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hoopd.config import load, parse
from hoopd.confkit import ConfigError
from hoopd.pgwire.scram import ScramClientExchange, ScramServerExchange, parse_verifier
from tests.gateway import BIN

ROOT = Path(__file__).resolve().parent.parent
CONN = {"host": "db", "credentials": {"default": {"user": "u", "password": "pw"}}}


@pytest.mark.parametrize("data,message", [
    ({"connections": {"shop": {**CONN, "port": "x"}}}, 'connections.shop.port: expected an integer 1-65535, got "x"'),
    ({"connections": {"shop": {**CONN, "port": 70000}}}, "connections.shop.port: expected an integer 1-65535, got 70000"),
    ({"gateway": {"nod": "x"}}, "gateway.nod: unknown key"),
    ({"connections": {"shop": {**CONN, "tls": "maybe"}}},
     'connections.shop.tls: expected one of disable | require | verify-full, got "maybe"'),
    ({"connections": {"shop": {"host": "db", "credentials": {"read_only": {"user": "u"}}}}},
     "connections.shop.credentials.default: is required"),
    ({"connections": {"shop": {**CONN, "access": {"dba": "root"}}}},
     'connections.shop.access.dba: expected one of read_only | read_write | admin, got "root"'),
    ({"users": [{"name": "a", "password_hash": "plain"}]}, "users[0].password_hash: expected a SCRAM-SHA-256 verifier"),
    ({"users": [{"name": "bob", "password_hash": "SCRAM-SHA-256$x"}, {"name": " Bob", "password_hash": "SCRAM-SHA-256$x"}]},
     "users[1].name: ' Bob' is the same name as user 'bob'"),
    ({"users": [{"name": "bob", "password_hash": "SCRAM-SHA-256$x"}, {"name": "bob", "password_hash": "SCRAM-SHA-256$x"}]},
     "users[1].name: duplicate user 'bob'"),
    ({"users": [{"name": "\u200b ", "password_hash": "SCRAM-SHA-256$x"}]}, "users[0].name: is empty"),
    ({"tls": {"mode": "require"}}, 'tls.cert: is required when tls.mode = "require"'),
    ({"connections": {"shop": {"host": "db", "credentials": {"default": {"user": "u", "password": "a",
                                                                          "password_env": "B"}}}}},
     "connections.shop.credentials.default: give only one of password, password_file, password_env"),
    ({"connections": {"shop": {"host": "db", "credentials": {"default": {"user": "u",
                                                                          "password_env": "HOOPD_NO_SUCH_VAR"}}}}},
     "connections.shop.credentials.default.password_env: environment variable HOOPD_NO_SUCH_VAR is not set"),
])
def test_errors_name_the_key_path(data, message) -> None:
    with pytest.raises(ConfigError) as e:
        parse(data)
    assert str(e.value).startswith(message)


def test_secrets_never_in_repr(tmp_path) -> None:
    (tmp_path / "pw").write_text("file-secret\n")
    cfg = parse({"connections": {"shop": {"host": "db", "credentials": {"default": {"user": "u", "password_file": "pw"}}}}},
                tmp_path)
    cred = cfg.connections["shop"].credentials["default"]
    assert cred.password.value == "file-secret" and "file-secret" not in repr(cfg) and str(cred.password) == "<secret>"


def example_copy(tmp_path: Path) -> Path:
    """etc/hoopd.toml with its /etc/hoopd/... files made real in tmp_path."""
    from tests.certs import write_self_signed

    text = (ROOT / "etc" / "hoopd.toml").read_text()
    write_self_signed(tmp_path)
    for path in set(re.findall(r'"(/etc/hoopd/[^"]+)"', text)):
        local = tmp_path / Path(path).name
        if path.endswith("server.crt"):
            local = tmp_path / "server.crt"
        elif path.endswith("server.key"):
            local = tmp_path / "server.key"
        elif not local.exists():
            local.write_text((tmp_path / "ca.crt").read_text() if path.endswith(".crt") else "x" * 32)
        text = text.replace(f'"{path}"', f'"{local}"')
    out = tmp_path / "hoopd.toml"
    out.write_text(text)
    return out


def test_example_config_documents_valid_keys(tmp_path) -> None:
    cfg = load(example_copy(tmp_path))
    assert cfg.connections["shop"].level_for(frozenset({"ai-agents", "developers"})) == "read_write"
    assert cfg.masking is not None and [r.name for r in cfg.masking.rules] == ["customer-pii", "contact-details"]
    assert cfg.masking.rules[0].columns == (("public", "customers", "email"), ("*", "ssn"))


def hoopd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hoopd"), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_check_config_cli(tmp_path) -> None:
    good = example_copy(tmp_path)
    r = hoopd("check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[connections.shop]\nhost = "db"\nport = "x"\n[connections.shop.credentials.default]\nuser = "u"\n')
    r = hoopd("check-config", str(bad))
    assert r.returncode == 1 and 'connections.shop.port: expected an integer 1-65535, got "x"' in r.stderr
    assert "Traceback" not in r.stderr
    r = hoopd()
    assert r.returncode == 2 and "usage: hoopd" in r.stderr


def test_twistd_with_bad_config_exits_with_the_message(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nnode = 5\n")
    r = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "hoopd", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "gateway.node: expected a string, got 5" in out and "Traceback" not in out


def test_hash_password_prints_a_working_verifier() -> None:
    r = hoopd("hash-password", stdin="s3cret\n")
    assert r.returncode == 0 and "s3cret" not in r.stdout
    verifier = parse_verifier(r.stdout.strip())
    server, client = ScramServerExchange(verifier), ScramClientExchange("x", "s3cret", ["SCRAM-SHA-256"])
    client.server_final(server.client_final(client.server_first(server.client_first(client.client_first()))))
    assert hoopd("hash-password", stdin="\n").returncode == 1


def test_shared_upstream_role_for_read_only_is_warned(tmp_path) -> None:
    from hoopd.config import shared_role_warnings

    cfg = load(example_copy(tmp_path))
    assert shared_role_warnings(cfg) == []  # the example gives read_only its own role
    text = re.sub(r"\[connections\.shop\.credentials\.read_only\][^\[]*", "", example_copy(tmp_path).read_text())
    (tmp_path / "weak.toml").write_text(text)
    (warning,) = shared_role_warnings(load(tmp_path / "weak.toml"))
    assert warning.startswith('connections.shop: read_only shares the upstream role "shop_app" with read_write and admin')
    out = hoopd("check-config", str(tmp_path / "weak.toml"))
    assert out.returncode == 0 and "read_only shares the upstream role" in out.stderr
