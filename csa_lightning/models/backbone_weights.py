"""Pretrained weights into a network: a file (a torchvision-format ResNet state dict, a checkpoint of
this project) or a torchvision weight name (``IMAGENET1K_V2``), loaded by key with a report of what
was loaded, what is new to the network (its gates, a new head) and what the file had that the network
does not. Files are read with ``torch.load(weights_only=True)``: no code in them runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["BackboneLoadReport", "load_backbone_weights", "resolve_weights", "is_weights_name"]


def is_weights_name(spec: str) -> bool:
    """Whether ``spec`` names torchvision weights ("IMAGENET1K_V2", "DEFAULT", "ResNet50_Weights.IMAGENET1K_V2")
    rather than a file (a path has a separator or a suffix; a name is upper-case)."""
    name = str(spec).rsplit(".", 1)[-1]
    return bool(name) and name == name.upper() and "/" not in str(spec) and not Path(str(spec)).exists()


def resolve_weights(spec: str, depth: Optional[int] = None) -> Path:
    """The file for ``spec``: a path as it is; a torchvision weight name of the ResNet of ``depth`` (``IMAGENET1K_V1``,
    ``IMAGENET1K_V2``, ``DEFAULT``, or the full ``ResNet50_Weights.IMAGENET1K_V2``) as the file in torch.hub's
    cache (``$TORCH_HOME/hub/checkpoints``), downloaded there first when missing, as torchvision does."""
    if not is_weights_name(spec):
        return Path(spec)
    import torchvision.models as tv

    enum_name, _, member = str(spec).rpartition(".")
    enum_name = enum_name or (f"ResNet{depth}_Weights" if depth is not None else "")
    enum = getattr(tv, enum_name, None)
    if enum is None:
        raise ValueError(f"unknown weights '{spec}': not a file, and no torchvision weights enum {enum_name or '?'}")
    if member not in enum.__members__:
        members = ", ".join(enum.__members__)
        raise ValueError(f"unknown weights '{spec}': not a file, and {enum_name} has no {member} (it has {members})")
    weights = enum[member]
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except OSError as err:
            raise FileNotFoundError(
                f"{enum_name}.{member}: not in torch.hub's cache ({path}) and not downloadable ({err}); download "
                f"{weights.url} there on a connected machine, or pass a weights file"
            ) from None
    return path


@dataclass
class BackboneLoadReport:
    """What [`load_backbone_weights`][csa_lightning.models.load_backbone_weights] did: keys loaded, keys new to the
    model, keys ignored."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    source_prefix: str = ""
    #: the file read (a weight name's file in torch.hub's cache)
    path: str = ""

    def summary(self) -> str:
        # a checkpoint's ResNet sits under a prefix: "model." (a classifier), "model.backbone.body." (a detector)
        where = f" (the ResNet under '{self.source_prefix}' in the file)" if self.source_prefix else ""
        return (
            f"loaded {len(self.loaded)} tensors{where}, {len(self.missing)} new to the model (left as initialised)"
            f", {len(self.ignored)} in the file ignored"
        )


def _find_state_dict(obj: Any, path: str) -> Tuple[Dict[str, Tensor], str]:
    """Pick the ResNet state dict out of a torchvision state dict or a Lightning checkpoint."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint")
    if isinstance(obj.get("state_dict"), Mapping):  # a Lightning checkpoint
        sd = obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping):  # torchvision's reference scripts save {"model": ...}
        sd = obj["model"]
    else:
        sd = obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path} contains no tensors: not a ResNet state dict or checkpoint")
    # the ResNet may sit under a prefix (e.g. "model." in a LightningModule checkpoint): find it
    # from the stem, the one part every ResNet has
    prefixes = sorted(
        (
            k[: -len("conv1.weight")]
            for k in tensors
            if k.endswith("conv1.weight") and f"{k[: -len('conv1.weight')]}bn1.weight" in tensors
        ),
        key=len,
    )
    prefixes = [p for p in prefixes if f"{p}layer1.0.conv1.weight" in tensors] or prefixes
    if not prefixes:
        raise ValueError(
            f"{path} has no ResNet stem (no '*conv1.weight' beside '*bn1.weight'): not a ResNet checkpoint"
        )
    prefix = prefixes[0]
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix


def load_backbone_weights(
    model: nn.Module,
    path: str,
    exclude: Sequence[str] = (),
    strict_shapes: bool = True,
    allow_partial: bool = False,
    head: Sequence[str] = (),
) -> BackboneLoadReport:
    """Load ResNet weights from ``path`` into ``model`` and report what happened.

    ``path`` is a torchvision weight name (see [`resolve_weights`][csa_lightning.models.resolve_weights]), a
    torchvision-format ResNet state dict (``torch.save(resnet50().state_dict())``) or
    a checkpoint of this project (a Lightning ``.ckpt`` whose ``state_dict`` holds the ResNet under
    a prefix such as ``model.``). Files are read with ``torch.load(weights_only=True)``. Keys of the
    file that start with one of ``exclude`` (e.g. ``("fc.",)`` for a new head) or that the model
    lacks are ignored and reported; model keys the file lacks (the gates of a plain-ResNet file)
    keep their initialisation and are reported. A shape mismatch raises a ValueError naming the
    tensors, unless ``strict_shapes=False``, which skips them instead. Model tensors other than
    the gates' that the file lacks (a ResNet-18 file for a ResNet-34) are an error naming how many,
    unless ``allow_partial=True``. Keys under a ``head`` prefix (``("fc.",)``) load when their shapes
    match (the same classes: the network is unchanged) and are left new when not (another class count).
    """
    path = str(resolve_weights(path, depth=getattr(model, "depth", None)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"backbone weights not found: {path}") from None
    except Exception as err:  # a pickle error, a truncated zip, or a non-tensor object
        # torch's own message advises weights_only=False, which would run the file's code: not shown
        raise ValueError(
            f"cannot read backbone weights {path} ({type(err).__name__}): not a state dict or checkpoint "
            "saved with torch.save; pass a torchvision ResNet state dict or a checkpoint of this project"
        ) from None
    source, prefix = _find_state_dict(obj, path)
    target = model.state_dict()
    report = BackboneLoadReport(source_prefix=prefix, path=path)
    to_load: Dict[str, Tensor] = {}
    mismatched = []
    for key, value in source.items():
        new_head = any(key.startswith(h) for h in head) and key in target and target[key].shape != value.shape
        if any(key.startswith(e) for e in exclude) or key not in target or new_head:
            report.ignored.append(key)
        elif target[key].shape != value.shape:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}")
            report.ignored.append(key)
        else:
            to_load[key] = value
    if mismatched and strict_shapes:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise ValueError(
            f"shape mismatch loading {path}: {'; '.join(mismatched[:3])}{more}; check depth and attention, "
            f"or exclude the head with exclude=('fc.',)"
        )
    missing = sorted(k for k in target if k not in to_load)
    not_gates = [
        k
        for k in missing
        if ".attention." not in k
        and not k.endswith("num_batches_tracked")
        and not any(k.startswith(e) for e in (*exclude, *head))
    ]
    if not_gates and not allow_partial:
        raise ValueError(
            f"{path} leaves {len(not_gates)} of the model's tensors outside its gates unloaded (e.g. {not_gates[0]}): "
            "another depth or architecture? pass the matching file, or allow partial loading "
            "(--model.backbone_partial true)"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = missing
    log.info("backbone weights from %s: %s", path, report.summary())
    return report
