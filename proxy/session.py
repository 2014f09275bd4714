"""Which session, agent and client an Anthropic request belongs to.

Claude Code names its session in the `X-Claude-Code-Session-Id` header and
again inside `metadata.user_id` (a JSON string today, `user_<hash>_account_
<uuid>_session_<uuid>` in older clients). Other clients name none, so their
session key is derived from the API-key fingerprint and the client name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

_LEGACY_USER_ID = re.compile(r"_session_([0-9a-fA-F-]{36})$")
_CLIENT_NAME = re.compile(r"^([^/\s]+)")


@dataclass(frozen=True)
class Identity:
    session_key: str
    session_source: str
    agent_id: str | None
    parent_agent_id: str | None


def session_from_metadata(body: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(session id, source) from `metadata.user_id`, in either of its two forms."""
    metadata = body.get("metadata") if body else None
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        try:
            parsed = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return None
        session = parsed.get("session_id") if isinstance(parsed, dict) else None
        return (session, "metadata_json") if isinstance(session, str) and session else None
    match = _LEGACY_USER_ID.search(user_id)
    return (match.group(1), "metadata_legacy") if match else None


def client_name(user_agent: str | None) -> str:
    """`claude-cli/2.1.3 (external, cli)` -> `claude-cli`: the client, not its version."""
    match = _CLIENT_NAME.match(user_agent or "")
    return match.group(1) if match else "unknown"


def identify(
    headers: Mapping[str, str], body: Mapping[str, Any] | None, key_fingerprint: str | None
) -> Identity:
    """`headers` must be case-insensitive (aiohttp's CIMultiDict is)."""
    session = headers.get("x-claude-code-session-id")
    found = (session, "header") if session else session_from_metadata(body)
    if found is None:
        client = client_name(headers.get("user-agent"))
        found = (f"key:{key_fingerprint[:16]}:{client}", "api_key") if key_fingerprint else (f"anonymous:{client}", "anonymous")
    return Identity(
        session_key=found[0],
        session_source=found[1],
        agent_id=headers.get("x-claude-code-agent-id") or None,
        parent_agent_id=headers.get("x-claude-code-parent-agent-id") or None,
    )
