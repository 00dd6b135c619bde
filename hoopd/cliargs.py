"""What the ``hoopd`` tools share: loading the config for a command, and the identity an
``explain`` command asks about (policy and masking explain the same way)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hoopd.confkit import ConfigError

if TYPE_CHECKING:
    from hoopd.config import Config


def load_config(path: str) -> Config | None:
    """The config at ``path``, or None after saying on stderr what is wrong with it."""
    from hoopd.config import load

    try:
        return load(path)
    except ConfigError as e:
        print(f"hoopd: {e}", file=sys.stderr)
        return None


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --connection and who is asking (--level or --groups, --user, --application), --json."""
    p.add_argument("--config", required=True, help="the hoopd config file")
    p.add_argument("--connection", required=True, help="connection name (the client's dbname)")
    p.add_argument("--level", choices=("read_only", "read_write", "admin"),
                   help="access level (default: what --groups grant on the connection)")
    p.add_argument("--user", help="identity name rules see")
    p.add_argument("--groups", default="", help="comma-separated identity groups")
    p.add_argument("--application", default="", help="application_name rules see")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


@dataclass(frozen=True)
class Asked:
    config: Config
    connection: str
    level: str
    user: str | None
    groups: frozenset[str]
    application: str


def asked_identity(args: argparse.Namespace) -> Asked | None:
    """The config and identity of add_identity_arguments' arguments, or None after saying
    on stderr what is missing (the command then exits 2)."""
    cfg = load_config(args.config)
    if cfg is None:
        return None
    conn = cfg.connections.get(args.connection)
    if conn is None:
        known = ", ".join(sorted(cfg.connections)) or "none"
        print(f'hoopd: no connection "{args.connection}" in {args.config} (known: {known})', file=sys.stderr)
        return None
    groups = frozenset(g.strip() for g in args.groups.split(",") if g.strip())
    level = args.level or conn.level_for(groups)
    if level is None:
        print(f'hoopd: give --level, or --groups that have access to "{args.connection}"', file=sys.stderr)
        return None
    return Asked(cfg, args.connection, level, args.user, groups, args.application)


def ask_upstream(asked: Asked, purpose: str, *asks: tuple[str, str]) -> list[Any] | None:
    """Run each ``(what, sql)`` on the asked connection's PostgreSQL, one short session each
    (the read_only credential), and answer their results in order: ``"rows"`` the rows of
    a query, ``"describe"`` the columns a statement would return (nothing runs). None
    after saying on stderr why it could not (the command then exits 2)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from hoopd.proxy.catalog import describe_columns, on_upstream, query_rows
    from hoopd.textsafe import escape

    got: list[Any] = []
    failed: list[str] = []

    async def run(reactor: Any) -> None:
        conn = asked.config.connections[asked.connection]
        try:
            for what, sql in asks:
                call = query_rows if what == "rows" else describe_columns
                got.append(await on_upstream(reactor, conn, purpose, lambda up, c=call, q=sql: c(up, q)))
        except Exception as e:  # (UpstreamError, timeouts, refused connections)
            failed.append(str(e) or type(e).__name__)

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit:
        pass
    if failed:
        print(escape(f"hoopd: {asked.connection}: {failed[0]}"), file=sys.stderr)
        return None
    return got
