"""Fixtures for real services; see tests/services.py for where they come from.

- `kafka` (session): `.bootstrap`, `.stop()`, `.start()`. The two block for seconds:
  from async code call them as `await asyncio.to_thread(kafka.stop)`.
- `topic`: a fresh 3-partition topic on `kafka`, named `kgb-test-...`.
- `postgres` (session): `.dsn` (the `winni` database) and `.admin_dsn`.
- `database`: the DSN of a fresh empty database on `postgres`, dropped afterwards.
  To start from a migrated template instead, use `services.create_database(admin_dsn, template=...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests import services


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


@pytest.fixture
async def database(postgres: services.PostgresServer) -> AsyncIterator[str]:
    dsn = await services.create_database(postgres.admin_dsn)
    yield dsn
    await services.drop_database(postgres.admin_dsn, dsn)


@pytest.fixture
async def topic(kafka: services.KafkaBroker) -> str:
    return await services.create_topic(kafka.bootstrap)
