"""The ``hoopd`` command: check-config, hash-password, and the tool groups of each part.

Each part that has tools (journal, policy, ...) provides ``add_commands(subparsers)``;
a command's handler takes the parsed args and returns the exit status.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Callable, Sequence

from hoopd.cliargs import load_config


def _check_config(args: argparse.Namespace) -> int:
    from hoopd.config import warnings

    cfg = load_config(args.file)
    if cfg is None:
        return 1
    for w in warnings(cfg):
        print(f"hoopd: warning: {w}", file=sys.stderr)
    print(f"{args.file}: OK ({len(cfg.connections)} connections, {len(cfg.users)} local users)")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from hoopd.pgwire.scram import make_verifier

    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            print("hoopd: passwords do not match", file=sys.stderr)
            return 1
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        print("hoopd: empty password refused", file=sys.stderr)
        return 1
    print(make_verifier(pw, iterations=args.iterations))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoopd", description="hoopd: a Layer 7 gateway for PostgreSQL")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=_check_config)
    h = sub.add_parser("hash-password", help="read a password (prompt or stdin), print a SCRAM-SHA-256 verifier")
    h.add_argument("--iterations", type=int, default=4096)
    h.set_defaults(func=_hash_password)
    for add in _part_commands():
        add(sub)
    return p


def _part_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Tool groups contributed by the parts (each an add_commands function)."""
    from hoopd.control import tokens
    from hoopd.journal import cli as journal
    from hoopd.masking import cli as masking
    from hoopd.policy import cli as policy
    from hoopd.review import cli as review

    return [tokens.add_commands, journal.add_commands, policy.add_commands, masking.add_commands, review.add_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
