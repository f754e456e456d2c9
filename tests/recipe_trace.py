"""What a config's optimiser and schedule do, as plain numbers: the optimiser's class and parameter
groups, and the learning rate of every optimiser step of the first and last epochs (and of each
epoch's first step), on a stand-in trainer of 2 processes and 40 steps an epoch.

``recipe_trace.json`` holds these numbers as the code computed them before the optimiser and the
schedule became config pieces (issue 27); tests/test_cli.py compares every config against them.
Regenerate only on purpose (a recipe meant to change): ``python -m tests.recipe_trace``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

RECORD = Path(__file__).with_name("recipe_trace.json")
STEPS_PER_EPOCH = 40
WORLD_SIZE = 2

#: the strong recipe is an include on top of a row: these combinations are traced too
COMBINATIONS = {
    "csa_r50+strong": ["csa_r50.yaml", "recipe/strong.yaml"],
    "demo/digits_csa+strong_digits": ["demo/digits_csa.yaml", "recipe/strong.yaml", "recipe/strong_digits.yaml"],
}


def trace(module, per_process_batch: int, max_epochs: int) -> dict:
    """The recipe of a built module, stepped through a whole run on a stand-in trainer."""

    module._trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=per_process_batch),
        world_size=WORLD_SIZE,
        accumulate_grad_batches=1,
        num_training_batches=STEPS_PER_EPOCH,
        estimated_stepping_batches=STEPS_PER_EPOCH * max_epochs,
        max_epochs=max_epochs,
    )
    try:
        configured = module.configure_optimizers()
    finally:
        module._trainer = None
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    groups = []
    for group in optimizer.param_groups:
        params = group["params"]
        settings = {k: _plain(v) for k, v in sorted(group.items()) if k != "params"}
        groups.append({"parameters": len(params), "elements": int(sum(p.numel() for p in params)), **settings})
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the scheduler without optimiser steps
        for _ in range(STEPS_PER_EPOCH * max_epochs):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            scheduler.step()
    assert all(len(set(step)) == 1 for step in lrs), "param groups with different learning rates"
    first = [step[0] for step in lrs]
    return {
        "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
        "groups": groups,
        "first_epoch": first[:STEPS_PER_EPOCH],
        "last_epoch": first[-STEPS_PER_EPOCH:],
        "epoch_starts": first[::STEPS_PER_EPOCH],
    }


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def trace_config(paths) -> dict:
    """Build the config (classifiers on the meta device) and trace its recipe."""
    import torch

    from csa_lightning.cli import build_cli

    from .conftest import CONFIGS

    args = [a for p in paths for a in ("--config", str(CONFIGS / p))]
    # torchvision's detectors and the strong recipe's augmentation copy constants when built: on the CPU
    real = any("rcnn" in str(p) or "strong" in str(p) for p in paths)
    with torch.device("cpu" if real else "meta"):
        cli = build_cli(args, run=False)
        return trace_built(cli)


def trace_built(cli) -> dict:
    return trace(cli.model, int(cli.datamodule.batch_size), int(cli.trainer.max_epochs))


def config_ids():
    from .conftest import CONFIGS

    singles = [
        p.relative_to(CONFIGS)
        for p in sorted(CONFIGS.glob("*.yaml"))
        + sorted((CONFIGS / "coco").glob("*.yaml"))
        + sorted((CONFIGS / "demo").glob("*.yaml"))
    ]
    return {str(p.with_suffix("")): [str(p)] for p in singles} | COMBINATIONS


def main() -> None:
    record = {name: trace_config(paths) for name, paths in config_ids().items()}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {RECORD} ({len(record)} configs)")


if __name__ == "__main__":
    main()
