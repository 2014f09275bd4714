"""The Streamable HTTP relay's appends (proxy/tap.py) read back into kgb.mcp events (proxy/mcp/assemble.py):
a real capture log on disk, no network, no Kafka."""

from __future__ import annotations

import gzip
import zlib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import brotli
import orjson
import pytest
import zstandard

from common.jsonrpc import parts_of
from proxy.assemble import INTERRUPTED, Assembler, Built
from proxy.capture import RedactionPolicy, RequestRecord, uuid_text
from proxy.logformat import Kind
from proxy.logreader import LogReader, Position, Read
from proxy.logwriter import LogSettings, LogWriter
from proxy.mcp import events
from proxy.mcp.assemble import McpAssembler, Route
from proxy.mcp.http import LogCopy, stream_decoder
from proxy.redact import BUILTIN_RULES, fingerprint, redact_json
from proxy.tap import Exchange, HeaderPolicy, Tap
from schemas.codec import MCP, single_object_encoder

TOKEN = "sk-ant-api03-" + "Zz9" * 30 + "-NEVERONDISK"
KEY = b"test-fingerprint-key"
SESSION = "mcp-session-0f3a"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "sunny"}], "isError": False}}
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
SSE = (
    b"id: s1:0\ndata:\n\nid: s1:1\nevent: message\ndata: "
    + orjson.dumps(PROGRESS)
    + b"\n\nid: s1:2\ndata: "
    + orjson.dumps(RESULT)
    + b"\n\n"
)
ROUTE = Route("weather", "http://127.0.0.1:9/mcp", True, "127.0.0.1")


def request(body: Any = CALL, *, session: str | None = SESSION, token: str = TOKEN, version: str = "2025-11-25") -> RequestRecord:
    headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"), ("User-Agent", "claude-code/2.1")]
    headers += [("MCP-Protocol-Version", version)] + ([("Mcp-Session-Id", session)] if session else [])
    return RequestRecord("POST", "/mcp/weather", "", "1.1", headers, orjson.dumps(body) if body is not None else b"")


def tap(directory: Path) -> Tap:
    return Tap(LogWriter(LogSettings(directory)), HeaderPolicy.of([], KEY))


def relayed(t: Tap, record: RequestRecord, content_type: str, chunks: list[bytes], route: Route = ROUTE, **end: Any) -> Exchange:
    """What proxy/mcp/http.py appends for one request answered with `chunks`."""
    exchange = t.request(record, route.head())
    exchange.response_head(200, [("Content-Type", content_type), ("Mcp-Session-Id", SESSION)])
    for chunk in chunks:
        exchange.chunk(chunk)
    exchange.end(**({"client_disconnected": False, "upstream_complete": True} | end))
    return exchange


def reads(directory: Path) -> list[Read]:
    return LogReader(directory, Position(0, 0)).poll()


def assembled(directory: Path) -> list[Built]:
    assembler = McpAssembler(RedactionPolicy(BUILTIN_RULES, frozenset(), b""))
    return [built for read in reads(directory) for built in assembler.feed(read)]


def test_a_json_answer_is_its_request_message_its_answer_message_and_its_exchange(tmp_path: Path) -> None:
    t = tap(tmp_path)
    exchange = relayed(t, request(), "application/json", [orjson.dumps(RESULT)[:20], orjson.dumps(RESULT)[20:]])
    t.writer.close()
    built = assembled(tmp_path)
    kinds = [(b.event["kind"], b.event.get("direction"), b.event["sequence"]) for b in built]
    assert kinds == [("MESSAGE", "CLIENT_TO_UPSTREAM", 0), ("MESSAGE", "UPSTREAM_TO_CLIENT", 1), ("EXCHANGE", None, 2)]
    assert [b.last for b in built] == [False, False, True] and {b.schema for b in built} == {MCP}
    request_message, answer, summary = (b.event for b in built)
    assert orjson.loads(request_message["payload"]) == CALL and orjson.loads(answer["payload"]) == RESULT
    assert request_message["jsonrpc"][0]["method"] == "tools/call" and answer["jsonrpc"][0]["id"] == "7"
    assert {e["connection_id"] for e in (request_message, answer, summary)} == {exchange.label}
    assert {e["session_key"] for e in (request_message, answer, summary)} == {SESSION}
    assert summary["transport"] == "STREAMABLE_HTTP" and summary["upstream"] == "weather"
    assert summary["http"]["status"] == 200 and summary["http"]["upstream_complete"]
    assert summary["http"]["response_body_size"] == len(orjson.dumps(RESULT))
    assert {"name": "Authorization", "value": "[REDACTED]"} in summary["http"]["request_headers"]
    assert summary["client_address"] == "127.0.0.1" and summary["upstream_url"] == ROUTE.upstream_url


def test_the_events_fit_the_schema_and_the_token_never_reaches_the_log(tmp_path: Path) -> None:
    t = tap(tmp_path)
    relayed(t, request(), "application/json", [orjson.dumps(RESULT)])
    t.writer.close()
    encoder = single_object_encoder(MCP)
    assert all(encoder.encode(b.event) for b in assembled(tmp_path))
    assert not any(TOKEN.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())


def test_the_same_records_make_the_same_events(tmp_path: Path) -> None:
    """A worker that restarts before its checkpoint moved sends duplicates consumers drop, not new events."""
    t = tap(tmp_path)
    relayed(t, request(), "text/event-stream", [SSE])
    t.writer.close()
    first, again = assembled(tmp_path), assembled(tmp_path)
    assert [b.event for b in first] == [b.event for b in again]
    assert len({b.event["event_id"] for b in first}) == len(first)


def test_each_sse_event_is_a_message_when_the_chunk_that_completes_it_arrives(tmp_path: Path) -> None:
    t = tap(tmp_path)
    cut = SSE.index(b"id: s1:2") + 5  # the result's event split mid-line
    relayed(t, request(), "text/event-stream", [SSE[:cut], SSE[cut:]])
    t.writer.close()
    assembler = McpAssembler(RedactionPolicy(BUILTIN_RULES, frozenset(), b""))
    per_record = [(read.record.kind.name, [b.event["kind"] for b in assembler.feed(read)]) for read in reads(tmp_path)]
    assert per_record[:4] == [("WRITER_START", []), ("MCP_REQUEST_HEAD", []), ("REQUEST_BODY", []), ("REQUEST_END", [])]
    assert per_record[4:] == [
        ("RESPONSE_HEAD", ["MESSAGE"]),  # the request's message, once the session is known
        ("RESPONSE_CHUNK", ["MESSAGE"]),  # the progress notification; the priming event (no data) is none
        ("RESPONSE_CHUNK", ["MESSAGE"]),  # the result, completed by the second chunk
        ("END", ["EXCHANGE"]),
    ]
    messages = [b.event for b in assembled(tmp_path) if b.event.get("direction") == "UPSTREAM_TO_CLIENT"]
    assert [m["sse"]["id"] for m in messages] == ["s1:1", "s1:2"]
    assert [orjson.loads(m["payload"]) for m in messages] == [PROGRESS, RESULT]
    assert messages[0]["mcp_headers"] == [{"name": "Mcp-Session-Id", "value": SESSION}]


def test_without_a_session_id_the_session_is_the_client_of_the_day_keyed_by_its_credentials_fingerprint(
    tmp_path: Path,
) -> None:
    t = tap(tmp_path)
    for token in (TOKEN, TOKEN + "-other"):
        exchange = t.request(request(session=None, token=token), ROUTE.head())
        exchange.response_head(200, [("Content-Type", "application/json")])
        exchange.chunk(orjson.dumps(RESULT))
        exchange.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    summaries = [b.event for b in assembled(tmp_path) if b.event["kind"] == "EXCHANGE"]
    day = datetime.fromtimestamp(summaries[0]["http"]["started_at"] / 1e6, UTC).date().isoformat()
    expected = events.stateless_key("weather", day, "127.0.0.1", "claude-code/2.1", fingerprint(TOKEN, KEY))
    assert summaries[0]["session_key"] == expected and summaries[0]["mcp_session_id"] is None
    assert summaries[1]["session_key"].startswith("stateless:") and summaries[1]["session_key"] != expected


def test_the_protocol_version_follows_the_header_then_what_initialize_negotiates(tmp_path: Path) -> None:
    t = tap(tmp_path)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-06-18", "serverInfo": {"name": "w"}}}
    relayed(t, request(initialize, session=None, version="2025-11-25"), "application/json", [orjson.dumps(answer)])
    t.writer.close()
    assert [b.event["protocol_version"] for b in assembled(tmp_path)] == ["2025-11-25", "2025-06-18", "2025-06-18"]


def test_oauth_metadata_is_an_exchange_only(tmp_path: Path) -> None:
    t = tap(tmp_path)
    metadata = Route("weather", ROUTE.upstream_url, False, None)
    relayed(t, request(None), "application/json", [b'{"resource":"http://127.0.0.1:9000/mcp/weather"}'], route=metadata)
    t.writer.close()
    (only,) = assembled(tmp_path)
    assert only.event["kind"] == "EXCHANGE" and only.last and only.event["sequence"] == 0


def test_the_relays_own_failure_is_recorded_with_its_kind(tmp_path: Path) -> None:
    t = tap(tmp_path)
    body = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32000,"message":"unknown"}}'
    exchange = t.request(request(), ROUTE.head())
    exchange.response_head(404, [("Content-Type", "application/json")])
    exchange.chunk(body)
    exchange.end(client_disconnected=False, upstream_complete=False, proxy_error=("unknown_server", "not on the list"))
    t.writer.close()
    *messages, summary = (b.event for b in assembled(tmp_path))
    assert [m["payload"] for m in messages] == [orjson.dumps(CALL), body]
    assert (summary["error_type"], summary["error_message"], summary["http"]["status"]) == (
        "unknown_server",
        "not on the list",
        404,
    )


def test_a_request_cut_by_a_relay_kill_is_closed_when_the_next_relay_starts(tmp_path: Path) -> None:
    killed = tap(tmp_path)
    exchange = killed.request(request(), ROUTE.head())
    exchange.response_head(200, [("Content-Type", "text/event-stream")])
    exchange.chunk(SSE[: SSE.index(b"id: s1:2")])
    killed.writer.close()  # no end record: the process died here
    assert [b.event["kind"] for b in assembled(tmp_path)] == ["MESSAGE", "MESSAGE"]
    tap(tmp_path).writer.close()  # the restarted relay's writer-start record
    *_, summary = assembled(tmp_path)
    assert summary.last and summary.event["error_type"] == INTERRUPTED[0]
    assert not summary.event["http"]["upstream_complete"]


def test_each_assembler_takes_only_its_own_exchanges(tmp_path: Path) -> None:
    t = tap(tmp_path)
    relayed(t, request(), "application/json", [orjson.dumps(RESULT)])
    api = t.request(RequestRecord("POST", "/v1/messages", "", "1.1", [("x-api-key", TOKEN)], b"{}"))
    api.response_head(200, [("content-type", "application/json")])
    api.chunk(b'{"type":"message"}')
    api.end(client_disconnected=False, upstream_complete=True)
    t.writer.close()
    policy = RedactionPolicy(BUILTIN_RULES, frozenset(), b"")
    mcp, exchanges = McpAssembler(policy), Assembler(policy)
    both = [(b.schema, b.exchange) for read in reads(tmp_path) for a in (mcp, exchanges) for b in a.feed(read)]
    assert [schema for schema, _ in both] == ["mcp", "mcp", "mcp", "exchange", "exchange"]
    assert {exchange for schema, exchange in both if schema == "exchange"} == {uuid.UUID(api.label).bytes}
    assert mcp.open_count == exchanges.open_count == 0


# --- an open stream's state, saved beside the checkpoint and restored (proxy/worker.py, proxy/checkpoint.py) ---

POLICY = RedactionPolicy(BUILTIN_RULES, frozenset(), b"")


def notification(n: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": f"café {n}"}})


LISTEN = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {"notifications": ["resources/updated"]}}


COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstandard.compress}


def held_stream(
    directory: Path,
    count: int = 6,
    piece: int = 37,
    content_encoding: str | None = None,
    *,
    listen: bool = False,
    decoded: bool = False,
) -> list[Read]:
    """A GET stream's records (or, with `listen`, a 2026-07-28 ``subscriptions/listen`` POST's): its head,
    SSE events cut every `piece` bytes (mid-line, mid-character), a keep-alive, its end. `decoded`: a
    compressed stream's chunks logged decoded, as the relay logs them (its `LogCopy`)."""
    t = tap(directory)
    get = RequestRecord("GET", "/mcp/weather", "", "1.1", [("Accept", "text/event-stream"), ("Mcp-Session-Id", SESSION)], b"")
    exchange = t.request(request(LISTEN, session=None, version="2026-07-28") if listen else get, ROUTE.head())
    headers = [("Content-Type", "text/event-stream"), ("Mcp-Session-Id", SESSION)]
    headers += [("Content-Encoding", content_encoding)] if content_encoding else []
    copy = LogCopy(stream_decoder(headers) if decoded else None, "test")
    if decoded:
        exchange.decoded_chunks()
    exchange.response_head(200, headers)
    body = b"".join(b"id: s:%d\ndata: " % n + notification(n) + b"\n\n" for n in range(count)) + b": keep-alive\n\n"
    body = COMPRESS[content_encoding](body) if content_encoding else body
    for start in range(0, len(body), piece):
        exchange.chunk(copy.of(body[start : start + piece]), crossed=len(body[start : start + piece]))
    exchange.end(client_disconnected=True, upstream_complete=False)
    t.writer.close()
    return reads(directory)


@pytest.mark.parametrize(
    ("listen", "content_encoding"), [(False, None), (True, None), (False, "gzip")], ids=["get", "listen", "gzip-logged-decoded"]
)
def test_a_stream_restored_from_its_state_at_any_record_goes_on_as_if_never_stopped(
    tmp_path: Path, listen: bool, content_encoding: str | None
) -> None:
    """The worker's restart: state saved after record k (JSON and back), a new assembler restores it and reads
    from an earlier checkpoint on; the events of both runs are exactly those of one run, ids and sequences alike.
    A compressed stream the relay logged decoded is saved like a plain one."""
    records = held_stream(tmp_path, listen=listen, content_encoding=content_encoding, decoded=content_encoding is not None)
    whole = [b.event for b in assembled(tmp_path)]
    first_saveable = next(i for i, r in enumerate(records) if r.record.kind is Kind.RESPONSE_HEAD)
    for k in range(first_saveable, len(records) - 1):
        before, after = McpAssembler(POLICY), McpAssembler(POLICY)
        made = [b.event for read in records[: k + 1] for b in before.feed(read)]
        ((exchange, _),) = before.open_starts()
        state = before.snapshot(exchange)
        assert state is not None, records[k].record.kind
        after.restore(exchange, orjson.loads(orjson.dumps(state)), records[k].after)
        # the checkpoint is at or before the state's position: records already in the state are skipped
        made += [b.event for read in records[first_saveable:] for b in after.feed(read)]
        assert made == whole, f"restored after record {k}"
    assert [e["sequence"] for e in whole] == list(range(len(whole)))
    assert whole[-1]["http"]["request_body_size"] == (len(orjson.dumps(LISTEN)) if listen else 0)
    notes = [orjson.loads(e["payload"])["params"]["data"] for e in whole if e.get("direction") == "UPSTREAM_TO_CLIENT"]
    assert notes == [f"café {n}" for n in range(6)]


def answers(records: list[Read]) -> tuple[list[tuple[bytes, Any]], int]:
    """A stream's answer messages (payload, SSE fields) and its exchange's response body size."""
    assembler = McpAssembler(POLICY)
    made = [b.event for read in records for b in assembler.feed(read)]
    messages = [(e["payload"], e["sse"]) for e in made if e.get("direction") == "UPSTREAM_TO_CLIENT"]
    return messages, made[-1]["http"]["response_body_size"]


@pytest.mark.parametrize("encoding", list(COMPRESS))
def test_a_compressed_stream_logged_decoded_makes_the_events_of_the_plain_one_and_counts_the_bytes_that_crossed(
    tmp_path: Path, encoding: str
) -> None:
    """As a log from before the mark does (the worker decoding it), with the compressed size in its exchange."""
    plain, plain_size = answers(held_stream(tmp_path / "plain"))
    compressed, compressed_size = answers(held_stream(tmp_path / "new", content_encoding=encoding, decoded=True))
    undecoded, undecoded_size = answers(held_stream(tmp_path / "old", content_encoding=encoding))
    assert len(plain) == 6 and compressed == undecoded == plain
    assert compressed_size == undecoded_size < plain_size, "the body's size as it crossed, compressed"


def test_a_stream_that_stops_decoding_is_logged_as_it_crossed_from_there() -> None:
    """A gzip stream flushed per event that turns corrupt: what decoded goes to the log decoded, the rest as it
    crossed (the worker takes it as sent, as it does a body it cannot decode itself), and nothing raises."""
    compressor = zlib.compressobj(wbits=31)  # gzip
    event = b"id: 1\ndata: " + notification(1) + b"\n\n"
    first = compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH)
    rest = compressor.compress(event) + compressor.flush()
    copy = LogCopy(stream_decoder([("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")]), "test")
    corrupt = b"\xff" * 64  # a block of the reserved type
    assert [copy.of(first), copy.of(corrupt), copy.of(rest, last=True)] == [event, corrupt, rest]
    assert copy.decoder is None


def test_a_streams_state_stays_small_however_long_it_runs(tmp_path: Path) -> None:
    """No body and no made events accumulate in it: after 400 events it is the size it was after 4."""
    sizes = []
    for count in (4, 400):
        directory = tmp_path / str(count)
        assembler = McpAssembler(POLICY)
        for read in held_stream(directory, count)[:-1]:
            assembler.feed(read)
        ((exchange, _),) = assembler.open_starts()
        sizes.append(len(orjson.dumps(assembler.snapshot(exchange))))
    assert abs(sizes[1] - sizes[0]) < 16 and sizes[1] < 2048, sizes


def test_a_request_whose_body_is_coming_a_compressed_stream_or_a_json_answer_has_no_state(tmp_path: Path) -> None:
    """Those hold the checkpoint at their head, as every exchange did before."""
    records = held_stream(tmp_path / "gzip", content_encoding="gzip")
    assembler = McpAssembler(POLICY)
    head = next(i for i, r in enumerate(records) if r.record.kind is Kind.MCP_REQUEST_HEAD)
    assembler.feed(records[head])
    ((exchange, _),) = assembler.open_starts()
    assert assembler.snapshot(exchange) is None, "no response head yet"
    for read in records[head + 1 : -1]:
        assembler.feed(read)
    assert assembler.snapshot(exchange) is None, "a gzip decoder's state cannot be saved"
    t = tap(tmp_path / "json")
    answer = t.request(request(), ROUTE.head())
    answer.response_head(200, [("Content-Type", "application/json")])
    answer.chunk(orjson.dumps(RESULT)[:10])
    t.writer.close()
    json_assembler = McpAssembler(POLICY)
    for read in reads(tmp_path / "json"):
        json_assembler.feed(read)
    ((json_exchange, _),) = json_assembler.open_starts()
    assert json_assembler.snapshot(json_exchange) is None, "a JSON answer is kept whole until its end"
    api = Assembler(POLICY)
    t = tap(tmp_path / "api")
    t.request(RequestRecord("POST", "/v1/messages", "", "1.1", [], b"{}"))
    t.writer.close()
    for read in reads(tmp_path / "api"):
        api.feed(read)
    ((api_exchange, _),) = api.open_starts()
    assert api.snapshot(api_exchange) is None, "an API exchange's state is its response so far"


def test_a_relay_start_before_a_restored_streams_position_does_not_close_it(tmp_path: Path) -> None:
    """The checkpoint may lie before a relay restart that the stream's head came after: reading that start
    again must not interrupt the stream, which its saved state shows open later on."""
    records = held_stream(tmp_path)
    saved_at = next(i for i, r in enumerate(records) if r.record.kind is Kind.RESPONSE_CHUNK)
    assembler = McpAssembler(POLICY)
    for read in records[: saved_at + 1]:
        assembler.feed(read)
    ((exchange, _),) = assembler.open_starts()
    state = assembler.snapshot(exchange)
    assert state is not None
    (writer_start,) = [r for r in records if r.record.kind is Kind.WRITER_START]
    for resume, closed in ((records[saved_at].after, False), (writer_start.at, True)):
        restored = McpAssembler(POLICY)
        restored.restore(exchange, state, resume)
        built = restored.feed(writer_start)
        assert (restored.open_count, bool(built)) == ((0, True) if closed else (1, False))


def test_event_ids_are_the_uuid5_of_connection_and_sequence() -> None:
    """`events.event_id` builds the UUID's text itself (`proxy.capture.name_uuid`): it must stay what ``uuid.uuid5`` gives, or a rebuilt
    event would no longer be the duplicate consumers drop."""
    for connection in (str(uuid.uuid4()), "stdio-0", "é/ü"):
        for sequence in (0, 1, 255, 2**40):
            expected = str(uuid.uuid5(events.EVENT_NAMESPACE, f"{connection}/{sequence}"))
            assert events.event_id(connection, sequence) == expected
    raw = bytes(range(16))
    assert uuid_text(raw) == str(uuid.UUID(bytes=raw))


def test_a_message_parsed_once_makes_the_same_parts_as_its_bytes_read_again() -> None:
    """The capture parses a payload once, to redact it and to split it; a batch, a secret and bytes that are
    not JSON give the fields they gave when the redacted bytes were parsed again."""
    policy = RedactionPolicy(BUILTIN_RULES, frozenset(), b"")
    secret = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"token": TOKEN}})
    for payload in (orjson.dumps(CALL), orjson.dumps([CALL, RESULT]), secret, b"not json", b"null", b"[]", b"{}"):
        made = events.message_fields(events.Message(events.CLIENT_TO_UPSTREAM, payload), policy)
        again = [events._part_fields(part) for part in parts_of(redact_json(payload, policy.rules)[0])]
        assert [{key: fields[key] for key in part} for fields, part in zip(made, again, strict=True)] == again
        assert all(TOKEN.encode() not in fields["payload"] for fields in made)
