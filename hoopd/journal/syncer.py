"""The journal's fsync helper process: ``python -m hoopd.journal.syncer`` (started by
JournalWriter, never by hand).

It reads requests on the Unix socket it inherited as fd 3: one byte ``S`` with a file
descriptor attached (SCM_RIGHTS), fsyncs that descriptor, closes it and answers two
bytes: ``s\\0`` (done) or ``e`` and the errno. It exits when the socket closes (the
gateway stopped or died). A process, not a thread: the gateway's reactor only writes a
byte and reads two, like on any connection, and no lock or interpreter handoff is
involved (a thread cost ~120 us of CPU per sync on the bench machine).
"""
from __future__ import annotations

import os
import socket
import sys


def serve(sock: socket.socket) -> int:
    pending: list[int] = []
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 64, 16)
        if not msg:
            return 0
        pending.extend(fds)
        for _ in msg:
            if not pending:
                sock.sendall(b"e" + bytes([22]))  # EINVAL: a request without a descriptor
                continue
            fd = pending.pop(0)
            try:
                os.fsync(fd)
                answer = b"s\0"
            except OSError as e:
                answer = b"e" + bytes([(e.errno or 5) & 0xFF])
            finally:
                os.close(fd)
            sock.sendall(answer)


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=3)))
