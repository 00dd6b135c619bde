"""Snapshots of what a database holds (its functions for the policy, its relations and
columns for masking), read over the gateway's own upstream connection and kept fresh.

``Catalogs`` keeps one snapshot per (connection, database): a snapshot older than
``max_age`` or taken before a statement that may change the catalog passed (``changed``)
is read again before the next use that needs it; a snapshot that does not know a name
is read again at most every ``retry`` seconds. A failed read keeps the old snapshot
(None if none): callers decide what "unknown" means (both fail closed). Time comes from
``clock``. A subclass names ``what`` it holds and ``build``s the snapshot from the rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred

from hoopd.log import get_logger

log = get_logger("hoopd.catalogs")
T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Loader = Callable[[str, str], "Deferred[Rows]"]
"""``load(connection, database)``: the catalog query's rows, as text."""


@dataclass
class _Entry(Generic[T]):
    snapshot: T | None = None
    loaded_at: float | None = None  # when the last load finished (failed or not)
    stale: bool = True  # a catalog-changing statement passed since, or never loaded
    waiters: list[Deferred] = field(default_factory=list)  # while a load is in flight
    loading: bool = False


class Catalogs(Generic[T]):
    """Snapshots per (connection, database); see the module docstring."""

    what = "catalog"  # for the log

    def __init__(self, load: Loader, clock: Any, max_age: float = 60.0, retry: float = 1.0) -> None:
        self.load = load
        self.clock = clock
        self.max_age = max_age
        self.retry = retry
        self._entries: dict[tuple[str, str], _Entry[T]] = {}

    def build(self, rows: Rows) -> T:
        raise NotImplementedError

    def snapshot(self, connection: str, database: str) -> T | None:
        e = self._entries.get((connection, database))
        return e.snapshot if e else None

    def needs_load(self, connection: str, database: str, missing: bool = False) -> bool:
        """Whether to read the catalog before using it; ``missing``: the current snapshot
        does not know a name the caller needs."""
        e = self._entries.get((connection, database))
        if e is None or e.loading or e.stale:
            return True
        age = self.clock.seconds() - (e.loaded_at or 0.0)
        if e.snapshot is None or missing:
            return age >= self.retry
        return age >= self.max_age

    def changed(self, connection: str) -> None:
        """A statement that may change the catalog passed: every database of ``connection``."""
        for (conn, _), e in self._entries.items():
            if conn == connection:
                e.stale = True

    def refresh(self, connection: str, database: str) -> Deferred[T | None]:
        """A Deferred (one per caller, so one caller's cancel leaves the others waiting)
        that fires with the fresh snapshot, or the old one (None if none) when the load failed."""
        e = self._entries.setdefault((connection, database), _Entry())
        d: Deferred[T | None] = Deferred(lambda d: e.waiters.remove(d) if d in e.waiters else None)
        e.waiters.append(d)
        if not e.loading:
            e.loading, e.stale = True, False
            loaded = self.load(connection, database)
            loaded.addCallbacks(lambda rows: self._loaded(e, rows),
                                lambda f: self._failed(e, connection, database, f))
        return d

    def _loaded(self, e: _Entry[T], rows: Rows) -> None:
        try:
            e.snapshot = self.build(rows)
        except Exception as exc:  # rows the snapshot cannot be built from: as a failed read
            log.error("{what} not built from its rows: {err!r}", what=self.what, err=exc)
        self._done(e)

    def _failed(self, e: _Entry[T], connection: str, database: str, f: Any) -> None:
        log.warn("{what} of connection {conn} database {db} not read: {err}",
                 what=self.what, conn=connection, db=database, err=f.getErrorMessage())
        self._done(e)

    def _done(self, e: _Entry[T]) -> None:
        e.loading = False
        e.loaded_at = self.clock.seconds()
        waiters, e.waiters = e.waiters, []
        for d in waiters:
            d.callback(e.snapshot)
