"""Usage facts, prices, cost and rollups: the pure half of `kgb consume metrics`."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from consumers.metrics.prices import canonical_model, load_prices, parse_prices
from consumers.metrics.rollup import (
    Exchange, Tokens, error_type_of, price, request_half, response_half, rollup, tokens_of,
)
from kgb.config import SettingsError
from tests.consumers.factories import request_event, response_event, text_message

PRICES = load_prices()


def test_tokens_with_the_5m_and_1h_split() -> None:
    usage = {
        "input_tokens": 5, "output_tokens": 20, "cache_creation_input_tokens": 4000, "cache_read_input_tokens": 7,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
        "server_tool_use": {"web_search_requests": 2}, "service_tier": "standard",
    }
    assert tokens_of(usage) == Tokens(input=5, output=20, cache_write_5m=1000, cache_write_1h=3000, cache_read=7, web_search_requests=2)


def test_tokens_without_the_split_are_all_5m() -> None:
    usage = {"input_tokens": 2, "output_tokens": 8, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 0}
    assert tokens_of(usage) == Tokens(input=2, output=8, cache_write_5m=1000)


@pytest.mark.parametrize("usage", [None, "text", [], {"input_tokens": "12", "output_tokens": -3, "cache_read_input_tokens": True},
                                   {"server_tool_use": None, "cache_creation": "odd"}])
def test_odd_usage_counts_nothing_and_never_fails(usage: object) -> None:
    assert tokens_of(usage) == Tokens()


def test_request_half_carries_model_kind_and_day() -> None:
    request = request_event(model="claude-sonnet-4-5-20250929", agent_id="a1")
    half = request_half(request)
    assert (half.model, half.kind, half.agent_id, half.path) == ("claude-sonnet-4-5-20250929", "subagent", "a1", "/v1/messages")
    assert half.day == half.started_at.date() and half.started_at.utcoffset() is not None


def test_response_half_of_a_stream_the_client_left() -> None:
    request = request_event()
    half = response_half(response_event(request=request, client_disconnected=True))
    assert half.interrupted and half.error_type is None and half.has_usage
    assert half.started_at == request_half(request).started_at


def test_an_error_is_not_also_counted_as_interrupted() -> None:
    half = response_half(response_event(error=("overloaded_error", "Overloaded"), error_in_stream=True))
    assert (half.error_type, half.interrupted, half.has_usage) == ("overloaded_error", False, True)


def test_error_type_names_bare_failures_by_status() -> None:
    assert error_type_of(502, "upstream_unreachable") == "upstream_unreachable"
    assert error_type_of(404, None) == "http_404"
    assert error_type_of(200, None) is None


@pytest.mark.parametrize(("model", "expected"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("claude-opus-4-8", "claude-opus-4-8"),
    ("claude-opus-4-20250514", "claude-opus-4"),
])
def test_canonical_model(model: str, expected: str) -> None:
    assert canonical_model(model) == expected


def test_an_exact_id_in_the_table_wins_over_its_family() -> None:
    table = parse_prices(
        'version = "t"\nweb_search_per_1000 = 10\n'
        '[models.claude-x]\ninput = 1\noutput = 2\ncache_write_5m = 3\ncache_write_1h = 4\ncache_read = 5\n'
        '[models.claude-x-20250101]\ninput = 9\noutput = 9\ncache_write_5m = 9\ncache_write_1h = 9\ncache_read = 9\n',
        "test",
    )
    assert table.price_of("claude-x-20250101").input == Decimal(9)
    assert table.price_of("claude-x-20250202").input == Decimal(1)
    assert table.price_of("claude-y") is None and table.price_of(None) is None


@pytest.mark.parametrize("text", [
    "not toml [",
    'version = "t"\nweb_search_per_1000 = 10\n',
    'version = "t"\nweb_search_per_1000 = 10\n[models.m]\ninput = 1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\n',
    'version = "t"\nweb_search_per_1000 = 10\n[models.m]\ninput = "1"\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n',
    'version = "t"\nweb_search_per_1000 = -1\n[models]\n',
    'version = "t"\nweb_search_per_1000 = 1\n[models.m]\ninput = 1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\nbatch = 1\n',
])
def test_a_broken_price_file_is_a_settings_error(text: str) -> None:
    with pytest.raises(SettingsError, match="bad.toml"):
        parse_prices(text, "bad.toml")


def test_kgb_prices_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="KGB_PRICES"):
        load_prices(str(tmp_path / "nope.toml"))


def test_the_shipped_table_is_dated_and_has_the_claude_code_models() -> None:
    assert date.fromisoformat(PRICES.version)
    assert PRICES.source.startswith("https://")
    assert PRICES.web_search_per_1000 == Decimal(10)
    for model in ("claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-sonnet-4-5-20250929"):
        assert PRICES.price_of(model) is not None, model


def exchange(model: str | None, tokens: Tokens, **changes: object) -> Exchange:
    fields = dict(
        exchange_id="e", session_key="s", day=date(2026, 11, 25), model=model, kind="main", status=200,
        error_type=None, interrupted=False, has_usage=True, tokens=tokens, ttfb_ms=400.0, duration_ms=1900.0,
    )
    return Exchange(**{**fields, **changes})  # type: ignore[arg-type]


def test_cost_of_every_token_kind_by_hand() -> None:
    # Claude Sonnet 4.5: input 3, output 15, 5m write 3.75, 1h write 6, cache read 0.30 per million; search 10 per 1000.
    tokens = Tokens(input=1_000, output=2_000, cache_write_5m=10_000, cache_write_1h=20_000, cache_read=300_000, web_search_requests=3)
    expected = (
        Decimal(1_000) * Decimal("3") + Decimal(2_000) * Decimal("15") + Decimal(10_000) * Decimal("3.75")
        + Decimal(20_000) * Decimal("6") + Decimal(300_000) * Decimal("0.30")
    ) / Decimal(1_000_000) + Decimal(3) * Decimal(10) / Decimal(1_000)
    priced = price(exchange("claude-sonnet-4-5-20250929", tokens), PRICES)
    assert priced.cost == expected == Decimal("0.2805") + Decimal("0.03")
    assert not priced.unpriced


def test_an_unknown_model_is_flagged_not_free() -> None:
    priced = price(exchange("claude-imaginary-9", Tokens(input=10, output=1)), PRICES)
    assert priced.cost is None and priced.unpriced


def test_nothing_billable_costs_zero_whatever_the_model() -> None:
    for model in (None, "claude-imaginary-9", "claude-opus-4-8"):
        priced = price(exchange(model, Tokens(), has_usage=False, status=529, error_type="overloaded_error"), PRICES)
        assert priced.cost == Decimal(0) and not priced.unpriced


def test_rollup_sums_by_day_model_session_kind() -> None:
    a = price(exchange("claude-opus-4-8", Tokens(input=100, output=50)), PRICES)
    b = price(exchange("claude-opus-4-8", Tokens(), has_usage=False, error_type="overloaded_error", ttfb_ms=None), PRICES)
    c = price(exchange("claude-imaginary-9", Tokens(input=7)), PRICES)
    d = price(exchange("claude-opus-4-8", Tokens(output=1), kind="title", interrupted=True), PRICES)
    totals = rollup([a, b, c, d])
    main = totals[(date(2026, 11, 25), "claude-opus-4-8", "s", "main")]
    assert (main.requests, main.errors, main.input, main.output, main.ttfb_count) == (2, 1, 100, 50, 1)
    assert main.cost == Decimal("0.00175") and main.errors_by_type == {"overloaded_error": 1}
    assert main.duration_ms_sum == 3800.0 and main.ttfb_ms_sum == 400.0
    unpriced = totals[(date(2026, 11, 25), "claude-imaginary-9", "s", "main")]
    assert (unpriced.cost, unpriced.unpriced_requests, unpriced.input) == (None, 1, 7)
    title = totals[(date(2026, 11, 25), "claude-opus-4-8", "s", "title")]
    assert (title.interrupted, title.cost) == (1, Decimal("0.000025"))


def test_response_usage_comes_from_the_message_usage() -> None:
    message = text_message(usage={"input_tokens": 4, "output_tokens": 30, "cache_read_input_tokens": 50_000})
    half = response_half(response_event(message=message))
    assert half.tokens == Tokens(input=4, output=30, cache_read=50_000)
