"""ImageFolder trees through torchvision transforms and a torch DataLoader.

The same arguments as [`FFCVDataModule`][csa_lightning.data.FFCVDataModule], for users without ffcv and as the baseline
of the loader benchmark: RandomResizedCrop (+ flip) for training, Resize to side / ratio then
CenterCrop for validation (224 / 256 as in torchvision's reference). Images are converted to RGB.
Under DDP, Lightning puts a DistributedSampler in front of these loaders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch.utils.data import DataLoader

from ..checks import require
from .classification_data import ImageClassificationDataModule, require_same_classes, stratified_order
from .image_io import _path_only, open_rgb

__all__ = ["ImageFolderDataModule", "TorchvisionImageData", "PIPELINES"]

#: ``data.pipeline``'s values: uint8 (`csa_lightning.data.uint8_pipeline`), PIL and float transforms,
#: or JPEGs decoded on the GPU (`csa_lightning.data.device_decode`)
PIPELINES = ("uint8", "pil", "nvjpeg")


class PilTransform:
    """A file (path or bytes) -> PIL image through ``open_rgb`` -> torchvision's transforms
    (``data.pipeline: pil``); picklable, so loader workers run it."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, source, name: Optional[str] = None):
        return self.transform(open_rgb(source, name=name))


class _FromFile:
    """ImageFolder's transform: the pipeline on a path, with the fix added to an unreadable file's error."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, path: str):
        try:
            return self.pipeline(path)
        except OSError as err:  # PIL's truncated / unidentified / corrupt / too large files
            raise OSError(f"{err}; replace or remove the file") from None


def _class_names(path: Optional[str]) -> Optional[List[str]]:
    """The class folders of an ImageFolder tree, as torchvision orders them (None if no folder)."""
    if not path or not Path(path).is_dir():
        return None
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


class TorchvisionImageData(ImageClassificationDataModule):
    """What the data modules that read image files in loader workers share (this ImageFolder one and
    [`LitDataModule`][csa_lightning.data.LitDataModule]): RandomResizedCrop (+ flip, + TrivialAugmentWide
    with ``auto_augment="trivial"``) for training; Resize to side / ratio then CenterCrop for
    validation; normalised, channels_last batches on the device.

    Args:
        auto_augment: "trivial" adds TrivialAugmentWide to the training transforms (the strong
            recipe's per-image augmentation); None: none.
        pipeline: "uint8" (default): JPEGs decoded with libjpeg-turbo, the crop chosen before
            decoding, crop and resize on uint8 tensors, uint8 batches normalised on the device
            (`csa_lightning.data.uint8_pipeline`; pixels within two grey levels of "pil"'s). "pil":
            PIL images through torchvision's transforms, normalised to float in the workers
            (torchvision's reference pipeline, about half the speed). "nvjpeg": the workers read the
            files and draw the crops, JPEGs are decoded, cropped and resized on the GPU in the
            training process (`csa_lightning.data.device_decode`; needs CUDA, refuses otherwise).
        dct_scaling: with "uint8", decode a JPEG at 1/2, 1/4 or 1/8 scale when the crop is at least
            twice the output (changes pixels: at least 30 dB PSNR against full decoding;
            docs/data-loading.md); false: always decode at full size.
        **kwargs: the shared arguments
            ([`ImageClassificationDataModule`][csa_lightning.data.ImageClassificationDataModule]).
    """

    def __init__(self, auto_augment: Optional[str] = None, pipeline: str = "uint8", dct_scaling: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        require(auto_augment in (None, "trivial"), "data.auto_augment", auto_augment, "null or 'trivial'")
        require(pipeline in PIPELINES, "data.pipeline", pipeline, " or ".join(repr(p) for p in PIPELINES))
        require(isinstance(dct_scaling, bool), "data.dct_scaling", dct_scaling, "true or false")
        super().__init__(**kwargs)
        self.num_classes: Optional[int] = None

    def image_transform(self, train: bool):
        """A file (path or bytes, and a name for errors) -> the image tensor a batch holds: uint8
        ``(3, H, W)`` with ``pipeline: uint8``, normalised float with ``pipeline: pil``, the file's bytes
        and its crop (`csa_lightning.data.device_decode.EncodedJpeg`) or a uint8 crop with
        ``pipeline: nvjpeg``."""
        if self.pipeline == "pil":
            return PilTransform(self.train_transform() if train else self.val_transform())
        if self.pipeline == "nvjpeg":
            from .device_decode import DeferredRandomResizedCrop, DeferredResizeCenterCrop, require_cuda

            require_cuda()
            if train:
                return DeferredRandomResizedCrop(self.resolution, scale=self.train_crop_scale, flip=self.flip,
                                                 auto_augment=self.auto_augment)  # fmt: skip
            return DeferredResizeCenterCrop(self.val_resolution, self._val_resize())
        from .uint8_pipeline import RandomResizedCropUint8, ResizeCenterCropUint8

        if train:
            return RandomResizedCropUint8(self.resolution, scale=self.train_crop_scale, flip=self.flip,
                                          auto_augment=self.auto_augment, dct_scaling=self.dct_scaling)  # fmt: skip
        return ResizeCenterCropUint8(self.val_resolution, self._val_resize(), dct_scaling=self.dct_scaling)

    def collate_fn(self):
        """The loaders' collate function: `csa_lightning.data.uint8_pipeline.collate_uint8` (channels_last
        uint8 batches) with ``pipeline: uint8``, `csa_lightning.data.device_decode.collate_deferred`
        with ``pipeline: nvjpeg``, torch's default otherwise."""
        if self.pipeline == "uint8":
            from .uint8_pipeline import collate_uint8

            return collate_uint8
        if self.pipeline == "nvjpeg":
            from .device_decode import collate_deferred

            return collate_deferred
        return None

    def _val_resize(self) -> int:
        return int(round(self.val_resolution / self.val_crop_ratio))

    def train_transform(self):
        from torchvision import transforms as T

        steps = [T.RandomResizedCrop(self.resolution, scale=self.train_crop_scale)]
        if self.flip:
            steps.append(T.RandomHorizontalFlip())
        if self.auto_augment == "trivial":
            steps.append(T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR))
        return T.Compose(steps + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def val_transform(self):
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(self._val_resize()),
                T.CenterCrop(self.val_resolution),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """In the training process, with ``pipeline: nvjpeg``: the batch's JPEGs decoded, cropped and
        resized on the trainer's GPU (`csa_lightning.data.device_decode.decode_batch`), as uint8."""
        from .device_decode import DeferredImages, decode_batch, require_cuda

        if not (isinstance(batch, (list, tuple)) and isinstance(batch[0], DeferredImages)):
            return batch
        trainer = getattr(self, "trainer", None)  # None: called outside a trainer (the analysis tools)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cuda")
        require_cuda(device)
        return [decode_batch(batch[0], device, self._device_augment()), *batch[1:]]

    def _device_augment(self):
        if self.auto_augment != "trivial":
            return None
        if getattr(self, "_trivial_augment", None) is None:
            from torchvision.transforms import v2

            self._trivial_augment = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)
        return self._trivial_augment

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the batch's device: a uint8 batch normalised to float32 (``(x / 255 - mean) / std``, the
        order of ToTensor and Normalize), and channels_last strides (as ffcv's loader returns them)."""
        if not (isinstance(batch, (list, tuple)) and torch.is_tensor(batch[0]) and batch[0].dim() == 4):
            return batch
        images = batch[0]
        if images.dtype == torch.uint8:
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            images = images.float().div_(255).sub_(mean).div_(std)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return [images, *batch[1:]]


class ImageFolderDataModule(TorchvisionImageData):
    """``root/<class>/<image>`` trees for training and validation (test/predict default to val).

    Args:
        auto_augment: see `csa_lightning.data.image_folder.TorchvisionImageData`.
        **kwargs: the shared arguments
            ([`ImageClassificationDataModule`][csa_lightning.data.ImageClassificationDataModule]): train_path, val_path,
            test_path, predict_path (image folders), batch_size, num_workers, resolution, val_resolution,
            val_crop_ratio, train_crop_scale, flip, channels_last, mean, std.
    """

    def _folder(self, path: Optional[str], kind: str, train: bool):
        from torchvision.datasets import ImageFolder

        if not path or not Path(path).is_dir():
            raise FileNotFoundError(
                f"{kind} image folder not found: {path} (expected {kind}_path/<class>/<image files>)"
            )
        # every split is labelled by the training folder's classes: a validation folder without
        # class "1" would otherwise give its folder "2" label 1
        own = _class_names(path) or []
        require_same_classes(
            kind,
            own,
            _class_names(self.train_path) or own,
            f"the {kind} folder {path} has other classes than the training folder {self.train_path}",
            "every split needs the same class folders",
        )
        return ImageFolder(path, transform=_FromFile(self.image_transform(train)), loader=_path_only)

    def setup(self, stage: Optional[str] = None) -> None:
        self._datasets = {kind: self._folder(path, kind, train) for kind, path, train in self.stage_paths(stage)}
        self.num_classes = max(len(d.classes) for d in self._datasets.values())

    def _loader(self, kind: str, path: Optional[str], train: bool) -> DataLoader:
        dataset = self._datasets.get(kind) if hasattr(self, "_datasets") else None
        dataset = dataset or self._folder(path, kind, train)
        # evaluation: every prefix of the order a stratified sample (ImageFolder sorts by class);
        # Lightning wraps this sampler in a DistributedSampler under DDP and reports the dataset
        # indices of each predicted batch, which predictions.csv's index and path columns use
        sampler = None if train else stratified_order(dataset.targets).tolist()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_path, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_path, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.split_path("test"), False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.split_path("predict"), False)
