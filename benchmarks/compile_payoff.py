"""When torch.compile pays in training: compile time against the per-step saving, in one process.

    python benchmarks/compile_payoff.py [--attentions se,csa] [--batch 64] [--size 32] [--steps 30]

For each attention ResNet-18 (the digits demo's network and input size by default): the median
eager training step (forward, backward, SGD), then the same model compiled in place
(``nn.Module.compile``, as ``--model.compile true`` does): the first compiled step's time (mostly
compilation) and the median of the following steps. Break-even = compile time / per-step saving.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.models import attention_resnet  # noqa: E402


def _steps(model, optimizer, x, y, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attentions", default="se,csa")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(
        f"ResNet-18, batch {args.batch} at {args.size} px, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| model | eager s / step | compile (first step) s | compiled s / step | speed-up | break-even steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for attention in args.attentions.split(","):
        torch.manual_seed(0)
        model = attention_resnet(18, attention, num_classes=10).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
        eager = statistics.median(_steps(model, optimizer, x, y, args.steps)[3:])
        model.compile()
        first = _steps(model, optimizer, x, y, 1)[0]
        compiled = statistics.median(_steps(model, optimizer, x, y, args.steps)[3:])
        saving = eager - compiled
        even = f"{first / saving:,.0f}" if saving > 0 else "never"
        label = f"{attention.upper()}-R18"
        print(f"| {label} | {eager:.4f} | {first:.1f} | {compiled:.4f} | {eager / compiled:.2f}x | {even} |")


if __name__ == "__main__":
    main()
