"""Classification checkpoints for analysis: the network, its figure label, its data settings, and
the stages and blocks the tools read (the model's own ``stage_blocks`` and ``last_bn``)."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import first_line
from ..models.summary import display_name
from ..run_folder import resolve_checkpoint

__all__ = ["AnalysedModel", "load_checkpoint_model", "load_models", "stage_blocks", "last_bn", "parse_blocks"]


@dataclass
class AnalysedModel:
    """A classifier from a checkpoint: the network, its label in figures, and its data settings."""

    label: str
    network: nn.Module
    path: str
    data_hparams: Dict = field(default_factory=dict)


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_checkpoint_model(path: str, label: Optional[str] = None) -> AnalysedModel:
    """Load a classification checkpoint of this project (or of a subclass) for analysis, on CPU."""
    from ..tasks import ClassificationModule

    if not Path(path).exists():
        raise FileNotFoundError(
            f"checkpoint {path} not found; pass a .ckpt file written by cli.py fit, or its run folder"
        )
    path = resolve_checkpoint(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        first = first_line(err)
        raise ValueError(f"cannot read checkpoint {path} ({first}); pass a checkpoint written by cli.py fit") from None
    if not isinstance(raw, dict) or "state_dict" not in raw or "pytorch-lightning_version" not in raw:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no state_dict or Lightning version); pass one written by cli.py fit"
        )
    hparams = dict(raw.get("hyper_parameters") or {})
    cls = _import_class(hparams["_class_path"]) if "_class_path" in hparams else ClassificationModule
    # the backbone file it started from is irrelevant (its weights are in the checkpoint) and may be gone
    overrides = {"backbone_weights": None} if "backbone_weights" in hparams else {}
    module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    network = getattr(module, "model", module).eval()
    if label is None:
        net = dict((hparams.get("net") or {}).get("init_args") or {})
        depth, attention = net.get("depth"), net.get("attention")
        label = display_name(depth, str(attention or "none")) if depth else Path(path).stem
    return AnalysedModel(label, network, str(path), dict(raw.get("datamodule_hyper_parameters") or {}))


def load_models(paths: Sequence[str], labels: Optional[Sequence[str]] = None) -> List[AnalysedModel]:
    """Load each checkpoint's network for analysis; labels default to the attention, made unique by file."""
    if labels and len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} --label for {len(paths)} --ckpt; give one label per checkpoint or none")
    models = [load_checkpoint_model(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: Dict[str, int] = {}
    for m in models:  # two CSA-R18 checkpoints: tell them apart by file and folder
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in models:
        if seen[m.label] > 1:
            p = Path(m.path)
            m.label = (
                f"{m.label} ({p.parent.parent.parent.name}/{p.stem})" if len(p.parents) > 3 else f"{m.label} ({p.stem})"
            )
    return models


def stage_blocks(network: nn.Module) -> List[nn.Sequential]:
    """The network's stages, as it names them itself
    ([`AttentionResNet.stage_blocks`][csa_lightning.models.AttentionResNet.stage_blocks])."""
    if not callable(getattr(network, "stage_blocks", None)):
        raise ValueError(
            f"{type(network).__name__} has no stage_blocks(); the analysis tools need an attention ResNet "
            "(csa_lightning.models.AttentionResNet) or a model that lists its stages the same way"
        )
    return network.stage_blocks()  # type: ignore[operator]  # checked callable above


def last_bn(block: nn.Module) -> nn.Module:
    """The block's last BN (the gate's input), as the block names it (``last_bn``)."""
    bn = getattr(block, "last_bn", None)
    if not isinstance(bn, nn.Module):
        raise ValueError(f"{type(block).__name__} has no last_bn; the analysis tools need attention-ResNet blocks")
    return bn


def parse_blocks(spec: str):
    """ "stage_end", "every_block" or a JSON list of [stage, block] pairs (0-based, -1 = last)."""
    spec = spec.strip()
    return json.loads(spec) if spec.startswith("[") else spec
