"""Where an attention ResNet's GPU time goes: the CUDA kernels of its training step and inference,
by total time, from torch.profiler (ResNet-50 by default, bf16 autocast, channels_last).

    PYTHONPATH=. python benchmarks/csa_gpu_profile.py [--variant 'csa|csa'] \
        [--variant 'authors|csa|{"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"}'] \
        [--batch 128] [--rows 15]

``--variant`` takes what ``python -m csa_lightning.benchmark --variant`` takes (LABEL|ATTENTION or
LABEL|ATTENTION|JSON-OPTIONS); each is profiled over 3 steps after 3 warm-up steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.benchmark import inference, training_step  # noqa: E402
from csa_lightning.models.summary import build_variant, parse_variant  # noqa: E402


def profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, rows: int) -> str:
    """The CUDA kernels of 3 training steps or inferences (after 3 more to warm up), by total time:
    the same step the benchmark times (bf16 autocast)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        if train:
            training_step(model, optimizer, x, y, bf16=True)
        else:
            inference(model, x, bf16=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device="cuda")
    for text in args.variant or ["csa|csa"]:
        label, attention, options = parse_variant(text)
        model = build_variant(args.depth, attention, options).cuda().to(memory_format=torch.channels_last)
        for train in (True, False):
            print(f"\n## {label}: {'training step' if train else 'inference'} x 3, batch {args.batch}\n", flush=True)
            print(profile(model, x, y, train, args.rows), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
