"""`kgb consume metrics` on real Kafka and PostgreSQL: exact totals and costs, counted once.

Every expected cost is worked out here by hand from the shipped price table's
rates (Claude Opus 4.8: input 5, output 25, 5-minute cache write 6.25, 1-hour
cache write 10, cache read 0.50 USD per million tokens; Claude Haiku 4.5:
1, 5, 1.25, 2, 0.10; web search 10 USD per 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from consumers.metrics.settings import MetricsSettings
from consumers.metrics.consumer import run
from consumers.metrics.exporter import UsageMetrics
from consumers.metrics.usage import parse_query, report
from consumers.sql import load_migrations, migrate
from common.config import KafkaSettings, SettingsError
from tests.consumers.conftest import FAST_BACKOFF, SETTLE_TIMEOUT, eventually, publish
from tests.consumers.factories import request_event, response_event, text_message
from tests.consumers.restarts import (
    RESTARTS,
    batch_failures,
    built_calmly,
    dump,
    exchange_count,
    feeding,
    migrated,
    restarts_mid_batch,
    settled,
    task_alive,
)
from tests.consumers.sessions import sample_events
from tests.services import free_port

M = Decimal(1_000_000)
OPUS, HAIKU, UNPRICED = "claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-imaginary-9"
CURRENT = "2026-10-07"  # the shipped table's newest edition, in force for exchanges made now


def usage(
    input: int = 0, output: int = 0, write_5m: int | None = None, write_1h: int | None = None, read: int = 0, **extra: Any
) -> dict[str, Any]:
    """Anthropic's usage object; the 5m/1h split only when given (older APIs sent none)."""
    u: dict[str, Any] = {
        "input_tokens": input,
        "output_tokens": output,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": (write_5m or 0) + (write_1h or 0),
        **extra,
    }
    if write_1h is not None:
        u["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m or 0, "ephemeral_1h_input_tokens": write_1h}
    return u


def title_body(session: str) -> bytes:
    return orjson.dumps(
        {
            "model": HAIKU,
            "tools": [],
            "stream": True,
            "max_tokens": 32000,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "<session>\nhi\n</session>"}]}],
            "output_config": {
                "format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}}}
            },
        }
    )


class Session:
    """Exchanges of one session, each with the cost and kind this test expects of it."""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())
        self.events: list[dict[str, Any]] = []
        self.expected: dict[str, tuple[str, Decimal | None]] = {}  # exchange id -> (kind, cost)
        self.models: dict[str, str] = {}

    def add(
        self,
        cost: Decimal | None,
        *,
        model: str = OPUS,
        kind: str = "main",
        u: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        **response: Any,
    ) -> dict[str, Any]:
        request = request or request_event(session_id=self.id, model=model)
        if u is not None:
            response.setdefault("message", text_message(model=model, usage=u))
        self.events += [request, response_event(request=request, **response)]
        self.expected[request["exchange_id"]] = (kind, cost)
        self.models[request["exchange_id"]] = request["request"]["model"]
        return request


def every_usage_shape() -> Session:
    s = Session()
    s.add((100 * Decimal(5) + 50 * Decimal(25)) / M, u=usage(100, 50))  # no cache
    s.add((3 * Decimal(5) + 12 * Decimal(25) + 19056 * Decimal("6.25")) / M, u=usage(3, 12, 19056, 0))  # 5m write
    s.add(
        (5 * Decimal(5) + 20 * Decimal(25) + 1000 * Decimal("6.25") + 3000 * Decimal(10)) / M, u=usage(5, 20, 1000, 3000)
    )  # 5m and 1h writes
    s.add((2 * Decimal(5) + 8 * Decimal(25) + 1000 * Decimal("6.25")) / M, u=usage(2, 8, 1000))  # write, no split
    s.add((4 * Decimal(5) + 30 * Decimal(25) + 50000 * Decimal("0.50")) / M, u=usage(4, 30, read=50000))  # cache read
    s.add(
        (1000 * Decimal(5) + 200 * Decimal(25)) / M + 3 * Decimal(10) / 1000,
        u=usage(1000, 200, server_tool_use={"web_search_requests": 3}),
    )  # web search
    s.add(
        (10 * Decimal(5) + 1 * Decimal(25) + 2000 * Decimal("0.50")) / M, u=usage(10, 1, read=2000), client_disconnected=True
    )  # interrupted
    s.add(Decimal(0), error=("overloaded_error", "Overloaded"))  # 529
    s.add(
        (7 * Decimal(5) + 1 * Decimal(25)) / M, u=usage(7, 1), error=("overloaded_error", "Overloaded"), error_in_stream=True
    )  # error after message_start
    title = request_event(session_id=s.id, model=HAIKU, body=title_body(s.id))
    s.add((200 * Decimal(1) + 10 * Decimal(5)) / M, model=HAIKU, kind="title", u=usage(200, 10), request=title)
    count = request_event(session_id=s.id, path="/v1/messages/count_tokens", stream=False)
    s.add(Decimal(0), kind="count_tokens", request=count, sse=False, usage=None)
    s.add(None, model=UNPRICED, u=usage(1000, 100))  # no price
    return s


EXPECTED_TOKENS = {  # summed over every_usage_shape() by hand
    "input_tokens": 100 + 3 + 5 + 2 + 4 + 1000 + 10 + 7 + 200 + 1000,
    "output_tokens": 50 + 12 + 20 + 8 + 30 + 200 + 1 + 1 + 10 + 100,
    "cache_write_5m_tokens": 19056 + 1000 + 1000,
    "cache_write_1h_tokens": 3000,
    "cache_read_tokens": 50000 + 2000,
    "web_search_requests": 3,
}


@pytest.fixture
def settings(kafka: Any, database: str, topic: str) -> MetricsSettings:
    return MetricsSettings(
        kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic),
        database_url=database,
        group=f"metrics-test-{uuid.uuid4().hex[:8]}",
        batch_size=50,
        port=free_port(),
        backoff=FAST_BACKOFF,
    )


@pytest.fixture
async def db(database: str, settings: MetricsSettings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database, server_settings={"search_path": settings.db_schema})
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def consuming(settings: MetricsSettings, metrics: UsageMetrics | None = None) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, metrics))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, SETTLE_TIMEOUT)


async def counted(db: asyncpg.Connection, n: int) -> bool:
    try:
        return (await db.fetchval("SELECT coalesce(sum(requests), 0) FROM usage_daily")) >= n
    except asyncpg.UndefinedTableError:
        return False


async def daily(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch("SELECT * FROM usage_daily ORDER BY model, kind")]


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scraped(port: int, requests: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The scrape once it shows ``requests`` exchanges: the tables commit a moment before Prometheus sees them."""
    samples = await scrape(port)
    return samples if value(samples, "kgb_requests_total") == requests else None


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def test_every_usage_shape_gives_exact_totals_and_costs(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = every_usage_shape()
    await publish(producer, topic, s.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(s.expected)))
        samples = await eventually(lambda: scraped(settings.port, len(s.expected)))

    rows = {r["exchange_id"]: r for r in await db.fetch("SELECT * FROM usage_exchanges")}
    assert {e: (r["kind"], r["cost_usd"]) for e, r in rows.items()} == s.expected
    assert {e for e, r in rows.items() if r["unpriced"]} == {e for e, (_, c) in s.expected.items() if c is None}
    assert all(r["prices_version"] == CURRENT for r in rows.values())
    assert {e: r["unpriced_models"] for e, r in rows.items() if r["unpriced"]} == {
        e: [UNPRICED] for e, (_, c) in s.expected.items() if c is None
    }

    by_row = {(r["model"], r["kind"]): r for r in await daily(db)}
    assert set(by_row) == {(OPUS, "main"), (OPUS, "count_tokens"), (HAIKU, "title"), (UNPRICED, "main")}
    main = by_row[(OPUS, "main")]
    assert (main["requests"], main["errors"], main["interrupted"]) == (9, 2, 1)
    assert main["cost_usd"] == sum(
        (c for e, (k, c) in s.expected.items() if k == "main" and c is not None and rows[e]["model"] == OPUS), Decimal(0)
    )
    assert by_row[(UNPRICED, "main")]["cost_usd"] is None and by_row[(UNPRICED, "main")]["unpriced_requests"] == 1
    assert by_row[(OPUS, "count_tokens")]["cost_usd"] == Decimal(0)
    for column, expected in EXPECTED_TOKENS.items():
        assert sum(r[column] for r in by_row.values()) == expected, column
    errors = await db.fetch("SELECT error_type, errors FROM usage_daily_errors")
    assert [(r["error_type"], r["errors"]) for r in errors] == [("overloaded_error", 2)]

    priced_total = sum((c for _, c in s.expected.values() if c is not None), Decimal(0))
    assert value(samples, "kgb_cost_usd_total") == pytest.approx(float(priced_total))
    assert value(samples, "kgb_requests_total") == len(s.expected)
    assert value(samples, "kgb_errors_total", error_type="overloaded_error") == 2
    assert value(samples, "kgb_interrupted_total") == 1
    assert value(samples, "kgb_web_search_requests_total", gen_ai_request_model=OPUS) == 3
    assert value(samples, "kgb_unpriced_tokens_total", gen_ai_request_model=UNPRICED, gen_ai_token_type="input") == 1000
    assert value(samples, "kgb_unpriced_tokens_total", gen_ai_request_model=OPUS) == 0
    assert value(samples, "kgb_unpriced_requests_total", gen_ai_request_model=UNPRICED, kgb_unpriced=UNPRICED) == 1
    for column, token_type in [
        ("input_tokens", "input"),
        ("output_tokens", "output"),
        ("cache_read_tokens", "cache_read"),
        ("cache_write_5m_tokens", "cache_creation_5m"),
        ("cache_write_1h_tokens", "cache_creation_1h"),
    ]:
        assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type=token_type) == EXPECTED_TOKENS[column]
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input", kgb_kind="title") == 1
    assert value(samples, "gen_ai_client_operation_duration_seconds_count") == len(s.expected)
    assert value(samples, "gen_ai_client_operation_duration_seconds_sum", gen_ai_request_model=HAIKU) == pytest.approx(1.89325)


async def test_redelivery_and_replay_count_nothing_twice(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = every_usage_shape()
    await publish(producer, topic, s.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(s.expected)))
    before = {(r["model"], r["kind"]): r for r in await daily(db)}
    # The same events again (a producer retry), then a second group reading the
    # whole topic into the same tables (a replay); one new exchange marks the end.
    late = Session()
    late.id = s.id
    late.add(100 * Decimal(5) / M, u=usage(100))
    await publish(producer, topic, [*s.events, *late.events])
    metrics = UsageMetrics()
    async with consuming(dataclasses.replace(settings, group=settings.group + "-replay", port=free_port()), metrics):
        await eventually(lambda: counted(db, len(s.expected) + 1))
    after = {(r["model"], r["kind"]): r for r in await daily(db)}
    main_before, main_after = before.pop((OPUS, "main")), after.pop((OPUS, "main"))
    assert main_after["requests"] == main_before["requests"] + 1
    assert main_after["input_tokens"] == main_before["input_tokens"] + 100
    assert main_after["cost_usd"] == main_before["cost_usd"] + Decimal("0.0005")
    assert after == before
    requests = [s.value for f in metrics.registry.collect() for s in f.samples if s.name == "kgb_requests_total"]
    assert requests == [1.0]


async def rows(db: asyncpg.Connection) -> int:
    try:
        return await db.fetchval("SELECT count(*) FROM usage_exchanges")
    except asyncpg.UndefinedTableError:
        return 0


async def test_response_before_request_and_a_lone_half(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = Session()
    request = s.add((10 * Decimal(5) + 10 * Decimal(25)) / M, u=usage(10, 10))
    early_response, request_first = s.events[1], s.events[0]
    lone = request_event(session_id=s.id)
    await publish(producer, topic, [early_response, early_response, lone])
    async with consuming(settings):
        await eventually(lambda: rows(db))
        await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM usage_exchanges"))
        assert not await counted(db, 1)
        await publish(producer, topic, [request_first, request_first])
        await eventually(lambda: counted(db, 1))
    row = await db.fetchrow("SELECT * FROM usage_exchanges WHERE exchange_id = $1", request["exchange_id"])
    assert (row["model"], row["kind"], row["output_tokens"], row["cost_usd"]) == (OPUS, "main", 10, Decimal("0.0003"))
    assert await db.fetchval("SELECT sum(requests) FROM usage_daily") == 1
    waiting = await db.fetchrow(
        "SELECT has_request, has_response, cost_usd FROM usage_exchanges WHERE exchange_id = $1", lone["exchange_id"]
    )
    assert tuple(waiting) == (True, False, None)


async def test_kgb_usage_prints_json_and_a_table(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = every_usage_shape()
    await publish(producer, topic, s.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(s.expected)))
    out = kgb_usage(settings, "--json", "--by", "kind")
    report = json.loads(out)
    assert report["by"] == ["kind"] and report["since"] is None and report["until"] is None
    kinds = {row["kind"]: row for row in report["rows"]}
    assert set(kinds) == {"main", "title", "count_tokens"}
    assert Decimal(kinds["title"]["cost_usd"]) == (200 * Decimal(1) + 10 * Decimal(5)) / M
    assert (kinds["main"]["requests"], kinds["main"]["unpriced_requests"], kinds["main"]["cost_usd"]) == (10, 1, None)
    priced_total = sum((c for _, c in s.expected.values() if c is not None), Decimal(0))
    assert report["total"]["cost_usd"] is None and Decimal(report["total"]["priced_cost_usd"]) == priced_total
    assert report["unpriced"] == [{"model": UNPRICED, "requests": 1}]
    assert report["total"]["cache_write_1h_tokens"] == EXPECTED_TOKENS["cache_write_1h_tokens"]
    assert "model" not in kinds["main"] and "day" not in kinds["main"]

    day = (await db.fetchval("SELECT min(day) FROM usage_daily")).isoformat()
    lines = kgb_usage(settings, "--by", "day,model", "--since", day, "--until", day).splitlines()
    assert lines[0].split() == [
        "day",
        "model",
        "requests",
        "errors",
        "input",
        "output",
        "cache_w_5m",
        "cache_w_1h",
        "cache_read",
        "web_search",
        "cost_usd",
    ]
    assert any(line.startswith(day) and UNPRICED in line and line.rstrip().endswith("unknown") for line in lines)
    assert any(
        line.startswith(day) and OPUS in line and line.rstrip().endswith(f"{by_model_cost(s, OPUS):.6f}") for line in lines
    )
    total = next(line.split() for line in lines if line.startswith("TOTAL"))
    assert total[1] == "12" and total[-1] == "unknown"
    assert lines[-3:] == [
        "unknown: 1 request with usage the price table has no price for:",
        f"  {UNPRICED}: 1 request",
        f"The priced requests cost {priced_total:.6f} USD. Price what is missing in a KGB_PRICES file and rebuild the "
        "tables (README, Token usage and cost).",
    ]
    assert json.loads(kgb_usage(settings, "--json", "--since", "2999-01-01"))["rows"] == []
    assert json.loads(kgb_usage(settings, "--json", "--until", "2000-01-01"))["rows"] == []


async def usage_json(settings: MetricsSettings, by: str, since: str | None = None, until: str | None = None) -> Any:
    """What `kgb usage --json` prints, without starting a process."""
    return json.loads(await report(settings, parse_query(by, since, until), "json"))


def kgb_usage(settings: MetricsSettings, *args: str) -> str:
    env = {**os.environ, "KGB_DATABASE_URL": settings.database_url, "KGB_METRICS_SCHEMA": settings.db_schema}
    return subprocess.run(
        [sys.executable, "-c", "from kgb.cli import main; main()", "usage", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def by_model_cost(s: Session, model: str) -> Decimal:
    return sum((c for e, (_, c) in s.expected.items() if c is not None and s.models[e] == model), Decimal(0))


def test_kgb_usage_refuses_an_unknown_grouping() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from kgb.cli import main; main()", "usage", "--by", "week"], capture_output=True, text=True
    )
    assert (
        result.returncode == 2
        and "--by takes a comma list of day, month, block, model, session, kind, project, key" in result.stderr
    )


async def test_prices_apply_again_on_replay_from_a_kgb_prices_file(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
    database: str,
    tmp_path: Any,
) -> None:
    """A replay into fresh tables with another price table prices every exchange at the new rates."""
    s = Session()
    s.add(None, u=usage(1000, 100, 2000, 3000, read=4000, server_tool_use={"web_search_requests": 2}))
    await publish(producer, topic, s.events)
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'version = "negotiated-2026-12"\nweb_search_per_1000 = 5\n'
        "[models.claude-opus-4-8]\ninput = 1\noutput = 2\ncache_write_5m = 3\ncache_write_1h = 4\ncache_read = 0.5\n"
    )
    replay = dataclasses.replace(
        settings, group=settings.group + "-replay", db_schema="usage_replay", prices=str(prices), port=free_port()
    )
    async with consuming(settings), consuming(replay):
        await eventually(lambda: counted(db, 1))
        await eventually(lambda: db.fetchval("SELECT to_regclass('usage_replay.usage_daily') IS NOT NULL"))
        await eventually(lambda: db.fetchval("SELECT coalesce(sum(requests), 0) = 1 FROM usage_replay.usage_daily"))
    shipped = (
        1000 * Decimal(5) + 100 * Decimal(25) + 2000 * Decimal("6.25") + 3000 * Decimal(10) + 4000 * Decimal("0.50")
    ) / M + 2 * Decimal(10) / 1000
    negotiated = (
        1000 * Decimal(1) + 100 * Decimal(2) + 2000 * Decimal(3) + 3000 * Decimal(4) + 4000 * Decimal("0.5")
    ) / M + 2 * Decimal(5) / 1000
    assert await db.fetchrow("SELECT cost_usd, prices_version FROM usage_exchanges") == (shipped, CURRENT)
    assert await db.fetchrow("SELECT cost_usd, prices_version FROM usage_replay.usage_exchanges") == (
        negotiated,
        "negotiated-2026-12",
    )
    assert await db.fetchval("SELECT cost_usd FROM usage_replay.usage_daily") == negotiated == Decimal("0.0312")


async def test_undecodable_messages_are_counted_and_passed(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = Session()
    s.add((10 * Decimal(5)) / M, u=usage(10))
    await publish(producer, topic, [b"not avro", b"\xc3\x01 truncated"], partition=0)
    await publish(producer, topic, s.events, partition=0)
    metrics = UsageMetrics()
    async with consuming(settings, metrics):
        await eventually(lambda: counted(db, 1))
    rejected = {
        s.labels["error_class"]: s.value
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "kgb_metrics_rejected_total"
    }
    assert sum(rejected.values()) == 2 and all(rejected)


async def test_a_busy_metrics_port_is_a_settings_error(settings: MetricsSettings) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", settings.port)
    try:
        with pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{settings.port} \\(KGB_METRICS_PORT\\)"):
            await run(settings, asyncio.Event())
    finally:
        server.close()
        await server.wait_closed()


def test_kgb_usage_names_an_unreachable_database() -> None:
    env = {**os.environ, "KGB_DATABASE_URL": f"postgresql://kgb:s3cret@127.0.0.1:{free_port()}/winni"}
    result = subprocess.run(
        [sys.executable, "-c", "from kgb.cli import main; main()", "usage"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "cannot read usage from postgresql://kgb:****@127.0.0.1:" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_kgb_consume_metrics_help() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from kgb.cli import main; main()", "consume", "metrics", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KGB_METRICS_GROUP" in out and "--port" in out


async def test_the_claude_code_samples(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    """Every sample with the stand-in's answer: kinds, errors and interruptions as the samples README tells them."""
    events = sample_events()
    await publish(producer, topic, events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(events) // 2))
    rows = await db.fetch(
        "SELECT kind, model, sum(requests) AS requests, sum(errors) AS errors, sum(interrupted) AS interrupted,"
        " sum(unpriced_requests) AS unpriced, sum(cost_usd) AS cost_usd FROM usage_daily GROUP BY kind, model ORDER BY kind, model"
    )
    assert [tuple(r.values())[:6] for r in rows] == [
        ("count_tokens", OPUS, 2, 0, 0, 0),  # 017, 022
        ("main", OPUS, 16, 3, 1, 0),  # 529 twice (030, 031), an error event (062); the empty stream (055)
        ("other", "", 5, 5, 0, 0),  # HEAD / at each start-up, which the stand-in answered 404
        ("title", HAIKU, 2, 0, 0, 0),  # 009, 011
    ]
    errors = await db.fetch("SELECT error_type, sum(errors) AS n FROM usage_daily_errors GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in errors] == [("not_found_error", 5), ("overloaded_error", 3)]
    costs = {r["kind"]: r["cost_usd"] for r in rows}
    assert costs["count_tokens"] == costs["other"] == Decimal(0)
    # Every answered call carries the factory's usage: 3 input, 12 output, 19056 written to the 5-minute cache.
    per_opus_call = (3 * Decimal(5) + 12 * Decimal(25) + 19056 * Decimal("6.25")) / M
    per_haiku_call = (3 * Decimal(1) + 12 * Decimal(5) + 19056 * Decimal("1.25")) / M
    assert costs["title"] == 2 * per_haiku_call
    assert costs["main"] == 14 * per_opus_call  # 16 calls, 2 of them 529s without usage


async def test_metrics_rides_out_database_restarts_mid_batch(
    postgres: Any,
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarts land inside batches while sessions keep coming; the rollups end the same, row
    for row, as a build of the same topic that saw no restart: every exchange counted once."""
    caplog.set_level(logging.WARNING, logger="consumers")
    caplog.set_level(logging.DEBUG, logger="consumers.source")  # every failed attempt, for batch_failures
    async with consuming(settings) as task:
        async with feeding(producer, topic) as sessions:
            await restarts_mid_batch(
                postgres, settings.database_url, migrated("kgb_metrics.usage_exchanges"), alive=task_alive(task)
            )
        await settled(settings.database_url, settings.db_schema, partial(counted, n=exchange_count(sessions)), task_alive(task))
    assert len(batch_failures(caplog)) >= RESTARTS // 2, "the restarts landed inside batches"
    calm = dataclasses.replace(settings, group=f"{settings.group}-calm", port=free_port())
    rebuilt = await built_calmly(
        postgres,
        lambda dsn: consuming(dataclasses.replace(calm, database_url=dsn)),
        settings.db_schema,
        partial(counted, n=exchange_count(sessions)),
    )
    assert await dump(settings.database_url, settings.db_schema) == rebuilt


# --- projects, keys, months, blocks -------------------------------------------------------------


def micros(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1_000_000)


def in_project(s: Session, project: str | None, moment: str, key: str, *, title: bool = False) -> None:
    """An Opus exchange (or a Haiku title request, which names no directory) of ``s`` at ``moment`` with ``key``."""
    model = HAIKU if title else OPUS
    body = orjson.loads(title_body(s.id) if title else request_event(session_id=s.id)["request"]["body"])
    if project:  # where Claude Code 2.1.332 names it: a system message
        body["messages"].append(
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": f"# Environment\n - Primary working directory: {project}\n - Platform: linux"}
                ],
            }
        )
    request = request_event(
        session_id=s.id, model=model, body=orjson.dumps(body), received_at=micros(moment), api_key_fingerprint=key
    )
    rates = (1, 5) if title else (5, 25)
    s.add(
        (100 * Decimal(rates[0]) + 10 * Decimal(rates[1])) / M,
        model=model,
        kind="title" if title else "main",
        u=usage(100, 10),
        request=request,
    )


def report_sessions() -> tuple[Session, Session]:
    alpha, beta = Session(), Session()
    in_project(alpha, "/work/alpha", "2026-11-03T09:20:00", "k1" * 32)
    in_project(alpha, None, "2026-11-03T09:21:00", "k1" * 32, title=True)  # takes its session's directory
    in_project(alpha, "/work/alpha", "2026-11-03T13:10:00", "k1" * 32)  # in the block that began at 09:00
    in_project(alpha, "/work/alpha", "2026-11-03T14:05:00", "k1" * 32)  # past 14:00: the next block
    in_project(alpha, "/work/alpha", "2026-11-04T02:00:00", "k1" * 32)  # after a gap from 19:05
    in_project(beta, "/work/beta", "2026-12-01T10:00:00", "k2" * 32)
    return alpha, beta


async def test_kgb_usage_by_month_project_key_and_block_and_as_csv(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    alpha, beta = report_sessions()
    await publish(producer, topic, alpha.events)  # alpha's first: the title request then knows its session's directory
    await publish(producer, topic, beta.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, 6))
    opus, haiku = (100 * Decimal(5) + 10 * Decimal(25)) / M, (100 * Decimal(1) + 10 * Decimal(5)) / M

    months = {r["month"]: r for r in (await usage_json(settings, "month"))["rows"]}
    assert {m: (r["requests"], Decimal(r["cost_usd"])) for m, r in months.items()} == {
        "2026-11": (5, 4 * opus + haiku),
        "2026-12": (1, opus),
    }
    projects = {r["project"]: r["requests"] for r in (await usage_json(settings, "project"))["rows"]}
    assert projects == {"/work/alpha": 5, "/work/beta": 1}
    keys = {r["key_fingerprint"]: r["requests"] for r in (await usage_json(settings, "key"))["rows"]}
    assert keys == {"k1" * 32: 5, "k2" * 32: 1}
    until = await usage_json(settings, "day", until="2026-11-03")
    assert [(r["day"], r["requests"]) for r in until["rows"]] == [("2026-11-03", 4)] and until["until"] == "2026-11-03"

    table = await report(settings, parse_query("block", None, None))
    assert [line.split("  ")[0] for line in table.splitlines()] == [
        "block_start",
        "2026-11-03 09:00",
        "2026-11-03 14:00",
        "2026-11-03 19:05",
        "2026-11-04 02:00",
        "2026-11-04 07:00",
        "2026-12-01 10:00",
        "TOTAL",
    ]
    statuses = [
        row["status"] for row in csv.DictReader(io.StringIO(await report(settings, parse_query("block", None, None), "csv")))
    ]
    assert statuses == ["done", "done", "gap 6h 55m", "done", "gap 651h 00m", "done"]
    rows = list(csv.DictReader(io.StringIO(kgb_usage(settings, "--csv", "--by", "block,key"))))
    per_key = [
        (r["key_fingerprint"][:2], r["block"], r["requests"], r["models"], r["cost_usd"]) for r in rows if r["gap"] == "False"
    ]
    assert per_key == [
        ("k1", "2026-11-03T09:00:00+00:00", "3", f"{HAIKU}, {OPUS}", str(2 * opus + haiku)),
        ("k1", "2026-11-03T14:00:00+00:00", "1", OPUS, str(opus)),
        ("k1", "2026-11-04T02:00:00+00:00", "1", OPUS, str(opus)),
        ("k2", "2026-12-01T10:00:00+00:00", "1", OPUS, str(opus)),
    ]
    stored = {r["project"] for r in await db.fetch("SELECT project FROM usage_exchanges")}
    assert stored == {"/work/alpha", "/work/beta"}
    by_month = [tuple(r) for r in await db.fetch(readme_month_query().replace("kgb_metrics.", f"{settings.db_schema}."))]
    assert by_month == [("2026-11", "/work/alpha", 5, 4 * opus + haiku, 0), ("2026-12", "/work/beta", 1, opus, 0)]


def readme_month_query() -> str:
    """The SQL block of the README's token usage section."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    (block,) = re.findall(r"Months, projects and keys straight from SQL, for example:\n```sql\n(.*?)```", readme, re.DOTALL)
    return block


# --- Message Batches, the newer usage fields, what is billed beyond base rates ----------------------


def results_file(*lines: dict[str, Any]) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


def succeeded(custom_id: str, message_id: str, model: str, u: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "result": {"type": "succeeded", "message": {**text_message(model=model, usage=u), "id": message_id}},
    }


def download(s: Session, body: bytes) -> None:
    """``GET /v1/messages/batches/{id}/results`` answering ``body``: the download itself costs nothing."""
    request = request_event(
        session_id=s.id,
        method="GET",
        path="/v1/messages/batches/msgbatch_01/results",
        query="",
        body=b"",
        model=None,
        stream=False,
    )
    s.add(Decimal(0), kind="other", request=request, sse=False, body=body, message=None, usage=None, stop_reason=None)


async def test_a_results_file_downloaded_twice_bills_its_requests_once_at_the_batch_rate(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = Session()
    body = results_file(
        succeeded("a", "msg_01a", "claude-haiku-5-5", usage(150_000, 1000, service_tier="batch")),  # over Haiku's 100K
        succeeded("b", "msg_01b", "claude-sonnet-5-5", usage(1000, 100, read=10_000, service_tier="batch")),
        {"custom_id": "c", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "api_error"}}}},
        {"custom_id": "d", "result": {"type": "expired"}},
    )
    download(s, body)
    download(s, body)
    await publish(producer, topic, s.events)
    metrics = UsageMetrics()
    async with consuming(settings, metrics):
        await eventually(lambda: counted(db, 4))
    haiku = (150_000 * Decimal("0.50") + 1000 * Decimal("2.50")) / M / 2
    sonnet = (1000 * Decimal(2) + 100 * Decimal(10) + 10_000 * Decimal("0.10")) / M / 2
    items = {r["item_id"]: r for r in await db.fetch("SELECT * FROM usage_batch_items")}
    assert {k: (r["custom_id"], r["model"], r["cost_usd"]) for k, r in items.items()} == {
        "msg_01a": ("a", "claude-haiku-5-5", haiku),
        "msg_01b": ("b", "claude-sonnet-5-5", sonnet),
    }
    batch = {r["model"]: r for r in await db.fetch("SELECT * FROM usage_hourly WHERE kind = 'batch'")}
    assert {m: (r["requests"], r["batch_requests"], r["long_context_requests"], r["cost_usd"]) for m, r in batch.items()} == {
        "claude-haiku-5-5": (1, 1, 1, haiku),
        "claude-sonnet-5-5": (1, 1, 0, sonnet),
    }
    assert await db.fetchval("SELECT sum(requests) FROM usage_hourly WHERE kind = 'other' AND cost_usd = 0") == 2
    samples = registry_samples(metrics)
    assert value(samples, "kgb_premium_requests_total", kgb_pricing="batch") == 2
    assert value(samples, "kgb_premium_requests_total", kgb_pricing="long_context") == 1
    assert value(samples, "kgb_requests_total", kgb_kind="batch") == 2


def registry_samples(metrics: UsageMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.registry.collect() for s in f.samples}


def fields_session() -> Session:
    """Exchanges that each carry one of the newer usage fields, block types or stop reasons."""
    s = Session()
    thinking = usage(
        10,
        500,
        output_tokens_details={"thinking_tokens": 320},
        server_tool_use={"web_search_requests": 1, "web_fetch_requests": 2},
    )
    s.add((10 * Decimal(4) + 500 * Decimal(20)) / M + Decimal("0.01"), model="claude-opus-5-5", u=thinking)
    s.add((10 * Decimal(8) + 50 * Decimal(40)) / M, model="claude-opus-5-5", u=usage(10, 50, speed="fast"))
    s.add(
        (1000 * Decimal(2) + 50 * Decimal(10)) / M * Decimal("1.1"),
        model="claude-sonnet-5-5",
        u=usage(1000, 50, inference_geo="us", service_tier="priority"),
    )
    compacted = usage(
        2000,
        100,
        iterations=[
            {
                "type": "compaction",
                "input_tokens": 120_000,
                "output_tokens": 3000,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
            {
                "type": "message",
                "input_tokens": 2000,
                "output_tokens": 100,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
        ],
    )
    message = {
        **text_message(model="claude-haiku-5-5", usage=compacted),
        "stop_reason": "compaction",
        "content": [{"type": "compaction", "content": "Summary"}, {"type": "text", "text": "go on"}],
    }
    s.add(
        (120_000 * Decimal("0.50") + 3000 * Decimal("2.50") + 2000 * Decimal("0.10") + 100 * Decimal("0.50")) / M,
        model="claude-haiku-5-5",
        message=message,
        sse=False,
    )
    exceeded = {
        **text_message(usage=usage(5, 1)),
        "stop_reason": "model_context_window_exceeded",
        "content": [
            {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "lookup", "server_name": "dewey", "input": {}},
            {"type": "fallback", "from": {"model": OPUS}, "to": {"model": "claude-sonnet-5-5"}},
        ],
    }
    s.add((5 * Decimal(5) + 1 * Decimal(25)) / M, message=exceeded, sse=False)
    return s


async def test_the_newer_usage_fields_blocks_and_stop_reasons_reach_the_tables_and_metrics(
    producer: AIOKafkaProducer,
    topic: str,
    settings: MetricsSettings,
    db: asyncpg.Connection,
) -> None:
    s = fields_session()
    await publish(producer, topic, s.events)
    metrics = UsageMetrics()
    async with consuming(settings, metrics):
        await eventually(lambda: counted(db, len(s.expected)))
    rows = {r["exchange_id"]: r for r in await db.fetch("SELECT * FROM usage_exchanges")}
    assert {e: r["cost_usd"] for e, r in rows.items()} == {e: c for e, (_, c) in s.expected.items()}
    by_order = [rows[e] for e in s.expected]
    assert (by_order[0]["thinking_tokens"], by_order[0]["web_search_requests"], by_order[0]["web_fetch_requests"]) == (320, 1, 2)
    assert (by_order[1]["speed"], by_order[1]["fast"]) == ("fast", True)
    assert (by_order[2]["inference_geo"], by_order[2]["service_tier"], by_order[2]["us_only"]) == ("us", "priority", True)
    compaction = by_order[3]
    assert (compaction["stop_reason"], compaction["compactions"], compaction["long_context"], compaction["input_tokens"]) == (
        "compaction",
        1,
        True,
        122_000,
    )
    assert json.loads(compaction["parts"]) == [
        ["compaction", None, 120_000, 3000, 0, 0, 0],
        ["message", None, 2000, 100, 0, 0, 0],
    ]
    assert json.loads(compaction["content_blocks"]) == {"compaction": 1, "text": 1}
    assert by_order[4]["stop_reason"] == "model_context_window_exceeded"
    assert json.loads(by_order[4]["content_blocks"]) == {"mcp_tool_use": 1, "fallback": 1}

    hourly = await db.fetchrow(
        "SELECT sum(thinking_tokens) AS thinking, sum(web_fetch_requests) AS fetches, "
        "sum(fast_requests) AS fast, sum(us_only_requests) AS us, sum(long_context_requests) AS long, "
        "sum(compactions) AS compactions FROM usage_hourly"
    )
    assert tuple(hourly) == (320, 2, 1, 1, 1, 1)
    tallies = {
        (r["tally"], r["value"]): r["n"]
        for r in await db.fetch("SELECT tally, value, sum(n)::bigint AS n FROM usage_hourly_tallies GROUP BY 1, 2")
    }
    assert tallies == {
        ("stop_reason", "end_turn"): 3,
        ("stop_reason", "compaction"): 1,
        ("stop_reason", "model_context_window_exceeded"): 1,
        ("block", "text"): 4,
        ("block", "compaction"): 1,
        ("block", "mcp_tool_use"): 1,
        ("block", "fallback"): 1,
    }
    samples = registry_samples(metrics)
    assert value(samples, "kgb_stop_reasons_total", stop_reason="model_context_window_exceeded") == 1
    assert value(samples, "kgb_content_blocks_total", block_type="compaction") == 1
    assert value(samples, "kgb_thinking_tokens_total") == 320
    assert value(samples, "kgb_web_fetch_requests_total") == 2
    assert value(samples, "kgb_compactions_total") == 1
    assert value(samples, "kgb_premium_requests_total", kgb_pricing="fast") == 1


async def test_migration_2_keeps_what_the_daily_tables_held(database: str) -> None:
    """Tables written before hourly rollups: their exchanges become hours, and usage_daily reads the same through its view."""
    migrations = load_migrations("consumers.metrics")
    conn = await asyncpg.connect(database, server_settings={"search_path": "usage_before"})
    try:
        assert await migrate(conn, migrations[:1], "usage_before") == [1]
        await conn.execute("""
            INSERT INTO usage_exchanges (exchange_id, session_key, day, started_at, has_request, has_response, model, kind,
                status, error_type, interrupted, has_usage, input_tokens, output_tokens, cache_read_tokens, ttfb_ms,
                duration_ms, cost_usd, unpriced, prices_version)
            VALUES ('a', 's', '2026-11-20', '2026-11-20 09:15+00', true, true, 'claude-opus-4-8', 'main', 200, NULL, false,
                    true, 100, 10, 1000, 400, 1900, 0.00125, false, '2026-11-25'),
                   ('b', 's', '2026-11-20', '2026-11-20 23:59+00', true, true, 'claude-opus-4-8', 'main', 529,
                    'overloaded_error', false, false, 0, 0, 0, NULL, 300, 0, false, '2026-11-25'),
                   ('c', 's', '2026-11-21', '2026-11-21 00:01+00', true, true, 'claude-imaginary-9', 'main', 200, NULL, false,
                    true, 7, 1, 0, 350, 1000, NULL, true, '2026-11-25'),
                   ('d', 's', '2026-11-21', '2026-11-21 00:02+00', true, false, 'claude-opus-4-8', 'main', NULL, NULL, NULL,
                    NULL, 0, 0, 0, NULL, NULL, NULL, NULL, NULL)
        """)
        assert await migrate(conn, migrations[:2], "usage_before") == [2]
        daily = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT day::text, model, requests, errors, input_tokens, cache_read_tokens, cost_usd, unpriced_requests, "
                "ttfb_count, duration_ms_sum FROM usage_daily ORDER BY day, model"
            )
        ]
        assert daily == [
            ("2026-11-20", "claude-opus-4-8", 2, 1, 100, 1000, Decimal("0.00125"), 0, 1, 2200.0),
            ("2026-11-21", "claude-imaginary-9", 1, 0, 7, 0, None, 1, 1, 1000.0),
        ]
        errors = [tuple(r) for r in await conn.fetch("SELECT day::text, error_type, errors FROM usage_daily_errors")]
        assert errors == [("2026-11-20", "overloaded_error", 1)]
        hours = [tuple(r) for r in await conn.fetch("SELECT hour, requests, first_at, last_at FROM usage_hourly ORDER BY hour")]
        assert [(h.hour, n) for h, n, _, _ in hours] == [(9, 1), (23, 1), (0, 1)]
    finally:
        await conn.close()
