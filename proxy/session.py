"""Which session, agent and client an Anthropic request belongs to: pure, so it runs wherever events are built.

A session is the unit winni threads conversations in, and the Kafka key that
keeps its events in order. In the order tried:

- ``X-KGB-Session``: a session the client names for its own work (any
  client; it passes upstream like any header), scoped to the API key;
- ``X-Claude-Code-Session-Id``: Claude Code's session, named again inside
  ``metadata.user_id`` (a JSON string today, ``user_<hash>_account_<uuid>_
  session_<uuid>`` in older clients), which serves when the header is gone;
- any other ``metadata.user_id``: the end user the client says it acts for
  (Anthropic's own use of the field: a uuid, a hash, an opaque id), scoped to
  the API key;
- else the API-key fingerprint and the client name, so one program's calls
  on one key are one session, its unrelated chats conversations of it.

Names a client chose are scoped to its key's fingerprint (two keys naming the
same session are two sessions), trimmed, and replaced by a digest when they
are long or hold control characters (NUL among them, which PostgreSQL text
refuses), so a session key is always a short printable string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from common.senders import claude_user, client_and_version, user_id

SESSION_HEADER = "x-kgb-session"
NAME_LIMIT = 128  # longer names are keyed by their digest


@dataclass(frozen=True)
class Identity:
    session_key: str
    session_source: str
    agent_id: str | None
    parent_agent_id: str | None


def session_name(value: Any) -> str | None:
    """A name as a session key may hold it: trimmed, or a digest of it; None when there is none."""
    if not isinstance(value, str) or not value.strip():
        return None
    name = value.strip()
    if len(name) <= NAME_LIMIT and name.isprintable():
        return name
    return "sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def session_from_metadata(body: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(session id, source) of a Claude Code session named in `metadata.user_id`, in either of its forms."""
    user = claude_user(body)
    session = session_name(user.session_id) if user else None
    return (session, user.form) if user and session else None


def client_name(user_agent: str | None) -> str:
    """`claude-cli/2.1.3 (external, cli)` -> `claude-cli`: the client, not its version."""
    return client_and_version(user_agent)[0] or "unknown"


def scope(key_fingerprint: str | None) -> str:
    """What a session named by the client, or none, is keyed under: its API key, if it sent one."""
    return f"key:{key_fingerprint[:16]}" if key_fingerprint else "anonymous"


def session_of(headers: Headers, body: Mapping[str, Any] | None, key_fingerprint: str | None) -> tuple[str, str]:
    """(session key, source), by the rules of the module docstring."""
    named = session_name(headers.get(SESSION_HEADER))
    if named:
        return f"{scope(key_fingerprint)}:session:{named}", "kgb_header"
    claude = session_name(headers.get("x-claude-code-session-id"))
    if claude:
        return claude, "header"
    found = session_from_metadata(body)
    if found:
        return found
    user = session_name(user_id(body))
    if user:
        return f"{scope(key_fingerprint)}:user:{user}", "metadata_user"
    client = client_name(headers.get("user-agent"))
    return f"{scope(key_fingerprint)}:{client}", "api_key" if key_fingerprint else "anonymous"


class Headers(Protocol):
    """What `identify` reads of headers: a case-insensitive lookup (aiohttp's CIMultiDict, or capture's own)."""

    def get(self, name: str, default: str | None = None, /) -> str | None: ...


def identify(headers: Headers, body: Mapping[str, Any] | None, key_fingerprint: str | None) -> Identity:
    """`headers` must be case-insensitive (aiohttp's CIMultiDict is)."""
    session_key, source = session_of(headers, body, key_fingerprint)
    return Identity(
        session_key=session_key,
        session_source=source,
        agent_id=headers.get("x-claude-code-agent-id") or None,
        parent_agent_id=headers.get("x-claude-code-parent-agent-id") or None,
    )
