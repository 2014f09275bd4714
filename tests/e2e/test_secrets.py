"""End to end: generated secrets of every built-in kind, each planted in every position and
form (`tests.plants`), sent through the real proxy to the fake upstream and into winni;
then no form of any of them (`scan.secret_forms`: as is, JSON-escaped, hex, base64) is on
the topic, in the spool directory, in a pg_dump of winni's database or in what the dewey
consumer sent to Dewey.

The capture log's segments are the exception, by design (issue 10): the relay appends an
exchange with only its credential headers blanked, and the worker redacts the rest before
anything leaves the machine. They are checked for what keeps them local instead: files
0600 in a directory 0700, and no segment left that the worker has published and moved past.

The secrets are drawn by Hypothesis, one per kind for each position; the exchanges are
sent in one pipeline, since starting Kafka, PostgreSQL and winni per example would take
hours. A failure names the kind, the position and the forms that leaked; the fast
property test (tests/proxy/test_secrets_property.py) shrinks such a case.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from pathlib import Path

import aiohttp
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from yarl import URL

from consumers.dewey.settings import DeweySettings
from consumers.dewey.consumer import run as run_dewey
from consumers.dewey.settings import JitteredBackoff
from common.config import KafkaSettings
from proxy.logwriter import segment_seq
from tests.e2e.conftest import DEADLINE, POLL, Pipeline, PipelineError, running
from tests.e2e.scan import database_dump, directory_bytes, hits, topic_bytes
from tests.fakes.dewey import FakeDewey
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
    return [
        Plant(secret, position, 13 + 7 * i)
        for i, (position, drawn) in enumerate(zip(POSITIONS, draws, strict=True))
        for secret in drawn.values()
    ]


ROOT = Path(__file__).resolve().parents[2]


def source_text() -> bytes:
    """The project's code, schemas and SQL: Hypothesis draws strings from the code it runs
    (a half `nnection_id`), and a dump holds column names and the fakes' texts."""
    return b"\n".join(path.read_bytes() for suffix in ("py", "sql", "avsc") for path in ROOT.glob(f"[!.]*/**/*.{suffix}"))


def judged(fragment: str, secret: str, source: bytes) -> bool:
    """Whether finding `fragment` means a leak: always for the whole secret; for a half, only
    when it is made of more than a few characters (`0000` is in any dump) and is no
    substring of the code."""
    return fragment == secret or (len(set(fragment)) >= 6 and fragment.encode() not in source)


async def send(session: aiohttp.ClientSession, pipeline: Pipeline, plant: Plant) -> None:
    parts = request_parts(plant)
    if parts.path == "/v1/messages":
        pipeline.fake.enqueue(reply(plant))
    url = URL(f"{pipeline.url}{parts.path}?{parts.query}", encoded=True)
    async with session.post(url, data=parts.body, headers=parts.headers) as response:
        await response.read()


async def dewey_caught_up(pipeline: Pipeline, dewey: FakeDewey, task: asyncio.Task[None]) -> None:
    """Dewey holds as many messages as winni's tables, which winni has finished."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while loop.time() < give_up:
        if task.done():
            raise PipelineError(f"the dewey consumer stopped early: {task.exception()!r}")
        (row,) = await pipeline.query("SELECT count(*) AS n FROM kgb.messages")
        if sum(len(c.messages) for c in dewey.conversations.values()) >= row["n"] > 0:
            return
        await asyncio.sleep(POLL)
    raise PipelineError("the dewey consumer did not catch up with winni")


async def test_no_planted_secret_reaches_the_topic_the_spool_the_database_or_dewey(pipeline: Pipeline, tmp_path: Path) -> None:
    plants = every_plant()
    assert {plant.secret.kind for plant in plants} == set(KINDS) and {plant.position for plant in plants} == set(POSITIONS)
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
        for plant in plants:
            await send(session, pipeline, plant)
    await pipeline.wait_for_exchanges(len(plants))
    assert await pipeline.dead_letters() == []
    async with FakeDewey() as dewey:
        settings = DeweySettings(
            kafka=KafkaSettings(bootstrap=pipeline.bootstrap, topic=pipeline.topic),
            database_url=pipeline.database,
            group=f"dewey-secrets-{uuid.uuid4().hex[:8]}",
            url=dewey.url,
            backoff=JitteredBackoff(initial=0.05, maximum=0.5),
        )
        async with running(run_dewey, settings, "dewey") as task:
            await dewey_caught_up(pipeline, dewey, task)
    places = {
        "topic": b"\n".join(await topic_bytes(pipeline.bootstrap, pipeline.topic)),
        "spool": directory_bytes(tmp_path / "spool", skip=is_segment),
        "database": database_dump(pipeline.database),
        "dewey": orjson.dumps(dewey.calls),
    }
    source = source_text()
    leaks = [
        (plant.secret.kind, plant.position, place, fragment, found)
        for plant in plants
        for fragment in plant.secret.exposed
        if judged(fragment, plant.secret.text, source)
        for place, haystack in places.items()
        if (found := hits(haystack, fragment))
    ]
    assert leaks == [], f"{len(leaks)} leaks of {len(plants)} planted secrets, first: {leaks[:5]}"
    segments = [path for path in (tmp_path / "spool").rglob("*") if is_segment(path)]
    assert segments and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in segments)
    assert all(stat.S_IMODE(path.parent.stat().st_mode) == 0o700 for path in segments)
    assert len({path.parent for path in segments}) == len(segments), "one live segment per log: published ones are deleted"


def is_segment(path: Path) -> bool:
    return segment_seq(path.name) is not None
