"""The viewer's pages over a database the real consumers filled (`tests.web.captured`)."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import re
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from consumers.metrics.usage import Query, fetch_report
from consumers.winni.settings import WinniSettings
from consumers.winni.consumer import run as run_winni
from consumers.winni.search_index import index_all
from common.config import KafkaSettings
from tests import services
from tests.web.captured import COMPLETE_EXCHANGES, FAST, SCRIPT, SEARCH_WORD, Captured, consumed, publish, searched_session
from tests.web.conftest import serve
from web.settings import WebSettings

HTML = {"Accept": "text/html"}
Client = TestClient[Any, Any]


async def page(http: Client, where: str, status: int = 200, **params: str) -> str:
    """The page's HTML, checking its status; ``params`` is the query string."""
    response = await http.get(where, params=params, headers=HTML, allow_redirects=False)
    text = await response.text()
    assert response.status == status, text[:2000]
    return text


async def rows(captured: Captured, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(captured.dsn, server_settings={"search_path": "kgb, kgb_metrics"})
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def links(text: str, prefix: str) -> list[str]:
    return [html.unescape(found) for found in re.findall(rf'href="({re.escape(prefix)}[^"]*)"', text)]


async def test_sessions_newest_first_with_their_title_or_first_prompt(client: Client, captured: Captured) -> None:
    text = await page(client, "/")
    stored = await rows(captured, "SELECT session_key FROM sessions ORDER BY last_seen DESC, session_key DESC")
    assert [link.split("key=")[1] for link in links(text, "/session?key=")] == [r["session_key"] for r in stored]
    assert "Title at turn 160" in text  # the latest title-generation answer
    assert "Find the odd word in the logs" in text  # no title request: the first prompt
    assert f"Planted {html.escape(SCRIPT).replace('&#x27;', '&#39;').replace('&quot;', '&#34;')}" in text  # escaped as Jinja does
    long_row = re.search(r"Title at turn 160</a></td>(.*?)</tr>", text, re.S)[1]
    cells = re.findall(r'<td class="n">([^<]*)</td>', long_row)
    assert cells[0] == str(captured.long.conversations)
    assert cells[1] == str(len(captured.long.events) // 2)
    assert cells[-1].startswith("$")  # priced by the metrics consumer


async def test_keyset_pages_cover_every_session_once(captured: Captured) -> None:
    seen: list[str] = []
    async for client in serve(WebSettings(database_url=captured.dsn, page_size=1)):
        path = "/"
        while path:
            text = await page(client, path)
            seen += [link.split("key=")[1] for link in links(text, "/session?key=")]
            following = links(text, "/?")
            path = next((p for p in following if "after=" in p), "")
    stored = await rows(captured, "SELECT session_key FROM sessions ORDER BY last_seen DESC, session_key DESC")
    assert seen == [r["session_key"] for r in stored]


async def test_session_filters(client: Client, captured: Captured) -> None:
    everyone = 3  # sessions captured
    fingerprint = captured.long.events[0]["api_key_fingerprint"]
    cases = {
        (("model", "claude-opus-4-8"),): everyone,
        (("model", "claude-none"),): 0,
        (("client", "claude-cli"),): everyone,
        (("client", "curl"),): 0,
        (("key", fingerprint),): everyone,
        (("key", "0" * 64),): 0,
        (("from", "2000-01-01"), ("until", "2000-01-31")): 0,
        (("from", "2000-01-01"),): everyone,
    }
    for params, expected in cases.items():
        text = await page(client, "/", **dict(params))
        assert len(links(text, "/session?key=")) == expected, params
    assert "must be a day" in await page(client, "/", 400, **{"from": "yesterday"})
    assert "until is before from" in await page(client, "/", 400, **{"from": "2026-02-02", "until": "2026-02-01"})
    assert "not a cursor" in await page(client, "/", 400, after="garbage")


async def test_a_session_shows_its_tree_each_conversation_once(client: Client, captured: Captured) -> None:
    key = captured.long.session_id
    text = await page(client, "/session", key=key)
    stored = await rows(
        captured, "SELECT id, kind, agent_id, spawned_by_tool_use_id FROM conversations WHERE session_key = $1", key
    )
    for row in stored:
        assert text.count(f'id="c-{row["id"]}"') == 1, row
    # each nested sub-agent (b...) sits inside the subtree of the sub-agent that started it (a...)
    for row in stored:
        if row["agent_id"] and row["agent_id"].startswith("b"):
            parent = "a" + row["agent_id"][1:]
            subtree = re.search(
                rf'<li class="node" id="c-[^"]+">\s*<details[^>]*>\s*<summary><a [^>]+>subagent <code>{parent}</code>(.*?)</details>',
                text,
                re.S,
            )
            assert subtree and f"<code>{row['agent_id']}</code>" in subtree[1], row["agent_id"]
    assert text.count("started by") == sum(1 for r in stored if r["spawned_by_tool_use_id"])
    assert "compacted" in text and "continued after compaction" in text
    assert "Side requests" in text and "count_tokens" in text and ">title<" in text


async def test_a_conversation_pairs_calls_with_results_and_flags_what_went_wrong(client: Client, captured: Captured) -> None:
    [main] = await rows(
        captured,
        "SELECT id FROM conversations WHERE session_key = $1 AND kind = 'main' ORDER BY ordinal LIMIT 1",
        captured.long.session_id,
    )
    text = await page(client, f"/conversations/{main['id']}")
    messages = await rows(
        captured, "SELECT position, partial FROM messages WHERE conversation_id = $1 ORDER BY position", main["id"]
    )
    assert [int(p) for p in re.findall(r'<li class="message[^"]*" id="m-(\d+)">', text)] == [m["position"] for m in messages]
    assert text.count(">partial reply</span>") == sum(m["partial"] for m in messages) > 0
    calls = await rows(captured, "SELECT tool_use_id, result_position FROM tool_calls WHERE conversation_id = $1", main["id"])
    for call in calls:
        assert f'id="u-{call["tool_use_id"]}"' in text
        assert f'href="#r-{call["tool_use_id"]}"' in text and f'id="r-{call["tool_use_id"]}"' in text
        assert f"result in message {call['result_position']}" in text
    exchanges = await rows(
        captured,
        "SELECT count(*) FILTER (WHERE retry_of IS NOT NULL) AS retries, count(*) FILTER (WHERE status <> 200) AS failed "
        "FROM exchanges WHERE conversation_id = $1",
        main["id"],
    )
    assert text.count(">retry</span>") == exchanges[0]["retries"] > 0
    assert text.count('<span class="flag error">529 overloaded_error') == exchanges[0]["failed"] > 0
    spawned = await rows(
        captured,
        "SELECT id FROM conversations WHERE session_key = $1 AND spawned_by_tool_use_id IN "
        "(SELECT tool_use_id FROM tool_calls WHERE conversation_id = $2)",
        captured.long.session_id,
        main["id"],
    )
    assert spawned and all(f'href="/conversations/{s["id"]}"' in text for s in spawned)
    assert "TTFB 412 ms" in text and "$0.1194" in text


async def test_a_failed_tool_call_is_marked_beside_its_call_and_at_its_result(client: Client, captured: Captured) -> None:
    [conversation] = await rows(captured, "SELECT id FROM conversations WHERE session_key = $1", captured.searched.session_id)
    text = await page(client, f"/conversations/{conversation['id']}")
    assert ">error in message 2</a>" in text
    assert re.search(
        r'<div class="tool-result error" id="r-toolu_search">\s*<div class="tool-head"><span class="flag error">error</span>',
        text,
    )


async def test_an_exchange_shows_the_rebuilt_request_and_the_response_as_sent(client: Client, captured: Captured) -> None:
    [row] = await rows(
        captured,
        "SELECT exchange_id, request_messages FROM exchanges WHERE session_key = $1 AND request_messages > 4 "
        "ORDER BY received_at LIMIT 1",
        captured.long.session_id,
    )
    text = await page(client, f"/exchanges/{row['exchange_id']}")
    assert "Rebuilt:" in text and '<code class="rule">header:x-api-key</code>' in text
    assert "<th>x-api-key</th><td><code>[REDACTED]</code></td>" in text
    assert "event: message_start" in text or "&#34;type&#34;: &#34;message&#34;" in text
    response = await client.get(f"/exchanges/{row['exchange_id']}/request")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    body = orjson.loads(await response.read())
    assert len(body["messages"]) == row["request_messages"]
    assert body["system"][1]["text"].startswith("You are Claude Code") and body["tools"][0]["name"] == "Bash"
    response = await client.get(f"/exchanges/{row['exchange_id']}/response")
    assert response.status == 200 and response.headers["Content-Type"] != "text/html"


async def test_search_ranks_highlights_and_opens_the_message(client: Client, captured: Captured) -> None:
    text = await page(client, "/search", q=SEARCH_WORD)
    [hit] = links(text, "/conversations/")
    [where] = await rows(captured, "SELECT conversation_id, result_position FROM tool_calls WHERE tool_use_id = 'toolu_search'")
    assert hit == f"/conversations/{where['conversation_id']}#m-{where['result_position']}"
    assert f"<mark>{SEARCH_WORD}</mark>" in text
    conversation = await page(client, hit.split("#")[0])
    assert f'id="m-{where["result_position"]}"' in conversation and SEARCH_WORD in conversation
    for params in ({"kind": "subagent"}, {"session": captured.long.session_id}, {"from": "2100-01-01"}):
        assert not links(await page(client, "/search", q=SEARCH_WORD, **params), "/conversations/"), params
    assert links(await page(client, "/search", q=SEARCH_WORD, session=captured.searched.session_id), "/conversations/")
    # stemmed: "tasks" finds the sub-agents' "Sub-task" prompts, ranked, twenty a page
    many = await page(client, "/search", q="tasks")
    assert len(links(many, "/conversations/")) == 20 and "More results" in many
    assert "must be one of" in await page(client, "/search", 400, q="x", kind="nonsense")


async def test_search_counts_the_messages_not_indexed_yet_and_finds_them_once_indexed(
    kafka: services.KafkaBroker, postgres: services.PostgresServer
) -> None:
    """Winni stores messages without their vectors when its indexer is off (or behind): the page
    says how many wait, finds none of them, and finds them once the indexer has run."""
    dsn = await services.create_database(postgres.admin_dsn)
    try:
        session = searched_session()
        topic = await services.create_topic(kafka.bootstrap)
        await publish(kafka.bootstrap, topic, session.events)
        settings = WinniSettings(
            kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic),
            database_url=dsn,
            group=f"web-unindexed-{uuid.uuid4().hex[:8]}",
            backoff=FAST,
            search_index=False,
        )
        await consumed(run_winni, settings, dsn, COMPLETE_EXCHANGES, len(session.events) // 2)
        async for client in serve(WebSettings(database_url=dsn)):
            text = await page(client, "/search", q=SEARCH_WORD)
            assert f"{session.messages} messages are not indexed yet" in text and "Nothing matches" in text
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"search_path": "kgb"})
            try:
                assert await index_all(pool, 2, asyncio.Event(), FAST) == session.messages
            finally:
                await pool.close()
            text = await page(client, "/search", q=SEARCH_WORD)
            assert "not indexed yet" not in text and len(links(text, "/conversations/")) == 1
    finally:
        await services.drop_database(postgres.admin_dsn, dsn)


async def test_usage_shows_the_rollups_as_charts_a_table_and_csv(client: Client, captured: Captured) -> None:
    text = await page(client, "/usage")
    assert '<canvas id="tokens-chart"' in text and 'src="/static/vendor/chart.umd.min.js"' in text
    chart = orjson.loads(re.search(r'<script type="application/json" id="usage-data">(.*?)</script>', text, re.S)[1])
    conn = await asyncpg.connect(captured.dsn, server_settings={"search_path": "kgb_metrics"})
    try:
        expected = (await fetch_report(conn, Query(("day", "model")))).rows
    finally:
        await conn.close()
    assert sum(sum(series["data"]) for series in chart["tokens"]) == sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"] + r["cache_read_tokens"]
        for r in expected
    )
    response = await client.get("/usage.csv")
    assert response.headers["Content-Disposition"] == 'attachment; filename="kgb-usage.csv"'
    table = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["day"], r["model"], int(r["requests"]), r["cost_usd"]) for r in table] == [
        (r["day"].isoformat(), r["model"], r["requests"], format(r["cost_usd"], "f")) for r in expected
    ]
    assert "No usage counted" in await page(client, "/usage", **{"from": "2000-01-01", "until": "2000-01-02"})


async def test_captured_markup_is_escaped_on_every_page(client: Client, captured: Captured) -> None:
    key = captured.planted.session_id
    conversations = await rows(captured, "SELECT id FROM conversations WHERE session_key = $1", key)
    exchanges = await rows(captured, "SELECT exchange_id FROM exchanges WHERE session_key = $1", key)
    paths = [
        "/",
        f"/session?key={key}",
        "/search?q=pwned",
        *[f"/conversations/{c['id']}" for c in conversations],
        *[f"/exchanges/{e['exchange_id']}" for e in exchanges],
    ]
    for path in paths:
        text = await page(client, path)
        assert "<script>window" not in text, path
        assert not re.search(r"<[a-z][^>]*\son\w+\s*=", text, re.I), path  # no tag with an event handler
        assert 'href="javascript' not in text.lower(), path
        assert len(re.findall(r"<script", text)) == text.count('<script type="application/json"') + text.count(
            '<script src="/static/'
        ), path
    assert "&lt;script&gt;window.__pwned" in await page(client, f"/conversations/{conversations[0]['id']}")


async def test_every_response_carries_the_security_headers(client: Client) -> None:
    for path in ("/", "/usage", "/static/kgb.css", "/nowhere"):
        response = await client.get(path)
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == ("public, max-age=3600" if path.startswith("/static/") else "no-store")


async def test_unknown_rows_are_404s(client: Client) -> None:
    await page(client, "/session", 404, key="no-such-session")
    await page(client, "/conversations/00000000-0000-0000-0000-000000000000", 404)
    await page(client, "/conversations/not-a-uuid", 404)
    await page(client, "/exchanges/00000000-0000-0000-0000-000000000000", 404)
