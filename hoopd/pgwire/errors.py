"""ErrorResponse / NoticeResponse field codes and the protocol's own failure type."""
from __future__ import annotations

# Field type bytes (https://www.postgresql.org/docs/current/protocol-error-fields.html)
SEVERITY = b"S"
SEVERITY_NONLOCALIZED = b"V"
CODE = b"C"
MESSAGE = b"M"
DETAIL = b"D"
HINT = b"H"

PROTOCOL_VIOLATION = "08P01"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
INVALID_CATALOG = "3D000"
TOO_MANY_CONNECTIONS = "53300"
ADMIN_SHUTDOWN = "57P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT = "08001"
FEATURE_NOT_SUPPORTED = "0A000"
INSUFFICIENT_PRIVILEGE = "42501"


class ProtocolError(Exception):
    """The peer broke the protocol; ``sqlstate`` + str() make the ErrorResponse."""

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
