"""Seed-paired comparisons for ablation reports: Student's t intervals and Holm's correction.

An ablation's variants share their seeds (initialisation and data order), so each variant is
compared with the baseline seed by seed: the differences d_i = variant_i - baseline_i have a mean,
a sample standard deviation s and a 95 % interval mean +/- t(0.975, n - 1) s / sqrt(n). Comparing
m variants with one baseline is m tests: Holm's step-down method ranks them by p-value and tests
the k-th smallest at level alpha / (m - k + 1), stopping at the first that fails; its corrected
interval is the t interval at that level. A variant is *significant* only when Holm rejects it,
which is when its corrected interval excludes 0 and every smaller p-value was rejected too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["PairedComparison", "t_interval", "paired_comparisons", "holm_adjust", "MIN_SEEDS"]

#: fewer pairs than this give no interval (with 2, t(0.975, 1) = 12.7 makes any interval meaningless)
MIN_SEEDS = 3


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """Student's t interval of the mean of ``values`` (None with fewer than 2 values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def holm_adjust(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values, in the input order: reject where adjusted p < alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class PairedComparison:
    """One variant against the baseline over the seeds both have."""

    variant: str
    seeds: List[int]
    mean_difference: float
    sd_difference: Optional[float] = None
    interval: Optional[Tuple[float, float]] = None  # 95 %, uncorrected
    p_value: Optional[float] = None
    holm_p: Optional[float] = None
    holm_interval: Optional[Tuple[float, float]] = None  # at Holm's level for this variant's rank
    significant: Optional[bool] = None  # None: too few seeds to say

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_comparisons(
    baseline: Mapping[int, float], variants: Mapping[str, Mapping[int, float]], alpha: float = 0.05
) -> List[PairedComparison]:
    """Compare every variant's per-seed values with the baseline's on their shared seeds.

    Args:
        baseline: seed -> value of the baseline.
        variants: variant name -> (seed -> value).
        alpha: family-wise error rate (0.05: 95 % intervals).
    """
    from scipy import stats

    results: List[PairedComparison] = []
    for name, values in variants.items():
        seeds = sorted(set(values) & set(baseline))
        diffs = [values[s] - baseline[s] for s in seeds]
        mean = sum(diffs) / len(diffs) if diffs else float("nan")
        result = PairedComparison(name, seeds, mean)
        if len(diffs) >= MIN_SEEDS:
            n = len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
            result.sd_difference = sd
            result.interval = t_interval(diffs, 1 - alpha)
            if sd > 0:
                result.p_value = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
            else:  # identical differences: certain if nonzero, nothing if zero
                result.p_value = 0.0 if mean != 0 else 1.0
        results.append(result)
    tested = [r for r in results if r.p_value is not None]
    m = len(tested)
    for r, adjusted in zip(tested, holm_adjust([r.p_value or 0.0 for r in tested])):
        r.holm_p = adjusted
        r.significant = adjusted < alpha
    for rank, r in enumerate(sorted(tested, key=lambda r: r.p_value or 0.0)):  # tested: every p_value is set
        diffs = [variants[r.variant][s] - baseline[s] for s in r.seeds]
        r.holm_interval = t_interval(diffs, 1 - alpha / (m - rank))
    return results


def per_variant_intervals(values: Dict[str, Sequence[float]], confidence: float = 0.95) -> Dict[str, Optional[float]]:
    """Half-widths of each variant's t interval of the mean (None with fewer than 2 values): the
    error bars of the ablation plot."""
    out: Dict[str, Optional[float]] = {}
    for name, items in values.items():
        interval = t_interval(list(items), confidence)
        out[name] = None if interval is None else (interval[1] - interval[0]) / 2
    return out
