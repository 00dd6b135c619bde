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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from hoopd.catalogs import Catalogs
from hoopd.policy.catalog import SQL_EXECUTORS


BUILTINS_FILE = Path(__file__).with_name("pg_builtins.tsv")
BUILTINS_QUERY = ("select proname, max(provolatile::text) from pg_proc where oid < 16384"
                  " and pronamespace = 'pg_catalog'::regnamespace group by 1 order by proname collate \"C\"")
CATALOG_QUERY = (
    # every function and operator that is not a built-in of pg_catalog, per (schema, name)
    "select 'f', n.nspname, p.proname, max(p.provolatile::text) from pg_proc p"
    " join pg_namespace n on n.oid = p.pronamespace"
    " where p.oid >= 16384 or n.nspname <> 'pg_catalog' group by 2, 3"
    " union all select 'o', n.nspname, o.oprname, max(p.provolatile::text) from pg_operator o"
    " join pg_namespace n on n.oid = o.oprnamespace join pg_proc p on p.oid = o.oprcode"
    " where o.oid >= 16384 group by 2, 3")


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



@dataclass(frozen=True)
class UserFunctions:
    """One database's functions and operators that are not pg_catalog built-ins."""

    functions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> schema -> volatility
    operators: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> schema -> its function's

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]]) -> "UserFunctions":
        """From CATALOG_QUERY's rows: (f | o, schema, name, volatility)."""
        by: dict[str, dict[str, dict[str, str]]] = {"f": {}, "o": {}}
        for what, schema, name, vol in rows:
            by[what].setdefault(name, {})[schema] = vol
        return cls(by["f"], by["o"])


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
                      vetted: frozenset[str] = frozenset()) -> str | None:
    """Why a read_only session may not make these calls (a phrase for "does not allow ..."),
    or None. ``user`` None: the database's catalog could not be read, so only statements
    without function calls pass. ``vetted``: "schema.name" of volatile functions allowed."""
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
    return None


class FunctionCatalogs(Catalogs[UserFunctions]):
    """UserFunctions per (connection, database), read with CATALOG_QUERY over the
    gateway's own upstream connection (hoopd.catalogs)."""

    what = "function catalog"

    def build(self, rows: list[tuple[Any, ...]]) -> UserFunctions:
        return UserFunctions.from_rows(rows)
