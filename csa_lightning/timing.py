"""Timing ratios with their spread: what every tool that prints a speed ratio reports.

A ratio of two timings is measured as pairs: A and B are timed alternately in one process (A, B,
A, B ...), and each round gives one ratio B_i / A_i, so a slow moment of the machine hits both
sides of a pair. The ratio reported is the median of the rounds' ratios, with the range of their
middle half (the quartiles; the lowest and highest with fewer than four rounds, so that more rounds
narrow the range instead of widening it); it is *stable* when that range is within `STABLE_SPREAD`
of the median, and a tool
states a conclusion (such as "slow") only from a stable ratio: on a loaded machine an unstable one
is printed as such, never as a figure to believe. Imports nothing from the package.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Ratio", "paired_ratio", "STABLE_SPREAD", "spread_of"]

#: a ratio whose rounds range over more than this fraction of its median is unstable
STABLE_SPREAD = 0.25


@dataclass(frozen=True)
class Ratio:
    """A median ratio over paired rounds, with the range of the middle half of the rounds."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def spread(self) -> float:
        """(highest - lowest) / median: 0 for a single round (nothing to compare: never stable)."""
        if self.rounds < 2 or not self.median:
            return math.inf
        return (self.high - self.low) / abs(self.median)

    @property
    def stable(self) -> bool:
        """At least two rounds, ranging within `STABLE_SPREAD` of the median."""
        return self.spread <= STABLE_SPREAD

    def text(self, digits: int = 2) -> str:
        """``1.05x (0.98-1.12)``, and `` unstable`` where the range does not support the figure."""
        body = f"{self.median:.{digits}f}x ({self.low:.{digits}f}-{self.high:.{digits}f})"
        return body if self.stable else f"{body} unstable"


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Ratio:
    """The ratio of two series timed in alternating rounds (``numerators[i]`` beside ``denominators[i]``)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"paired_ratio needs two series of the same non-zero length, got {len(numerators)} "
                         f"and {len(denominators)}")  # fmt: skip
    ratios = [n / d for n, d in zip(numerators, denominators)]
    low, high = (min(ratios), max(ratios)) if len(ratios) < 4 else _quartiles(ratios)
    return Ratio(statistics.median(ratios), low, high, len(ratios))


def _quartiles(values: Sequence[float]):
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def spread_of(values: Sequence[float]) -> float:
    """(highest - lowest) / median of repeated measurements of one quantity (inf for fewer than two)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return math.inf
    middle = statistics.median(values)
    return (max(values) - min(values)) / abs(middle) if middle else math.inf
