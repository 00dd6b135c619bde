"""Rules: ordered, first match wins; a rule matches when every match key it has matches.

Globs (``relations``, ``functions``, ``groups``, ``users``, ``applications``) use
fnmatch syntax, case-sensitively (PostgreSQL folds unquoted names to lower case, so
write patterns in lower case). A statement matches ``relations`` / ``functions`` when
any name it uses matches any pattern. The gateway cannot know the search_path, so an
unqualified name in the statement matches a qualified pattern on its last part alone
(``customer`` matches ``public.customer*``), and an unqualified pattern matches names in
any schema.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Iterable

from hoopd.policy.classify import StatementInfo

ACTIONS = ("allow", "deny", "review")


@dataclass(frozen=True)
class Context:
    """Who sends a statement, where."""

    connection: str
    level: str | None
    user: str | None = None
    groups: frozenset[str] = frozenset()
    application: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # allow | deny | review
    message: str = ""
    kinds: frozenset[str] | None = None
    relations: tuple[str, ...] | None = None
    functions: tuple[str, ...] | None = None
    levels: frozenset[str] | None = None
    groups: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None
    applications: tuple[str, ...] | None = None
    text_regex: re.Pattern[str] | None = None
    without_where: bool | None = None

    def matches(self, info: StatementInfo, ctx: Context) -> bool:
        if self.levels is not None and ctx.level not in self.levels:
            return False
        if self.kinds is not None and not (self.kinds & info.kinds):
            return False
        if self.users is not None and not (ctx.user is not None and _any_glob([ctx.user], self.users)):
            return False
        if self.groups is not None and not _any_glob(ctx.groups, self.groups):
            return False
        if self.applications is not None and not _any_glob([ctx.application], self.applications):
            return False
        if self.relations is not None and not _any_name(info.relations, self.relations):
            return False
        if self.functions is not None and not _any_name(info.functions, self.functions):
            return False
        if self.without_where is not None and self.without_where != (info.has_where is False):
            return False
        return self.text_regex is None or self.text_regex.search(info.text) is not None


def first_match(rules: Iterable[Rule], info: StatementInfo, ctx: Context) -> Rule | None:
    for r in rules:
        if r.matches(info, ctx):
            return r
    return None


def _any_glob(values: Iterable[str], patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(v, p) for v in values for p in patterns)


def name_matches(name: str, pattern: str) -> bool:
    """A relation or function name as written against a pattern (see module docstring)."""
    if fnmatchcase(name, pattern):
        return True
    schema, _, bare = name.rpartition(".")
    p_schema, dot, p_bare = pattern.rpartition(".")
    if not dot:
        return fnmatchcase(bare, pattern)
    return not schema and fnmatchcase(bare, p_bare)


def _any_name(names: Iterable[str], patterns: tuple[str, ...]) -> bool:
    return any(name_matches(n, p) for n in names for p in patterns)
