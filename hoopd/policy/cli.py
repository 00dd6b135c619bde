"""``hoopd policy explain``: how the gateway classifies SQL and what it decides: offline
(user-defined functions unknown, so read_only calls of them are refused as "not found"),
or with ``--catalog`` against the connection's database function catalog, as the
gateway decides.

Exit status: 0 when every statement is allowed, 1 when one is refused, 2 on a usage or
config error.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from hoopd.cliargs import add_identity_arguments, ask_upstream, asked_identity

_FIELDS = (  # (summary key, label) in display order
    ("kinds", "kinds"), ("relations", "relations"), ("functions", "functions"),
    ("side_effect_functions", "side-effect functions"), ("reads", "reads"), ("writes", "writes"),
    ("has_where", "has WHERE"), ("locks", "locks rows"), ("privilege_change", "privilege change"),
    ("temp_only", "temporary objects only"), ("server_files", "server files/programs"),
    ("opaque", "opaque"), ("prepared_name", "prepared statement"), ("executes", "executes"),
    ("error", "parser error"),
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="SQL policy tools")
    psub = p.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    e = psub.add_parser("explain", help="classify SQL and show the decision with the rule that made it")
    add_identity_arguments(e)
    e.add_argument("sql", help="the SQL text (several statements allowed; PREPARE is remembered for EXECUTE)")
    e.add_argument("--catalog", action="store_true",
                   help="read the database's own functions (as the gateway does) instead of knowing only built-ins")
    e.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    from hoopd.policy.classify import classify
    from hoopd.policy.decide import Policy
    from hoopd.policy.functions import CATALOG_QUERY, EMPTY, UserFunctions
    from hoopd.policy.prepared import PreparedRegistry
    from hoopd.policy.rules import Context

    asked = asked_identity(args)
    if asked is None:
        return 2
    ctx = Context(asked.connection, asked.level, asked.user, asked.groups, asked.application)
    functions = EMPTY
    if args.catalog:
        answers = ask_upstream(asked, "policy explain", ("rows", CATALOG_QUERY))
        if answers is None:
            return 2
        functions = UserFunctions.from_rows(answers[0])
    decisions = Policy.from_config(asked.config).decide_all(classify(args.sql, PreparedRegistry()), ctx, functions)
    if args.json:
        print(json.dumps({"context": _context(ctx), "statements": [d.record() | {"text": d.statement.text}
                                                                   for d in decisions]}, indent=2))
    else:
        print(_render(ctx, decisions))
    return 0 if all(d.allowed for d in decisions) else 1


def _context(ctx: Any) -> dict[str, Any]:
    return {"connection": ctx.connection, "level": ctx.level, "user": ctx.user,
            "groups": sorted(ctx.groups), "application": ctx.application}


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(v)
    return str(v)


def _render(ctx: Any, decisions: list) -> str:
    groups = ",".join(sorted(ctx.groups)) or "-"
    lines = [f"connection {ctx.connection}, level {ctx.level}, user {ctx.user or '-'}, groups {groups}, "
             f"application {ctx.application or '-'}"]
    if not decisions:
        lines.append("(no statements)")
    for n, d in enumerate(decisions, 1):
        s = d.statement.summary()
        lines += ["", f"statement {n}: {d.statement.text}", f"  kind: {s['kind']} ({s['command']})"]
        lines += [f"  {label}: {_show(s[key])}" for key, label in _FIELDS if key in s]
        by = f'rule "{d.rule}"' if d.rule else f"level {ctx.level}"
        verdict = f"{d.action.upper()} by {by}"
        lines.append(f"  decision: {verdict}" + (f"\n  message: {d.message}" if d.message else ""))
    return "\n".join(lines)
