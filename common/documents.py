"""Reading JSON that may not be JSON: request and response bodies are whatever the client or upstream sent."""

from __future__ import annotations

from typing import Any

import orjson


def parse_json(raw: bytes | str | None) -> Any:
    """The parsed document, or None for an empty or non-JSON body: callers keep such bodies raw, never fail on them."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
