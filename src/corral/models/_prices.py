"""Prices: USD per million tokens of each hosted model, read from ``prices.json`` (versioned
data, with its batch discounts), or given in a model's ``prices`` option. A model with no price
has cost ``None`` (unknown), never 0."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any

from corral.errors import ModelConfigError

__all__ = ["Price", "price_for"]


class Price:
    """USD per million tokens for one model; ``batch_discount`` is the share taken off in batch."""

    __slots__ = ("input", "output", "cached_input", "cache_write", "batch_discount")

    def __init__(
        self,
        input: Decimal,
        output: Decimal,
        cached_input: Decimal | None = None,
        cache_write: Decimal | None = None,
        batch_discount: Decimal = Decimal(0),
    ) -> None:
        self.input = input
        self.output = output
        self.cached_input = input if cached_input is None else cached_input
        self.cache_write = input if cache_write is None else cache_write
        self.batch_discount = batch_discount

    @classmethod
    def parse(cls, data: Any, batch_discount: Any = 0, where: str = "prices") -> Price:
        if not isinstance(data, dict):
            raise ModelConfigError(
                f"{where} must be a mapping such as {{input: 0.15, output: 0.60}} "
                "(USD per million tokens)"
            )
        unknown = set(data) - {"input", "output", "cached_input", "cache_write", "batch_discount"}
        if unknown:
            raise ModelConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use input, output, "
                "cached_input, cache_write, batch_discount"
            )

        def dec(key: str, default: Any = None) -> Decimal | None:
            v = data.get(key, default)
            if v is None:
                return None
            try:
                d = Decimal(str(v))
            except InvalidOperation:
                raise ModelConfigError(f"{where}: `{key}` must be a number, got {v!r}") from None
            if d < 0:
                raise ModelConfigError(f"{where}: `{key}` must not be negative")
            return d

        price_in, price_out = dec("input"), dec("output")
        if price_in is None or price_out is None:
            raise ModelConfigError(f"{where} needs both `input` and `output` (USD per million tokens)")
        return cls(
            input=price_in,
            output=price_out,
            cached_input=dec("cached_input"),
            cache_write=dec("cache_write"),
            batch_discount=dec("batch_discount", batch_discount) or Decimal(0),
        )

    def cost(
        self,
        uncached_input: int,
        output: int,
        cached_input: int = 0,
        cache_write: int = 0,
        batch: bool = False,
    ) -> Decimal:
        per_m = (
            uncached_input * self.input
            + cached_input * self.cached_input
            + cache_write * self.cache_write
            + output * self.output
        )
        total = per_m / Decimal(1_000_000)
        if batch:
            total *= 1 - self.batch_discount
        return total

    def __repr__(self) -> str:
        return f"Price(input={self.input}, output={self.output}, cached_input={self.cached_input})"


@cache
def _table() -> dict[str, Any]:
    try:
        text = resources.files("corral.models").joinpath("prices.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # a broken installation: prices unknown, never 0
        import warnings

        warnings.warn("corral/models/prices.json is missing: every cost is unknown", stacklevel=2)
        return {}
    return json.loads(text)


_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_for(provider: str, model: str) -> Price | None:
    """The listed price of ``provider``'s ``model`` (a dated snapshot such as
    ``gpt-4o-mini-2024-07-18`` falls back to its undated name), or ``None`` when unknown."""
    section = _table().get("providers", {}).get(provider)
    if not section:
        return None
    models = section.get("models", {})
    entry = models.get(model)
    if entry is None:
        entry = models.get(_DATE_SUFFIX.sub("", model))
    if entry is None:
        return None
    return Price.parse(entry, section.get("batch_discount", 0), where=f"prices.json {provider}/{model}")
