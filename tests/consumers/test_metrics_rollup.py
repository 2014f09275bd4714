"""Usage facts of each half, batch results, and hourly rollups: the pure half of `kgb consume metrics`."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from consumers.metrics import mcp as metrics_mcp
from consumers.metrics import store
from consumers.metrics.batches import batch_items, is_batch_download, is_results
from consumers.metrics.billing import Cost, Part, Tokens, Usage, cost
from consumers.metrics.exporter import UsageMetrics
from consumers.metrics.prices import load_prices
from consumers.metrics.rollup import (
    Exchange,
    Priced,
    RollupKey,
    content_blocks,
    error_type_of,
    request_half,
    response_half,
    rollup,
    working_directory,
)
from tests.consumers.factories import request_event, response_event, text_message
from tests.consumers.query_columns import parameter_columns

PRICES = load_prices()
AT = datetime(2026, 11, 25, 14, 37, 5, tzinfo=UTC)


def test_request_half_carries_model_kind_time_project_and_key() -> None:
    request = request_event(model="claude-sonnet-4-5-20250929", agent_id="a1")
    half = request_half(request)
    assert (half.model, half.kind, half.agent_id, half.path) == ("claude-sonnet-4-5-20250929", "subagent", "a1", "/v1/messages")
    assert half.started_at.utcoffset() is not None and half.key_fingerprint == "9f2c" * 16
    assert half.project is None  # the factory's system prompt names no directory


def with_system(system: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [], "system": system}


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        # Claude Code 2.1.3xx: a list of the environment in the last system block
        (
            [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332"},
                {
                    "type": "text",
                    "text": "# Environment\n - Primary working directory: /home/ana/src/kgb\n - Is a git repository: true",
                },
            ],
            "/home/ana/src/kgb",
        ),
        # older Claude Code: <env> with "Working directory:"
        ("<env>\nWorking directory: /srv/app \nIs directory a git repo: Yes\nPlatform: linux\n</env>", "/srv/app"),
        ([{"type": "text", "text": "Primary working directory: C:\\Users\\ana\\My Project"}], "C:\\Users\\ana\\My Project"),
        ([{"type": "text", "text": "no directory named here"}], None),
        ([{"type": "text", "text": "Working directory:   \nnext line"}], None),
        ("x", None),
        (None, None),
        ([None, 3, {"type": "text"}], None),
    ],
)
def test_working_directory_from_the_system_prompt(system: Any, expected: str | None) -> None:
    assert working_directory(with_system(system)) == expected
    assert working_directory(None) is None


ENVIRONMENT = (
    "# Environment\nYou have been invoked in the following environment: \n - Primary working directory: {}\n"
    " - Is a git repository: false\n - Platform: linux\n"
)


def test_claude_code_2_1_332_names_it_in_a_system_message_and_the_latest_wins() -> None:
    """What the real CLI sends (tests/e2e/test_claude_code_usage.py checks it on the CLI itself)."""
    body = {
        "system": [{"type": "text", "text": "Working directory: /old/prompt"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "say hello"}]},
            {"role": "system", "content": [{"type": "text", "text": ENVIRONMENT.format("/tmp/work")}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Primary working directory: /not/this"}]},
            {"role": "system", "content": ENVIRONMENT.format("/tmp/work/sub (was /tmp/work)")},
        ],
    }
    assert working_directory(body) == "/tmp/work/sub"
    assert working_directory({**body, "messages": body["messages"][:2]}) == "/tmp/work"
    assert working_directory({**body, "messages": []}) == "/old/prompt"
    assert working_directory({"messages": "odd", "system": 7}) is None


def test_a_request_naming_its_directory_carries_it() -> None:
    body = orjson.loads(request_event()["request"]["body"])
    body["system"].append(
        {
            "type": "text",
            "text": "Here is useful information about the environment:\n"
            " - Primary working directory: /work/wt/prices\n - Platform: linux",
        }
    )
    assert request_half(request_event(body=orjson.dumps(body))).project == "/work/wt/prices"


def test_response_half_of_a_stream_the_client_left() -> None:
    request = request_event()
    half = response_half(response_event(request=request, client_disconnected=True))
    assert half.interrupted and half.error_type is None and half.has_usage
    assert half.started_at == request_half(request).started_at
    assert (half.stop_reason, dict(half.blocks)) == ("end_turn", {"text": 1})


def test_an_error_is_not_also_counted_as_interrupted() -> None:
    half = response_half(response_event(error=("overloaded_error", "Overloaded"), error_in_stream=True))
    assert (half.error_type, half.interrupted, half.has_usage) == ("overloaded_error", False, True)


def test_error_type_names_bare_failures_by_status() -> None:
    assert error_type_of(502, "upstream_unreachable") == "upstream_unreachable"
    assert error_type_of(404, None) == "http_404"
    assert error_type_of(200, None) is None


def test_response_usage_comes_from_the_message_usage() -> None:
    message = text_message(
        usage={
            "input_tokens": 4,
            "output_tokens": 30,
            "cache_read_input_tokens": 50_000,
            "output_tokens_details": {"thinking_tokens": 20},
            "service_tier": "standard",
        }
    )
    half = response_half(response_event(message=message))
    assert half.usage.tokens == Tokens(input=4, output=30, cache_read=50_000)
    assert (half.usage.thinking, half.usage.service_tier) == (20, "standard")


# The block types of the current API (anthropic SDK's BetaContentBlock), each counted by type.
NEWER_BLOCKS = [
    {"type": "thinking", "thinking": "", "signature": "s"},
    {"type": "compaction", "content": "Summary of the earlier turns"},
    {
        "type": "fallback",
        "from": {"model": "claude-opus-5-5"},
        "to": {"model": "claude-sonnet-5-5"},
        "trigger": {"type": "refusal"},
    },
    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_fetch", "input": {"url": "https://example.test"}},
    {
        "type": "web_fetch_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": {"type": "web_fetch_tool_result_error", "error_code": "url_not_accessible"},
    },
    {"type": "server_tool_use", "id": "srvtoolu_2", "name": "web_search", "input": {"query": "kgb"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_2", "content": []},
    {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "lookup", "server_name": "dewey", "input": {}},
    {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False, "content": [{"type": "text", "text": "ok"}]},
    {"type": "container_upload", "file_id": "file_011"},
    {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_3", "content": {"type": "code_execution_result"}},
    {"type": "text", "text": "done"},
]


def test_every_newer_block_type_is_counted() -> None:
    counts = content_blocks({"content": [*NEWER_BLOCKS, "odd", {"no": "type"}]})
    assert counts == {
        "thinking": 1,
        "compaction": 1,
        "fallback": 1,
        "server_tool_use": 2,
        "web_fetch_tool_result": 1,
        "web_search_tool_result": 1,
        "mcp_tool_use": 1,
        "mcp_tool_result": 1,
        "container_upload": 1,
        "code_execution_tool_result": 1,
        "text": 1,
    }
    assert content_blocks(None) == content_blocks({"content": "x"}) == {}


@pytest.mark.parametrize("stop_reason", ["compaction", "model_context_window_exceeded", "pause_turn", "refusal"])
def test_the_newer_stop_reasons_are_kept(stop_reason: str) -> None:
    message = {**text_message(), "stop_reason": stop_reason, "content": NEWER_BLOCKS}
    half = response_half(response_event(message=message, sse=False))
    assert half.stop_reason == stop_reason and half.blocks["compaction"] == 1


# --- Message Batches results ---------------------------------------------------------------------


def result_line(custom_id: str, outcome: str = "succeeded", message_id: str | None = "msg_1", **usage: int) -> bytes:
    result: dict[str, Any] = {"type": outcome}
    if outcome == "succeeded":
        message = {
            **text_message(model="claude-haiku-5-5", usage={"input_tokens": 0, "output_tokens": 0, **usage}),
            "id": message_id,
            "stop_reason": "end_turn",
        }
        result["message"] = message
    elif outcome == "errored":
        result["error"] = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    return orjson.dumps({"custom_id": custom_id, "result": result})


def test_a_results_file_bills_each_succeeded_request_once() -> None:
    body = b"\n".join(
        [
            result_line("a", message_id="msg_a", input_tokens=1000, output_tokens=100),
            result_line("b", "errored"),
            result_line("c", "expired"),
            result_line("a", message_id="msg_a", input_tokens=1000, output_tokens=100),  # the same line twice
            result_line("d", message_id=None, input_tokens=5),
            b"not json",
            b"",
        ]
    )
    assert is_results(body) and is_batch_download({"status": 200, "body": body})
    items = batch_items(body)
    assert [(i.custom_id, i.model, i.usage.tokens.input, i.stop_reason) for i in items] == [
        ("a", "claude-haiku-5-5", 1000, "end_turn"),
        ("d", "claude-haiku-5-5", 5, "end_turn"),
    ]
    assert items[0].item_id == "msg_a" and items[1].item_id.startswith("d:")
    assert batch_items(body)[1].item_id == items[1].item_id  # the same line keys the same item on a second download


@pytest.mark.parametrize("body", [b'{"id": "msg_1", "type": "message"}', b"event: message_start\n", b"", b"[]"])
def test_other_bodies_are_not_results(body: bytes) -> None:
    assert not is_results(body)
    assert not is_batch_download({"status": 404, "body": result_line("a")})


# --- rollups -----------------------------------------------------------------------------------------


def exchange(model: str | None, tokens: Tokens, **changes: Any) -> Exchange:
    fields: dict[str, Any] = dict(
        exchange_id="e",
        session_key="s",
        started_at=AT,
        model=model,
        kind="main",
        project="/p",
        key_fingerprint="k",
        status=200,
        error_type=None,
        interrupted=False,
        has_usage=True,
        usage=Usage(parts=(Part(tokens),)),
        stop_reason="end_turn",
        blocks={"text": 1},
        ttfb_ms=400.0,
        duration_ms=1900.0,
    )
    return Exchange(**{**fields, **changes})


def priced(e: Exchange) -> Priced:
    return Priced(e, cost(e.usage, e.model, e.started_at, PRICES))


def test_rollup_sums_by_hour_model_session_kind_project_and_key() -> None:
    a = priced(exchange("claude-opus-4-8", Tokens(input=100, output=50)))
    b = priced(
        exchange(
            "claude-opus-4-8",
            Tokens(),
            has_usage=False,
            usage=Usage(),
            error_type="overloaded_error",
            ttfb_ms=None,
            stop_reason=None,
            blocks={},
            started_at=AT.replace(minute=2),
        )
    )
    c = priced(exchange("claude-imaginary-9", Tokens(input=7)))
    d = priced(exchange("claude-opus-4-8", Tokens(output=1), kind="title", interrupted=True))
    e = priced(exchange("claude-opus-4-8", Tokens(input=1), project="/other"))
    totals = rollup([a, b, c, d, e])
    hour = AT.replace(minute=0, second=0)
    main = totals[(hour, "claude-opus-4-8", "s", "main", "/p", "k")]
    assert (main.requests, main.errors, main.input, main.output, main.ttfb_count, main.duration_count) == (2, 1, 100, 50, 1, 2)
    assert main.cost == Decimal("0.00175") and main.tallies == {
        ("error_type", "overloaded_error"): 1,
        ("stop_reason", "end_turn"): 1,
        ("block", "text"): 1,
    }
    assert (main.first_at, main.last_at) == (AT.replace(minute=2), AT)
    unpriced = totals[(hour, "claude-imaginary-9", "s", "main", "/p", "k")]
    assert (unpriced.cost, unpriced.unpriced_requests, unpriced.input) == (None, 1, 7)
    assert unpriced.tallies[("unpriced", "claude-imaginary-9")] == 1
    title = totals[(hour, "claude-opus-4-8", "s", "title", "/p", "k")]
    assert (title.interrupted, title.cost) == (1, Decimal("0.000025"))
    assert totals[(hour, "claude-opus-4-8", "s", "main", "/other", "k")].requests == 1


def test_rollup_counts_what_was_billed_beyond_base_rates() -> None:
    usage = Usage(
        parts=(Part(Tokens(input=150_000, output=10)), Part(Tokens(input=90_000), type="compaction")),
        listed=True,
        thinking=7,
        web_search_requests=2,
        web_fetch_requests=1,
        inference_geo="us",
    )
    p = priced(exchange("claude-haiku-5-5", Tokens(), usage=usage))
    (t,) = rollup([p]).values()
    assert (t.long_context_requests, t.us_only_requests, t.fast_requests, t.batch_requests) == (1, 1, 0, 0)
    assert (t.thinking, t.web_search_requests, t.web_fetch_requests, t.compactions, t.input) == (7, 2, 1, 1, 240_000)
    assert p.cost == Cost(p.cost.usd, "2026-10-07", long_context=True, us_only=True)


def test_an_unpriced_model_is_logged_once_and_counted_every_time(caplog: pytest.LogCaptureFixture) -> None:
    metrics = UsageMetrics("2026-10-07")
    with caplog.at_level("WARNING", logger="consumers.metrics.exporter"):
        metrics.observe([priced(exchange("claude-imaginary-9", Tokens(input=10))) for _ in range(3)])
        metrics.observe(
            [priced(exchange("claude-opus-4-7", Tokens(input=10), usage=Usage((Part(Tokens(input=1)),), speed="fast")))]
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "no price for claude-imaginary-9 in the price table (2026-10-07)" in warnings[0]
    assert "no price for claude-opus-4-7 (fast mode)" in warnings[1] and "KGB_PRICES" in warnings[1]
    counted = {
        s.labels["kgb_unpriced"]: s.value
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "kgb_unpriced_requests_total"
    }
    assert counted == {"claude-imaginary-9": 3.0, "claude-opus-4-7 (fast mode)": 1.0}


@pytest.mark.parametrize(
    ("row", "query"),
    [
        (store.UsageRequestRow, "add_requests"),
        (store.UsageResponseRow, "add_responses"),
        (store.CostRow, "set_costs"),
        (store.ProjectRow, "remember_projects"),
        (store.BatchItemRow, "add_batch_items"),
        (store.HourlyRow, "add_hourly"),
        (store.TallyRow, "add_tallies"),
        (metrics_mcp.McpUsageCallRow, "add_mcp_calls"),
        (metrics_mcp.McpUsageAnswerRow, "answer_mcp_calls"),
        (metrics_mcp.McpUsageDailyRow, "add_mcp_daily"),
    ],
)
def test_each_row_names_in_order_the_columns_its_query_writes(row: type[tuple[Any, ...]], query: str) -> None:
    assert row._fields == parameter_columns(store.queries()[query])  # type: ignore[attr-defined]


def test_hourly_rows_and_tallies_open_with_their_rollup_key() -> None:
    assert (
        store.HourlyRow._fields[: len(RollupKey._fields)] == store.TallyRow._fields[: len(RollupKey._fields)] == RollupKey._fields
    )
