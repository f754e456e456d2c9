"""A small real-pixel COCO-format detection set made from scikit-learn's handwritten digits.

Each canvas holds a few digits pasted at random sizes and positions (never overlapping), on a
dark, lightly noisy background; each digit gets its box (tight around its pixels), its pixel mask
(compressed RLE) and its class. Train canvases use the digits classification demo's training
digits and validation canvases its held-out digits, so a backbone trained by the classification
demo has never seen a validation digit. Written once per setting (fixed seed) as
``{train,val}/*.png`` plus ``annotations/instances_{train,val}.json`` and read back by
[`COCODataModule`][csa_lightning.data.COCODataModule] like COCO itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..checks import require, require_positive
from .coco import COCODataModule
from .digits import digits_split, rasterize_digit

__all__ = ["write_digits_coco", "DigitsCOCODataModule"]


def _paste_canvas(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    canvas: int,
    per_image: Tuple[int, int],
    size_range: Tuple[int, int],
) -> Tuple[np.ndarray, List[Dict]]:

    image = rng.uniform(0, 24, size=(canvas, canvas)).astype(np.float32)  # dark sensor-like noise
    placed: List[Tuple[int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
        for _attempt in range(50):
            side = int(rng.integers(size_range[0], size_range[1] + 1))
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            if all(
                x + side + 2 <= px or px + ps + 2 <= x or y + side + 2 <= py or py + ps + 2 <= y
                for px, py, ps in placed
            ):
                break
        else:
            continue  # the canvas is full
        k = int(rng.integers(len(digits)))
        patch = np.asarray(rasterize_digit(digits[k], side), dtype=np.float32)
        region = image[y : y + side, x : x + side]
        np.maximum(region, patch, out=region)
        mask = np.zeros((canvas, canvas), dtype=np.uint8)
        mask[y : y + side, x : x + side] = patch > 0.3 * 255
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        placed.append((x, y, side))
        objects.append(
            {"digit": int(labels[k]), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "mask": mask}
        )
    return np.clip(image, 0, 255).astype(np.uint8), objects


def write_digits_coco(
    root: str,
    canvas: int = 128,
    num_train: int = 600,
    num_val: int = 150,
    digits_per_image: Tuple[int, int] = (2, 5),
    digit_size: Tuple[int, int] = (20, 48),
    seed: int = 0,
) -> Path:
    """Write the data set under ``root`` once (later calls return at once); returns ``root``."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    root_path = Path(root)
    if (root_path / ".complete").exists():
        return root_path
    tmp = root_path.with_name(root_path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    x_train, x_val, y_train, y_val = digits_split()
    rng = np.random.default_rng(seed)
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    (tmp / "annotations").mkdir(parents=True)
    for split, digits, labels, count in (("train", x_train, y_train, num_train), ("val", x_val, y_val, num_val)):
        (tmp / split).mkdir()
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        for image_id in range(1, count + 1):
            pixels, objects = _paste_canvas(rng, digits, labels, canvas, digits_per_image, digit_size)
            name = f"{image_id:06d}.png"
            Image.fromarray(pixels, mode="L").convert("RGB").save(tmp / split / name)
            images.append({"id": image_id, "file_name": name, "width": canvas, "height": canvas})
            for obj in objects:
                rle = mask_utils.encode(np.asfortranarray(obj["mask"]))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": obj["digit"] + 1,
                        "bbox": obj["bbox"],
                        "area": float(obj["mask"].sum()),
                        "iscrowd": 0,
                        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                    }
                )
        with open(tmp / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    (tmp / ".complete").write_text(
        f"canvas={canvas} num_train={num_train} num_val={num_val} digits_per_image={digits_per_image} "
        f"digit_size={digit_size} seed={seed}\n"
    )
    shutil.rmtree(root_path, ignore_errors=True)
    tmp.rename(root_path)  # atomic: an interrupted write leaves no half data set behind
    return root_path


class DigitsCOCODataModule(COCODataModule):
    """[`COCODataModule`][csa_lightning.data.COCODataModule] over the digits detection set, written on first use.

    ``data_dir`` caches one folder per setting. No flips by default (they change a digit's class);
    every canvas has the same shape, so there is nothing to group by aspect ratio.
    """

    def __init__(
        self,
        data_dir: str = "data/digits_coco",
        canvas_size: int = 128,
        num_train: int = 600,
        num_val: int = 150,
        digits_per_image: Tuple[int, int] = (2, 5),
        digit_size: Tuple[int, int] = (20, 48),
        seed: int = 0,
        masks: bool = False,
        batch_size: int = 4,
        num_workers: int = 2,
        flip_prob: float = 0.0,
    ) -> None:
        require_positive("data.canvas_size", canvas_size, integer=True)
        require_positive("data.num_train", num_train, integer=True)
        require_positive("data.num_val", num_val, integer=True)
        for option, pair in (("data.digits_per_image", digits_per_image), ("data.digit_size", digit_size)):
            require(
                len(pair) == 2 and all(isinstance(v, int) and v > 0 for v in pair) and pair[0] <= pair[1],
                option, pair, "[low, high] with 0 < low <= high",
            )  # fmt: skip
        require(digit_size[1] <= canvas_size, "data.digit_size", digit_size, f"at most canvas_size ({canvas_size})")
        name = (
            f"digits_coco_{canvas_size}px_{num_train}_{num_val}_{digits_per_image[0]}-{digits_per_image[1]}_"
            f"{digit_size[0]}-{digit_size[1]}_seed{seed}"
        )
        super().__init__(
            root=str(Path(data_dir) / name),
            train_images="train",
            val_images="val",
            train_annotations="annotations/instances_train.json",
            val_annotations="annotations/instances_val.json",
            masks=masks,
            batch_size=batch_size,
            num_workers=num_workers,
            flip_prob=flip_prob,
            aspect_ratio_group_factor=-1,
        )
        self.save_hyperparameters()
        self.write_options: Dict[str, Any] = dict(
            canvas=canvas_size,
            num_train=num_train,
            num_val=num_val,
            digits_per_image=tuple(digits_per_image),
            digit_size=tuple(digit_size),
            seed=seed,
        )

    def prepare_data(self) -> None:
        write_digits_coco(self.root, **self.write_options)

    def setup(self, stage: Optional[str] = None) -> None:
        # prepare_data runs on one process per node; a data module used outside a Trainer gets it here
        write_digits_coco(self.root, **self.write_options)
        super().setup(stage)
