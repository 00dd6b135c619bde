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
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from pglast import parser as _pg

from hoopd.policy.catalog import (COMMANDS, DDL_PREFIXES, DML_KINDS, LEXING_SETTINGS, PRIVILEGED_SETTINGS,
                                  READ_ONLY_SETTINGS, SIMPLE_KINDS, is_true, side_effect_level)

if TYPE_CHECKING:
    from hoopd.policy.prepared import PreparedRegistry


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
            has_where=_where(self.has_where, other.has_where),
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


def _where(a: bool | None, b: bool | None) -> bool | None:
    if a is None or b is None:
        return b if a is None else a
    return a and b


def _temp_only(a: StatementInfo, b: StatementInfo) -> bool:
    with_ddl = [x for x in (a, b) if "ddl" in x.kinds]
    return bool(with_ddl) and all(x.temp_only for x in with_ddl)


def unparseable(sql: str, error: str) -> StatementInfo:
    return StatementInfo("unparseable", "unparseable statement", sql, frozenset({"unparseable"}), error=error)


# --- the tree walk ---------------------------------------------------------------------

_EMPTY: frozenset[str] = frozenset()
_DML_SKIP = frozenset({"withClause", "relation"})  # walked by the handler itself
_SELECT_SKIP = frozenset({"withClause", "intoClause"})
_FUNC_SKIP = frozenset({"funcname"})
_COPY_SKIP = frozenset({"relation", "query"})
_DDL_TARGETS = frozenset({"relation", "view", "sequence", "into", "relations", "objects", "object"})
_RELATION_OBJECTS = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX",
                               "OBJECT_SEQUENCE", "OBJECT_FOREIGN_TABLE"})
_TWO_PHASE = frozenset({"TRANS_STMT_PREPARE", "TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED"})
_SHAPE_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})


def _const(node: Any) -> Any:
    """The value of a constant expression node (through type casts), else None."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if not isinstance(node, dict):
        return None
    c = node.get("A_Const")
    if c is None:
        for k in ("Integer", "String", "Boolean"):  # bare value nodes (DefElem arguments)
            if k in node:
                c = {k[0].lower() + "val": node[k]}
        if c is None:
            return None
    if "isnull" in c:
        return None
    if "ival" in c:
        return c["ival"].get("ival", 0)  # protobuf-style JSON leaves zero out
    if "sval" in c:
        return c["sval"].get("sval", "")
    if "boolval" in c:
        return c["boolval"].get("boolval", False)
    if "fval" in c:
        return c["fval"].get("fval", "")
    return None


def _names(items: Iterable[Any]) -> list[str]:
    return [n["String"].get("sval", "") for n in items if isinstance(n, dict) and "String" in n]


class _Walker:
    """Collects the effects of one statement while walking its JSON parse tree."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.kinds: set[str] = set()
        self.reads = self.writes = self.locks = self.server_files = self.opaque = False
        self.relations: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.side_effects: dict[str, None] = {}
        self.calls: dict[tuple[str | None, str], None] = {}
        self.operators: dict[tuple[str | None, str], None] = {}
        self.has_where: bool | None = None
        self.privilege: str | None = None
        self.ddl_temp: list[bool] = []
        self.executes: dict[str, None] = {}
        self.prepared_name: str | None = None
        self.body: StatementInfo | None = None
        self.const_dependent = False
        self.lexing: dict[tuple[str, str | None], None] = {}
        self.target = False  # relations met now are written or created, not read

    # generic descent

    def node(self, v: Any, scope: frozenset[str]) -> None:
        if isinstance(v, dict):
            if len(v) == 1:
                ((k, inner),) = v.items()
                if k[:1].isupper() and isinstance(inner, dict):
                    handler = _HANDLERS.get(k)
                    if handler is not None:
                        handler(self, inner, scope)
                    elif k.endswith("Stmt"):
                        _other_statement(self, k, inner, scope)
                    else:
                        self.fields(inner, scope)
                    return
            self.struct(v, scope)
        elif isinstance(v, list):
            for x in v:
                self.node(x, scope)

    def struct(self, d: dict, scope: frozenset[str]) -> None:
        """A node embedded without its type wrapper (a field typed RangeVar*, FuncCall*, ...)."""
        if "relname" in d:
            self.relation(d, scope)
        elif "funcname" in d and "funcformat" in d:
            _func_call(self, d, scope)
        elif "ctes" in d:
            self.with_clause(d, scope)
        else:
            self.fields(d, scope)

    def fields(self, d: dict, scope: frozenset[str], skip: frozenset[str] = _EMPTY) -> None:
        for k, v in d.items():
            if k not in skip and isinstance(v, (dict, list)):
                self.node(v, scope)

    # facts

    def statement(self, kind: str) -> None:
        if self.kind is None:
            self.kind = kind
        self.kinds.add(kind)

    def relation(self, d: dict, scope: frozenset[str], target: bool = False) -> None:
        name = d.get("relname", "")
        schema = d.get("schemaname")
        target = target or self.target
        if not schema and not target and name in scope:
            return  # a CTE
        self.relations[f"{schema}.{name}" if schema else name] = None
        if not target:
            self.reads = True

    def with_clause(self, wc: dict | None, scope: frozenset[str]) -> frozenset[str]:
        """Walk the CTEs with PostgreSQL's scoping; return the scope of the statement body."""
        if not wc:
            return scope
        ctes = [c.get("CommonTableExpr", {}) for c in wc.get("ctes", ()) if isinstance(c, dict)]
        names = frozenset(c.get("ctename", "") for c in ctes)
        recursive = wc.get("recursive", False)
        visible = scope | names if recursive else scope
        for c in ctes:
            self.fields(c, visible)
            if not recursive:
                visible = visible | {c.get("ctename", "")}
        return visible

    def privilege_change(self, what: str) -> None:
        if self.privilege is None:
            self.privilege = what

    def transaction_options(self, options: Any) -> None:
        for o in options or ():
            d = o.get("DefElem", {}) if isinstance(o, dict) else {}
            if d.get("defname") == "transaction_read_only" and not is_true(_const(d.get("arg"))):
                self.privilege_change("read_write")

    def sub(self, query: Any) -> "_Walker":
        """A separately walked nested statement (EXPLAIN, PREPARE, COPY, DECLARE bodies)."""
        w = _Walker()
        w.node(query, _EMPTY)
        return w

    def absorb(self, w: "_Walker", runs: bool = True) -> None:
        """Take over a nested statement's facts; ``runs`` False (plain EXPLAIN) keeps only
        the names and what is checked conservatively anyway."""
        self.relations.update(w.relations)
        self.functions.update(w.functions)
        self.side_effects.update(w.side_effects)
        self.calls.update(w.calls)
        self.operators.update(w.operators)
        if w.privilege:
            self.privilege_change(w.privilege)
        self.const_dependent = self.const_dependent or w.const_dependent
        self.lexing.update(w.lexing)
        if not runs:
            return
        self.kinds |= w.kinds
        self.reads = self.reads or w.reads
        self.writes = self.writes or w.writes
        self.locks = self.locks or w.locks
        self.server_files = self.server_files or w.server_files
        self.opaque = self.opaque or w.opaque
        self.has_where = _where(self.has_where, w.has_where)
        self.ddl_temp += w.ddl_temp
        self.executes.update(w.executes)

    def freeze(self, command: str, text: str) -> StatementInfo:
        kind = self.kind or "utility"
        return StatementInfo(
            kind=kind, command=command, text=text, kinds=frozenset(self.kinds or {kind}),
            reads=self.reads, writes=self.writes, relations=tuple(self.relations),
            functions=tuple(self.functions), side_effect_functions=tuple(self.side_effects),
            calls=tuple(self.calls), operators=tuple(self.operators), has_where=self.has_where, locks=self.locks, privilege_change=self.privilege,
            temp_only=bool(self.ddl_temp) and all(self.ddl_temp), server_files=self.server_files,
            opaque=self.opaque or bool(self.executes), prepared_name=self.prepared_name,
            executes=tuple(self.executes), body=self.body, lexing=tuple(self.lexing),
            shape_safe=kind in _SHAPE_KINDS and not self.const_dependent and not self.executes
            and not self.opaque,
        )


# --- node handlers ---------------------------------------------------------------------

def _select(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    if w.kind is None:
        w.statement("ddl" if "intoClause" in f else "select")
        w.reads = True
    if "intoClause" in f:  # SELECT ... INTO creates a table
        w.writes = True
        w.ddl_temp.append(f["intoClause"].get("rel", {}).get("relpersistence") == "t")
        w.target = True
        w.node(f["intoClause"], scope)
        w.target = False
    if "lockingClause" in f:
        w.locks = True
    w.fields(f, w.with_clause(f.get("withClause"), scope), skip=_SELECT_SKIP)


def _dml(kind: str):  # noqa: ANN202
    def handler(w: _Walker, f: dict, scope: frozenset[str]) -> None:
        w.statement(kind)
        w.writes = True
        if kind != "insert":
            w.reads = True
        body_scope = w.with_clause(f.get("withClause"), scope)
        if isinstance(f.get("relation"), dict):  # the target is never a CTE
            w.relation(f["relation"], scope, target=True)
        if kind in ("update", "delete"):
            w.has_where = _where(w.has_where, "whereClause" in f)
        w.fields(f, body_scope, skip=_DML_SKIP)
    return handler


def _range_var(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.relation(f, scope)


def _func_call(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    parts = _names(f.get("funcname", ()))
    name = ".".join(parts)
    w.functions[name] = None
    if parts:
        w.calls[_qualified(parts)] = None
    bare = parts[-1].lower() if parts else ""
    if bare == "set_config":
        _set_config(w, name, f.get("args") or [])
    elif side_effect_level(bare):
        w.side_effects[name] = None
    w.fields(f, scope, skip=_FUNC_SKIP)


def _qualified(parts: list[str]) -> tuple[str | None, str]:
    """(schema or None, name) of a possibly qualified name (a database part is ignored)."""
    return (parts[-2] if len(parts) > 1 else None, parts[-1])


def _operator(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    """An operator expression (also IN, LIKE, BETWEEN, IS DISTINCT FROM: each names the
    operator it uses); user-defined operators run their function."""
    parts = _names(f.get("name", ()))
    if parts:
        w.operators[_qualified(parts)] = None
    w.fields(f, scope)


def _set_config(w: _Walker, name: str, args: list) -> None:
    """set_config() is a SET: a side effect only when it changes privileges."""
    w.const_dependent = True
    setting = _const(args[0]) if args else None
    if not isinstance(setting, str):
        change: str | None = "unknown"
    else:
        setting = setting.lower()
        if setting in LEXING_SETTINGS:
            value = _const(args[1]) if len(args) > 1 else None
            w.lexing[(setting, value if isinstance(value, str) else None)] = None
        change = PRIVILEGED_SETTINGS.get(setting)
        if setting in READ_ONLY_SETTINGS and not is_true(_const(args[1]) if len(args) > 1 else None):
            change = "read_write"
    if change:
        w.privilege_change(change)
        if change != "read_write":  # that one is like SET default_transaction_read_only (read_write may)
            w.side_effects[name] = None


def _variable_set(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("set")
    w.const_dependent = True
    kind = f.get("kind", "")
    name = f.get("name", "").lower()  # setting names are case-insensitive
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION / SESSION CHARACTERISTICS AS TRANSACTION ...
        w.transaction_options(f.get("args"))
    elif name in PRIVILEGED_SETTINGS:
        # SET SESSION AUTHORIZATION DEFAULT / RESET SESSION AUTHORIZATION return to the
        # gateway's own login user, which DISCARD ALL does too; npgsql's reset sends it.
        if not (name == "session_authorization" and kind in ("VAR_SET_DEFAULT", "VAR_RESET")):
            w.privilege_change(PRIVILEGED_SETTINGS[name])
    elif name in READ_ONLY_SETTINGS:
        args = f.get("args") or []
        if not (kind == "VAR_SET_VALUE" and args and all(is_true(_const(a)) for a in args)):
            w.privilege_change("read_write")
    elif name in LEXING_SETTINGS and kind in ("VAR_SET_VALUE", "VAR_SET_CURRENT"):
        args = f.get("args") or []
        value = _const(args[0]) if len(args) == 1 and kind == "VAR_SET_VALUE" else None
        w.lexing[(name, str(value) if isinstance(value, (str, int)) else None)] = None


def _transaction(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("transaction")
    w.const_dependent = True
    if f.get("kind") in _TWO_PHASE:
        w.writes = True
    w.transaction_options(f.get("options"))


def _explain_analyze(options: Any) -> bool:
    for o in options or ():
        d = o.get("DefElem", {}) if isinstance(o, dict) else {}
        if d.get("defname") == "analyze":
            v = _const(d.get("arg")) if "arg" in d else True
            if not (v is False or v == 0 or (isinstance(v, str) and v.lower() in ("false", "off"))):
                return True
    return False


def _explain(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("explain")
    w.const_dependent = True
    w.absorb(w.sub(f.get("query")), runs=_explain_analyze(f.get("options")))


def _prepare(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("prepare")
    w.prepared_name = f.get("name", "")
    body = w.sub(f.get("query"))
    w.absorb(body)  # refused where the body would be, before anything is prepared
    w.body = body.freeze("", "")


def _execute(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("execute")
    w.executes[f.get("name", "")] = None
    w.fields(f, scope)


def _deallocate(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("deallocate")
    w.prepared_name = None if f.get("isall") else f.get("name")


def _copy(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    is_from = bool(f.get("is_from"))
    if f.get("is_program"):
        w.statement("copy_program")
        w.writes = True
    else:
        w.statement("copy_from" if is_from else "copy_to")
        w.writes = w.writes or is_from
        w.reads = w.reads or not is_from
    w.server_files = w.server_files or bool(f.get("is_program") or f.get("filename"))
    if isinstance(f.get("relation"), dict):
        w.relation(f["relation"], scope, target=is_from)
    if "query" in f:
        w.absorb(w.sub(f["query"]))
    w.fields(f, scope, skip=_COPY_SKIP)


def _declare(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("declare")
    w.absorb(w.sub(f.get("query")))


def _opaque(kind: str):  # noqa: ANN202
    def handler(w: _Walker, f: dict, scope: frozenset[str]) -> None:
        w.statement(kind)
        w.writes = w.opaque = True  # treated as writes: their effects cannot be seen
        w.fields(f, scope)
    return handler


def _simple(w: _Walker, f: dict, scope: frozenset[str], kind: str) -> None:
    w.statement(kind)
    if kind in ("ddl", "dcl", "utility", "vacuum", "analyze"):
        w.writes = True
    w.fields(f, scope)


def _ddl(w: _Walker, node: str, f: dict, scope: frozenset[str]) -> None:
    w.statement("ddl")
    w.writes = True
    rel = f.get("relation") or f.get("view") or f.get("sequence") or f.get("into", {}).get("rel")
    w.ddl_temp.append(node in ("CreateStmt", "ViewStmt", "CreateSeqStmt", "CreateTableAsStmt")
                      and isinstance(rel, dict) and rel.get("relpersistence") == "t"
                      and f.get("objtype", "OBJECT_TABLE") == "OBJECT_TABLE")
    if node == "DropStmt" and f.get("removeType") in _RELATION_OBJECTS:
        for obj in f.get("objects", ()):
            names = _names(obj.get("List", {}).get("items", ())) if isinstance(obj, dict) else []
            if names:
                w.relations[".".join(names[-2:])] = None
    for k, v in f.items():
        if isinstance(v, (dict, list)):
            w.target = k in _DDL_TARGETS
            w.node(v, scope)
            w.target = False


def _other_statement(w: _Walker, node: str, f: dict, scope: frozenset[str]) -> None:
    kind = SIMPLE_KINDS.get(node) or ("ddl" if node.startswith(DDL_PREFIXES) else "utility")
    if node == "ReturnStmt":  # inside a SQL function body: an expression, not a statement
        w.fields(f, scope)
    elif kind == "ddl":
        _ddl(w, node, f, scope)
    else:
        _simple(w, f, scope, kind)
        if node == "NotifyStmt":
            w.writes = True
        elif node == "LockStmt":  # ACCESS SHARE (1) is what SELECT takes anyway (pg_dump locks so)
            w.locks = w.locks or f.get("mode", 8) > 1


def _vacuum(w: _Walker, f: dict, scope: frozenset[str]) -> None:
    _simple(w, f, scope, "vacuum" if f.get("is_vacuumcmd") else "analyze")


_HANDLERS = {
    "SelectStmt": _select,
    **{node: _dml(kind) for node, kind in DML_KINDS.items()},
    "RangeVar": _range_var,
    "FuncCall": _func_call,
    "A_Expr": _operator,
    "VariableSetStmt": _variable_set,
    "TransactionStmt": _transaction,
    "ExplainStmt": _explain,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeallocateStmt": _deallocate,
    "CopyStmt": _copy,
    "DeclareCursorStmt": _declare,
    "DoStmt": _opaque("do"),
    "CallStmt": _opaque("call"),
    "VacuumStmt": _vacuum,
}


# --- command tags ----------------------------------------------------------------------

_TRANSACTION_TAGS = {"START": "START TRANSACTION", "ROLLBACK TO": "ROLLBACK TO SAVEPOINT",
                     "PREPARE": "PREPARE TRANSACTION"}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _command(node: str, f: dict) -> str:
    if node == "DropStmt":
        return "DROP " + f.get("removeType", "OBJECT_")[7:].replace("_", " ")
    if node == "VariableSetStmt":
        kind, name = f.get("kind", ""), f.get("name", "")
        if kind == "VAR_RESET_ALL":
            return "RESET ALL"
        label = name.replace("_", " ").upper() if name.lower() in PRIVILEGED_SETTINGS else name
        return ("RESET " if kind == "VAR_RESET" else "SET ") + label
    if node == "TransactionStmt":
        tag = f.get("kind", "TRANS_STMT_")[11:].replace("_", " ")
        return _TRANSACTION_TAGS.get(tag, tag)
    if node == "SelectStmt" and "intoClause" in f:
        return "SELECT INTO"
    if node == "ExplainStmt":
        return "EXPLAIN ANALYZE" if _explain_analyze(f.get("options")) else "EXPLAIN"
    if node == "DiscardStmt":
        return "DISCARD " + f.get("target", "DISCARD_")[8:]
    if node == "VacuumStmt":
        return "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE"
    if node == "CreateTableAsStmt" and f.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if node == "GrantStmt" and not f.get("is_grant"):
        return "REVOKE"
    return COMMANDS.get(node) or _CAMEL.sub(" ", node.removesuffix("Stmt")).upper()


# --- parsing, slicing, caching ---------------------------------------------------------

def _parse_json(sql: str) -> str:
    """The one place libpg_query parses (tests count calls here)."""
    return _pg.parse_sql_json(sql)


def _normalize(sql: str) -> str:
    return _pg.normalize(sql)


def _statements(sql: str) -> tuple[StatementInfo, ...]:
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
    w = _Walker()
    w.node(stmt, _EMPTY)
    node, fields = next(iter(stmt.items()), ("", {}))
    return w.freeze(_command(node, fields), text)


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

    def classify(self, sql: str, prepared: "PreparedRegistry | None" = None) -> list[StatementInfo]:
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
            infos = _statements(sql)
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


def classify(sql: str, prepared: "PreparedRegistry | None" = None) -> list[StatementInfo]:
    """Classify with the process-wide classifier (see Classifier.classify)."""
    return default_classifier.classify(sql, prepared)
