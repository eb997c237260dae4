"""The price table (services/runner/prices.yaml): every model dated and sourced, and the arithmetic held
against the providers' published prices (Anthropic: a 5-minute cache write is 1.25x the base input price,
a cache hit 0.1x; OpenAI: cached input at the model's listed discount, no charge for writing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.runner.pricing import PriceTable

TABLE = PriceTable.load(None)


def test_every_model_has_a_date_a_source_and_cache_prices() -> None:
    for model, price in TABLE.prices.items():
        assert price.date and price.source, model
        assert price.cache_write is not None and price.cache_read is not None, model


@pytest.mark.parametrize("model", [m for m in TABLE.prices if m.startswith("claude-")])
def test_anthropic_cache_prices_are_the_published_multipliers(model: str) -> None:
    price = TABLE.prices[model]
    assert price.cache_write == pytest.approx(1.25 * price.input)
    assert price.cache_read == pytest.approx(0.1 * price.input)


def test_anthropic_published_example_sonnet_4() -> None:
    # Published per MTok: $3 base input, $3.75 5m cache writes, $0.30 cache hits, $15 output.
    assert TABLE.cost_usd("claude-sonnet-4-20250514", 1_000_000, 0) == pytest.approx(3.0)
    assert TABLE.cost_usd("claude-sonnet-4-20250514", 0, 1_000_000) == pytest.approx(15.0)
    assert TABLE.cost_usd("claude-sonnet-4-20250514", 0, 0, cache_write_tokens=1_000_000) == pytest.approx(3.75)
    assert TABLE.cost_usd("claude-sonnet-4-20250514", 0, 0, cache_read_tokens=1_000_000) == pytest.approx(0.30)
    # One turn of a cached agent: 300 new input, 2,000 written, 8,000 read, 400 output.
    expected = (300 * 3.0 + 2_000 * 3.75 + 8_000 * 0.30 + 400 * 15.0) / 1_000_000
    assert TABLE.cost_usd("claude-sonnet-4-20250514", 300, 400, 2_000, 8_000) == pytest.approx(expected)
    assert expected == pytest.approx(0.0168)


def test_anthropic_published_example_haiku_3_5() -> None:
    # Published per MTok: $0.80 base input, $1 5m cache writes, $0.08 cache hits, $4 output.
    assert TABLE.cost_usd("claude-3-5-haiku-20241022", 0, 0, 1_000_000, 0) == pytest.approx(1.0)
    assert TABLE.cost_usd("claude-3-5-haiku-20241022", 0, 0, 0, 1_000_000) == pytest.approx(0.08)


@pytest.mark.parametrize(("model", "cached_fraction"), [("gpt-4o", 0.5), ("gpt-4o-mini", 0.5), ("gpt-4.1", 0.25),
                                                         ("gpt-4.1-mini", 0.25)])
def test_openai_cached_input_is_the_listed_discount(model: str, cached_fraction: float) -> None:
    price = TABLE.prices[model]
    assert price.cache_read == pytest.approx(cached_fraction * price.input)
    assert price.cache_write == price.input  # automatic caching: writing costs nothing extra


def test_openai_published_example_gpt_4o() -> None:
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output per 1M. A usage of prompt_tokens 2,006 with
    # cached_tokens 1,920 (OpenAI's prompt_tokens include the cached ones) is 86 uncached + 1,920 cached.
    cost = TABLE.cost_usd("gpt-4o", 2_006 - 1_920, 300, 0, 1_920)
    assert cost == pytest.approx((86 * 2.5 + 1_920 * 1.25 + 300 * 10.0) / 1_000_000)


def test_unknown_models_are_never_free() -> None:
    assert TABLE.cost_usd("some-new-model", 1_000_000, 0) == pytest.approx(TABLE.prices["default"].input)
    assert TABLE.prices["default"].input > 0


def test_price_table_file_overrides_and_a_missing_cache_price_is_the_input_price(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"claude-sonnet-4-20250514": {"input": 1.0, "output": 2.0},
                                "house-model": {"input": 4.0, "output": 8.0, "cache_read": 0.4}}))
    table = PriceTable.load(str(path))
    assert table.cost_usd("claude-sonnet-4-20250514", 0, 0, 1_000_000, 1_000_000) == pytest.approx(2.0)
    assert table.cost_usd("house-model", 0, 0, 1_000_000, 1_000_000) == pytest.approx(4.4)
    assert table.cost_usd("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)  # the rest is the built-in table


def test_an_invalid_price_file_stops_the_runner_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("gpt-4o: {input: cheap}\n")
    with pytest.raises(SystemExit, match="PRICE_TABLE_FILE"):
        PriceTable.load(str(path))
