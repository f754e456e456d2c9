"""Analysis tools: what the channel-attention blocks see, and where the models look.

Two views of trained classification checkpoints, as in the CSA-Net paper:

- ``descriptors`` (the paper's Figures 3 and 5): at the last block of each stage, the per-channel
  z (standardised GAP), q (standardised local Moran's I) and gate weights p of the block's last BN
  output (the gate's input; read whether or not the block has a gate), averaged over the images,
  channels sorted by q ascending, curves smoothed by an exponential moving average.
  z and p come from the gate's own ``descriptors``; q from the gate's own ``autocorrelation`` for
  CSA and from :func:`~csa_lightning.attention.csa.spatial_autocorrelation` with its defaults for
  every other block (q needs no learnt parameters), so the math exists once.
- ``gradcam`` (Figures 4 and 6): Grad-CAM (the ``grad-cam`` package) at the last stage of each
  model, as a grid: rows are images, columns the input and each model.

    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/
    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --data configs/demo/digits_csa.yaml
    python -m csa_lightning.analyze gradcam --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/

Images are preprocessed as the checkpoint's validation data was (side, centre-crop ratio, mean and
std from the data module's hyperparameters stored in the checkpoint; ``--size``, ``--crop-ratio``,
``--mean``, ``--std`` override). A folder of class sub-folders (torchvision's ImageFolder layout)
gives each image its class; Grad-CAM then explains the true class, otherwise the first model's
prediction.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .attention import ChannelAttention
from .attention.csa import spatial_autocorrelation
from .data.ffcv_imagenet import IMAGENET_MEAN, IMAGENET_STD
from .models.attention_resnet import resolve_placement
from .models.summary import display_name
from .tasks.checkpoints import resolve_checkpoint

__all__ = [
    "AnalysedModel",
    "ImageBatch",
    "load_checkpoint_model",
    "image_folder_batches",
    "datamodule_batches",
    "collect_descriptors",
    "ema",
    "plot_descriptors",
    "save_descriptors",
    "gradcam_maps",
    "plot_gradcam",
    "main",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DESCRIPTOR_KEYS = ("z", "q", "p")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


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
    from .tasks import ClassificationModule

    if not Path(path).exists():
        raise FileNotFoundError(
            f"checkpoint {path} not found; pass a .ckpt file written by cli.py fit, or its run folder"
        )
    path = resolve_checkpoint(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path} ({first}); pass a checkpoint written by cli.py fit") from None
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict); pass one written by cli.py fit")
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


def stage_blocks(network: nn.Module) -> List[Sequence[nn.Module]]:
    """The four stages of a torchvision-style ResNet (``layer1`` .. ``layer4``)."""
    stages = [getattr(network, f"layer{i}", None) for i in range(1, 5)]
    if any(s is None for s in stages):
        raise ValueError(
            f"{type(network).__name__} has no layer1..layer4; the analysis tools need a ResNet-style model"
        )
    return stages


def _last_bn(block: nn.Module) -> nn.Module:
    bn = getattr(block, "last_bn", None) or getattr(block, "bn3", None) or getattr(block, "bn2", None)
    if bn is None:
        raise ValueError(f"{type(block).__name__} has no last BN (last_bn, bn3 or bn2)")
    return bn


def parse_blocks(spec: str):
    """ "stage_end", "every_block" or a JSON list of [stage, block] pairs (0-based, -1 = last)."""
    spec = spec.strip()
    return json.loads(spec) if spec.startswith("[") else spec


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """Normalised model inputs, the same images in 0..1 RGB for display, and classes if known."""

    inputs: Tensor  # (N, 3, H, W)
    display: np.ndarray  # (N, H, W, 3) float in 0..1
    targets: Optional[List[int]] = None
    names: List[str] = field(default_factory=list)


@dataclass
class Preprocessing:
    size: int = 224
    crop_ratio: float = 224 / 256
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_data_hparams(cls, hp: Dict) -> "Preprocessing":
        size = hp.get("val_resolution") or hp.get("resolution") or hp.get("image_size") or cls.size
        # a data module without a crop ratio does not crop; with no data settings at all, ImageNet's
        ratio = hp.get("val_crop_ratio") or (1.0 if hp else cls.crop_ratio)
        return cls(
            int(size), float(ratio), tuple(hp.get("mean") or IMAGENET_MEAN), tuple(hp.get("std") or IMAGENET_STD)
        )


def find_images(folder: str) -> Tuple[List[Path], Optional[List[int]], List[str]]:
    """Image files under ``folder``; with class sub-folders (ImageFolder layout) also their classes.

    Files are interleaved across classes (first of each class, then second...), so a prefix of the
    list, as ``--limit`` takes, shows every class.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} not found; pass --images DIR with image files (or class sub-folders of them)"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    if any(p.parent == root for p in files):
        return files, None, []
    classes = sorted({p.relative_to(root).parts[0] for p in files})
    by_class = [[p for p in files if p.relative_to(root).parts[0] == c] for c in classes]
    interleaved, targets = [], []
    for i in range(max(len(b) for b in by_class)):
        for label, members in enumerate(by_class):
            if i < len(members):
                interleaved.append(members[i])
                targets.append(label)
    return interleaved, targets, classes


def image_folder_batches(
    folder: str, prep: Preprocessing, limit: Optional[int] = None, batch_size: int = 32
) -> Tuple[Iterator[ImageBatch], List[str]]:
    """Batches of the images under ``folder``, preprocessed as validation data; and the class names."""
    import torchvision.transforms as T
    from PIL import Image, UnidentifiedImageError

    files, targets, classes = find_images(folder)
    if limit is not None:
        files, targets = files[:limit], (targets[:limit] if targets is not None else None)
    to_display = T.Compose([T.Resize(round(prep.size / prep.crop_ratio)), T.CenterCrop(prep.size), T.ToTensor()])
    normalise = T.Normalize(prep.mean, prep.std)

    def batches() -> Iterator[ImageBatch]:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            shown = []
            for p in chunk:
                try:
                    with Image.open(p) as img:
                        shown.append(to_display(img.convert("RGB")))
                except (UnidentifiedImageError, OSError) as err:
                    raise ValueError(f"cannot read image {p} ({err}); remove it or convert it to PNG/JPEG") from None
            shown_t = torch.stack(shown)
            yield ImageBatch(
                torch.stack([normalise(s) for s in shown]),
                shown_t.permute(0, 2, 3, 1).numpy(),
                targets[start : start + batch_size] if targets is not None else None,
                [str(p) for p in chunk],
            )

    return batches(), classes


def datamodule_from_config(config: str):
    """The data module of a cli.py config, built alone (no trainer, nothing run)."""
    from .cli import CSALightningCLI

    class DataOnly(CSALightningCLI):
        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")

    if not Path(config).is_file():
        raise FileNotFoundError(f"config {config} not found; pass --data with a cli.py YAML config")
    return DataOnly(
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        args=["--config", config],
        run=False,
    ).datamodule


def datamodule_batches(config: str, limit: Optional[int] = None) -> Tuple[Iterator[ImageBatch], List[str]]:
    """Validation batches of the data module a cli.py config describes (written first if needed)."""
    dm = datamodule_from_config(config)
    if dm is None:
        raise ValueError(f"config {config} has no data section; pass one that cli.py fit accepts")
    dm.prepare_data()
    dm.setup("validate")
    mean = torch.tensor(getattr(dm, "mean", IMAGENET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(getattr(dm, "std", IMAGENET_STD)).view(1, 3, 1, 1)

    def batches() -> Iterator[ImageBatch]:
        seen = 0
        for images, labels in dm.val_dataloader():
            # ffcv reuses its batch buffers: copy out before the next batch is read
            images = images.float().clone().contiguous()
            if limit is not None:
                images, labels = images[: limit - seen], labels[: limit - seen]
            shown = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            yield ImageBatch(images, shown, [int(t) for t in labels.flatten()])
            seen += len(images)
            if limit is not None and seen >= limit:
                return

    return batches(), []


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


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
def collect_descriptors(
    network: nn.Module, batches: Iterable[ImageBatch], blocks="stage_end"
) -> Dict[str, Dict[str, np.ndarray]]:
    """Mean z, q (and p) over all images at each chosen block, keyed "layer{stage}.{block}".

    Forward hooks on each block's last BN read the gate's input; the descriptors are summed in
    float64 per batch, so memory does not grow with the number of images.
    """
    stages = stage_blocks(network)
    positions = resolve_placement(blocks, [len(s) for s in stages])
    sums: Dict[str, Dict[str, Tensor]] = {}
    counts: Dict[str, int] = {}
    handles = []

    def hook_for(key: str, block: nn.Module):
        def hook(_module, _inputs, output: Tensor) -> None:
            for name, value in block_descriptors(block, output).items():
                total = value.double().sum(0)
                sums.setdefault(key, {})[name] = sums.get(key, {}).get(name, 0) + total
            counts[key] = counts.get(key, 0) + output.shape[0]

        return hook

    for stage, index in positions:
        block = stages[stage][index]
        handles.append(_last_bn(block).register_forward_hook(hook_for(f"layer{stage + 1}.{index}", block)))
    was_training = network.training
    network.eval()
    try:
        for batch in batches:
            network(batch.inputs)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    if not counts:
        raise ValueError("no images were analysed; check --images / --data and --limit")
    return {
        key: {**{n: (v / counts[key]).numpy() for n, v in values.items()}, "count": np.array(counts[key])}
        for key, values in sums.items()
    }


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
        arrays: Dict[str, np.ndarray] = {"labels": np.array(list(results))}
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


# --------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------


def stage_map_sizes(network: nn.Module, inputs: Tensor) -> List[Tuple[int, int]]:
    """(H, W) of each stage's output for ``inputs``."""
    sizes: Dict[int, Tuple[int, int]] = {}
    handles = [
        stage.register_forward_hook(lambda _m, _i, out, s=s: sizes.__setitem__(s, tuple(out.shape[-2:])))
        for s, stage in enumerate(stage_blocks(network))
    ]
    try:
        with torch.no_grad():
            network(inputs[:1])
    finally:
        for h in handles:
            h.remove()
    return [sizes[s] for s in range(len(sizes))]


def choose_cam_stage(network: nn.Module, inputs: Tensor, stage: Optional[int] = None) -> Tuple[int, str]:
    """The 1-based stage Grad-CAM reads, and a note when it is not the one asked for.

    Default: the last stage. Where its maps are 1 x 1 (ResNets on 32 px inputs), Grad-CAM is a
    constant, so the last stage with larger maps is used instead and the note says so.
    """
    sizes = stage_map_sizes(network, inputs)
    if stage is not None:
        if not 1 <= stage <= len(sizes):
            raise ValueError(f"--stage {stage} out of range: stages are 1..{len(sizes)}")
        return stage, ""
    last = len(sizes)
    if sizes[-1] != (1, 1):
        return last, ""
    larger = [s for s, hw in enumerate(sizes, start=1) if hw != (1, 1)]
    if not larger:
        raise ValueError(
            f"every stage's maps are 1 x 1 at input size {tuple(inputs.shape[-2:])}; use larger images (--size)"
        )
    chosen = larger[-1]
    return (
        chosen,
        f"layer{last} maps are 1x1 at {inputs.shape[-1]} px; "
        f"Grad-CAM at layer{chosen} ({sizes[chosen - 1][0]}x{sizes[chosen - 1][1]})",
    )


def gradcam_maps(
    network: nn.Module, inputs: Tensor, targets: Sequence[int], stage: int = 4
) -> Tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, H, W) in 0..1 at the last block of ``stage`` (1-based) for the given
    classes, and the model's softmax probability for each (N,)."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise ValueError("Grad-CAM needs the grad-cam package: pip install 'csa-lightning[analysis]'") from None

    network.eval()
    target_layer = stage_blocks(network)[stage - 1][-1]
    with torch.no_grad():
        probs = network(inputs).float().softmax(dim=1)
    num_classes = probs.shape[1]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise ValueError(
            f"target classes {bad} out of range for a model with {num_classes} classes; "
            "check the image folder's classes"
        )
    with GradCAM(model=network, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    chosen = probs[torch.arange(len(targets)), torch.as_tensor(list(targets))]
    return np.asarray(maps), chosen.numpy()


def gradcam_figure(
    batch: ImageBatch,
    targets: Sequence[int],
    maps: Dict[str, np.ndarray],
    probs: Dict[str, np.ndarray],
    class_names: Sequence[str] = (),
    title: str = "",
):
    """Grid of rows = images, columns = the input and each model's Grad-CAM overlay; each model
    cell is titled with the target class and the model's probability for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    def name(t: int) -> str:
        return class_names[t] if class_names and t < len(class_names) else str(t)

    rows, cols = len(targets), 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, t in enumerate(targets):
        axes[i][0].imshow(batch.display[i])
        axes[i][0].set_title(f"class {name(batch.targets[i])}" if batch.targets is not None else "input", fontsize=8)
        for j, label in enumerate(maps, start=1):
            overlay = show_cam_on_image(batch.display[i].astype(np.float32), maps[label][i], use_rgb=True)
            axes[i][j].imshow(overlay)
            axes[i][j].set_title(f"{label}\n{name(t)}: p={probs[label][i]:.2f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_gradcam(batch, targets, maps, probs, class_names, path: Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    fig = gradcam_figure(batch, targets, maps, probs, class_names, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _preprocessing(args, models: List[AnalysedModel]) -> Preprocessing:
    prep = Preprocessing.from_data_hparams(models[0].data_hparams)
    if args.size:
        prep.size = args.size
    if args.crop_ratio:
        prep.crop_ratio = args.crop_ratio
    if args.mean:
        prep.mean = tuple(args.mean)
    if args.std:
        prep.std = tuple(args.std)
    return prep


def _batches(args, models, limit, batch_size) -> Tuple[Iterator[ImageBatch], List[str]]:
    if args.images:
        return image_folder_batches(args.images, _preprocessing(args, models), limit, batch_size)
    return datamodule_batches(args.data, limit)


def run_descriptors(args) -> List[Path]:
    models = load_models(args.ckpt, args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = parse_blocks(args.blocks)
    results = {}
    for m in models:
        batches, _ = _batches(args, models, args.limit, args.batch_size)
        results[m.label] = collect_descriptors(m.network, batches, blocks)
    return save_descriptors(results, out, args.sort, args.alpha) + plot_descriptors(results, out, args.sort, args.alpha)


def run_gradcam(args) -> List[Path]:
    models = load_models(args.ckpt, args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches, class_names = _batches(args, models, args.limit, args.limit)
    batch = next(iter(batches))
    if batch.targets is not None:
        targets = list(batch.targets)
    else:  # no classes known: explain what the first model predicts
        with torch.no_grad():
            targets = models[0].network.eval()(batch.inputs).argmax(1).tolist()
    maps, probs, stages, notes = {}, {}, {}, []
    for m in models:
        stage, note = choose_cam_stage(m.network, batch.inputs, args.stage)
        if note:
            notes.append(f"{m.label}: {note}")
            print(f"note: {m.label}: {note}", file=sys.stderr)
        stages[m.label] = stage
        maps[m.label], probs[m.label] = gradcam_maps(m.network, batch.inputs, targets, stage)
    np.savez(
        out / "gradcam.npz",
        labels=np.array(list(maps)),
        targets=np.array(targets),
        images=batch.display,
        stages=np.array([stages[k] for k in maps]),
        **{f"{_safe(k)}__cam": v for k, v in maps.items()},
        **{f"{_safe(k)}__prob": v for k, v in probs.items()},
    )
    used = sorted(set(stages.values()))
    title = f"Grad-CAM at the last block of layer{'/'.join(map(str, used))}"
    if notes:
        title += f" (layer{len(stage_blocks(models[0].network))} maps are 1x1 at {batch.inputs.shape[-1]} px)"
    return [out / "gradcam.npz", plot_gradcam(batch, targets, maps, probs, class_names, out / "gradcam.png", title)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m csa_lightning.analyze", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("descriptors", "z, q and p per channel at the last block of each stage (paper Figs. 3, 5)"),
        ("gradcam", "Grad-CAM grid at the last stage of each model (paper Figs. 4, 6)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--ckpt", action="append", required=True, help="a classification checkpoint (repeat for more models)"
        )
        p.add_argument("--label", action="append", help="a figure label per --ckpt (default: e.g. CSA-R50)")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--images", help="a folder of images, or of class sub-folders of images")
        source.add_argument("--data", help="a cli.py config whose data module's validation images to use")
        p.add_argument("--out", default="figs", help="output folder (default: figs)")
        p.add_argument(
            "--limit",
            type=int,
            default=None if name == "descriptors" else 6,
            help="use the first N images (descriptors: all; gradcam: 6)",
        )
        p.add_argument("--size", type=int, help="input side (default: the checkpoint's validation resolution)")
        p.add_argument("--crop-ratio", type=float, help="centre-crop ratio (default: the checkpoint's, else 224/256)")
        p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the checkpoint's)")
        p.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the checkpoint's)")
        if name == "descriptors":
            p.add_argument(
                "--blocks",
                default="stage_end",
                help='"stage_end" (default), "every_block" or a JSON list of [stage, block] pairs',
            )
            p.add_argument("--sort", default="q", choices=("q", "z", "p", "none"), help="sort channels by (default: q)")
            p.add_argument("--alpha", type=float, default=0.3, help="EMA smoothing factor (default: 0.3)")
            p.add_argument("--batch-size", type=int, default=32)
        else:
            p.add_argument(
                "--stage",
                type=int,
                help="stage 1..4 whose last block Grad-CAM reads (default: the last with maps larger than 1x1)",
            )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("error: --limit must be at least 1")
    out_existed = Path(args.out).exists()
    try:
        written = run_descriptors(args) if args.command == "descriptors" else run_gradcam(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        out = Path(args.out)
        if not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty output folder behind a failed call
        if os.environ.get("CSA_LIGHTNING_TRACEBACK"):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
