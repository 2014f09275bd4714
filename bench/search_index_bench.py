"""What search costs winni's writes, in PostgreSQL alone: messages stored with migration 006's
generated vector, stored without it (010), and winni's search indexer building the vectors after.

    .venv/bin/python -m bench.search_index_bench [--messages 6000] [--batch 200]

The messages are shaped like the winni benchmark's sessions (`bench.winni_bench.prose`: a
question and an answer of prose, or a tool call and its 0.5-4 KB output, 60% of them tool
runs), stored as winni stores them: its own ``upsert_message``, ``executemany`` in
transactions of 500 messages. In one run, each on a fresh database:

(1) the baseline: winni's migrations up to 010, the search column plain, stored NULL;
(2) the same messages with migrations up to 006 only: the generated column and its GIN index,
    what each winni batch paid for search before 010;
(3) winni's indexer (`consumers.winni.search_index.index_all`, one connection, ``--batch``
    messages a statement) over (1)'s rows: the work (2) did inside the batches, done after.

The figures are PostgreSQL's time seen from one client on this machine; ratios against (1).
Services are the tests' (`tests.services`), as for the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from bench.winni_bench import prose
from consumers.source import Backoff
from consumers.sql import migrate
from consumers.winni.consumer import migrations
from consumers.winni.search_index import index_all
from consumers.winni.store import queries
from tests import services

TRANSACTION = 500  # messages per transaction, as winni's default batch of events stores about that many
PER_CONVERSATION = 50
CONVERSATION = """
INSERT INTO conversations (id, session_key, ordinal, kind, first_exchange_id, last_exchange_id, created_at, last_at)
VALUES ($1, 'bench', $2, 'main', $1, $1, now(), now())
"""


def contents(count: int, seed: int = 1) -> list[str]:
    """``count`` message contents as JSON, winni's block lists."""
    rng = random.Random(seed)
    made: list[str] = []
    while len(made) < count:
        if rng.random() < 0.6:
            tool_id = f"toolu_{rng.getrandbits(64):016x}"
            made.append(
                orjson.dumps([{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": prose(rng, 60)}}]).decode()
            )
            made.append(
                orjson.dumps(
                    [{"type": "tool_result", "tool_use_id": tool_id, "content": prose(rng, rng.randint(500, 4000))}]
                ).decode()
            )
        else:
            made.append(orjson.dumps([{"type": "text", "text": prose(rng, 200)}]).decode())
            made.append(orjson.dumps([{"type": "text", "text": prose(rng, 600)}]).decode())
    return made[:count]


async def store(dsn: str, up_to: int, messages: list[str]) -> float:
    """Migrate a fresh schema up to ``up_to``, then store ``messages``; the seconds storing took."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, [m for m in migrations() if m.version <= up_to], "kgb")
        await conn.execute("SET search_path = kgb")
        ids = [uuid.uuid4() for _ in range(0, len(messages), PER_CONVERSATION)]
        await conn.executemany(CONVERSATION, [(c, n) for n, c in enumerate(ids)])
        now = datetime.now(UTC)
        rows = [
            (
                ids[i // PER_CONVERSATION],
                i % PER_CONVERSATION,
                "user" if i % 2 == 0 else "assistant",
                content,
                uuid.uuid4().bytes,
                str(uuid.uuid4()),
                "request",
                False,
                now,
            )
            for i, content in enumerate(messages)
        ]
        # Before 010 the statement did not clear the vector: a generated column cannot be set.
        upsert = queries().upsert_message if up_to >= 10 else queries().upsert_message.replace(", search = NULL", "")
        started = time.perf_counter()
        for at in range(0, len(rows), TRANSACTION):
            async with conn.transaction():
                await conn.executemany(upsert, rows[at : at + TRANSACTION])
        return time.perf_counter() - started
    finally:
        await conn.close()


async def index(dsn: str, batch: int) -> tuple[float, int]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"search_path": "kgb"})
    try:
        started = time.perf_counter()
        indexed = await index_all(pool, batch, asyncio.Event(), Backoff())
        return time.perf_counter() - started, indexed
    finally:
        await pool.close()


async def measure(admin_dsn: str, args: argparse.Namespace) -> None:
    messages = contents(args.messages)
    print(f"{len(messages):,} messages, {sum(map(len, messages)) / 1e6:.1f} MB of JSON", flush=True)
    plain = await services.create_database(admin_dsn)
    generated = await services.create_database(admin_dsn)
    try:
        baseline = await store(plain, 10, messages)
        print(f"(1) stored, search plain (010): {baseline:.2f}s, {len(messages) / baseline:,.0f} messages/s", flush=True)
        before = await store(generated, 6, messages)
        print(
            f"(2) stored, search generated (006): {before:.2f}s, {len(messages) / before:,.0f} messages/s "
            f"= {before / baseline:.1f}x the baseline's time",
            flush=True,
        )
        took, indexed = await index(plain, args.batch)
        print(
            f"(3) indexed after, {args.batch} a statement: {indexed:,} messages in {took:.2f}s, {indexed / took:,.0f} messages/s; "
            f"(1) + (3) = {(baseline + took) / before:.2f} of (2)'s time",
            flush=True,
        )
    finally:
        await services.drop_database(admin_dsn, plain)
        await services.drop_database(admin_dsn, generated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=6000, help="messages to store")
    parser.add_argument("--batch", type=int, default=200, help="KGB_WINNI_SEARCH_INDEX_BATCH")
    args = parser.parse_args()
    with services.postgres_server() as postgres:
        asyncio.run(measure(postgres.admin_dsn, args))


if __name__ == "__main__":
    main()
