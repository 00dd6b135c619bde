"""Which result columns of a statement carry values of masked columns, from its parse tree.

PostgreSQL's RowDescription names the source table and column of every result column
that is a plain column reference (through aliases, subqueries and CTEs); a computed
column (``lower(email)``, ``email || ''``, ``row_to_json(c)``, a UNION's columns, a
scalar subquery, RETURNING) has table OID 0. For those, this module reads the
statement's tree (pglast's JSON, as plain dicts) and marks every output whose
expression reads a masked column, by a taint that flows:

* from the columns a ``Source`` says are masked, of every relation the statement names
  (a CTE with the same name as a relation counts as both: fail closed);
* through every ``AS`` anywhere in the statement (``with x as (select email e ...)``
  makes ``e`` tainted), CTE and subquery column lists, whole-row references
  (``select c from customers c``) and stars over a tainted relation or subquery;
* from calls of functions the Source cannot vouch for (a user-defined function may
  read a masked table the statement does not name).

It over-approximates: a name tainted anywhere is tainted everywhere in the statement, and
an output is tainted when anything in its expression (a scalar subquery's WHERE too)
is. Outputs whose positions cannot be known (a star over a computed relation) share
one mark for the whole result (``Derived.any``).
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, NamedTuple, Protocol, TypeVar

M = TypeVar("M")  # whatever marks a masked value (hoopd.masking.columns uses the MaskRule)


class Source(Protocol[M]):
    """What the catalog says, for relations and functions as the statement writes them."""

    def column(self, schema: str | None, relation: str, column: str) -> M | None: ...

    def relation(self, schema: str | None, relation: str) -> M | None:
        """A mark when any of its columns is masked (for ``c.*`` and whole-row ``c``)."""

    def masked(self, schema: str | None, relation: str) -> dict[str, M]:
        """Its masked columns by name (what a star over it brings into a subquery or CTE)."""

    def function(self, schema: str | None, name: str) -> M | None:
        """A mark when a call's result may carry masked values."""

    def has_column(self, schema: str | None, relation: str, column: str) -> bool:
        """Whether a relation of that name (any schema when None) has the column."""


class Derived(NamedTuple, Generic[M]):
    columns: tuple[M | None, ...] | None  # per result position; None: positions unknown
    any: M | None  # the first mark of any output (applies to all computed outputs when positions are unknown)


NOTHING: Derived = Derived((), None)
_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")


def _dicts(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every dict in the tree."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                yield k, v
                if isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(n, list):
            stack.extend(n)


def _strings(fields: list) -> list[str | None]:
    """ColumnRef / funcname fields: names, None for a star."""
    return [f["String"].get("sval", "") if "String" in f else None for f in fields if isinstance(f, dict)]


class _Statement(Generic[M]):
    def __init__(self, tree: dict, source: Source[M]) -> None:
        self.source = source
        self.relations: list[tuple[str | None, str]] = []  # every relation named
        self.aliases: dict[str, tuple[str | None, str] | None] = {}  # alias -> relation (None: subquery, CTE, function)
        self.names: dict[str, M] = {}  # output names tainted somewhere in the statement
        self.tainted: dict[str, M] = {}  # aliases of subqueries, CTEs and functions with a tainted output
        targets: list[dict] = []
        derived: list[tuple[str, Any, list[str]]] = []  # (alias, subtree, column names)
        for k, v in _dicts(tree):
            if k == "RangeVar" or (k == "relation" and isinstance(v, dict) and "relname" in v):
                rel = (v.get("schemaname"), v["relname"])
                self.relations.append(rel)
                alias = (v.get("alias") or {}).get("aliasname")
                self.aliases[alias or rel[1]] = rel
            elif k == "ResTarget" and "val" in v:
                targets.append(v)
            elif k == "CommonTableExpr":
                derived.append((v.get("ctename", ""), v.get("ctequery"), _strings(v.get("aliascolnames", []))))
            elif k in ("RangeSubselect", "RangeFunction", "RangeTableFunc", "JsonTable"):
                alias = v.get("alias") or {}
                name = alias.get("aliasname", "")
                self.aliases.setdefault(name, None)
                derived.append((name, v, _strings(alias.get("colnames", []))))
        for _ in range(len(targets) + len(derived) + 1):  # to a fixpoint (each round taints at least one more)
            grew = False
            for t in targets:
                grew = self._star_names(t["val"]) or grew
                name = t.get("name") or self._ref_name(t["val"])
                if name and name not in self.names:
                    mark = self.taint(t["val"])
                    if mark is not None:
                        self.names[name] = mark
                        grew = True
            for alias, subtree, columns in derived:
                if alias in self.tainted:
                    continue
                mark = self.taint(subtree)
                if mark is not None:
                    self.tainted[alias] = mark
                    for c in columns:
                        if c:
                            self.names.setdefault(c, mark)
                    grew = True
            if not grew:
                break

    def _star_names(self, val: dict) -> bool:
        """A star target: the masked columns it expands to are tainted names from here on."""
        fields = _strings(val.get("ColumnRef", {}).get("fields", [])) if "ColumnRef" in val else []
        if not fields or fields[-1] is not None:
            return False
        rels = ([self.aliases.get(fields[-2] or "")] if len(fields) > 1 else list(self.aliases.values()))
        grew = False
        for rel in rels:
            if rel is not None:
                for name, mark in self.source.masked(*rel).items():
                    if name not in self.names:
                        self.names[name] = mark
                        grew = True
        return grew

    @staticmethod
    def _ref_name(val: dict) -> str | None:
        ref = val.get("ColumnRef")
        if ref is None:
            return None
        fields = _strings(ref.get("fields", []))
        return fields[-1] if fields else None

    def _alias_mark(self, alias: str) -> M | None:
        if alias in self.tainted:
            return self.tainted[alias]
        rel = self.aliases.get(alias)
        return None if rel is None else self.source.relation(*rel)

    def _star(self) -> M | None:
        for alias in self.aliases:
            mark = self._alias_mark(alias)
            if mark is not None:
                return mark
        return None

    def _column(self, fields: list[str | None]) -> M | None:
        if not fields:
            return None
        last = fields[-1]
        if last is None:  # a star
            return self._star() if len(fields) == 1 else self._alias_mark(fields[-2] or "")
        if len(fields) == 1:
            mark = self.names.get(last)
            if mark is None and last in self.aliases:
                mark = self._alias_mark(last)  # a whole-row reference
            if mark is None:
                for rel in self.relations:
                    mark = self.source.column(rel[0], rel[1], last)
                    if mark is not None:
                        break
            if mark is None and self.tainted and not self._real_column(last):
                mark = next(iter(self.tainted.values()))  # a column of a tainted subquery or CTE, unnamed there
            return mark
        qualifier = fields[-2] or ""
        rel = self.aliases.get(qualifier, (fields[-3] if len(fields) > 2 else None, qualifier))
        mark = self.names.get(last)
        if mark is None and rel is not None:
            mark = self.source.column(rel[0], rel[1], last)
        if mark is None and qualifier in self.tainted and not self._real_column(last):
            mark = self.tainted[qualifier]  # a column of a tainted subquery or CTE, unnamed there
        return mark

    def _real_column(self, name: str) -> bool:
        """Whether a relation the statement names has a column ``name`` (then its own
        mark, already asked, is the answer)."""
        return any(self.source.has_column(rel[0], rel[1], name) for rel in self.relations)

    def taint(self, node: Any) -> M | None:
        """The first mark anything in ``node`` carries."""
        for k, v in _dicts(node):
            mark = None
            if k == "ColumnRef":
                mark = self._column(_strings(v.get("fields", [])))
            elif k == "FuncCall":
                parts = _strings(v.get("funcname", []))
                if parts and parts[-1]:
                    mark = self.source.function(parts[-2] if len(parts) > 1 else None, parts[-1])
            if mark is not None:
                return mark
        return None

    def outputs(self, node: dict, default: M | None) -> Derived[M]:
        (kind, body), = node.items()
        if kind == "SelectStmt":
            return self._select(body)
        if kind in _DML:
            returning = (body.get("returningClause") or {}).get("exprs") or body.get("returningList") or []
            return self._targets(returning)
        if kind in ("DeclareCursorStmt", "PrepareStmt") and isinstance(body.get("query"), dict):
            return self.outputs(body["query"], default)
        if kind in ("ExplainStmt", "VariableShowStmt", "TransactionStmt", "VariableSetStmt"):
            return NOTHING
        return Derived(None, default)  # CALL with OUT parameters and the like: what they return is unknown

    def _select(self, body: dict) -> Derived[M]:
        if body.get("op", "SETOP_NONE") != "SETOP_NONE":
            left, right = self._select(body.get("larg", {})), self._select(body.get("rarg", {}))
            first = left.any if left.any is not None else right.any
            if left.columns is None or right.columns is None:
                return Derived(None, first)
            n = max(len(left.columns), len(right.columns))
            pad = (None,) * n
            cols = tuple(a if a is not None else b for a, b in zip(left.columns + pad, right.columns + pad))[:n]
            return Derived(cols, first)
        if body.get("valuesLists"):
            rows = [v.get("List", {}).get("items", []) for v in body["valuesLists"]]
            n = max(len(r) for r in rows)
            cols = tuple(next((m for m in (self.taint(r[i]) for r in rows if i < len(r)) if m is not None), None)
                         for i in range(n))
            return Derived(cols, next((c for c in cols if c is not None), None))
        return self._targets(body.get("targetList", []))

    def _targets(self, targets: list) -> Derived[M]:
        cols: list[M | None] = []
        unknown = False
        for t in targets:
            rt = t.get("ResTarget", t)
            val = rt.get("val", {})
            fields = _strings(val.get("ColumnRef", {}).get("fields", [])) if "ColumnRef" in val else []
            if fields and fields[-1] is None:
                unknown = True  # a star: how many columns it stands for is not in the tree
            cols.append(self.taint(val))
        first = next((c for c in cols if c is not None), None)
        return Derived(None if unknown else tuple(cols), first)


STORES = frozenset({"set_config", "pg_notify", "setval", "pg_logical_emit_message", "lo_from_bytea", "lo_put",
                    "lowrite", "dblink_exec", "dblink_send_query"})
"""Functions that keep an argument somewhere a later statement (or another session) reads
it back from: a setting (``current_setting``), a notification, a sequence, a large object."""


_OPAQUE = ("DoStmt", "CallStmt")  # SQL the tree does not show (a DO body, a procedure's): marked
# with the Source's mark for a function it cannot vouch for (``function(None, "")``)


def opaque_calls(stmt: dict, source: Source[M]) -> M | None:
    """A mark when the statement runs code the tree does not show: DO, CALL, or a function
    the Source cannot vouch for (its errors and notices say what it chooses to)."""
    for k, v in _dicts(stmt):
        if k in _OPAQUE:
            return source.function(None, "")
        if k == "FuncCall":
            parts = _strings(v.get("funcname", []))
            mark = source.function(parts[-2] if len(parts) > 1 else None, parts[-1] or "") if parts else None
            if mark is not None:
                return mark
    return None


def touches(stmt: dict, source: Source[M]) -> M | None:
    """A mark when anything in the statement reads a masked column or a relation that has
    one, or runs code the tree does not show (so an error or notice it causes may quote a
    masked value: ``Failing row contains (...)``, ``invalid input syntax for type
    integer: "..."``, a RAISE)."""
    if next(iter(stmt)) in _OPAQUE:
        return source.function(None, "")
    st = _Statement(stmt, source)
    for rel in st.relations:
        mark = source.relation(*rel)
        if mark is not None:
            return mark
    return st.taint(stmt)


def copies(stmt: dict, source: Source[M]) -> M | None:
    """A mark when the statement stores or exports values of masked columns: INSERT ...
    SELECT, UPDATE ... SET, MERGE, CREATE TABLE AS / SELECT INTO, COPY ... TO a file, anywhere in
    it (a data-modifying CTE, EXPLAIN ANALYZE, PREPARE), counting their source values (a
    WHERE that only filters on a masked column does not count), and calls of STORES with
    a masked argument."""
    if next(iter(stmt)) in _OPAQUE:
        return source.function(None, "")  # its body may copy anything anywhere
    st = _Statement(stmt, source)
    for k, v in _dicts(stmt):
        mark = None
        if k == "FuncCall":
            parts = _strings(v.get("funcname", []))
            if parts and parts[-1] in STORES:
                mark = st.taint(v.get("args"))
        elif k in _COPIERS and isinstance(v, dict):
            mark = _COPIERS[k](st, v)
        if mark is not None:
            return mark
    return None


def _copy_out(st: _Statement, body: dict) -> Any:
    if body.get("is_from") or not (body.get("filename") or body.get("is_program")):
        return None  # TO STDOUT: the stage masks it field by field (hoopd.masking.copyout)
    if isinstance(body.get("query"), dict):
        return st.outputs(body["query"], None).any
    rel = body.get("relation") or {}
    return st.source.relation(rel.get("schemaname"), rel.get("relname", "")) if rel else None


_COPIERS: dict[str, Any] = {  # statement node -> (statement, its body) -> the mark of what it stores
    "InsertStmt": lambda st, b: st.outputs(b["selectStmt"], None).any if isinstance(b.get("selectStmt"), dict)
    else None,
    "UpdateStmt": lambda st, b: st.taint([t.get("ResTarget", {}).get("val") for t in b.get("targetList", [])]),
    "MergeStmt": lambda st, b: st.taint(b.get("mergeWhenClauses")),
    "CreateTableAsStmt": lambda st, b: st.outputs(b["query"], None).any if isinstance(b.get("query"), dict)
    else None,
    "SelectStmt": lambda st, b: st.outputs({"SelectStmt": b}, None).any if b.get("intoClause") else None,
    "CopyStmt": _copy_out,
}


def copy_columns(stmt: dict, source: Source[M], columns: Callable[[str | None, str], list[str] | None],
                 default: M | None) -> tuple[M | None, ...] | None:
    """The marks of a ``COPY ... TO``'s fields, in order; None when their order is not
    known (then every field counts as masked). ``columns(schema, relation)``: the
    relation's column names in attnum order, None when not exactly one relation has the name."""
    body = stmt["CopyStmt"]
    if isinstance(body.get("query"), dict):
        return derive(body["query"], source, default).columns
    rel = body.get("relation") or {}
    schema, name = rel.get("schemaname"), rel.get("relname", "")
    names = _strings(body.get("attlist", [])) or columns(schema, name)
    if names is None:
        return None
    return tuple(source.column(schema, name, n) if n else default for n in names)


def derive(stmt: dict, source: Source[M], default: M | None = None) -> Derived[M]:
    """The marks of one statement's result columns (``stmt``: one ``{"SelectStmt": ...}``
    node of a parse). ``default``: the mark for statements whose outputs are unknown."""
    return _Statement(stmt, source).outputs(stmt, default)
