"""What GateStatistics costs per training step: CSA-ResNet-18 on the digits, interleaved repeats.

    python benchmarks/gate_statistics_overhead.py [--steps 200] [--repeats 3] [--batch 64] [--size 32]

Times ``steps`` optimiser steps (forward, backward, SGD) of CSA-ResNet-18 on random 32 px batches
three ways in one process, interleaved and repeated: without the callback, with
``GateStatistics(every_n_steps=50)`` (the default in configs/callbacks/classification.yaml) and with
``every_n_steps=1`` (the worst case: hooks and statistics on every step). The callback is driven
through its Lightning hooks exactly as the trainer calls them; prints the median seconds per step
and each ratio to the run without it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.models import attention_resnet  # noqa: E402
from csa_lightning.tasks.gate_statistics import GateStatistics  # noqa: E402


class _NullLogger:
    def log_metrics(self, metrics, step):
        pass


def time_steps(model, optimizer, batches, callback) -> float:
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[_NullLogger()])
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        trainer.global_step = i
        if callback is not None:
            callback.on_train_batch_start(trainer, model, (x, y), i)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trainer.global_step = i + 1
        if callback is not None:
            callback.on_train_batch_end(trainer, model, None, (x, y), i)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = attention_resnet(18, "csa", num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [
        (torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,)))
        for _ in range(args.steps)
    ]
    ways = {"none": None, "every 50 steps": 50, "every step": 1}
    times = {name: [] for name in ways}
    time_steps(model, optimizer, batches[:10], None)  # warm-up
    for _ in range(args.repeats):
        for name, every in ways.items():
            callback = GateStatistics(every_n_steps=every) if every else None
            times[name].append(time_steps(model, optimizer, batches, callback))
    base = statistics.median(times["none"])
    print(f"CSA-ResNet-18, batch {args.batch} at {args.size} px, {args.steps} steps x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| GateStatistics | s / step (median) | ratio |")
    print("|---|---:|---:|")
    for name in ways:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.4f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
