"""End to end: generated secrets of every built-in kind, each planted in every position and
form (`tests.plants`), sent through the real proxy to the fake upstream and into winni;
then no form of any of them (`scan.secret_forms`: as is, JSON-escaped, hex, base64) is on
the topic, in the spool directory or in a pg_dump of winni's database.

The secrets are drawn by Hypothesis, one per kind for each position; the exchanges are
sent in one pipeline, since starting Kafka, PostgreSQL and winni per example would take
hours. A failure names the kind, the position and the forms that leaked; the fast
property test (tests/proxy/test_secrets_property.py) shrinks such a case.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.e2e.conftest import Pipeline
from tests.e2e.scan import database_dump, directory_bytes, hits, topic_bytes
from tests.plants import KINDS, POSITIONS, Plant, Secret, reply, request_parts


def drawn_secrets(count: int) -> list[dict[str, Secret]]:
    """`count` draws of one secret per kind, by Hypothesis (generation only: nothing to shrink here)."""
    draws: list[dict[str, Secret]] = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.fixed_dictionaries(KINDS))
    def draw(secrets: dict[str, Secret]) -> None:
        draws.append(secrets)

    draw()
    return draws[-count:]


def every_plant() -> list[Plant]:
    draws = drawn_secrets(len(POSITIONS))
    return [Plant(secret, position, 13 + 7 * i) for i, (position, drawn) in enumerate(zip(POSITIONS, draws, strict=True)) for secret in drawn.values()]


def distinctive(fragment: str) -> bool:
    """A fragment worth looking for: one made of few characters (`0000`) is in any dump by chance."""
    return len(set(fragment)) >= 6


async def send(session: aiohttp.ClientSession, pipeline: Pipeline, plant: Plant) -> None:
    parts = request_parts(plant)
    if parts.path == "/v1/messages":
        pipeline.fake.enqueue(reply(plant))
    url = URL(f"{pipeline.url}{parts.path}?{parts.query}", encoded=True)
    async with session.post(url, data=parts.body, headers=parts.headers) as response:
        await response.read()


async def test_no_planted_secret_reaches_the_topic_the_spool_or_the_database(pipeline: Pipeline, tmp_path: Path) -> None:
    plants = every_plant()
    assert {plant.secret.kind for plant in plants} == set(KINDS) and {plant.position for plant in plants} == set(POSITIONS)
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
        for plant in plants:
            await send(session, pipeline, plant)
    await pipeline.wait_for_exchanges(len(plants))
    assert await pipeline.dead_letters() == []
    places = {
        "topic": b"\n".join(await topic_bytes(pipeline.bootstrap, pipeline.topic)),
        "spool": directory_bytes(tmp_path / "spool"),
        "database": database_dump(pipeline.database),
    }
    leaks = [
        (plant.secret.kind, plant.position, place, fragment, found)
        for plant in plants
        for fragment in plant.secret.exposed if fragment == plant.secret.text or distinctive(fragment)
        for place, haystack in places.items()
        if (found := hits(haystack, fragment))
    ]
    assert leaks == [], f"{len(leaks)} leaks of {len(plants)} planted secrets, first: {leaks[:5]}"
