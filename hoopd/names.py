"""How user names compare, in one place (identity, rules, login limits, journal searches)."""
from __future__ import annotations

import unicodedata
from functools import lru_cache


@lru_cache(maxsize=4096)
def name_key(name: str) -> str:
    """The one form user names are compared in (rules, login limits, searches): NFKC,
    without control characters, case-folded, trimmed, inner whitespace collapsed. The
    directory matches ``uid`` ignoring case and surrounding spaces; so does this."""
    text = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c)[0] != "C")
    return " ".join(text.casefold().split())
