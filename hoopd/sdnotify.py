"""systemd's notify protocol: datagrams to $NOTIFY_SOCKET, and the watchdog keep-alive.

No libsystemd needed: a message is ``KEY=VALUE`` lines in one AF_UNIX datagram; a
socket path starting with ``@`` is in the abstract namespace. Without NOTIFY_SOCKET
(not under systemd, or Type= is not notify) every call is a no-op.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

from twisted.application.internet import TimerService
from twisted.application.service import IService

from hoopd.log import get_logger

log = get_logger("hoopd.sdnotify")


class Notifier:
    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        return cls(environ.get("NOTIFY_SOCKET"))

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; False (logged) when it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall("\n".join(fields).encode("utf-8"))
        except OSError as e:
            log.warn("sd_notify {fields} to {addr} failed: {err}", fields=" ".join(fields),
                     addr=self.address.replace("\0", "@"), err=e.strerror or str(e))
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload match this message to its SIGHUP
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_service(notifier: Notifier, clock: Any, environ: Mapping[str, str] = os.environ,
                     pid: int | None = None) -> IService | None:
    """A service sending WATCHDOG=1 at half of WATCHDOG_USEC, or None when no watchdog is asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    wpid = environ.get("WATCHDOG_PID")
    if notifier.address is None or not usec.isdigit() or int(usec) == 0:
        return None
    if wpid is not None and wpid != str(os.getpid() if pid is None else pid):
        return None
    svc = TimerService(int(usec) / 2e6, notifier.notify, "WATCHDOG=1")
    svc.clock = clock
    return svc
