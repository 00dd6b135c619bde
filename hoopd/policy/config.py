"""Policy settings in the TOML config: ``[[rules]]``, ``[policy]``, and per connection
``[[connections.NAME.rules]]`` and ``unparseable``.

```toml
[policy]
unparseable = "admin"       # lowest level whose unparseable statements pass: none | read_only | read_write | admin

[[rules]]                   # global rules, checked after the connection's own
name = "no-delete-without-where"
action = "deny"             # allow | deny | review
message = "add a WHERE clause"
kinds = ["update", "delete"]
without_where = true
# action = "review" also takes: reviewers (groups), min_approvals, allow_self_approval,
# timeout ("15m"), in_transaction ("hold" | "refuse"), break_glass (groups)
# relations, functions, groups, users, applications: globs; levels; text_regex
```

hoopd.config calls these; they only read and validate (every Table ends with done()).
"""
from __future__ import annotations

import re

from hoopd.confkit import ConfigError, Table
from hoopd.levels import LEVELS
from hoopd.policy.catalog import KINDS
from hoopd.policy.rules import ACTIONS, ReviewSettings, Rule

UNPARSEABLE = ("none",) + LEVELS
DEFAULT_UNPARSEABLE = "admin"


def parse_rule(t: Table) -> Rule:
    name = t.str("name", required=True)
    action = t.str("action", required=True, choices=ACTIONS)
    message = t.str("message", "")
    lists = {}
    for key in ("kinds", "relations", "functions", "levels", "groups", "users", "applications"):
        if t.has(key):
            values = t.str_list(key)
            if not values:
                raise ConfigError(t.key(key), "is an empty list, which matches nothing (leave the key out to match all)")
            lists[key] = values
    for key, allowed in (("kinds", KINDS), ("levels", LEVELS)):
        for v in lists.get(key, ()):
            if v not in allowed:
                raise ConfigError(t.key(key), f'unknown {key[:-1]} "{v}" (expected one of {", ".join(sorted(allowed))})')
    regex = None
    if t.has("text_regex"):
        src = t.str("text_regex")
        try:
            regex = re.compile(src)
        except re.error as e:
            raise ConfigError(t.key("text_regex"), f"invalid regular expression: {e}") from None
    without_where = t.bool("without_where")
    review = _review_settings(t) if action == "review" else None
    t.done()
    return Rule(
        name=name, action=action, message=message,
        kinds=frozenset(lists["kinds"]) if "kinds" in lists else None,
        relations=lists.get("relations"), functions=lists.get("functions"),
        levels=frozenset(lists["levels"]) if "levels" in lists else None,
        groups=lists.get("groups"), users=lists.get("users"), applications=lists.get("applications"),
        text_regex=regex, without_where=without_where, review=review,
    )


def _review_settings(t: Table) -> ReviewSettings | None:
    """A review rule's reviewers and limits; None when it names no reviewers (its
    statements are then refused, saying so)."""
    if not t.has("reviewers"):
        for key in ("min_approvals", "allow_self_approval", "timeout", "in_transaction", "break_glass"):
            if t.has(key):
                raise ConfigError(t.key(key), "needs reviewers (the groups that decide)")
        return None
    reviewers = t.str_list("reviewers")
    if not reviewers:
        raise ConfigError(t.key("reviewers"), "is an empty list: nobody could decide")
    timeout = t.duration("timeout", ReviewSettings.timeout)
    if timeout < 1:
        raise ConfigError(t.key("timeout"), "must be at least 1s")
    return ReviewSettings(tuple(reviewers), t.int("min_approvals", 1, lo=1, hi=10),
                          t.bool("allow_self_approval", False), timeout,
                          t.str("in_transaction", "hold", choices=("hold", "refuse")),
                          tuple(t.str_list("break_glass")))


def parse_rules(t: Table) -> tuple[Rule, ...]:
    """The ``rules`` array of tables of ``t`` (the root or a connection)."""
    rules: list[Rule] = []
    seen: set[str] = set()
    for rt in t.tables("rules"):
        rule = parse_rule(rt)
        if rule.name in seen:
            raise ConfigError(rt.key("name"), f'duplicate rule name "{rule.name}"')
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def parse_global(root: Table) -> tuple[tuple[Rule, ...], str, bool, int, frozenset[str], float]:
    """Global ``[[rules]]`` and ``[policy]`` (unparseable, enabled, max_statement_bytes,
    read_only_functions, function_catalog_max_age) from the root table."""
    rules = parse_rules(root)
    pt = root.table("policy")
    unparseable = pt.str("unparseable", DEFAULT_UNPARSEABLE, choices=UNPARSEABLE)
    enabled = pt.bool("enabled", True)
    max_statement_bytes = pt.int("max_statement_bytes", 256 << 10, lo=1024)
    vetted = pt.str_list("read_only_functions")
    for v in vetted:
        schema, dot, name = v.rpartition(".")
        if not (schema and dot and name):
            raise ConfigError(pt.key("read_only_functions"),
                              f'"{v}" is not schema.name (a vetted function is named with its schema)')
    max_age = pt.duration("function_catalog_max_age", 60.0)
    if max_age < 1:
        raise ConfigError(pt.key("function_catalog_max_age"), "must be at least 1s")
    pt.done()
    return rules, unparseable, enabled, max_statement_bytes, frozenset(vetted), max_age


def parse_connection(t: Table) -> tuple[tuple[Rule, ...], str | None]:
    """A connection's own rules and ``unparseable`` (None: the global setting)."""
    return parse_rules(t), t.str("unparseable", choices=UNPARSEABLE)
