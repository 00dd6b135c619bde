"""The MCP endpoint through ``twistd hoopd`` with a real PostgreSQL: the official MCP
Python SDK (a real client) lists and calls the tools with an API token bound to a user,
never a database credential; SQL runs as a gateway session of that user, so read_only
refuses writes (a tool error with the SQLSTATE), masked columns come back masked, a
review rule holds the call (the waiting notice reaches the client on the event stream)
until a reviewer approves, and the journal records it with application_name mcp:<client>."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.certs import write_self_signed
from tests.gateway import Gateway, connection_toml, free_port, tokens_toml, users_toml

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-mcp-token-0123456789", "reader": "reader-mcp-token-0123456789"}
CALLER_TOKEN = "writer-caller-token-0123456789"  # role "caller": the MCP endpoint only


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS mcp_people; CREATE TABLE mcp_people (id int PRIMARY KEY, email text, note text);"
            "INSERT INTO mcp_people VALUES (1, 'ada@example.com', 'first'), (2, 'alan@example.com', 'second');"
            "GRANT SELECT, INSERT, DELETE ON mcp_people TO PUBLIC;", dbname="shop")
    folder = tmp_path_factory.mktemp("mcp")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    cert, key = write_self_signed(folder)
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\n[journal]\ndir = "{folder / "journal"}"\n'
            f'[tls]\nmode = "require"\ncert = "{cert}"\nkey = "{key}"\n'
            '[mcp]\nenabled = true\nmax_rows = 50\n' + tokens_toml(TOKENS)
            + tokens_toml({"writer": CALLER_TOKEN}, role="caller")
            + '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba"]\n'
              'allow_self_approval = true\ntimeout = "60s"\n'
              '[[masking.rules]]\nname = "emails"\ncolumns = ["mcp_people.email"]\nlevels = ["read_only"]\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"],
                                             extra='grant_reviewers = ["dba"]\n'))
    g = Gateway(folder, body).start()
    g.http_port = http
    g.journal = folder / "journal"
    yield g
    g.stop()
    assert "Traceback" not in g.log()
    assert TOKENS["dev"] not in g.log() and "hoopd-ticket-" not in g.log()


def url(g) -> str:
    return f"http://127.0.0.1:{g.http_port}/mcp"


def sdk(g, who: str, calls: list[tuple[str, dict]], client: str = "pytest-agent") -> tuple[list[str], list[Any]]:
    """Tool names and the results of ``calls``, through the official MCP SDK client."""
    from mcp import ClientSession
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
    from mcp.types import Implementation

    async def main() -> tuple[list[str], list[Any]]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKENS[who]}"})
        async with http, streamable_http_client(url(g), http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, client_info=Implementation(name=client, version="1")) as s:
                await s.initialize()
                tools = [t.name for t in (await s.list_tools()).tools]
                out = [await s.call_tool(name, args) for name, args in calls]
                return tools, out
    return asyncio.run(main())


def data(result: Any) -> dict:
    return result.structured_content if result.structured_content is not None else json.loads(result.content[0].text)


def raw(g, payload: Any, who: str | None = "reader", sid: str | None = None, accept: str = "application/json",
        method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Accept": accept}
    if who:
        headers["Authorization"] = f"Bearer {TOKENS[who]}"
    if sid:
        headers["Mcp-Session-Id"] = sid
    req = urllib.request.Request(url(g), data=json.dumps(payload).encode() if payload is not None else None,
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def initialize(g, who: str = "reader") -> str:
    status, headers, _ = raw(g, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw-agent", "version": "1"}}},
        who)
    assert status == 200
    return headers["Mcp-Session-Id"]


def test_tools_through_the_sdk_with_policy_and_masking(gw) -> None:
    tools, (conns, rows, write, described, plan) = sdk(gw, "reader", [
        ("list_connections", {}),
        ("query", {"connection": "shop", "sql": "select id, email, note from mcp_people where id <= $1 order by id",
                   "params": [2]}),
        ("query", {"connection": "shop", "sql": "insert into mcp_people values (3, 'x@example.com', 'x')"}),
        ("describe_table", {"connection": "shop", "table": "mcp_people"}),
        ("explain", {"connection": "shop", "sql": "select * from mcp_people"}),
    ])
    assert set(tools) == {"list_connections", "list_schemas", "list_tables", "describe_table", "query", "explain",
                          "request_access"}
    assert data(conns)["connections"] == [{"name": "shop", "level": "read_only", "database": "shop"}]
    got = data(rows)
    assert [c["name"] for c in got["columns"]] == ["id", "email", "note"] and got["columns"][0]["type"] == "int4"
    assert [r[0] for r in got["rows"]] == [1, 2] and [r[2] for r in got["rows"]] == ["first", "second"]
    assert all("example.com" not in (r[1] or "") for r in got["rows"])  # masked for read_only
    assert write.is_error and data(write)["sqlstate"] in ("42501", "25006")
    assert [c["name"] for c in data(described)["columns"]] == ["id", "email", "note"]
    assert data(plan)["plan"] == "****"  # a read_only session with column rules: EXPLAIN output is masked whole


def test_a_read_only_agent_cannot_write_through_the_tools(gw) -> None:
    attacks = ["select set_config('default_transaction_read_only', 'off', false)",
               "copy (select 1) to program 'id'",
               "select set_config('standard_conforming_strings', 'off', false)",
               "with d as (delete from mcp_people returning *) select * from d",
               "do $$ begin delete from mcp_people; end $$"]
    _, got = sdk(gw, "reader", [("query", {"connection": "shop", "sql": a}) for a in attacks]
                 + [("explain", {"connection": "shop", "sql": "analyze delete from mcp_people"}),
                    ("query", {"connection": "shop", "sql": "select count(*) from mcp_people"})])
    *refused, count = got
    assert all(r.is_error for r in refused), [data(r) for r in refused]
    assert data(count)["rows"] == [[2]]  # nothing was deleted by the attempts


def test_rows_are_capped_and_errors_carry_the_sqlstate(gw) -> None:
    _, (many, bad, plan) = sdk(gw, "dev", [
        ("query", {"connection": "shop", "sql": "select generate_series(1, 500) g"}),
        ("query", {"connection": "shop", "sql": "select * from no_such_table"}),
        ("explain", {"connection": "shop", "sql": "select * from mcp_people"})])
    assert data(plan)["plan"][0]["Plan"]["Relation Name"] == "mcp_people"
    got = data(many)
    assert len(got["rows"]) == 50 and got["truncated"] and got["row_count"] == 500
    assert bad.is_error and data(bad)["sqlstate"] == "42P01"


def test_the_journal_records_the_call_as_a_session_of_the_user(gw) -> None:
    sdk(gw, "dev", [("query", {"connection": "shop", "sql": "select 'journaled by mcp'"})], client="cursor-test")
    from hoopd.journal.reader import Journal
    time.sleep(0.5)
    recs = [e.rec for e in Journal(gw.journal).records()]
    starts = {r["session"]: r for r in recs if r["kind"] == "session_start"}
    (stmt,) = [r for r in recs if r["kind"] == "statement" and "journaled by mcp" in (r.get("text") or "")
               and r.get("op") == "parse"]
    start = starts[stmt["session"]]
    assert start["user"] == "dev" and start["application_name"] == "mcp:cursor-test" and start["level"] == "admin"


def test_a_review_rule_holds_the_call_and_the_client_hears_it(gw) -> None:
    sid = initialize(gw, "dev")
    events: list[dict] = []

    def call() -> None:
        _, _, body = raw(gw, {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "query", "arguments": {"connection": "shop", "sql": "delete from mcp_people where id = 2"}}},
            "dev", sid, accept="application/json, text/event-stream")
        for chunk in body.decode().split("\n\n"):
            if chunk.startswith("event: message\ndata: "):
                events.append(json.loads(chunk.split("data: ", 1)[1]))
    t = threading.Thread(target=call)
    t.start()
    pending: list[dict] = []
    for _ in range(100):
        req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/api/v1/reviews?status=pending",
                                     headers={"Authorization": f"Bearer {TOKENS['dev']}"})
        pending = json.loads(urllib.request.urlopen(req, timeout=10).read())["reviews"]
        if pending:
            break
        time.sleep(0.05)
    assert pending and pending[0]["statement"].startswith("delete from mcp_people where id = 2\n-- with parameters")
    assert t.is_alive()  # held
    req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/api/v1/reviews/{pending[0]['id']}/approve",
                                 data=b'{"comment": "ok"}', method="POST",
                                 headers={"Authorization": f"Bearer {TOKENS['dev']}",
                                          "Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=10).status == 200
    t.join(30)
    note, answer = events[0], events[-1]
    assert note["method"] == "notifications/message" and f"#{pending[0]['id']}" in note["params"]["data"]
    assert answer["id"] == 7 and answer["result"]["structuredContent"]["command"] == "DELETE 1"


def test_the_protocol_edges(gw) -> None:
    import psycopg
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):  # wire clients need TLS; MCP calls pass
        psycopg.connect(gw.dsn("reader"))
    assert raw(gw, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, who=None)[0] == 401
    status, _, body = raw(gw, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, sid="nope")
    assert status == 404 and json.loads(body)["error"]["code"] == -32001
    sid = initialize(gw)
    assert raw(gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid=sid)[0] == 202
    status, _, body = raw(gw, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], sid=sid)
    assert status == 400 and json.loads(body)["error"]["code"] == -32600
    status, _, body = raw(gw, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                               "params": {"name": "query", "arguments": {"sql": "select 1"}}}, sid=sid)
    assert json.loads(body)["error"]["code"] == -32602 and "connection" in json.loads(body)["error"]["message"]
    status, _, body = raw(gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                               "params": {"name": "list_connections", "arguments": {}}}, who="dev", sid=sid)
    assert status == 403  # another identity's session
    assert raw(gw, None, sid=sid, method="DELETE")[0] == 200
    assert raw(gw, {"jsonrpc": "2.0", "id": 4, "method": "ping"}, sid=sid)[0] == 404


def test_request_access_files_a_grant_request(gw) -> None:
    _, (got,) = sdk(gw, "reader", [("request_access", {"connection": "shop", "level": "read_write",
                                                       "duration": "30m", "reason": "fix order 7"})])
    grant = data(got)["grant"]
    assert grant["status"] == "pending" and grant["user"] == "reader" and grant["level"] == "read_write"


def test_a_caller_token_reaches_the_tools_and_nothing_else(gw) -> None:
    TOKENS["writer"] = CALLER_TOKEN
    try:
        _, (conns,) = sdk(gw, "writer", [("list_connections", {})])
        assert data(conns)["connections"] == [{"name": "shop", "level": "read_write", "database": "shop"}]
        req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/api/v1/sessions",
                                     headers={"Authorization": f"Bearer {CALLER_TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
    finally:
        del TOKENS["writer"]


def test_the_journal_report_shows_the_agents_work(gw, tmp_path) -> None:
    import subprocess

    from tests.gateway import BIN
    sdk(gw, "reader", [("query", {"connection": "shop", "sql": "select id, email, note from mcp_people where id <= $1",
                                  "params": [2]}),
                       ("query", {"connection": "shop", "sql": "insert into mcp_people values (9, 'x', 'y')"})])
    out = subprocess.run([str(BIN / "hoopd"), "journal", "report", "--dir", str(gw.journal), "--format", "json",
                          "--application", "mcp:"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["version"] == 1 and doc["integrity"]["verified"]
    users = {a["user"]: a for a in doc["access"]}
    assert users["reader"]["levels"] == ["read_only"] and all(a["applications"][0].startswith("mcp:")
                                                              for a in doc["access"])
    assert users["reader"]["denied"] >= 1 and "mcp_people" in users["reader"]["tables_read"]
    assert {m["rule"] for m in doc["enforcement"]["masked_values"]} >= {"emails"}
    assert not [f for f in doc["enforcement"]["unmasked_findings"] if f["user"] == "reader"]  # masked for reader
    shapes = {s["shape"]: s for s in doc["workload"]["shapes"]}
    assert any(k.startswith("select id, email, note from mcp_people where id <= $1") for k in shapes)
    page = tmp_path / "report.html"
    subprocess.run([str(BIN / "hoopd"), "journal", "report", "--dir", str(gw.journal), "--format", "html", "-o",
                    str(page)], check=True, timeout=60)
    body = page.read_text()
    assert "<script" not in body and "http://" not in body and "https://" not in body  # opens offline
    assert "Statements by shape" in body and "mcp_people" in body and "ada@example.com" not in body


def test_a_client_name_cannot_smuggle_startup_parameters(gw) -> None:
    status, headers, _ = raw(gw, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "evil\x00options\x00-c default_transaction_read_only=off", "version": "1"}}})
    sid = headers["Mcp-Session-Id"]
    _, _, body = raw(gw, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "query", "arguments": {"connection": "shop", "sql": "select current_setting('default_transaction_read_only')"}}},
        sid=sid)
    got = json.loads(body)["result"]["structuredContent"]
    assert got["rows"] == [["on"]]  # still read_only
    _, _, body = raw(gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "query", "arguments": {"connection": "shop\x00", "sql": "select 1\x00; drop table x"}}}, sid=sid)
    assert json.loads(body)["result"]["structuredContent"]["sqlstate"] == "22021"
    from hoopd.journal.reader import Journal
    apps = {e.rec.get("application_name") for e in Journal(gw.journal).records() if e.rec.get("kind") == "session_start"}
    assert not any(a and "\x00" in a for a in apps) and "mcp:eviloptions-c default_transaction_read_onlyoff" in apps
