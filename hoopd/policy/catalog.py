"""What the classifier knows about PostgreSQL: statement kinds, the level functions with
side effects need (read_write and admin; read_only has the allowlist of
hoopd.policy.functions), and settings whose change is a privilege change.

Pure data plus two small lookups; no parsing here.
"""
from __future__ import annotations

KINDS = frozenset({
    "select", "insert", "update", "delete", "merge", "copy_from", "copy_to", "copy_program",
    "ddl", "dcl", "transaction", "set", "show", "call", "do", "explain", "listen_notify",
    "prepare", "execute", "deallocate", "discard", "declare", "fetch", "close", "lock",
    "vacuum", "analyze", "utility", "function_call", "unparseable",
})
"""Every statement kind. ``function_call`` is a FunctionCall ('F') message;
``unparseable`` is text the parser rejected."""

DML_KINDS = {"InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete", "MergeStmt": "merge"}

# Statement node -> kind, for the nodes whose kind does not need a closer look.
SIMPLE_KINDS = {
    "VariableShowStmt": "show",
    "ConstraintsSetStmt": "set",
    "DeallocateStmt": "deallocate",
    "DiscardStmt": "discard",
    "ClosePortalStmt": "close",
    "FetchStmt": "fetch",
    "ListenStmt": "listen_notify",
    "UnlistenStmt": "listen_notify",
    "NotifyStmt": "listen_notify",
    "LockStmt": "lock",
    "GrantStmt": "dcl",
    "GrantRoleStmt": "dcl",
    "CreateRoleStmt": "dcl",
    "AlterRoleStmt": "dcl",
    "AlterRoleSetStmt": "dcl",
    "DropRoleStmt": "dcl",
    "AlterDefaultPrivilegesStmt": "dcl",
    "ReassignOwnedStmt": "dcl",
    "DropOwnedStmt": "dcl",
    "CreateUserMappingStmt": "dcl",
    "AlterUserMappingStmt": "dcl",
    "DropUserMappingStmt": "dcl",
    "TruncateStmt": "ddl",
    "IndexStmt": "ddl",
    "ViewStmt": "ddl",
    "RuleStmt": "ddl",
    "CompositeTypeStmt": "ddl",
    "DefineStmt": "ddl",
    "SecLabelStmt": "ddl",
    "ImportForeignSchemaStmt": "ddl",
    "CreateTableAsStmt": "ddl",
    "RefreshMatViewStmt": "utility",
    "AlterSystemStmt": "utility",
}
DDL_PREFIXES = ("Create", "Alter", "Drop", "Rename", "Comment")
"""Statement nodes not named above: these prefixes make DDL, anything else is ``utility``."""

# Command tags where the node name alone does not say it (see classify._command).
COMMANDS = {
    "SelectStmt": "SELECT", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW",
    "RuleStmt": "CREATE RULE", "CreateStmt": "CREATE TABLE", "CreateSeqStmt": "CREATE SEQUENCE",
    "CreateTrigStmt": "CREATE TRIGGER", "CreateFunctionStmt": "CREATE FUNCTION",
    "CompositeTypeStmt": "CREATE TYPE", "DefineStmt": "CREATE", "VariableShowStmt": "SHOW",
    "ConstraintsSetStmt": "SET CONSTRAINTS", "ClosePortalStmt": "CLOSE",
    "DeclareCursorStmt": "DECLARE CURSOR", "CheckPointStmt": "CHECKPOINT",
    "GrantRoleStmt": "GRANT ROLE", "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
    "CreateTableAsStmt": "CREATE TABLE AS", "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "AlterTableStmt": "ALTER TABLE", "CreateExtensionStmt": "CREATE EXTENSION",
    "SecLabelStmt": "SECURITY LABEL", "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER", "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
}

# --- functions -------------------------------------------------------------------------

_READ_WRITE = "read_write"  # lowest level that may call it: a data change, like DML
_ADMIN = "admin"            # server files, programs, other backends, replication, config

_EXACT = {
    "nextval": _READ_WRITE, "setval": _READ_WRITE, "pg_notify": _READ_WRITE,
    "lo_import": _ADMIN, "lo_export": _ADMIN,
    "pg_terminate_backend": _ADMIN, "pg_cancel_backend": _ADMIN, "pg_reload_conf": _ADMIN,
    "pg_rotate_logfile": _ADMIN, "pg_log_backend_memory_contexts": _ADMIN,
    "pg_read_file": _ADMIN, "pg_read_binary_file": _ADMIN, "pg_stat_file": _ADMIN,
    "pg_switch_wal": _ADMIN, "pg_create_restore_point": _ADMIN, "pg_backup_start": _ADMIN,
    "pg_backup_stop": _ADMIN, "pg_start_backup": _ADMIN, "pg_stop_backup": _ADMIN,
    "pg_promote": _ADMIN, "pg_wal_replay_pause": _ADMIN, "pg_wal_replay_resume": _ADMIN,
    "pg_create_physical_replication_slot": _ADMIN, "pg_create_logical_replication_slot": _ADMIN,
    "pg_drop_replication_slot": _ADMIN, "pg_copy_physical_replication_slot": _ADMIN,
    "pg_copy_logical_replication_slot": _ADMIN, "pg_replication_slot_advance": _ADMIN,
    "pg_sync_replication_slots": _ADMIN, "pg_logical_emit_message": _ADMIN,
    "pg_log_standby_snapshot": _ADMIN, "pg_import_system_collations": _ADMIN,
    "pg_clear_relation_stats": _ADMIN, "pg_restore_relation_stats": _ADMIN,
    "pg_clear_attribute_stats": _ADMIN, "pg_restore_attribute_stats": _ADMIN,
    "pg_truncate_visibility_map": _ADMIN,
    # only its privileged uses get here (see classify: set_config of a harmless setting is a SET)
    "set_config": _ADMIN,
}
_PREFIXES = (
    ("pg_advisory_unlock", None),  # releasing one's own advisory locks is harmless (asyncpg's reset)
    ("pg_advisory_", _READ_WRITE), ("pg_try_advisory_", _READ_WRITE),
    ("lo_", _READ_WRITE), ("loread", _READ_WRITE), ("lowrite", _READ_WRITE),
    ("dblink", _ADMIN), ("pg_ls_", _ADMIN), ("pg_file_", _ADMIN), ("pg_logdir_ls", _ADMIN),
    ("pg_logical_slot_", _ADMIN), ("pg_replication_origin_", _ADMIN), ("pg_stat_reset", _ADMIN),
    ("pg_stat_statements_reset", _ADMIN), ("pg_get_wal_", _ADMIN),
)

SQL_EXECUTORS = frozenset({
    # core: run a query given as text, or fetch from a cursor by name
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema", "ts_stat", "ts_rewrite",
    # core: read whole tables, schemas or databases named by value (no relation in the tree)
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    # contrib tablefunc and xml2: build and run a query from text
    "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "xpath_table",
    # contrib dblink: run SQL on another (or the same) server
    "dblink", "dblink_exec", "dblink_open", "dblink_fetch", "dblink_close", "dblink_send_query",
    "dblink_get_result", "dblink_connect", "dblink_connect_u", "dblink_build_sql_insert",
    "dblink_build_sql_update", "dblink_build_sql_delete",
})
"""Functions that run SQL, or read tables, that the statement does not show; refused
below admin in any schema (extensions install anywhere)."""


def side_effect_level(name: str) -> str | None:
    """The lowest access level that may call function ``name`` (bare, lower-case name;
    any schema, since extensions install anywhere), or None when it has no known side effect."""
    level = _EXACT.get(name) or (_ADMIN if name in SQL_EXECUTORS else None)
    if level is not None:
        return level
    for prefix, lvl in _PREFIXES:
        if name.startswith(prefix):
            return lvl
    return None


# --- settings --------------------------------------------------------------------------

PRIVILEGED_SETTINGS = {"role": "role", "session_authorization": "session_authorization"}
"""Settings whose change is a privilege change, -> the privilege_change label."""
READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
"""Setting these to anything but a true value is the ``read_write`` privilege change."""
LEXING_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding"})
"""Settings that change how the server reads statement text (docs/decisions.md says which
others were considered); changes to them are checked against the session's own values."""

def is_true(value: object) -> bool:
    """Whether a setting value is certainly true the way PostgreSQL's parse_bool reads it
    (prefixes of "true" and "yes", "on", "1", the integer 1, the boolean true)."""
    if value is True or (type(value) is int and value == 1):
        return True
    if not isinstance(value, str):
        return False
    v = value.strip().lower()
    return v in ("on", "1") or (v != "" and ("true".startswith(v) or "yes".startswith(v)))
