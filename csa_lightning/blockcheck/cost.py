"""What a block costs in an attention ResNet, against the plain one measured in the same run.

Through the benchmark's own function (`csa_lightning.benchmark.benchmark`): parameters and
GMAC (torch's flop counter for convolutions and linear layers, plus the gates' ``extra_macs``),
bytes saved for backward (exact on a CPU), and the median CPU training-step and inference times,
the variants interleaved in one process, as ratios to the plain ResNet's. The block goes at stage
ends and in every block. Also: the block's ``extra_macs`` against what the flop counter sees of
its matrix products outside convolutions and linear layers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from .correctness import BlockUnderTest, correlated_map

__all__ = ["SETTINGS", "measure_cost", "extra_macs_agreement", "cost_findings"]

#: the network and timing of a full run, and of --quick
SETTINGS: Dict[bool, Dict[str, Any]] = {
    False: dict(depth=50, batch=8, size=224, repeats=3),
    True: dict(depth=18, batch=4, size=64, repeats=3),
}
PLACEMENTS = ("stage_end", "every_block")
#: what the report keeps of each benchmark row
ROW_KEYS = ("params", "gmac", "saved_mb", "train_s", "infer_s", "saved_ratio", "rounds",
            *(f"{kind}_ratio{part}" for kind in ("train", "infer") for part in ("", "_range", "_stable")))  # fmt: skip
#: a training step slower than this many times the plain ResNet's is a finding ("slow")
SLOW_RATIO = 1.5


def measure_cost(blocks: Sequence[BlockUnderTest], quick: bool) -> Dict[str, Dict[str, Any]]:
    """{block label: {"setting": ..., placement: row}} with the benchmark's row of each placement
    (params, gmac, saved_mb, train_s, infer_s and their ratios to the plain ResNet of this run)."""
    from ..benchmark import benchmark

    setting = SETTINGS[quick]
    extra = [(f"{i}|{p}", b.cls, {**b.options, "placement": p}) for i, b in enumerate(blocks) for p in PLACEMENTS]
    rows = {r["variant"]: r for r in benchmark(attentions=["none"], extra_variants=extra, **setting)}
    plain = rows["none"]
    out = {}
    for i, b in enumerate(blocks):
        entry: Dict[str, Any] = {
            "setting": setting,
            "plain": {k: plain[k] for k in ("params", "gmac", "saved_mb", "train_s", "infer_s")},
        }
        for p in PLACEMENTS:
            row = rows[f"{i}|{p}"]
            entry[p] = {k: row[k] for k in ROW_KEYS}
        entry["extra_macs"] = extra_macs_agreement(b)
        out[b.label] = entry
    return out


def extra_macs_agreement(b: BlockUnderTest) -> Dict[str, Any]:
    """The block's declared ``extra_macs`` beside the multiply-adds torch's flop counter sees in it
    outside convolutions and linear layers (which the model summary counts itself)."""
    block = b.build(64).eval()
    x = correlated_map((1, 64, 14, 14), seed=30)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        block(x)
    counted = counter.get_flop_counts()
    root = type(block).__name__
    inside_layers = sum(
        sum(counted.get(f"{root}.{name}", {}).values())
        for name, m in block.named_modules()
        if name and isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))
    )
    total = sum(counted.get("Global", {}).values())
    seen = (total - inside_layers) / 2
    declared = int(block.extra_macs(x.shape))
    return {"declared": declared, "flop_counter": int(seen), "input": list(x.shape)}


def cost_findings(cost: Dict[str, Any]) -> List[str]:
    """What is worth knowing about a block's cost: slow training steps (only from a stable ratio: an
    unstable one is said to be unstable, not slow), undeclared multiply-adds."""
    found = []
    for p in PLACEMENTS:
        row = cost[p]
        ratio = row["train_ratio"]
        low, high = row.get("train_ratio_range") or (ratio, ratio)
        if not row.get("train_ratio_stable", True):
            found.append(
                f"unstable timing: training-step ratio {ratio:.2f}x ranged {low:.2f}-{high:.2f} over "
                f"{row.get('rounds', '?')} rounds ({p}); no speed conclusion (re-run on an idle machine)"
            )
        elif ratio > SLOW_RATIO:
            found.append(f"slow: a training step takes {ratio:.2f}x ({low:.2f}-{high:.2f}) the plain ResNet's ({p})")
    macs = cost["extra_macs"]
    if macs["flop_counter"] > 1.1 * macs["declared"] + 1000:
        found.append(
            f"extra_macs declares {macs['declared']:,} multiply-adds, torch's flop counter sees "
            f"{macs['flop_counter']:,} "
            "outside convolutions and linear layers: the model summary's GMAC undercount it (override extra_macs)"
        )
    return found
