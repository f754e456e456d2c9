#!/usr/bin/env python
"""Images per second of the classification loaders (FFCV; ImageFolder and LitData, each with the
uint8 and the PIL pipeline), the same files, side by side in one run, with the decoders' own rates.

    python benchmarks/loader_throughput.py [--data photos,hires,digits] [--workers 2] [--epochs 3]
        [--out benchmarks/results/loader_throughput.json] [--table benchmarks/results/loader_throughput.md]
        [--gpu-rate IMAGES_PER_S] [--render JSON]

Three sets of JPEG files, each as an ImageFolder tree, a .beton (every image stored as JPEG,
``compress_probability`` 1, ``max_resolution`` above every file's size, so none is re-scaled) and
LitData chunks (the files' own bytes):

- **photos**: ImageNet-like JPEGs cut from the colour photos scikit-image ships (astronaut, chelsea,
  coffee, rocket, hubble_deep_field, immunohistochemistry, retina, the stereo motorcycle pair) and
  scikit-learn's two sample images: random scales, crops and flips to ImageNet's typical 500 x 375
  (a quarter portrait, 375 x 500), saved at quality 90. They measure decode cost, not content
  diversity. Needs scikit-image (``pip install -e '.[bench]'``).
- **hires**: 800 x 600 JPEGs (a quarter portrait) cut at their native scale from the two sample
  photos larger than that (retina, 1411 x 1411; the Hubble deep field, 872 x 1000), quality 90:
  camera-like sizes, where DCT scaling applies. Also measured: the uint8 pipeline without DCT
  scaling, and LitData chunks written with ``--max-side 500`` (re-encoded, FFCV's
  ``max_resolution``).
- **digits**: scikit-learn's digits as 256 x 256 grey JPEGs (quality 90).

Every loader decodes, random-resized-crops to 224 x 224 and flips, with the same workers and batch
size, in one process, one after the other, and is timed up to the batch it hands to the device:
FFCV's CPU pipeline normalises to float in its threads; the uint8 pipeline's batches are uint8, the
device normalises them (a GPU in microseconds). On a machine without a GPU the device is the CPU:
the row "normalised on this CPU" times that too, in the main process beside the workers. Where
CUDA is available, the rows "nvjpeg (decoded on the GPU)" time ``data.pipeline: nvjpeg``: the
workers read the files, the main process has the GPU decode, crop and normalise each batch. The
first epoch of each is a warm-up (numba compiles ffcv's pipeline, workers start) and is not
counted; the figure is the median images/s over the timed epochs with their range, and per core
(divided by the workers). Beside them, decode-only rates of the same files on one core, repeated:
PIL (``Image.open`` + ``convert("RGB")``), simplejpeg (the uint8 pipeline's decoder), ``torchvision.io.decode_jpeg`` and
OpenCV's ``imdecode`` (libjpeg-turbo, as ffcv's decoder). PyTurboJPEG 2 needs libjpeg-turbo 3,
which Debian 12 does not have, and is not measured.
"""

from __future__ import annotations

import gc
import io
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
    return _write_cuts(root, count, seed, _photos(), (500, 375), zoom=(1.0, 1.6))


def write_hires_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 800 x 600 (a quarter 600 x 800) cut at native scale from the sample photos
    larger than that, flipped half the time, quality 90; one class folder per source photo."""
    return _write_cuts(root, count, seed, [p for p in _photos() if min(p.shape[:2]) >= 800], (800, 600))


def _write_cuts(root: Path, count: int, seed: int, sources: list, size: tuple, zoom: tuple | None = None) -> Path:
    """``count`` crops of ``size`` (width, height; a quarter turned to portrait) from random
    ``sources``, each first scaled by a random factor in ``zoom`` over the least that fits the crop
    (None: at native scale), flipped half the time, saved as quality-90 JPEGs in one class folder
    per source; kept when a complete folder of ``count`` files is there."""
    from PIL import Image

    done = root / ".complete"
    if done.exists() and len(list(root.glob("*/*.jpg"))) == count:
        return root
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in sources]
    for i in range(count):
        source = int(rng.integers(len(photos)))
        photo = photos[source]
        width, height = size[::-1] if rng.random() < 0.25 else size
        if zoom is not None:
            scale = max(width / photo.width, height / photo.height) * float(rng.uniform(*zoom))
            photo = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))),
                                 Image.BILINEAR)  # fmt: skip
        left = int(rng.integers(photo.width - width + 1))
        top = int(rng.integers(photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height))
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


def images_per_second(module, loader, epochs: int, on_device: bool) -> list[float]:
    """Images/s of ``epochs`` passes; ``on_device``: each batch also goes through the data module's
    ``on_before_batch_transfer`` and ``on_after_batch_transfer`` (nvJPEG's decoding on the GPU; the
    uint8 pipeline's normalisation, here on this CPU)."""
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            if on_device:
                batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
            seen += len(batch[0])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _timed(module, epochs: int, on_device: bool = False) -> list[float]:
    module.setup("fit")
    return images_per_second(module, module.train_dataloader(), epochs, on_device)


def summary(rates: list[float]) -> dict:
    """The median of repeated rates and their range."""
    return {"median": statistics.median(rates), "low": min(rates), "high": max(rates), "runs": len(rates)}


def decode_rates(files: list, repeats: int) -> dict:
    """Files decoded per second on one core (this process), without any transform, ``repeats`` passes."""
    import simplejpeg
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    torch.set_num_threads(1)
    data = [Path(p).read_bytes() for p in files]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    decoders = {
        "PIL": (lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")), data),
        "simplejpeg (libjpeg-turbo)": (lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"), data),
        "torchvision.io.decode_jpeg": (lambda t: decode_jpeg(t, mode=ImageReadMode.RGB), tensors),
    }
    try:
        import cv2

        cv2.setNumThreads(1)
        arrays = [np.frombuffer(b, dtype=np.uint8) for b in data]
        decoders["OpenCV imdecode (libjpeg-turbo)"] = (lambda a: cv2.imdecode(a, cv2.IMREAD_COLOR), arrays)
    except ImportError:
        pass
    rates: dict = {name: [] for name in decoders}
    for _ in range(repeats):  # interleaved: a slow moment of the machine hits every decoder
        for name, (decode, inputs) in decoders.items():
            start = time.perf_counter()
            for item in inputs:
                decode(item)
            rates[name].append(len(inputs) / (time.perf_counter() - start))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return {name: summary(values) for name, values in rates.items()}


def pixel_effects(files: list, shrunk: Path | None = None, crops: int = 4) -> dict:
    """What the uint8 pipeline's options do to pixels, against the same crop decoded at full size
    (PSNR in dB over ``crops`` seeded training crops per file and every file's validation crop):
    the uint8 pipeline against the PIL one (no DCT scaling), DCT scaling against full decoding, and
    (with ``shrunk``, chunks written with --max-side) the re-encoded file's validation crop against
    the original's."""
    from torchvision import transforms as T

    from csa_lightning.data.image_io import open_rgb
    from csa_lightning.data.uint8_pipeline import (
        RandomResizedCropUint8,
        ResizeCenterCropUint8,
        _resize,
        decode_uint8,
        psnr,
    )

    def pil_crop(transform, data):
        return torch.from_numpy(np.array(transform(open_rgb(data)))).permute(2, 0, 1)

    train, plain = RandomResizedCropUint8(224, flip=False), RandomResizedCropUint8(224, flip=False, dct_scaling=False)
    val, val_full = ResizeCenterCropUint8(224, 256), ResizeCenterCropUint8(224, 256, dct_scaling=False)
    pil_train, pil_val = T.RandomResizedCrop(224), T.Compose([T.Resize(256), T.CenterCrop(224)])
    found: dict = {"uint8 vs PIL, training": [], "uint8 vs PIL, validation": [], "DCT scaling, training": [],
                   "DCT scaling, validation": [], "max abs difference, uint8 vs PIL": 0}  # fmt: skip
    scaled = 0
    for index, path in enumerate(files):
        data = Path(path).read_bytes()
        full = decode_uint8(data)
        for crop in range(crops):
            torch.manual_seed(index * crops + crop)
            top, left, height, width, factor = train.draw(tuple(full.shape[1:]))
            if factor > 1:
                scaled += 1
                torch.manual_seed(index * crops + crop)
                reference = _resize(full[:, top : top + height, left : left + width], [224, 224])
                found["DCT scaling, training"].append(psnr(train(data), reference))
            torch.manual_seed(index * crops + crop)
            ours = plain(data)
            torch.manual_seed(index * crops + crop)
            theirs = pil_crop(pil_train, data)
            found["uint8 vs PIL, training"].append(psnr(ours, theirs))
            found["max abs difference, uint8 vs PIL"] = max(found["max abs difference, uint8 vs PIL"],
                                                            int((ours.int() - theirs.int()).abs().max()))  # fmt: skip
        full_val = val_full(data)
        found["uint8 vs PIL, validation"].append(psnr(full_val, pil_crop(pil_val, data)))
        reduced = val(data)
        if not torch.equal(reduced, full_val):
            found["DCT scaling, validation"].append(psnr(reduced, full_val))
    if shrunk is not None:
        import litdata

        stream = litdata.StreamingDataset(str(shrunk))
        originals = {os.path.relpath(p, Path(files[0]).parent.parent): p for p in files}
        found["--max-side 500 re-encoded, validation"] = [
            psnr(val_full(bytes(item["image"])), val_full(originals[item["path"]]))
            for item in stream
            if item["path"] in originals
        ]
    effects = {}
    for name, values in found.items():
        if isinstance(values, list):
            finite = [v for v in values if np.isfinite(v)]
            effects[name] = {"crops": len(values), "equal": len(values) - len(finite),
                             "min_db": min(finite) if finite else None,
                             "median_db": statistics.median(finite) if finite else None}  # fmt: skip
        else:
            effects[name] = values
    effects["DCT scaling applied, training crops"] = f"{scaled} of {len(files) * crops}"
    return effects


def measure(name: str, tree: Path, data_dir: Path, workers: int, batch: int, epochs: int) -> dict:
    from csa_lightning.data import FFCVDataModule, ImageFolderDataModule, LitDataModule
    from csa_lightning.data.write_beton import write_beton
    from csa_lightning.data.write_litdata import write_split

    files = sorted(str(p) for p in tree.glob("*/*.jpg"))
    beton = data_dir / f"{name}.beton"
    if not beton.exists():
        write_beton(str(tree), str(beton), max_resolution=1024, jpeg_quality=90, compress_probability=1.0)
    chunks = data_dir / f"{name}_litdata"
    write_split(tree, str(chunks), chunk_bytes="64MB", workers=workers)
    common = dict(train_path=None, val_path=None, batch_size=batch, num_workers=workers, resolution=224)
    folder, stream = (
        {"train_path": str(tree), "val_path": str(tree)},
        {"train_path": str(chunks), "val_path": str(chunks)},
    )
    modules = {
        "FFCV": lambda: FFCVDataModule(**{**common, "train_path": str(beton), "val_path": str(beton)}),
        "ImageFolder, uint8": lambda: ImageFolderDataModule(**{**common, **folder}),
        "ImageFolder, PIL": lambda: ImageFolderDataModule(**{**common, **folder, "pipeline": "pil"}),
        "LitData, uint8": lambda: LitDataModule(**{**common, **stream}),
        "LitData, PIL": lambda: LitDataModule(**{**common, **stream, "pipeline": "pil"}),
    }
    if name == "hires":
        no_dct = {**common, **folder, "dct_scaling": False}
        modules["ImageFolder, uint8, no DCT scaling"] = lambda: ImageFolderDataModule(**no_dct)
        shrunk = data_dir / f"{name}_litdata_max_side_500"
        write_split(tree, str(shrunk), chunk_bytes="64MB", workers=workers, max_side=500)
        modules["LitData --max-side 500, uint8"] = lambda: LitDataModule(**{**common, "train_path": str(shrunk),
                                                                            "val_path": str(shrunk)})  # fmt: skip
    if name == "photos":
        modules["ImageFolder, uint8, normalised on this CPU"] = lambda: ImageFolderDataModule(**{**common, **folder})
    if torch.cuda.is_available():  # data.pipeline nvjpeg: the workers read, the GPU decodes
        modules["ImageFolder, nvjpeg (decoded on the GPU)"] = lambda: ImageFolderDataModule(
            **{**common, **folder, "pipeline": "nvjpeg"}
        )
        modules["LitData, nvjpeg (decoded on the GPU)"] = lambda: LitDataModule(
            **{**common, **stream, "pipeline": "nvjpeg"}
        )
    rates = {}
    for loader_name, build in modules.items():
        on_device = "on this CPU" in loader_name or "on the GPU" in loader_name
        rates[loader_name] = summary(_timed(build(), 1 + epochs, on_device=on_device)[1:])
        gc.collect()  # this loader's workers end here, not in the next loader's forked workers
        print(f"  {name}: {loader_name}: {rates[loader_name]['median']:,.0f} images/s", flush=True)
    sizes = [os.path.getsize(p) for p in files]
    shrunk = data_dir / f"{name}_litdata_max_side_500" if name == "hires" else None
    return {"files": len(files), "mean_kb": sum(sizes) / len(sizes) / 1024, "loaders": rates,
            "decode": decode_rates(files[:600], repeats=max(3, epochs)), "size": _image_size(files[0]),
            "pixels": pixel_effects(files[:200], shrunk) if name != "digits" else None}  # fmt: skip


def _image_size(path: str) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.width} x {image.height}"


def _range(entry: dict, scale: float = 1.0) -> str:
    return f"{entry['median'] / scale:,.0f} ({entry['low'] / scale:,.0f}-{entry['high'] / scale:,.0f})"


def table(result: dict, gpu_rate: float | None = None) -> str:
    """The Markdown table docs/data-loading.md includes: one row per set and loader or decoder;
    with ``gpu_rate`` (default: the one the result records), the cores each would need to feed that
    many images per second."""
    gpu_rate = gpu_rate or result.get("gpu_rate")
    workers, batch = result["workers"], result["batch_size"]
    feed = f" cores for {gpu_rate:,.0f}/s |" if gpu_rate else ""
    lines = [
        f"| files | loader | images/s (224 px, batch {batch}, {workers} workers) | per core | per core, x FFCV |{feed}",
        "|---|---|---:|---:|---:|" + ("---:|" if gpu_rate else ""),
    ]
    for name, entry in result["sets"].items():
        label = f"{name} ({entry['files']} JPEGs, {entry['size']}, {entry['mean_kb']:.0f} KB on average)"
        ffcv = entry["loaders"].get("FFCV", {}).get("median")
        for loader, rate in entry["loaders"].items():
            versus = f"{rate['median'] / ffcv:.2f}" if ffcv else "-"
            cores = f" {gpu_rate / (rate['median'] / workers):.0f} |" if gpu_rate else ""
            lines.append(f"| {label} | {loader} | {_range(rate)} | {_range(rate, workers)} | {versus} |{cores}")
        for decoder, rate in entry["decode"].items():
            cores = " |" if gpu_rate else ""
            lines.append(f"| {label} | decode only: {decoder}, 1 core | {_range(rate)} | {_range(rate)} | |{cores}")
    lines.append("")
    lines.append(f"Median (lowest-highest) of {result['epochs']} timed epochs after a warm-up for each loader, of "
                 f"{result['decode_repeats']} passes for each decoder; {result['machine']}.")  # fmt: skip
    lines += ["", "| files | pixels compared with the same crop decoded at full size | crops | equal | PSNR dB, lowest "
              "| median |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, entry in result["sets"].items():
        for what, found in (entry.get("pixels") or {}).items():
            if isinstance(found, dict):
                low, middle = (f"{found[k]:.1f}" if found[k] is not None else "-" for k in ("min_db", "median_db"))
                lines.append(f"| {name} | {what} | {found['crops']} | {found['equal']} | {low} | {middle} |")
            else:
                lines.append(f"| {name} | {what}: {found} | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from csa_lightning.errors import ToolParser

    parser = ToolParser(prog="benchmarks/loader_throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="photos,hires,digits", help="photos, hires, digits (a list)")
    parser.add_argument("--data-dir", default="data/loader_benchmark")
    parser.add_argument("--photos", type=int, default=2000, help="how many photo-like JPEGs")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hires", type=int, default=400, help="how many 800 x 600 JPEGs")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--table", default=None, help="also write the Markdown table here (the docs include it)")
    parser.add_argument("--gpu-rate", type=float, default=None,
                        help="images/s a GPU trains at: the table adds the cores each loader needs")  # fmt: skip
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="measure nothing: write the table of an earlier run's --out file")  # fmt: skip
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        if args.gpu_rate and args.gpu_rate != result.get("gpu_rate"):
            # the JSON records the rate its table shows (scripts/figures.py renders the table from it)
            result["gpu_rate"] = args.gpu_rate
            Path(args.render).write_text(json.dumps(result, indent=2) + "\n")
        text = table(result)
        print(text)
        if args.table:
            Path(args.table).write_text(text)
        return

    data_dir = Path(args.data_dir)
    sets = {}
    for name in [s.strip() for s in args.data.split(",") if s.strip()]:
        if name == "photos":
            folder = write_photo_folder(data_dir / "photos_500" / "train", args.photos)
        elif name == "hires":
            folder = write_hires_folder(data_dir / "hires_800" / "train", args.hires)
        elif name == "digits":
            folder = write_digit_folder(data_dir / "digits_256" / "train")
        else:
            raise SystemExit(f"error: --data takes photos, hires and digits, got {name!r}")
        sets[name] = measure(name, folder, data_dir, args.workers, args.batch_size, args.epochs)

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    result = {"sets": sets, "workers": args.workers, "batch_size": args.batch_size, "epochs": args.epochs,
              "decode_repeats": max(3, args.epochs), "machine": machine, "gpu_rate": args.gpu_rate}  # fmt: skip
    text = table(result)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(text)


if __name__ == "__main__":
    main()
