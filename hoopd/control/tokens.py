"""API bearer tokens: made with ``hoopd hash-token``, stored in the config only as a hash.

Tokens are long random strings (``hoopd hash-token --new`` makes 256-bit ones; tokens
read from stdin must have at least MIN_LENGTH characters), so a plain SHA-256 is enough:
nobody can guess a preimage, and checking a request costs microseconds, not a KDF.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import secrets
import sys

PREFIX = "sha256:"
MIN_LENGTH = 32


def hash_token(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "hoopd_" + secrets.token_urlsafe(32)


def matches(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), token_hash)


def _hash_token(args: argparse.Namespace) -> int:
    if args.new:
        token = new_token()
        print(f"token: {token}")
        print(f"token_hash: {hash_token(token)}")
        return 0
    token = getpass.getpass("Token: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if len(token) < MIN_LENGTH:
        print(f"hoopd: a token needs at least {MIN_LENGTH} characters (or use --new)", file=sys.stderr)
        return 1
    print(hash_token(token))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("hash-token", help="hash an API token for [[control.tokens]] (or make one with --new)")
    h.add_argument("--new", action="store_true", help="make a new random token; print it and its hash")
    h.set_defaults(func=_hash_token)
