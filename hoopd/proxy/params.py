"""Which client startup parameters reach the upstream, and how ``options`` is rewritten.

A credential-holding gateway must never let a client pick the upstream role: ``role``,
``session_authorization`` and ``options`` entries that set them are dropped, and a
read-only session cannot switch off ``default_transaction_read_only``. Everything else
(application_name, client_encoding, DateStyle, TimeZone, extra_float_digits, search_path,
...) passes: whitelists broke pgjdbc and DBeaver.
"""
from __future__ import annotations

# Not forwarded as startup parameters: the gateway sets them itself, or they are privileged.
_NEVER = {"user", "database", "role", "session_authorization", "replication", "options"}
_PRIVILEGED_GUCS = {"role", "session_authorization"}
_READ_ONLY_GUCS = {"default_transaction_read_only", "transaction_read_only"}
_LEXING_GUCS = {"standard_conforming_strings"}  # the gateway's parser reads strings with it on


def split_options(options: str) -> list[str]:
    """Split ``options`` like PostgreSQL's pg_split_opts: whitespace separates,
    a backslash escapes the next character."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    while i < len(options):
        ch = options[i]
        if ch == "\\" and i + 1 < len(options):
            cur.append(options[i + 1])
            have = True
            i += 2
            continue
        if ch.isspace():
            if have:
                out.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(ch)
            have = True
        i += 1
    if have:
        out.append("".join(cur))
    return out


def _escape(tok: str) -> str:
    return "".join("\\" + c if c.isspace() or c == "\\" else c for c in tok)


def parse_option_gucs(options: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, value) pairs from ``-c name=value``, ``-cname=value`` and ``--name=value``,
    plus the tokens that are none of those."""
    toks = split_options(options)
    gucs: list[tuple[str, str]] = []
    other: list[str] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        setting = None
        if t == "-c" and i + 1 < len(toks):
            setting = toks[i + 1]
            i += 1
        elif t.startswith("-c") and len(t) > 2:
            setting = t[2:]
        elif t.startswith("--") and "=" in t:
            setting = t[2:]
        if setting is not None and "=" in setting:
            name, value = setting.split("=", 1)
            gucs.append((name.strip().lower().replace("-", "_"), value))
        else:
            other.append(t)
        i += 1
    return gucs, other


def upstream_params(client: dict[str, str], read_only: bool,
                    admin: bool = False) -> tuple[dict[str, str], list[str]]:
    """The parameters to send upstream (without user/database) and the names dropped.

    Below admin the session starts with standard_conforming_strings=on whatever the role's
    or database's defaults say (a startup option outranks them), so RESET, RESET ALL and
    DISCARD ALL return it to on; read_only also gets default_transaction_read_only=on."""
    blocked = _PRIVILEGED_GUCS | (_READ_ONLY_GUCS if read_only else set()) | (set() if admin else _LEXING_GUCS)
    out: dict[str, str] = {}
    dropped: list[str] = []
    for k, v in client.items():
        lk = k.lower()
        if lk in _NEVER or lk in blocked:
            if lk not in ("user", "database", "options"):
                dropped.append(k)
            continue
        out[k] = v
    gucs, other = parse_option_gucs(client.get("options", ""))
    dropped += [f"options:{t}" for t in other]
    kept = []
    for name, value in gucs:
        if name in blocked:
            dropped.append(f"options:{name}")
        else:
            kept.append(f"-c {_escape(name + '=' + value)}")
    if read_only:
        kept.append("-c default_transaction_read_only=on")
    if not admin:
        kept.append("-c standard_conforming_strings=on")
    if kept:
        out["options"] = " ".join(kept)
    return out, dropped
