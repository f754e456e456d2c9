"""COCO-format detection and instance-segmentation data: a COCO JSON file plus an image folder.

[`COCODataModule`][csa_lightning.data.COCODataModule] reads COCO 2017 (``root/train2017``, ``root/val2017``,
``root/annotations/instances_{train,val}2017.json``) or any data set in the same format, through
pycocotools, and yields what torchvision's detection models take: a list of float images in 0..1
and a list of target dicts with ``boxes`` (x1, y1, x2, y2, absolute pixels), ``labels``
(1..K; 0 is the background), ``masks`` (uint8, one per box, when asked for), ``image_id``,
``area`` and ``iscrowd``.

Conventions, as torchvision's detection references:

- category ids (COCO's run 1..90 with gaps) map to contiguous labels 1..K in id order
  (``category_ids`` and ``class_names`` keep the mapping);
- training skips crowd annotations and drops images left without an annotation; validation keeps
  every image and keeps crowd annotations, flagged ``iscrowd = 1``, so that COCO evaluation
  ignores the detections that match them instead of counting them as false positives; ``area`` is
  the annotation's own (the mask area), which is what COCO's small / medium / large split uses;
- annotations with a degenerate box (no width or height inside the image) or an unknown category
  are skipped and counted in one warning per split, never a crash;
- masks come from polygons or RLE (compressed or not), decoded with pycocotools;
- training images are flipped horizontally with probability ``flip_prob``; batches are grouped by
  aspect ratio (``aspect_ratio_group_factor``, torchvision's default 3; -1 turns it off), and
  Lightning shards them under DDP (the batch sampler is rebuilt around its DistributedSampler).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from ..checks import is_number, require, require_non_negative, require_positive
from .image_io import open_rgb

log = logging.getLogger(__name__)

__all__ = ["COCODetection", "COCODataModule", "GroupedBatchSampler", "aspect_ratio_groups", "collate_detection"]


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError("COCO data needs pycocotools: pip install 'csa-lightning[detection]'") from None
    return COCO, mask_utils


def load_coco(annotation_file: str):
    """A pycocotools COCO index of ``annotation_file``, with one-line errors for a missing or bad file."""
    COCO, _ = _pycocotools()
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {annotation_file} not found; check --data.root and the annotation paths"
        )
    try:
        with open(path) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"annotation file {annotation_file} is not valid JSON ({err}); re-download or re-write it"
        ) from None
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise ValueError(f"annotation file {annotation_file} lacks {', '.join(missing)}: not a COCO instances file")
    # pycocotools indexes by id: a repeated image id would drop one image and give its annotations
    # to the other, a repeated category id shift every label after it
    for kind, entries in (("category", dataset["categories"]), ("image", dataset["images"])):
        seen, repeated = set(), []
        for entry in entries:
            key = entry.get("id") if isinstance(entry, dict) else None
            if key is None:
                raise ValueError(f"annotation file {annotation_file}: a {kind} entry has no 'id': {entry!r}"[:300])
            if key in seen:
                repeated.append(key)
            seen.add(key)
        if repeated:
            more = f" (and {len(repeated) - 1} more repeated ids)" if len(repeated) > 1 else ""
            raise ValueError(
                f"annotation file {annotation_file} lists {kind} id {repeated[0]} twice{more}; "
                f"every {kind} needs its own id"
            )
    for ann in dataset["annotations"]:
        for key in ("image_id", "category_id"):
            if not isinstance(ann, dict) or key not in ann:
                ann_id = ann.get("id", "?") if isinstance(ann, dict) else repr(ann)[:60]
                raise ValueError(f"{annotation_file}: annotation {ann_id} has no '{key}'; every annotation needs one")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    _, mask_utils = _pycocotools()
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = segmentation
    return mask_utils.decode(rle)


class COCODetection(Dataset):
    """One split of a COCO-format data set as (image, target) pairs for torchvision's detectors.

    Args:
        image_folder: folder of the images (``file_name`` in the JSON is relative to it).
        annotation_file: the COCO instances JSON.
        category_ids: category id of each label 1..K (default: this file's categories, sorted).
        train: skip crowd annotations and images left without annotations (else keep both).
        masks: decode instance masks.
        flip_prob: probability of a horizontal flip (training).
    """

    def __init__(
        self,
        image_folder: str,
        annotation_file: str,
        category_ids: Optional[Sequence[int]] = None,
        train: bool = False,
        masks: bool = False,
        flip_prob: float = 0.0,
    ) -> None:
        self.image_folder = Path(image_folder)
        self.annotation_file = annotation_file
        self.coco = load_coco(annotation_file)
        self.category_ids = list(category_ids) if category_ids is not None else sorted(self.coco.getCatIds())
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.train = train
        self.masks = masks
        self.flip_prob = flip_prob
        self.skipped: Dict[str, int] = defaultdict(int)
        self._check_structure()
        self.annotations = {img_id: self._valid_annotations(img_id) for img_id in sorted(self.coco.imgs)}
        self.ids = [
            i for i in sorted(self.coco.imgs) if not train or any(not a["iscrowd"] for a in self.annotations[i])
        ]
        if not self.ids:
            raise ValueError(
                f"{annotation_file}: no usable image ({len(self.coco.imgs)} listed, "
                f"{sum(self.skipped.values())} annotations skipped); check its images and annotations"
            )
        if self.skipped:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            log.warning("%s: skipped %d annotations (%s)", annotation_file, sum(self.skipped.values()), counts)
        self._check_image_files()

    def _check_structure(self) -> None:
        """What no data loader can work around, as one line naming the file and the id, at load time
        (before: KeyError 'width', a string bbox's TypeError mid-epoch, annotations silently dropped)."""
        where = self.annotation_file
        for img_id, info in self.coco.imgs.items():
            for key in ("width", "height", "file_name"):
                if key not in info:
                    raise ValueError(
                        f"{where}: image {img_id} has no '{key}'; every image needs width, height, file_name"
                    )
            if not all(is_number(info[k]) and info[k] > 0 for k in ("width", "height")):
                raise ValueError(f"{where}: image {img_id} has a width or height that is not a positive number")
        for ann in self.coco.dataset["annotations"]:
            ann_id = ann.get("id", "?")
            if ann.get("image_id") not in self.coco.imgs:
                raise ValueError(
                    f"{where}: annotation {ann_id} refers to image {ann.get('image_id')}, which the file does not list"
                )
            bbox = ann.get("bbox")
            if bbox is not None and (not isinstance(bbox, (list, tuple)) or not all(is_number(v) for v in bbox)):
                raise ValueError(f"{where}: annotation {ann_id} has a bbox that is not a list of numbers: {bbox!r}")

    def _valid_segmentation(self, ann: Dict) -> Optional[Any]:
        """Polygons pycocotools can rasterise (at least 3 points, an even count); COCO's own tools
        drop the smaller ones. None when nothing usable is left."""
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            return seg if "counts" in seg and "size" in seg else None
        if not isinstance(seg, list):
            return None
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return polygons or None

    def _valid_annotations(self, img_id: int) -> List[Dict]:
        info = self.coco.imgs[img_id]
        kept = []
        for ann in self.coco.imgToAnns.get(img_id, []):
            crowd = int(ann.get("iscrowd", 0))
            if crowd and self.train:
                continue  # as torchvision's references: crowd regions are not training targets
            if ann.get("category_id") not in self.label_of:
                self.skipped["with an unknown category"] += 1
                continue
            bbox = ann.get("bbox")
            if not bbox or len(bbox) != 4:
                self.skipped["without a box"] += 1
                continue
            if not all(math.isfinite(v) for v in bbox):
                self.skipped["with a non-finite box"] += 1
                continue
            x, y, w, h = bbox
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, info["width"]), min(y + h, info["height"])
            if x2 <= x1 or y2 <= y1:
                self.skipped["with a degenerate box"] += 1
                continue
            segmentation = self._valid_segmentation(ann) if self.masks else None
            if self.masks and segmentation is None:
                self.skipped["without a usable mask (empty or < 3-point polygons)"] += 1
                continue
            extra = {"segmentation": segmentation} if self.masks else {}
            kept.append({**ann, **extra, "_box": (x1, y1, x2, y2), "iscrowd": crowd})
        return kept

    def _check_image_files(self) -> None:
        if not self.image_folder.is_dir():
            raise FileNotFoundError(
                f"image folder {self.image_folder} not found; check --data.root and the image folder names"
            )
        missing = [self.image_folder / self.coco.imgs[i]["file_name"] for i in self.ids]
        missing = [p for p in missing if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"image file {missing[0]}{more} listed in {self.annotation_file} not found")

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratio(self, index: int) -> float:
        info = self.coco.imgs[self.ids[index]]
        return info["width"] / info["height"]

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        import torchvision.transforms.functional as TF

        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = self.image_folder / info["file_name"]
        try:
            image = TF.to_tensor(open_rgb(path))
        except OSError as err:
            raise ValueError(f"{err}; replace or remove it from {self.annotation_file}") from None
        anns = self.annotations[img_id]
        height, width = image.shape[-2:]
        if (width, height) != (info["width"], info["height"]):
            # checked here, at first read, not when the file is loaded: reading 118k headers up front
            # costs a pass over the data set (see docs), and boxes and masks are in the JSON's size
            raise ValueError(
                f"image {path} is {width} x {height} pixels but {self.annotation_file} says "
                f"{info['width']} x {info['height']}; fix its width/height there or replace the file"
            )
        boxes = torch.tensor([a["_box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": img_id,
            "area": torch.tensor(
                [float(a.get("area", (b[2] - b[0]) * (b[3] - b[1]))) for a, b in zip(anns, boxes.tolist())]
            ),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
        }
        if self.masks:
            decoded = [_decode_mask(a["segmentation"], info["height"], info["width"]) for a in anns]
            target["masks"] = (
                torch.from_numpy(np.stack(decoded)) if decoded else torch.zeros((0, height, width), dtype=torch.uint8)
            )
        if self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate_detection(batch):
    """Detection batches stay lists: images differ in size, and so do the numbers of boxes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def aspect_ratio_groups(ratios: Sequence[float], group_factor: int = 3) -> List[int]:
    """Bin aspect ratios (w / h) on a log scale, 2 * group_factor + 1 edges from 1/2 to 2 (as
    torchvision's references), so that batches of one bin waste little padding."""
    edges = (2 ** np.linspace(-1, 1, 2 * group_factor + 1)).tolist() if group_factor > 0 else [1.0]
    return [bisect.bisect_right(edges, r) for r in ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches whose images share an aspect-ratio group.

    Draws indices from ``sampler`` and emits a batch as soon as one group has ``batch_size`` of
    them; what is left at the end is batched regardless of group. Exactly ``len(sampler) //
    batch_size`` batches (an incomplete last batch is dropped), so every DDP rank takes the same
    number of steps. Lightning swaps ``sampler`` for a DistributedSampler under DDP and sets its
    epoch, which keeps the shuffle seeded and sharded.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=True)
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        rest = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(rest) - self.batch_size + 1, self.batch_size):
            yield rest[start : start + self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]  # a sized sampler (RandomSampler)


class COCODataModule(L.LightningDataModule):
    """COCO 2017 (or any COCO-format data set) for Faster R-CNN and Mask R-CNN.

    Args:
        root: folder holding the image folders and annotation files (the paths below are relative to it).
        train_images: image folders.
        val_images: see ``train_images``.
        train_annotations: COCO instances JSON files.
        val_annotations: see ``train_annotations``.
        masks: load instance masks (Mask R-CNN).
        batch_size: images per device and step (the paper: 16 in all, e.g. 2 on each of 8 GPUs).
        num_workers: loader processes per device.
        flip_prob: horizontal flip probability in training.
        aspect_ratio_group_factor: group training batches by aspect ratio (-1: off).

    The training order follows torch's global seed (``seed_everything``); under DDP Lightning
    shards it. Validation is sharded without padding, so no image is evaluated twice.
    """

    def __init__(
        self,
        root: str = "data/coco",
        train_images: str = "train2017",
        val_images: str = "val2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_annotations: str = "annotations/instances_val2017.json",
        masks: bool = False,
        batch_size: int = 2,
        num_workers: int = 4,
        flip_prob: float = 0.5,
        aspect_ratio_group_factor: int = 3,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size, integer=True)
        require_non_negative("data.num_workers", num_workers)
        require(0 <= flip_prob <= 1, "data.flip_prob", flip_prob, "in [0, 1]")
        require(
            isinstance(aspect_ratio_group_factor, int) and aspect_ratio_group_factor >= -1,
            "data.aspect_ratio_group_factor", aspect_ratio_group_factor, "-1 (off) or >= 0",
        )  # fmt: skip
        self.save_hyperparameters()
        self.root = root
        self.train_images, self.val_images = train_images, val_images
        self.train_annotations, self.val_annotations = train_annotations, val_annotations
        self.masks = masks
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.flip_prob = flip_prob
        self.aspect_ratio_group_factor = aspect_ratio_group_factor
        self.train_set: Optional[COCODetection] = None
        self.val_set: Optional[COCODetection] = None

    def _path(self, relative: str) -> str:
        return str(Path(self.root) / relative)

    def _category_ids(self) -> Optional[List[int]]:
        # when training, the training file defines the label space (a validation annotation of
        # another category is skipped and counted); validate / test alone use the validation file's
        # own categories, which for COCO are the same 80, without reading the 450 MB training file
        return self.train_set.category_ids if self.train_set is not None else None

    def setup(self, stage: Optional[str] = None) -> None:
        if not Path(self.root).is_dir():
            raise FileNotFoundError(
                f"COCO root {self.root} not found; pass --data.root with train2017/, val2017/ and annotations/"
            )
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = COCODetection(
                self._path(self.train_images),
                self._path(self.train_annotations),
                train=True,
                masks=self.masks,
                flip_prob=self.flip_prob,
            )
        if self.val_set is None:
            self.val_set = COCODetection(
                self._path(self.val_images),
                self._path(self.val_annotations),
                category_ids=self._category_ids(),
                train=False,
                masks=self.masks,
            )

    @property
    def num_classes(self) -> Optional[int]:
        """Object categories K (labels 1..K; the detectors add the background)."""
        found = self.train_set or self.val_set
        return len(found.category_ids) if found is not None else None

    @property
    def class_names(self) -> List[str]:
        found = self.train_set or self.val_set
        return [found.coco.cats[c]["name"] for c in found.category_ids] if found is not None else []

    def _built(self, data: Optional[COCODetection]) -> COCODetection:
        if data is None:
            raise RuntimeError("the data module has no such split: call setup() (the Trainer does) first")
        return data

    def train_dataloader(self) -> DataLoader:
        data = self._built(self.train_set)
        # a RandomSampler, so that Lightning knows to shard it shuffled under DDP
        sampler = RandomSampler(data)
        if self.aspect_ratio_group_factor >= 0:
            groups = aspect_ratio_groups(
                [data.aspect_ratio(i) for i in range(len(data))], self.aspect_ratio_group_factor
            )
            batches: BatchSampler = GroupedBatchSampler(sampler, groups, self.batch_size)
        else:
            batches = BatchSampler(sampler, self.batch_size, drop_last=True)
        return DataLoader(
            data,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        val_set = self._built(self.val_set)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Lightning's own sharding pads ranks to equal length with repeated images, which COCO
            # evaluation would count twice; a DistributedSampler of our own is left alone
            sampler: Sampler = UnrepeatedDistributedSampler(
                val_set, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        else:
            sampler = SequentialSampler(val_set)
        return DataLoader(
            val_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The validation images (with their ids, so predictions come out in COCO's results format)."""
        return self.val_dataloader()
