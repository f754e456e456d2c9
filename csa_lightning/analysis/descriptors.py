"""Channel descriptors at the gates' inputs (the paper's Figures 3 and 5): mean z, q and p per
channel over the images, sorted and smoothed, saved as .npz and plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List

import numpy as np
import torch
from torch import Tensor, nn

from ..attention import ChannelAttention
from ..attention.csa import spatial_autocorrelation
from ..models.attention_resnet import resolve_placement
from .checkpoints import last_bn, stage_blocks
from .images import ImageBatch

__all__ = [
    "block_descriptors",
    "collect_descriptors",
    "collect_descriptors_of",
    "ema",
    "sort_order",
    "save_descriptors",
    "plot_descriptors",
    "DESCRIPTOR_KEYS",
]

DESCRIPTOR_KEYS = ("z", "q", "p")


def block_descriptors(block: nn.Module, x: Tensor) -> Dict[str, Tensor]:
    """z, q (and p if the block has a gate) of a block's last-BN output ``x``, each (N, C)."""
    gate = getattr(block, "attention", None)
    if isinstance(gate, ChannelAttention):
        found = dict(gate.descriptors(x))
        if "q" not in found:  # blocks without autocorrelation: q with the default options
            found["q"] = spatial_autocorrelation(x)["q"]
        return {k: found[k] for k in DESCRIPTOR_KEYS}
    found = spatial_autocorrelation(x)
    return {"z": found["z"], "q": found["q"]}


@torch.no_grad()
def collect_descriptors_of(
    networks: Dict[str, nn.Module], batches: Iterable[ImageBatch], blocks="stage_end"
) -> Dict[str, Dict[str, Dict[str, np.ndarray]]]:
    """`csa_lightning.analysis.descriptors.collect_descriptors` for several networks in one pass over the images: each
    batch is read and decoded once and fed to every network (on ImageNet's validation set the decoding,
    not the forward, is what repeating per model would cost)."""
    sums: Dict[str, Dict[str, Dict[str, Tensor]]] = {label: {} for label in networks}
    counts: Dict[str, Dict[str, int]] = {label: {} for label in networks}
    handles = []

    def hook_for(label: str, key: str, block: nn.Module):
        def hook(_module, _inputs, output: Tensor) -> None:
            for name, value in block_descriptors(block, output).items():
                total = value.double().sum(0)
                sums[label].setdefault(key, {})[name] = sums[label].get(key, {}).get(name, 0) + total
            counts[label][key] = counts[label].get(key, 0) + output.shape[0]

        return hook

    modes = {label: network.training for label, network in networks.items()}
    for label, network in networks.items():
        stages = stage_blocks(network)
        for stage, index in resolve_placement(blocks, [len(s) for s in stages]):
            block = stages[stage][index]
            handles.append(last_bn(block).register_forward_hook(hook_for(label, f"layer{stage + 1}.{index}", block)))
        network.eval()
    try:
        for batch in batches:
            for network in networks.values():
                network(batch.inputs)
    finally:
        for h in handles:
            h.remove()
        for label, network in networks.items():
            network.train(modes[label])
    if not any(counts.values()):
        raise ValueError("no images were analysed; check --images / --data and --limit")
    return {
        label: {
            key: {
                **{n: (v / counts[label][key]).numpy() for n, v in values.items()},
                "count": np.array(counts[label][key]),
            }
            for key, values in sums[label].items()
        }
        for label in networks
    }


def collect_descriptors(
    network: nn.Module, batches: Iterable[ImageBatch], blocks="stage_end"
) -> Dict[str, Dict[str, np.ndarray]]:
    """Mean z, q (and p) over all images at each chosen block, keyed "layer{stage}.{block}".

    Forward hooks on each block's last BN read the gate's input; the descriptors are summed in
    float64 per batch, so memory does not grow with the number of images.
    """
    return collect_descriptors_of({"model": network}, batches, blocks)["model"]


def ema(values: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """smoothed_t = alpha * x_t + (1 - alpha) * smoothed_(t-1), smoothed_0 = x_0.

    The recursion of pandas' ``Series.ewm(alpha=alpha, adjust=False).mean()``.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"EMA factor alpha must be in (0, 1], got {alpha}")
    out = np.empty(len(values), dtype=np.float64)
    acc = None
    for t, x in enumerate(np.asarray(values, dtype=np.float64)):
        acc = x if acc is None else alpha * x + (1 - alpha) * acc
        out[t] = acc
    return out


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def sort_order(values: Dict[str, np.ndarray], sort_key: str) -> np.ndarray:
    """The channel order of the plots: ascending by ``sort_key`` ("q", "z", "p"), or as is for "none"."""
    channels = len(values["z"])
    if sort_key == "none":
        return np.arange(channels)
    if sort_key not in values:
        raise ValueError(
            f"cannot sort by '{sort_key}': this model has {', '.join(k for k in DESCRIPTOR_KEYS if k in values)}"
        )
    return np.argsort(values[sort_key], kind="stable")


def save_descriptors(
    results: Dict[str, Dict[str, Dict[str, np.ndarray]]], out: Path, sort_key: str = "q", alpha: float = 0.3
) -> List[Path]:
    """One ``descriptors_{block}.npz`` per block: per model the raw means (channel order), the
    sort order, and the sorted and smoothed curves, keyed ``{label}__{name}``."""
    written = []
    for key in _block_keys(results):
        arrays: Dict[str, Any] = {"labels": np.array(list(results))}
        for label, per_block in results.items():
            values = per_block[key]
            order = sort_order(values, sort_key)
            prefix = _safe(label)
            arrays[f"{prefix}__order"] = order
            arrays[f"{prefix}__count"] = values["count"]
            for name in DESCRIPTOR_KEYS:
                if name in values:
                    arrays[f"{prefix}__{name}"] = values[name]
                    arrays[f"{prefix}__{name}_smoothed"] = ema(values[name][order], alpha)
        path = out / f"descriptors_{key}.npz"
        np.savez(path, **arrays)
        written.append(path)
    return written


def _block_keys(results) -> List[str]:
    keys = [list(per_block) for per_block in results.values()]
    if any(k != keys[0] for k in keys):
        raise ValueError("the models have different blocks; analyse them with the same --blocks and depth")
    return keys[0]


def plot_descriptors(
    results: Dict[str, Dict[str, Dict[str, np.ndarray]]], out: Path, sort_key: str = "q", alpha: float = 0.3
) -> List[Path]:
    """One PNG per block: a panel per model with the sorted, smoothed z and q (left axis) and p
    (right axis, 0..1), as the paper's Figures 3 and 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colours = {"z": "tab:blue", "q": "tab:orange", "p": "tab:green"}
    for key in _block_keys(results):
        fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
        for ax, (label, per_block) in zip(axes[0], results.items()):
            values = per_block[key]
            order = sort_order(values, sort_key)
            x = np.arange(len(order))
            lines = []
            for name in ("z", "q"):
                lines += ax.plot(x, ema(values[name][order], alpha), color=colours[name], lw=1.2, label=name)
            if "p" in values:
                twin = ax.twinx()
                lines += twin.plot(x, ema(values["p"][order], alpha), color=colours["p"], lw=1.2, label="p")
                twin.set_ylim(0, 1)
                twin.set_ylabel("p (gate)")
            ax.set_title(f"{label} · {key} · {int(values['count'])} images", fontsize=9)
            ax.set_xlabel(f"channel (sorted by {sort_key})" if sort_key != "none" else "channel")
            ax.set_ylabel("z, q (standardised)")
            ax.axhline(0, color="0.8", lw=0.6, zorder=0)
            ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper left")
        fig.suptitle(f"channel descriptors at {key} (EMA alpha={alpha:g})", fontsize=10)
        fig.tight_layout()
        path = out / f"descriptors_{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
