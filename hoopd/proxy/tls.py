"""TLS context factories: the gateway's own (towards clients) and upstream ones."""
from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet import ssl

from hoopd.config import ConnectionConfig, TLSConfig

ALPN = b"postgresql"


def server_options(cfg: TLSConfig) -> ssl.CertificateOptions | None:
    """Options for client-facing TLS (ALPN ``postgresql`` for direct TLS and libpq 17)."""
    if cfg.mode == "disable" or not cfg.cert or not cfg.key:
        return None
    pem = Path(cfg.cert).read_bytes()
    key = ssl.KeyPair.load(Path(cfg.key).read_bytes(), crypto.FILETYPE_PEM)
    certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
             for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    return ssl.CertificateOptions(
        privateKey=key.original, certificate=certs[0].original,
        extraCertChain=[c.original for c in certs[1:]],
        acceptableProtocols=[ALPN], raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def upstream_options(conn: ConnectionConfig):  # -> IOpenSSLClientConnectionCreator | None
    """Options towards the upstream per ``connections.NAME.tls``."""
    if conn.tls == "disable":
        return None
    if conn.tls == "require":
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    trust = (ssl.Certificate.loadPEM(Path(conn.ca_file).read_bytes()) if conn.ca_file
             else ssl.platformTrust())
    return ssl.optionsForClientTLS(conn.host, trustRoot=trust)


def _ssl_connection(transport) -> SSL.Connection | None:
    conn = transport.getHandle()
    return conn if isinstance(conn, SSL.Connection) else None


def tls_version(transport) -> str | None:
    """The negotiated TLS version of a transport, or None for plaintext."""
    conn = _ssl_connection(transport)
    return conn.get_protocol_version_name() if conn else None


def negotiated_alpn(transport) -> bytes | None:
    conn = _ssl_connection(transport)
    return (conn.get_alpn_proto_negotiated() or None) if conn else None
