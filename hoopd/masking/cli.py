"""``hoopd masking explain``: which masking rules apply to an identity, and what they do to
a sample value, offline (no database needed: the rules look at content).

Exit status: 0 when something in the text would be masked, 1 when nothing would, 2 on a
usage or config error.
"""
from __future__ import annotations

import argparse
import json

from hoopd.cliargs import add_identity_arguments, asked_identity
from hoopd.textsafe import escape


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masking", help="masking tools")
    msub = p.add_subparsers(dest="masking_command", metavar="COMMAND", required=True)
    e = msub.add_parser("explain", help="the rules that apply to an identity and what they do to a text")
    add_identity_arguments(e)
    e.add_argument("text", help="a value as a result would carry it")
    e.set_defaults(func=explain)


def explain(args: argparse.Namespace) -> int:
    asked = asked_identity(args)
    if asked is None:
        return 2
    masking = asked.config.masking
    masker = (masking.masker(asked.level, asked.user, asked.groups, asked.application, asked.connection)
              if masking else None)
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
