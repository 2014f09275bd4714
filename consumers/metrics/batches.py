"""Message Batches results: the requests a downloaded results file bills, at the batch rate: pure.

A batch's requests are not exchanges the proxy sees; what it sees is the
download of their results (``GET /v1/messages/batches/{id}/results``), a JSONL
body of one ``{"custom_id": ..., "result": {"type": "succeeded", "message": ...}}``
per request. Each succeeded message is billed once, at the table's batch
multiplier, however many times the file is downloaded: it is keyed by its
message id (else its custom id and its line), and the store counts only the
ones it did not hold yet. Errored, canceled and expired requests bill nothing.
They are recognised by the body alone, since the response half does not carry
the path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.metrics.billing import Usage, text, usage_of
from consumers.metrics.rollup import content_blocks

_RESULTS = re.compile(rb"\A\s*\{\s*\"custom_id\"\s*:")


@dataclass(frozen=True, slots=True)
class BatchItem:
    item_id: str
    custom_id: str | None
    model: str | None
    usage: Usage
    stop_reason: str | None
    blocks: Mapping[str, int]


def is_results(body: bytes) -> bool:
    return _RESULTS.match(body[:256]) is not None


def batch_items(body: bytes) -> list[BatchItem]:
    """The succeeded requests of a results file, each once; lines that are not results are skipped."""
    items: dict[str, BatchItem] = {}
    for line in body.splitlines():
        item = _item(line)
        if item is not None:
            items.setdefault(item.item_id, item)
    return list(items.values())


def _item(line: bytes) -> BatchItem | None:
    try:
        result = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    outcome = result.get("result") if isinstance(result, dict) else None
    message = outcome.get("message") if isinstance(outcome, dict) and outcome.get("type") == "succeeded" else None
    if not isinstance(message, dict):
        return None
    custom_id = text(result.get("custom_id"))
    return BatchItem(
        item_id=text(message.get("id")) or f"{custom_id}:{hashlib.blake2b(line, digest_size=16).hexdigest()}",
        custom_id=custom_id,
        model=text(message.get("model")),
        usage=usage_of(message.get("usage")),
        stop_reason=text(message.get("stop_reason")),
        blocks=content_blocks(message),
    )


def is_batch_download(response: Mapping[str, Any]) -> bool:
    """A response event's record that carries a results file."""
    return response["status"] == 200 and is_results(response["body"])
