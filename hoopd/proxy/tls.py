"""TLS context factories: the gateway's own (towards clients) and upstream ones."""
from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
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


def end_point_hash(cert: x509.Certificate) -> bytes | None:
    """RFC 5929 ``tls-server-end-point`` channel binding data: the certificate's hash with
    the hash of its signature algorithm (SHA-256 when that is MD5 or SHA-1), as PostgreSQL
    computes it; None when the signature has no hash of its own (Ed25519, Ed448)."""
    try:
        algo = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algo is None:
        return None
    if isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    return cert.fingerprint(algo)


def peer_end_point(transport) -> bytes | None:
    """``end_point_hash`` of the peer's certificate on a TLS transport, or None."""
    conn = _ssl_connection(transport)
    cert = conn.get_peer_certificate() if conn else None
    return end_point_hash(cert.to_cryptography()) if cert is not None else None
