"""The arguments every image-classification data module here shares, in one place.

[`FFCVDataModule`][csa_lightning.data.FFCVDataModule] and
[`ImageFolderDataModule`][csa_lightning.data.ImageFolderDataModule] take these, add their own and pass the rest on with
``**kwargs`` (jsonargparse follows ``super().__init__(**kwargs)``, so ``--data.batch_size`` and ``--help`` work as
before). The values live in ``self.hparams`` only and are read from there as attributes (``self.batch_size``): no copy
to keep equal. Setting an attribute (Lightning's batch-size finder does) overrides it on the instance.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import lightning as L
import numpy as np

from ..checks import require, require_fraction_range, require_non_negative, require_normalisation, require_positive

__all__ = ["ImageClassificationDataModule", "IMAGENET_MEAN", "IMAGENET_STD", "stratified_order"]

#: ImageNet's channel mean and std (0..1 units), torchvision's and ffcv-imagenet's normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the splits each Lightning stage reads
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def require_same_classes(kind: str, names: Sequence[str], reference: Sequence[str], what: str, fix: str) -> None:
    """One line when a split's class names differ from the training split's: ``what`` names the two
    splits, then which classes only one of them has, then ``fix``."""
    if list(names) != list(reference):
        only_here = sorted(set(names) - set(reference))
        missing = sorted(set(reference) - set(names))
        raise ValueError(
            f"{what}: only in {kind}: {only_here or 'none'}, missing from {kind}: {missing or 'none'}; {fix}"
        )


def stratified_order(labels: Union[Sequence[int], np.ndarray]) -> np.ndarray:
    """An evaluation order whose every prefix is a stratified sample of the classes.

    Data sets are stored class by class (ImageFolder trees, the betons written from them), so a
    partial validation (``--trainer.limit_val_batches 1``) in stored order scored a few classes
    only. Sample ``r`` (0-based, stored order) of a class with ``n`` samples is placed at
    ``(r + 0.5) / n`` along the epoch and the samples are sorted by that position (ties by class):
    after any ``k`` samples every class has ``k n / N`` of them, to within one. Within a class the
    stored order is kept. Returns indices into ``labels``.
    """
    values = np.asarray(labels, dtype=np.int64)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    position = np.empty(values.size, dtype=np.float64)
    for label in np.unique(values):
        members = np.flatnonzero(values == label)
        position[members] = (np.arange(members.size) + 0.5) / members.size
    return np.lexsort((values, position)).astype(np.int64)


class ImageClassificationDataModule(L.LightningDataModule):
    """Shared arguments of the classification data modules.

    Args:
        train_path: the training and validation data (a ``.beton`` file or an image folder).
        val_path: see ``train_path``.
        test_path: default to ``val_path``.
        predict_path: see ``test_path``.
        batch_size: per process (Lightning's convention; the global batch is this times the
            number of processes).
        num_workers: loader workers (ffcv: decoding threads) per process.
        resolution: side of the training crops; ``val_resolution`` (default: the same) of the
            validation centre crops.
        val_crop_ratio: centre crop side / shorter image side (224/256 as in torchvision's and
            ffcv-imagenet's references).
        train_crop_scale: area range of the random-resized crop.
        flip: random horizontal flips for training (off for digits, where they change the class).
        channels_last: return NHWC-strided batches (matching a channels_last model).
        mean: normalisation, in 0..1 units.
        std: see ``mean``.
    """

    def __init__(
        self,
        train_path: Optional[str] = None,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        predict_path: Optional[str] = None,
        batch_size: int = 64,
        num_workers: int = 8,
        resolution: int = 224,
        val_resolution: Optional[int] = None,
        val_crop_ratio: float = 224 / 256,
        train_crop_scale: Tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        channels_last: bool = True,
        mean: Tuple[float, float, float] = IMAGENET_MEAN,
        std: Tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size, integer=True)
        require_non_negative("data.num_workers", num_workers)
        require_positive("data.resolution", resolution, integer=True)
        if val_resolution is not None:
            require_positive("data.val_resolution", val_resolution, integer=True)
        # 0 aborted the process inside OpenCV (status 134); above 1 the centre crop pads with black
        require(
            isinstance(val_crop_ratio, (int, float)) and 0 < val_crop_ratio <= 1,
            "data.val_crop_ratio",
            val_crop_ratio,
            "in (0, 1] (centre crop side / shorter image side; 0.875 = 224/256)",
        )
        require_fraction_range("data.train_crop_scale", train_crop_scale)
        require_normalisation("data", mean, std)
        # every __init__ argument of the class chain (the subclass's own included) lands in hparams
        self.save_hyperparameters()

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: the hyperparameters are the attributes
        hparams = self.__dict__.get("_hparams")
        if hparams is not None and name in hparams:
            return hparams[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def split_path(self, kind: str) -> Optional[str]:
        """The file or folder a split ("train", "val", "test", "predict") reads: test and predict fall
        back to ``val_path``."""
        path = getattr(self, f"{kind}_path")
        return path if path or kind in ("train", "val") else self.val_path

    def stage_paths(self, stage: Optional[str]) -> List[Tuple[str, Optional[str], bool]]:
        """(kind, path, train?) of each split a Lightning stage reads (None, a plain ``setup()``: fit's)."""
        return [(kind, self.split_path(kind), kind == "train") for kind in STAGE_SPLITS[stage or "fit"]]

    @property
    def val_resolution(self) -> int:
        return self.hparams["val_resolution"] or self.hparams["resolution"]

    @property
    def train_crop_scale(self) -> Tuple[float, float]:
        return tuple(self.hparams["train_crop_scale"])

    @property
    def mean(self) -> Tuple[float, float, float]:
        return tuple(self.hparams["mean"])

    @property
    def std(self) -> Tuple[float, float, float]:
        return tuple(self.hparams["std"])
