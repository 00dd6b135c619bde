"""StatementInfo: what one statement does, as the classifier (hoopd.policy.classify) saw it."""
from __future__ import annotations

from typing import Any, NamedTuple


class StatementInfo(NamedTuple):
    """What one statement does, as far as the parse tree shows.

    Immutable (a NamedTuple: cached instances are shared by all sessions, and a shape
    cache hit builds one in well under a microsecond, where a frozen dataclass takes 2)."""

    kind: str                      # see catalog.KINDS
    command: str                   # a command tag, e.g. "DROP TABLE", "SET ROLE", "EXPLAIN ANALYZE"
    text: str                      # the statement (the whole string when it holds one statement)
    kinds: frozenset[str] = frozenset()  # kind plus the kinds of nested statements that run
    reads: bool = False
    writes: bool = False
    relations: tuple[str, ...] = ()  # as written (schema-qualified where given); CTE names excluded
    functions: tuple[str, ...] = ()  # functions called, as written
    side_effect_functions: tuple[str, ...] = ()  # the called functions known to have side effects
    calls: tuple[tuple[str | None, str], ...] = ()  # functions called: (schema as written or None, name)
    operators: tuple[tuple[str | None, str], ...] = ()  # operators used, the same way
    types: tuple[tuple[str | None, str], ...] = ()  # types named (casts), the same way; not pg_catalog's
    has_where: bool | None = None  # UPDATE/DELETE (also nested): False if any lacks a WHERE
    locks: bool = False            # SELECT ... FOR UPDATE/SHARE, LOCK stronger than ACCESS SHARE
    privilege_change: str | None = None  # "role" | "session_authorization" | "read_write" | "unknown"
    temp_only: bool = False        # its DDL only creates temporary objects
    server_files: bool = False     # COPY to/from a server file or program
    opaque: bool = False           # effects unknown: DO, CALL, EXECUTE of an unknown statement
    prepared_name: str | None = None  # PREPARE / DEALLOCATE target (None: DEALLOCATE ALL)
    executes: tuple[str, ...] = ()  # prepared statements it runs (EXECUTE, also nested)
    body: "StatementInfo | None" = None  # PREPARE: the prepared statement
    error: str | None = None       # unparseable: the parser's message
    shape_safe: bool = False       # may be cached by normalized text (see module docstring)
    lexing: tuple[tuple[str, str | None], ...] = ()  # (setting, new value or None: reset/unknown)
    """Changes to settings that decide how the server reads statement text
    (catalog.LEXING_SETTINGS); the policy stage checks them against the session."""

    def with_effects_of(self, other: "StatementInfo") -> "StatementInfo":
        """This statement plus everything ``other`` does (EXECUTE resolved to its body)."""
        return self._replace(
            kinds=self.kinds | other.kinds,
            reads=self.reads or other.reads,
            writes=self.writes or other.writes,
            relations=_union(self.relations, other.relations),
            functions=_union(self.functions, other.functions),
            side_effect_functions=_union(self.side_effect_functions, other.side_effect_functions),
            calls=_union(self.calls, other.calls),
            operators=_union(self.operators, other.operators),
            types=_union(self.types, other.types),
            has_where=merged_where(self.has_where, other.has_where),
            locks=self.locks or other.locks,
            privilege_change=self.privilege_change or other.privilege_change,
            temp_only=_temp_only(self, other),
            server_files=self.server_files or other.server_files,
            opaque=self.opaque or other.opaque,
            lexing=_union(self.lexing, other.lexing),
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view for journals and ``hoopd policy explain``."""
        out: dict[str, Any] = {"kind": self.kind, "command": self.command}
        for name in ("kinds", "relations", "functions", "side_effect_functions", "executes", "lexing"):
            v = getattr(self, name)
            if v:
                out[name] = sorted(v) if isinstance(v, frozenset) else list(v)
        for name in ("reads", "writes", "locks", "temp_only", "server_files", "opaque"):
            if getattr(self, name):
                out[name] = True
        for name in ("has_where", "privilege_change", "prepared_name", "error"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _union(a: tuple, b: tuple) -> tuple:
    return a + tuple(x for x in b if x not in a) if b else a


def merged_where(a: bool | None, b: bool | None) -> bool | None:
    if a is None or b is None:
        return b if a is None else a
    return a and b


def _temp_only(a: StatementInfo, b: StatementInfo) -> bool:
    with_ddl = [x for x in (a, b) if "ddl" in x.kinds]
    return bool(with_ddl) and all(x.temp_only for x in with_ddl)


def unparseable(sql: str, error: str) -> StatementInfo:
    return StatementInfo("unparseable", "unparseable statement", sql, frozenset({"unparseable"}), error=error)
