#!/usr/bin/env python
"""Images per second of the FFCV training loader against ImageFolderDataModule's, same JPEGs.

    python benchmarks/loader_throughput.py [--workers 2] [--epochs 3] [--out runs/bench/loader.json]

Both loaders read the same pictures: scikit-learn's digits written once as 256 x 256 JPEG files
(quality 90) in an ImageFolder tree, and that tree written to a .beton with every image stored as
JPEG (compress_probability 1). Both decode, random-resized-crop to 224 x 224, flip and normalise,
with the same number of workers and batch size, in one process, one after the other. The first
epoch of each is a warm-up (numba compiles ffcv's pipeline, torch starts its workers) and is not
counted; the figure is the median images/s over the remaining epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def write_jpeg_folder(root: Path, size: int = 256) -> Path:
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
        for _images, labels in loader:
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/loader_benchmark")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from csa_lightning.data import FFCVDataModule, ImageFolderDataModule
    from csa_lightning.data.write_beton import write_beton

    data_dir = Path(args.data_dir)
    folder = write_jpeg_folder(data_dir / "jpeg_256")
    beton = data_dir / "jpeg_256.beton"
    if not beton.exists():
        write_beton(str(folder), str(beton), max_resolution=256, jpeg_quality=90, compress_probability=1.0)

    common = dict(batch_size=args.batch_size, num_workers=args.workers, resolution=224)
    ffcv_data = FFCVDataModule(train_path=str(beton), val_path=str(beton), **common)
    torch_data = ImageFolderDataModule(train_path=str(folder), val_path=str(folder), **common)
    torch_data.setup("fit")
    results = {}
    for name, loader in (
        ("ffcv", ffcv_data.train_dataloader()),
        ("torchvision ImageFolder", torch_data.train_dataloader()),
    ):
        rates = images_per_second(loader, 1 + args.epochs)[1:]
        results[name] = statistics.median(rates)
    ratio = results["ffcv"] / results["torchvision ImageFolder"]
    print(f"| loader | images/s (224 px, batch {args.batch_size}, {args.workers} workers) |")
    print("|---|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} |")
    print(
        f"\nffcv / ImageFolder: {ratio:.2f}x  ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__})"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "images_per_sec": results,
                    "ratio": ratio,
                    "workers": args.workers,
                    "batch_size": args.batch_size,
                    "epochs": args.epochs,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
