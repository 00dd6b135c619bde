"""Shared fixtures: the PostgreSQL cluster (``pg``) and client-facing TLS files (``tmp_tls``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.certs import write_self_signed
from tests.pgcluster import TestCluster

pytest_plugins = ["tests.ldap_server", "tests.oidc_server"]  # the slapd and idp fixtures


@pytest.fixture(scope="session")
def pg() -> Iterator[TestCluster]:
    """A running throwaway PostgreSQL 15 cluster shared by the whole session (see TestCluster).

    Never skipped: without initdb the tests that use it fail and say how to install it.
    """
    cluster = TestCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@dataclass(frozen=True)
class TLSFiles:
    ca: Path    # the CA certificate that signed ``cert`` (give it to clients as sslrootcert)
    cert: Path  # server certificate, CN localhost, SAN localhost and 127.0.0.1
    key: Path   # its private key (0600)


@pytest.fixture
def tmp_tls(tmp_path: Path) -> TLSFiles:
    """A CA and a server certificate for the gateway's client-facing TLS."""
    folder = tmp_path / "tls"
    folder.mkdir()
    cert, key = write_self_signed(folder, "server")
    return TLSFiles(folder / "ca.crt", cert, key)
