"""Fixtures for real services; see tests/services.py for where they come from.

- `kafka` (session): `.bootstrap`, `.stop()`, `.start()`. The two block for seconds:
  from async code call them as `await asyncio.to_thread(kafka.stop)`.
- `topic`: a fresh 3-partition topic on `kafka`, named `kgb-test-...`.
- `postgres` (session): `.dsn` (the `winni` database) and `.admin_dsn`.
- `database`: the DSN of a fresh database on `postgres`, dropped afterwards: a copy of `migrated`,
  every consumer's default schema migrated (a test may still migrate any other schema).
  `empty_database`: one with nothing in it, for the tests of migrating itself.

Each test is marked by what it needs (`pytest_collection_modifyitems`), so
``-m "not kafka and not postgres and not e2e and not browser"`` runs the pure
suite alone: ``kafka`` and ``postgres`` for the fixtures it uses (directly or
through another fixture), ``e2e`` for tests/e2e, ``browser`` for Chromium.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from tests import services

# A test that uses one of these fixtures, itself or through another one, gets the marker.
FIXTURE_MARKERS = {"kafka": "kafka", "postgres": "postgres", "browser": "browser"}
FOLDER_MARKERS = {"e2e": "e2e"}  # tests/<folder>/...


def markers_of(fixtures: Iterable[str], folders: Iterable[str]) -> set[str]:
    found = {FIXTURE_MARKERS[f] for f in fixtures if f in FIXTURE_MARKERS}
    return found | {FOLDER_MARKERS[f] for f in folders if f in FOLDER_MARKERS}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        folders = item.path.relative_to(tests).parts[:-1] if item.path.is_relative_to(tests) else ()
        for marker in sorted(markers_of(getattr(item, "fixturenames", ()), folders)):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def kafka() -> Iterator[services.KafkaBroker]:
    with services.kafka_broker() as broker:
        yield broker


@pytest.fixture(autouse=True)
def _kafka_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """An outage test that fails before its `start()` must not take the broker from the tests after it."""
    yield
    if "kafka" in request.fixturenames:
        request.getfixturevalue("kafka").ensure_running()


@pytest.fixture(scope="session")
def postgres() -> Iterator[services.PostgresServer]:
    with services.postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def migrated(postgres: services.PostgresServer) -> Iterator[str]:
    """The template every `database` is copied from (CREATE DATABASE ... TEMPLATE), migrated once per run."""
    dsn = asyncio.run(services.migrated_database(postgres.admin_dsn))
    yield services.database_name(dsn)
    asyncio.run(services.drop_database(postgres.admin_dsn, dsn))


@pytest.fixture
async def database(postgres: services.PostgresServer, migrated: str) -> AsyncIterator[str]:
    dsn = await services.create_database(postgres.admin_dsn, template=migrated)
    yield dsn
    await services.drop_database(postgres.admin_dsn, dsn)


@pytest.fixture
async def empty_database(postgres: services.PostgresServer) -> AsyncIterator[str]:
    dsn = await services.create_database(postgres.admin_dsn)
    yield dsn
    await services.drop_database(postgres.admin_dsn, dsn)


@pytest.fixture
async def topic(kafka: services.KafkaBroker) -> str:
    return await services.create_topic(kafka.bootstrap)
