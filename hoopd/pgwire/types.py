"""Message type bytes, named once (PostgreSQL docs, "Message Formats").

Values are ints, as the Framer returns them (``msg.type == FE.QUERY``); ``bytes([t])``
gives the byte. The same letter means different things in each direction ('D' is
Describe from the client and DataRow from the server), hence two namespaces.
"""
from __future__ import annotations


class FE:
    """Frontend (client -> server) message types."""

    BIND = 0x42  # B
    CLOSE = 0x43  # C
    DESCRIBE = 0x44  # D
    EXECUTE = 0x45  # E
    FUNCTION_CALL = 0x46  # F
    FLUSH = 0x48  # H
    PARSE = 0x50  # P
    QUERY = 0x51  # Q
    SYNC = 0x53  # S
    TERMINATE = 0x58  # X
    COPY_DONE = 0x63  # c
    COPY_DATA = 0x64  # d
    COPY_FAIL = 0x66  # f
    PASSWORD = 0x70  # p (also SASLInitialResponse, SASLResponse, GSSResponse)


class BE:
    """Backend (server -> client) message types."""

    PARSE_COMPLETE = 0x31  # 1
    BIND_COMPLETE = 0x32  # 2
    CLOSE_COMPLETE = 0x33  # 3
    NOTIFICATION = 0x41  # A
    COMMAND_COMPLETE = 0x43  # C
    DATA_ROW = 0x44  # D
    ERROR = 0x45  # E
    COPY_IN = 0x47  # G
    COPY_OUT = 0x48  # H
    EMPTY_QUERY = 0x49  # I
    BACKEND_KEY = 0x4B  # K
    NOTICE = 0x4E  # N
    AUTHENTICATION = 0x52  # R
    PARAMETER_STATUS = 0x53  # S
    ROW_DESCRIPTION = 0x54  # T
    FUNCTION_RESULT = 0x56  # V
    COPY_BOTH = 0x57  # W
    READY = 0x5A  # Z
    COPY_DONE = 0x63  # c
    COPY_DATA = 0x64  # d
    NO_DATA = 0x6E  # n
    PORTAL_SUSPENDED = 0x73  # s
    PARAMETER_DESCRIPTION = 0x74  # t
    NEGOTIATE_VERSION = 0x76  # v

