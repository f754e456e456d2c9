"""Images for analysis: a folder (optionally of class sub-folders) or a config's validation set,
preprocessed as the checkpoint's validation data, decoded once and shared by every model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data.classification_data import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ImageBatch",
    "Preprocessing",
    "find_images",
    "image_folder_batches",
    "datamodule_from_config",
    "datamodule_batches",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


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

    from ..data.image_io import open_rgb

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
                    shown.append(to_display(open_rgb(p)))
                except OSError as err:
                    raise ValueError(f"{err}; remove it or convert it to PNG/JPEG") from None
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
    from ..cli import CSALightningCLI

    class DataOnly(CSALightningCLI):
        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            # data and model only: no trainer (nothing is run), no subcommand in the namespace
            self.datamodule = self.config_init.get("data")
            self.model = self.config_init.get("model")

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
        for batch in dm.val_dataloader():
            # what the trainer would hand the model (decoded on the GPU with pipeline nvjpeg, a uint8
            # batch normalised by its data module)
            images, labels = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)[:2]
            # ffcv reuses its batch buffers: copy out before the next batch is read
            images = images.float().cpu().clone().contiguous()
            if limit is not None:
                images, labels = images[: limit - seen], labels[: limit - seen]
            shown = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            yield ImageBatch(images, shown, [int(t) for t in labels.flatten()])
            seen += len(images)
            if limit is not None and seen >= limit:
                return

    return batches(), []
