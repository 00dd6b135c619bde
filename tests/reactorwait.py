"""Waiting on the test reactor for something another party does (no wall-clock assertion:
the number of tries only bounds the wait)."""
from __future__ import annotations

from typing import Callable

from twisted.internet import defer, reactor, task


@defer.inlineCallbacks
def wait_for(condition: Callable[[], object], tries: int = 200, interval: float = 0.05):
    for _ in range(tries):
        if condition():
            return
        yield task.deferLater(reactor, interval, lambda: None)
    raise AssertionError("condition never became true")
