"""``hoopd masking explain``: which masking rules apply to an identity, and what they do to
a sample value, offline (no database needed: the rules look at content).

Exit status: 0 when something in the text would be masked, 1 when nothing would, 2 on a
usage or config error.
"""
from __future__ import annotations

import argparse
import json
import sys

from hoopd.confkit import ConfigError
from hoopd.textsafe import escape


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masking", help="masking tools")
    msub = p.add_subparsers(dest="masking_command", metavar="COMMAND", required=True)
    e = msub.add_parser("explain", help="the rules that apply to an identity and what they do to a text")
    e.add_argument("--config", required=True, help="the hoopd config file")
    e.add_argument("--connection", required=True, help="connection name (the client's dbname)")
    e.add_argument("--level", choices=("read_only", "read_write", "admin"),
                   help="access level (default: what --groups grant on the connection)")
    e.add_argument("--user", help="identity name rules see")
    e.add_argument("--groups", default="", help="comma-separated identity groups")
    e.add_argument("--application", default="", help="application_name rules see")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")
    e.add_argument("text", help="a value as a result would carry it")
    e.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    from hoopd.config import load

    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"hoopd: {e}", file=sys.stderr)
        return 2
    conn = cfg.connections.get(args.connection)
    if conn is None and "*" not in cfg.connections:
        known = ", ".join(sorted(cfg.connections)) or "none"
        print(f'hoopd: no connection "{args.connection}" in {args.config} (known: {known})', file=sys.stderr)
        return 2
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    level = args.level or (conn or cfg.connections["*"]).level_for(frozenset(groups))
    if level is None:
        print(f'hoopd: give --level, or --groups that have access to "{args.connection}"', file=sys.stderr)
        return 2
    masker = cfg.masking.masker(level, args.user, groups, args.application, args.connection) if cfg.masking else None
    rules = masker.rules if masker else ()
    found = [(r.name, r.strategy, [args.text[a:b] for a, b in r.spans(args.text)]) for r in rules]
    masked, null = masker.mask(args.text) if masker else (None, False)
    result = None if null else (masked if masked is not None else args.text)
    if args.json:
        print(json.dumps({"level": level, "rules": [{"name": n, "strategy": s, "found": f} for n, s, f in found],
                          "result": result, "null": null}, indent=2))
    else:
        lines = [f"{args.connection} as {level}: " + (", ".join(n for n, _, _ in found) or "no masking rule applies")]
        lines += [f"  {n} ({s}): " + (", ".join(repr(x) for x in f) or "nothing found") for n, s, f in found]
        lines.append("  -> NULL" if null else f"  -> {result!r}")
        print(escape("\n".join(lines), layout=True))
    return 0 if masked is not None or null else 1
