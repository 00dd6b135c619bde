"""Masking rules (``[[masking.rules]]``): who they apply to, what they find, how they replace it.

A rule names columns (``columns``: globs of ``schema.relation.column``,
``relation.column`` or ``column``; a one-part glob also matches a computed result
column's name; hoopd.masking.columns resolves them), content detectors
(hoopd.masking.detect) and custom regular expressions, a strategy and a scope.
``Masker`` is the rules that apply to one session: a column a rule names is masked
whole (hoopd.masking.values keeps it a valid value of its type); in a text, every
span a rule's detectors find is replaced by that rule's strategy, rules in order.
Strategies:

* ``redact``: the span becomes ``token`` (default ``****``);
* ``partial``: keeps the first ``keep_first`` and last ``keep_last`` characters, the rest
  becomes ``*`` (a short span is redacted whole);
* ``hash``: ``#`` + 16 hex digits of HMAC-SHA256 under ``[masking] hash_key_file``: the
  same value masks the same way in every session, so joins and GROUP BY still work on
  the client, and it cannot be reversed without the key;
* ``null``: the whole value becomes NULL (in places that have no NULL, such as an error
  message or a COPY line, the span is redacted).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable, Iterable

from hoopd.confkit import ConfigError, Table, key_file
from hoopd.levels import LEVELS
from hoopd.masking.detect import DETECTORS, Detector, merge, prefilter, regex
from hoopd.names import name_key

STRATEGIES = ("redact", "partial", "hash", "null")
BELOW_ADMIN = frozenset(lv for lv in LEVELS if lv != "admin")


@dataclass(frozen=True)
class MaskRule:
    name: str
    detectors: tuple[str, ...] = ()  # names in DETECTORS
    patterns: tuple[re.Pattern[str], ...] = ()  # custom detectors
    strategy: str = "redact"
    token: str = "****"
    keep_first: int = 0
    keep_last: int = 0
    levels: frozenset[str] = BELOW_ADMIN  # admin sees clear values unless a rule names it
    groups: tuple[str, ...] | None = None  # globs; None: any
    users: tuple[str, ...] | None = None
    applications: tuple[str, ...] | None = None
    connections: tuple[str, ...] | None = None
    columns: tuple[tuple[str, ...], ...] = ()  # globs split at dots: (column,), (relation, column) or all three
    _find: tuple[Detector, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_find", tuple(DETECTORS[d] for d in self.detectors)
                           + tuple(regex(p) for p in self.patterns))

    def applies(self, level: str | None, user: str | None, groups: Iterable[str], application: str,
                connection: str | None) -> bool:
        def any_glob(patterns: tuple[str, ...] | None, values: Iterable[str]) -> bool:
            return patterns is None or any(fnmatchcase(v, p) for p in patterns for v in values)

        return (level in self.levels and any_glob(self.groups, groups)
                and (self.users is None or any_glob(tuple(name_key(u) for u in self.users),
                                                    [name_key(user)] if user else []))
                and any_glob(self.applications, [application]) and any_glob(self.connections, [connection or ""]))

    def names_column(self, schema: str, relation: str, column: str) -> bool:
        """Whether a ``columns`` glob names this relation's column."""
        whole = (schema, relation, column)
        return any(all(fnmatchcase(v, p) for v, p in zip(whole[3 - len(g):], g)) for g in self.columns)

    def names_result(self, name: str) -> bool:
        """Whether a one-part ``columns`` glob matches a computed result column's name."""
        return any(len(g) == 1 and fnmatchcase(name, g[0]) for g in self.columns)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return merge(s for find in self._find for s in find(text))


class Masker:
    """The rules that apply to one session; ``counts`` is what each rule masked (spans)
    since it was last taken (``take_counts``)."""

    def __init__(self, rules: tuple[MaskRule, ...], hash_key: bytes | None) -> None:
        self.rules = rules
        self.hash_key = hash_key
        self.counts: dict[str, int] = {}
        self.detecting = tuple(r for r in rules if r._find)  # rules that look at content
        self.column_rules = tuple(r for r in rules if r.columns)
        # custom patterns may look around: no prefilter can stand in for them
        self.prefilter = (None if any(r.patterns for r in rules)
                          else prefilter(d for r in self.detecting for d in r.detectors))

    def take_counts(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts

    def mask(self, text: str) -> tuple[str | None, bool]:
        """(the masked text, or None when nothing matched; whether a ``null`` rule matched)."""
        changed = null = False
        for rule in self.detecting:
            spans = rule.spans(text)
            if not spans:
                continue
            if rule.strategy == "null":
                null = True
            changed = True
            self.counts[rule.name] = self.counts.get(rule.name, 0) + len(spans)
            text = _splice(text, spans, lambda value: self.replace(rule, value))
        return (text if changed else None), null

    def redact(self, text: str) -> str:
        """Every span any rule finds becomes that rule's token: what a ``null`` rule does
        where there is no NULL (a message, a COPY line)."""
        for rule in self.detecting:
            text = _splice(text, rule.spans(text), lambda _: rule.token)
        return text

    def count(self, rule: MaskRule) -> None:
        """One whole value masked by a column rule."""
        self.counts[rule.name] = self.counts.get(rule.name, 0) + 1

    def whole(self, rule: MaskRule, text: str) -> str | None:
        """A whole text value as column rule ``rule`` masks it, counted; None: NULL."""
        self.count(rule)
        return None if rule.strategy == "null" else self.replace(rule, text)

    def replace(self, rule: MaskRule, value: str) -> str:
        """``value`` as ``rule``'s strategy replaces it (``null``: its token)."""
        if rule.strategy == "partial":
            keep = rule.keep_first + rule.keep_last
            if len(value) <= keep:
                return rule.token
            tail = value[-rule.keep_last:] if rule.keep_last else ""
            return value[:rule.keep_first] + "*" * (len(value) - keep) + tail
        if rule.strategy == "hash":
            assert self.hash_key is not None  # the config requires it
            return "#" + hmac.new(self.hash_key, value.encode(), hashlib.sha256).hexdigest()[:16]
        return rule.token  # redact, and null where there is no NULL


def _splice(text: str, spans: list[tuple[int, int]], replace: Callable[[str], str]) -> str:
    """``text`` with each (ordered, disjoint) span replaced by ``replace`` of it."""
    parts, last = [], 0
    for start, end in spans:
        parts += [text[last:start], replace(text[start:end])]
        last = end
    parts.append(text[last:])
    return "".join(parts)


@dataclass(frozen=True)
class MaskingConfig:
    rules: tuple[MaskRule, ...] = ()
    hash_key: bytes | None = field(default=None, repr=False)  # read from [masking] hash_key_file
    catalog_max_age: float = 60.0  # seconds a database's relation catalog is trusted (column rules)

    def masker(self, level: str | None, user: str | None, groups: Iterable[str], application: str,
               connection: str | None) -> Masker | None:
        """The session's Masker, or None when no rule applies to it."""
        groups = tuple(groups)
        rules = tuple(r for r in self.rules if r.applies(level, user, groups, application, connection))
        if not rules:
            return None
        return Masker(rules, self.hash_key)


def parse_masking(root: Table, base: Path) -> MaskingConfig:
    """``[masking]`` and ``[[masking.rules]]`` from the root table (key files relative to ``base``)."""
    mt = root.table("masking")
    found = key_file(mt, "hash_key_file", base)
    max_age = mt.duration("catalog_max_age", 60.0)
    if max_age < 1:
        raise ConfigError(mt.key("catalog_max_age"), "must be at least 1s")
    rules: list[MaskRule] = []
    seen: set[str] = set()
    for rt in mt.tables("rules"):
        rules.append(_rule(rt, seen))
    mt.done()
    needs_key = [r.name for r in rules if r.strategy == "hash"]
    if needs_key and found is None:
        raise ConfigError(mt.key("hash_key_file"), f'is required: rule "{needs_key[0]}" uses strategy "hash"')
    return MaskingConfig(tuple(rules), found[1] if found else None, max_age)


def _rule(rt: Table, seen: set[str]) -> MaskRule:
    name = rt.str("name", required=True)
    if name in seen:
        raise ConfigError(rt.key("name"), f'duplicate masking rule name "{name}"')
    seen.add(name)
    detectors = rt.str_list("detectors")
    for d in detectors:
        if d not in DETECTORS:
            raise ConfigError(rt.key("detectors"), f'unknown detector "{d}" (one of {", ".join(DETECTORS)})')
    patterns = []
    for p in rt.str_list("patterns"):
        try:
            patterns.append(re.compile(p))
        except re.error as e:
            raise ConfigError(rt.key("patterns"), f"invalid regular expression {p!r}: {e}") from None
    columns = []
    for c in rt.str_list("columns"):
        parts = tuple(c.split("."))
        if len(parts) > 3 or not all(parts):
            raise ConfigError(rt.key("columns"), f"{c!r} is not a column glob (column, relation.column"
                              " or schema.relation.column)")
        columns.append(parts)
    if not detectors and not patterns and not columns:
        raise ConfigError(rt.key("columns"), "a rule needs at least one column, detector or pattern")
    levels = rt.str_list("levels", tuple(sorted(BELOW_ADMIN)))
    for lv in levels:
        if lv not in LEVELS:
            raise ConfigError(rt.key("levels"), f'unknown access level "{lv}" (one of {", ".join(LEVELS)})')

    def optional(key: str) -> tuple[str, ...] | None:
        return rt.str_list(key) if rt.has(key) else None

    rule = MaskRule(name, tuple(detectors), tuple(patterns), rt.str("strategy", "redact", choices=STRATEGIES),
                    rt.str("token", "****"), rt.int("keep_first", 0, lo=0, hi=64), rt.int("keep_last", 0, lo=0, hi=64),
                    frozenset(levels), optional("groups"), optional("users"), optional("applications"),
                    optional("connections"), tuple(columns))
    rt.done()
    return rule

