"""A database's relations and columns, for column rules (read per database by
hoopd.catalogs over the gateway's own upstream connection, hoopd.proxy.catalog).

User relations (OID >= 16384: tables, partitioned and foreign tables, views,
materialized views) with their columns and, for views, their definitions; plus the
system views that show column *values* (pg_stats and friends keep most-common values
and histograms of every column), which masked sessions see masked whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hoopd.catalogs import Catalogs

FIRST_USER_OID = 16384  # PostgreSQL's FirstNormalObjectId: below it, objects initdb made
VALUE_VIEWS = ("pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data")
"""System relations whose rows hold values of other relations' columns."""
RELATIONS_QUERY = (  # (every column text: a union with a ``name`` column would cut view definitions at 63 bytes)
    "select 'c', c.oid::text, a.attnum::text, n.nspname::text, c.relname::text, a.attname::text from pg_class c"
    " join pg_namespace n on n.oid = c.relnamespace join pg_attribute a on a.attrelid = c.oid"
    " where c.relkind in ('r', 'p', 'v', 'm', 'f') and a.attnum > 0 and not a.attisdropped"
    " and (c.oid >= 16384 or (n.nspname = 'pg_catalog' and c.relname in ("
    + ", ".join(f"'{v}'" for v in VALUE_VIEWS) + ")))"
    " union all select 'v', c.oid::text, null, null, null, pg_get_viewdef(c.oid)::text from pg_class c"
    " where c.relkind in ('v', 'm') and c.oid >= 16384")


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    columns: Mapping[int, str]  # attnum -> name
    definition: str | None = None  # a view's SELECT
    attnums: Mapping[str, int] = field(default_factory=dict)  # name -> attnum (of ``columns``)


@dataclass(frozen=True)
class Relations:
    """One database's relations by OID and by name."""

    by_oid: Mapping[int, Relation] = field(default_factory=dict)
    by_name: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # bare name -> OIDs in any schema

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]]) -> "Relations":
        """From RELATIONS_QUERY's rows (all text)."""
        cols: dict[int, tuple[str, str, dict[int, str]]] = {}
        views: dict[int, str] = {}
        for what, oid, attnum, schema, name, value in rows:
            if what == "c":
                cols.setdefault(int(oid), (schema, name, {}))[2][int(attnum)] = value
            else:
                views[int(oid)] = value
        by_oid = {oid: Relation(s, n, c, views.get(oid), {name: a for a, name in c.items()})
                  for oid, (s, n, c) in cols.items()}
        by_name: dict[str, list[int]] = {}
        for oid, rel in by_oid.items():
            by_name.setdefault(rel.name, []).append(oid)
        return cls(by_oid, {k: tuple(v) for k, v in by_name.items()})

    def named(self, schema: str | None, name: str) -> list[int]:
        """The OIDs ``schema.name`` may be (no schema: any schema has it, since search_path is the session's)."""
        return [o for o in self.by_name.get(name, ()) if schema is None or self.by_oid[o].schema == schema]


class RelationCatalogs(Catalogs[Relations]):
    what = "relation catalog"

    def build(self, rows: list[tuple[Any, ...]]) -> Relations:
        return Relations.from_rows(rows)
