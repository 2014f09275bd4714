"""Events too large for one Kafka message, as FRAGMENT events, and back.

The capture worker encodes an exchange event whole; when that is over
`FRAGMENT_BYTES` it publishes the encoded bytes in order as FRAGMENT events of
the same exchange and key instead (`split`), so every body the proxy accepts
reaches the topic whole, whatever the topic's message limit. Consumers join
them back (`Joiner`, used by consumers/source.py) into the encoded event,
which they decode like any other message: no consumer sees a FRAGMENT.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

FRAGMENT_BYTES = 4 * 1024 * 1024
NAMESPACE = uuid.UUID("6b6762c0-f4a9-4e00-8000-667261676d74")
ENVELOPE = (
    "exchange_id",
    "occurred_at",
    "session_key",
    "session_source",
    "agent_id",
    "parent_agent_id",
    "api_key_fingerprint",
    "client",
)


def split(event: dict[str, Any], encoded: bytes, part_bytes: int = FRAGMENT_BYTES) -> list[dict[str, Any]]:
    """The FRAGMENT events carrying `encoded` (the event's whole message) in pieces of at most `part_bytes`;
    ids derived from the event's, so splitting again gives the same events."""
    pieces = [encoded[start : start + part_bytes] for start in range(0, len(encoded), part_bytes)]
    return [
        {key: event[key] for key in ENVELOPE}
        | {
            "event_id": str(uuid.uuid5(NAMESPACE, f"{event['event_id']}/{index}")),
            "kind": "FRAGMENT",
            "redactions": [],
            "request": None,
            "response": None,
            "fragment": {"of_event_id": event["event_id"], "index": index, "count": len(pieces), "data": piece},
        }
        for index, piece in enumerate(pieces)
    ]


@dataclass
class _Pieces:
    count: int
    first_offset: int
    parts: dict[int, bytes] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return len(self.parts) == self.count


class Joiner:
    """FRAGMENT events per partition until each event is whole.

    `add` is idempotent (a batch decoded again after a failed attempt adds the
    same pieces), and a completed event is kept until `settle`, which a consumer
    calls once the batch that completed it is handled and committed. `holding`
    is the offset of the first piece still waiting on each partition: committing
    past it would lose the pieces on a restart.
    """

    def __init__(self) -> None:
        self._waiting: dict[tuple[Hashable, str], _Pieces] = {}

    def add(self, partition: Hashable, offset: int, fragment: dict[str, Any]) -> bytes | None:
        """The whole encoded event once this piece completes it, else None."""
        key = (partition, fragment["of_event_id"])
        pieces = self._waiting.setdefault(key, _Pieces(fragment["count"], offset))
        pieces.first_offset = min(pieces.first_offset, offset)
        pieces.parts[fragment["index"]] = fragment["data"]
        if not pieces.whole:
            return None
        return b"".join(pieces.parts[index] for index in range(pieces.count))

    def holding(self) -> dict[Hashable, int]:
        held: dict[Hashable, int] = {}
        for (partition, _), pieces in self._waiting.items():
            if not pieces.whole:
                held[partition] = min(held.get(partition, pieces.first_offset), pieces.first_offset)
        return held

    def settle(self) -> None:
        self._waiting = {key: pieces for key, pieces in self._waiting.items() if not pieces.whole}
