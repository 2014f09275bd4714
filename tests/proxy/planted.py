"""Secrets of every built-in kind, and the shapes a test plants them in."""

from __future__ import annotations

import orjson

ANTHROPIC_KEY = "sk-ant-api03-" + "A1b2C3d4" * 10 + "-xyzAA"

SECRETS = {
    "anthropic_key": ANTHROPIC_KEY,
    "openai_key": "sk-proj-" + "q" * 40,
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a" * 36,
    "slack_token": "xoxb-1234567890-abcdefghij",
    "google_api_key": "AIza" + "B" * 35,
    "stripe_key": "sk_live_" + "c" * 24,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----",
    "bearer_token": "Bearer abcdefghijklmnopqrstuvwxyz012345",
}


def escaped(text: str) -> str:
    """`text` as a JSON string may spell it: every character a `\\u` escape."""
    return "".join(f"\\u{ord(char):04x}" for char in text)


def sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n".encode() for name, data in events)


def text_delta(text: str) -> tuple[str, dict]:
    return "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
