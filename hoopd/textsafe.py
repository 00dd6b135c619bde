"""Text that reaches an operator's terminal: client-sent characters never act on it.

Application names, SQL text, user names, values, notices and error messages come from
clients and servers. Printed raw, ESC sequences in them retitle the window, clear the
screen, plant OSC 8 links or rewrite what is shown; bidi overrides and line separators
make text read differently from what it is. ``escape`` turns each such character into a
visible escape (``\\x1b``, ``\\u202e``); newline and tab are kept only where a layout asks.
The journal itself keeps the exact text; JSON output escapes the same characters the
JSON way (``json_escape``), so it still decodes to the exact value.
"""
from __future__ import annotations

import re

# C0 (but tab/newline, handled below), DEL, C1, and the Unicode format characters that
# reorder or break lines: ALM, LRM/RLM, LS/PS, LRE..RLO, LRI..PDI, plus BOM/ZWNBSP.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
_STRICT = re.compile(f"[\t\n{_UNSAFE}]")
_LAYOUT = re.compile(f"[{_UNSAFE}]")
_NOT_JSON_SAFE = re.compile(f"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _visible(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str, *, layout: bool = False) -> str:
    """``text`` with every control and reordering character shown as an escape.

    ``layout=True`` keeps newline and tab (multi-line renderings such as a replayed
    statement); CR is always escaped: it would let a line overwrite itself."""
    return (_LAYOUT if layout else _STRICT).sub(_visible, text)


def json_escape(encoded: str) -> str:
    """A ``json.dumps(..., ensure_ascii=False)`` result with DEL, C1 and bidi/line-separator
    characters as ``\\uXXXX`` (json already escapes C0): the same JSON value, terminal-safe."""
    return _NOT_JSON_SAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
