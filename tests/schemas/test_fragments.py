"""Events too large for one message: split into FRAGMENT events by the worker, joined by consumers.source."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from consumers.source import decode_batch
from schemas.codec import make_decoder, single_object_encoder
from schemas.fragments import Joiner, split
from tests.schemas.factories import response_event

TP = TopicPartition("kgb.exchanges", 0)
ENCODER = single_object_encoder()


def big_event() -> tuple[dict, bytes]:
    event = response_event()
    event["response"]["body"] = bytes(range(256)) * 4000  # ~1 MB, every byte value
    return event, ENCODER.encode(event)


def message(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(TP.topic, TP.partition, offset, 0, 0, b"key", value, None, len(b"key"), len(value), ())


def test_an_event_splits_into_pieces_that_each_fit_and_join_back_to_it() -> None:
    event, encoded = big_event()
    pieces = split(event, encoded, part_bytes=300_000)
    assert [p["fragment"]["index"] for p in pieces] == [0, 1, 2, 3] and {p["fragment"]["count"] for p in pieces} == {4}
    assert all(len(ENCODER.encode(p)) < 300_000 + 1024 for p in pieces)
    assert {p["kind"] for p in pieces} == {"FRAGMENT"} and {p["exchange_id"] for p in pieces} == {event["exchange_id"]}
    joiner = Joiner()
    assert [joiner.add(TP, n, p["fragment"]) for n, p in enumerate(pieces[:-1])] == [None, None, None]
    assert joiner.holding() == {TP: 0}
    assert joiner.add(TP, 3, pieces[-1]["fragment"]) == encoded
    assert joiner.holding() == {}


def test_splitting_twice_gives_the_same_events() -> None:
    event, encoded = big_event()
    assert split(event, encoded, 500_000) == split(event, encoded, 500_000)


def test_a_piece_added_again_changes_nothing_and_a_whole_event_stays_until_settled() -> None:
    event, encoded = big_event()
    first, second = split(event, encoded, 600_000)
    joiner = Joiner()
    joiner.add(TP, 10, first["fragment"])
    joiner.add(TP, 10, first["fragment"])
    assert joiner.add(TP, 11, second["fragment"]) == encoded
    assert joiner.add(TP, 11, second["fragment"]) == encoded, "a batch decoded again completes it again"
    joiner.settle()
    assert joiner.add(TP, 11, second["fragment"]) is None, "settled: only a fresh first piece starts it over"


async def test_a_consumer_sees_the_whole_event_and_never_commits_past_a_waiting_piece() -> None:
    event, encoded = big_event()
    pieces = [ENCODER.encode(p) for p in split(event, encoded, 400_000)]
    decoder, joiner = make_decoder(None), Joiner()
    before = await decode_batch({TP: [message(5, pieces[0]), message(6, pieces[1])]}, decoder, joiner)
    assert before.records == [] and before.rejects == [] and before.offsets == {TP: 5}
    joiner.settle()
    after = await decode_batch({TP: [message(7, pieces[2])]}, decoder, joiner)
    (record,) = after.records
    assert record.event == event and record.envelope.offset == 7 and record.envelope.value == encoded
    assert after.offsets == {TP: 8}
