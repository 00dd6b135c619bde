"""Masking inside JSON documents without breaking them (json and jsonb values).

A span found in a JSON string or number cannot simply be replaced in the document's
text: ``{"n": 4111111111111111}`` would become invalid. The document is parsed keeping
what the server wrote (duplicate keys of ``json``, number texts), every string, key and
number is masked as a value of its own, and a masked number becomes a string. Output
uses jsonb's spacing (``{"a": 1, "b": [2, 3]}``); an unchanged document is not rewritten.
"""
from __future__ import annotations

import json
from typing import Any, Callable


class _Number(str):
    """A JSON number, as the server wrote it."""


class _Pairs(list):
    """A JSON object, its (key, value) pairs in order (json keeps duplicate keys)."""


def _parse(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_Pairs, parse_float=_Number, parse_int=_Number,
                      parse_constant=_Number)


def mask_json(text: str, mask: Callable[[str], str | None]) -> str | None:
    """The document with ``mask`` (text -> masked text or None) applied to every string,
    key and number; None when nothing changed (or the text is not JSON)."""
    try:
        doc = _parse(text)
    except ValueError:
        return None
    changed = False

    def walk(x: Any) -> Any:
        nonlocal changed
        if isinstance(x, _Pairs):
            return _Pairs((walk(k), walk(v)) for k, v in x)
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, str):  # strings and numbers
            new = mask(x)
            if new is not None:
                changed = True
                return new  # a plain str: a masked number becomes a JSON string
        return x

    out = walk(doc)
    return dump(out) if changed else None


def dump(x: Any) -> str:
    if isinstance(x, _Pairs):
        return "{" + ", ".join(f"{dump(k)}: {dump(v)}" for k, v in x) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(dump(v) for v in x) + "]"
    if isinstance(x, _Number):
        return str.__str__(x)
    if isinstance(x, str):
        return json.dumps(x, ensure_ascii=False)
    return json.dumps(x)  # true, false, null
