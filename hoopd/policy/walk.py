"""The walk over one statement's JSON parse tree that fills a StatementInfo.

Plain dicts as pglast's parse_sql_json gives them; one handler per node type that needs a
closer look (_HANDLERS), generic descent for the rest.
"""
from __future__ import annotations

from typing import Any, Iterable

from hoopd.policy.catalog import (DDL_PREFIXES, DML_KINDS, LEXING_SETTINGS, PRIVILEGED_SETTINGS,
                                  READ_ONLY_SETTINGS, SIMPLE_KINDS, is_true, side_effect_level)
from hoopd.policy.statement import StatementInfo, merged_where

EMPTY: frozenset[str] = frozenset()
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


class Walker:
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
        self.types: dict[tuple[str | None, str], None] = {}
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
        elif "names" in d and "typemod" in d:
            _type_name(self, d, scope)
        else:
            self.fields(d, scope)

    def fields(self, d: dict, scope: frozenset[str], skip: frozenset[str] = EMPTY) -> None:
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

    def sub(self, query: Any) -> "Walker":
        """A separately walked nested statement (EXPLAIN, PREPARE, COPY, DECLARE bodies)."""
        w = Walker()
        w.node(query, EMPTY)
        return w

    def absorb(self, w: "Walker", runs: bool = True) -> None:
        """Take over a nested statement's facts; ``runs`` False (plain EXPLAIN) keeps only
        the names and what is checked conservatively anyway."""
        self.relations.update(w.relations)
        self.functions.update(w.functions)
        self.side_effects.update(w.side_effects)
        self.calls.update(w.calls)
        self.operators.update(w.operators)
        self.types.update(w.types)
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
        self.has_where = merged_where(self.has_where, w.has_where)
        self.ddl_temp += w.ddl_temp
        self.executes.update(w.executes)

    def freeze(self, command: str, text: str) -> StatementInfo:
        kind = self.kind or "utility"
        return StatementInfo(
            kind=kind, command=command, text=text, kinds=frozenset(self.kinds or {kind}),
            reads=self.reads, writes=self.writes, relations=tuple(self.relations),
            functions=tuple(self.functions), side_effect_functions=tuple(self.side_effects),
            calls=tuple(self.calls), operators=tuple(self.operators), types=tuple(self.types),
            has_where=self.has_where, locks=self.locks, privilege_change=self.privilege,
            temp_only=bool(self.ddl_temp) and all(self.ddl_temp), server_files=self.server_files,
            opaque=self.opaque or bool(self.executes), prepared_name=self.prepared_name,
            executes=tuple(self.executes), body=self.body, lexing=tuple(self.lexing),
            shape_safe=kind in _SHAPE_KINDS and not self.const_dependent and not self.executes
            and not self.opaque,
        )


# --- node handlers ---------------------------------------------------------------------

def _select(w: Walker, f: dict, scope: frozenset[str]) -> None:
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
    def handler(w: Walker, f: dict, scope: frozenset[str]) -> None:
        w.statement(kind)
        w.writes = True
        if kind != "insert":
            w.reads = True
        body_scope = w.with_clause(f.get("withClause"), scope)
        if isinstance(f.get("relation"), dict):  # the target is never a CTE
            w.relation(f["relation"], scope, target=True)
        if kind in ("update", "delete"):
            w.has_where = merged_where(w.has_where, "whereClause" in f)
        w.fields(f, body_scope, skip=_DML_SKIP)
    return handler


def _range_var(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.relation(f, scope)


def _func_call(w: Walker, f: dict, scope: frozenset[str]) -> None:
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


def _operator(w: Walker, f: dict, scope: frozenset[str]) -> None:
    """An operator expression (also IN, LIKE, BETWEEN, IS DISTINCT FROM: each names the
    operator it uses); user-defined operators run their function."""
    parts = _names(f.get("name", ()))
    if parts:
        w.operators[_qualified(parts)] = None
    w.fields(f, scope)


def _type_name(w: Walker, f: dict, scope: frozenset[str]) -> None:
    """A type named in a cast or a declaration: converting a value to it may run its
    input function, a cast's function or a domain's CHECK expressions."""
    parts = _names(f.get("names", ()))
    if parts and parts[0] != "pg_catalog":
        w.types[_qualified(parts)] = None
    w.fields(f, scope)


def _set_config(w: Walker, name: str, args: list) -> None:
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


def _variable_set(w: Walker, f: dict, scope: frozenset[str]) -> None:
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


def _transaction(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("transaction")
    w.const_dependent = True
    if f.get("kind") in _TWO_PHASE:
        w.writes = True
    w.transaction_options(f.get("options"))


def explain_analyze(options: Any) -> bool:
    for o in options or ():
        d = o.get("DefElem", {}) if isinstance(o, dict) else {}
        if d.get("defname") == "analyze":
            v = _const(d.get("arg")) if "arg" in d else True
            if not (v is False or v == 0 or (isinstance(v, str) and v.lower() in ("false", "off"))):
                return True
    return False


def _explain(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("explain")
    w.const_dependent = True
    w.absorb(w.sub(f.get("query")), runs=explain_analyze(f.get("options")))


def _prepare(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("prepare")
    w.prepared_name = f.get("name", "")
    body = w.sub(f.get("query"))
    w.absorb(body)  # refused where the body would be, before anything is prepared
    w.body = body.freeze("", "")


def _execute(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("execute")
    w.executes[f.get("name", "")] = None
    w.fields(f, scope)


def _deallocate(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("deallocate")
    w.prepared_name = None if f.get("isall") else f.get("name")


def _copy(w: Walker, f: dict, scope: frozenset[str]) -> None:
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


def _declare(w: Walker, f: dict, scope: frozenset[str]) -> None:
    w.statement("declare")
    w.absorb(w.sub(f.get("query")))


def _opaque(kind: str):  # noqa: ANN202
    def handler(w: Walker, f: dict, scope: frozenset[str]) -> None:
        w.statement(kind)
        w.writes = w.opaque = True  # treated as writes: their effects cannot be seen
        w.fields(f, scope)
    return handler


def _simple(w: Walker, f: dict, scope: frozenset[str], kind: str) -> None:
    w.statement(kind)
    if kind in ("ddl", "dcl", "utility", "vacuum", "analyze"):
        w.writes = True
    w.fields(f, scope)


def _ddl(w: Walker, node: str, f: dict, scope: frozenset[str]) -> None:
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


def _other_statement(w: Walker, node: str, f: dict, scope: frozenset[str]) -> None:
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


def _vacuum(w: Walker, f: dict, scope: frozenset[str]) -> None:
    _simple(w, f, scope, "vacuum" if f.get("is_vacuumcmd") else "analyze")


_HANDLERS = {
    "SelectStmt": _select,
    **{node: _dml(kind) for node, kind in DML_KINDS.items()},
    "RangeVar": _range_var,
    "FuncCall": _func_call,
    "A_Expr": _operator,
    "TypeName": _type_name,
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
