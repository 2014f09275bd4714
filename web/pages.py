"""The pages: each reads its rows in one read-only snapshot, shapes them with a pure function, renders a template.

Cost columns come from the metrics consumer's tables and are left out where
they do not exist yet; MCP links likewise need the MCP capture's tables.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from consumers.metrics.usage import Query, Report, fetch_report, total
from web import conversation, exchange, tree, usage
from web.auth import log_in, log_out, matches, safe_next
from web.database import Tables, queries, reading
from web.filters import KINDS, Cursor, SearchFilter, SessionFilter, usage_range
from web.render import MARK_START, MARK_STOP
from web.settings import WebSettings

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", WebSettings)
SEARCH_PAGE = 20
UNINDEXED_COUNTED = 10_000  # messages waiting for winni's search indexer, counted up to this many

routes = web.RouteTableDef()


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, context, status=status)


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise web.HTTPNotFound(text=f"no {what} {value!r}") from None


async def one(conn: asyncpg.Connection, query: str, key: Any, what: str) -> asyncpg.Record:
    found = await conn.fetchrow(query, key)
    if found is None:
        raise web.HTTPNotFound(text=f"no {what} {key}")
    return found


def by_key(rows: Sequence[Mapping[str, Any]], key: str) -> dict[Any, Mapping[str, Any]]:
    return {row[key]: row for row in rows}


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/", name="sessions")
async def sessions(request: web.Request) -> web.Response:
    chosen = SessionFilter.parse(request.query)
    size = request.app[SETTINGS].page_size
    async with reading(request.app[POOL]) as (conn, tables):
        rows = await conn.fetch(queries().sessions, *chosen.arguments(size + 1))
        page = rows[:size]
        costs = await _costs(conn, tables, queries().session_costs, [r["session_key"] for r in page], "session_key")
        clients = [r["client"] for r in await conn.fetch(queries().session_clients)]
        models = [r["model"] for r in await conn.fetch(queries().conversation_models)]
    after = Cursor(page[-1]["last_seen"], page[-1]["session_key"]) if len(rows) > size else None
    return render(
        request,
        "sessions.html",
        {
            "rows": page,
            "costs": costs,
            "metrics": tables.metrics,
            "chosen": chosen,
            "clients": clients,
            "models": models,
            "next": chosen.query(after) if after else None,
            "first": chosen.query() if chosen.after else None,
        },
    )


async def _costs(conn: asyncpg.Connection, tables: Tables, query: str, keys: list[Any], key: str) -> dict[Any, Any]:
    """Cost rows by ``key``, from the metrics tables when they exist."""
    if not tables.metrics or not keys:
        return {}
    return by_key(await conn.fetch(query, keys), key)


@routes.get("/session", name="session")
async def session(request: web.Request) -> web.Response:
    key = request.query.get("key", "")
    async with reading(request.app[POOL]) as (conn, tables):
        found = await one(conn, queries().session, key, "session")
        rows = await conn.fetch(queries().session_conversations, key)
        costs = by_key(await conn.fetch(queries().conversation_costs, key), "conversation_id") if tables.metrics else {}
    return render(
        request,
        "session.html",
        {
            "session": found,
            "tree": tree.build(rows, costs),
            "metrics": tables.metrics,
            "count": len(rows),
            "totals": _thread_totals(rows, costs),
        },
    )


def _thread_totals(rows: Sequence[Mapping[str, Any]], costs: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    names = ("exchanges", "errors", "messages", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
    summed: dict[str, Any] = {name: sum(row[name] for row in rows) for name in names}
    priced = [c["cost_usd"] for c in costs.values() if c["cost_usd"] is not None]
    summed["cost_usd"] = sum(priced) if priced else None
    summed["unpriced"] = sum(c["unpriced"] for c in costs.values())
    return summed


@routes.get("/conversations/{id}", name="conversation")
async def conversation_page(request: web.Request) -> web.Response:
    conversation_id = parse_uuid(request.match_info["id"], "conversation")
    async with reading(request.app[POOL]) as (conn, tables):
        found = await one(conn, queries().conversation, conversation_id, "conversation")
        messages = await conn.fetch(queries().conversation_messages, conversation_id)
        exchanges = await conn.fetch(queries().conversation_exchanges, conversation_id)
        ids = [str(row["exchange_id"]) for row in exchanges]
        costs = await _costs(conn, tables, queries().exchange_costs, ids, "exchange_id")
        spawned = by_key(await conn.fetch(queries().spawned_conversations, found["session_key"]), "spawned_by_tool_use_id")
        mcp = await conn.fetch(queries().conversation_mcp_calls, conversation_id) if tables.mcp else []
    page = conversation.build(messages, exchanges, costs, spawned, {r["tool_use_id"]: r["mcp_call_id"] for r in mcp})
    return render(request, "conversation.html", {"conversation": found, "page": page, "metrics": tables.metrics})


@routes.get("/mcp-calls/{id}", name="mcp_call")
async def mcp_call(request: web.Request) -> web.Response:
    call_id = request.match_info["id"]
    async with reading(request.app[POOL], needs="mcp") as (conn, _):
        found = await conn.fetchval(queries().mcp_call, call_id)
    if found is None:
        raise web.HTTPNotFound(text=f"no MCP call {call_id!r}")
    return render(request, "mcp_call.html", {"call_id": call_id, "row": found})


async def _exchange(request: web.Request) -> tuple[Mapping[str, Any], exchange.Body, Any]:
    """The exchange's row, its request body (rebuilt where split) and its cost row, if any."""
    exchange_id = parse_uuid(request.match_info["id"], "exchange")
    async with reading(request.app[POOL]) as (conn, tables):
        row = await one(conn, queries().exchange, exchange_id, "exchange")
        messages = []
        if row["request_messages"] is not None and row["conversation_id"] is not None:
            messages = await conn.fetch(queries().request_messages, row["conversation_id"], row["request_messages"])
        costs = await _costs(conn, tables, queries().exchange_costs, [str(exchange_id)], "exchange_id")
    return row, exchange.request_body(row, messages), costs.get(str(exchange_id))


@routes.get("/exchanges/{id}", name="exchange")
async def exchange_page(request: web.Request) -> web.Response:
    row, body, cost = await _exchange(request)
    return render(
        request,
        "exchange.html",
        {
            "row": row,
            "request_body": body,
            "response_body": exchange.response_body(row),
            "cost": cost,
            "hex_dump": exchange.hex_dump,
            "shown_bytes": exchange.SHOWN_BYTES,
        },
    )


@routes.get("/exchanges/{id}/{half:request|response}", name="exchange_body")
async def exchange_body(request: web.Request) -> web.Response:
    """A body as a download: never rendered by the browser, whatever it holds."""
    row, body, _ = await _exchange(request)
    half = request.match_info["half"]
    data, content_type = (body if half == "request" else exchange.response_body(row)).download()
    name = f"{row['exchange_id']}-{half}{'.json' if content_type == 'application/json' else ''}"
    return web.Response(
        body=data, headers={"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{name}"'}
    )


@routes.get("/search", name="search")
async def search(request: web.Request) -> web.Response:
    chosen = SearchFilter.parse(request.query)
    hits: list[Any] = []
    async with reading(request.app[POOL], needs="search") as (conn, _):
        unindexed = await conn.fetchval(queries().unindexed, UNINDEXED_COUNTED + 1)
        if chosen.words:
            hits = await conn.fetch(queries().search, *chosen.arguments(SEARCH_PAGE, MARK_START, MARK_STOP))
    more = len(hits) > SEARCH_PAGE
    return render(
        request,
        "search.html",
        {
            "chosen": chosen,
            "hits": hits[:SEARCH_PAGE],
            "kinds": KINDS,
            "unindexed": unindexed,
            "unindexed_counted": UNINDEXED_COUNTED,
            "next": chosen.query(chosen.page + 1) if more else None,
            "previous": chosen.query(chosen.page - 1) if chosen.page > 1 else None,
        },
    )


async def _usage_report(request: web.Request) -> Report:
    since, until = usage_range(request.query, datetime.now(UTC).date())
    async with reading(request.app[POOL], needs="metrics") as (conn, _):
        return await fetch_report(conn, Query(("day", "model"), since, until))


@routes.get("/usage", name="usage")
async def usage_page(request: web.Request) -> web.Response:
    report = await _usage_report(request)
    rows = report.rows
    return render(
        request,
        "usage.html",
        {
            "rows": rows,
            "models": usage.by_model(rows),
            "total": total(rows) if rows else None,
            "unpriced": report.unpriced,
            "chart": usage.chart_data(rows),
            "since": report.query.since,
            "until": report.query.until,
            "query": request.query_string,
        },
    )


@routes.get("/usage.csv", name="usage_csv")
async def usage_csv(request: web.Request) -> web.Response:
    return web.Response(
        text=usage.as_csv((await _usage_report(request)).rows),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="kgb-usage.csv"'},
    )


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", {"next": safe_next(request.query.get("next")), "failed": False})


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].token
    form = await request.post()
    target = safe_next(str(form.get("next", "")))
    if token is None:
        raise web.HTTPSeeOther(target)
    if not matches(str(form.get("token", "")), token):
        return render(request, "login.html", {"next": target, "failed": True}, status=401)
    response = web.HTTPSeeOther(target)
    log_in(response, request, token)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/login")
    log_out(response)
    raise response
