"""Column rules resolved against one database's relations: which result columns a
session's rules mask, and by which rule.

A result column with a source table (RowDescription's table OID and attribute number)
is masked when a rule's glob names that table's column. A view's column is masked when
a glob names it or its definition derives it from a masked column (hoopd.masking.derive
over the view's SELECT, views of views in turn). A computed column (table OID 0) is
masked when the statement derives it from a masked column, or a one-part glob matches
its name. pg_stats and the other system relations that hold column values are masked
whole.

Fail closed: when the catalog could not be read, or names a table OID it does not know
(created since it was read), every such column is masked by the first column rule
(``fallback``) and ``unknown`` says so, for the stage to log and read the catalog again.
"""
from __future__ import annotations

import json
from pglast import parser as _pg

from hoopd.masking.derive import Derived, derive
from hoopd.masking.relations import FIRST_USER_OID, VALUE_VIEWS, Relations
from hoopd.masking.rules import MaskRule
from hoopd.pgwire.conversation import Columns
from hoopd.policy.catalog import SQL_EXECUTORS
from hoopd.policy.functions import BUILTINS

Plan = tuple["MaskRule | None", ...]
_PARSED_KEPT = 512


def parse(sql: str) -> list[dict] | None:
    """The statements of ``sql`` as pglast JSON trees, None when it does not parse."""
    try:
        return [s["stmt"] for s in json.loads(_pg.parse_sql_json(sql)).get("stmts", [])]
    except Exception:  # (pglast raises ParseError, and others on odd input)
        return None


class ColumnMasks:
    """A session's column rules over one Relations snapshot (None: it could not be read)."""

    def __init__(self, rules: tuple[MaskRule, ...], relations: Relations | None) -> None:
        self.rules = rules
        self.fallback = rules[0]
        self.relations = relations
        self.unknown: set[int] = set()  # table OIDs met that the snapshot does not have
        self._table: dict[tuple[int, int], MaskRule | None] = {}
        self._views: dict[int, Derived[MaskRule]] = {}
        self._parsed: dict[str, list[dict] | None] = {}
        self._derived: dict[tuple[str | None, int], Derived[MaskRule]] = {}  # per statement, like _parsed
        self._plans: dict[int, tuple[Columns, Plan]] = {}  # id(Columns) -> (it, its plan), for sourced results

    # --- hoopd.masking.derive.Source ---------------------------------------------------

    def column(self, schema: str | None, relation: str, column: str) -> MaskRule | None:
        rels = self.relations
        if rels is None:
            return self.fallback
        for oid in rels.named(schema, relation):
            attnum = rels.by_oid[oid].attnums.get(column)
            if attnum is not None:
                rule = self.table_rule(oid, attnum)
                if rule is not None:
                    return rule
        return None

    def relation(self, schema: str | None, relation: str) -> MaskRule | None:
        rels = self.relations
        if rels is None:
            return self.fallback
        for oid in rels.named(schema, relation):
            for attnum in rels.by_oid[oid].columns:
                rule = self.table_rule(oid, attnum)
                if rule is not None:
                    return rule
        return None

    def masked(self, schema: str | None, relation: str) -> dict[str, MaskRule]:
        rels = self.relations
        out: dict[str, MaskRule] = {}
        for oid in rels.named(schema, relation) if rels is not None else ():
            for attnum, name in rels.by_oid[oid].columns.items():
                rule = self.table_rule(oid, attnum)
                if rule is not None:
                    out.setdefault(name, rule)
        return out

    def has_column(self, schema: str | None, relation: str, column: str) -> bool:
        rels = self.relations
        return rels is not None and any(column in rels.by_oid[o].columns.values() for o in rels.named(schema, relation))

    def columns_of(self, schema: str | None, relation: str) -> list[str] | None:
        """A relation's column names in attnum order (None unless exactly one relation has the name)."""
        oids = self.relations.named(schema, relation) if self.relations is not None else []
        if len(oids) != 1:
            return None
        cols = self.relations.by_oid[oids[0]].columns  # type: ignore[union-attr]
        return [cols[a] for a in sorted(cols)]

    def function(self, schema: str | None, name: str) -> MaskRule | None:
        builtin = schema in (None, "pg_catalog") and name in BUILTINS and name not in SQL_EXECUTORS
        return None if builtin else self.fallback  # a user function may read a masked table

    # --- columns ---------------------------------------------------------------------

    def table_rule(self, oid: int, attnum: int) -> MaskRule | None:
        key = (oid, attnum)
        if key in self._table:
            return self._table[key]
        self._table[key] = self.fallback  # (while a view's definition is read: a cycle fails closed)
        self._table[key] = rule = self._resolve(oid, attnum)
        return rule

    def _resolve(self, oid: int, attnum: int) -> MaskRule | None:
        rels = self.relations
        rel = rels.by_oid.get(oid) if rels is not None else None
        if rel is None:
            if oid >= FIRST_USER_OID:
                self.unknown.add(oid)
                return self.fallback
            return None  # a system relation (those that hold values are in the snapshot)
        if rel.schema == "pg_catalog" and rel.name in VALUE_VIEWS:
            return self.fallback
        name = rel.columns.get(attnum)
        if name is None:
            return self.fallback
        for rule in self.rules:
            if rule.names_column(rel.schema, rel.name, name):
                return rule
        if rel.definition is None:
            return None
        view = self._views.get(oid)
        if view is None:
            stmts = parse(rel.definition)
            view = self._views[oid] = (derive(stmts[0], self, self.fallback) if stmts
                                       else Derived(None, self.fallback))
        if view.columns is None:
            return view.any
        return view.columns[attnum - 1] if 0 < attnum <= len(view.columns) else self.fallback

    def trees(self, sql: str) -> list[dict] | None:
        """``parse(sql)``, cached for the session."""
        if sql in self._parsed:
            return self._parsed[sql]
        if len(self._parsed) >= _PARSED_KEPT:
            self._parsed.clear()
        stmts = self._parsed[sql] = parse(sql)
        return stmts

    def tree(self, sql: str | None, part: int) -> dict | None:
        """Statement ``part`` of ``sql`` as a tree; None when the text is unknown, does not
        parse or has no such statement."""
        stmts = self.trees(sql) if sql is not None else None
        return stmts[part] if stmts is not None and part < len(stmts) else None

    def statement(self, sql: str | None, part: int) -> Derived[MaskRule]:
        """What statement ``part`` of ``sql`` derives from masked columns (unknown text:
        every computed column is masked). Derived once per statement text and snapshot."""
        key = (sql, part)
        found = self._derived.get(key)
        if found is None:
            stmt = self.tree(sql, part)
            found = Derived(None, self.fallback) if stmt is None else derive(stmt, self, self.fallback)
            if len(self._derived) >= _PARSED_KEPT:
                self._derived.clear()
            self._derived[key] = found
        return found

    def plan(self, cols: Columns, derived: Derived[MaskRule] | None) -> Plan:
        """The rule masking each result column (None: clear). ``derived``: the statement's
        marks, needed only when a column is computed (None: not known). Results whose
        columns all have a source table are planned once per Columns (the same object
        serves every result with that RowDescription)."""
        sourced = 0 not in cols.tables and len(cols.tables) == len(cols.names)
        if sourced:
            hit = self._plans.get(id(cols))
            if hit is not None and hit[0] is cols:
                return hit[1]
        out: list[MaskRule | None] = []
        tables = cols.tables
        for i in range(len(cols.names)):
            table = tables[i] if i < len(tables) else 0
            if table:
                out.append(self.table_rule(table, cols.attnums[i]))
                continue
            d = derived if derived is not None else Derived(None, self.fallback)
            rule = d.any if d.columns is None else (d.columns[i] if i < len(d.columns) else self.fallback)
            if rule is None:
                rule = next((r for r in self.rules if r.names_result(cols.names[i])), None)
            out.append(rule)
        plan = tuple(out)
        if sourced:
            if len(self._plans) >= _PARSED_KEPT:
                self._plans.clear()
            self._plans[id(cols)] = (cols, plan)
        return plan

