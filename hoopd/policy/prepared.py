"""Per-session memory of prepared statements, so EXECUTE has the effects of its body.

SQL PREPARE and protocol-level Parse share one namespace in PostgreSQL (``EXECUTE`` can
run a statement made by a named Parse), so both are remembered here. Only statements the
policy allowed are ever remembered: a PREPARE the policy refused never reached the server.

When a name is prepared again without DEALLOCATE the server keeps the first statement and
rejects the second; the registry then keeps the union of both, so it never thinks a
statement does less than what the server holds.
"""
from __future__ import annotations

from typing import Iterable

from hoopd.policy.statement import StatementInfo


class PreparedRegistry:
    """name -> classification of the prepared statement's body."""

    __slots__ = ("_by_name",)

    def __init__(self, by_name: dict[str, StatementInfo] | None = None) -> None:
        self._by_name: dict[str, StatementInfo] = dict(by_name or {})

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> StatementInfo | None:
        return self._by_name.get(name)

    def copy(self) -> "PreparedRegistry":
        return PreparedRegistry(self._by_name)

    def add(self, name: str, body: StatementInfo) -> None:
        old = self._by_name.get(name)
        self._by_name[name] = old.with_effects_of(body) if old is not None else body

    def remove(self, name: str) -> None:
        self._by_name.pop(name, None)

    def clear(self) -> None:
        self._by_name.clear()

    def resolve_one(self, info: StatementInfo) -> StatementInfo:
        """``info`` with the effects of the prepared statements it EXECUTEs; still opaque
        when one of them is unknown here."""
        if not info.executes:
            return info
        bodies = [self._by_name.get(n) for n in info.executes]
        out = info
        for b in bodies:
            if b is not None:
                out = out.with_effects_of(b)
        opaque = any(b is None or b.opaque for b in bodies) or bool(info.kinds & {"do", "call"})
        return out if out.opaque == opaque else out._replace(opaque=opaque)

    def resolve(self, infos: Iterable[StatementInfo]) -> list[StatementInfo]:
        """Resolve statements in order, as if each earlier one had run (a PREPARE then an
        EXECUTE of it in one Query). Does not change this registry."""
        infos = list(infos)
        for i in infos:
            if i.executes or i.kind in _CHANGES:
                break
        else:
            return infos
        work = self.copy()
        out = []
        for i in infos:
            r = work.resolve_one(i)
            out.append(r)
            work.apply(r)
        return out

    def apply(self, info: StatementInfo) -> None:
        """Remember what an allowed statement does to the server's prepared statements."""
        if info.kind == "prepare" and info.prepared_name is not None and info.body is not None:
            self.add(info.prepared_name, info.body)
        elif info.kind == "deallocate":
            if info.prepared_name is None:
                self.clear()
            else:
                self.remove(info.prepared_name)
        elif info.kind == "discard" and info.command == "DISCARD ALL":
            self.clear()

    def apply_all(self, infos: Iterable[StatementInfo]) -> None:
        for i in infos:
            self.apply(i)


_CHANGES = frozenset({"prepare", "deallocate", "discard"})

