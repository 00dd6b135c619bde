"""The "*" connection: every database of its server, under the client's database name."""
from __future__ import annotations

import psycopg
import pytest

from hoopd.config import parse
from hoopd.confkit import ConfigError
from tests.gateway import USERS, Gateway, users_toml

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wgw(pg, tmp_path_factory):
    pg.psql(f"CREATE DATABASE wild_other OWNER {pg.app_scram.name};")
    folder = tmp_path_factory.mktemp("gwwild")
    body = users_toml() + f"""
[journal]
dir = "{folder / 'journal'}"
[connections.shop]
host = "127.0.0.1"
port = {pg.port}
tls = "disable"
[connections.shop.credentials.default]
user = "{pg.app_scram.name}"
password = "{pg.app_scram.password}"
[connections.shop.access]
dba = "admin"
[connections."*"]
host = "127.0.0.1"
port = {pg.port}
tls = "disable"
[connections."*".credentials.default]
user = "{pg.app_scram.name}"
password = "{pg.app_scram.password}"
[connections."*".access]
dba = "admin"
analysts = "read_only"
"""
    g = Gateway(folder, body).start()
    g.folder = folder
    yield g
    g.stop()
    pg.psql("DROP DATABASE wild_other;")
    assert "Traceback" not in g.log()


def _connect(gw, user: str, db: str) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(user, dbname=db, password=USERS[user][0]), autocommit=True)


def test_any_database_through_the_wildcard(wgw):
    with _connect(wgw, "reader", "wild_other") as c:
        assert c.execute("select current_database()").fetchone() == ("wild_other",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # its access rules hold: read_only
            c.execute("create table t (i int)")
    with _connect(wgw, "dev", "postgres") as c:
        assert c.execute("select current_database()").fetchone() == ("postgres",)


def test_a_named_connection_comes_first(wgw):
    with pytest.raises(psycopg.OperationalError, match='no access to connection "shop"'):
        _connect(wgw, "reader", "shop")  # shop is named and gives analysts nothing


def test_a_database_that_does_not_exist(wgw):
    from tests.rawclient import RawClient, error_of
    r = RawClient(wgw.port)
    err = error_of(r.login("dev", USERS["dev"][0], database="wild_nothere"))
    r.close()
    assert err["C"] == "3D000" and err["M"] == 'hoopd: database "wild_nothere" does not exist'


def test_the_journal_names_the_database(wgw):
    from tests.test_journal_helpers import records
    with _connect(wgw, "dev", "wild_other") as c:
        c.execute("select 1")
    starts = [x for x in records(wgw.folder / "journal") if x.get("kind") == "session_start"]
    assert {"connection": "*", "database": "wild_other"}.items() <= starts[-1].items()


def test_config_checks():
    base = {"listen": {"postgres": "tcp:0"}, "connections": {"*": {
        "host": "h", "credentials": {"default": {"user": "u", "password": "p"}}}}}
    assert parse(base).connections["*"].name == "*"
    base["connections"]["*"]["database"] = "x"
    with pytest.raises(ConfigError, match=r'connections\.\*\.database: the "\*" connection serves'):
        parse(base)
    with pytest.raises(ConfigError, match="connection names are"):
        parse({"listen": {"postgres": "tcp:0"}, "connections": {"a*": {"host": "h"}}})
