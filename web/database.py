"""The viewer's connections to winni's database: read only, twice over.

Every connection starts with ``default_transaction_read_only`` on, and every
page reads in a ``READ ONLY`` transaction at ``REPEATABLE READ``, so a page
sees one snapshot (a session's conversations and their messages agree while
winni writes) and no query, however it got here, can change a row. The role
`kgb web` connects as should be read only as well (README: a read-only role).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import NamedTuple

import asyncpg
import orjson

from consumers.sql import Queries, load_queries
from web.settings import WebSettings


def queries() -> Queries:
    return load_queries("web")


class Tables(NamedTuple):
    """Which tables the consumers have made so far; pages leave out what is missing."""

    winni: bool
    metrics: bool
    mcp: bool
    search: bool


async def _prepare(conn: asyncpg.Connection) -> None:
    """jsonb arrives parsed (orjson), not as text for every caller to parse again."""
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=orjson.loads, schema="pg_catalog", format="text")


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def server_settings(settings: WebSettings) -> dict[str, str]:
    """What every connection is set to: both schemas on the path, read only, plans per call, bounded."""
    return {
        "search_path": f"{settings.db_schema}, {settings.metrics_schema}",
        "default_transaction_read_only": "on",
        "plan_cache_mode": "force_custom_plan",
        "statement_timeout": str(int(settings.statement_timeout * 1000)),
        "application_name": "kgb web",
    }


async def open_pool(settings: WebSettings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.pool_size,
        server_settings=server_settings(settings),
        init=_prepare,
    )


class MissingTables(LookupError):
    """The consumer whose tables a page reads has not made them yet (``consumer``: winni, metrics, mcp)."""

    def __init__(self, consumer: str) -> None:
        super().__init__(consumer)
        self.consumer = consumer


@contextlib.asynccontextmanager
async def reading(pool: asyncpg.Pool, needs: str = "winni") -> AsyncIterator[tuple[asyncpg.Connection, Tables]]:
    """A connection in a read-only snapshot, and which tables it can see; `MissingTables` if ``needs``' are not there."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        tables = Tables(**dict(await conn.fetchrow(queries().tables)))
        if not getattr(tables, needs):
            raise MissingTables(needs)
        yield conn, tables
