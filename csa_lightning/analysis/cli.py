"""The command line: ``python -m csa_lightning.analyze descriptors|gradcam`` (or ``-m csa_lightning.analysis``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ToolParser, UsageError, command
from .checkpoints import AnalysedModel, load_models, parse_blocks, stage_blocks
from .descriptors import _safe, collect_descriptors_of, plot_descriptors, save_descriptors
from .gradcam import choose_cam_stage, gradcam_maps, plot_gradcam
from .images import ImageBatch, Preprocessing, datamodule_batches, image_folder_batches

__all__ = ["build_parser", "main", "run_descriptors", "run_gradcam"]

_DESCRIPTION = "Analysis tools: what the channel-attention blocks see, and where the models look."


def _preprocessing(args, models: List[AnalysedModel]) -> Preprocessing:
    prep = Preprocessing.from_data_hparams(models[0].data_hparams)
    if args.size:
        prep.size = args.size
    if args.crop_ratio:
        prep.crop_ratio = args.crop_ratio
    if args.mean:
        prep.mean = tuple(args.mean)
    if args.std:
        prep.std = tuple(args.std)
    return prep


def _batches(args, models, limit, batch_size) -> Tuple[Iterator[ImageBatch], List[str]]:
    if args.images:
        return image_folder_batches(args.images, _preprocessing(args, models), limit, batch_size)
    return datamodule_batches(args.data, limit)


def run_descriptors(args) -> List[Path]:
    """The ``descriptors`` command: one figure and one ``.npz`` per stage; returns the files written."""
    models = load_models(args.ckpt, args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = parse_blocks(args.blocks)
    batches, _ = _batches(args, models, args.limit, args.batch_size)
    results = collect_descriptors_of({m.label: m.network for m in models}, batches, blocks)
    return save_descriptors(results, out, args.sort, args.alpha) + plot_descriptors(results, out, args.sort, args.alpha)


def run_gradcam(args) -> List[Path]:
    """The ``gradcam`` command: one grid of every model's Grad-CAM maps; returns the files written."""
    models = load_models(args.ckpt, args.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches, class_names = _batches(args, models, args.limit, args.limit)
    batch = next(iter(batches))
    if batch.targets is not None:
        targets = list(batch.targets)
    else:  # no classes known: explain what the first model predicts
        with torch.no_grad():
            targets = models[0].network.eval()(batch.inputs).argmax(1).tolist()
    maps, probs, stages, notes = {}, {}, {}, []
    for m in models:
        stage, note = choose_cam_stage(m.network, batch.inputs, args.stage)
        if note:
            notes.append(f"{m.label}: {note}")
            print(f"note: {m.label}: {note}", file=sys.stderr)
        stages[m.label] = stage
        maps[m.label], probs[m.label] = gradcam_maps(m.network, batch.inputs, targets, stage)
    arrays: Dict[str, Any] = {
        "labels": np.array(list(maps)),
        "targets": np.array(targets),
        "images": batch.display,
        "stages": np.array([stages[k] for k in maps]),
        **{f"{_safe(k)}__cam": v for k, v in maps.items()},
        **{f"{_safe(k)}__prob": v for k, v in probs.items()},
    }
    np.savez(out / "gradcam.npz", **arrays)
    used = sorted(set(stages.values()))
    title = f"Grad-CAM at the last block of layer{'/'.join(map(str, used))}"
    if notes:
        title += f" (layer{len(stage_blocks(models[0].network))} maps are 1x1 at {batch.inputs.shape[-1]} px)"
    return [out / "gradcam.npz", plot_gradcam(batch, targets, maps, probs, class_names, out / "gradcam.png", title)]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m csa_lightning.analyze`` (sub-commands descriptors and gradcam)."""
    parser = ToolParser(prog="python -m csa_lightning.analyze", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("descriptors", "z, q and p per channel at the last block of each stage (paper Figs. 3, 5)"),
        ("gradcam", "Grad-CAM grid at the last stage of each model (paper Figs. 4, 6)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--ckpt", action="append", required=True, help="a classification checkpoint (repeat for more models)"
        )
        p.add_argument("--label", action="append", help="a figure label per --ckpt (default: e.g. CSA-R50)")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--images", help="a folder of images, or of class sub-folders of images")
        source.add_argument("--data", help="a cli.py config whose data module's validation images to use")
        p.add_argument("--out", default="figs", help="output folder (default: figs)")
        p.add_argument(
            "--limit",
            type=int,
            default=None if name == "descriptors" else 6,
            help="use the first N images (descriptors: all; gradcam: 6)",
        )
        p.add_argument("--size", type=int, help="input side (default: the checkpoint's validation resolution)")
        p.add_argument("--crop-ratio", type=float, help="centre-crop ratio (default: the checkpoint's, else 224/256)")
        p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the checkpoint's)")
        p.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the checkpoint's)")
        if name == "descriptors":
            p.add_argument(
                "--blocks",
                default="stage_end",
                help='"stage_end" (default), "every_block" or a JSON list of [stage, block] pairs',
            )
            p.add_argument("--sort", default="q", choices=("q", "z", "p", "none"), help="sort channels by (default: q)")
            p.add_argument("--alpha", type=float, default=0.3, help="EMA smoothing factor (default: 0.3)")
            p.add_argument("--batch-size", type=int, default=32)
        else:
            p.add_argument(
                "--stage",
                type=int,
                help="stage 1..4 whose last block Grad-CAM reads (default: the last with maps larger than 1x1)",
            )
    return parser


def _bad_option(args) -> Optional[str]:
    """The first option whose value cannot work, in one line (before any checkpoint is read)."""
    import math

    if args.size is not None and args.size < 1:
        return f"--size must be a positive image side in pixels, got {args.size}"
    if args.crop_ratio is not None and not 0 < args.crop_ratio <= 1:
        return f"--crop-ratio must be in (0, 1] (crop side / shorter image side), got {args.crop_ratio}"
    if args.mean is not None and not all(math.isfinite(v) for v in args.mean):
        return f"--mean must be three finite numbers, got {args.mean}"
    if args.std is not None and not all(math.isfinite(v) and v > 0 for v in args.std):
        return f"--std must be three positive numbers (a zero divides by zero), got {args.std}"
    if getattr(args, "alpha", None) is not None and not 0 < args.alpha <= 1:
        return f"--alpha must be in (0, 1] (1: no smoothing), got {args.alpha}"
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        return f"--batch-size must be a positive integer, got {args.batch_size}"
    if args.limit is not None and args.limit < 1:
        return f"--limit must be a positive number of images, got {args.limit}"
    if getattr(args, "stage", None) is not None and args.stage not in (1, 2, 3, 4):
        return f"--stage must be 1, 2, 3 or 4, got {args.stage}"
    return None


@command
def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """``python -m csa_lightning.analyze``: bad options are one line and exit status 2; returns the files written."""
    args = build_parser().parse_args(argv)
    problem = _bad_option(args)
    if problem:
        raise UsageError(problem)
    out_existed = Path(args.out).exists()
    try:
        written = run_descriptors(args) if args.command == "descriptors" else run_gradcam(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        out = Path(args.out)
        if not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty output folder behind a failed call
        raise UsageError(" ".join(str(err).split())) from err
    for path in written:
        print(path)
    return written
