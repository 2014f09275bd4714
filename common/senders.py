"""Who sent an Anthropic request, as the request itself says: pure, and read on both sides of Kafka.

The proxy keys a session by Claude Code's session id (`proxy.session`); winni
keeps the device, account and client version of each session
(`consumers.winni.thread_rules`). Both read them here, so ``metadata.user_id``
has one parser and a consumer imports nothing of the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# The form of metadata.user_id before Claude Code's JSON: user_<device>_account_<uuid>_session_<uuid>.
_LEGACY_SESSION = re.compile(r"_session_([0-9a-fA-F-]{36})$")
_LEGACY_OWNER = re.compile(r"^user_([0-9a-fA-F]+)_account_([0-9a-fA-F-]*)_session_")
_CLIENT_NAME = re.compile(r"^([^/\s]+)")
_CLIENT_VERSION = re.compile(r"^[^/\s]+/(\S+)")


def user_id(body: Mapping[str, Any] | None) -> str | None:
    """``metadata.user_id`` when it holds more than blanks: Claude Code's own, or the end user another client acts for."""
    metadata = body.get("metadata") if body else None
    value = metadata.get("user_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class ClaudeUser:
    """What Claude Code says of itself in `metadata.user_id`; ``form``: ``metadata_json`` or ``metadata_legacy``.

    ``session_id`` is as sent: the proxy makes it a session key (`proxy.session.session_name`)."""

    form: str
    session_id: str | None
    device_id: str | None
    account_uuid: str | None


def claude_user(body: Mapping[str, Any] | None) -> ClaudeUser | None:
    """`metadata.user_id` read in either of Claude Code's forms; None when it is in neither (another
    client's end user, or nothing)."""
    named = user_id(body)
    if named is None:
        return None
    if named.startswith("{"):
        try:
            parsed = orjson.loads(named)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict):
            return None
        return ClaudeUser(
            "metadata_json",
            _text(parsed.get("session_id")),
            _text(parsed.get("device_id")),
            _text(parsed.get("account_uuid")),
        )
    session, owner = _LEGACY_SESSION.search(named), _LEGACY_OWNER.match(named)
    if not (session or owner):
        return None
    return ClaudeUser(
        "metadata_legacy",
        session[1] if session else None,
        owner[1] if owner else None,
        (owner[2] or None) if owner else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def client_and_version(user_agent: str | None) -> tuple[str | None, str | None]:
    """``claude-cli/2.1.197 (external, cli)`` -> (``claude-cli``, ``2.1.197``)."""
    name = _CLIENT_NAME.match(user_agent or "")
    version = _CLIENT_VERSION.match(user_agent or "")
    return (name[1] if name else None), (version[1] if version else None)
