"""Request bodies as the conversation stage reads them: parsed once, made Python objects only where needed.

Claude Code resends the whole history and ~80 KB of system prompt and tools on
every request, and the stage needs little of it as Python objects: the messages
and parts it has not seen before, and the small rest of the body. Parsing every
body in full with orjson (and freeing it) was most of winni's CPU. simdjson
parses a body into its own buffers instead, and gives the minified JSON of any
part of it (``mini``) without making Python objects: each message and part is
kept as those bytes (`Sent`), known by them (`sent_key`), and parsed again
(`Sent.value`) only when its key is new or it is stored.

The values, and so every hash and row, are those orjson gives (`parse_json`):
minified JSON parses back to the value it was made from; bodies simdjson refuses
or reads otherwise (integers beyond 64 bits, a UTF-8 byte order mark, a field
named twice, of which orjson keeps the last) are parsed by orjson; anything but
an object stays what `parse_json` makes of it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
import simdjson

from common.documents import parse_json

# The request fields that are the same request after request, stored once each in request_parts.
PART_FIELDS = ("system", "tools")
# Distinct system and tools values one session remembers (`part_hashes`); more start the memory afresh.
PARTS_REMEMBERED = 16
_BOM = b"\xef\xbb\xbf"  # simdjson skips it, orjson refuses the body
_PROXIES = (simdjson.Object, simdjson.Array)

SentKey = tuple[int, int]  # see `sent_key`


def sent_key(data: bytes) -> SentKey:
    """A value as sent, by its minified JSON: its built-in hash (SipHash, ~10x faster than blake2b)
    and length. Equal bytes are an equal value; a false match needs a 64-bit collision between
    two values of one session, far rarer than anything else that can go wrong."""
    return hash(data), len(data)


@dataclass(frozen=True, slots=True)
class Sent:
    """A message or a part as sent, as minified JSON (simdjson's or orjson's: either parses back to the value)."""

    data: bytes
    key: SentKey

    @classmethod
    def of(cls, data: bytes) -> Sent:
        return cls(data, sent_key(data))

    def value(self) -> Any:
        return orjson.loads(self.data)


def plain(value: Any) -> Any:
    """A value that may still be `Sent`, as Python objects."""
    return value.value() if isinstance(value, Sent) else value


@dataclass(frozen=True, slots=True)
class Body:
    """A request body that is a JSON object.

    ``fields``: its fields but ``messages`` and `PART_FIELDS`, plain, in the body's
    order; ``messages``: each message as sent, or None when it has no ``messages``
    list; ``parts``: each of `PART_FIELDS` it has.
    """

    fields: dict[str, Any]
    messages: list[Sent] | None
    parts: dict[str, Sent]


def read_body(raw: bytes | None, parser: simdjson.Parser) -> Any:
    """A request body: a `Body` for a JSON object, else what `parse_json` gives (None when not JSON).

    ``parser`` is reused from body to body: nothing read from one document outlives this call.
    """
    if not raw or raw.startswith(_BOM):
        return parse_json(raw)
    try:
        doc = parser.parse(raw)
    except (ValueError, RuntimeError):  # not JSON, or JSON simdjson cannot hold (integers beyond 64 bits)
        return as_body(parse_json(raw))
    if not isinstance(doc, simdjson.Object):
        return _python(doc)
    names = list(doc.keys())
    if len(set(names)) < len(names):
        return as_body(parse_json(raw))
    messages = doc.get("messages", None)
    return Body(
        {name: _python(doc[name]) for name in names if name != "messages" and name not in PART_FIELDS},
        [Sent.of(_mini(m)) for m in messages] if isinstance(messages, simdjson.Array) else None,
        {name: Sent.of(_mini(doc[name])) for name in PART_FIELDS if name in doc},
    )


def as_body(parsed: Any) -> Any:
    """A document parsed by orjson as `read_body` gives it: a JSON object becomes a `Body`."""
    if not isinstance(parsed, dict):
        return parsed
    messages = parsed.get("messages")
    return Body(
        {name: value for name, value in parsed.items() if name != "messages" and name not in PART_FIELDS},
        [Sent.of(orjson.dumps(m)) for m in messages] if isinstance(messages, list) else None,
        {name: Sent.of(orjson.dumps(parsed[name])) for name in PART_FIELDS if name in parsed},
    )


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _mini(value: Any) -> bytes:
    if not isinstance(value, _PROXIES):
        return orjson.dumps(value)
    mini = value.mini  # bytes today; str in pysimdjson's type stub and older releases
    return mini if isinstance(mini, bytes) else mini.encode()


NUL_ESCAPE = b"\\u0000"  # jsonb refuses it: a body holding one is stored whole, as text
# A \u0000 escape not itself escaped: preceded by an even number of backslashes.
_NUL_ESCAPE_TEXT = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def jsonb_safe(text: str | None) -> str | None:
    """JSON text with ``\\u0000`` escapes, which jsonb refuses, replaced by ``\\ufffd``."""
    if text is None or "\\u0000" not in text:
        return text
    return _NUL_ESCAPE_TEXT.sub(r"\1\\ufffd", text)


def sent_escape_nul(body: Body, clean: set[SentKey]) -> bool:
    """Whether a message or a part of ``body`` holds a ``\\u0000`` escape, each scanned once:
    ``clean`` (the keys of values seen without one) is read and filled. A history is resent on
    every request, and scanning all of it each time cost as much as reading it."""
    for sent in (*(body.messages or ()), *body.parts.values()):
        if sent.key not in clean:
            if NUL_ESCAPE in sent.data:
                return True
            clean.add(sent.key)
    return False


def part_json(value: Any) -> bytes:
    """Content-addressed by the JSON with sorted keys, so the same system prompt is one ``request_parts`` row."""
    return orjson.dumps(plain(value), option=orjson.OPT_SORT_KEYS)


def part_hash(value: Any) -> bytes:
    return hashlib.blake2b(part_json(value), digest_size=16).digest()


def part_hashes(body: Any, known: dict[SentKey, bytes] | None = None) -> dict[str, bytes]:
    """The `part_hash` of each of the `PART_FIELDS` of ``body`` (a `Body`, or a plain JSON object).

    ``known`` (value as sent -> hash, one per session) is read and filled like the
    message hashes: a value sent before costs a fast keyed hash of its minified bytes
    instead of making it Python, a serialisation with sorted keys and blake2b of ~80 KB.
    Without it each is serialised and hashed in full.
    """
    if known is None:
        return {name: part_hash(sent) for name, sent in as_body(body).parts.items()}
    out = {}
    for name, sent in as_body(body).parts.items():
        hash_ = known.get(sent.key)
        if hash_ is None:
            if len(known) >= PARTS_REMEMBERED:
                known.clear()
            hash_ = known[sent.key] = part_hash(sent)
        out[name] = hash_
    return out
