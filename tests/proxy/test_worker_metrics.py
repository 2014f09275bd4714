"""The capture worker's figures on the proxy's /metrics (proxy/workerstats.py), from a real worker and real Kafka."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy import workerstats
from proxy.workerstats import STALE_AFTER, WorkerFigures
from tests.fakes.anthropic import FakeAnthropic
from tests.proxy.test_app import HEADERS, body, serve, settings_for
from tests.topic import read_events

DEADLINE = 120.0  # bounds a hang; nothing here is timed
REQUESTS = 5


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample on `url`/metrics, by name with its labels (``name{label="value"}``)."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def scrape_until(session: aiohttp.ClientSession, url: str, what: str, wanted: dict[str, float]) -> dict[str, float]:
    """Scrape until every sample in `wanted` has its value (or more, for a counter ending ``_total``)."""

    def holds(samples: dict[str, float]) -> bool:
        return all(
            name in samples and (samples[name] >= value if name.endswith("_total") else samples[name] == value)
            for name, value in wanted.items()
        )

    samples: dict[str, float] = {}
    async with asyncio.timeout(DEADLINE):
        while not holds(samples := await scrape(session, url)):
            await asyncio.sleep(0.2)
    assert holds(samples), what
    return samples


async def test_the_proxy_shows_what_its_worker_read_published_and_has_left(kafka, topic: str, tmp_path: Path) -> None:
    started = time.time()
    async with FakeAnthropic() as fake, aiohttp.ClientSession() as session:
        settings = settings_for(fake.url, kafka.bootstrap, topic, tmp_path / "spool")
        url, served = await serve(settings)
        try:
            for _ in range(REQUESTS):
                async with session.post(url + "/v1/messages", data=body(), headers=HEADERS) as response:
                    assert response.status == 200
                    await response.read()
            wanted = {"kgb_worker_events_published_total": 2 * REQUESTS, "kgb_worker_checkpoint_lag_bytes": 0}
            samples = await scrape_until(session, url, "every event acknowledged", wanted)
        finally:
            await served.cleanup()
    events = await read_events(kafka.bootstrap, topic, 2 * REQUESTS)

    assert samples["kgb_worker_events_published_total"] == len(events) == 2 * REQUESTS
    assert samples["kgb_worker_up"] == samples["kgb_worker_kafka_up"] == 1
    assert samples["kgb_worker_records_read_total"] >= 4 * REQUESTS, "a request's head and body, a response's head and end"
    assert samples["kgb_worker_read_bytes_total"] >= samples["kgb_worker_records_read_total"] * 16
    assert samples["kgb_worker_publish_retries_total"] == 0
    reasons = {name: value for name, value in samples.items() if name.startswith("kgb_worker_dropped_total")}
    assert reasons == {f'kgb_worker_dropped_total{{reason="{r}"}}': 0 for r in workerstats.DROP_REASONS}
    assert samples["kgb_worker_checkpoint_lag_segments"] >= 1, "the segment the relay still appends to"
    assert 0 < samples["kgb_worker_spool_bytes"] <= samples["kgb_worker_spool_max_bytes"] == settings.capture.spool_max_bytes
    assert started <= samples["kgb_worker_last_publish_timestamp_seconds"] <= time.time()


def test_without_fresh_figures_the_worker_is_down_and_its_last_figures_stay(tmp_path: Path) -> None:
    def samples(now: float) -> dict[str, float]:
        found = workerstats.read(tmp_path)
        return {s.name: s.value for family in workerstats.families(found, now) for s in family.samples}

    assert samples(time.time()) == {"kgb_worker_up": 0}, "no worker has written figures here"
    workerstats.write(tmp_path, dataclasses.asdict(WorkerFigures(events_published=7, kafka_up=True)))
    assert samples(time.time())["kgb_worker_up"] == 1
    later = samples(time.time() + STALE_AFTER + 1)
    assert later["kgb_worker_up"] == 0 and later["kgb_worker_events_published_total"] == 7
    (tmp_path / workerstats.FILE_NAME).write_text('{"a field of another version": 1}')
    assert samples(time.time()) == {"kgb_worker_up": 0}
