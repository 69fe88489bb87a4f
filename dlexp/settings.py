"""How a setting's valid values are stated: once, in the annotation of the argument or field
that reads it (`dropout: Probability = 0.0` in the MLP's signature, `epochs: Count` in the
trainer's settings). dlexp.checks reads these annotations to refuse a config value of the
wrong type or out of range before any work starts, saying what would work.

    Annotated[float, Range(0, 1, open_high=True, says="a probability in [0, 1)")]
    Annotated[str, OneOf("gaussian", "uniform")]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (either end open or absent); `says` it in words."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    says: str = ""

    def ok(self, value: Any) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below


@dataclass(frozen=True)
class OneOf:
    """One of these names."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        object.__setattr__(self, "values", values)

    def ok(self, value: Any) -> bool:
        return value in self.values

    @property
    def says(self) -> str:
        return ", ".join(self.values[:-1]) + f" or {self.values[-1]}"


@dataclass(frozen=True)
class Test:
    """Any other condition, with what it accepts in words."""

    ok: Callable[[Any], bool]
    says: str


Count = Annotated[int, Range(1, says="a whole number >= 1")]
NonNegativeInt = Annotated[int, Range(0, says="a whole number >= 0")]
NonNegative = Annotated[float, Range(0, says="a number >= 0")]
Positive = Annotated[float, Range(0, open_low=True, says="a positive number")]
Probability = Annotated[float, Range(0, 1, open_high=True, says="a probability in [0, 1)")]
Fraction = Annotated[float, Range(0, 1, open_high=True, says="a fraction: at least 0 and below 1")]
