"""The relay's appends (proxy/tap.py) read back into events (proxy/assemble.py): no network, no Kafka."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from proxy.assemble import INCOMPLETE, INTERRUPTED, Assembler, Built
from proxy.capture import RedactionPolicy, RequestRecord
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position
from proxy.logwriter import LogSettings, LogWriter
from proxy.redact import BUILTIN_RULES
from proxy.tap import HeaderPolicy, Tap, request_head
from tests.fakes.anthropic import text_stream

API_KEY = "sk-ant-api03-" + "Qq7" * 30 + "-NEVERONDISK"
KEY = b"test-fingerprint-key"


def request(body: bytes = b'{"model":"claude-sonnet-4-5","stream":true,"messages":[]}') -> RequestRecord:
    return RequestRecord(
        method="POST",
        path="/v1/messages",
        query="",
        http_version="1.1",
        headers=[
            ("x-api-key", API_KEY),
            ("Cookie", "session=abc"),
            ("content-type", "application/json"),
            ("X-Claude-Code-Session-Id", "11111111-2222-4333-8444-555555555555"),
        ],
        body=body,
    )


def tap(directory: Path, **log: object) -> Tap:
    return Tap(LogWriter(LogSettings(directory, **log)), HeaderPolicy.of(["x-custom-secret"], KEY))  # type: ignore[arg-type]


def assembled(directory: Path) -> list[Built]:
    assembler = Assembler(RedactionPolicy(BUILTIN_RULES, frozenset(), b""))
    return [built for read in LogReader(directory, Position(0, 0)).poll() for built in assembler.feed(read)]


def test_a_streamed_exchange_comes_back_as_its_two_events(tmp_path: Path) -> None:
    reply = text_stream("hello from the log", deltas=4)
    t = tap(tmp_path)
    exchange = t.request(request())
    exchange.response_head(200, [("content-type", "text/event-stream")])
    for piece in (reply.payload[:7], reply.payload[7:50], reply.payload[50:]):
        exchange.chunk(piece)
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    first, second = assembled(tmp_path)
    assert (first.event["kind"], first.last, second.event["kind"], second.last) == ("REQUEST", False, "RESPONSE", True)
    response = second.event["response"]
    assert response["body"] == reply.payload and response["upstream_complete"] and response["ttfb_ms"] is not None
    assert orjson.loads(response["message"])["content"][0]["text"] == "hello from the log"
    assert first.event["request"]["model"] == "claude-sonnet-4-5" and first.event["api_key_fingerprint"]
    assert first.event["session_key"] == "11111111-2222-4333-8444-555555555555"
    assert first.event["request"]["body_complete"] is True


def test_no_credential_reaches_the_disk(tmp_path: Path) -> None:
    t = tap(tmp_path)
    record = request()
    record.headers.append(("X-Custom-Secret", "hunter2-custom"))
    exchange = t.request(record)
    exchange.response_head(200, [("set-cookie", "token=server-secret")])
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    on_disk = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("segment-"))
    for secret in (API_KEY.encode(), b"session=abc", b"hunter2-custom", b"server-secret"):
        assert secret not in on_disk
    request_event, _ = (built.event for built in assembled(tmp_path))
    assert {"name": "x-api-key", "value": "[REDACTED]"} in request_event["request"]["headers"]
    assert "header:x-api-key" in request_event["redactions"]


def test_event_ids_and_times_are_the_same_however_often_it_is_built(tmp_path: Path) -> None:
    t = tap(tmp_path)
    exchange = t.request(request())
    exchange.response_head(200, [("content-type", "application/json")])
    exchange.chunk(b'{"type":"message","content":[]}')
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    once, again = assembled(tmp_path), assembled(tmp_path)
    assert [b.event for b in once] == [b.event for b in again]
    assert len({b.event["event_id"] for b in once}) == 2


def test_a_large_body_is_appended_in_pieces_and_comes_back_whole(tmp_path: Path) -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 3_000_000}]})
    t = tap(tmp_path)
    t.request(request(body)).end(client_disconnected=False, upstream_complete=False)
    t.writer.close()
    (only,) = assembled(tmp_path)
    assert only.last and only.event["request"]["body"] == body


def test_a_streamed_body_answered_before_it_ended_still_comes_back_whole(tmp_path: Path) -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 2_500_000}]})
    t = tap(tmp_path)
    exchange = t.streaming(request(b""), len(body))
    exchange.body(body[:1000])
    exchange.response_head(200, [("content-type", "application/json")])  # an upstream that answers early
    exchange.body(body[1000:])  # past one log record's size: split
    exchange.body_end()
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    request_event, response = assembled(tmp_path)
    assert request_event.event["request"]["body"] == body and not request_event.last
    assert request_event.event["request"]["body_complete"] is True
    assert response.last and response.event["response"]["status"] == 200


def test_an_exchange_ending_before_its_body_did_keeps_what_came_flagged_and_drops_later_pieces(tmp_path: Path) -> None:
    t = tap(tmp_path)
    exchange = t.streaming(request(b""), 10_000)
    exchange.body(b"a" * 3000)
    exchange.response_head(413, [("content-type", "application/json")])  # answered, the body still coming
    exchange.chunk(b'{"type":"error","error":{"type":"request_too_large","message":"no"}}')
    exchange.end(client_disconnected=False, upstream_complete=True)
    exchange.body(b"b" * 3000)  # the upstream request's writer read one more piece: not in the event
    exchange.body_end()
    t.writer.close()
    request_event, response = assembled(tmp_path)
    assert request_event.event["request"]["body"] == b"a" * 3000
    assert request_event.event["request"]["body_complete"] is False
    recorded = response.event["response"]
    assert (recorded["status"], recorded["error_type"]) == (413, "capture_incomplete")
    assert "before its request body" in recorded["error_message"] and b"request_too_large" in recorded["body"]


def test_a_body_discarded_for_its_size_is_recorded_empty(tmp_path: Path) -> None:
    t = tap(tmp_path)
    exchange = t.streaming(request(b""), None)
    exchange.body(b"z" * 5000)
    exchange.body_end(discarded=True)
    exchange.response_head(413, [("Content-Type", "application/json")])
    exchange.end(client_disconnected=False, upstream_complete=False, proxy_error=("request_too_large", "too large"))
    t.writer.close()
    request_event, response = assembled(tmp_path)
    assert request_event.event["request"]["body"] == b""
    assert request_event.event["request"]["body_complete"] is False
    assert response.event["response"]["error_type"] == "request_too_large"


def test_a_log_from_before_request_end_records_builds_the_request_at_its_response_head(tmp_path: Path) -> None:
    t = tap(tmp_path)
    record = request()
    exchange = uuid.UUID(record.exchange_id).bytes
    head = orjson.loads(request_head(record, t.policy))
    del head["body_end"]
    t.writer.append(Kind.REQUEST_HEAD, exchange, orjson.dumps(head))  # as the relay wrote it before REQUEST_END
    t.writer.append(Kind.REQUEST_BODY, exchange, record.body)
    t.writer.append(Kind.RESPONSE_HEAD, exchange, orjson.dumps({"status": 200, "headers": []}))
    t.writer.close()
    (request_event,) = assembled(tmp_path)
    assert request_event.event["request"]["body"] == request().body
    assert request_event.event["request"]["body_complete"] is True, "such a log says nothing of a cut body"


def test_an_exchange_cut_by_a_proxy_kill_is_closed_when_the_next_proxy_starts(tmp_path: Path) -> None:
    killed = tap(tmp_path)
    exchange = killed.request(request())
    exchange.response_head(200, [("content-type", "text/event-stream")])
    exchange.chunk(text_stream("cut short", deltas=2).payload[:120])
    killed.writer.close()  # no end record: the process died here
    assert [b.event["kind"] for b in assembled(tmp_path)] == ["REQUEST"]
    tap(tmp_path).writer.close()  # the restarted proxy's writer-start record
    _, response = assembled(tmp_path)
    assert response.last and response.event["response"]["error_type"] == INTERRUPTED[0]
    assert not response.event["response"]["upstream_complete"]


def test_records_of_an_exchange_begun_before_the_checkpoint_are_skipped(tmp_path: Path) -> None:
    t = tap(tmp_path)
    exchange = t.request(request())
    exchange.response_head(200, [])
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    reads = LogReader(tmp_path, Position(0, 0)).poll()
    assembler = Assembler(RedactionPolicy(BUILTIN_RULES, frozenset(), b""))
    after_head = [built for read in reads[2:] for built in assembler.feed(read)]
    assert after_head == [] and assembler.open_count == 0


def test_a_full_log_relays_but_marks_what_it_could_not_keep(tmp_path: Path) -> None:
    t = tap(tmp_path, max_bytes=4096)
    exchange = t.request(request())
    exchange.response_head(200, [("content-type", "application/json")])
    exchange.chunk(b"x" * 8192)
    exchange.end(client_disconnected=False, upstream_complete=True)
    skipped = t.request(request(b"y" * 8192))
    skipped.response_head(200, [])
    skipped.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    assert t.writer.refused_records == 2, "the cut response, and the whole of the request that did not fit"
    request_event, response = assembled(tmp_path)
    assert response.event["response"]["error_type"] == INCOMPLETE[0] and response.event["response"]["body"] == b""
    assert request_event.event["exchange_id"] == str(uuid.UUID(bytes=exchange.id))


def test_a_body_the_full_log_cut_short_is_flagged_not_whole(tmp_path: Path) -> None:
    t = tap(tmp_path, max_bytes=4096)
    exchange = t.streaming(request(b""), None)  # no declared length: admitted with its head only
    exchange.body(b"a" * 1000)
    exchange.body(b"b" * 8192)  # the log is full: this piece, the REQUEST_END and the response are refused
    exchange.body_end()
    exchange.response_head(200, [("content-type", "application/json")])
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    (only,) = assembled(tmp_path)
    assert only.last and only.event["request"]["body"] == b"a" * 1000
    assert only.event["request"]["body_complete"] is False


def test_a_body_whose_relay_died_before_its_end_is_flagged_not_whole(tmp_path: Path) -> None:
    killed = tap(tmp_path)
    exchange = killed.streaming(request(b""), 10_000)
    exchange.body(b"c" * 3000)
    killed.writer.close()  # no REQUEST_END, no end record: the process died here
    assert assembled(tmp_path) == [], "the body may still grow: no request event yet"
    tap(tmp_path).writer.close()  # the restarted proxy's writer-start record
    (only,) = assembled(tmp_path)
    assert only.last and only.event["request"]["body"] == b"c" * 3000
    assert only.event["request"]["body_complete"] is False


def test_a_whole_body_answered_by_a_full_log_is_still_whole(tmp_path: Path) -> None:
    t = tap(tmp_path, max_bytes=4096)
    exchange = t.request(request())
    exchange.response_head(200, [("content-type", "application/json")])
    exchange.chunk(b"x" * 8192)  # the response is what the full log cut, not the request
    exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    request_event, response = assembled(tmp_path)
    assert response.event["response"]["error_type"] == INCOMPLETE[0]
    assert request_event.event["request"]["body_complete"] is True
