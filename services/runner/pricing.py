"""Model prices in USD per million tokens: built-in defaults, overridden by `PRICE_TABLE_FILE`.

The file is YAML or JSON: `{"<model>": {"input": 3.0, "output": 15.0}, ...}`. A model not in the
table is costed at `default` (so an unknown model is never free by accident).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml


class Price(msgspec.Struct, frozen=True, kw_only=True):
    input: float
    output: float


BUILT_IN: dict[str, Price] = {
    "claude-opus-4-20250514": Price(input=15.0, output=75.0),
    "claude-sonnet-4-20250514": Price(input=3.0, output=15.0),
    "claude-3-5-haiku-20241022": Price(input=0.8, output=4.0),
    "gpt-4o": Price(input=2.5, output=10.0),
    "gpt-4o-mini": Price(input=0.15, output=0.6),
    "default": Price(input=3.0, output=15.0),
}


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        prices = dict(BUILT_IN)
        if path:
            try:
                raw = yaml.safe_load(Path(path).read_text())
                prices.update(msgspec.convert(raw or {}, dict[str, Price]))
            except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
                raise SystemExit(f"PRICE_TABLE_FILE={path} is invalid: {exc}") from None
        return cls(prices)

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.prices.get(model) or self.prices["default"]
        return round((input_tokens * price.input + output_tokens * price.output) / 1_000_000, 8)
