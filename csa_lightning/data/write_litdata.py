"""Write an ImageFolder tree (ImageNet's layout) as LitData chunks, one chunk folder per split.

    python -m csa_lightning.data.write_litdata IMAGES OUT [--splits train,val] [--chunk-bytes 64MB] [--workers N]
        [--max-side PIXELS [--quality 90]]

``IMAGES/<split>/<class>/<image>`` -> ``OUT/<split>/`` (LitData's chunks and ``index.json``, plus
``classes.json``: the class names in label order and the item count). Each item holds the file's
original bytes (JPEGs are not re-encoded), its label, its index and its path; with ``--max-side``, an
image whose longer side is above it is stored re-encoded as a JPEG of that longer side (as FFCV's
``max_resolution`` does: fewer bytes and pixels to decode, at the cost of a second JPEG encoding;
smaller images keep their bytes). Items are written
in a stratified order ([`stratified_order`][csa_lightning.data.stratified_order]), so every
prefix of an unshuffled stream (the validation order) samples every class.

Restartable: LitData's own checkpoints let a rerun after a kill continue where the workers were;
``classes.json`` is written last, and the data module refuses a folder without it, so an
unfinished conversion never looks finished. ``OUT`` is a local or shared folder: copy it to an
object store afterwards (``aws s3 sync OUT s3://bucket/prefix``) and stream from there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import ToolParser, UsageError, command, first_line, list_option

__all__ = ["write_split", "shrink_to_max_side", "main"]


def shrink_to_max_side(data: bytes, max_side: int, quality: int = 90, name: Optional[str] = None) -> bytes:
    """An image file's bytes, or, when its longer side is above ``max_side``, the image (as
    ``open_rgb`` reads it) resized to that longer side (PIL's Lanczos) and encoded as a JPEG of
    ``quality`` (4:2:0)."""
    import io

    from PIL import Image

    from .image_io import open_rgb

    with Image.open(io.BytesIO(data)) as header:
        width, height = header.size
    if max(width, height) <= max_side:
        return data
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    buffer = io.BytesIO()
    open_rgb(data, name=name).resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class _Item:
    """What each optimize worker turns one input into (picklable)."""

    def __init__(self, root: str, max_side: Optional[int] = None, quality: int = 90) -> None:
        self.root, self.max_side, self.quality = root, max_side, quality

    def __call__(self, entry):
        index, path, label = entry
        data = Path(path).read_bytes()
        if self.max_side is not None:
            data = shrink_to_max_side(data, self.max_side, self.quality, name=path)
        return {"index": index, "image": data, "label": label, "path": os.path.relpath(path, self.root)}


def write_split(folder: Path, out: str, chunk_bytes: str = "64MB", workers: Optional[int] = None,
                classes: Optional[List[str]] = None, max_side: Optional[int] = None,
                quality: int = 90) -> dict:  # fmt: skip
    """One split; returns its classes.json. ``classes``: the training split's (every split is
    labelled by them, as the ImageFolder module does). ``max_side``: re-encode larger images as
    JPEGs of that longer side and ``quality`` (`shrink_to_max_side`)."""
    import litdata

    from .classification_data import stratified_order
    from .image_io import image_tree, unidentified_images

    marker = Path(out) / "classes.json"
    if marker.is_file():
        print(f"{out}: already written ({json.loads(marker.read_text())['count']} items)", flush=True)
        return json.loads(marker.read_text())
    tree = image_tree(folder)
    if classes is not None and tree.classes != classes:
        only_here = sorted(set(tree.classes) - set(classes)) or "none"
        missing = sorted(set(classes) - set(tree.classes)) or "none"
        raise ValueError(
            f"{folder} has other classes than the training folder (only here: {only_here}, missing: {missing})"
        )
    if not tree.samples:
        raise ValueError(f"{folder} holds no images (expected {folder}/<class>/<image files>)")
    bad = unidentified_images(path for path, _ in tree.samples)
    if bad:
        raise ValueError(
            f"{len(bad)} file(s) under {folder} are not images PIL can read, e.g. {bad[0]}; fix or remove them and "
            "convert again"
        )
    order = stratified_order(tree.targets)
    entries = [(int(i), tree.samples[i][0], int(tree.samples[i][1])) for i in order]
    # keep_data_ordered: each worker writes a contiguous slice in order, so the stream's order is
    # the stratified one; use_checkpoint: a rerun after a kill continues where each worker was
    # LitData sets the process's multiprocessing start method (to spawn, with force): put it back, so
    # that what runs in this process afterwards (ffcv's writer, torch's loaders) starts as before
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        mode = "overwrite" if _has_partial(out) else None
        litdata.optimize(fn=_Item(str(folder), max_side, quality), inputs=entries, output_dir=out,
                         chunk_bytes=chunk_bytes, num_workers=workers or min(8, os.cpu_count() or 1),
                         keep_data_ordered=True, use_checkpoint=True, mode=mode, verbose=False)  # fmt: skip
    finally:
        multiprocessing.set_start_method(previous, force=True)
    about = {"classes": tree.classes, "count": len(entries), "source": str(folder)}
    if max_side is not None:
        about["max_side"], about["quality"] = max_side, quality
    tmp = marker.with_name(".classes.json.tmp")
    tmp.write_text(json.dumps(about, indent=1))
    os.replace(tmp, marker)
    print(f"{out}: {len(entries)} items, {len(tree.classes)} classes", flush=True)
    return about


def _chunk_bytes(text: str) -> str:
    """LitData's chunk size: a positive number of bytes, or one with a unit (64MB, 1.5GB)."""
    import argparse
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive size such as 64MB or 1000000, got {text!r}")
    return text.strip().upper().replace(" ", "")


def _has_partial(out: str) -> bool:
    """An index.json without our classes.json: an earlier run of optimize that did not finish."""
    return (Path(out) / "index.json").exists()


@command
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ToolParser(prog="python -m csa_lightning.data.write_litdata", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="an ImageFolder root holding one folder per split")
    parser.add_argument("out", help="output root folder (copy it to an object store afterwards)")
    list_option(parser, "--splits", default=["train", "val"], help="the split folders to convert (default: train,val)")
    parser.add_argument("--chunk-bytes", default="64MB", type=_chunk_bytes,
                        help="target size of each chunk file: bytes, or a number with KB, MB or GB")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: up to 8)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="store images with a longer side above this many pixels re-encoded as JPEGs of that side "
                        "(default: every file's own bytes)")  # fmt: skip
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (1-100)")
    args = parser.parse_args(argv)
    if args.max_side is not None and args.max_side < 1:
        raise UsageError(f"--max-side must be a positive number of pixels, got {args.max_side}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    images = Path(args.images)
    if "://" in args.out:
        raise UsageError(
            f"OUT must be a local or shared folder, got {args.out}; convert there, then copy it to the "
            "object store (e.g. aws s3 sync OUT s3://bucket/prefix)"
        )
    splits = args.splits
    missing = [s for s in splits if not (images / s).is_dir()]
    if missing:
        raise UsageError(
            f"no split folder {images / missing[0]} (expected {images}/<split>/<class>/<images>); "
            "check IMAGES and --splits"
        )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {args.workers}")
    classes = None
    try:
        for split in splits:
            about = write_split(images / split, f"{args.out.rstrip('/')}/{split}", args.chunk_bytes, args.workers,
                                classes, args.max_side, args.quality)  # fmt: skip
            classes = classes or about["classes"]
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(first_line(err)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
