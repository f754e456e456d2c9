"""The embedded default data: scikit-learn's bundled real handwritten digits.

1,797 greyscale 8 x 8 scans of digits 0-9 (the UCI "optdigits" test set) ship with
scikit-learn, so the demo and the tests need no download. The first use writes them as an
ImageFolder tree of RGB PNGs (upscaled to ``image_size``) with a fixed, stratified held-out split,
then converts each split to a ``.beton`` with the same writer a user runs on ImageNet, and
trains through the very same FFCV path ([`DigitsDataModule`][csa_lightning.data.DigitsDataModule]). Everything is cached
under ``data_dir`` and written atomically (a temporary folder renamed into place), so an interrupted
first run leaves nothing half-written.

[`DigitsMemoryDataModule`][csa_lightning.data.DigitsMemoryDataModule] feeds the same split through a plain in-memory
DataLoader with a deterministic pipeline: tests that are not about FFCV use it, since every ffcv Loader compiles
for 10-25 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..checks import remove_dead_leftovers, require_normalisation, require_positive
from .classification_data import stratified_order
from .ffcv_imagenet import FFCVDataModule

__all__ = [
    "DigitsDataModule",
    "DigitsMemoryDataModule",
    "write_digits_image_folder",
    "digits_split",
    "DIGITS_MEAN",
    "DIGITS_STD",
]

#: mean and std of the upscaled digit images (0..1 units), measured on the training split
DIGITS_MEAN = (0.306, 0.306, 0.306)
DIGITS_STD = (0.324, 0.324, 0.324)


def digits_split(val_fraction: float = 0.2, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, val images, val labels): 8 x 8 float images in 0..16, stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return tuple(
        train_test_split(
            digits.images, digits.target, test_size=val_fraction, random_state=seed, stratify=digits.target
        )
    )  # x_train, x_val, y_train, y_val


def rasterize_digit(image8x8: np.ndarray, size: int) -> "PIL.Image.Image":  # PIL imported lazily
    """One 8 x 8 digit (values 0..16) as a ``size`` x ``size`` greyscale PIL image (bilinear): the one
    rasteriser of the classification set and the detection canvases."""
    from PIL import Image

    grey = Image.fromarray(np.round(image8x8 * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.Resampling.BILINEAR)


def write_digits_image_folder(root: str, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write root/{train,val}/<digit>/<index>.png once; later calls return at once."""
    root_path = Path(root)
    done = root_path / ".complete"
    if done.exists():
        return root_path
    x_train, x_val, y_train, y_val = digits_split(val_fraction, seed)
    remove_dead_leftovers(root_path)  # a killed writer's half-written folder
    tmp = root_path.with_name(f".{root_path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, images, labels in (("train", x_train, y_train), ("val", x_val, y_val)):
            for i, (image, label) in enumerate(zip(images, labels)):
                folder = tmp / split / str(int(label))
                folder.mkdir(parents=True, exist_ok=True)
                rasterize_digit(image, image_size).convert("RGB").save(folder / f"{i:04d}.png")
        (tmp / ".complete").write_text(f"image_size={image_size} val_fraction={val_fraction} seed={seed}\n")
        if root_path.exists():
            shutil.rmtree(root_path)
        root_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root_path


class DigitsDataModule(FFCVDataModule):
    """scikit-learn's digits through the FFCV path: ImageFolder -> .beton -> ffcv Loader.

    ``data_dir`` caches the image folder and the betons (``digits_{image_size}px_{train,val}.beton``).
    ``image_size`` is the side the PNGs are written at; ``resolution`` the side of the crops the
    loader decodes to. Every other argument is [`FFCVDataModule`][csa_lightning.data.FFCVDataModule]'s, with digit
    defaults (no flips: they change the class; mild crops; the digits' own mean and std).
    """

    def __init__(
        self,
        data_dir: str = "data/digits",
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 2,
        resolution: int = 32,
        val_resolution: Optional[int] = None,
        val_crop_ratio: float = 1.0,
        train_crop_scale: Tuple[float, float] = (0.8, 1.0),
        flip: bool = False,
        os_cache: bool = True,
        distributed: Optional[bool] = None,
        channels_last: bool = True,
        seed: int = 0,
        mean: Tuple[float, float, float] = DIGITS_MEAN,
        std: Tuple[float, float, float] = DIGITS_STD,
    ) -> None:
        require_positive("data.image_size", image_size, integer=True)  # 0 was PIL's "height and width must be > 0"
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            resolution=resolution,
            val_resolution=val_resolution,
            val_crop_ratio=val_crop_ratio,
            train_crop_scale=train_crop_scale,
            flip=flip,
            os_cache=os_cache,
            distributed=distributed,
            channels_last=channels_last,
            seed=seed,
            mean=mean,
            std=std,
        )

    # the betons are named after data_dir and image_size (not arguments of this module)
    test_path = None
    predict_path = None

    @property
    def train_path(self) -> str:
        return str(Path(self.data_dir) / f"digits_{self.image_size}px_train.beton")

    @property
    def val_path(self) -> str:
        return str(Path(self.data_dir) / f"digits_{self.image_size}px_val.beton")

    def prepare_data(self) -> None:
        """Write the image folder and the betons if they are not cached yet (rank 0 only)."""
        from .write_beton import write_beton

        if Path(self.train_path).is_file() and Path(self.val_path).is_file():
            return
        images = write_digits_image_folder(str(Path(self.data_dir) / f"images_{self.image_size}px"), self.image_size)
        for split, path in (("train", self.train_path), ("val", self.val_path)):
            if not Path(path).is_file():
                write_beton(
                    str(images / split), path, max_resolution=self.image_size, jpeg_quality=95, compress_probability=0.0
                )


class DigitsMemoryDataModule(L.LightningDataModule):
    """The digits split in memory, through a torch DataLoader with a deterministic pipeline.

    Same images, split and normalisation as [`DigitsDataModule`][csa_lightning.data.DigitsDataModule], without ffcv:
    resized with bilinear interpolation to ``resolution``, no augmentation. The training order is a
    seeded DistributedSampler that Lightning sets to the current epoch, so a resumed run sees
    exactly the batches an uninterrupted one does (and DDP shards it).
    """

    def __init__(
        self,
        batch_size: int = 64,
        resolution: int = 32,
        seed: int = 0,
        channels_last: bool = True,
        limit_train_samples: Optional[int] = None,
        mean: Tuple[float, float, float] = DIGITS_MEAN,
        std: Tuple[float, float, float] = DIGITS_STD,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size, integer=True)
        require_positive("data.resolution", resolution, integer=True)
        require_normalisation("data", mean, std)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.resolution = resolution
        self.seed = seed
        self.channels_last = channels_last
        self.limit_train_samples = limit_train_samples
        self.mean = mean
        self.std = std
        self.num_classes = 10
        self._data: Optional[Dict[str, TensorDataset]] = None

    def _tensors(self, images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 16.0
        x = torch.nn.functional.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)
        x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        return TensorDataset(x, torch.as_tensor(labels, dtype=torch.long))

    def setup(self, stage: Optional[str] = None) -> None:
        if self._data is None:
            x_train, x_val, y_train, y_val = digits_split()
            if self.limit_train_samples:
                x_train, y_train = x_train[: self.limit_train_samples], y_train[: self.limit_train_samples]
            order = stratified_order(y_val)  # as the other modules evaluate: any prefix is stratified
            self._data = {"train": self._tensors(x_train, y_train), "val": self._tensors(x_val[order], y_val[order])}

    def _sampler(self, dataset, shuffle: bool) -> DistributedSampler:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed, drop_last=shuffle
        )

    def _split(self, name: str) -> TensorDataset:
        if self._data is None:
            self.setup()
        assert self._data is not None
        return self._data[name]

    def train_dataloader(self) -> DataLoader:
        data = self._split("train")
        return DataLoader(data, batch_size=self.batch_size, sampler=self._sampler(data, True), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        data = self._split("val")
        return DataLoader(data, batch_size=self.batch_size, sampler=self._sampler(data, False))

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader
