"""Which functions a read_only session may call: an allowlist, not a deny list.

A call is allowed for read_only only when every function the name could resolve to is
known to have no effect (docs/decisions.md, "Functions"):

* built-ins (pg_catalog, ``pg_builtins.tsv``: PostgreSQL's own catalog, most volatile
  overload per name): immutable or stable and not in STATEFUL, or volatile and in
  VETTED_VOLATILE;
* every other function (user-defined, extensions; read from the upstream's pg_proc per
  database, see UserFunctions and FunctionCatalogs): immutable or stable, or named in
  ``[policy] read_only_functions``. PostgreSQL itself runs the SQL of a non-volatile
  SQL/PL function read-only (SPI's read_only), so it cannot write;
* never one of SQL_EXECUTORS, in any schema: they run SQL given as text, or read tables
  named by value, out of the classifier's sight.

An unqualified name may resolve through search_path to any schema that has it (a session
may put pg_catalog after its own schemas), so all of them count. A name found nowhere is
refused, naming it. User-defined operators are checked the same way by their function.

What a statement runs without naming it counts too (``UserFunctions.hidden``): a view's
definition and the row security policies of a relation it reads, the CHECK expressions,
input functions and casts of a type it converts to (and of a domain's base), a
function's argument defaults and its SQL or PL/pgSQL body (each statement and expression;
dynamic SQL refuses; a body in another language refuses), an aggregate's support
functions, an operator's function. Definitions are read as text from the catalog and
walked like a statement, lazily and once per snapshot; one that cannot be parsed refuses
what uses it. ``[policy] read_only_functions`` vets a function whole.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pglast.parser import parse_plpgsql_json

from hoopd.catalogs import Catalogs
from hoopd.policy.catalog import SQL_EXECUTORS
from hoopd.policy.classify import statements_of


BUILTINS_FILE = Path(__file__).with_name("pg_builtins.tsv")
BUILTINS_QUERY = ("select proname, max(provolatile::text) from pg_proc where oid < 16384"
                  " and pronamespace = 'pg_catalog'::regnamespace group by 1 order by proname collate \"C\"")
_NS = "join pg_namespace {0}n on {0}n.oid = {0}.{1}namespace"
CATALOG_QUERY = " union all ".join((
    # every function and operator that is not a built-in of pg_catalog, per (schema, name)
    "select 'f', pn.nspname, p.proname, max(p.provolatile::text), null from pg_proc p {pn}"
    " where p.oid >= 16384 or pn.nspname <> 'pg_catalog' group by 2, 3",
    "select 'o', on_.nspname, o.oprname, max(p.provolatile::text), null from pg_operator o"
    " join pg_namespace on_ on on_.oid = o.oprnamespace join pg_proc p on p.oid = o.oprcode"
    " where o.oid >= 16384 group by 2, 3",
    # what runs without being named (see UserFunctions.hidden): (kind, schema, name, a, b)
    "select 'R', on_.nspname, o.oprname, pn.nspname, p.proname from pg_operator o"
    " join pg_namespace on_ on on_.oid = o.oprnamespace join pg_proc p on p.oid = o.oprcode {pn}"
    " where o.oid >= 16384",
    "select 'V', cn.nspname, c.relname, pg_get_viewdef(c.oid)::text, null from pg_class c {cn}"
    " where c.relkind = 'v' and c.oid >= 16384",
    "select 'P', cn.nspname, c.relname, pg_get_expr(y.polqual, y.polrelid)::text, null"
    " from pg_policy y join pg_class c on c.oid = y.polrelid {cn}"
    " where y.polqual is not null and y.polcmd in ('r', '*')",
    "select 'C', tn.nspname, t.typname, pg_get_expr(k.conbin, 0)::text, null"
    " from pg_constraint k join pg_type t on t.oid = k.contypid {tn} where k.contype = 'c'",
    "select 'B', tn.nspname, t.typname, bn.nspname, b.typname from pg_type t {tn}"
    " join pg_type b on b.oid = t.typbasetype join pg_namespace bn on bn.oid = b.typnamespace"
    " where t.typtype = 'd' and t.typbasetype >= 16384",
    "select 'T', tn.nspname, t.typname, pn.nspname, p.proname from pg_type t {tn}"
    " join pg_proc p on p.oid in (t.typinput, t.typreceive) {pn} where t.oid >= 16384",
    "select 'T', tn.nspname, t.typname, pn.nspname, p.proname from pg_cast k"
    " join pg_type t on t.oid = k.casttarget {tn} join pg_proc p on p.oid = k.castfunc {pn}"
    " where k.oid >= 16384",
    "select 'S', pn.nspname, p.proname, pg_get_functiondef(p.oid)::text, null from pg_proc p {pn}"
    " where p.oid >= 16384 and p.prokind <> 'a' and (p.prosqlbody is not null or p.proargdefaults is not null)",
    "select 'S', pn.nspname, p.proname, p.prosrc::text, null from pg_proc p {pn}"
    " where p.oid >= 16384 and p.prosqlbody is null"
    " and p.prolang = (select oid from pg_language where lanname = 'sql')",
    "select 'L', pn.nspname, p.proname, pg_get_functiondef(p.oid)::text, null from pg_proc p {pn}"
    " join pg_language l on l.oid = p.prolang where p.oid >= 16384 and l.lanname = 'plpgsql'",
    "select 'G', pn.nspname, p.proname, l.lanname::text, null from pg_proc p {pn}"
    " join pg_language l on l.oid = p.prolang"
    " where p.oid >= 16384 and l.lanname not in ('internal', 'c', 'sql', 'plpgsql')",
    "select 'A', pn.nspname, p.proname, fn.nspname, f.proname from pg_aggregate a"
    " join pg_proc p on p.oid = a.aggfnoid {pn} join pg_proc f on f.oid in (a.aggtransfn,"
    " a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn, a.aggmtransfn,"
    " a.aggminvtransfn, a.aggmfinalfn) join pg_namespace fn on fn.oid = f.pronamespace"
    " where p.oid >= 16384",
    "select 'Y', pn.nspname, p.proname, tn.nspname, t.typname from pg_proc p {pn}"
    " join pg_type t on t.oid = any(p.proargtypes) {tn} where p.oid >= 16384 and t.oid >= 16384",
)).format(pn=_NS.format("p", "pro"), cn=_NS.format("c", "rel"), tn=_NS.format("t", "typ"))
"""Rows (kind, schema, name, a, b): 'f'/'o' with a = the most volatile overload's
provolatile; the rest feed UserFunctions.hidden (see _HIDDEN)."""

_HIDDEN = {
    # row kind -> (what uses it: relation r, type t, function f, operator o; what the row holds)
    "V": ("r", "sql"),   # a view's definition
    "P": ("r", "expr"),  # a SELECT (or ALL) row security policy's USING expression
    "C": ("t", "expr"),  # a domain's CHECK expression
    "B": ("t", "type"),  # a domain's base domain (its checks run too)
    "T": ("t", "call"),  # an input/receive function, or a cast's function, of the type
    "S": ("f", "sql"),   # a function's definition (argument defaults, SQL body) or SQL body text
    "L": ("f", "plpgsql"),  # a PL/pgSQL function's definition: its body's statements and expressions
    "G": ("f", "language"),  # a function in another procedural language (its body is not read)
    "A": ("f", "call"),  # an aggregate's support function
    "Y": ("f", "type"),  # a function's argument type (arguments are converted to it)
    "R": ("o", "call"),  # an operator's function
}


def _load_builtins() -> dict[str, str]:
    out = {}
    for line in BUILTINS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, vol = line.split("\t")
            out[name] = vol
    return out


BUILTINS: Mapping[str, str] = _load_builtins()
"""pg_catalog function name -> its most volatile overload's provolatile (i, s, v)."""

VETTED_VOLATILE = frozenset({
    # time, randomness, sleeping: volatile only because each call may answer differently
    "clock_timestamp", "timeofday", "random", "setseed", "gen_random_uuid",
    "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    # the session's own sequence values and query (read, never advance)
    "currval", "lastval", "current_query",
    # sizes and server state, read only (dashboards and agents call these)
    "pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size",
    "pg_database_size", "pg_tablespace_size", "pg_sequence_last_value",
    "pg_partition_tree", "pg_partition_ancestors", "pg_lock_status", "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids", "pg_isolation_test_session_is_blocked",
    "pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
    "pg_current_wal_lsn", "pg_current_wal_flush_lsn", "pg_current_wal_insert_lsn",
    "pg_jit_available", "pg_notification_queue_usage", "pg_collation_actual_version",
    "pg_database_collation_actual_version", "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin", "pg_last_committed_xact", "txid_status", "pg_xact_status",
    "pg_prepared_xact", "pg_get_multixact_members", "pg_get_backend_memory_contexts",
    "pg_get_shmem_allocations", "pg_get_wal_resource_managers", "pg_stat_get_recovery_prefetch",
    "pg_stat_have_stats", "pg_stat_clear_snapshot", "amvalidate",
    "pg_control_checkpoint", "pg_control_init", "pg_control_recovery", "pg_control_system",
    "pg_stat_get_xact_blocks_fetched", "pg_stat_get_xact_blocks_hit",
    "pg_stat_get_xact_function_calls", "pg_stat_get_xact_function_self_time",
    "pg_stat_get_xact_function_total_time", "pg_stat_get_xact_numscans",
    "pg_stat_get_xact_tuples_deleted", "pg_stat_get_xact_tuples_fetched",
    "pg_stat_get_xact_tuples_hot_updated", "pg_stat_get_xact_tuples_inserted",
    "pg_stat_get_xact_tuples_returned", "pg_stat_get_xact_tuples_updated",
    # a snapshot for pg_dump --jobs: lets other sessions read what this one reads
    "pg_export_snapshot",
    # releasing the session's own advisory locks (asyncpg's connection reset calls it)
    "pg_advisory_unlock", "pg_advisory_unlock_all", "pg_advisory_unlock_shared",
    # the classifier reads its arguments: a SET, refused when it changes privileges or lexing
    "set_config",
})
"""Volatile built-ins with no effect outside the session's own transient state."""

STATEFUL = frozenset({"txid_current", "pg_current_xact_id"})
"""Stable built-ins that still change state: both assign a transaction id (and with it a
WAL record and a slot in the commit log) to a transaction that would otherwise have none."""



Hidden = tuple[tuple[str, str, "str | None"], ...]  # (call | type | sql | expr, a, b)


@dataclass(frozen=True)
class UserFunctions:
    """One database's functions and operators that are not pg_catalog built-ins, and what
    its relations, types, functions and operators run without being named (``hidden``:
    kind r/t/f/o -> name -> schema -> what runs)."""

    functions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> schema -> volatility
    operators: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> schema -> its function's
    hidden: Mapping[str, Mapping[str, Mapping[str, Hidden]]] = field(default_factory=dict)
    _found: dict[tuple[frozenset[str], str, str, str], str | None] = field(default_factory=dict, compare=False,
                                                                         repr=False)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]]) -> "UserFunctions":
        """From CATALOG_QUERY's rows: (kind, schema, name, a[, b])."""
        by: dict[str, dict[str, dict[str, str]]] = {"f": {}, "o": {}}
        hidden: dict[str, dict[str, dict[str, Hidden]]] = {}
        for what, schema, name, a, *rest in rows:
            if what in by:
                by[what].setdefault(name, {})[schema] = a
            elif what in _HIDDEN and a is not None:
                kind, holds = _HIDDEN[what]
                per = hidden.setdefault(kind, {}).setdefault(name, {})
                per[schema] = per.get(schema, ()) + ((holds, a, rest[0] if rest else None),)
        return cls(by["f"], by["o"], hidden)

    def hidden_refusal(self, kind: str, obj: "Call", vetted: frozenset[str]) -> str | None:
        """Why what ``obj`` (a relation, type, function or operator, as written) runs
        without being named is not for read_only, or None. Worked out once per snapshot;
        a cycle (a recursive SQL function) counts only its other paths."""
        for schema, items in _candidates(obj, self.hidden.get(kind, {})):
            if kind == "f" and f"{schema}.{obj[1]}" in vetted:
                continue  # [policy] read_only_functions: vetted whole
            key = (vetted, kind, schema, obj[1])
            if key not in self._found:
                self._found[key] = None
                self._found[key] = self._items_refusal(items, vetted)
            if self._found[key] is not None:
                return self._found[key]
        return None

    def _items_refusal(self, items: Hidden, vetted: frozenset[str]) -> str | None:
        for what, a, b in items:
            if what == "call":
                why = _function_refusal((a, b or ""), self, vetted)
            elif what == "type":
                why = self.hidden_refusal("t", (a, b or ""), vetted)
                why = why and f"type {a}.{b} (converting to it uses {why})"
            elif what == "language":
                why = f"a body in language {a}, which the gateway cannot read ([policy] read_only_functions can vet it)"
            else:
                why = self._text_refusal(a, what, vetted)
            if why is not None:
                return why
        return None

    def _text_refusal(self, text: str, what: str, vetted: frozenset[str]) -> str | None:
        try:
            if what == "plpgsql":
                texts, dynamic = plpgsql_statements(text)
                if dynamic:
                    return "dynamic SQL (EXECUTE), which the gateway cannot see ([policy] read_only_functions can vet it)"
            else:
                texts = [f"select {text}" if what == "expr" else text]
            infos = [i for t in texts for i in statements_of(t)]
        except Exception:  # noqa: BLE001 - pglast's ParseError and friends: fail closed
            return "a definition the gateway could not parse"
        for i in infos:
            why = read_only_refusal(i.calls, i.operators, self, vetted, i.relations, i.types)
            if why is not None:
                return why
        return None


_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})
_ASSIGNED = re.compile(r'\s*[\w$."]+\s*:?=(.*)', re.S)  # "target := expr" (no subscripts in the target)


def plpgsql_statements(definition: str) -> tuple[list[str], bool]:
    """The SQL a PL/pgSQL function's body runs (each expression as a SELECT), and whether
    it runs dynamic SQL (EXECUTE, OPEN/RETURN QUERY ... EXECUTE). ``definition``: its
    CREATE FUNCTION text. Raises ValueError for an assignment it cannot take apart."""
    texts: list[str] = []
    dynamic = False

    def walk(v: Any, key: str, stmt: str) -> None:
        nonlocal dynamic
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "PLpgSQL_expr":
                    dynamic = dynamic or stmt in _DYNAMIC or key == "dynquery"
                    texts.append(_expression_sql(x.get("query", ""), x.get("parseMode", 0)))
                else:
                    walk(x, k, k if k.startswith("PLpgSQL_stmt") else stmt)
        elif isinstance(v, list):
            for x in v:
                walk(x, key, stmt)

    walk(json.loads(parse_plpgsql_json(definition)), "", "")
    return texts, dynamic


def _expression_sql(query: str, mode: int) -> str:
    if mode == 0:  # a whole statement
        return query
    if mode == 2:  # an expression
        return f"select {query}"
    assigned = _ASSIGNED.fullmatch(query)  # modes 3-5: an assignment
    if assigned is None:
        raise ValueError(f"PL/pgSQL assignment {query!r}")
    return f"select {assigned.group(1)}"


EMPTY = UserFunctions()
Call = tuple["str | None", str]  # (schema as written or None, name)


def _candidates(call: Call, table: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str]]:
    schema, name = call
    found = table.get(name, {})
    if schema is None:
        return list(found.items())
    return [(schema, found[schema])] if schema in found else []


def _written(call: Call) -> str:
    return f"{call[0]}.{call[1]}" if call[0] else call[1]


def read_only_refusal(calls: Iterable[Call], operators: Iterable[Call], user: UserFunctions | None,
                      vetted: frozenset[str] = frozenset(), relations: Iterable[str] = (),
                      types: Iterable[Call] = ()) -> str | None:
    """Why a read_only session may not make these calls, read these relations or convert
    to these types (a phrase for "does not allow ..."), or None. ``user`` None: the
    database's catalog could not be read, so only statements without function calls or
    operators pass. ``vetted``: "schema.name" of volatile functions allowed."""
    for call in calls:
        why = _function_refusal(call, user, vetted)
        if why is not None:
            return why
    for op in operators:
        if user is None:
            return f"operator {_written(op)} (the database's function catalog could not be read)"
        for schema, vol in _candidates(op, user.operators):
            if vol == "v":
                return f"operator {_written(op)} (its function in schema {schema} is volatile: it may change data)"
        why = user.hidden_refusal("o", op, vetted)
        if why is not None:
            return f"operator {_written(op)} (it uses {why})"
    if user is None or not user.hidden:
        return None
    for rel in relations:
        schema, _, name = rel.rpartition(".")
        why = user.hidden_refusal("r", (schema or None, name), vetted)
        if why is not None:
            return f"relation {rel} (its definition or row security policy uses {why})"
    for t in types:
        why = user.hidden_refusal("t", t, vetted)
        if why is not None:
            return f"type {_written(t)} (converting to it uses {why})"
    return None


def unresolved(calls: Iterable[Call], user: UserFunctions | None) -> bool:
    """Whether a call names a function that ``user`` (and the built-ins) do not have."""
    if user is None:
        return True
    return any(not (call[0] in (None, "pg_catalog") and call[1] in BUILTINS) and not _candidates(call, user.functions)
               for call in calls)


def _function_refusal(call: Call, user: UserFunctions | None, vetted: frozenset[str]) -> str | None:
    schema, name = call
    written = _written(call)
    if name in SQL_EXECUTORS:
        return f"function {written}() (it runs SQL or reads tables the statement does not show)"
    if user is None:
        return f"function {written}() (the database's function catalog could not be read)"
    found = False
    if schema in (None, "pg_catalog") and name in BUILTINS:
        found = True
        vol = BUILTINS[name]
        if name in STATEFUL or (vol == "v" and name not in VETTED_VOLATILE):
            reason = "it assigns a transaction id" if name in STATEFUL else "volatile: it may change state"
            return f"function {written}() ({reason})"
    for s, vol in _candidates(call, user.functions):
        found = True
        if vol == "v" and f"{s}.{name}" not in vetted:
            return (f"function {written}() ({s}.{name} is volatile: it may change data;"
                    " [policy] read_only_functions can vet it)")
    if not found:
        return f"function {written}() (not found in the database's catalog)"
    why = user.hidden_refusal("f", call, vetted)
    if why is not None:
        return f"function {written}() (it uses {why})"
    return None


class FunctionCatalogs(Catalogs[UserFunctions]):
    """UserFunctions per (connection, database), read with CATALOG_QUERY over the
    gateway's own upstream connection (hoopd.catalogs)."""

    what = "function catalog"

    def build(self, rows: list[tuple[Any, ...]]) -> UserFunctions:
        return UserFunctions.from_rows(rows)
