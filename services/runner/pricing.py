"""Model prices in USD per million tokens: the table in `prices.yaml` beside this module (each model with
the date its price was read and where), overridden per model by `PRICE_TABLE_FILE`.

A file is YAML or JSON: `{"<model>": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3,
"date": "...", "source": "..."}, ...}`. A model not in the table is costed at `default` (so an unknown
model is never free by accident); an entry without cache prices bills cached tokens at its input price
(never cheaper than the bill by accident).

What one call costs, as the providers bill it: `input_tokens` is the uncached input (Anthropic's
`input_tokens`; OpenAI's `prompt_tokens` less its cached tokens), `cache_write_tokens` the input written to
the cache (Anthropic's `cache_creation_input_tokens`), `cache_read_tokens` the input read from it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

BUILT_IN_FILE = Path(__file__).with_name("prices.yaml")
PER_TOKENS = 1_000_000


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    input: float
    output: float
    cache_write: float | None = None  # a 5-minute cache write; None: the input price
    cache_read: float | None = None  # a cache hit; None: the input price
    date: str = ""  # when the price was read
    source: str = ""  # where

    def cost_usd(self, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
                 cache_read_tokens: int = 0) -> float:
        write = self.input if self.cache_write is None else self.cache_write
        read = self.input if self.cache_read is None else self.cache_read
        total = (input_tokens * self.input + output_tokens * self.output + cache_write_tokens * write
                 + cache_read_tokens * read)
        return round(total / PER_TOKENS, 8)


def read_prices(path: Path) -> dict[str, Price]:
    raw = yaml.safe_load(path.read_text())
    return msgspec.convert(raw or {}, dict[str, Price])


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        prices = read_prices(BUILT_IN_FILE)
        if path:
            try:
                prices.update(read_prices(Path(path)))
            except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
                raise SystemExit(f"PRICE_TABLE_FILE={path} is invalid: {exc}") from None
        return cls(prices)

    def price(self, model: str) -> Price:
        return self.prices.get(model) or self.prices["default"]

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
                 cache_read_tokens: int = 0) -> float:
        return self.price(model).cost_usd(input_tokens, output_tokens, cache_write_tokens, cache_read_tokens)
