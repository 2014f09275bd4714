"""The versioned price table, and what the API bills for a usage object: the pure pricing of `kgb consume metrics`.

Every expected cost is worked out by hand from Anthropic's published rates
(consumers/metrics/prices.toml names the pages), never from the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from consumers.metrics.billing import Part, Tokens, Usage, cost, parts_from_json, parts_json, usage_of
from consumers.metrics.prices import canonical_model, load_prices, parse_prices
from common.config import SettingsError

PRICES = load_prices()
M = Decimal(1_000_000)
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)

# Every model the current Claude Code (2.1.332) and SDKs name, and their base rates
# (input, output, 5m write, 1h write, cache read) as the pricing and model pages give them.
CURRENT_RATES = {
    "claude-opus-5-5": ("4", "20", "5", "8", "0.20"),
    "claude-haiku-5-5": ("0.10", "0.50", "0.125", "0.20", "0.01"),
    "claude-sonnet-5-5": ("2", "10", "2.50", "4", "0.10"),
    "claude-fable-5-1": ("10", "50", "12.50", "20", "0.25"),
    "claude-mythos-5-1": ("10", "50", "12.50", "20", "0.25"),
    "claude-fable-5": ("10", "50", "12.50", "20", "1"),
    "claude-mythos-5": ("10", "50", "12.50", "20", "1"),
    "claude-opus-5": ("5", "25", "6.25", "10", "0.50"),
    "claude-sonnet-5": ("2", "10", "2.50", "4", "0.20"),
    "claude-opus-4-8": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-4-7": ("5", "25", "6.25", "10", "0.50"),
    "claude-opus-4-6": ("5", "25", "6.25", "10", "0.50"),
    "claude-sonnet-4-6": ("3", "15", "3.75", "6", "0.30"),
    "claude-opus-4-5-20251101": ("5", "25", "6.25", "10", "0.50"),
    "claude-sonnet-4-5-20250929": ("3", "15", "3.75", "6", "0.30"),
    "claude-haiku-4-5-20251001": ("1", "5", "1.25", "2", "0.10"),
    "claude-opus-4-1-20250805": ("15", "75", "18.75", "30", "1.50"),
    "claude-sonnet-4-20250514": ("3", "15", "3.75", "6", "0.30"),
    "claude-opus-4-20250514": ("15", "75", "18.75", "30", "1.50"),
    "claude-3-5-haiku-20241022": ("0.80", "4", "1", "1.60", "0.08"),
}


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def usage(input: int = 0, output: int = 0, write_5m: int = 0, write_1h: int = 0, read: int = 0, **extra: object) -> Usage:
    return Usage(parts=(Part(Tokens(input, output, write_5m, write_1h, read)),), **extra)  # type: ignore[arg-type]


def by_hand(rates: tuple[str, ...], tokens: tuple[int, ...]) -> Decimal:
    return sum((n * Decimal(r) for n, r in zip(tokens, rates, strict=True)), Decimal(0)) / M


# --- the table ------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(CURRENT_RATES))
def test_every_current_model_has_its_published_price(model: str) -> None:
    price, _ = PRICES.price_of(model, NOW) or pytest.fail(f"{model} has no price")
    r = price.rates
    assert (r.input, r.output, r.cache_write_5m, r.cache_write_1h, r.cache_read) == tuple(map(Decimal, CURRENT_RATES[model]))


def test_the_shipped_table_is_dated_sourced_and_in_order() -> None:
    assert PRICES.source == "https://platform.claude.com/docs/en/about-claude/pricing"
    assert PRICES.batch_multiplier == Decimal("0.5")
    effective = [e.effective for e in PRICES.editions]
    assert effective == sorted(effective) and all(e.tzinfo is UTC for e in effective)
    assert [e.version for e in PRICES.editions] == [d.date().isoformat() for d in effective]
    assert PRICES.version == "2026-10-07"
    assert all(e.web_search_per_1000 == Decimal(10) for e in PRICES.editions)


def test_an_exchange_is_priced_by_the_edition_in_force_at_its_time() -> None:
    # Sonnet 5.5's cache reads: $0.20 from its release, $0.10 from 2026-10-07.
    before, edition = PRICES.price_of("claude-sonnet-5-5", at("2026-10-06T23:59:59"))  # type: ignore[misc]
    after, later = PRICES.price_of("claude-sonnet-5-5", at("2026-10-07T00:00:00"))  # type: ignore[misc]
    assert (before.rates.cache_read, edition.version) == (Decimal("0.20"), "2026-09-28")
    assert (after.rates.cache_read, later.version) == (Decimal("0.10"), "2026-10-07")
    # Opus 4.6's long-context premium, withdrawn on 2026-03-13.
    assert PRICES.price_of("claude-opus-4-6", at("2026-03-12"))[0].long_context is not None  # type: ignore[index]
    assert PRICES.price_of("claude-opus-4-6", at("2026-03-13"))[0].long_context is None  # type: ignore[index]


def test_a_model_before_its_first_listing_takes_its_first_price() -> None:
    price, edition = PRICES.price_of("claude-haiku-5-5", at("2026-01-01"))  # type: ignore[misc]
    assert (price.rates.input, edition.version) == (Decimal("0.10"), "2026-10-07")
    assert PRICES.edition_at(at("2020-01-01")).version == "2025-11-24"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-8", "claude-opus-4-8"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-5-5[1m]", "claude-opus-5-5"),
    ],
)
def test_canonical_model(model: str, expected: str) -> None:
    assert canonical_model(model) == expected


TABLE = """
source = "https://example.test/prices"
batch_multiplier = 0.5
[[editions]]
effective = 2026-01-01
web_search_per_1000 = 10
[editions.models.claude-x]
input = 1
output = 2
cache_write_5m = 3
cache_write_1h = 4
cache_read = 5
[editions.models.claude-x-20250101]
input = 9
output = 9
cache_write_5m = 9
cache_write_1h = 9
cache_read = 9
[[editions]]
effective = 2026-06-01T12:00:00
[editions.models.claude-x]
input = 2
output = 4
cache_write_5m = 6
cache_write_1h = 8
cache_read = 10
long_context = { above = 1000, input = 4, output = 6 }
fast = { input = 6, output = 12 }
"""


def test_an_exact_id_wins_and_a_later_edition_replaces_an_entry_whole() -> None:
    table = parse_prices(TABLE, "test")
    assert table.price_of("claude-x-20250101", at("2026-02-01"))[0].rates.input == Decimal(9)  # type: ignore[index]
    assert table.price_of("claude-x-20250202", at("2026-02-01"))[0].rates.input == Decimal(1)  # type: ignore[index]
    june, edition = table.price_of("claude-x", at("2026-06-01T12:00:00"))  # type: ignore[misc]
    assert edition.version == "2026-06-01" and june.rates.input == Decimal(2)
    assert table.price_of("claude-x", at("2026-06-01T11:59:59"))[0].rates.input == Decimal(1)  # type: ignore[index]
    assert table.editions[1].web_search_per_1000 == Decimal(10)  # kept from the edition before
    assert table.price_of("claude-y", NOW) is None and table.price_of(None, NOW) is None


def test_premium_cache_rates_scale_like_the_input_unless_given() -> None:
    june = parse_prices(TABLE, "test").price_of("claude-x", NOW)[0]  # type: ignore[index]
    assert june.long_context is not None and june.fast is not None
    assert (june.long_context.above, june.long_context.rates.cache_write_5m, june.long_context.rates.cache_read) == (
        1000,
        Decimal(12),
        Decimal(20),
    )
    assert (june.fast.output, june.fast.cache_write_1h, june.fast.cache_read) == (Decimal(12), Decimal(24), Decimal(30))
    haiku = PRICES.price_of("claude-haiku-5-5", NOW)[0].long_context  # type: ignore[index]
    assert haiku is not None and haiku.rates.cache_write_1h == Decimal("1.00") and haiku.rates.cache_read == Decimal("0.05")


def test_the_layout_before_editions_is_one_edition_forever() -> None:
    table = parse_prices(
        'version = "negotiated"\nweb_search_per_1000 = 5\n'
        "[models.claude-x]\ninput = 1\noutput = 2\ncache_write_5m = 3\ncache_write_1h = 4\ncache_read = 0.5\n",
        "old.toml",
    )
    price, edition = table.price_of("claude-x", at("1999-01-01"))  # type: ignore[misc]
    assert (edition.version, edition.web_search_per_1000, price.rates.cache_read) == ("negotiated", Decimal(5), Decimal("0.5"))
    assert table.batch_multiplier == Decimal("0.5")


MODEL = "[[editions]]\neffective = 2026-01-01\nweb_search_per_1000 = 10\n[editions.models.m]\n"
RATES_OK = "input = 1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n"


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        'version = "t"\nweb_search_per_1000 = 10\n',
        "editions = []\n",
        MODEL + "input = 1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\n",
        MODEL + 'input = "1"\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n',
        MODEL + RATES_OK + "batch = 1\n",
        MODEL + RATES_OK + "long_context = { input = 2, output = 2 }\n",
        MODEL + RATES_OK + "long_context = { above = -5, input = 2, output = 2 }\n",
        MODEL + RATES_OK + "fast = { input = 2 }\n",
        MODEL + RATES_OK + "us_only_multiplier = -1\n",
        MODEL + RATES_OK + "[[editions]]\neffective = 2025-01-01\n",
        "[[editions]]\neffective = 2026-01-01\nweb_search_per_1000 = -1\n",
        "[[editions]]\neffective = 2026-01-01\nwhen = 1\n",
        "[[editions]]\neffective = 'soon'\nweb_search_per_1000 = 1\n",
    ],
)
def test_a_broken_price_file_is_a_settings_error(text: str) -> None:
    with pytest.raises(SettingsError, match=r"bad\.toml"):
        parse_prices(text, "bad.toml")


def test_kgb_prices_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="KGB_PRICES"):
        load_prices(str(tmp_path / "nope.toml"))


# --- usage objects ------------------------------------------------------------------------


def test_the_newer_usage_fields_are_read() -> None:
    u = usage_of(
        {
            "input_tokens": 5,
            "output_tokens": 900,
            "cache_read_input_tokens": 7,
            "cache_creation_input_tokens": 4000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
            "output_tokens_details": {"thinking_tokens": 640},
            "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 3},
            "service_tier": "priority",
            "speed": "fast",
            "inference_geo": "us",
        }
    )
    assert u.tokens == Tokens(input=5, output=900, cache_write_5m=1000, cache_write_1h=3000, cache_read=7)
    assert (u.thinking, u.web_search_requests, u.web_fetch_requests) == (640, 2, 3)
    assert (u.service_tier, u.speed, u.inference_geo, u.listed) == ("priority", "fast", "us", False)


def test_writes_without_the_split_are_all_5m() -> None:
    u = usage_of({"input_tokens": 2, "output_tokens": 8, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 0})
    assert u.tokens == Tokens(input=2, output=8, cache_write_5m=1000)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "text",
        [],
        {"input_tokens": "12", "output_tokens": -3, "cache_read_input_tokens": True},
        {"server_tool_use": None, "cache_creation": "odd", "iterations": "x", "speed": 3},
        {"iterations": [None, 4], "output_tokens_details": []},
    ],
)
def test_odd_usage_counts_nothing_and_never_fails(raw: object) -> None:
    u = usage_of(raw)
    assert not u.billable() and u.tokens == Tokens() and u.speed is None


ITERATIONS = {
    # What the top level says: the message iterations' sums, without the compaction.
    "input_tokens": 1500,
    "output_tokens": 300,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "iterations": [
        {
            "type": "message",
            "input_tokens": 1000,
            "output_tokens": 100,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "compaction",
            "input_tokens": 180_000,
            "output_tokens": 2000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "advisor_message",
            "model": "claude-opus-5-5",
            "input_tokens": 400,
            "output_tokens": 50,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "fallback_message",
            "model": "claude-haiku-5-5",
            "input_tokens": 500,
            "output_tokens": 200,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ],
}


def test_iterations_are_the_bill_each_at_its_own_model_and_threshold() -> None:
    u = usage_of(ITERATIONS)
    assert u.listed and [p.type for p in u.parts] == ["message", "compaction", "advisor_message", "fallback_message"]
    assert (u.compactions, u.served_by) == (1, "claude-haiku-5-5")
    assert u.tokens == Tokens(input=181_900, output=2350)
    c = cost(u, "claude-haiku-5-5", NOW, PRICES)
    haiku, haiku_long, opus = ("0.10", "0.50"), ("0.50", "2.50"), ("4", "20")
    assert c.usd == (
        by_hand(haiku, (1000, 100)) + by_hand(haiku_long, (180_000, 2000)) + by_hand(opus, (400, 50)) + by_hand(haiku, (500, 200))
    )
    assert c.long_context and not c.unpriced and c.version == "2026-10-07"
    assert parts_from_json(parts_json(u), u.tokens) == u.parts
    assert parts_from_json(None, Tokens(input=3)) == (Part(Tokens(input=3)),)


def test_an_iteration_on_a_model_without_a_price_leaves_the_cost_unknown() -> None:
    raw = {
        **ITERATIONS,
        "iterations": [
            *ITERATIONS["iterations"],
            {  # type: ignore[list-item]
                "type": "advisor_message",
                "model": "claude-imaginary-9",
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
        ],
    }
    c = cost(usage_of(raw), "claude-haiku-5-5", NOW, PRICES)
    assert (c.usd, c.unpriced) == (None, ("claude-imaginary-9",))


# --- what the API bills beyond base rates ----------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "long"),
    [
        ((60_000, 100, 0, 0, 40_000), False),  # a prompt of exactly 100,000 tokens, cache reads included
        ((60_001, 100, 0, 0, 40_000), True),  # one over
        ((1, 100, 50_000, 10_000, 40_000), True),  # over by its cache writes
    ],
)
def test_haiku_5_5_above_100k_prompt_tokens_bills_every_token_at_the_higher_rates(tokens: tuple[int, ...], long: bool) -> None:
    rates = ("0.50", "2.50", "0.625", "1", "0.05") if long else ("0.10", "0.50", "0.125", "0.20", "0.01")
    c = cost(usage(*tokens), "claude-haiku-5-5", NOW, PRICES)
    assert (c.usd, c.long_context) == (by_hand(rates, tokens), long)


def test_sonnet_4_5_above_200k_input_tokens() -> None:
    over = (150_000, 1000, 30_000, 0, 20_001)  # 200,001 prompt tokens
    c = cost(usage(*over), "claude-sonnet-4-5-20250929", NOW, PRICES)
    assert c.usd == by_hand(("6", "22.50", "7.50", "12", "0.60"), over) and c.long_context
    at_limit = (150_000, 1000, 30_000, 0, 20_000)
    assert cost(usage(*at_limit), "claude-sonnet-4-5", NOW, PRICES).usd == by_hand(("3", "15", "3.75", "6", "0.30"), at_limit)


def test_opus_4_6_long_context_only_while_the_premium_stood() -> None:
    tokens = (250_000, 1000, 0, 0, 0)
    assert cost(usage(*tokens), "claude-opus-4-6", at("2026-03-01"), PRICES).usd == by_hand(
        ("10", "37.50", "0", "0", "0"), tokens
    )
    assert cost(usage(*tokens), "claude-opus-4-6", at("2026-04-01"), PRICES).usd == by_hand(("5", "25", "0", "0", "0"), tokens)


def test_fast_mode_rates_with_caching_on_top_and_no_long_context_premium() -> None:
    tokens = (300_000, 2000, 1000, 1000, 5000)
    c = cost(usage(*tokens, speed="fast"), "claude-opus-5-5", NOW, PRICES)
    # $8 / $40, cache writes 1.25x and 2x the fast input, reads 0.05x (Opus 5.5's multiplier)
    assert c.usd == by_hand(("8", "40", "10", "16", "0.40"), tokens) and c.fast and not c.long_context
    assert cost(usage(*tokens, speed="fast"), "claude-opus-4-8", NOW, PRICES).usd == by_hand(
        ("10", "50", "12.50", "20", "1"), tokens
    )


def test_fast_mode_on_a_model_without_a_fast_price_is_unpriced_not_guessed() -> None:
    c = cost(usage(10, 10, speed="fast"), "claude-opus-4-7", NOW, PRICES)
    assert (c.usd, c.unpriced) == (None, ("claude-opus-4-7 (fast mode)",))


def test_us_only_inference_is_1_1x_on_4_6_and_later() -> None:
    tokens = (1000, 100, 100, 0, 1000)
    c = cost(usage(*tokens, inference_geo="us"), "claude-sonnet-5-5", NOW, PRICES)
    assert c.usd == by_hand(("2", "10", "2.50", "4", "0.10"), tokens) * Decimal("1.1") and c.us_only
    plain = cost(usage(*tokens, inference_geo="global"), "claude-sonnet-5-5", NOW, PRICES)
    assert plain.usd == by_hand(("2", "10", "2.50", "4", "0.10"), tokens) and not plain.us_only
    older = cost(usage(*tokens, inference_geo="us"), "claude-haiku-4-5", NOW, PRICES)
    assert older.usd == by_hand(("1", "5", "1.25", "2", "0.10"), tokens) and not older.us_only


def test_modifiers_stack_fast_us_only_and_batch() -> None:
    tokens = (1000, 100, 0, 0, 0)
    fast_us = cost(usage(*tokens, speed="fast", inference_geo="us"), "claude-opus-5", NOW, PRICES)
    assert fast_us.usd == by_hand(("10", "50", "0", "0", "0"), tokens) * Decimal("1.1")
    batch_long = cost(usage(200_000, 100, service_tier="batch"), "claude-haiku-5-5", NOW, PRICES)
    assert batch_long.usd == by_hand(("0.50", "2.50"), (200_000, 100)) / 2 and batch_long.batch and batch_long.long_context
    assert cost(usage(*tokens), "claude-opus-5", NOW, PRICES, batch=True).usd == by_hand(("5", "25", "0", "0", "0"), tokens) / 2


def test_web_search_is_10_per_1000_and_web_fetch_is_free() -> None:
    c = cost(usage(100, 10, web_search_requests=3, web_fetch_requests=5), "claude-sonnet-5-5", NOW, PRICES)
    assert c.usd == by_hand(("2", "10"), (100, 10)) + Decimal(3) * Decimal(10) / 1000
    only_search = cost(Usage(web_search_requests=2), "claude-imaginary-9", NOW, PRICES)
    assert only_search.usd == Decimal("0.02") and not only_search.unpriced


def test_an_unknown_model_is_flagged_not_free() -> None:
    c = cost(usage(10, 1), "claude-imaginary-9", NOW, PRICES)
    assert (c.usd, c.unpriced) == (None, ("claude-imaginary-9",))
    assert cost(usage(10, 1), None, NOW, PRICES).unpriced == ("(no model)",)


def test_nothing_billable_costs_zero_whatever_the_model() -> None:
    for model in (None, "claude-imaginary-9", "claude-opus-4-8"):
        c = cost(Usage(), model, NOW, PRICES)
        assert (c.usd, c.unpriced, c.version) == (Decimal(0), (), "2026-10-07")


def test_the_version_is_the_edition_that_priced_it() -> None:
    assert cost(usage(1, 1), "claude-opus-4-8", at("2026-07-01"), PRICES).version == "2026-06-09"
    assert cost(usage(1, 1), "claude-haiku-5-5", at("2026-07-01"), PRICES).version == "2026-10-07"  # its first listing
    assert date.fromisoformat(cost(usage(1, 1), "claude-opus-4-8", NOW, PRICES).version)
