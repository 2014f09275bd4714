"""The worker's side of a saved open stream (proxy/worker.py `Session`): what it saves, when, and what a
restarted session makes of it; and which segments a checkpoint save deletes. A real capture log on disk; the sessions' Kafka links are never opened
(events are fed to the assemblers and none is sent, so none is in flight), the end-to-end run with Kafka
and a killed worker is tests/e2e/test_mcp_held_stream.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from common.outages import KAFKA_WATCH
from proxy import checkpoint
from proxy.capture import RedactionPolicy, RequestRecord
from proxy.logreader import Position
from proxy.logwriter import LogWriter, segments
from proxy.redact import BUILTIN_RULES
from proxy.settings import CaptureSettings
from proxy.tap import Exchange, HeaderPolicy, Tap
from proxy.worker import Session
from proxy.workerstats import WorkerFigures
from tests.proxy.test_mcp_assemble import ROUTE, SESSION, notification

POLICY = RedactionPolicy(BUILTIN_RULES, frozenset(), b"")
SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Mcp-Session-Id", SESSION)]


def session(settings: CaptureSettings) -> Session:
    return Session(settings, POLICY, None, WorkerFigures(), KAFKA_WATCH.reporter)


def sse(n: int) -> bytes:
    return b"id: %d\ndata: " % n + notification(n) + b"\n\n"


def filler(t: Tap, count: int) -> None:
    """Finished API exchanges, enough to move the log on a few segments."""
    for _ in range(count):
        exchange = t.request(RequestRecord("POST", "/v1/messages", "", "1.1", [], b"x" * 500))
        exchange.response_head(200, [("Content-Type", "application/json")])
        exchange.chunk(b"{}")
        exchange.end(client_disconnected=False, upstream_complete=True)


def take(s: Session, after_each: Any = None) -> list[dict[str, Any]]:
    """What the session's assemblers make of the log from its checkpoint on: the stream's events."""
    made = []
    while reads := s.reader.poll(1):  # a record at a time, as if the relay were appending them now
        for read in reads:
            for assembler in s.assemblers:
                made += [b.event for b in assembler.feed(read) if b.event.get("transport") == "STREAMABLE_HTTP"]
        if after_each is not None:
            after_each()
    return made


def test_a_restored_stream_goes_on_and_is_saved_again_only_once_reading_passes_its_saved_position(tmp_path: Path) -> None:
    """An API exchange still open holds the checkpoint before the stream's saved position: the restarted
    session reads those records again, skips the stream's (in its state already), never saves a state
    older than the one it restored, and numbers the stream's later events on from it."""
    settings = CaptureSettings.from_env({"KGB_SPOOL_DIR": str(tmp_path), "KGB_CAPTURE_SEGMENT_BYTES": "4096"})
    t = Tap(LogWriter(settings.log()), HeaderPolicy.of([], b"k"))
    get = RequestRecord("GET", "/mcp/weather", "", "1.1", [("Mcp-Session-Id", SESSION)], b"")
    stream: Exchange = t.request(get, ROUTE.head())
    stream.response_head(200, SSE_HEADERS)
    stream.chunk(sse(0))
    t.request(RequestRecord("POST", "/v1/messages", "", "1.1", [], b"{}"))  # an API exchange left open throughout
    filler(t, 12)
    stream.chunk(sse(1)[:30])  # an event half received when the first worker saves

    first = session(settings)
    made = take(first)
    first._save()
    position, held = checkpoint.load_open(tmp_path)
    ((exchange, saved),) = held.items()
    assert saved.assembler == "mcp" and saved.through == first.reader.position
    assert position < saved.through and position.seq == 0, "the open API exchange holds the checkpoint at its head"
    assert [start for _, start in first.assemblers[1].open_starts()] < [position], "past the stream's head"
    first.reader.close()
    first.watch.close()

    stream.chunk(sse(1)[30:] + sse(2))
    stream.end(client_disconnected=True, upstream_complete=False)
    t.writer.close()

    second = session(settings)
    assert second.reader.position == position and second.assemblers[1].open_count == 1

    def never_older() -> None:
        second._hold_open()
        assert exchange not in second.held or second.held[exchange].through >= saved.through

    made += take(second, never_older)
    second.reader.close()
    second.watch.close()
    assert [e["sequence"] for e in made] == list(range(len(made))), "one numbering across both sessions, nothing twice"
    notes = [orjson.loads(e["payload"])["params"]["data"] for e in made if e["kind"] == "MESSAGE"]
    assert notes == [f"café {n}" for n in range(3)]
    assert made[-1]["kind"] == "EXCHANGE" and made[-1]["http"]["response_body_size"] == len(sse(0) + sse(1) + sse(2))


def test_a_save_deletes_segments_only_when_the_checkpoint_leaves_one_and_never_the_one_it_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker saves every 0.2 s while publishing; a save within the checkpoint's segment lists and deletes
    nothing (a directory scan, and a 64 MiB unlink, per segment, not per save). An exchange left open holds the
    checkpoint, and so its segment, at its head."""
    scans: list[Position] = []
    delete = checkpoint.delete_published
    monkeypatch.setattr(checkpoint, "delete_published", lambda path, at: scans.append(at) or delete(path, at))
    settings = CaptureSettings.from_env({"KGB_SPOOL_DIR": str(tmp_path), "KGB_CAPTURE_SEGMENT_BYTES": "4096"})
    t = Tap(LogWriter(settings.log()), HeaderPolicy.of([], b"k"))
    s = session(settings)

    def published(count: int) -> Position:
        """`count` exchanges appended, read and assembled (none in flight), then a save; the checkpoint."""
        filler(t, count)
        while reads := s.reader.poll():
            for read in reads:
                for assembler in s.assemblers:
                    list(assembler.feed(read))
        s._save()
        return checkpoint.load(tmp_path)

    assert published(1).seq == published(1).seq == 0 and scans == [], "within segment 0: no scan"
    moved = published(12)
    assert moved.seq > 0 and scans == [moved]
    assert segments(tmp_path)[0][0] == moved.seq, "every segment before it deleted, its own kept"
    t.request(RequestRecord("POST", "/v1/messages", "", "1.1", [], b"{}"))  # left open, at the checkpoint
    assert published(12) == moved and scans == [moved], "the open exchange holds the checkpoint at its head"
    assert segments(tmp_path)[0][0] == moved.seq and len(segments(tmp_path)) > 2
    s.reader.close()
    s.watch.close()
    t.writer.close()
