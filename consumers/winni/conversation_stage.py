"""The conversations stage: each batch's exchanges, then its events through `thread_rules` into the conversation tables.

It writes the exchanges itself (`store.write_exchanges`) in the same
transaction, so everything commits together, and after the rules have placed
each request: a request's row is written once, with where it landed
(``exchanges.conversation_id``), rather than written and then updated. Being
one stage, it parses each request body once for both, and a body leaves ``exchanges`` without its messages only in
the transaction that stores them in ``messages`` (unless
``store_request_bodies`` keeps bodies whole).

The thread state of each session (stored hashes, where each exchange landed)
is cached between batches, and read from the database only when the cache
cannot be trusted: the first time a session is seen, or when
``session_revisions`` says another transaction wrote it since (another winni
after a rebalance, this one's own batch rolled back). Taking a session's state
out of the cache for the length of a batch, and putting it back only when the
batch's rows are written, keeps a half-applied state from ever being reused.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import simdjson

from consumers.mcp import is_mcp
from consumers.source import EventRecord
from consumers.winni.bodies import Body, SentKey, part_hashes, read_body
from consumers.winni.store import Split, queries, split_body, without_nul, write_exchanges
from consumers.winni.thread_rules import (
    THREAD_KINDS,
    Conversation,
    ExchangeLink,
    Placed,
    Reply,
    Request,
    SessionState,
    Slot,
    Writes,
    apply_reply,
    apply_request,
    offer_agent_call,
)
from common.documents import parse_json
from schemas.codec import timestamp

# Sessions whose state stays in memory; the least recently used beyond this are read back when next seen.
CACHED_SESSIONS = 4096
# Messages and parts remembered as free of \u0000 escapes (~100 bytes each); more start the memory afresh.
CLEAN_REMEMBERED = 500_000


# --- pure: events in, state from rows -----------------------------------------------


def request_of(event: dict[str, Any], body: Any, parts: dict[str, bytes] | None = None) -> Request:
    """``body``: the request's body, parsed (`read_body`); ``parts``: its system and tools hashes (`part_hashes`)."""
    r = event["request"]
    return Request(
        exchange_id=event["exchange_id"],
        session_key=event["session_key"],
        session_source=event["session_source"],
        path=r["path"],
        agent_id=event["agent_id"],
        parent_agent_id=event["parent_agent_id"],
        client=event["client"],
        model=r["model"],
        body=body,
        at=timestamp(r["received_at"]),
        parts=parts,
    )


def is_partial(halves: Any) -> bool:
    """A reply is partial when the client went away or the stream broke before its end."""
    return bool(halves["client_disconnected"] or not halves["upstream_complete"] or halves["error_in_stream"])


def reply_of(event: dict[str, Any]) -> Reply:
    r = event["response"]
    return Reply(
        exchange_id=event["exchange_id"],
        session_key=event["session_key"],
        message=parse_json(r["message"]),
        partial=is_partial(r),
        at=timestamp(event["occurred_at"]),
    )


def early_reply(row: Any) -> Reply:
    """A ``load_early_replies`` row as the reply its late request will place."""
    return Reply(row["exchange_id"], row["session_key"], parse_json(row["message"]), is_partial(row), row["response_occurred_at"])


def states_from_rows(
    keys: Iterable[str],
    conversations: Iterable[Any],
    positions: Iterable[Any],
    exchanges: Iterable[Any],
    early: Iterable[Any] = (),
    agent_calls: Iterable[Any] = (),
) -> dict[str, SessionState]:
    """Rebuild sessions' thread state from what the tables hold (rows of the ``load_*`` queries)."""
    states = {key: SessionState(key) for key in keys}
    summarised: dict[str, list[tuple[str, str | None, uuid.UUID]]] = {}
    for row in conversations:
        state = states[row["session_key"]]
        state.add(Conversation(_uuid(row["id"]), row["kind"], row["agent_id"], row["last_at"]))
        if row["spawned_by_tool_use_id"] is not None:
            state.spawned.add(row["spawned_by_tool_use_id"])
        if row["summarises_conversation_id"] is not None:
            summarised.setdefault(row["session_key"], []).append(
                (row["kind"], row["agent_id"], _uuid(row["summarises_conversation_id"]))
            )
    owners = {c: s for s in states.values() for c in s.conversations}
    for row in positions:
        conversation_id = _uuid(row["conversation_id"])
        owners[conversation_id].conversations[conversation_id].positions.append(
            Slot(bytes(row["content_hash"]), row["role"], row["from_response"], row["partial"])
        )
    for state in states.values():
        for conversation in state.conversations.values():  # in the order they were started, as live
            if conversation.positions:
                state.opened(conversation)
    for row in exchanges:
        state = states[row["session_key"]]
        state.exchanges[row["exchange_id"]] = Placed(_uuid(row["conversation_id"]), row["reply_position"], row["kind"])
        if row["message_id"] is not None:
            state.replies[row["message_id"]] = (_uuid(row["conversation_id"]), row["reply_position"])
        if row["retry_of"] is None:  # in the order they came: the latest asking anew is the one a retry repeats
            state.first_by_hash[bytes(row["request_hash"])] = row["exchange_id"]
    for key, links in summarised.items():
        states[key].compacted = pending_compactions(links)
    for row in early:
        states[row["session_key"]].early[row["exchange_id"]] = early_reply(row)
    for row in agent_calls:
        offer_agent_call(
            states[row["session_key"]],
            row["tool_use_id"],
            row["prompt"],
            (row["used_at"], row["use_position"], _uuid(row["conversation_id"])),
        )
    return states


def pending_compactions(links: list[tuple[str, str | None, uuid.UUID]]) -> dict[tuple[str, str | None], uuid.UUID]:
    """Compactions whose thread has not started its next conversation yet, from (kind, agent, summarised) in order."""
    pending: dict[tuple[str, str | None], uuid.UUID] = {}
    for kind, agent_id, summarised in links:
        if kind == "compaction":
            pending[("subagent" if agent_id else "main", agent_id)] = summarised
        elif kind in THREAD_KINDS and pending.get((kind, agent_id)) == summarised:
            del pending[(kind, agent_id)]
    return pending


def _uuid(value: Any) -> uuid.UUID:
    """asyncpg's UUID as the standard one, so ids from rows and from uuid5 are the same keys."""
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


# --- async: the stage ---------------------------------------------------------------------


def parsed_bodies(records: Sequence[EventRecord]) -> dict[str, Any]:
    """Each request's parsed body by event id (`read_body`): the one parse both halves of the stage share.

    The collector is paused meanwhile: bodies that simdjson cannot read are
    parsed in full, and the fields of all are made Python; collections triggered
    while young objects are made scan them (and the cached sessions) again and
    again, which made parsing all bodies in full 3-4x slower. Parsed JSON holds
    no cycles, so there is nothing for it to find.
    """
    parser = simdjson.Parser()
    with collector_paused():
        return {
            r.event["event_id"]: read_body(r.event["request"]["body"], parser) for r in records if r.event["kind"] == "REQUEST"
        }


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def splits_of(
    records: Sequence[EventRecord],
    bodies: dict[str, Any],
    parts: dict[str, dict[str, bytes]],
    clean: set[SentKey],
    placed: Mapping[str, ExchangeLink],
) -> dict[str, Split]:
    """The request bodies ``exchanges`` keeps without their messages, by event id; ``parts`` as `parts_of`
    gives, ``clean`` as `split_body` takes, ``placed`` the batch's links by exchange id.

    Only a body whose messages are stored as the first positions of its conversation
    leaves them out (``request_messages`` says how many): one the rules placed nowhere
    (no model call) or after a history the server held keeps them. Only request events
    are looked up: a response whose event id a request of the batch shares (a broken
    producer, a forged event) must not be taken for it.
    """
    splits = {}
    for record in records:
        event_id = record.event["event_id"]
        if record.event["kind"] != "REQUEST" or event_id not in parts:
            continue
        link = placed.get(record.event["exchange_id"])
        if link is None or link.reply_position != len(bodies[event_id].messages):
            continue
        if split := split_body(record.event["request"]["body"], bodies[event_id], parts[event_id], clean):
            splits[event_id] = split
    return splits


def parts_of(
    records: Sequence[EventRecord], bodies: dict[str, Any], known: Callable[[str], dict[SentKey, bytes]]
) -> dict[str, dict[str, bytes]]:
    """The system and tools hashes of each request with a ``messages`` list, by event id, computed
    once for both ``request_parts`` and the retry check; ``known`` gives a session's memory of them."""
    out = {}
    for record in records:
        event_id = record.event["event_id"]
        body = bodies.get(event_id)
        if isinstance(body, Body) and body.messages is not None:
            out[event_id] = part_hashes(body, known(record.event["session_key"]))
    return out


class ConversationStage:
    """A winni stage with its per-session cache; one instance per running consumer."""

    def __init__(self, store_request_bodies: bool = False, cached_sessions: int = CACHED_SESSIONS) -> None:
        self._states: OrderedDict[str, tuple[int, SessionState]] = OrderedDict()
        # per session, its system and tools as sent -> their hashes (`part_hashes`); content only,
        # so unlike the states it holds nothing a rolled back batch could make wrong
        self._parts: OrderedDict[str, dict[SentKey, bytes]] = OrderedDict()
        # messages and parts as sent known to hold no \u0000 escape (`bodies.sent_escape_nul`), of any session
        self._clean: set[SentKey] = set()
        self._store_request_bodies = store_request_bodies
        self._cached_sessions = cached_sessions

    async def __call__(self, conn: asyncpg.Connection, records: Sequence[EventRecord]) -> None:
        records = [r for r in records if not is_mcp(r.event)]
        events = [r.event for r in records]
        keys = sorted({e["session_key"] for e in events})
        if not keys:
            return
        bodies = parsed_bodies(records)
        parts = parts_of(records, bodies, self._known_parts)
        revisions = {row["session_key"]: row["revision"] for row in await conn.fetch(queries().bump_revisions, keys)}
        cached = {key: self._take(key, revisions[key] - 1) for key in keys}
        states = {key: state for key, state in cached.items() if state is not None}
        stale = [key for key in keys if key not in states]
        if stale:
            states.update(await load_states(conn, stale))
        writes = Writes()
        for event in events:
            state = states[event["session_key"]]
            if event["kind"] == "REQUEST":
                apply_request(state, request_of(event, bodies[event["event_id"]], parts.get(event["event_id"])), writes)
            else:
                apply_reply(state, reply_of(event), writes)
        if len(self._clean) > CLEAN_REMEMBERED:
            self._clean.clear()
        placed = {link.exchange_id: link for link in writes.exchanges}
        splits = None if self._store_request_bodies else splits_of(records, bodies, parts, self._clean, placed)
        await write_exchanges(conn, records, splits, placed)
        await write(conn, writes)
        for key in keys:
            self._put(key, revisions[key], states[key])

    def _known_parts(self, key: str) -> dict[SentKey, bytes]:
        known = self._parts.pop(key, None)
        self._parts[key] = known = {} if known is None else known
        while len(self._parts) > self._cached_sessions:
            self._parts.popitem(last=False)
        return known

    def _take(self, key: str, revision: int) -> SessionState | None:
        cached = self._states.pop(key, None)
        return cached[1] if cached and cached[0] == revision else None

    def _put(self, key: str, revision: int, state: SessionState) -> None:
        self._states[key] = (revision, state)
        while len(self._states) > self._cached_sessions:
            self._states.popitem(last=False)


async def load_states(conn: asyncpg.Connection, keys: list[str]) -> dict[str, SessionState]:
    q = queries()
    return states_from_rows(
        keys,
        await conn.fetch(q.load_conversations, keys),
        await conn.fetch(q.load_positions, keys),
        await conn.fetch(q.load_exchanges, keys),
        await conn.fetch(q.load_early_replies, keys),
        await conn.fetch(q.load_agent_calls, keys),
    )


async def write(conn: asyncpg.Connection, writes: Writes) -> None:
    """Parents before children: sessions, conversations, then what refers to them; a copy once
    what it copies is written."""
    q = queries()
    steps = (
        (q.upsert_session, list(writes.sessions.values())),
        (q.set_title, writes.titles),
        (q.upsert_conversation, list(writes.conversations.values())),
        (q.upsert_message, writes.messages),
        (q.copy_messages, writes.copies),
        (q.upsert_tool_use, writes.tool_uses),
        (q.upsert_tool_result, writes.tool_results),
        (q.copy_tool_calls, writes.copies),
    )
    for sql, rows in steps:
        if rows:
            await conn.executemany(sql, without_nul(rows))
