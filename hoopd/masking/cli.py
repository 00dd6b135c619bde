"""``hoopd masking explain``: which masking rules apply to an identity, and what they do

* to a sample value (``TEXT``), offline: the detectors look at content;
* to a statement's result columns (``--sql``), asking the connection's PostgreSQL (the
  relation catalog, and a Parse/Describe of the statement: nothing runs), as the gateway
  would: which column each column rule masks, and whether the statement is refused for
  copying masked values.

Exit status: 0 when something would be masked (or refused), 1 when nothing would, 2 on a
usage, config or connection error.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from hoopd.cliargs import Asked, add_identity_arguments, ask_upstream, asked_identity
from hoopd.masking.rules import Masker
from hoopd.textsafe import escape


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masking", help="masking tools")
    msub = p.add_subparsers(dest="masking_command", metavar="COMMAND", required=True)
    e = msub.add_parser("explain", help="the rules that apply to an identity and what they do to a text")
    add_identity_arguments(e)
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="a value as a result would carry it")
    what.add_argument("--sql", help="a statement: which of its result columns would be masked (asks the database)")
    e.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    asked = asked_identity(args)
    if asked is None:
        return 2
    masking = asked.config.masking
    masker = (masking.masker(asked.level, asked.user, asked.groups, asked.application, asked.connection)
              if masking else None)
    if args.sql is not None:
        return _explain_sql(args, asked, masker)
    rules = masker.rules if masker else ()
    found = [(r.name, r.strategy, [args.text[a:b] for a, b in r.spans(args.text)]) for r in rules]
    masked, null = masker.mask(args.text) if masker else (None, False)
    result = None if null else (masked if masked is not None else args.text)
    if args.json:
        print(json.dumps({"level": asked.level, "rules": [{"name": n, "strategy": s, "found": f} for n, s, f in found],
                          "result": result, "null": null}, indent=2))
    else:
        lines = [f"{asked.connection} as {asked.level}: " + (", ".join(n for n, _, _ in found)
                                                             or "no masking rule applies")]
        lines += [f"  {n} ({s}): " + (", ".join(repr(x) for x in f) or "nothing found") for n, s, f in found]
        lines.append("  -> NULL" if null else f"  -> {result!r}")
        print(escape("\n".join(lines), layout=True))
    return 0 if masked is not None or null else 1


def _explain_sql(args: argparse.Namespace, asked: Asked, masker: Masker | None) -> int:
    from hoopd.masking.columns import ColumnMasks
    from hoopd.masking.derive import copies
    from hoopd.masking.relations import RELATIONS_QUERY, Relations
    from hoopd.masking.stage import NON_TEXT

    answers = ask_upstream(asked, "masking explain", ("rows", RELATIONS_QUERY), ("describe", args.sql))
    if answers is None:
        return 2
    got = {"rows": answers[0], "columns": answers[1]}
    column_rules = masker.column_rules if masker else ()
    cm = ColumnMasks(column_rules, Relations.from_rows(got["rows"])) if column_rules else None
    cols = got["columns"]
    trees = cm.trees(args.sql) if cm else None
    refused = next((r.name for t in trees or () if (r := copies(t, cm)) is not None), None) if cm else None
    plan = cm.plan(cols, cm.statement(args.sql, 0)) if cm and cols else (None,) * len(cols.names if cols else ())
    detecting = [r.name for r in masker.detecting] if masker else []
    out = []
    for i, name in enumerate(cols.names if cols else ()):
        rule = plan[i]
        source = _source(cm, cols.tables[i], cols.attnums[i]) if cm else None
        out.append({"column": name, "source": source, "rule": rule.name if rule else None,
                    "strategy": rule.strategy if rule else None,
                    "detectors": [] if rule or cols.types[i] in NON_TEXT else detecting})
    if args.json:
        print(json.dumps({"level": asked.level, "columns": out, "refused_by": refused}, indent=2))
    else:
        lines = [f"{asked.connection} as {asked.level}: " + (", ".join(r.name for r in masker.rules) if masker
                                                             else "no masking rule applies")]
        if refused:
            lines.append(f'  refused: it would store or export values masking rule "{refused}" masks')
        for c in out:
            what = (f'masked by {c["rule"]} ({c["strategy"]})' if c["rule"]
                    else ("content checked by " + ", ".join(c["detectors"]) if c["detectors"] else "clear"))
            lines.append(f'  {c["column"]} [{c["source"] or "computed"}]: {what}')
        print(escape("\n".join(lines), layout=True))
    return 0 if refused or any(c["rule"] for c in out) else 1


def _source(cm: Any, table: int, attnum: int) -> str | None:
    rel = cm.relations.by_oid.get(table) if table else None
    if rel is None:
        return None if not table else f"table oid {table}"
    return f"{rel.schema}.{rel.name}.{rel.columns.get(attnum, attnum)}"
