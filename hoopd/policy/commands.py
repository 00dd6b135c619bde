"""Command tags: the name a statement goes by in messages and journals ("DROP TABLE", "SET ROLE")."""
from __future__ import annotations

import re

from hoopd.policy.catalog import COMMANDS, PRIVILEGED_SETTINGS
from hoopd.policy.walk import explain_analyze

_TRANSACTION_TAGS = {"START": "START TRANSACTION", "ROLLBACK TO": "ROLLBACK TO SAVEPOINT",
                     "PREPARE": "PREPARE TRANSACTION"}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def command(node: str, f: dict) -> str:
    """The command tag of a statement node and its fields."""
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
        return "EXPLAIN ANALYZE" if explain_analyze(f.get("options")) else "EXPLAIN"
    if node == "DiscardStmt":
        return "DISCARD " + f.get("target", "DISCARD_")[8:]
    if node == "VacuumStmt":
        return "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE"
    if node == "CreateTableAsStmt" and f.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if node == "GrantStmt" and not f.get("is_grant"):
        return "REVOKE"
    return COMMANDS.get(node) or _CAMEL.sub(" ", node.removesuffix("Stmt")).upper()
