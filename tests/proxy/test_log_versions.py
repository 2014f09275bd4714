"""A log a newer KGB wrote, read by this worker (a downgrade): it publishes what it knows, then stops, loudly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy import worker
from proxy.logformat import Kind, NewerLog
from proxy.logwriter import segments
from tests.proxy.test_app import settings_for
from tests.proxy.test_assemble import request, tap
from tests.proxy.test_capture_log import future_record
from tests.services import free_port
from tests.topic import by_exchange, read_events


async def test_a_worker_meeting_a_kind_it_does_not_know_publishes_what_came_before_and_stops_there(
    kafka, topic: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    written = tap(spool)
    exchange = written.request(request(b'{"model":"claude-sonnet-4-5","messages":[]}'))
    exchange.response_head(200, [("content-type", "application/json")])
    exchange.chunk(b'{"type":"message","content":[]}')
    exchange.end(client_disconnected=False, upstream_complete=True)
    written.writer.close()
    ((_, segment),) = segments(spool)
    with segment.open("ab") as log:
        log.write(future_record(max(Kind) + 1, b"{}"))
    settings = settings_for(f"http://127.0.0.1:{free_port()}", kafka.bootstrap, topic, spool)
    with pytest.raises(NewerLog, match=rf"{segment.name}: record kind {max(Kind) + 1} .*\(README: Downgrading\)"):
        async with asyncio.timeout(60):
            await worker.run(settings, asyncio.Event())  # no stop: it ends by itself, refusing to go on
    ((_, events),) = by_exchange(await read_events(kafka.bootstrap, topic, 2)).items()
    assert set(events) == {"REQUEST", "RESPONSE"} and events["RESPONSE"]["response"]["status"] == 200
    assert segment.exists(), "the record it could not read waits in the log for a worker that can"
