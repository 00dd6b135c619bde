"""The running config as JSON with every secret removed (for the API and the console).

Generic over the config dataclasses, so sections added later are covered too: a field
declared ``repr=False`` (password hashes, token hashes, key bytes) or whose name says it
holds a secret (a str) is replaced by REDACTED; a ``Secret`` shows only where it came from.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from hoopd.config import Config
from hoopd.confkit import Secret

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"(password|secret|token|hmac_key|private)(?!_file|_env)", re.I)


def _value(v: Any) -> Any:
    if isinstance(v, Secret):
        return {"secret": v.origin or "set"}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out = {}
        for f in dataclasses.fields(v):
            x = getattr(v, f.name)
            hidden = not f.repr or (isinstance(x, (str, bytes)) and _SECRET_NAME.search(f.name))
            out[f.name] = REDACTED if hidden and x is not None else _value(x)
        return out
    if isinstance(v, Mapping):
        return {str(k): _value(x) for k, x in v.items()}
    if isinstance(v, (frozenset, set)):
        return sorted(_value(x) for x in v)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, bytes):
        return REDACTED
    return v


def config_summary(config: Config) -> dict[str, Any]:
    return _value(config)
