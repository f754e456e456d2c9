#!/usr/bin/env python
"""Images per second of the three classification loaders (FFCV, LitData, ImageFolder), same files.

    python benchmarks/loader_throughput.py [--data photos,digits] [--photos 2000] [--workers 2] [--epochs 2]
        [--out runs/bench/loader.json]

Two sets of JPEG files, each as an ImageFolder tree, a .beton (every image stored as JPEG,
``compress_probability`` 1, ``max_resolution`` 512: no file is larger, so none is re-scaled) and
LitData chunks (the files' own bytes):

- **photos**: ImageNet-like JPEGs cut from the colour photos scikit-image ships (astronaut, chelsea,
  coffee, rocket, hubble_deep_field, immunohistochemistry, retina, the stereo motorcycle pair) and
  scikit-learn's two sample images: random scales, crops and flips to ImageNet's typical 500 x 375
  (a quarter portrait, 375 x 500), saved at quality 90. They measure decode cost, not content
  diversity. Needs scikit-image (``pip install scikit-image``).
- **digits**: scikit-learn's digits as 256 x 256 grey JPEGs (quality 90), the earlier benchmark's.

Every loader decodes, random-resized-crops to 224 x 224, flips and normalises, with the same
workers and batch size, in one process, one after the other. The first epoch of each is a warm-up
(numba compiles ffcv's pipeline, workers start) and is not counted; the figure is the median
images/s over the timed epochs, and per core (divided by the workers). Beside them, the
decode-only rate of the same files on one core: PIL (``Image.open`` + ``convert("RGB")``) and
OpenCV's ``imdecode`` (libjpeg-turbo, as ffcv's decoder) where cv2 is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

PHOTO_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "stereo_motorcycle")  # fmt: skip


def _photos() -> list:
    """The colour photos scikit-image and scikit-learn ship, as uint8 RGB arrays."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in PHOTO_SOURCES:
        image = getattr(skimage.data, name)()
        photos += list(image[:2]) if name == "stereo_motorcycle" else [image]
    photos += list(load_sample_images().images)
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def write_photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 500 x 375 (a quarter 375 x 500): a random scale (the short side 1 to 1.6
    times the crop's) and crop of one of the photos, flipped half the time, quality 90; one class
    folder per source photo."""
    from PIL import Image

    done = root / ".complete"
    if done.exists() and len(list(root.glob("*/*.jpg"))) == count:
        return root
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in _photos()]
    for i in range(count):
        source = int(rng.integers(len(photos)))
        photo = photos[source]
        width, height = (375, 500) if rng.random() < 0.25 else (500, 375)
        scale = max(width / photo.width, height / photo.height) * float(rng.uniform(1.0, 1.6))
        resized = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))),
                               Image.BILINEAR)  # fmt: skip
        left = int(rng.integers(resized.width - width + 1))
        top = int(rng.integers(resized.height - height + 1))
        crop = resized.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / f"{source:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{i:05d}.jpg", quality=90)
    done.write_text("ok\n")
    return root


def write_digit_folder(root: Path, size: int = 256) -> Path:
    from PIL import Image

    from csa_lightning.data.digits import digits_split

    done = root / ".complete"
    if done.exists():
        return root
    x_train, _, y_train, _ = digits_split()
    for i, (image, label) in enumerate(zip(x_train, y_train)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray((image * (255 / 16)).astype("uint8"), mode="L").resize((size, size), Image.BILINEAR)
        grey.convert("RGB").save(folder / f"{i:04d}.jpg", quality=90)
    done.write_text("ok\n")
    return root


def images_per_second(loader, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch[1])
        rates.append(seen / (time.perf_counter() - start))
    return rates


def decode_rates(files: list) -> dict:
    """Files decoded per second on one core (this process), without any transform."""
    from PIL import Image

    rates = {}
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB").load()
    rates["PIL decode, 1 core"] = len(files) / (time.perf_counter() - start)
    try:
        import cv2
    except ImportError:
        return rates
    cv2.setNumThreads(1)
    data = [np.frombuffer(Path(p).read_bytes(), dtype=np.uint8) for p in files]
    start = time.perf_counter()
    for buffer in data:
        cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    rates["OpenCV imdecode (libjpeg-turbo), 1 core"] = len(files) / (time.perf_counter() - start)
    return rates


def measure(name: str, tree: Path, data_dir: Path, workers: int, batch: int, epochs: int) -> dict:
    from csa_lightning.data import FFCVDataModule, ImageFolderDataModule, LitDataModule
    from csa_lightning.data.write_beton import write_beton
    from csa_lightning.data.write_litdata import write_split

    beton = data_dir / f"{name}.beton"
    if not beton.exists():
        write_beton(str(tree), str(beton), max_resolution=512, jpeg_quality=90, compress_probability=1.0)
    chunks = data_dir / f"{name}_litdata"
    write_split(tree, str(chunks), chunk_bytes="64MB", workers=workers)
    files = sorted(str(p) for p in tree.glob("*/*.jpg"))
    common = dict(train_path=None, val_path=None, batch_size=batch, num_workers=workers, resolution=224)
    modules = {
        "ffcv": FFCVDataModule(**{**common, "train_path": str(beton), "val_path": str(beton)}),
        "LitData": LitDataModule(**{**common, "train_path": str(chunks), "val_path": str(chunks)}),
        "torchvision ImageFolder": ImageFolderDataModule(**{**common, "train_path": str(tree), "val_path": str(tree)}),
    }
    rates = {}
    for loader_name, module in modules.items():
        module.setup("fit")
        rates[loader_name] = statistics.median(images_per_second(module.train_dataloader(), 1 + epochs)[1:])
    sizes = [os.path.getsize(p) for p in files]
    return {"files": len(files), "mean_kb": sum(sizes) / len(sizes) / 1024, "loaders": rates,
            "decode": decode_rates(files)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="photos,digits", help="photos, digits, or both")
    parser.add_argument("--data-dir", default="data/loader_benchmark")
    parser.add_argument("--photos", type=int, default=2000, help="how many photo-like JPEGs")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (after one warm-up)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    sets = {}
    for name in [s.strip() for s in args.data.split(",") if s.strip()]:
        if name == "photos":
            folder = write_photo_folder(data_dir / "photos_500" / "train", args.photos)
        elif name == "digits":
            folder = write_digit_folder(data_dir / "digits_256" / "train")
        else:
            raise SystemExit(f"error: --data takes photos and/or digits, got {name!r}")
        sets[name] = measure(name, folder, data_dir, args.workers, args.batch_size, args.epochs)

    print(f"| files | loader | images/s (224 px, batch {args.batch_size}, {args.workers} workers) | per core |")
    print("|---|---|---:|---:|")
    for name, result in sets.items():
        label = f"{name} ({result['files']} JPEGs, {result['mean_kb']:.0f} KB on average)"
        for loader, rate in result["loaders"].items():
            print(f"| {label} | {loader} | {rate:,.0f} | {rate / args.workers:,.0f} |")
        for decoder, rate in result["decode"].items():
            print(f"| {label} | {decoder} (no transform) | {rate:,.0f} | {rate:,.0f} |")
    print(f"\n({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"sets": sets, "workers": args.workers, "batch_size": args.batch_size,
                                              "epochs": args.epochs}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
