"""The web console in a real headless browser (Chromium, driven by Playwright) against
``twistd hoopd`` with a real PostgreSQL: sign in with a token, see a live psql session,
read its replay, approve a held statement so that the client's statement runs, kill a
session; a form without the session's CSRF token is refused; pages carry a strict CSP
and no script; signing out ends the console session."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

from pathlib import Path

import psycopg
import pytest
import pytest_twisted

from tests.gateway import Gateway, connection_toml, free_port, tokens_toml, until, users_toml
from tests.oidc_server import idp  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-web-token-0123456789"}
VIEWER_TOKEN = "reader-web-token-0123456789"  # role viewer, user reader: not a reviewer
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / ".artifacts" / "web"  # screenshots, looked at by eye


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS wb_orders; CREATE TABLE wb_orders (id int PRIMARY KEY);"
            "INSERT INTO wb_orders SELECT g FROM generate_series(1, 5) g; GRANT SELECT, DELETE ON wb_orders TO PUBLIC;"
            "DROP TABLE IF EXISTS wb_people; CREATE TABLE wb_people (id int, email text);"
            "INSERT INTO wb_people VALUES (1, 'ada@example.com'); GRANT SELECT ON wb_people TO PUBLIC;",
            dbname="shop")
    folder = tmp_path_factory.mktemp("web")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\n[journal]\ndir = "{folder / "journal"}"\n'
            + tokens_toml(TOKENS, role="admin") + tokens_toml({"reader": VIEWER_TOKEN}, role="viewer")
            + '[[masking.rules]]\nname = "emails"\ncolumns = ["wb_people.email"]\nlevels = ["admin"]\n'
            + '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba"]\n'
              'allow_self_approval = true\ntimeout = "60s"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(folder, body).start()
    g.http_port = http
    yield g
    g.stop()
    assert "Traceback" not in g.log()
    assert TOKENS["dev"] not in g.log()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def base(g) -> str:
    return f"http://127.0.0.1:{g.http_port}/ui"


def signed_in(browser, g, token: str = TOKENS["dev"]):
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.goto(base(g) + "/sessions")
    assert page.url.endswith("/ui/login")  # not signed in: sent to sign in
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    assert page.url.endswith("/ui/sessions")
    return page


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_sessions_replay_and_a_review_approved_in_the_browser(gw, browser) -> None:
    page = signed_in(browser, gw)
    with psycopg.connect(gw.dsn("dev"), autocommit=True, application_name="web-test") as c:
        c.execute("select 'seen in the browser' as greeting")
        c.execute("select id, email from wb_people")
        c.execute("""select '<script>window.pwned = 1</script>' as x, '<img src=x onerror="window.pwned = 2">' as y""")
        page.goto(base(gw) + "/sessions?active=true")
        row = page.locator("tr", has_text="web-test")
        assert row.count() == 1 and "live" in row.inner_text()
        shot(page, "sessions")
        row.locator("a").first.click()
        until(lambda: "window.pwned" in page.content() or page.reload() and False, "the replay")
        assert page.locator("th", has_text="greeting").count() >= 1  # the result as a table
        assert page.evaluate("typeof window.pwned") == "undefined"  # the payloads are text, nothing ran
        assert "<script>window.pwned = 1</script>" in page.inner_text("main")
        assert "ada@example.com" not in page.content()
        assert "masked by emails" in page.inner_text(".masked")  # the masked result is marked
        shot(page, "replay")
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(c.execute("delete from wb_orders where id = 1").rowcount))
        t.start()
        page.goto(base(gw) + "/reviews")
        until(lambda: "delete from wb_orders where id = 1" in page.content() or page.reload() and False,
              "the request on the reviews page")
        shot(page, "reviews")
        viewer = signed_in(browser, gw, VIEWER_TOKEN)
        viewer.goto(base(gw) + "/reviews")
        assert "delete from wb_orders where id = 1" in viewer.content()
        assert viewer.locator("button", has_text="Approve").count() == 0  # no button for a non-reviewer
        csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
        rid = page.locator("form[action$='/approve']").first.get_attribute("action").split("/")[-2]
        cookie = next(c for c in viewer.context.cookies() if c["name"] == "hoopd_console")["value"]
        req = urllib.request.Request(f"{base(gw)}/reviews/{rid}/approve", data=f"csrf={csrf}".encode(), method="POST",
                                     headers={"Cookie": f"hoopd_console={cookie}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # (the page itself may not fetch: CSP)
            urllib.request.urlopen(req, timeout=10)
        status = refused.value.code
        assert status == 403 and t.is_alive()  # refused, still held
        page.fill("input[name=comment]", "looks fine")
        page.locator("button", has_text="Approve").click()
        t.join(15)
        assert done == [1]
        assert "approved" in page.locator("table").nth(1).inner_text()


def test_the_live_page_shows_statements_as_they_run(gw, browser) -> None:
    page = signed_in(browser, gw)
    resp = page.goto(base(gw) + "/tail?user=dev")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    time.sleep(0.5)  # (the stream is open)
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as c:
        for i in range(20):  # until the page shows one (the first may run before the stream is open)
            c.execute(f"select 'live-{i}'")
            if page.locator("#events", has_text="live-").count():
                break
            time.sleep(0.2)
    assert "select 'live-" in page.inner_text("#events")
    page.click("#pause")
    assert page.inner_text("#pause") == "Resume"


def test_the_overview_draws_its_charts(gw, browser) -> None:
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as c:
        for _ in range(3):
            c.execute("select 1")
    page = signed_in(browser, gw)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    resp = page.goto(base(gw) + "/overview")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    page.wait_for_selector("body[data-drawn=yes]")
    assert page.locator(".uplot").count() == 2  # two charts drawn by the library
    assert "Statements per minute" in page.inner_text("main") and "segments" in page.inner_text("#journal")
    assert page.locator("#reviews tr").count() >= 1  # (its header; a row per user with requests)
    assert not errors, errors  # (a CSP violation would show here)
    shot(page, "overview")


def test_the_report_page(gw, browser) -> None:
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as c:
        c.execute("select 'in the report'")
    page = signed_in(browser, gw)
    resp = page.goto(base(gw) + "/report?since=1h")
    assert "script" not in resp.headers["content-security-policy"]
    assert "hash chain verified" in page.inner_text("body") and "Statements by shape" in page.inner_text("body")
    assert "dev" in page.inner_text("body")
    shot(page, "report")
    bad = page.goto(base(gw) + "/report?since=yesterday-ish")
    assert bad.status == 400 and "not a time" in page.inner_text("body")


def test_kill_from_the_browser(gw, browser) -> None:
    page = signed_in(browser, gw)
    c = psycopg.connect(gw.dsn("dev"), autocommit=True, application_name="to-be-killed")
    page.goto(base(gw) + "/sessions?active=true")
    row = page.locator("tr", has_text="to-be-killed")
    row.locator("input[name=reason]").fill("web test")
    row.locator("button", has_text="Kill").click()
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        for _ in range(50):
            c.execute("select 1")
            time.sleep(0.1)
    c.close()


def test_headers_csrf_and_sign_out(gw, browser) -> None:
    page = signed_in(browser, gw)
    resp = page.goto(base(gw) + "/sessions")
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script" not in csp and "<script" not in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "hoopd_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    # the same cookie, a form without its CSRF token: refused
    req = urllib.request.Request(base(gw) + "/reviews/nope/approve", data=b"comment=x", method="POST",
                                 headers={"Cookie": f"hoopd_console={cookie['value']}",
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403 and b"CSRF" in e.value.read()
    page.locator("button", has_text="Sign out").click()
    assert page.url.endswith("/ui/login")
    page.goto(base(gw) + "/sessions")
    assert page.url.endswith("/ui/login")  # the console session is gone
    bad = browser.new_context().new_page()
    bad.goto(base(gw) + "/login")
    bad.fill("input[name=token]", "not-a-token")
    bad.click("button[type=submit]")
    assert "does not open the console" in bad.content()


def test_chromium_is_installed_by_the_project() -> None:
    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Chromium" in out.stdout


@pytest_twisted.inlineCallbacks
def test_sign_in_through_the_identity_provider(pg, idp, tmp_path):
    """Authorization code flow with PKCE against a real (test) provider, in the browser."""
    from twisted.internet import threads

    r = {role.name: role.password for role in pg.roles}
    (tmp_path / "client.secret").write_text(idp.client_secret + "\n")
    http = free_port()
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\n'
            '[logging]\nlevel = "debug"\n'  # (the control port logs each request at debug)
            f'[control]\nadmin_groups = ["dba"]\n'
            f'[control.web]\nclient_id = "hoopd-console"\nclient_secret_file = "client.secret"\n'
            f'redirect_url = "http://127.0.0.1:{http}/ui/oidc/callback"\n'
            f'[identity.oidc]\nissuer = "{idp.issuer}"\naudience = "hoopd"\nca_file = "{idp.ca_file}"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(tmp_path, body).start()

    def in_browser() -> tuple[str, str, str]:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--ignore-certificate-errors"])
            page = b.new_page()
            page.goto(f"http://127.0.0.1:{http}/ui/login")
            page.click("text=Sign in with your identity provider")
            page.wait_for_url("**/ui/sessions")
            url, who = page.url, page.inner_text("header")
            page.goto(f"http://127.0.0.1:{http}/ui/oidc/callback?code=forged&state=forged")
            forged = page.inner_text("main")
            b.close()
            return url, who, forged
    try:
        url, who, forged = yield threads.deferToThread(in_browser)
        assert url.endswith("/ui/sessions") and "oidc:alice (admin)" in who
        assert "unknown or too old" in forged  # a callback nobody started is refused
        assert "/authorize" in idp.requests and not idp.codes  # the code was used, once
    finally:
        g.stop()
    assert idp.client_secret not in g.log() and "Traceback" not in g.log()
    assert "code=" not in g.log()  # (the callback's URI is logged without its code)
