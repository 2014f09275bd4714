"""`kgb consume metrics` on real Kafka and PostgreSQL: exact totals and costs, counted once.

Every expected cost is worked out here by hand from the shipped price table's
rates (Claude Opus 4.8: input 5, output 25, 5-minute cache write 6.25, 1-hour
cache write 10, cache read 0.50 USD per million tokens; Claude Haiku 4.5:
1, 5, 1.25, 2, 0.10; web search 10 USD per 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from consumers.metrics import MetricsSettings, run
from consumers.metrics.exporter import UsageMetrics
from kgb.config import KafkaSettings, SettingsError
from tests.consumers.conftest import FAST_BACKOFF, SETTLE_TIMEOUT, eventually, publish
from tests.consumers.factories import request_event, response_event, text_message
from tests.consumers.restarts import RESTARTS, batch_failures, built_calmly, dump, exchange_count, feeding, migrated, restarts_mid_batch, settled, task_alive
from tests.consumers.sessions import sample_events
from tests.services import free_port

M = Decimal(1_000_000)
OPUS, HAIKU, UNPRICED = "claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-imaginary-9"


def usage(input: int = 0, output: int = 0, write_5m: int | None = None, write_1h: int | None = None,
          read: int = 0, **extra: Any) -> dict[str, Any]:
    """Anthropic's usage object; the 5m/1h split only when given (older APIs sent none)."""
    u: dict[str, Any] = {"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": read,
                         "cache_creation_input_tokens": (write_5m or 0) + (write_1h or 0), **extra}
    if write_1h is not None:
        u["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m or 0, "ephemeral_1h_input_tokens": write_1h}
    return u


def title_body(session: str) -> bytes:
    return orjson.dumps({
        "model": HAIKU, "tools": [], "stream": True, "max_tokens": 32000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "<session>\nhi\n</session>"}]}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}}}},
    })


class Session:
    """Exchanges of one session, each with the cost and kind this test expects of it."""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())
        self.events: list[dict[str, Any]] = []
        self.expected: dict[str, tuple[str, Decimal | None]] = {}  # exchange id -> (kind, cost)

    def add(self, cost: Decimal | None, *, model: str = OPUS, kind: str = "main", u: dict[str, Any] | None = None,
            request: dict[str, Any] | None = None, **response: Any) -> dict[str, Any]:
        request = request or request_event(session_id=self.id, model=model)
        if u is not None:
            response.setdefault("message", text_message(model=model, usage=u))
        self.events += [request, response_event(request=request, **response)]
        self.expected[request["exchange_id"]] = (kind, cost)
        return request


def every_usage_shape() -> Session:
    s = Session()
    s.add((100 * Decimal(5) + 50 * Decimal(25)) / M, u=usage(100, 50))                                   # no cache
    s.add((3 * Decimal(5) + 12 * Decimal(25) + 19056 * Decimal("6.25")) / M, u=usage(3, 12, 19056, 0))  # 5m write
    s.add((5 * Decimal(5) + 20 * Decimal(25) + 1000 * Decimal("6.25") + 3000 * Decimal(10)) / M,
          u=usage(5, 20, 1000, 3000))                                                                   # 5m and 1h writes
    s.add((2 * Decimal(5) + 8 * Decimal(25) + 1000 * Decimal("6.25")) / M, u=usage(2, 8, 1000))         # write, no split
    s.add((4 * Decimal(5) + 30 * Decimal(25) + 50000 * Decimal("0.50")) / M, u=usage(4, 30, read=50000))  # cache read
    s.add((1000 * Decimal(5) + 200 * Decimal(25)) / M + 3 * Decimal(10) / 1000,
          u=usage(1000, 200, server_tool_use={"web_search_requests": 3}))                              # web search
    s.add((10 * Decimal(5) + 1 * Decimal(25) + 2000 * Decimal("0.50")) / M,
          u=usage(10, 1, read=2000), client_disconnected=True)                                          # interrupted
    s.add(Decimal(0), error=("overloaded_error", "Overloaded"))                                         # 529
    s.add((7 * Decimal(5) + 1 * Decimal(25)) / M, u=usage(7, 1), error=("overloaded_error", "Overloaded"),
          error_in_stream=True)                                                                         # error after message_start
    title = request_event(session_id=s.id, model=HAIKU, body=title_body(s.id))
    s.add((200 * Decimal(1) + 10 * Decimal(5)) / M, model=HAIKU, kind="title", u=usage(200, 10), request=title)
    count = request_event(session_id=s.id, path="/v1/messages/count_tokens", stream=False)
    s.add(Decimal(0), kind="count_tokens", request=count, sse=False, usage=None)
    s.add(None, model=UNPRICED, u=usage(1000, 100))                                                     # no price
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
        kafka=KafkaSettings(bootstrap=kafka.bootstrap, topic=topic), database_url=database,
        group=f"metrics-test-{uuid.uuid4().hex[:8]}", batch_size=50, port=free_port(), backoff=FAST_BACKOFF,
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
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def scraped(port: int, requests: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The scrape once it shows ``requests`` exchanges: the tables commit a moment before Prometheus sees them."""
    samples = await scrape(port)
    return samples if value(samples, "kgb_requests_total") == requests else None


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def test_every_usage_shape_gives_exact_totals_and_costs(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
) -> None:
    s = every_usage_shape()
    await publish(producer, topic, s.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(s.expected)))
        samples = await eventually(lambda: scraped(settings.port, len(s.expected)))

    rows = {r["exchange_id"]: r for r in await db.fetch("SELECT * FROM usage_exchanges")}
    assert {e: (r["kind"], r["cost_usd"]) for e, r in rows.items()} == s.expected
    assert {e for e, r in rows.items() if r["unpriced"]} == {e for e, (_, c) in s.expected.items() if c is None}
    assert all(r["prices_version"] == "2026-11-25" for r in rows.values())

    by_row = {(r["model"], r["kind"]): r for r in await daily(db)}
    assert set(by_row) == {(OPUS, "main"), (OPUS, "count_tokens"), (HAIKU, "title"), (UNPRICED, "main")}
    main = by_row[(OPUS, "main")]
    assert (main["requests"], main["errors"], main["interrupted"]) == (9, 2, 1)
    assert main["cost_usd"] == sum((c for e, (k, c) in s.expected.items() if k == "main" and c is not None
                                    and rows[e]["model"] == OPUS), Decimal(0))
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
    for column, token_type in [("input_tokens", "input"), ("output_tokens", "output"), ("cache_read_tokens", "cache_read"),
                               ("cache_write_5m_tokens", "cache_creation_5m"), ("cache_write_1h_tokens", "cache_creation_1h")]:
        assert value(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type=token_type) == EXPECTED_TOKENS[column]
    assert value(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input", kgb_kind="title") == 1
    assert value(samples, "gen_ai_client_operation_duration_seconds_count") == len(s.expected)
    assert value(samples, "gen_ai_client_operation_duration_seconds_sum", gen_ai_request_model=HAIKU) == pytest.approx(1.89325)


async def test_redelivery_and_replay_count_nothing_twice(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
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
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
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
    waiting = await db.fetchrow("SELECT has_request, has_response, cost_usd FROM usage_exchanges WHERE exchange_id = $1",
                                lone["exchange_id"])
    assert tuple(waiting) == (True, False, None)


async def test_kgb_usage_prints_json_and_a_table(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
) -> None:
    s = every_usage_shape()
    await publish(producer, topic, s.events)
    async with consuming(settings):
        await eventually(lambda: counted(db, len(s.expected)))
    env = {**os.environ, "KGB_DATABASE_URL": settings.database_url, "KGB_METRICS_SCHEMA": settings.db_schema}
    kgb = [sys.executable, "-c", "from kgb.cli import main; main()", "usage"]
    out = subprocess.run([*kgb, "--json", "--by", "kind"], env=env, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["by"] == ["kind"] and report["since"] is None
    kinds = {row["kind"]: row for row in report["rows"]}
    assert set(kinds) == {"main", "title", "count_tokens"}
    assert Decimal(kinds["title"]["cost_usd"]) == (200 * Decimal(1) + 10 * Decimal(5)) / M
    assert (kinds["main"]["requests"], kinds["main"]["unpriced_requests"]) == (10, 1)
    priced_total = sum((c for _, c in s.expected.values() if c is not None), Decimal(0))
    assert Decimal(report["total"]["cost_usd"]) == priced_total
    assert report["total"]["cache_write_1h_tokens"] == EXPECTED_TOKENS["cache_write_1h_tokens"]
    assert "model" not in kinds["main"] and "day" not in kinds["main"]

    day = (await db.fetchval("SELECT min(day) FROM usage_daily")).isoformat()
    table = subprocess.run([*kgb, "--by", "day,model", "--since", day], env=env, capture_output=True, text=True, check=True).stdout
    lines = table.splitlines()
    assert lines[0].split() == ["day", "model", "requests", "errors", "input", "output", "cache_w_5m", "cache_w_1h",
                                "cache_read", "web_search", "cost_usd"]
    assert any(line.startswith(day) and UNPRICED in line and line.rstrip().endswith("-*") for line in lines)
    assert lines[-2].split()[0] == "TOTAL" and lines[-2].split()[1] == "12" and lines[-2].split()[-1] == f"{priced_total:.6f}*"
    assert lines[-1] == "* 1 requests on models without a price; their cost is not included"
    later = subprocess.run([*kgb, "--json", "--since", "2999-01-01"], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(later)["rows"] == []


def test_kgb_usage_refuses_an_unknown_grouping() -> None:
    result = subprocess.run([sys.executable, "-c", "from kgb.cli import main; main()", "usage", "--by", "week"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--by takes a comma list of day, model, session, kind" in result.stderr


async def test_prices_apply_again_on_replay_from_a_kgb_prices_file(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection, database: str, tmp_path: Any,
) -> None:
    """A replay into fresh tables with another price table prices every exchange at the new rates."""
    s = Session()
    s.add(None, u=usage(1000, 100, 2000, 3000, read=4000, server_tool_use={"web_search_requests": 2}))
    await publish(producer, topic, s.events)
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'version = "negotiated-2026-12"\nweb_search_per_1000 = 5\n'
        '[models.claude-opus-4-8]\ninput = 1\noutput = 2\ncache_write_5m = 3\ncache_write_1h = 4\ncache_read = 0.5\n'
    )
    replay = dataclasses.replace(settings, group=settings.group + "-replay", db_schema="usage_replay", prices=str(prices),
                                 port=free_port())
    async with consuming(settings), consuming(replay):
        await eventually(lambda: counted(db, 1))
        await eventually(lambda: db.fetchval("SELECT to_regclass('usage_replay.usage_daily') IS NOT NULL"))
        await eventually(lambda: db.fetchval("SELECT coalesce(sum(requests), 0) = 1 FROM usage_replay.usage_daily"))
    shipped = (1000 * Decimal(5) + 100 * Decimal(25) + 2000 * Decimal("6.25") + 3000 * Decimal(10)
               + 4000 * Decimal("0.50")) / M + 2 * Decimal(10) / 1000
    negotiated = (1000 * Decimal(1) + 100 * Decimal(2) + 2000 * Decimal(3) + 3000 * Decimal(4)
                  + 4000 * Decimal("0.5")) / M + 2 * Decimal(5) / 1000
    assert await db.fetchrow("SELECT cost_usd, prices_version FROM usage_exchanges") == (shipped, "2026-11-25")
    assert await db.fetchrow("SELECT cost_usd, prices_version FROM usage_replay.usage_exchanges") == (negotiated, "negotiated-2026-12")
    assert await db.fetchval("SELECT cost_usd FROM usage_replay.usage_daily") == negotiated == Decimal("0.0312")


async def test_undecodable_messages_are_counted_and_passed(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
) -> None:
    s = Session()
    s.add((10 * Decimal(5)) / M, u=usage(10))
    await publish(producer, topic, [b"not avro", b"\xc3\x01 truncated"], partition=0)
    await publish(producer, topic, s.events, partition=0)
    metrics = UsageMetrics()
    async with consuming(settings, metrics):
        await eventually(lambda: counted(db, 1))
    rejected = {s.labels["error_class"]: s.value for f in metrics.registry.collect() for s in f.samples
                if s.name == "kgb_metrics_rejected_total"}
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
    result = subprocess.run([sys.executable, "-c", "from kgb.cli import main; main()", "usage"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot read usage from postgresql://kgb:****@127.0.0.1:" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_kgb_consume_metrics_help() -> None:
    out = subprocess.run([sys.executable, "-c", "from kgb.cli import main; main()", "consume", "metrics", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "KGB_METRICS_GROUP" in out and "--port" in out


async def test_the_claude_code_samples(
    producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, db: asyncpg.Connection,
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
        ("count_tokens", OPUS, 2, 0, 0, 0),       # 017, 022
        ("main", OPUS, 16, 3, 1, 0),              # 529 twice (030, 031), an error event (062); the empty stream (055)
        ("other", "", 5, 5, 0, 0),                # HEAD / at each start-up, which the stand-in answered 404
        ("title", HAIKU, 2, 0, 0, 0),             # 009, 011
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
    postgres: Any, producer: AIOKafkaProducer, topic: str, settings: MetricsSettings, caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarts land inside batches while sessions keep coming; the rollups end the same, row
    for row, as a build of the same topic that saw no restart: every exchange counted once."""
    caplog.set_level(logging.WARNING, logger="consumers")
    async with consuming(settings) as task:
        async with feeding(producer, topic) as sessions:
            await restarts_mid_batch(postgres, settings.database_url, migrated("kgb_metrics.usage_exchanges"), alive=task_alive(task))
        await settled(settings.database_url, settings.db_schema, partial(counted, n=exchange_count(sessions)), task_alive(task))
    assert len(batch_failures(caplog)) >= RESTARTS // 2, "the restarts landed inside batches"
    calm = dataclasses.replace(settings, group=f"{settings.group}-calm", port=free_port())
    rebuilt = await built_calmly(
        postgres, lambda dsn: consuming(dataclasses.replace(calm, database_url=dsn)), settings.db_schema,
        partial(counted, n=exchange_count(sessions)),
    )
    assert await dump(settings.database_url, settings.db_schema) == rebuilt
