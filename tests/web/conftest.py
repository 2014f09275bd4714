"""Fixtures of the viewer's tests: one database filled by the real consumers for the whole run, and the app over it.

- `captured` (session): a `Captured` whose database holds its sessions, stored by
  `kgb consume winni` and `kgb consume metrics` from a real topic. Tests only read it.
- `client`: an aiohttp test client of `build_app` over it, no token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests import services
from tests.web.captured import Captured
from web.app import build_app
from web.settings import WebSettings


@pytest.fixture(scope="session")
def captured(kafka: services.KafkaBroker, postgres: services.PostgresServer) -> Iterator[Captured]:
    dsn = asyncio.run(services.create_database(postgres.admin_dsn))
    found = Captured(dsn)
    asyncio.run(found.fill(kafka.bootstrap))
    yield found
    asyncio.run(services.drop_database(postgres.admin_dsn, dsn))


async def serve(settings: WebSettings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


@pytest.fixture
async def client(captured: Captured) -> AsyncIterator[TestClient[Any, Any]]:
    async for c in serve(WebSettings(database_url=captured.dsn)):
        yield c
