"""The worker's copy of a response body: decoded as it comes, an event stream reassembled at its end."""

from __future__ import annotations

import gzip
import zlib

from proxy.capture import Ending, RequestRecord, ResponseRecord, ResponseRecorder
from tests.fakes.anthropic import text_stream

COMPLETE = Ending(client_disconnected=False, upstream_complete=True, ttfb_ms=None, duration_ms=0.0, ended_at=0)
TEXT = "Grüße from the fake — every delta a few characters, some of them two or three bytes long. "
STREAM = text_stream(TEXT, deltas=12).payload


def recorded(chunks: list[bytes], *, encoding: str | None = None, sse: bool = True) -> ResponseRecord:
    headers = [("content-type", "text/event-stream" if sse else "application/json")]
    headers += [("content-encoding", encoding)] if encoding else []
    recorder = ResponseRecorder(RequestRecord("POST", "/v1/messages", "", "1.1", [], b""), 200, headers)
    for chunk in chunks:
        recorder.feed(chunk)
    return recorder.finish(COMPLETE)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def message_text(record: ResponseRecord) -> str:
    assert record.assembled is not None and record.assembled.message is not None
    return "".join(block["text"] for block in record.assembled.message["content"])


def test_a_stream_cut_anywhere_even_inside_a_character_is_the_whole_message() -> None:
    for size in (1, 2, 7, 64, len(STREAM)):
        record = recorded(pieces(STREAM, size))
        assert record.body == STREAM
        assert message_text(record) == TEXT
        assert record.assembled is not None and record.assembled.complete


def test_a_gzip_stream_is_decoded_and_reassembled() -> None:
    compressor = zlib.compressobj(wbits=31)
    chunks = [compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH) for piece in pieces(STREAM, 50)]
    record = recorded([*chunks, compressor.flush()], encoding="gzip")
    assert record.body == STREAM
    assert message_text(record) == TEXT


def test_a_body_that_stops_decoding_is_kept_as_sent_its_stream_reassembled_as_far_as_it_decoded() -> None:
    cut = STREAM.index(b"\n\n", STREAM.index(b"content_block_delta")) + 2  # message_start, the block's start, one delta
    compressor = zlib.compressobj(wbits=31)
    chunks = [compressor.compress(STREAM[:cut]) + compressor.flush(zlib.Z_SYNC_FLUSH), b"\x00no deflate data\xff" * 4]
    record = recorded(chunks, encoding="gzip")
    assert record.body == b"".join(chunks)
    assert record.assembled is not None and not record.assembled.complete
    assert TEXT.startswith(message_text(record)) and message_text(record)


def test_an_unknown_coding_keeps_the_body_as_sent_and_reassembles_nothing() -> None:
    body = gzip.compress(STREAM)
    record = recorded([body], encoding="compress")
    assert record.body == body
    assert record.assembled is not None and record.assembled.message is None


def test_a_json_body_is_joined_and_has_nothing_reassembled() -> None:
    record = recorded([b'{"type":', b'"message"}'], sse=False)
    assert record.body == b'{"type":"message"}'
    assert record.assembled is None
