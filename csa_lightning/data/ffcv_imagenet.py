"""ImageNet (or any ImageFolder written to ``.beton``) through FFCV loaders, for Lightning.

ffcv is imported lazily, here only: it needs system libraries, does not build everywhere, and
pins torch to one thread when imported. Conventions follow ffcv-imagenet: random-resized-crop
decoding and flips for training, a centre crop of ratio 224/256 for validation, QUASI_RANDOM
order in one process and RANDOM with ``distributed=True`` under DDP, ``drop_last`` on the
training loader only, ``os_cache`` for data that fits in RAM. Pitfalls of ffcv 1.0.2 (unmaintained
since 2024), measured here and handled:

- on CPU the pipeline order ``decoder, ToTensor, ToTorchImage, NormalizeImage`` never returns
  from the Loader constructor; CPU pipelines normalise on the numpy side before ``ToTensor``;
- importing ffcv and starting every epoch set torch's thread count (to 1, then to the Loader's
  ``num_workers``): the thread count is restored after import and re-asserted on every batch;
- ``ToTorchImage`` returns channels_last tensors: ``channels_last`` must match the model (the
  ClassificationModule converts itself to channels_last by default), or DDP warns that grad
  strides do not match bucket views;
- Loaders are built inside the ``*_dataloader`` hooks, where the process group exists.

Batches are views into buffers ffcv reuses a few batches later (``batches_ahead + 2`` slots):
Lightning holds at most two at a time, but code that keeps batches must ``clone()`` them.

Resuming: ffcv orders samples by (seed, epoch); the loader's epoch is set from the trainer's
``current_epoch`` before each epoch, so a run resumed from a checkpoint sees the same order as an
uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import lightning as L
import numpy as np
import torch

from .classification_data import IMAGENET_MEAN, IMAGENET_STD, ImageClassificationDataModule, stratified_order

__all__ = [
    "FFCVDataModule",
    "ImageNetFFCVDataModule",
    "import_ffcv",
    "beton_num_samples_and_classes",
    "beton_labels",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


_ffcv = None


def import_ffcv():
    """Import ffcv on first use, keeping torch's thread count as it was."""
    global _ffcv
    if _ffcv is None:
        threads = torch.get_num_threads()
        try:
            import ffcv  # noqa: F401  (sets torch.set_num_threads(1) as a side effect)
            import ffcv.fields.decoders
            import ffcv.loader
            import ffcv.reader
            import ffcv.transforms
        except ImportError as err:
            raise ImportError(
                f"ffcv is not installed ({err}); install it with `pip install -e '.[ffcv]'` after "
                "`apt-get install libopencv-dev libturbojpeg0-dev pkg-config`, or use ImageFolderDataModule"
            ) from err
        finally:
            torch.set_num_threads(threads)
        _ffcv = ffcv
    return _ffcv


def _missing_beton_message(kind: str, path: Optional[str]) -> str:
    return (
        f"{kind} beton not found: {path}; write one from an ImageFolder tree with "
        f"`python -m csa_lightning.data.write_beton --root DIR --out {path or 'FILE.beton'}`"
    )


def beton_num_samples_and_classes(path: str) -> Tuple[int, int]:
    """(number of samples, largest label + 1) of a beton, read from its metadata table only."""
    labels = beton_labels(path)
    return len(labels), int(labels.max()) + 1 if len(labels) else 0


def beton_labels(path: str) -> np.ndarray:
    """Every sample's label, in the beton's order, read from its metadata table only (no image is
    decoded); the file is checked for truncation first."""
    ffcv = import_ffcv()
    try:
        reader = ffcv.reader.Reader(str(path))
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(
            f"cannot read beton {path} ({type(err).__name__}): the file is corrupt or not an ffcv file; "
            "rewrite it with python -m csa_lightning.data.write_beton"
        ) from None
    from ffcv.fields import IntField, RGBImageField

    kinds = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    if not (
        isinstance(reader.handlers.get("image"), RGBImageField) and isinstance(reader.handlers.get("label"), IntField)
    ):
        # another kind of beton (other fields, or a float label) ended in an IndexError inside ffcv's loader
        fields = ", ".join(f"{name}: {kind}" for name, kind in kinds.items()) or "none"
        raise ValueError(
            f"beton {path} is not a classification beton (its fields: {fields}; expected image: RGBImageField, "
            "label: IntField); write one with python -m csa_lightning.data.write_beton"
        )
    _check_beton_sizes(reader, path)
    return np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"]).astype(np.int64)


def _check_beton_sizes(reader: Any, path: str) -> None:
    """The file must hold everything its header and allocation table point to.

    A beton cut short at its tail (an interrupted copy) loses its allocation table's last records
    and, further in, image pages; ffcv does not check, and a decoding thread then dies on the
    missing bytes while the loader waits for it forever (a training beton ended in
    ``empty range for randrange()`` instead). Checked when the file is opened, before any loader.
    """
    from ffcv.types import ALLOC_TABLE_TYPE

    size = Path(path).stat().st_size
    table_start = int(reader.header["alloc_table_ptr"])
    problem = None
    if size < table_start:
        problem = f"it is {size:,} bytes but its allocation table starts at byte {table_start:,}"
    elif (size - table_start) % ALLOC_TABLE_TYPE.itemsize:
        problem = "its allocation table ends in a partial record"
    elif len(reader.alloc_table) and int((reader.alloc_table["ptr"] + reader.alloc_table["size"]).max()) > table_start:
        problem = "an allocation points past its data region"
    elif reader.num_samples and len(np.unique(reader.alloc_table["sample_id"])) < reader.num_samples:
        missing = reader.num_samples - len(np.unique(reader.alloc_table["sample_id"]))
        problem = f"{missing} of its {reader.num_samples:,} samples have no allocated data"
    if problem:
        raise ValueError(
            f"beton {path} is truncated or corrupt ({problem}); copy it again or rewrite it with "
            "python -m csa_lightning.data.write_beton"
        )


class _EpochAwareLoader:
    """An ffcv Loader that follows the trainer's epoch and keeps torch's thread count.

    Lightning accepts any sized iterable as a dataloader; this one sets the Loader's epoch from
    the trainer (for exact resumption) and undoes the thread-count change ffcv makes when an
    epoch starts.
    """

    def __init__(self, loader: Any, trainer: Optional["L.Trainer"], torch_threads: int) -> None:
        self.loader = loader
        self.trainer = trainer
        self.torch_threads = torch_threads

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def sample_indices(self) -> np.ndarray:
        """The beton indices of this process's samples, in the order an evaluation epoch yields
        them (``PredictionWriter``'s ``index`` column; Lightning cannot infer them for ffcv)."""
        return np.asarray(self.loader.traversal_order.sample_order(0), dtype=np.int64)

    def __iter__(self) -> Iterator:
        if self.trainer is not None:
            self.loader.next_epoch = self.trainer.current_epoch
            # ffcv 1.0.2's QuasiRandom shuffles its page table in place, so an epoch's order would
            # depend on every epoch drawn before it in this process; rebuilding the table makes it
            # a function of (seed, epoch) alone, as RANDOM order already is
            order = getattr(self.loader, "traversal_order", None)
            if order is not None and hasattr(order, "prepare_data_structures"):
                order.prepare_data_structures()
        for batch in self.loader:
            if torch.get_num_threads() != self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            yield batch


class FFCVDataModule(ImageClassificationDataModule):
    """FFCV ``.beton`` files for training, validation, testing and prediction.

    Args:
        os_cache: let the OS page cache hold the file (for data that fits in RAM).
        distributed: None (auto: True when the trainer runs several processes), True or False.
        seed: ffcv's ordering seed (orders are a function of seed and epoch).
        **kwargs: the shared arguments
            ([`ImageClassificationDataModule`][csa_lightning.data.ImageClassificationDataModule]): train_path, val_path,
            test_path, predict_path (``.beton`` files; write them with ``csa_lightning.data.write_beton``), batch_size,
            num_workers (ffcv decoding threads), resolution, val_resolution, val_crop_ratio, train_crop_scale, flip,
            channels_last, mean, std.
    """

    def __init__(self, os_cache: bool = True, distributed: Optional[bool] = None, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._num_classes: Optional[int] = None

    # ------------------------------------------------------------------ checks

    def setup(self, stage: Optional[str] = None) -> None:
        classes = 0
        for kind, path, _ in self.stage_paths(stage):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(_missing_beton_message(kind, path))
            labels = self._labels(path)
            classes = max(classes, int(labels.max()) + 1 if len(labels) else 0)
        self._num_classes = classes

    def _labels(self, path: str) -> np.ndarray:
        """The beton's labels, read (and the file checked) once per path: setup and the loader need them."""
        cache = self.__dict__.setdefault("_labels_of", {})
        if path not in cache:
            cache[path] = beton_labels(path)
        return cache[path]

    @property
    def num_classes(self) -> Optional[int]:
        """Largest label in the data + 1 (known after ``setup``): the model must have at least this many."""
        return self._num_classes

    # ------------------------------------------------------------------ loaders

    def _is_distributed(self) -> bool:
        if self.distributed is not None:
            return self.distributed
        trainer = self._trainer_or_none()
        return trainer is not None and trainer.world_size > 1

    def _trainer_or_none(self) -> Optional["L.Trainer"]:
        return getattr(self, "trainer", None)

    def _device(self) -> torch.device:
        trainer = self._trainer_or_none()
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def _image_pipeline(self, train: bool) -> list:
        ffcv = import_ffcv()
        dec = ffcv.fields.decoders
        tr = ffcv.transforms
        if train:
            pipeline = [
                dec.RandomResizedCropRGBImageDecoder((self.resolution, self.resolution), scale=self.train_crop_scale)
            ]
            if self.flip:
                pipeline.append(tr.RandomHorizontalFlip())
        else:
            pipeline = [
                dec.CenterCropRGBImageDecoder((self.val_resolution, self.val_resolution), ratio=self.val_crop_ratio)
            ]
        mean = np.array(self.mean) * 255
        std = np.array(self.std) * 255
        device = self._device()
        if device.type == "cuda":
            # decode on CPU, normalise in fp16 on the GPU (ffcv-imagenet's order)
            pipeline += [
                tr.ToTensor(),
                tr.ToDevice(device, non_blocking=True),
                tr.ToTorchImage(channels_last=self.channels_last),
                tr.NormalizeImage(mean, std, np.float16),
            ]
        else:
            # the only CPU order that works: normalise the numpy batch first (see the module docstring)
            pipeline += [
                tr.NormalizeImage(mean, std, np.float32),
                tr.ToTensor(),
                tr.ToTorchImage(channels_last=self.channels_last, convert_back_int16=False),
            ]
        return pipeline

    def _label_pipeline(self) -> list:
        ffcv = import_ffcv()
        tr = ffcv.transforms
        pipeline = [ffcv.fields.decoders.IntDecoder(), tr.ToTensor(), tr.Squeeze()]
        device = self._device()
        if device.type == "cuda":
            pipeline.append(tr.ToDevice(device, non_blocking=True))
        return pipeline

    def _loader(self, path: Optional[str], kind: str, train: bool) -> _EpochAwareLoader:
        if not path or not Path(path).is_file():
            raise FileNotFoundError(_missing_beton_message(kind, path))
        ffcv = import_ffcv()
        OrderOption = ffcv.loader.OrderOption
        distributed = self._is_distributed()
        indices = None
        if train:
            order = OrderOption.RANDOM if distributed else OrderOption.QUASI_RANDOM
        else:
            # the beton is stored class by class: evaluate in an order whose every prefix is a
            # stratified sample (a partial validation scores every class), the file unchanged
            order = OrderOption.SEQUENTIAL
            indices = stratified_order(self._labels(path))
        threads = torch.get_num_threads()
        try:
            loader = ffcv.loader.Loader(
                str(path),
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                order=order,
                os_cache=self.os_cache,
                drop_last=train,
                distributed=distributed,
                seed=self.seed,
                indices=indices,
                pipelines={"image": self._image_pipeline(train), "label": self._label_pipeline()},
            )
        finally:
            torch.set_num_threads(threads)
        return _EpochAwareLoader(loader, self._trainer_or_none() if train else None, threads)

    def train_dataloader(self):
        return self._loader(self.train_path, "train", train=True)

    def val_dataloader(self):
        return self._loader(self.val_path, "val", train=False)

    def test_dataloader(self):
        return self._loader(self.split_path("test"), "test", train=False)

    def predict_dataloader(self):
        return self._loader(self.split_path("predict"), "predict", train=False)


#: the earlier name (the module reads any ``.beton`` classification set, ImageNet or not); configs and
#: code that name ``csa_lightning.data.ImageNetFFCVDataModule`` keep working
ImageNetFFCVDataModule = FFCVDataModule
