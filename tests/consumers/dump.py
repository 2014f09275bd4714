"""A schema's tables, row for row, to compare two builds of them (a replay and the live tables,
a run through database restarts and one without)."""

from __future__ import annotations

from typing import Any

import asyncpg

# Columns that say when a row was written, not what it holds; `session_revisions`
# counts the batches that touched a session, which differ between any two runs.
WRITTEN_AT = {
    ("exchanges", "created_at"),
    ("exchanges", "updated_at"),
    ("dead_letters", "id"),
    ("dead_letters", "created_at"),
    ("schema_migrations", "applied_at"),
}
BOOKKEEPING = {"session_revisions"}

COLUMNS = """
SELECT table_name, array_agg(column_name::text ORDER BY ordinal_position) AS columns
FROM information_schema.columns WHERE table_schema = $1 GROUP BY table_name
"""


async def tables(conn: asyncpg.Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of ``schema`` but the bookkeeping, every row, sorted on all its columns."""
    found = {}
    for row in await conn.fetch(COLUMNS, schema):
        name = row["table_name"]
        if name in BOOKKEEPING:
            continue
        columns = [c for c in row["columns"] if (name, c) not in WRITTEN_AT]
        listed = ", ".join(f'"{c}"' for c in columns)
        sql = f'SELECT {listed} FROM "{schema}"."{name}" ORDER BY {", ".join(map(str, range(1, len(columns) + 1)))}'
        found[name] = [tuple(r) for r in await conn.fetch(sql)]
    return found
