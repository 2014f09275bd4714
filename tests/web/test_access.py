"""Who may read, what the viewer may do to the database, and how it fares when the database is not what it expects."""

from __future__ import annotations

import uuid

import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from common.config import SettingsError
from scripts.kafka import free_port
from tests import services
from tests.test_readme import ROOT
from tests.web.captured import Captured
from tests.web.conftest import serve
from web.auth import COOKIE
from web.database import open_pool, reading
from web.settings import WebSettings

TOKEN = "s3cret-token-for-the-tests"
HTML = {"Accept": "text/html"}


def test_listening_beyond_loopback_needs_a_token() -> None:
    for host in ("0.0.0.0", "192.0.2.7", "::", "example.com"):
        with pytest.raises(SettingsError, match="KGB_WEB_TOKEN"):
            WebSettings(host=host)
    for host in ("127.0.0.1", "127.5.0.1", "::1", "localhost"):
        assert WebSettings(host=host).token is None
    assert WebSettings(host="0.0.0.0", token=TOKEN).host == "0.0.0.0"
    with pytest.raises(SettingsError, match="at least 16"):
        WebSettings(token="short")
    settings = WebSettings.from_env(
        {
            "KGB_WEB_HOST": "0.0.0.0",
            "KGB_WEB_TOKEN": TOKEN,
            "KGB_WEB_PORT": "8123",
            "KGB_DATABASE_URL": "postgresql://u:pw@db/winni",
        }
    )
    assert (settings.port, settings.url) == (8123, "http://0.0.0.0:8123/")
    assert TOKEN not in repr(settings) and "pw" not in repr(settings)


def test_kgb_web_refuses_to_start_open_to_the_network() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from kgb.cli import main; main()", "web", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KGB_WEB_PORT": str(free_port())},
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "set KGB_WEB_TOKEN" in done.stderr


async def test_with_a_token_every_page_asks_for_it(captured: Captured) -> None:
    async for client in serve(WebSettings(database_url=captured.dsn, token=TOKEN)):
        response = await client.get("/usage?from=2000-01-01", headers=HTML, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/login?next=/usage?from%3D2000-01-01"
        assert (await client.get("/usage.csv")).status == 401
        assert (await client.get("/", headers={"Authorization": "Bearer wrong-token-of-length"})).status == 401
        assert (await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
        assert (await client.get("/static/kgb.css")).status == 200  # no captured data; the login page needs it
        assert (await client.get("/health")).status == 200

        refused = await client.post("/login", data={"token": "not it", "next": "/usage"}, allow_redirects=False)
        assert refused.status == 401 and "That is not the token" in await refused.text()
        assert COOKIE not in refused.cookies
        accepted = await client.post("/login", data={"token": TOKEN, "next": "/usage"}, allow_redirects=False)
        assert accepted.status == 303 and accepted.headers["Location"] == "/usage"
        cookie = accepted.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
        assert (await client.get("/usage.csv")).status == 200  # the client keeps the cookie

        await client.post("/logout", allow_redirects=False)
        assert (await client.get("/usage.csv")).status == 401


async def test_login_sends_nobody_to_another_site(captured: Captured) -> None:
    async for client in serve(WebSettings(database_url=captured.dsn, token=TOKEN)):
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "usage"):
            response = await client.post("/login", data={"token": TOKEN, "next": target}, allow_redirects=False)
            assert response.headers["Location"] == "/", target


async def test_the_viewer_reads_in_a_read_only_snapshot(captured: Captured) -> None:
    pool = await open_pool(WebSettings(database_url=captured.dsn))
    try:
        async with reading(pool) as (conn, tables):
            assert tables.winni and tables.metrics and tables.search and tables.mcp
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("UPDATE sessions SET title = 'changed'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await pool.close()


async def test_the_readme_read_only_role_can_read_every_page_and_write_nothing(
    captured: Captured, postgres: services.PostgresServer
) -> None:
    admin = await asyncpg.connect(captured.dsn)
    try:
        await admin.execute("DROP ROLE IF EXISTS kgb_web")
        await admin.execute(readme_role_sql().replace("'change-me'", "'test-password'"))
        parts = urlsplit(captured.dsn)
        dsn = urlunsplit(parts._replace(netloc=f"kgb_web:test-password@{parts.hostname}:{parts.port}"))
        async for client in serve(WebSettings(database_url=dsn)):
            for path in ("/", f"/session?key={captured.long.session_id}", "/search?q=flibbertigibbet", "/usage"):
                response = await client.get(path)
                assert response.status == 200, (path, await response.text())
        role = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await role.execute("BEGIN READ WRITE; DELETE FROM kgb.sessions")
        finally:
            await role.close()
    finally:
        await admin.execute("DROP OWNED BY kgb_web; DROP ROLE IF EXISTS kgb_web")
        await admin.close()


def readme_role_sql() -> str:
    """The read-only role's SQL, as the README gives it."""
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- read-only role -->", 1)[1].split("```sql", 1)[1].split("```", 1)[0].strip()


async def test_a_database_that_is_not_there_is_a_503_page() -> None:
    async for client in serve(WebSettings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/winni")):
        response = await client.get("/", headers=HTML)
        assert response.status == 503 and "cannot be reached" in await response.text()
        assert (await client.get("/health")).status == 200


async def test_before_the_consumers_ran_the_pages_say_what_to_start(empty_database: str) -> None:
    async for client in serve(WebSettings(database_url=empty_database)):
        for path, expected in (
            ("/", "kgb consume winni"),
            ("/search?q=x", "kgb consume winni"),
            ("/usage", "kgb consume metrics"),
        ):
            response = await client.get(path, headers=HTML)
            assert response.status == 404 and expected in await response.text(), path


MCP_CALL = uuid.UUID("7d3c4e2a-0000-4000-8000-00000000cafe")


async def test_mcp_calls_are_linked_once_their_tables_exist(captured: Captured, postgres: services.PostgresServer) -> None:
    """winni's `mcp_calls` and `tool_calls.mcp_call_id` (migration 005): a linked tool call shows its MCP call."""
    copy = await services.create_database(postgres.admin_dsn, template=urlsplit(captured.dsn).path.lstrip("/"))
    try:
        conn = await asyncpg.connect(copy, server_settings={"search_path": "kgb"})
        try:
            await conn.execute(
                "INSERT INTO mcp_sessions (session_key, server, transport, first_seen, last_seen) "
                "VALUES ('s', '<b>srv</b>', 'stdio', now(), now())"
            )
            await conn.execute(
                "INSERT INTO mcp_calls (call_id, session_key, server, direction, method, jsonrpc_id, connection_id,"
                " request_event_id, requested_at) VALUES ($1, 's', '<b>srv</b>', 'client_to_server', 'tools/call',"
                " '1', $1, $1, now())",
                MCP_CALL,
            )
            await conn.execute("UPDATE tool_calls SET mcp_call_id = $1 WHERE tool_use_id = 'toolu_search'", MCP_CALL)
            conversation = await conn.fetchval("SELECT conversation_id FROM tool_calls WHERE tool_use_id = 'toolu_search'")
        finally:
            await conn.close()
        async for client in serve(WebSettings(database_url=copy)):
            text = await (await client.get(f"/conversations/{conversation}")).text()
            assert f'href="/mcp-calls/{MCP_CALL}"' in text
            call = await (await client.get(f"/mcp-calls/{MCP_CALL}")).text()
            assert "tools/call" in call and "&lt;b&gt;srv&lt;/b&gt;" in call
            assert (await client.get("/mcp-calls/nope", headers=HTML)).status == 404
        async for client in serve(WebSettings(database_url=captured.dsn)):
            assert "/mcp-calls/" not in await (await client.get(f"/conversations/{conversation}")).text()
    finally:
        await services.drop_database(postgres.admin_dsn, copy)
