"""Each KGB conversation's new messages to Dewey, exactly once, whatever fails when.

Dewey's tools are not idempotent: a begin or a bulk store sent twice is
stored twice. So every call is preceded by a committed note that it is going
out (``dewey_conversations.in_doubt``) and followed by one recording its
answer. A crash, a cancelled task or a timeout between the two leaves the note,
and the next attempt first asks Dewey what it holds: the conversation
begun for this KGB id (``dewey_list_conversations``, matched on the metadata
`render.begin_arguments` sets) or the last KGB position among its messages
(``dewey_get_conversation``, from the metadata `render.dewey_message` sets).
This relies on a bulk store being one transaction in Dewey (it is), so a
chunk is wholly there or wholly not.

A call Dewey refuses goes to ``dewey_dead_letters`` with its answer. A refused
chunk is sent again one message at a time to find the messages at fault; the
others are stored, in order. A refused begin marks the conversation
``rejected``: its messages wait there until someone clears the flag.

A message already sent is never sent again, so a partial reply later
replaced by the complete one (winni's rule) stays partial in Dewey.

An MCP session (``mcp_sessions``) goes the same way, as one Dewey conversation
of kind ``mcp`` whose bookkeeping id is ``md5('mcp:' || session_key)``: its
messages (``mcp_messages``) in position order, each sent once.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import asyncpg
import orjson

from consumers.dewey import render
from consumers.dewey.client import DeweyClient
from consumers.dewey.errors import DeweyRejected
from consumers.sql import Queries, load_queries

log = logging.getLogger(__name__)

LIST_PAGE = 100  # Dewey caps dewey_list_conversations at 100 per page
MCP = "mcp"  # the kind of a Dewey conversation that is an MCP session


@cache
def queries() -> Queries:
    return load_queries("consumers.dewey")


@dataclass(frozen=True)
class Limits:
    """How much one ``dewey_store_messages_bulk`` call carries."""

    count: int
    bytes: int


@dataclass
class Pending:
    """A ``pending_conversations`` row: what Dewey has of one KGB conversation, as far as we know."""

    head: render.ConversationHead
    known: bool
    dewey_id: str | None
    sent: int
    in_doubt: bool

    @classmethod
    def of(cls, row: Any) -> Pending:
        head = render.ConversationHead(
            row["id"],
            row["session_key"],
            row["kind"],
            row["agent_id"],
            row["parent_agent_id"],
            row["parent_conversation_id"],
            row["model"],
            mcp_metadata(row) if row["kind"] == MCP else None,
        )
        return cls(head, row["known"], row["dewey_conversation_id"], row["sent_position"], row["in_doubt"])

    async def messages_after(self, pool: asyncpg.Pool, limit: int) -> list[Any]:
        """The next messages to send: of the conversation, or of the MCP session."""
        if self.head.kind == MCP:
            return await pool.fetch(queries().mcp_messages_after, self.head.session_key, self.sent, limit)
        return await pool.fetch(queries().messages_after, self.head.conversation_id, self.sent, limit)


def mcp_metadata(row: Any) -> dict[str, Any]:
    """What Dewey's metadata says of an MCP session beside the conversation fields."""
    return {
        "mcp_server": row["server"],
        "mcp_transport": row["transport"],
        "mcp_protocol_version": row["protocol_version"],
        "mcp_client_info": orjson.loads(row["client_info"]) if row["client_info"] else None,
        "mcp_server_info": orjson.loads(row["server_info"]) if row["server_info"] else None,
    }


def stored_message(row: Any) -> render.StoredMessage:
    return render.StoredMessage(
        row["conversation_id"],
        row["position"],
        row["role"],
        orjson.loads(row["content"]),
        row["exchange_id"],
        row["source"],
        row["partial"],
    )


async def forward_sessions(
    pool: asyncpg.Pool,
    dewey: DeweyClient,
    session_keys: Sequence[str],
    limits: Limits,
    mcp_sessions: Sequence[str] = (),
) -> None:
    """Everything these sessions' conversations, and these MCP sessions, have that Dewey lacks; raises if Dewey is away."""
    pending = [*await pool.fetch(queries().pending_conversations, list(session_keys))] if session_keys else []
    if mcp_sessions:
        pending += await pool.fetch(queries().pending_mcp_sessions, list(mcp_sessions))
    for row in pending:
        await forward(pool, dewey, Pending.of(row), limits)


async def forward(pool: asyncpg.Pool, dewey: DeweyClient, pending: Pending, limits: Limits) -> None:
    if pending.dewey_id is None:
        pending.dewey_id = await begin(pool, dewey, pending)
        if pending.dewey_id is None:
            return
    elif pending.in_doubt:
        pending.sent = await reconcile_messages(pool, dewey, pending)
    while rows := await pending.messages_after(pool, limits.count):
        messages = [render.dewey_message(stored_message(row)) for row in rows]
        for chunk in render.chunks(messages, limits.count, limits.bytes):
            await store(pool, dewey, pending, chunk)


async def begin(pool: asyncpg.Pool, dewey: DeweyClient, pending: Pending) -> str | None:
    """Dewey's id for the conversation, begun now or found from an attempt in doubt; None if refused."""
    head = pending.head
    if pending.known:
        found = await find_begun(dewey, head)
        if found is not None:
            log.info("conversation %s was begun in Dewey as %s before a failure; carrying on", head.conversation_id, found)
            await pool.execute(queries().begun, head.conversation_id, found)
            return found
    arguments = render.begin_arguments(head)
    await pool.execute(queries().beginning, head.conversation_id, head.session_key)
    try:
        answer = await dewey.call("dewey_begin_conversation", arguments)
    except DeweyRejected as exc:
        await dead_letter(pool, head.conversation_id, None, "dewey_begin_conversation", arguments, exc, queries().refused)
        return None
    dewey_id = str(answer["conversation_id"])
    await pool.execute(queries().begun, head.conversation_id, dewey_id)
    return dewey_id


async def find_begun(dewey: DeweyClient, head: render.ConversationHead) -> str | None:
    """The Dewey conversation of this session begun for this KGB id, if an earlier attempt got through."""
    wanted = str(head.conversation_id)
    for offset in itertools.count(0, LIST_PAGE):
        page = await dewey.call(
            "dewey_list_conversations",
            {
                "session_id": head.session_key,
                "limit": LIST_PAGE,
                "offset": offset,
                "sort_by": "created_at",
            },
        )
        conversations = page.get("conversations") or []
        for conversation in conversations:
            if render.kgb_conversation_id(conversation.get("metadata")) == wanted:
                return str(conversation.get("id") or conversation.get("conversation_id"))
        if len(conversations) < LIST_PAGE:
            return None
    raise AssertionError("unreachable: pages never end")


async def reconcile_messages(pool: asyncpg.Pool, dewey: DeweyClient, pending: Pending) -> int:
    """The last position Dewey holds (or we skipped), after a store whose answer was lost."""
    conversation = await dewey.call("dewey_get_conversation", {"conversation_id": pending.dewey_id})
    positions = [render.kgb_position(m.get("metadata")) for m in conversation.get("messages") or []]
    held = max((p for p in positions if p is not None), default=-1)
    if held > pending.sent:
        log.info(
            "conversation %s: Dewey already held positions up to %d; not sending them again", pending.head.conversation_id, held
        )
    await pool.execute(queries().sent, pending.head.conversation_id, held)
    return max(held, pending.sent)


async def store(pool: asyncpg.Pool, dewey: DeweyClient, pending: Pending, chunk: list[dict[str, Any]]) -> None:
    """One bulk call; a refused chunk of several is split into single messages to isolate the bad ones."""
    conversation_id = pending.head.conversation_id
    arguments = {"conversation_id": pending.dewey_id, "messages": chunk}
    last = chunk[-1]["turn_number"]
    await pool.execute(queries().sending, conversation_id)
    try:
        await dewey.call("dewey_store_messages_bulk", arguments)
    except DeweyRejected as exc:
        if len(chunk) > 1:
            log.warning("Dewey refused %d messages of %s (%s); sending them one by one", len(chunk), conversation_id, exc)
            for message in chunk:
                await store(pool, dewey, pending, [message])
            return
        await dead_letter(pool, conversation_id, last, "dewey_store_messages_bulk", arguments, exc, queries().sent, last)
    else:
        await pool.execute(queries().sent, conversation_id, last)
    pending.sent = last


async def dead_letter(
    pool: asyncpg.Pool,
    conversation_id: uuid.UUID,
    position: int | None,
    tool: str,
    arguments: dict[str, Any],
    exc: DeweyRejected,
    then: str,
    *then_args: Any,
) -> None:
    """The refused call and Dewey's answer, recorded with the step past it, in one transaction."""
    log.warning("dead letter: %s of %s position %s: %s", tool, conversation_id, position, exc)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            queries().insert_dead_letter,
            conversation_id,
            position,
            tool,
            orjson.dumps(arguments).decode(),
            exc.code,
            exc.message,
            None if exc.data is None else orjson.dumps(exc.data).decode(),
        )
        await conn.execute(then, conversation_id, *then_args)
