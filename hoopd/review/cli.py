"""``hoopd review list|show|approve|deny``: decide held statements through the control
port's API (``/api/v1/reviews``), as a reviewer whose bearer token is read from
``--token-file`` or ``$HOOPD_TOKEN`` (never from the command line, where ``ps`` shows it).

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
    p = sub.add_parser("review", help="decide statements held for review (through the control port)")
    rsub = p.add_subparsers(dest="review_command", metavar="COMMAND", required=True)
    for name, helptext in (("list", "pending requests (--all: with decided ones)"), ("show", "one request"),
                           ("approve", "approve a held statement"), ("deny", "deny a held statement")):
        c = rsub.add_parser(name, help=helptext)
        c.add_argument("--url", default="http://127.0.0.1:8080", help="the control port (default: %(default)s)")
        c.add_argument("--token-file", help="file holding the bearer token (default: $HOOPD_TOKEN)")
        c.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "list":
            c.add_argument("--all", action="store_true")
        else:
            c.add_argument("id", help="the request id (from `hoopd review list` or the client's notice)")
        if name == "approve":
            c.add_argument("comment", nargs="*", help="why (optional)")
        if name == "deny":
            c.add_argument("reason", nargs="+", help="why (the client is told)")
        c.set_defaults(func=run)


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
    cmd = args.review_command
    if cmd == "list":
        method, path, body = "GET", "/api/v1/reviews" + ("" if args.all else "?status=pending"), None
    elif cmd == "show":
        method, path, body = "GET", f"/api/v1/reviews/{args.id}", None
    elif cmd == "approve":
        method, path, body = "POST", f"/api/v1/reviews/{args.id}/approve", {"comment": " ".join(args.comment)}
    else:
        method, path, body = "POST", f"/api/v1/reviews/{args.id}/deny", {"reason": " ".join(args.reason)}
    try:
        status, got = _call(args, token, method, path, body)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"hoopd: cannot reach the control port at {args.url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    if status != 200:
        print(escape(f"hoopd: {got.get('message', status)}"), file=sys.stderr)
        return 1 if status in (403, 404, 409) else 2
    if args.json:
        print(json.dumps(got, indent=2))
    elif cmd == "list":
        rows = got["reviews"]
        print("no review requests" if not rows else "\n".join(
            escape(f"{r['id']}  {r['status']:9} {r['user'] or '-':12} {r['connection'] or '-':10} {r['rule']:20}"
                   f" {int(time.time() - r['requested'])}s  {' '.join(r['statement'].split())[:60]}")
            for r in rows))
    elif cmd == "show":
        print(escape("\n".join(f"{k + ':':14} {v}" for k, v in got.items()), layout=True))
    else:
        print(escape(f"request {got['id']}: {got['status']}"))
    return 0
