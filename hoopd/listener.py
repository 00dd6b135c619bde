"""A listening port as a service: strports.service, with the bound port in sight."""
from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred

from hoopd.log import get_logger

log = get_logger("hoopd.listener")


class Listener(service.Service):
    """Listens on a strports ``description`` while running (from privilegedStartService, so
    twistd binds before it drops privileges). ``bound`` fires with the port once listening;
    ``port`` is it, or None while not listening. A port that cannot be bound is logged.
    ``accept=False``: bind and listen but never accept (the supervisor of workers holds
    the socket for them)."""

    def __init__(self, reactor: Any, description: str, factory: Any, accept: bool = True) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.accept = accept
        self.port: Any = None
        self.bound: Deferred | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.bound = endpoints.serverFromString(self.reactor, self.description).listen(self.factory)
        self.bound.addCallbacks(self._listening, self._failed)

    def startService(self) -> None:
        super().startService()
        if self.bound is None:
            self.privilegedStartService()

    def _listening(self, port: Any) -> Any:
        self.port = port
        if not self.accept:
            port.stopReading()
        return port

    def _failed(self, f: Any) -> Any:
        if not f.check(defer.CancelledError):
            log.failure("cannot listen on {what} ({desc})", f, what=self.name, desc=self.description)
        return f

    def stopService(self) -> Deferred | None:
        super().stopService()
        bound, self.bound = self.bound, None
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
        if bound is not None:
            bound.addErrback(lambda f: None)
            bound.cancel()
        return None


class AdoptedListener(Listener):
    """A worker's postgres listener: the socket the supervisor bound, inherited as a file
    descriptor (hoopd.workers.child.WorkerRole)."""

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any) -> None:
        super().__init__(reactor, f"inherited fd {fd}", factory)
        self.fd, self.family = fd, family

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        _one_accept_per_wakeup(port)
        self.bound = defer.succeed(port)
        self.bound.addCallbacks(self._listening, self._failed)


def _one_accept_per_wakeup(port: Any) -> None:
    """Every worker's reactor wakes for a new connection on the shared socket; Twisted's
    Port would then accept up to 100 in a row, so the first one awake takes a whole burst.
    One per wake-up lets the least busy worker take each connection."""
    read = port.doRead

    def doRead() -> Any:
        port.numberAccepts = 1
        return read()
    port.doRead = doRead
