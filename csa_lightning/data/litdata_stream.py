"""ImageNet-format classification data streamed with LitData: chunk folders on a local or shared disk
or in an object store, sharded per rank, resumable mid-epoch.

Write the chunks once with ``python -m csa_lightning.data.write_litdata`` (an ImageFolder tree in,
the original image bytes out); then ``--data csa_lightning.data.LitDataModule --data.train_path
s3://bucket/imagenet/train --data.val_path s3://bucket/imagenet/val`` (or local folders, or
``local:/path`` for LitData's local remote). The transforms are the ImageFolder module's
(`csa_lightning.data.image_folder.TorchvisionImageData`: the uint8 pipeline by default, or
PIL's); under DDP LitData gives each rank its own shard and the same number of batches.

Resume: the training loader is a ``StreamingDataLoader``, whose state Lightning saves in its
checkpoints; a run stopped by SIGTERM saves one at the stop
(`csa_lightning.tasks.callbacks.SigtermWatchdog`), and the resumed run continues at the
next batch of the same epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import first_line
from .classification_data import require_same_classes
from .image_folder import TorchvisionImageData

__all__ = ["LitDataModule", "CLASSES_FILE", "read_classes", "check_stream"]

#: beside LitData's index.json: the class names in label order and the item count; written last by
#: the converter, so a folder without it is not a finished conversion
CLASSES_FILE = "classes.json"

#: URL schemes LitData reads (local paths have none)
SCHEMES = ("s3", "gs", "azure", "hf", "local")


def _split_url(path: str):
    scheme, sep, _ = str(path).partition("://")
    if sep:
        return scheme
    if str(path).startswith("local:"):
        return "local"
    return None


def _local_folder(path: str) -> Optional[Path]:
    scheme = _split_url(path)
    if scheme is None:
        return Path(path)
    if scheme == "local":
        return Path(str(path).split(":", 1)[1].removeprefix("//"))
    return None


def read_classes(path: str, storage_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The converter's ``classes.json`` of a chunk folder (local, ``local:``, or an object store
    through LitData's own downloader)."""
    local = _local_folder(path)
    if local is not None:
        marker = local / CLASSES_FILE
        if not local.is_dir():
            raise FileNotFoundError(
                f"chunk folder not found: {path}; write it with python -m csa_lightning.data.write_litdata"
            )
        if not marker.is_file():
            what = (
                "an unfinished conversion (no index.json)"
                if not (local / "index.json").is_file()
                else "not a finished conversion of this project (no classes.json)"
            )
            raise ValueError(
                f"{path} is {what}; run python -m csa_lightning.data.write_litdata again (it resumes) or point to "
                "a finished folder"
            )
        return json.loads(marker.read_text())
    import tempfile

    from litdata.streaming.downloader import get_downloader

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / CLASSES_FILE
        try:
            get_downloader(str(path), scratch, [], storage_options or {}).download_file(
                f"{str(path).rstrip('/')}/{CLASSES_FILE}", str(target)
            )
        except Exception as err:  # noqa: BLE001 - boto/obstore/gcs errors vary: one line either way
            first = first_line(err)[:200]
            raise ValueError(
                f"cannot read {path}/{CLASSES_FILE} ({type(err).__name__}: {first}); check the URL and the "
                "object store's credentials (docs/data-loading.md), and that the conversion finished"
            ) from None
        return json.loads(target.read_text())


def check_stream(path: str, kind: str, storage_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One line naming the fix for a URL LitData cannot read, a missing, unfinished or foreign chunk
    folder; else the folder's classes.json."""
    scheme = _split_url(path)
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(
            f"data.{kind}_path: LitData cannot read '{scheme}://' URLs ({path}); use a local folder, local:PATH, "
            "s3://, gs:// or azure://"
        )
    about = read_classes(path, storage_options)
    if not isinstance(about, dict) or "classes" not in about or "count" not in about:
        raise ValueError(f"{path}/{CLASSES_FILE} is not this project's; convert the images with write_litdata")
    local = _local_folder(path)
    if local is not None:
        index = json.loads((local / "index.json").read_text())
        count = sum(int(chunk.get("chunk_size", 0)) for chunk in index.get("chunks", []))
        if count != about["count"]:
            raise ValueError(
                f"{path} holds {count} items but its conversion wrote {about['count']}; the folder was changed "
                "after the conversion: write it again with write_litdata"
            )
    return about


class _Decode:
    """A stream item (the original image bytes, label, index) -> (image tensor, label, index);
    picklable, so the loader's workers run it."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, item: Dict[str, Any]):
        image = self.transform(item["image"], name=f"stream item {item['index']} ({item.get('path', '?')})")
        return image, int(item["label"]), int(item["index"])


class LitDataModule(TorchvisionImageData):
    """Classification from LitData chunk folders (``write_litdata``'s output).

    Args:
        cache_dir: where chunks from an object store are cached (default: LitData's, under
            ~/.lightning/chunks or $DATA_OPTIMIZER_CACHE_FOLDER); unused for local folders.
        max_cache_size: how much of it the stream may fill before evicting chunks (e.g. "50GB").
        storage_options: passed to LitData (e.g. ``{"endpoint_url": ...}`` for S3-compatible stores).
        seed: the shuffle seed (each epoch shuffles chunks and items anew from it).
        **kwargs: ``auto_augment`` and the shared arguments, as
            [`ImageFolderDataModule`][csa_lightning.data.ImageFolderDataModule] (train_path, val_path, test_path,
            predict_path are chunk folders or URLs).
    """

    def __init__(self, cache_dir: Optional[str] = None, max_cache_size: str = "50GB",
                 storage_options: Optional[Dict[str, Any]] = None, seed: int = 42, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self._streams: Dict[str, Any] = {}
        self._train_loader = None
        self._train_position: Optional[Dict[str, Any]] = None

    # The training stream's position travels in Lightning's checkpoint as this module's state: a
    # checkpoint saved mid-epoch (at a SIGTERM) carries it and the resumed run's loader continues
    # from it. (Lightning also stores loader states in its fit loop, but does not hand them back to
    # a loader its data module builds after the restore.) An epoch-end checkpoint carries none: the
    # next epoch starts afresh.
    def state_dict(self) -> Dict[str, Any]:
        trainer, loader = getattr(self, "trainer", None), self._train_loader
        if trainer is None or loader is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if 0 < done < trainer.num_training_batches:
            return {"train_position": loader.state_dict()}
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._train_position = state_dict.get("train_position")

    def _stream(self, kind: str, path: Optional[str], train: bool):
        from litdata import StreamingDataset

        if not path:
            raise FileNotFoundError(f"data.{kind}_path is not set; give a chunk folder written by write_litdata")
        return StreamingDataset(
            str(path),
            cache_dir=self.cache_dir,
            max_cache_size=self.max_cache_size,
            storage_options=self.storage_options or {},
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            transform=_Decode(self.image_transform(train)),
        )

    def setup(self, stage: Optional[str] = None) -> None:
        classes = {}
        for kind, path, _ in self.stage_paths(stage):
            if not path:
                raise FileNotFoundError(f"data.{kind}_path is not set; give a chunk folder written by write_litdata")
            classes[kind] = check_stream(str(path), kind, self.storage_options)["classes"]
        reference = classes.get("train") or next(iter(classes.values()))
        for kind, names in classes.items():
            require_same_classes(
                kind,
                names,
                reference,
                f"the {kind} stream has other classes than the training stream",
                "convert every split from folders with the same class folders",
            )
        self.num_classes = len(reference)
        self._streams = {kind: self._stream(kind, path, train) for kind, path, train in self.stage_paths(stage)}

    def _loader(self, kind: str, path: Optional[str], train: bool):
        from litdata import StreamingDataLoader

        stream = self._streams.get(kind) or self._stream(kind, path, train)
        return StreamingDataLoader(
            stream,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self):
        loader = self._loader("train", self.train_path, True)
        if self._train_position is not None:
            loader.load_state_dict(self._train_position)  # resume at the next batch of the stopped epoch
            self._train_position = None
        self._train_loader = loader
        return loader

    def val_dataloader(self):
        return self._loader("val", self.val_path, False)

    def test_dataloader(self):
        return self._loader("test", self.split_path("test"), False)

    def predict_dataloader(self):
        return self._loader("predict", self.split_path("predict"), False)
