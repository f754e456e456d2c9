"""Write an FFCV ``.beton`` file from any ImageFolder tree (``root/<class>/<image>``).

    python -m csa_lightning.data.write_beton --root DIR --out FILE.beton \\
        --max-resolution 512 --jpeg-quality 90 --compress-probability 0.5

The knobs are ffcv-imagenet's: images are resized so their longer side is at most
``max-resolution``, and stored as JPEG (quality ``jpeg-quality``) with probability
``compress-probability``, raw otherwise. Whatever PIL opens (CMYK and greyscale JPEGs, PNGs with
alpha, palette images: ImageNet has all of them) is converted to RGB first. The file is written
next to its destination and renamed into place only when complete, so an interrupted run leaves
no partial ``.beton`` behind. Labels are the class indices torchvision's ImageFolder assigns
(sorted folder names).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from ..checks import remove_dead_leftovers, require, require_non_negative, require_positive, require_writable_file
from ..errors import ToolParser, UsageError, command, first_line, non_empty
from .image_io import image_tree, open_rgb

__all__ = ["write_beton", "RGBImageFolder"]


class RGBImageFolder:
    """Indexed (PIL RGB image, int label) pairs from an ImageFolder tree, for ffcv's writer.

    ffcv's writer waits forever for a worker that died, so an unreadable file must not raise in
    the worker: it is recorded in ``error_dir`` (one small file per failure, safe across worker
    processes), a blank image stands in for it, and `csa_lightning.data.write_beton.write_beton` refuses the result.
    """

    def __init__(self, root: str, error_dir: Optional[str] = None) -> None:
        self.folder = image_tree(root)  # paths only; decoding happens in __getitem__
        self.classes = self.folder.classes
        self.error_dir = error_dir

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        path, label = self.folder.samples[index]
        try:
            return open_rgb(path), label
        except Exception as err:
            if self.error_dir is None:
                raise
            (Path(self.error_dir) / f"{index}.txt").write_text(f"{path} ({type(err).__name__}: {err})")
            return Image.new("RGB", (8, 8)), label


def write_beton(
    root: str,
    out: str,
    max_resolution: int = 512,
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    num_workers: int = 0,
    chunk_size: int = 100,
) -> str:
    """Write ``root`` (an ImageFolder tree) to the FFCV file ``out``; return ``out``."""
    # checked before any work: a max_resolution of 0 made ffcv's writer hang
    require_positive("--max-resolution", max_resolution, integer=True)
    require(isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 100, "--jpeg-quality", jpeg_quality, "in 1..100")
    require(0 <= compress_probability <= 1, "--compress-probability", compress_probability, "in [0, 1]")
    require_non_negative("--num-workers", num_workers)
    require_positive("chunk_size", chunk_size, integer=True)
    if Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give the .beton file to write, e.g. {Path(out) / 'train.beton'}")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out_path = Path(out)
    remove_dead_leftovers(out_path)  # what a killed writer of the same file left behind
    partial = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    errors = out_path.with_name(f".{out_path.name}.errors-{os.getpid()}")
    dataset = RGBImageFolder(root, error_dir=str(errors))
    if len(dataset) == 0:
        raise ValueError(f"no images found under {root}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    errors.mkdir(exist_ok=True)
    fields = {
        "image": RGBImageField(
            write_mode="proportion",
            max_resolution=max_resolution,
            compress_probability=compress_probability,
            jpeg_quality=jpeg_quality,
        ),
        "label": IntField(),
    }
    try:
        writer = DatasetWriter(str(partial), fields, num_workers=num_workers or max(1, os.cpu_count() or 1))
        writer.from_indexed_dataset(dataset, chunksize=chunk_size)  # shows a progress bar
        failures = sorted(errors.glob("*.txt"), key=lambda p: int(p.stem))
        if failures:
            raise ValueError(
                f"{len(failures)} unreadable image file(s) under {root}, e.g. {failures[0].read_text()}; "
                f"fix or remove them and write {out} again"
            )
        os.replace(partial, out_path)
    finally:
        if partial.exists():
            partial.unlink()
        shutil.rmtree(errors, ignore_errors=True)
    return str(out_path)


@command
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = ToolParser(prog="python -m csa_lightning.data.write_beton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=non_empty, help="ImageFolder tree: root/<class>/<image>")
    parser.add_argument("--out", required=True, help="destination .beton file")
    parser.add_argument("--max-resolution", type=int, default=512)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--compress-probability", type=float, default=0.5)
    parser.add_argument("--num-workers", type=int, default=0, help="writer processes (0: one per CPU)")
    args = parser.parse_args(argv)
    require_writable_file("--out", args.out)
    try:
        path = write_beton(
            args.root, args.out, args.max_resolution, args.jpeg_quality, args.compress_probability, args.num_workers
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(first_line(err)) from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
