"""SQL classification with PostgreSQL's own grammar (pglast / libpg_query, PG 18).

``classify(sql)`` returns one StatementInfo per statement: its kind, what it reads and
writes, the relations and functions it names, and the effects that make naive policy
fail (data-modifying CTEs, EXPLAIN ANALYZE, PREPARE/EXECUTE, DO/CALL, privilege changes).

The parse tree comes from ``pglast.parser.parse_sql_json`` + ``json.loads`` and is walked
as plain dicts. That is the faster of pglast's two parse calls: parse_sql_json + json.loads
took 13 us for a pgbench select and 28 us for psql's ``\\d NAME`` query on the 2-core dev
machine, ``pglast.parse_sql`` (Python node objects) 47 us and 146 us (bench/policy_bench.py
prints both).

Caching, and why not by fingerprint alone
-----------------------------------------
``pglast.parser.fingerprint`` ignores constants, and more than that: measured with
pglast 8.8, ``select * from a.t`` and ``select * from b.t`` share a fingerprint (schema
names are ignored), so do ``delete from t`` and ``delete from t where true`` (a WHERE
that is a constant), ``SET default_transaction_read_only = on`` and ``= off``,
``BEGIN READ ONLY`` and ``BEGIN READ WRITE``, ``set_config('role', ...)`` and
``set_config('search_path', ...)``, ``EXECUTE a`` and ``EXECUTE b``. It is also a
64-bit non-cryptographic hash, so a client could search for a harmful statement that
collides with a harmless one it got cached first. A fingerprint key would let each of
those share a wrong classification, so the classifier uses two exact keys instead:

1. the exact text (bounded LRU): a repeated statement costs one dict lookup and no
   parser call at all;
2. the *normalized* text (``pglast.parser.normalize``: constants replaced by ``$n``,
   everything else, schema names and comments included, kept), for single statements
   whose classification provably does not read a constant: plain SELECT / INSERT /
   UPDATE / DELETE / MERGE without ``set_config`` or EXECUTE. Such a hit costs one
   libpg_query normalize in C (4-10 us) and no JSON or tree walk. Utility statements
   (SET, BEGIN, EXPLAIN, COPY, PREPARE, ...) are cached by exact text only.

Both caches hold statically known facts; what EXECUTE runs is resolved afterwards
against the session's PreparedRegistry (hoopd.policy.prepared), never cached.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from pglast import parser as _pg

from hoopd.policy.commands import command
from hoopd.policy.prepared import PreparedRegistry
from hoopd.policy.statement import StatementInfo, unparseable
from hoopd.policy.walk import EMPTY, Walker


def _parse_json(sql: str) -> str:
    """The one place libpg_query parses (tests count calls here)."""
    return _pg.parse_sql_json(sql)


def _normalize(sql: str) -> str:
    return _pg.normalize(sql)


def statements_of(sql: str) -> tuple[StatementInfo, ...]:
    """Classify ``sql`` uncached (pglast's errors propagate)."""
    tree = json.loads(_parse_json(sql))
    stmts = tree.get("stmts", [])
    if len(stmts) == 1:
        return (_one(stmts[0].get("stmt", {}), sql.strip()),)
    raw = sql if sql.isascii() else sql.encode("utf-8")  # locations count bytes
    out = []
    for s in stmts:
        start = s.get("stmt_location", 0)
        end = start + s["stmt_len"] if s.get("stmt_len") else len(raw)
        piece = raw[start:end]
        out.append(_one(s.get("stmt", {}), (piece if isinstance(piece, str) else piece.decode("utf-8")).strip()))
    return tuple(out)


def _one(stmt: dict, text: str) -> StatementInfo:
    w = Walker()
    w.node(stmt, EMPTY)
    node, fields = next(iter(stmt.items()), ("", {}))
    return w.freeze(command(node, fields), text)


_new_info = tuple.__new__


class _LRU:
    """An LRU map bounded by entry count and by the total length of its keys."""

    def __init__(self, max_entries: int, max_chars: int) -> None:
        self._d: OrderedDict[str, Any] = OrderedDict()
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.chars = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str) -> Any:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: str, value: Any) -> None:
        if key in self._d:
            return
        self._d[key] = value
        self.chars += len(key)
        while len(self._d) > self.max_entries or self.chars > self.max_chars:
            old, _ = self._d.popitem(last=False)
            self.chars -= len(old)


class Classifier:
    """classify() with the two caches described in the module docstring.

    Texts longer than ``max_text`` characters are classified every time (never cached).
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 8 << 20, max_text: int = 64 << 10) -> None:
        self._exact = _LRU(max_entries, max_chars)
        self._shapes = _LRU(max_entries, max_chars)
        self.max_text = max_text
        self.parses = self.exact_hits = self.shape_hits = 0

    def stats(self) -> dict[str, int]:
        """Counters for metrics and the bench: hits, full parses, cache sizes."""
        return {"exact_hits": self.exact_hits, "shape_hits": self.shape_hits, "parses": self.parses,
                "exact_entries": len(self._exact), "shape_entries": len(self._shapes)}

    def classify(self, sql: str, prepared: PreparedRegistry | None = None) -> list[StatementInfo]:
        """One StatementInfo per statement; with ``prepared``, EXECUTE is resolved against
        it statement by statement (a PREPARE earlier in the same string counts). The
        registry itself is not changed: see PreparedRegistry.apply."""
        infos = self.static(sql)
        return prepared.resolve(infos) if prepared is not None else list(infos)

    def static(self, sql: str) -> tuple[StatementInfo, ...]:
        """What the text alone says (EXECUTE left unresolved, i.e. opaque)."""
        cacheable = len(sql) <= self.max_text
        if cacheable:
            hit = self._exact.get(sql)
            if hit is not None:
                self.exact_hits += 1
                return hit
        if "\0" in sql:  # libpg_query would stop reading at the NUL and miss the rest
            infos: tuple[StatementInfo, ...] = (unparseable(sql, "statement text contains a NUL byte"),)
        else:
            infos, shape_hit = self._classify_text(sql, cacheable)
            if shape_hit:  # same shape, other constants: not worth an exact entry
                return infos
        if cacheable:
            self._exact.put(sql, infos)
        return infos

    def _classify_text(self, sql: str, cacheable: bool) -> tuple[tuple[StatementInfo, ...], bool]:
        shape = None
        try:
            if cacheable:
                shape = _normalize(sql)
                hit = self._shapes.get(shape)
                if hit is not None:
                    self.shape_hits += 1
                    return (_new_info(StatementInfo, hit[:2] + (sql.strip(),) + hit[3:]),), True
            self.parses += 1
            infos = statements_of(sql)
        except _pg.ParseError as e:
            return (unparseable(sql, str(e)),), False
        except (UnicodeError, ValueError) as e:
            return (unparseable(sql, f"cannot read statement text: {e}"),), False
        except RecursionError:
            return (unparseable(sql, "statement is nested too deeply"),), False
        if shape is not None and len(infos) == 1 and infos[0].shape_safe:
            self._shapes.put(shape, infos[0])
        return infos, False


default_classifier = Classifier()


def classify(sql: str, prepared: PreparedRegistry | None = None) -> list[StatementInfo]:
    """Classify with the process-wide classifier (see Classifier.classify)."""
    return default_classifier.classify(sql, prepared)
