"""Rules: every match key, first match wins, connection rules before global ones, the
review placeholder, messages, config validation with key paths, and `hoopd policy explain`."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hoopd.cli import main
from hoopd.config import parse
from hoopd.confkit import ConfigError
from hoopd.policy.classify import classify
from hoopd.policy.decide import Policy
from hoopd.policy.rules import Context, Rule, name_matches

ALICE = Context("shop", "admin", "alice", frozenset({"dba", "oncall"}), "psql")


def _one(sql: str) -> Any:
    (info,) = classify(sql)
    return info


def _matches(rule: Rule, sql: str, ctx: Context = ALICE) -> bool:
    return rule.matches(_one(sql), ctx)


def test_no_keys_matches_everything() -> None:
    assert _matches(Rule("all", "deny"), "SELECT 1")


def test_kinds_include_nested_statements() -> None:
    r = Rule("r", "deny", kinds=frozenset({"delete"}))
    assert _matches(r, "DELETE FROM orders WHERE id = 1")
    assert _matches(r, "WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d")
    assert _matches(r, "EXPLAIN ANALYZE DELETE FROM orders")
    assert not _matches(r, "EXPLAIN DELETE FROM orders")
    assert not _matches(r, "SELECT 1")


@pytest.mark.parametrize("pattern,sql,hit", [
    ("public.customer*", "SELECT * FROM public.customers", True),
    ("public.customer*", "SELECT * FROM customers", True),   # unqualified: the search_path is unknown
    ("public.customer*", "SELECT * FROM other.customers", False),
    ("customers", "SELECT * FROM other.customers", True),     # unqualified pattern: any schema
    ("customers", "SELECT * FROM orders", False),
    ("*.secret_*", "SELECT * FROM x.secret_keys", True),
    ("public.orders", "WITH orders AS (SELECT 1) SELECT * FROM orders", False),  # a CTE
    ("public.orders", "WITH orders AS (SELECT 1) DELETE FROM orders", True),     # the table
    ("orders", "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o)", True),
    ("orders", "DROP TABLE IF EXISTS x, orders", True),
    ("Orders", "SELECT * FROM Orders", False),  # folded to lower case by PostgreSQL
    ("Orders", 'SELECT * FROM "Orders"', True),
])
def test_relations(pattern: str, sql: str, hit: bool) -> None:
    assert _matches(Rule("r", "deny", relations=(pattern,)), sql) is hit


@pytest.mark.parametrize("pattern,sql,hit", [
    ("pg_catalog.pg_read_file", "SELECT pg_read_file('x')", True),
    ("pg_read_*", "SELECT pg_catalog.pg_read_binary_file('x')", True),
    ("dblink*", "SELECT * FROM ext.dblink('a', 'b') AS t(x int)", True),
    ("lower", "SELECT upper(name) FROM customers", False),
    ("my_proc", "CALL s.my_proc()", True),
])
def test_functions(pattern: str, sql: str, hit: bool) -> None:
    assert _matches(Rule("r", "deny", functions=(pattern,)), sql) is hit


def test_name_matches() -> None:
    assert name_matches("a.b", "a.b") and name_matches("b", "a.b") and name_matches("a.b", "b")
    assert not name_matches("c.b", "a.b") and not name_matches("a.c", "a.b")


def test_who_and_where() -> None:
    sql = "SELECT 1"
    assert _matches(Rule("r", "deny", levels=frozenset({"admin"})), sql)
    assert not _matches(Rule("r", "deny", levels=frozenset({"read_only"})), sql)
    assert _matches(Rule("r", "deny", users=("ali*",)), sql)
    assert not _matches(Rule("r", "deny", users=("bob",)), sql)
    # names compare as hoopd.names.name_key: however the pattern or the login spells it
    assert _matches(Rule("r", "deny", users=("Alice",)), sql)
    assert _matches(Rule("r", "deny", users=("alice",)), sql, Context("shop", "admin", " ALICE\u200b"))
    assert not _matches(Rule("r", "deny", users=("*",)), sql, Context("shop", "admin"))  # no identity
    assert _matches(Rule("r", "deny", groups=("on*",)), sql)
    assert not _matches(Rule("r", "deny", groups=("devs",)), sql)
    assert _matches(Rule("r", "deny", applications=("psql",)), sql)
    assert _matches(Rule("r", "deny", applications=("DBeaver*", "ps*")), sql)
    assert not _matches(Rule("r", "deny", applications=("DBeaver*",)), sql)


def test_text_regex_sees_the_statement_text() -> None:
    r = Rule("r", "deny", text_regex=re.compile(r"(?i)\bpg_sleep\b"))
    assert _matches(r, "SELECT pg_sleep(10)")
    assert not _matches(r, "SELECT 1")
    infos = classify("SELECT 1; SELECT PG_SLEEP(1)")
    assert [r.matches(i, ALICE) for i in infos] == [False, True]


def test_without_where() -> None:
    r = Rule("r", "deny", without_where=True)
    assert _matches(r, "DELETE FROM orders")
    assert _matches(r, "UPDATE orders SET amount = 0")
    assert _matches(r, "WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d")
    assert not _matches(r, "DELETE FROM orders WHERE id = 1")
    assert not _matches(r, "SELECT * FROM orders")
    assert _matches(Rule("r", "allow", without_where=False), "DELETE FROM orders WHERE id = 1")
    assert not _matches(Rule("r", "allow", without_where=False), "DELETE FROM orders")


def test_all_keys_must_match() -> None:
    r = Rule("r", "deny", kinds=frozenset({"delete"}), relations=("orders",), users=("alice",))
    assert _matches(r, "DELETE FROM orders")
    assert not _matches(r, "DELETE FROM customers")
    assert not _matches(r, "DELETE FROM orders", Context("shop", "admin", "bob"))


def test_first_match_wins_and_connection_rules_come_first() -> None:
    glob = [Rule("g-allow-select", "allow", kinds=frozenset({"select"})),
            Rule("g-deny-all", "deny", message="nothing else")]
    conn = [Rule("c-deny-orders", "deny", relations=("orders",), message="orders are closed")]
    policy = Policy(glob, connections={"shop": (conn, None)})
    d = policy.decide(_one("SELECT * FROM orders"), ALICE)
    assert not d.allowed and d.rule == "c-deny-orders"
    assert d.message == 'hoopd: statement denied by rule "c-deny-orders" (SELECT): orders are closed'
    d = policy.decide(_one("SELECT * FROM customers"), ALICE)
    assert d.allowed and d.rule == "g-allow-select" and d.reason == "rule g-allow-select"
    d = policy.decide(_one("DROP TABLE customers"), ALICE)
    assert not d.allowed and d.rule == "g-deny-all"
    assert d.message == 'hoopd: statement denied by rule "g-deny-all" (DROP TABLE): nothing else'
    # another connection sees only the global rules
    d = policy.decide(_one("SELECT * FROM orders"), Context("other", "admin"))
    assert d.allowed and d.rule == "g-allow-select"


def test_no_rule_matched_level_decides() -> None:
    d = Policy().decide(_one("SELECT 1"), ALICE)
    assert d.allowed and d.rule is None and d.reason == "level admin" and d.message == ""


def test_rules_do_not_widen_a_level() -> None:
    policy = Policy([Rule("allow-all", "allow")])
    d = policy.decide(_one("DELETE FROM orders"), Context("shop", "read_only"))
    assert not d.allowed and d.rule is None


def test_review_without_reviewers_is_a_clear_denial() -> None:
    policy = Policy([Rule("prod-writes", "review", kinds=frozenset({"update"}), message="ask #dba")])
    d = policy.decide(_one("UPDATE orders SET amount = 1 WHERE id = 1"), ALICE)
    assert not d.allowed and d.action == "review" and d.rule == "prod-writes"
    assert d.message == ('hoopd: statement needs approval by rule "prod-writes" (UPDATE), '
                         "and the rule names no reviewers: ask #dba")
    assert d.record()["action"] == "review"


def test_decision_record() -> None:
    policy = Policy([Rule("no-drop", "deny", kinds=frozenset({"ddl"}))])
    rec = policy.decide(_one("DROP TABLE orders"), ALICE).record()
    assert rec["action"] == "deny" and rec["rule"] == "no-drop" and not rec["allowed"]
    assert rec["statement"]["kind"] == "ddl" and rec["statement"]["relations"] == ["orders"]
    json.dumps(rec)


# --- config ----------------------------------------------------------------------------

def _config(extra: dict | None = None, conn: dict | None = None) -> Any:
    shop = {"host": "127.0.0.1", "credentials": {"default": {"user": "u"}}, **(conn or {})}
    return parse({"connections": {"shop": shop}, **(extra or {})})


def test_config_rules_parsed() -> None:
    cfg = _config(
        {"rules": [{"name": "no-delete-without-where", "action": "deny", "message": "add a WHERE",
                    "kinds": ["update", "delete"], "without_where": True}],
         "policy": {"unparseable": "none"}},
        {"rules": [{"name": "psql-only", "action": "allow", "applications": "psql", "levels": ["admin"],
                    "relations": ["public.*"], "functions": "f", "groups": ["dba"], "users": ["a*"],
                    "text_regex": "(?i)select"}],
         "unparseable": "read_write"})
    (g,) = cfg.rules
    assert g.kinds == {"update", "delete"} and g.without_where is True and g.message == "add a WHERE"
    assert cfg.unparseable == "none"
    (c,) = cfg.connections["shop"].rules
    assert c.applications == ("psql",) and c.levels == {"admin"} and c.text_regex.pattern == "(?i)select"
    assert cfg.connections["shop"].unparseable == "read_write"
    policy = Policy.from_config(cfg)
    assert policy.decide(_one("SELEC"), Context("shop", "read_write")).allowed


def test_config_defaults() -> None:
    cfg = _config()
    assert cfg.rules == () and cfg.unparseable == "admin"
    assert cfg.connections["shop"].rules == () and cfg.connections["shop"].unparseable is None


@pytest.mark.parametrize("extra,conn,path,problem", [
    ({"rules": [{"action": "deny"}]}, None, "rules[0].name", "is required"),
    ({"rules": [{"name": "x"}]}, None, "rules[0].action", "is required"),
    ({"rules": [{"name": "x", "action": "block"}]}, None, "rules[0].action", "expected one of allow | deny | review"),
    ({"rules": [{"name": "x", "action": "deny", "kinds": ["delet"]}]}, None, "rules[0].kinds", 'unknown kind "delet"'),
    ({"rules": [{"name": "x", "action": "deny", "levels": ["root"]}]}, None, "rules[0].levels", 'unknown level "root"'),
    ({"rules": [{"name": "x", "action": "deny", "relations": []}]}, None, "rules[0].relations", "empty list"),
    ({"rules": [{"name": "x", "action": "deny", "users": 3}]}, None, "rules[0].users", "expected a string or a list"),
    ({"rules": [{"name": "x", "action": "deny", "text_regex": "("}]}, None, "rules[0].text_regex",
     "invalid regular expression"),
    ({"rules": [{"name": "x", "action": "deny", "without_where": "yes"}]}, None, "rules[0].without_where",
     "expected true or false"),
    ({"rules": [{"name": "x", "action": "deny", "tables": ["a"]}]}, None, "rules[0].tables", "unknown key"),
    ({"rules": [{"name": "x", "action": "deny"}, {"name": "x", "action": "allow"}]}, None, "rules[1].name",
     'duplicate rule name "x"'),
    ({"rules": {"name": "x"}}, None, "rules", "expected an array of tables"),
    ({"policy": {"unparseable": "maybe"}}, None, "policy.unparseable", "expected one of none | read_only"),
    ({"policy": {"unparsable": "none"}}, None, "policy.unparsable", "unknown key"),
    (None, {"rules": [{"name": "x", "action": "deny", "groups": [1]}]}, "connections.shop.rules[0].groups",
     "expected a string or a list"),
    (None, {"unparseable": "all"}, "connections.shop.unparseable", "expected one of"),
])
def test_config_errors_name_the_key(extra: dict | None, conn: dict | None, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(extra, conn)
    assert e.value.path == path and problem in e.value.problem, str(e.value)


# --- hoopd policy explain --------------------------------------------------------------

EXPLAIN_TOML = """
[[rules]]
name = "no-delete-without-where"
action = "deny"
message = "add a WHERE clause"
kinds = ["update", "delete"]
without_where = true

[connections.shop]
host = "127.0.0.1"
[connections.shop.credentials.default]
user = "shop_app"
[connections.shop.access]
dba = "admin"
devs = "read_write"

[[connections.shop.rules]]
name = "no-drop"
action = "deny"
kinds = ["ddl"]
message = "ask a DBA"
"""


@pytest.fixture
def explain_config(tmp_path: Path) -> Path:
    p = tmp_path / "hoopd.toml"
    p.write_text(EXPLAIN_TOML)
    return p


def test_explain_text(explain_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["policy", "explain", "--config", str(explain_config), "--connection", "shop", "--level", "admin",
               "--user", "alice", "--groups", "dba", "DROP TABLE orders; SELECT * FROM orders"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "connection shop, level admin, user alice, groups dba" in out
    assert "statement 1: DROP TABLE orders\n  kind: ddl (DROP TABLE)" in out
    assert "  relations: orders" in out
    assert 'decision: DENY by rule "no-drop"' in out
    assert 'message: hoopd: statement denied by rule "no-drop" (DROP TABLE): ask a DBA' in out
    assert "statement 2: SELECT * FROM orders" in out and "decision: ALLOW by level admin" in out


def test_explain_level_from_groups_and_json(explain_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["policy", "explain", "--config", str(explain_config), "--connection", "shop", "--groups", "devs",
               "--json", "PREPARE p AS DELETE FROM orders WHERE id = $1; EXECUTE p(1); DELETE FROM orders"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert data["context"]["level"] == "read_write"
    a, b, c = data["statements"]
    assert a["allowed"] and b["allowed"] and b["statement"]["kinds"] == ["delete", "execute"]
    assert c["rule"] == "no-delete-without-where" and c["text"] == "DELETE FROM orders"


def test_explain_all_allowed_exits_zero(explain_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["policy", "explain", "--config", str(explain_config), "--connection", "shop", "--level",
               "read_only", "SELECT 1"])
    assert rc == 0 and "ALLOW by level read_only" in capsys.readouterr().out


@pytest.mark.parametrize("args,err", [
    (["--connection", "nope", "--level", "admin"], 'no connection "nope"'),
    (["--connection", "shop", "--groups", "strangers"], "give --level"),
])
def test_explain_usage_errors(explain_config: Path, capsys: pytest.CaptureFixture[str], args: list, err: str) -> None:
    rc = main(["policy", "explain", "--config", str(explain_config), *args, "SELECT 1"])
    assert rc == 2 and err in capsys.readouterr().err


def test_explain_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[[rules]]\nname = "x"\naction = "nope"\n')
    rc = main(["policy", "explain", "--config", str(p), "--connection", "shop", "--level", "admin", "SELECT 1"])
    assert rc == 2 and "rules[0].action" in capsys.readouterr().err
