"""SQL kept in files: named queries and numbered migrations, for every consumer.

A consumer package ships ``sql/queries.sql`` (blocks opened by ``-- name: NAME``)
and ``sql/migrations/NNN_what.sql``. Statements use unqualified table names;
the schema (``KGB_DB_SCHEMA``) is chosen by the connection's ``search_path``,
so `kgb replay` can build the same tables into a fresh schema.

Migrations run in one transaction under an advisory lock keyed on the schema,
so two consumers starting at once apply each migration exactly once, and a
failed migration leaves nothing half-done.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

from consumers.errors import MigrationError

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d+)_(\w+)\.sql$")

# The migration runner's own statements: they must exist before any migration
# can be read, so they live here rather than in a consumer's queries.sql.
_QUERIES = """
-- name: lock
SELECT pg_advisory_xact_lock(hashtext('kgb.migrate:' || $1::text))
-- name: create_schema
SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text)
-- name: use_schema
SELECT set_config('search_path', quote_ident($1::text), true)
-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
-- name: applied
SELECT version, name FROM schema_migrations ORDER BY version
-- name: record
INSERT INTO schema_migrations (version, name) VALUES ($1, $2)
"""


class Queries(dict[str, str]):
    """Named SQL blocks; attribute access so a misspelt name fails at the call site."""

    def __getattr__(self, name: str) -> str:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r}") from None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def parse_queries(text: str) -> Queries:
    """Split a queries file into its ``-- name:`` blocks; text before the first is ignored."""
    parts = _NAME_LINE.split(text)
    names, bodies = parts[1::2], parts[2::2]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"queries defined twice: {sorted(duplicates)}")
    return Queries({n: b.strip().rstrip(";") for n, b in zip(names, bodies, strict=True)})


def load_queries(package: str) -> Queries:
    """The named queries in ``<package>/sql/queries.sql``."""
    return parse_queries((files(package) / "sql" / "queries.sql").read_text(encoding="utf-8"))


def parse_migration_name(file_name: str) -> tuple[int, str] | None:
    """``001_exchanges.sql`` → ``(1, "exchanges")``; other files are not migrations."""
    found = _MIGRATION_FILE.match(file_name)
    return (int(found[1]), found[2]) if found else None


def load_migrations(package: str) -> list[Migration]:
    """The migrations in ``<package>/sql/migrations/``, in version order."""
    folder = files(package) / "sql" / "migrations"
    found = [(parse_migration_name(f.name), f) for f in folder.iterdir()]
    migrations = [Migration(v[0], v[1], f.read_text(encoding="utf-8")) for v, f in found if v]
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{package}: two migrations share a version: {versions}")
    return migrations


def pending(migrations: Sequence[Migration], applied: dict[int, str]) -> list[Migration]:
    """What is left to apply; a database whose history differs from ours is refused."""
    for m in migrations:
        if m.version in applied and applied[m.version] != m.name:
            raise MigrationError(f"migration {m.version} is {applied[m.version]!r} in the database but {m.name!r} here")
    unknown = set(applied) - {m.version for m in migrations}
    if unknown:
        raise MigrationError(f"database has migrations this version does not know: {sorted(unknown)}")
    return [m for m in migrations if m.version not in applied]


async def migrate(conn: asyncpg.Connection, migrations: Sequence[Migration], schema: str) -> list[int]:
    """Bring ``schema`` up to date; returns the versions applied now (empty: nothing to do)."""
    q = parse_queries(_QUERIES)
    async with conn.transaction():
        await conn.execute(q.lock, schema)
        await conn.execute(await conn.fetchval(q.create_schema, schema))
        await conn.execute(q.use_schema, schema)
        await conn.execute(q.create_migrations_table)
        applied = {r["version"]: r["name"] for r in await conn.fetch(q.applied)}
        todo = pending(migrations, applied)
        for m in todo:
            await conn.execute(m.sql)
            await conn.execute(q.record, m.version, m.name)
    return [m.version for m in todo]
