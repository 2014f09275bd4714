"""The link no other tool has: a Claude Code ``tool_use`` of an MCP tool to the ``tools/call`` that served it.

Claude Code names an MCP tool ``mcp__SERVER__TOOL`` (`consumers.mcp.claude_tool_name`)
and sends the tool_use's ``input`` as the call's ``arguments``. So a tool use
and a call match when their names match, their JSON is equal (as jsonb), and
the call came after the use was answered (give or take `SLACK`, for a client
that starts a tool while the reply still streams, or clocks apart) and,
when the tool's result is known, before the request that carried it. Of the
uses a call could serve, it takes the latest one before it: a call serves the
turn just answered, not an older identical one whose call may still be on its
way; only when none came before does it take the first within the slack.

Either side may arrive first, in either topic, in any consumer process: the
link is made by whichever transaction stores the second side. Both sides take
a transaction lock per tool name before they look for the other, so the second
one to commit waits for the first and then sees its rows; a link is one
``mcp_calls.tool_use_id`` (unique) and ``tool_calls.mcp_call_id`` on every row
of that tool use (a compaction or branch copies it into another conversation).
Uses and calls more than `WINDOW` apart are never compared.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from consumers import mcp
from consumers.source import EventRecord
from consumers.winni.mcp import call_id_of, mcp_events
from consumers.winni.store import queries

SLACK = timedelta(seconds=30)
WINDOW = timedelta(hours=24)


class Use(NamedTuple):
    tool_use_id: str
    name: str
    input: str
    used_at: datetime
    result_at: datetime | None


class Call(NamedTuple):
    call_id: uuid.UUID
    name: str
    arguments: str
    requested_at: datetime


def could_serve(call: Call, use: Use) -> bool:
    if (call.name, call.arguments) != (use.name, use.input):
        return False
    after_use = use.used_at - SLACK <= call.requested_at
    before_result = use.result_at is None or call.requested_at <= use.result_at + SLACK
    return after_use and before_result


def order(use: Use) -> tuple[datetime, str]:
    return use.used_at, use.tool_use_id


def match(uses: Sequence[Use], calls: Sequence[Call]) -> list[tuple[uuid.UUID, str]]:
    """(call id, tool use id) pairs, each side at most once; calls in the order they were made."""
    free = {use.tool_use_id: use for use in uses}
    pairs = []
    for call in sorted(calls, key=lambda c: (c.requested_at, c.call_id)):
        fits = [use for use in free.values() if could_serve(call, use)]
        before = [use for use in fits if use.used_at <= call.requested_at]
        if fits:
            chosen = max(before, key=order) if before else min(fits, key=order)
            del free[chosen.tool_use_id]
            pairs.append((call.call_id, chosen.tool_use_id))
    return pairs


def batch_calls(records: Sequence[EventRecord]) -> list[uuid.UUID]:
    """The ids of the batch's tools/call requests (the MCP stage stored them)."""
    return [
        call_id_of(m)
        for event in mcp_events(records)
        for m in mcp.messages_of(event)
        if m.kind == "request" and m.method == "tools/call"
    ]


def batch_exchanges(records: Sequence[EventRecord]) -> list[uuid.UUID]:
    ids = set()
    for record in records:
        if not mcp.is_mcp(record.event):
            ids.add(uuid.UUID(record.event["exchange_id"]))
    return sorted(ids)


async def link_stage(conn: asyncpg.Connection, records: Sequence[EventRecord]) -> None:
    """A winni stage, after the conversation and MCP stages: link what this batch brought to what is there."""
    q = queries()
    calls = batch_calls(records)
    exchanges = batch_exchanges(records)
    sides: list[Any] = []
    if calls:
        sides += await conn.fetch(q.mcp_batch_calls, calls)
    uses = await conn.fetch(q.mcp_batch_uses, exchanges) if exchanges else []
    sides += uses
    if not sides:
        return
    names = sorted({row["name"] for row in sides})
    times = [row["at"] for row in sides]
    await conn.execute(q.lock_mcp_link_names, names)
    since, until = min(times) - WINDOW, max(times) + WINDOW
    candidates = [Use(*row) for row in await conn.fetch(q.mcp_link_uses, names, since, until)]
    waiting = [Call(*row) for row in await conn.fetch(q.mcp_link_calls, names, since, until)]
    pairs = match(candidates, waiting)
    if pairs:
        await conn.execute(q.set_mcp_call_tool_uses, [c for c, _ in pairs], [u for _, u in pairs])
    linked = sorted({u for _, u in pairs} | {row["tool_use_id"] for row in uses})
    if linked:
        await conn.execute(q.link_tool_calls, linked)
