"""Timing ratios with their spread (csa_lightning.timing): paired rounds, the range reported, and no
conclusion drawn from an unstable ratio (the benchmark, the block check kit and the ablation report)."""

import math

import pytest

from csa_lightning.timing import STABLE_SPREAD, Ratio, paired_ratio, spread_of


def test_a_ratio_is_the_median_of_paired_rounds_with_their_range():
    # the machine slows down in round 3 for both sides: the pair's ratio is unaffected
    ratio = paired_ratio([2.0, 2.2, 8.0], [1.0, 1.1, 4.0])
    assert ratio == Ratio(2.0, 2.0, 2.0, 3) and ratio.stable
    assert ratio.text() == "2.00x (2.00-2.00)"
    # one slow round of one side only: the range shows it
    noisy = paired_ratio([1.0, 5.0, 1.2], [1.0, 1.0, 1.0])
    assert noisy.median == 1.2 and (noisy.low, noisy.high) == (1.0, 5.0) and not noisy.stable
    assert noisy.text().endswith(" unstable")


def test_more_rounds_use_the_quartiles_so_the_range_narrows_instead_of_widening():
    ratios = [1.0] * 10 + [3.0]
    ratio = paired_ratio(ratios, [1.0] * len(ratios))
    assert (ratio.low, ratio.high) == (1.0, 1.0) and ratio.stable  # one outlier round does not make it unstable


def test_one_round_is_never_stable_and_bad_series_are_refused():
    assert not paired_ratio([1.1], [1.0]).stable
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_ratio([1.0, 2.0], [1.0])
    assert spread_of([1.0]) == math.inf and spread_of([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert STABLE_SPREAD == 0.25


def test_a_slow_finding_only_from_a_stable_ratio():
    """Before: quick mode printed "slow" (5.82x) while the same run put the block at 0.58x elsewhere."""
    from csa_lightning.blockcheck.cost import cost_findings

    def cost(ratio, low, high, stable):
        row = {"train_ratio": ratio, "train_ratio_range": [low, high], "train_ratio_stable": stable, "rounds": 5}
        return {"stage_end": row, "every_block": row, "extra_macs": {"declared": 0, "flop_counter": 0}}

    assert cost_findings(cost(5.82, 0.9, 7.0, False))[0].startswith(
        "unstable timing: training-step ratio 5.82x ranged 0.90-7.00 over 5 rounds (stage_end); no speed conclusion"
    )
    assert not any(f.startswith("slow") for f in cost_findings(cost(5.82, 0.9, 7.0, False)))
    assert cost_findings(cost(1.8, 1.75, 1.85, True))[0] == (
        "slow: a training step takes 1.80x (1.75-1.85) the plain ResNet's (stage_end)"
    )
