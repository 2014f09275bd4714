"""Avro framings, round trips, schema evolution and decode failures, without a registry."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer

from schemas.codec import (
    EXCHANGE,
    Decoder,
    Encoder,
    confluent_header,
    fingerprint,
    history,
    load_schema,
    make_decoder,
    parse,
    raw_schema,
    single_object_encoder,
    single_object_header,
)
from schemas.errors import BadFraming, CorruptBody, DecodeError, EncodeError, SchemaNotCached, UnknownSchema
from tests.schemas.factories import request_event, response_event, with_field, without_fields


def encoder_for(schema: dict) -> Encoder:
    """A single-object encoder for a schema that is not (or no longer) a file in schemas/."""
    return Encoder(parse(schema), single_object_header(schema))


def test_fingerprint_follows_the_avro_spec_byte_order() -> None:
    # Avro's share/test/data/schema-tests.txt gives these as signed 64-bit values;
    # single-object encoding stores them little-endian.
    assert fingerprint("null") == (7195948357588979594).to_bytes(8, "little", signed=True)
    assert fingerprint("boolean") == (-6970731678124411036).to_bytes(8, "little", signed=True)


def test_load_schema_is_the_current_exchange_event() -> None:
    assert load_schema(EXCHANGE)["name"] == "kgb.ExchangeEvent"
    assert load_schema(EXCHANGE) is load_schema(EXCHANGE)


def test_single_object_message_starts_with_magic_and_fingerprint() -> None:
    data = single_object_encoder().encode(response_event())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(raw_schema(EXCHANGE))


def test_request_with_1mb_body_round_trips() -> None:
    event = request_event(body_size=1_048_576)
    data = single_object_encoder().encode(event)
    assert len(data) > 1_048_576
    assert make_decoder(None).decode_local(data) == event


def test_response_round_trips() -> None:
    event = response_event(status=529, is_sse=False)
    assert make_decoder(None).decode_local(single_object_encoder().encode(event)) == event


async def test_async_decode_reads_single_object_too() -> None:
    event = response_event()
    assert await make_decoder(None).decode(single_object_encoder().encode(event)) == event


def test_timestamps_are_int_microseconds_both_ways() -> None:
    decoded = make_decoder(None).decode_local(single_object_encoder().encode(request_event()))
    assert decoded["occurred_at"] == request_event()["occurred_at"]
    assert type(decoded["request"]["received_at"]) is int


def test_omitted_defaulted_fields_are_filled_on_encode() -> None:
    event = request_event()
    for name in ("agent_id", "parent_agent_id", "client", "redactions"):
        del event[name]
    decoded = make_decoder(None).decode_local(single_object_encoder().encode(event))
    assert decoded == request_event(client=None, redactions=[])


@pytest.mark.parametrize("event", [request_event(), response_event(), response_event(is_sse=False, status=529)])
def test_encoding_is_fastavros_own_bytes_behind_the_header(event: dict) -> None:
    # The encoder names the branch of `request`/`response` for fastavro (tuple notation) instead of letting it
    # validate the record to find it: the bytes must be those fastavro writes when left to find it itself.
    plain = io.BytesIO()
    schemaless_writer(plain, load_schema(EXCHANGE), event)
    assert single_object_encoder().encode(event) == single_object_header(raw_schema(EXCHANGE)) + plain.getvalue()


def test_a_nested_record_with_a_misspelt_field_is_refused() -> None:
    event = response_event()
    event["response"]["statsu"] = 200
    with pytest.raises(EncodeError, match="more fields than the schema"):
        single_object_encoder().encode(event)


def test_a_nested_record_missing_a_field_is_refused() -> None:
    event = request_event()
    del event["request"]["method"]
    with pytest.raises(EncodeError):
        single_object_encoder().encode(event)


def test_encoding_leaves_the_event_as_it_was() -> None:
    event = request_event()
    single_object_encoder().encode(event)
    assert event == request_event()


def test_misspelt_field_is_refused_not_dropped() -> None:
    with pytest.raises(EncodeError, match="more fields than the schema"):
        single_object_encoder().encode(request_event(agentid="a-1"))


def test_bad_record_error_stays_short_with_a_big_body() -> None:
    event = request_event(body_size=1_048_576)
    event["request"]["method"] = None
    with pytest.raises(EncodeError) as caught:
        single_object_encoder().encode(event)
    assert len(str(caught.value)) < 1_000


def test_current_schema_is_frozen_in_history() -> None:
    # Changing exchange.avsc without adding history/exchange.v<N+1>.avsc fails here,
    # so every released version keeps decoding.
    assert fingerprint(raw_schema(EXCHANGE)) in {fingerprint(s) for s in history(EXCHANGE)}


@pytest.mark.parametrize("version", range(len(history(EXCHANGE))))
def test_every_frozen_version_decodes_with_the_current_decoder(version: int) -> None:
    old = history(EXCHANGE)[version]
    known = {f["name"] for f in old["fields"]}
    data = encoder_for(old).encode({k: v for k, v in response_event().items() if k in known})
    assert make_decoder(None).decode_local(data)["response"]["status"] == 200


def test_older_writer_decodes_with_defaults_for_newer_fields() -> None:
    current = raw_schema(EXCHANGE)
    older = without_fields(current, {"client", "redactions"}, {"request": {"model", "stream"}})
    event = request_event()
    del event["client"], event["redactions"], event["request"]["model"], event["request"]["stream"]
    data = encoder_for(older).encode(event)
    decoder = Decoder(current, [current, older], registry=None)
    decoded = decoder.decode_local(data)
    expected = request_event(client=None, redactions=[])
    expected["request"].update(model=None, stream=False)
    assert decoded == expected


def test_a_v2_request_reads_as_a_whole_body() -> None:
    # v3 added request.body_complete: a request written before it knew of no cut body, and reads as whole.
    v2 = history(EXCHANGE)[1]
    event = request_event()
    del event["request"]["body_complete"]
    decoded = make_decoder(None).decode_local(encoder_for(v2).encode(event))
    assert decoded == request_event()
    assert decoded["request"]["body_complete"] is True


def test_older_writer_missing_from_history_is_unknown() -> None:
    older = without_fields(raw_schema(EXCHANGE), {"client"}, {})
    event = request_event()
    del event["client"]
    data = encoder_for(older).encode(event)
    with pytest.raises(UnknownSchema, match="fingerprint"):
        make_decoder(None).decode_local(data)


def test_newer_producer_fingerprint_is_unknown_schema() -> None:
    newer = with_field(raw_schema(EXCHANGE), {"name": "tenant", "type": "string", "default": ""})
    data = encoder_for(newer).encode(request_event(tenant="acme"))
    with pytest.raises(UnknownSchema, match=fingerprint(newer).hex()):
        make_decoder(None).decode_local(data)


@pytest.mark.parametrize("data", [b"", b"{", b"\xc3\x02" + bytes(20), b"\x01" + bytes(20)])
def test_bad_magic_is_bad_framing(data: bytes) -> None:
    with pytest.raises(BadFraming, match="unknown magic"):
        make_decoder(None).decode_local(data)


@pytest.mark.parametrize("data", [b"\xc3\x01\x00\x00", b"\x00\x00\x01"])
def test_header_cut_short_is_bad_framing(data: bytes) -> None:
    with pytest.raises(BadFraming, match="cut short"):
        make_decoder(None).decode_local(data)


def test_truncated_body_is_a_decode_error() -> None:
    data = single_object_encoder().encode(request_event(body_size=100_000))
    for cut in (11, 50, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError, match="truncated"):
            make_decoder(None).decode_local(data[:cut])


def test_trailing_bytes_are_corrupt() -> None:
    data = single_object_encoder().encode(response_event()) + b"\x00"
    with pytest.raises(CorruptBody, match="1 trailing bytes"):
        make_decoder(None).decode_local(data)


def test_invalid_enum_index_is_corrupt() -> None:
    data = bytearray(single_object_encoder().encode(response_event()))
    kind_at = 10 + 1 + 36 + 1 + 36  # header, then two length-prefixed 36-char UUIDs
    data[kind_at] = 0x7E  # zig-zag 63: no such EventKind symbol
    with pytest.raises(CorruptBody):
        make_decoder(None).decode_local(bytes(data))


def test_confluent_frame_without_registry_is_unknown_schema() -> None:
    data = confluent_header(7) + b"\x00"
    with pytest.raises(UnknownSchema, match="no registry configured"):
        make_decoder(None).decode_local(data)


def test_decode_local_asks_for_the_async_path_for_unseen_ids() -> None:
    registry = object()  # decode_local never calls the registry; it only needs to be configured
    decoder = make_decoder(registry)  # type: ignore[arg-type]
    with pytest.raises(SchemaNotCached) as caught:
        decoder.decode_local(confluent_header(7) + b"\x00")
    assert caught.value.schema_id == 7
    assert not isinstance(caught.value, DecodeError)
