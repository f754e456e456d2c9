"""Where CSA's time goes on a GPU: its descriptor math at ResNet-50's four stage ends, path by path.

    PYTHONPATH=. python benchmarks/csa_cuda_paths.py [--batch 128] [--repeats 10] [--out FILE.md]

The gate input is what a bf16-autocast ResNet-50 hands the gate (bf16, channels_last) at layer1..4
(256 x 56 x 56, 512 x 28 x 28, 1024 x 14 x 14, 2048 x 7 x 7). For each path, the forward of
``spatial_autocorrelation`` (inference) and forward + backward (training; gradients reach the input
through z as in the default gate) are timed with CUDA events, median of ``repeats`` after a warm-up:

- triton (default): the fused Triton kernels (``kernel="auto"`` on CUDA, attention/csa_triton.py);
- torch: the blocked PyTorch path (``kernel="torch"``; fp32 Gram, TF32 as PyTorch defaults it: off);
- torch tf32: the same with ``torch.backends.cuda.matmul.allow_tf32 = True`` for the Gram;
- torch blocks=1: one Gram product per sample instead of the symmetric blocks (tuned on a CPU);
- compiled: ``torch.compile`` of the PyTorch path (``CSA(compile=True)``), compile time reported
  (``--no-compile`` leaves it out: about 20 s of compilation per shape).

A reference row times a bf16 3x3 convolution of the same map (what the stage spends per conv).
``--sweep`` also times the fused forward (both passes) for several tile configurations per shape,
the figures `csa_lightning.attention.csa_triton.tile_config` is chosen from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.attention import csa_triton  # noqa: E402
from csa_lightning.attention.csa import spatial_autocorrelation  # noqa: E402

SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
#: (B, BK, num_warps, num_stages) tried by --sweep
SWEEP = [
    (64, 64, 4, 3),
    (64, 32, 4, 2),
    (64, 16, 4, 2),
    (128, 64, 8, 3),
    (128, 32, 8, 2),
    (128, 64, 4, 3),
    (32, 32, 2, 2),
    (32, 64, 4, 2),
]


def cuda_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also time the fused kernels' tile configurations")
    args = parser.parse_args()
    dev = torch.device("cuda")
    # static shapes: one compile per stage shape (dynamic shapes recompiled for minutes on the second)
    compiled_fn = None if args.no_compile else torch.compile(spatial_autocorrelation, dynamic=False)
    lines = [
        f"CSA descriptor math, batch {args.batch}, bf16 input, {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}; "
        f"ms per call, median of {args.repeats}",
        "",
        "| stage input | path | forward ms | forward + backward ms | note |",
        "|---|---|---:|---:|---|",
    ]
    for channels, side in SHAPES:
        x = torch.randn(args.batch, channels, side, side, device=dev, dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dev, memory_format=torch.channels_last)

        def run_conv():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                conv(x)

        paths = [
            ("triton (default)", spatial_autocorrelation, {}, False),
            ("torch", spatial_autocorrelation, {"kernel": "torch"}, False),
            ("torch tf32", spatial_autocorrelation, {"kernel": "torch"}, True),
            ("torch blocks=1", spatial_autocorrelation, {"kernel": "torch", "blocks": 1}, False),
            ("triton hybrid", spatial_autocorrelation, {"contiguity": "hybrid"}, False),
            ("torch hybrid", spatial_autocorrelation, {"contiguity": "hybrid", "kernel": "torch"}, False),
        ]
        if compiled_fn is not None:
            paths.append(("compiled", compiled_fn, {}, False))
        label = f"{channels} x {side} x {side}"
        lines.append(f"| {label} | bf16 3x3 conv (reference) | {cuda_time(run_conv, args.repeats):.2f} | | |")
        for name, fn, options, tf32 in paths:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            note = ""
            try:
                xg = x.detach().requires_grad_(True)

                def forward():
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                        fn(x, **options)

                def train():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        out = fn(xg, **options)
                    out["q"].sum().backward()

                if name == "compiled":
                    start = time.perf_counter()
                    forward()
                    train()
                    torch.cuda.synchronize()
                    note = f"compiled in {time.perf_counter() - start:.0f} s"
                fwd, both = cuda_time(forward, args.repeats), cuda_time(train, args.repeats)
                lines.append(f"| {label} | {name} | {fwd:.2f} | {both:.2f} | {note} |")
            except Exception as err:  # report and go on: one failing path must not hide the others
                lines.append(f"| {label} | {name} | - | - | {type(err).__name__}: {str(err).splitlines()[0][:80]} |")
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
            print(lines[-1], flush=True)
    if args.sweep:
        lines += sweep(args)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def sweep(args) -> list:
    """The fused forward (both passes, bf16 map) per tile configuration and stage shape, in ms."""
    lines = [
        "",
        f"Fused forward (2 passes) by tile configuration (B, BK, warps, stages), batch {args.batch}, ms; "
        "* = tile_config's choice",
        "",
        "| stage input | " + " | ".join("/".join(map(str, c)) for c in SWEEP) + " |",
        "|---|" + "---:|" * len(SWEEP),
    ]
    for channels, side in SHAPES:
        x = torch.randn(args.batch, channels, side, side, device="cuda", dtype=torch.bfloat16)
        f = x.contiguous(memory_format=torch.channels_last).reshape(args.batch, channels, -1)
        y = torch.randn(args.batch, channels, device="cuda")
        chosen = csa_triton.tile_config(channels, side * side)
        cells = []
        for config in SWEEP:
            try:
                ms = cuda_time(
                    lambda: csa_triton.weighted_sums(f, y, "l2", 1e-5, config=config), max(args.repeats, 20), warmup=3
                )
                cells.append(f"{ms:.3f}{'*' if config == chosen else ''}")
            except Exception as err:  # a configuration too large for the chip's shared memory, say
                cells.append(type(err).__name__)
        lines.append(f"| {channels} x {side} x {side} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
