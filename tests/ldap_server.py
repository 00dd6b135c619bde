"""A throwaway slapd for tests: old-style slapd.conf in a temp dir, back_mdb, the memberof
overlay, TLS (StartTLS on ldap://, and ldaps://), data added over the wire with ldap3.

Needs the Debian packages slapd and ldap-utils (scripts/install-deps.sh installs them).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ldap3 import Connection, Server

from tests.certs import write_self_signed

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
SERVICE_DN = f"cn=hoopd,{SUFFIX}"
SERVICE_PW = "service-secret"
PASSWORDS = {"alice": "alice-Pw1", "bob": "bob-Pw2", "carol": "carol-Pw3"}
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
TLS_CONF = """\
TLSCACertificateFile {dir}/ca.crt
TLSCertificateFile {dir}/server.crt
TLSCertificateKeyFile {dir}/server.key"""

CONF = """\
{includes}
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
{tls}

database mdb
maxsize 33554432
suffix "{suffix}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {dir}/db
overlay memberof

access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by users read
    by * none
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slapd:
    """``Slapd(folder).start()``; ``stop()`` kills it. ``url``/``ldaps_url``/``ca_file`` for clients."""

    def __init__(self, folder: Path, cert_hostnames: tuple[str, ...] = ("localhost",),
                 cert_ips: tuple[str, ...] = ("127.0.0.1",), tls: bool = True) -> None:
        self.dir = folder
        self.tls = tls  # False: no TLS at all (StartTLS refused, no ldaps listener)
        self.cert_names = {"hostnames": cert_hostnames, "ips": cert_ips}
        self.proc: subprocess.Popen | None = None
        self.port = _free_port()
        self.ldaps_port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}"
        self.ca_file = folder / "ca.crt"

    def start(self) -> "Slapd":
        if not os.path.exists(SLAPD):
            raise RuntimeError("slapd is not installed: run scripts/install-deps.sh (Debian slapd + ldap-utils)")
        write_self_signed(self.dir, "server", **self.cert_names)
        (self.dir / "db").mkdir(exist_ok=True)
        includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
        conf = self.dir / "slapd.conf"
        tls = TLS_CONF.format(dir=self.dir) if self.tls else ""
        conf.write_text(CONF.format(includes=includes, dir=self.dir, suffix=SUFFIX, rootdn=ROOT_DN, rootpw=ROOT_PW,
                                    tls=tls))
        urls = f"{self.url}/ {self.ldaps_url}/" if self.tls else f"{self.url}/"
        self.log = open(self.dir / "slapd.log", "wb")
        self.proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):  # until it answers (a readiness wait, not a timing assertion)
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.dir / 'slapd.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("slapd did not start listening")
        self._seed()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()

    def pause(self) -> None:
        """Freeze slapd: connections are accepted by the kernel but never answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def admin(self) -> Connection:
        return Connection(Server("127.0.0.1", port=self.port), ROOT_DN, ROOT_PW, auto_bind=True)

    def _seed(self) -> None:
        c = self.admin()
        c.add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
        c.add(SERVICE_DN, ["organizationalRole", "simpleSecurityObject"], {"userPassword": SERVICE_PW})
        for ou in ("people", "groups", "other"):
            c.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
        c.unbind()

    def add_user(self, uid: str, password: str, **attrs: str) -> str:
        dn = f"uid={uid},ou=people,{SUFFIX}"
        c = self.admin()
        ok = c.add(dn, ["inetOrgPerson"], {"cn": uid, "sn": uid, "userPassword": password, **attrs})
        c.unbind()
        assert ok, c.result
        return dn

    def add_group(self, cn: str, members: list[str], ou: str = "groups") -> str:
        dn = f"cn={cn},ou={ou},{SUFFIX}"
        c = self.admin()
        ok = c.add(dn, ["groupOfNames"], {"cn": cn, "member": members})
        c.unbind()
        assert ok, c.result
        return dn


def seed_people(s: Slapd) -> None:
    """alice in dba and analysts, bob in analysts and owner of "owners", carol only in
    ou=other's "outsiders" (outside the group base)."""
    dns = {u: s.add_user(u, pw, mail=f"{u}@example.org") for u, pw in PASSWORDS.items()}
    s.add_group("dba", [dns["alice"]])
    s.add_group("analysts", [dns["alice"], dns["bob"]])
    owners = s.add_group("owners", [dns["carol"]])
    c = s.admin()
    c.modify(owners, {"owner": [("MODIFY_ADD", [dns["bob"]])]})
    c.unbind()
    s.add_group("outsiders", [dns["carol"], dns["alice"]], ou="other")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory):
    """A running slapd with seed_people's users and groups, shared by a test module."""
    s = Slapd(tmp_path_factory.mktemp("slapd")).start()
    try:
        seed_people(s)
        yield s
    finally:
        s.stop()
