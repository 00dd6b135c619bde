"""Small typed readers for TOML tables that fail with the key path of what was wrong.

Every section parser in hoopd uses a Table: it records which keys were read and
``done()`` rejects the rest as unknown, so a typo never passes silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem; str() is ``key.path: what is wrong``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows itself in repr/str/logs."""

    value: str = field(repr=False)
    origin: str = ""  # where it came from, e.g. "file /etc/hoopd/secrets/shop" (safe to show)

    def __str__(self) -> str:
        return "<secret>"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "k": 1024, "K": 1024, "KiB": 1024, "KB": 1000, "M": 1 << 20,
               "MiB": 1 << 20, "MB": 10**6, "G": 1 << 30, "GiB": 1 << 30, "GB": 10**9}


def parse_duration(text: Any) -> float:
    """Seconds from a string like "90d", "15m", "500ms" (ValueError otherwise)."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f'expected a duration like "30s", "15m", "90d", got {_show(text)}')
    return float(m.group(1)) * _UNITS[m.group(2)]


class Table:
    """A view of one TOML table at ``path``."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_show(data)}")
        self.data = data
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        return self.data[name]

    def str(self, name: str, default: Any = None, *, required: bool = False,
            choices: Iterable[str] | None = None) -> Any:
        v = self._get(name, default, required)
        if v is default and name not in self.data:
            return v
        if not isinstance(v, str):
            raise ConfigError(self.key(name), f"expected a string, got {_show(v)}")
        if choices is not None and v not in choices:
            raise ConfigError(self.key(name), f"expected one of {' | '.join(choices)}, got {_show(v)}")
        return v

    def int(self, name: str, default: Any = None, *, required: bool = False,
            lo: int | None = None, hi: int | None = None) -> Any:
        v = self._get(name, default, required)
        if v is default and name not in self.data:
            return v
        if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" {lo}-{hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
            raise ConfigError(self.key(name), f"expected an integer{rng}, got {_show(v)}")
        return v

    def bool(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        v = self._get(name, default, required)
        if v is default and name not in self.data:
            return v
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_show(v)}")
        return v

    def str_list(self, name: str, default: Any = (), *, required: bool = False) -> tuple[str, ...]:
        """A string or a list of strings."""
        v = self._get(name, default, required)
        if isinstance(v, str):
            return (v,)
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise ConfigError(self.key(name), f"expected a string or a list of strings, got {_show(v)}")
        return tuple(v)

    def duration(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        """Seconds, from a number or a string like "90d", "15m", "500ms"."""
        v = self._get(name, default, required)
        if v is default and name not in self.data:
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            return float(v)
        try:
            return parse_duration(v)
        except ValueError:
            raise ConfigError(self.key(name), f'expected a duration like "30s", "15m", "90d", got {_show(v)}') from None

    def size(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        """Bytes, from an integer or a string like "64MiB"."""
        v = self._get(name, default, required)
        if v is default and name not in self.data:
            return v
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        m = _SIZE.match(v) if isinstance(v, str) else None
        if not m:
            raise ConfigError(self.key(name), f'expected a size like 1048576 or "64MiB", got {_show(v)}')
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def table(self, name: str, *, required: bool = False) -> "Table":
        v = self._get(name, {}, required)
        return Table(v, self.key(name))

    def tables(self, name: str) -> Iterator["Table"]:
        """An array of tables ([[name]]), each with path ``name[i]``."""
        v = self._get(name, [], False)
        if not isinstance(v, list):
            raise ConfigError(self.key(name), f"expected an array of tables ([[{name}]]), got {_show(v)}")
        for i, item in enumerate(v):
            yield Table(item, f"{self.key(name)}[{i}]")

    def raw(self, name: str, default: Any = None) -> Any:
        return self._get(name, default, False)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every key of a free-form table (all are taken as read)."""
        for k, v in self.data.items():
            self._seen.add(k)
            yield k, v

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def read_key(path: Path) -> bytes:
    """An HMAC key file's bytes (a trailing newline is not part of the key). Raises OSError, ValueError."""
    key = path.read_bytes().rstrip(b"\r\n")
    if len(key) < 16:
        raise ValueError(f"{path} holds {len(key)} bytes; an HMAC key needs at least 16")
    return key


def key_file(t: Table, name: str, base: Path) -> tuple[str, bytes] | None:
    """The HMAC key file named by ``t.name`` (relative to ``base``): (its path, the key), or None."""
    given = t.str(name)
    if given is None:
        return None
    path = Path(given) if os.path.isabs(given) else base / given
    try:
        return str(path), read_key(path)
    except OSError as e:
        raise ConfigError(t.key(name), f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(t.key(name), str(e)) from None
