"""Confluent framing and the registry client, against a real HTTP fake registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from schemas.codec import (
    EXCHANGE,
    Encoder,
    confluent_header,
    make_decoder,
    parse,
    raw_schema,
    registry_encoder,
    single_object_encoder,
)
from schemas.errors import RegistryError, UnknownSchema
from schemas.registry import Registry, subject_for_topic
from tests.fakes.schema_registry import FakeSchemaRegistry
from tests.schemas.factories import request_event, response_event, without_fields

SUBJECT = subject_for_topic("kgb.exchanges")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSchemaRegistry]:
    registry = FakeSchemaRegistry()
    async with registry:
        yield registry


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def gets_by_id(fake: FakeSchemaRegistry) -> list[str]:
    return [path for method, path in fake.requests if method == "GET" and path.startswith("/schemas/ids/")]


async def test_subject_follows_topic_name_strategy() -> None:
    assert SUBJECT == "kgb.exchanges-value"


async def test_register_is_idempotent_and_ids_are_global(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    first = await Registry(fake.url, session).register(SUBJECT, raw_schema(EXCHANGE))
    again = await Registry(fake.url, session).register(SUBJECT, raw_schema(EXCHANGE))
    other = await Registry(fake.url, session).register("kgb.replay-value", raw_schema(EXCHANGE))
    assert first == again == other
    assert fake.subjects == {SUBJECT: [first], "kgb.replay-value": [first]}


async def test_register_is_cached_per_client(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    registry = Registry(fake.url, session)
    await registry.register(SUBJECT, raw_schema(EXCHANGE))
    await registry.register(SUBJECT, raw_schema(EXCHANGE))
    assert fake.requests == [("POST", f"/subjects/{SUBJECT}/versions")]


async def test_registered_schema_is_the_avsc_as_written(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    await Registry(fake.url, session).register(SUBJECT, raw_schema(EXCHANGE))
    async with session.get(f"{fake.url}/subjects/{SUBJECT}/versions/latest") as resp:
        latest = await resp.json(content_type=None)
    assert latest["version"] == 1
    assert json.loads(latest["schema"]) == raw_schema(EXCHANGE)  # logicalType kept for other tools


async def test_confluent_round_trip_fetches_the_writer_schema_once(
    fake: FakeSchemaRegistry, session: aiohttp.ClientSession
) -> None:
    encoder = await registry_encoder(Registry(fake.url, session), SUBJECT)
    event = request_event(body_size=1_048_576)
    data = encoder.encode(event)
    schema_id = fake.subjects[SUBJECT][0]
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    decoder = make_decoder(Registry(fake.url, session))  # a consumer elsewhere: knows no ids yet
    assert await decoder.decode(data) == event
    assert await decoder.decode(data) == event
    assert decoder.decode_local(data) == event
    assert gets_by_id(fake) == [f"/schemas/ids/{schema_id}"]


async def test_concurrent_decodes_of_a_new_id_share_one_lookup(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    encoder = await registry_encoder(Registry(fake.url, session), SUBJECT)
    data = encoder.encode(response_event())
    decoder = make_decoder(Registry(fake.url, session))
    decoded = await asyncio.gather(*(decoder.decode(data) for _ in range(20)))
    assert decoded == [response_event()] * 20
    assert len(gets_by_id(fake)) == 1


async def test_one_decoder_reads_both_framings(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    confluent = await registry_encoder(Registry(fake.url, session), SUBJECT)
    decoder = make_decoder(Registry(fake.url, session))
    assert await decoder.decode(confluent.encode(request_event())) == request_event()
    assert await decoder.decode(single_object_encoder().encode(response_event())) == response_event()


async def test_older_writer_from_registry_decodes_with_defaults(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    older = without_fields(raw_schema(EXCHANGE), {"redactions"}, {"response": {"usage", "upstream_complete"}})
    schema_id = await Registry(fake.url, session).register(SUBJECT, older)
    event = response_event()
    del event["redactions"], event["response"]["usage"], event["response"]["upstream_complete"]
    data = Encoder(parse(older), confluent_header(schema_id)).encode(event)
    expected = response_event(redactions=[])
    expected["response"].update(usage=None, upstream_complete=True)
    assert await make_decoder(Registry(fake.url, session)).decode(data) == expected


async def test_id_unknown_to_the_registry_is_unknown_schema(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    data = confluent_header(999) + b"\x00"
    with pytest.raises(UnknownSchema, match="no schema id 999"):
        await make_decoder(Registry(fake.url, session)).decode(data)


async def test_schema_by_id_error_carries_the_registry_message(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    with pytest.raises(RegistryError, match="Schema not found") as caught:
        await Registry(fake.url, session).schema_by_id(42)
    assert (caught.value.status, caught.value.error_code, caught.value.retriable) == (404, 40403, False)


async def test_invalid_schema_is_refused_with_the_registry_message(
    fake: FakeSchemaRegistry, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(RegistryError, match="Invalid schema") as caught:
        await Registry(fake.url, session).register(SUBJECT, {"type": "record", "name": "X", "fields": "oops"})
    assert (caught.value.status, caught.value.error_code, caught.value.retriable) == (422, 42201, False)


async def test_unreachable_registry_is_a_retriable_registry_error(session: aiohttp.ClientSession) -> None:
    async with FakeSchemaRegistry() as url:
        pass  # stopped: nothing listens on its port any more
    with pytest.raises(RegistryError, match="unreachable") as caught:
        await make_decoder(Registry(url, session)).decode(confluent_header(1) + b"\x00")
    assert caught.value.retriable


async def test_a_failed_lookup_is_retried_next_time(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    registry = Registry(fake.url, session)
    with pytest.raises(RegistryError):
        await registry.schema_by_id(1)
    schema_id = await Registry(fake.url, session).register(SUBJECT, raw_schema(EXCHANGE))
    assert await registry.schema_by_id(schema_id) == raw_schema(EXCHANGE)


async def test_fake_lists_subjects_and_answers_unknown_subject(fake: FakeSchemaRegistry, session: aiohttp.ClientSession) -> None:
    await Registry(fake.url, session).register(SUBJECT, raw_schema(EXCHANGE))
    async with session.get(f"{fake.url}/subjects") as resp:
        assert await resp.json(content_type=None) == [SUBJECT]
    async with session.get(f"{fake.url}/subjects/nope-value/versions/latest") as resp:
        assert resp.status == 404
        assert (await resp.json(content_type=None))["error_code"] == 40401
