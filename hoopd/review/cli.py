"""``hoopd review list|show|approve|deny`` (held statements, ``/api/v1/reviews``) and
``hoopd grant request|list|approve|deny|revoke`` (access grants, ``/api/v1/grants``),
through the control port's API, with a bearer token read from ``--token-file`` or
``$HOOPD_TOKEN`` (never from the command line, where ``ps`` shows it).

Exit status: 0 done, 1 the gateway refused (403 not a reviewer, 404, 409 already
decided: its message is printed), 2 usage or connection error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from hoopd.textsafe import escape


def add_commands(sub: argparse._SubParsersAction) -> None:
    for group, helptext, commands in (
            ("review", "decide statements held for review (through the control port)",
             (("list", "pending requests (--all: with decided ones)"), ("show", "one request"),
              ("approve", "approve a held statement"), ("deny", "deny a held statement"))),
            ("grant", "time-boxed access grants (through the control port)",
             (("request", "ask for a higher level on a connection for a while"),
              ("list", "pending and active grants (--all: every one)"), ("approve", "approve a grant"),
              ("deny", "deny a grant"), ("revoke", "end an active grant (its live sessions end too)")))):
        p = sub.add_parser(group, help=helptext)
        gsub = p.add_subparsers(dest="api_command", metavar="COMMAND", required=True)
        for name, text in commands:
            c = gsub.add_parser(name, help=text)
            c.add_argument("--url", default="http://127.0.0.1:8080", help="the control port (default: %(default)s)")
            c.add_argument("--token-file", help="file holding the bearer token (default: $HOOPD_TOKEN)")
            c.add_argument("--json", action="store_true", help="print the API's JSON")
            if name == "list":
                c.add_argument("--all", action="store_true")
            elif name == "request":
                c.add_argument("--connection", required=True)
                c.add_argument("--level", required=True, choices=("read_only", "read_write", "admin"))
                c.add_argument("--for", dest="duration", required=True, help='how long, e.g. "30m"')
                c.add_argument("--reason", required=True)
            else:
                c.add_argument("id", help=f"the {group} id")
            if name == "approve":
                c.add_argument("comment", nargs="*", help="why (optional)")
            if name in ("deny", "revoke"):
                c.add_argument("reason", nargs="+", help="why (the user is told)")
            c.set_defaults(func=run, api_group=group)


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            print(f"hoopd: cannot read --token-file {args.token_file}: {e.strerror}", file=sys.stderr)
            return None
    return os.environ.get("HOOPD_TOKEN") or None


def _call(args: argparse.Namespace, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(args.url.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"message": e.reason}


def run(args: argparse.Namespace) -> int:
    token = _token(args)
    if token is None:
        print("hoopd: give --token-file, or set HOOPD_TOKEN, with a control API token", file=sys.stderr)
        return 2
    cmd, base = args.api_command, f"/api/v1/{args.api_group}s"
    if cmd == "list":
        method, path, body = "GET", base + ("" if args.all or args.api_group == "grant" else "?status=pending"), None
    elif cmd == "show":
        method, path, body = "GET", f"{base}/{args.id}", None
    elif cmd == "request":
        method, path, body = "POST", base, {"connection": args.connection, "level": args.level,
                                            "duration": args.duration, "reason": args.reason}
    elif cmd == "approve":
        method, path, body = "POST", f"{base}/{args.id}/approve", {"comment": " ".join(args.comment)}
    else:
        method, path, body = "POST", f"{base}/{args.id}/{cmd}", {"reason": " ".join(args.reason)}
    try:
        status, got = _call(args, token, method, path, body)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"hoopd: cannot reach the control port at {args.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    if status != 200:
        print(escape(f"hoopd: {got.get('message', status)}"), file=sys.stderr)
        return 1 if status in (400, 403, 404, 409, 503) else 2
    if args.json:
        print(json.dumps(got, indent=2))
    elif cmd == "list" and args.api_group == "review":
        rows = got["reviews"]
        print("no review requests" if not rows else "\n".join(
            escape(f"{r['id']}  {r['status']:9} {r['user'] or '-':12} {r['connection'] or '-':10} {r['rule']:20}"
                   f" {int(time.time() - r['requested'])}s  {' '.join(r['statement'].split())[:60]}")
            for r in rows))
    elif cmd == "list":
        rows = [g for g in got["grants"] if args.all or g["status"] in ("pending", "active")]
        print("no grants" if not rows else "\n".join(
            escape(f"{g['id']}  {g['status']:8} {g['user']:12} {g['connection']:10} {g['level']:10}"
                   f" {g['duration']:g}s  {g['reason'][:50]}") for g in rows))
    elif cmd == "show":
        print(escape("\n".join(f"{k + ':':14} {v}" for k, v in got.items()), layout=True))
    else:
        print(escape(f"{'request' if args.api_group == 'review' else 'grant'} {got['id']}: {got['status']}"))
    return 0
