"""Which conversation each request belongs to, and which messages it adds: pure, no I/O.

Clients of the Messages API resend the whole history on every request (Claude
Code, an SDK chat, a tool runner alike), so the conversation model is rebuilt
from the requests themselves: a request joins the conversation whose stored
messages it extends, and only the positions past what is stored become new
rows. Each message is hashed after normalising what the client varies between
turns (a string content against a list of text blocks, where ``cache_control``
sits), and histories are compared hash by hash, so a 1 MB history costs one
pass and no rows. That pass is cheap: the session remembers the hash and role
of every message as it was sent (keyed by its minified bytes,
`bodies.sent_key`), so a resent message costs one fast keyed hash, and only
what is new is made Python, normalised and hashed in full.

One `SessionState` per session holds what the comparisons need: per
conversation the hash, role and origin of each stored position, and per
exchange where its request landed (so its response knows where the reply
goes, and a redelivered request is recognised). The state is exactly what the
tables hold (`conversations`, `messages`, `exchanges`), so the live consumer
loads it from the database when it has none, and never re-reads bodies.

Rules, in the order `apply_request` tries them:
- a request that is no model call (no ``messages``, an empty list, kind
  ``other``: ``HEAD /``, ``/v1/models``) is an exchange only;
- a retry (the same body, ``stream`` aside, so the client's non-streaming
  fallback counts, from the same agent id) of an exchange whose reply never
  came whole links to the exchange it repeats and adds nothing; the same body
  after a complete reply asks anew, and is placed like any request;
- main and sub-agent requests (kinds.py: every model call no side marker
  claims) join the conversation of their thread (kind and agent id) that they
  continue (`closest`): one whose stored positions they all repeat, or all but
  a partial reply where theirs goes. Only conversations opening with the
  request's first message are compared (`SessionState.candidates`), so many
  chats on one session cost no more than one, and of several that fit, the one
  sharing the most positions, then the one matched more exactly, wins: two
  chats opening alike keep their own turns. Else they start one: after a
  compaction, linked to the conversation it summarised; after a rewind, an
  edited or dropped turn, or the same question asked again (the history
  leaves a stored one), as a branch of it, copied whole so it reads on its own;
- every other kind (title, count_tokens, web_search, compaction) is a
  conversation of its own per request; a compaction also records which thread
  conversation it summarises, so the next conversation of that thread starts
  linked to it. A conversation whose history opens as Claude Code's
  continuations do is linked to its thread's last active one even when no
  compaction was recognised (`kinds.is_continuation`).

A new sub-agent conversation (not a branch, not a continuation after a
compaction) is linked to the ``Agent`` tool call that started it (``Task`` in
older Claude Code): the earliest call of the session not linked yet whose
``prompt`` is a text of the sub-agent's first message (beside it there may be
other texts, such as system reminders); its parent is the conversation holding
that call. Calls are offered as their replies are stored, complete ones only
(a cut reply was not run); a sub-agent whose first request comes before that
reply stays unlinked, its parent the thread active last.

An assistant reply is compared leniently: the client may resend it with
details changed (a partial answer cut where the client stopped reading, fields
it drops, an SDK's own serialisation of the blocks), so a position first
stored from a response matches any assistant message; the response's version
stays stored. A partial reply (client gone, stream broken) is stored flagged,
and replaced once by a complete reply to the same request positions, which is
what a retry brings.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from consumers.kinds import is_continuation, kind_of, system_outline, texts, tools_outline
from consumers.winni.bodies import PARTS_REMEMBERED, Body, Sent, SentKey, as_body, jsonb_safe, part_hashes, plain
from common.senders import claude_user, client_and_version

# Fixed forever: conversation ids derive from it, so a replay finds the same ids.
NAMESPACE = uuid.UUID("6f1c2a52-93a4-4d0e-9a67-3f0b0c1f5e21")
THREAD_KINDS = frozenset({"main", "subagent"})
AGENT_TOOLS = frozenset({"Agent", "Task"})  # the tool that starts a sub-agent; Task before Claude Code 2.1
TITLE_LIMIT = 500
# A request is compared with at most this many of the latest conversations of its thread
# that open with its first message, which bounds the cost for clients whose chats all open alike.
CANDIDATES = 32

# --- inputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What the thread logic needs of a request event; ``body`` is the parsed JSON or None, an object as a `Body` or plain."""

    exchange_id: str
    session_key: str
    session_source: str
    path: str
    agent_id: str | None
    parent_agent_id: str | None
    client: str | None
    model: str | None
    body: Any
    at: datetime
    # the `request_parts` hashes of the body's system and tools when known (`part_hashes`), else made here
    parts: dict[str, bytes] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the thread logic needs of a response event; ``message`` is the reassembled message."""

    exchange_id: str
    session_key: str
    message: Any
    partial: bool
    at: datetime


# --- rows (field order is the parameter order of the named query; tests/consumers/winni/test_store.py checks it) ---


class SessionRow(NamedTuple):
    session_key: str
    source: str | None
    device_id: str | None
    account_uuid: str | None
    client: str | None
    client_version: str | None
    title: str | None
    first_seen: datetime
    last_seen: datetime


class ConversationRow(NamedTuple):
    id: uuid.UUID
    session_key: str
    ordinal: int
    kind: str
    agent_id: str | None
    parent_agent_id: str | None
    parent_conversation_id: uuid.UUID | None
    summarises_conversation_id: uuid.UUID | None
    branch_of: uuid.UUID | None
    branch_position: int | None
    model: str | None
    first_exchange_id: str
    created_at: datetime
    last_exchange_id: str
    last_at: datetime
    spawned_by_tool_use_id: str | None


class MessageRow(NamedTuple):
    conversation_id: uuid.UUID
    position: int
    role: str
    content: str
    content_hash: bytes
    exchange_id: str
    source: str
    partial: bool
    created_at: datetime


class ToolUseRow(NamedTuple):
    conversation_id: uuid.UUID
    tool_use_id: str
    name: str | None
    input: str | None
    use_exchange_id: str
    use_position: int
    used_at: datetime


class ToolResultRow(NamedTuple):
    conversation_id: uuid.UUID
    tool_use_id: str
    result: str | None
    is_error: bool
    result_exchange_id: str
    result_position: int
    result_at: datetime


class ExchangeLink(NamedTuple):
    exchange_id: str
    conversation_id: uuid.UUID
    reply_position: int
    retry_of: str | None
    request_hash: bytes


class TitleRow(NamedTuple):
    session_key: str
    title: str
    title_at: datetime


class CopyRow(NamedTuple):
    """The first ``positions`` messages (and their tool calls) of ``source``, copied into ``target``."""

    source: uuid.UUID
    target: uuid.UUID
    positions: int


@dataclass
class Writes:
    """Everything one batch changes, in the order the rows were decided."""

    sessions: dict[str, SessionRow] = field(default_factory=dict)
    titles: list[TitleRow] = field(default_factory=list)
    conversations: dict[uuid.UUID, ConversationRow] = field(default_factory=dict)
    messages: list[MessageRow] = field(default_factory=list)
    tool_uses: list[ToolUseRow] = field(default_factory=list)
    tool_results: list[ToolResultRow] = field(default_factory=list)
    copies: list[CopyRow] = field(default_factory=list)
    exchanges: list[ExchangeLink] = field(default_factory=list)

    def seen(self, row: SessionRow) -> None:
        """One row per session and batch, merged the way ``upsert_session`` merges a row into the stored one."""
        had = self.sessions.get(row.session_key)
        self.sessions[row.session_key] = (
            row
            if had is None
            else SessionRow(
                session_key=row.session_key,
                source=_first(had.source, row.source),
                device_id=_first(had.device_id, row.device_id),
                account_uuid=_first(had.account_uuid, row.account_uuid),
                client=_first(row.client, had.client),
                client_version=_first(row.client_version, had.client_version),
                title=None,
                first_seen=min(had.first_seen, row.first_seen),
                last_seen=max(had.last_seen, row.last_seen),
            )
        )

    def touch(self, row: ConversationRow) -> None:
        """The first row of a batch keeps its creation fields; later ones move the last exchange
        forward, never back, as ``upsert_conversation`` does (`Conversation.last_at` reads it back)."""
        seen = self.conversations.get(row.id)
        if seen is None:
            self.conversations[row.id] = row
        elif row.last_at >= seen.last_at:
            self.conversations[row.id] = seen._replace(last_exchange_id=row.last_exchange_id, last_at=row.last_at)


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v is not None), None)


# --- state ------------------------------------------------------------------------


@dataclass(slots=True)
class Slot:
    """What a conversation holds at one position: the message's hash and role, and where it came from."""

    hash: bytes
    role: str
    from_response: bool
    partial: bool


@dataclass(slots=True)
class Conversation:
    id: uuid.UUID
    kind: str
    agent_id: str | None
    last_at: datetime  # of the latest request placed in it (``conversations.last_at``)
    positions: list[Slot] = field(default_factory=list)


@dataclass(slots=True)
class Placed:
    """Where an exchange's request landed: its reply goes to ``reply_position``."""

    conversation_id: uuid.UUID
    reply_position: int
    kind: str


Thread = tuple[str, str | None]  # (kind, agent id) of main and sub-agent conversations
Opening = tuple[str, str | None, bytes]  # a thread, and the hash of the first message of some of its conversations
# when, at which position and in which conversation an Agent call was stored: the earliest is claimed first
AgentPlace = tuple[datetime, int, uuid.UUID]


@dataclass
class SessionState:
    key: str
    conversations: dict[uuid.UUID, Conversation] = field(default_factory=dict)
    threads: dict[Thread, list[Conversation]] = field(default_factory=dict)
    exchanges: dict[str, Placed] = field(default_factory=dict)
    first_by_hash: dict[bytes, str] = field(default_factory=dict)
    # the conversation a compaction summarised, per thread, until that thread starts anew
    compacted: dict[Thread, uuid.UUID] = field(default_factory=dict)
    # replies whose request has not been seen yet, by exchange id
    early: dict[str, Reply] = field(default_factory=dict)
    # the hash and role of each message as sent (`bodies.sent_key`), so a resent history is not read again
    hashes: dict[SentKey, tuple[bytes, str]] = field(default_factory=dict)
    # each distinct system and tools value as sent -> its outline (`kind_view`), so kind_of does not parse them per request
    outlines: dict[tuple[str, SentKey], Any] = field(default_factory=dict)
    # each thread's conversations by the hash of their first message, oldest first (`candidates`)
    openings: dict[Opening, list[Conversation]] = field(default_factory=dict)
    # Agent tool calls no sub-agent has claimed yet, by `prompt_key`: tool_use id -> its place (`offer_agent_call`)
    agent_calls: dict[bytes, dict[str, AgentPlace]] = field(default_factory=dict)
    # the Agent tool calls claimed, so a copy of one (a compaction's, a branch's) is not offered again
    spawned: set[str] = field(default_factory=set)
    # each reply by its message id -> the conversation and position its exchange placed it at, for the
    # requests that continue from it with only their new messages (`held_history`)
    replies: dict[str, tuple[uuid.UUID, int]] = field(default_factory=dict)

    def add(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = conversation
        if conversation.kind in THREAD_KINDS:
            self.threads.setdefault((conversation.kind, conversation.agent_id), []).append(conversation)

    def opened(self, conversation: Conversation) -> None:
        """Its first position is stored: requests that open with the same message may extend it."""
        if conversation.kind in THREAD_KINDS:
            key = (conversation.kind, conversation.agent_id, conversation.positions[0].hash)
            self.openings.setdefault(key, []).append(conversation)

    def candidates(self, kind: str, agent_id: str | None, messages: list[Message]) -> list[Conversation]:
        """The thread's conversations that ``messages`` may extend or branch from, most recent first:
        only those opening with the same message can, however many chats the session holds."""
        opening = self.openings.get((kind, agent_id, messages[0].hash), []) if messages else []
        return opening[: -CANDIDATES - 1 : -1]

    def active(self, kind: str, agent_id: str | None) -> Conversation | None:
        """The thread's conversation that took a request last (of equals, the latest started)."""
        return max(reversed(self.threads.get((kind, agent_id), [])), key=lambda c: c.last_at, default=None)


# --- pure helpers -------------------------------------------------------------------


def normal_content(content: Any) -> Any:
    """A string becomes one text block; ``cache_control`` goes, also inside tool results."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [normal_block(block) for block in content]
    return content


def normal_block(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    if "cache_control" not in block and not isinstance(block.get("content"), (str, list)):
        return block
    out = {k: v for k, v in block.items() if k != "cache_control"}
    if block.get("type") == "tool_result" and "content" in out:
        out["content"] = normal_content(out["content"])
    return out


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def message_hash(role: str, content: Any) -> bytes:
    """Of the normalised message; keys sorted so a reassembled reply and a resent one agree."""
    return digest(orjson.dumps([role, content], option=orjson.OPT_SORT_KEYS))


@dataclass(frozen=True, slots=True)
class Message:
    """``sent``: the message as sent, plain or `bodies.Sent` (parsed only when its content is read);
    its content may be normalised already (normalising is idempotent)."""

    role: str
    sent: Any
    hash: bytes

    @property
    def content(self) -> Any:
        message = plain(self.sent)
        return message.get("content") if isinstance(message, dict) else message


def role_and_hash(message: Any) -> tuple[bytes, str]:
    """Of a plain message: the hash of its normalised content, and its role (``unknown`` when it has none),
    interned: sessions remember one per message (`SessionState.hashes`, `Slot`)."""
    role = message.get("role") if isinstance(message, dict) else None
    role = sys.intern(role) if isinstance(role, str) else "unknown"
    content = message.get("content") if isinstance(message, dict) else message
    return message_hash(role, normal_content(content)), role


def normal_messages(sent: list[Sent], hashes: dict[SentKey, tuple[bytes, str]]) -> list[Message]:
    """Every message with its hash; ``hashes`` (message as sent -> hash, role) is read and filled."""
    out = []
    for message in sent:
        known = hashes.get(message.key)
        if known is None:
            known = hashes[message.key] = role_and_hash(message.value())
        out.append(Message(known[1], message, known[0]))
    return out


def request_hash(body: Body, messages: list[Message], parts: dict[str, bytes]) -> bytes:
    """Equal for a retry: the body without ``stream`` (the non-streaming fallback resends it
    without), the messages and ``parts`` (`part_hashes`) by their hashes so they are not
    serialised twice. Changed once (system and tools by their hashes): a retry whose original
    was placed by an older winni is not recognised as one, and stores nothing new either."""
    rest = {k: v for k, v in body.fields.items() if k != "stream"}
    named = {name: hash_.hex() for name, hash_ in parts.items()}
    return digest(orjson.dumps([rest, named], option=orjson.OPT_SORT_KEYS) + b"".join(m.hash for m in messages))


OUTLINES: dict[str, Callable[[Any], Any]] = {"system": system_outline, "tools": tools_outline}


def kind_view(body: Body, outlines: dict[tuple[str, SentKey], Any]) -> dict[str, Any]:
    """The body as `kind_of` reads it: its fields, its last message, its system and tools as
    `OUTLINES` reduce them; ``outlines`` ((field, value as sent) -> outline, one per session) is
    read and filled like `part_hashes`'s memory."""
    view = {**body.fields, "messages": [body.messages[-1].value()] if body.messages else []}
    for name, sent in body.parts.items():
        key = (name, sent.key)
        if key not in outlines:
            if len(outlines) >= PARTS_REMEMBERED:
                outlines.clear()
            outlines[key] = OUTLINES[name](sent.value())
        view[name] = outlines[key]
    return view


class Match(NamedTuple):
    """How a request's messages compare with a stored conversation."""

    conversation: Conversation
    shared: int  # leading positions the request repeats
    lenient: int  # of those, stored replies matched by some other assistant message in their place


def common_prefix(positions: list[Slot], messages: list[Message]) -> tuple[int, int]:
    """(shared, lenient) as `Match` counts them: a stored reply matches any assistant message in its
    place (the module docstring says why), which is weaker evidence than the same message."""
    shared = lenient = 0
    for stored, message in zip(positions, messages, strict=False):  # the shorter one's length is what is shared
        if stored.hash != message.hash:
            if not (stored.from_response and stored.role == message.role):
                break
            lenient += 1
        shared += 1
    return shared, lenient


def closest(candidates: list[Conversation], messages: list[Message], held: int = 0) -> tuple[Match | None, Match | None]:
    """Of ``candidates`` (most recent first): the conversation the request continues, else None; and
    the one it shares the most positions with otherwise (what a new conversation branches from).

    Of several it continues, the one it shares the most with wins, then the one it matches with
    fewer replies taken leniently, then the latest: two chats that open alike and were answered
    differently each keep their own turns. Of several it leaves, the one it shares the most with,
    then the earliest. One that holds fewer than ``held`` positions (those the
    server held for the request, `held_history`) cannot be continued: the request lacks their content.
    """
    joined: Match | None = None
    branched: Match | None = None
    for conversation in candidates:
        if joined is not None and len(conversation.positions) < joined.shared:
            continue  # it cannot share more
        match = Match(conversation, *common_prefix(conversation.positions, messages))
        if continues(match, len(messages)) and match.shared >= held:
            if joined is None or (match.shared, -match.lenient) > (joined.shared, -joined.lenient):
                joined = match
        elif match.shared and (branched is None or match.shared >= branched.shared):
            branched = match  # of equals, the earliest: a question asked again branches off the original
    return joined, branched


def continues(match: Match, sent: int) -> bool:
    """The request holds every stored position; or all but a partial reply in the place of its own,
    which its reply may replace. A request that stops before a complete reply asks anew (a branch)."""
    stored = match.conversation.positions
    return match.shared == len(stored) or (match.shared == sent == len(stored) - 1 and stored[-1].partial)


def conversation_id(session_key: str, kind: str, agent_id: str | None, first_exchange_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "\x00".join((session_key, kind, agent_id or "", first_exchange_id)))


def device_and_account(body: Any) -> tuple[str | None, str | None]:
    """As Claude Code names them in ``metadata.user_id`` (`common.senders.claude_user`)."""
    user = claude_user(body if isinstance(body, dict) else None)
    return (user.device_id, user.account_uuid) if user else (None, None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def reply_text(message: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in message.get("content") or [] if isinstance(b, dict) and b.get("type") == "text")


def title_of(message: dict[str, Any]) -> str | None:
    """Claude Code asks for ``{"title": ...}`` as structured output; a plain answer is taken as it is."""
    text = reply_text(message).strip()
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("title"), str):
        text = parsed["title"].strip()
    return text[:TITLE_LIMIT] or None


def content_json(content: Any) -> str:
    return jsonb_safe(orjson.dumps(content).decode()) or "null"


# --- the rules ------------------------------------------------------------------------


def session_row(request: Request, body: Any) -> SessionRow:
    """``body``: the request's, as `bodies.as_body` gives it."""
    device, account = device_and_account(body.fields if isinstance(body, Body) else body)
    client, version = client_and_version(request.client)
    return SessionRow(
        session_key=request.session_key,
        source=request.session_source,
        device_id=device,
        account_uuid=account,
        client=client,
        client_version=version,
        title=None,
        first_seen=request.at,
        last_seen=request.at,
    )


def apply_request(state: SessionState, request: Request, writes: Writes) -> None:
    """Place one request: link its exchange, store the positions it adds."""
    body = as_body(request.body)
    writes.seen(session_row(request, body))
    if request.exchange_id in state.exchanges or not isinstance(body, Body) or not body.messages:
        return
    kind = kind_of(request.path, kind_view(body, state.outlines), request.agent_id)
    if kind == "other":  # not a model call: an exchange only
        return
    held = held_history(state, body)
    messages = normal_messages(body.messages, state.hashes)
    if held is not None:
        messages = [*(Message(p.role, None, p.hash) for p in held.conversation.positions[: held.shared]), *messages]
    parts = request.parts if request.parts is not None else part_hashes(body)
    hash_ = request_hash(body, messages, parts)
    if request.agent_id:  # two sub-agents given the same prompt send the same body: neither retries the other
        hash_ = digest(hash_ + request.agent_id.encode())
    repeated = state.first_by_hash.get(hash_)
    original = state.exchanges.get(repeated) if repeated is not None else None
    if original is not None and not _answered(state, original):
        _touch(state, writes, request, state.conversations[original.conversation_id], None)
        _link(state, writes, request, original.conversation_id, original.reply_position, original.kind, hash_, repeated)
        return
    state.first_by_hash[hash_] = request.exchange_id
    floor = held.shared if held else 0
    if kind in THREAD_KINDS:
        conversation = _thread_conversation(state, request, kind, messages, floor, writes)
    else:
        conversation = _side_conversation(state, request, kind, messages, writes)
    if held is not None and len(conversation.positions) < floor:
        _copy(state, held.conversation, conversation, floor, writes)
    for position in range(len(conversation.positions), len(messages)):
        _store(state, conversation, position, messages[position], request.exchange_id, "request", False, request.at, writes)
    _link(state, writes, request, conversation.id, len(messages), kind, hash_, None)


def continued_from(body: Body) -> str | None:
    """The id of the reply a request continues from when the server holds its history (the message
    threads beta: ``"thread": {"type": "continue", "previous_message_id": ...}``, which the SDKs'
    tool runners send); its ``messages`` are then only the new ones."""
    thread = body.fields.get("thread")
    previous = thread.get("previous_message_id") if isinstance(thread, dict) and thread.get("type") == "continue" else None
    return previous if isinstance(previous, str) else None


def held_history(state: SessionState, body: Body) -> Match | None:
    """The stored conversation holding the reply a request continues from, and how many of its positions
    come before the request's own (up to and with that reply); None for a request that sends its whole
    history, or continues from a reply this session never stored (its messages are then all it has)."""
    previous = continued_from(body)
    place = state.replies.get(previous) if previous is not None else None
    if place is None:
        return None
    conversation = state.conversations[place[0]]
    return Match(conversation, min(place[1] + 1, len(conversation.positions)), 0)


def _copy(state: SessionState, source: Conversation, target: Conversation, positions: int, writes: Writes) -> None:
    """The history the server held for a request that starts a conversation: copied from the one
    holding it, so the new one reads on its own as a branch copied from a request does."""
    target.positions[:] = [replace(p) for p in source.positions[:positions]]
    state.opened(target)
    writes.copies.append(CopyRow(source.id, target.id, positions))


def _answered(state: SessionState, placed: Placed) -> bool:
    """A complete message holds the place of its reply: the same body again asks anew (another
    answer to the same question, another chat that opens alike), it does not retry a failure."""
    positions = state.conversations[placed.conversation_id].positions
    return placed.reply_position < len(positions) and not positions[placed.reply_position].partial


def apply_reply(state: SessionState, reply: Reply, writes: Writes) -> None:
    """Store the assistant reply where its request left room; a title lands on the session."""
    placed = state.exchanges.get(reply.exchange_id)
    message = reply.message
    if not isinstance(message, dict) or not message.get("content"):
        return
    if placed is None:
        state.early[reply.exchange_id] = reply
        return
    if isinstance(message.get("id"), str) and isinstance(message["content"], list):
        state.replies[message["id"]] = (placed.conversation_id, placed.reply_position)
    conversation = state.conversations[placed.conversation_id]
    content = normal_content(message["content"])
    stored = Message("assistant", {"content": content}, message_hash("assistant", content))
    at = placed.reply_position
    if at == len(conversation.positions) or (at < len(conversation.positions) and _replaces(conversation.positions[at], reply)):
        _store(state, conversation, at, stored, reply.exchange_id, "response", reply.partial, reply.at, writes)
    if placed.kind == "title" and not reply.partial:
        title = title_of(message)
        if title:
            writes.titles.append(TitleRow(session_key=reply.session_key, title=title, title_at=reply.at))


def _replaces(position: Slot, reply: Reply) -> bool:
    return position.from_response and position.partial and not reply.partial


class Links(NamedTuple):
    """What a new conversation row links to (`ConversationRow`'s columns of the same meaning)."""

    summarised: uuid.UUID | None = None
    branch_of: uuid.UUID | None = None
    branch_position: int | None = None
    spawned_by: str | None = None
    parent: uuid.UUID | None = None


def _thread_conversation(
    state: SessionState, request: Request, kind: str, messages: list[Message], held: int, writes: Writes
) -> Conversation:
    """The conversation this request continues (`closest`), or a new one: after a compaction,
    linked to the conversation summarised; after a rewind, a branch of the one it left."""
    joined, branched = closest(state.candidates(kind, request.agent_id, messages), messages, held)
    if joined is not None:
        _touch(state, writes, request, joined.conversation, None)
        return joined.conversation
    summarised = _continued(state, (kind, request.agent_id), messages)
    branch = branched if summarised is None else None
    call = _claim_agent_call(state, messages) if kind == "subagent" and summarised is None and branch is None else None
    return _new(
        state,
        request,
        kind,
        writes,
        Links(
            summarised=summarised,
            branch_of=branch.conversation.id if branch else None,
            branch_position=branch.shared if branch else None,
            spawned_by=call[0] if call else None,
            parent=_parent(state, request, call[1] if call else None),
        ),
    )


def _continued(state: SessionState, thread: Thread, messages: list[Message]) -> uuid.UUID | None:
    """The conversation a new one of ``thread`` continues after a compaction: the one the
    compaction summarised; or, when no compaction was recognised but the history opens as a
    continuation does (`kinds.is_continuation`), the thread's conversation active last."""
    summarised = state.compacted.pop(thread, None)
    if summarised is None and is_continuation([plain(messages[0].sent)]):
        previous = state.active(*thread)
        summarised = previous.id if previous else None
    return summarised


def _side_conversation(state: SessionState, request: Request, kind: str, messages: list[Message], writes: Writes) -> Conversation:
    summarised = None
    if kind == "compaction":
        thread = ("subagent" if request.agent_id else "main", request.agent_id)
        joined, branched = closest(state.candidates(*thread, messages), messages)
        found = joined or branched
        if found is not None:
            summarised = state.compacted[thread] = found.conversation.id
    return _new(state, request, kind, writes, Links(summarised=summarised, parent=_parent(state, request, None)))


def _parent(state: SessionState, request: Request, caller: uuid.UUID | None) -> uuid.UUID | None:
    """A sub-agent's parent: the conversation holding the Agent call that started it, else its
    parent agent's conversation active last, else the main thread's."""
    if request.agent_id is None:
        return None
    if caller is not None:
        return caller
    parent = state.active("subagent", request.parent_agent_id) if request.parent_agent_id else None
    parent = parent or state.active("main", None)
    return parent.id if parent else None


def _new(state: SessionState, request: Request, kind: str, writes: Writes, links: Links) -> Conversation:
    conversation = Conversation(
        conversation_id(state.key, kind, request.agent_id, request.exchange_id),
        kind,
        request.agent_id,
        request.at,
    )
    state.add(conversation)
    _touch(state, writes, request, conversation, links)
    return conversation


def _touch(state: SessionState, writes: Writes, request: Request, conversation: Conversation, links: Links | None) -> None:
    """A conversation row: created with its links when ``links`` is given, else only its last exchange moves."""
    conversation.last_at = max(conversation.last_at, request.at)
    made = links or Links()
    writes.touch(
        ConversationRow(
            id=conversation.id,
            session_key=state.key,
            ordinal=len(state.conversations) - 1,
            kind=conversation.kind,
            agent_id=conversation.agent_id,
            parent_agent_id=request.parent_agent_id,
            parent_conversation_id=made.parent,
            summarises_conversation_id=made.summarised,
            branch_of=made.branch_of,
            branch_position=made.branch_position,
            model=request.model,
            first_exchange_id=request.exchange_id,
            created_at=request.at,
            last_exchange_id=request.exchange_id,
            last_at=request.at,
            spawned_by_tool_use_id=made.spawned_by,
        )
    )


def _link(
    state: SessionState,
    writes: Writes,
    request: Request,
    conversation_id_: uuid.UUID,
    reply_position: int,
    kind: str,
    hash_: bytes,
    retry_of: str | None,
) -> None:
    state.exchanges[request.exchange_id] = Placed(conversation_id_, reply_position, kind)
    writes.exchanges.append(
        ExchangeLink(
            exchange_id=request.exchange_id,
            conversation_id=conversation_id_,
            reply_position=reply_position,
            retry_of=retry_of,
            request_hash=hash_,
        )
    )
    early = state.early.pop(request.exchange_id, None)
    if early is not None:
        apply_reply(state, early, writes)


def _store(
    state: SessionState,
    conversation: Conversation,
    position: int,
    message: Message,
    exchange_id: str,
    source: str,
    partial: bool,
    at: datetime,
    writes: Writes,
) -> None:
    slot = Slot(message.hash, message.role, source == "response", partial)
    if position < len(conversation.positions):
        conversation.positions[position] = slot
    else:
        conversation.positions.append(slot)
        if position == 0:
            state.opened(conversation)
    content = normal_content(message.content)
    writes.messages.append(
        MessageRow(
            conversation_id=conversation.id,
            position=position,
            role=message.role,
            content=content_json(content),
            content_hash=message.hash,
            exchange_id=exchange_id,
            source=source,
            partial=partial,
            created_at=at,
        )
    )
    for block in content if isinstance(content, list) else ():
        _tool_rows(conversation.id, block, exchange_id, position, at, writes)
        if not partial and (call := agent_call(block)):
            offer_agent_call(state, *call, (at, position, conversation.id))


def _tool_rows(conversation_id_: uuid.UUID, block: Any, exchange_id: str, position: int, at: datetime, writes: Writes) -> None:
    """``tool_use`` (and the server and MCP variants) by its id; any block naming a ``tool_use_id`` is a result."""
    if not isinstance(block, dict):
        return
    if str(block.get("type", "")).endswith("tool_use") and isinstance(block.get("id"), str):
        writes.tool_uses.append(
            ToolUseRow(
                conversation_id=conversation_id_,
                tool_use_id=block["id"],
                name=_text(block.get("name")),
                input=content_json(block.get("input")),
                use_exchange_id=exchange_id,
                use_position=position,
                used_at=at,
            )
        )
    elif isinstance(block.get("tool_use_id"), str):
        writes.tool_results.append(
            ToolResultRow(
                conversation_id=conversation_id_,
                tool_use_id=block["tool_use_id"],
                result=content_json(block.get("content")),
                is_error=failed(block),
                result_exchange_id=exchange_id,
                result_position=position,
                result_at=at,
            )
        )


def failed(result: dict[str, Any]) -> bool:
    """A client tool says ``is_error``; a server tool (web search, code execution) answers with an
    ``*_error`` content block instead, e.g. ``web_search_tool_result_error``."""
    content = result.get("content")
    return result.get("is_error") is True or (isinstance(content, dict) and str(content.get("type", "")).endswith("_error"))


# --- sub-agents and the Agent calls that start them ---------------------------------------


def prompt_key(text: str) -> bytes:
    """A sub-agent prompt, as the Agent call gives it and the sub-agent's first message holds it:
    white space around it aside, and NUL as U+FFFD, which is how ``tool_calls`` keeps it
    (`jsonb_safe`), so a state read back from the tables finds the same keys."""
    return digest(text.strip().replace("\x00", "\ufffd").encode("utf-8", "surrogatepass"))


def agent_call(block: Any) -> tuple[str, str] | None:
    """(tool_use id, prompt) of a client ``tool_use`` block of the Agent tool, else None."""
    if not isinstance(block, dict) or block.get("type") != "tool_use" or block.get("name") not in AGENT_TOOLS:
        return None
    tool_use_id, tool_input = block.get("id"), block.get("input")
    prompt = tool_input.get("prompt") if isinstance(tool_input, dict) else None
    return (tool_use_id, prompt) if isinstance(tool_use_id, str) and isinstance(prompt, str) else None


def offer_agent_call(state: SessionState, tool_use_id: str, prompt: str, place: AgentPlace) -> None:
    """A stored Agent call awaits its sub-agent; a copy of one not claimed yet keeps the earliest place."""
    if tool_use_id in state.spawned:
        return
    calls = state.agent_calls.setdefault(prompt_key(prompt), {})
    calls[tool_use_id] = min(calls.get(tool_use_id, place), place)


def _claim_agent_call(state: SessionState, messages: list[Message]) -> tuple[str, uuid.UUID] | None:
    """The earliest unclaimed Agent call whose prompt is a text of the first (user) message:
    its tool_use id, and the conversation it was first stored in."""
    if not messages or messages[0].role != "user":
        return None
    for text in texts(messages[0].content):
        key = prompt_key(text)
        calls = state.agent_calls.get(key, {})
        earliest = min(((place, id_) for id_, place in calls.items() if id_ not in state.spawned), default=None)
        if earliest is not None:
            del calls[earliest[1]]
            if not calls:
                del state.agent_calls[key]
            state.spawned.add(earliest[1])
            return earliest[1], earliest[0][2]
    return None
