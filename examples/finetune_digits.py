"""make demo-finetune: gates added to a trained network at identity, then fine-tuned in stages.

1. A plain ResNet-18 (no gates) trained on the digits with the demo's recipe (make demo's config).
2. SE and CSA inserted into it at identity (configs/recipe/finetune.yaml: ``gates_at_identity``): the
   validation top-1 before the first step, beside the plain network's own.
3. Each fine-tuned in stages from it: the gates and the head alone for the first epoch, then everything
   with the pretrained parameters at 0.1 x the lr (a fine-tuning lr of 0.01, no lr warm-up, 4 epochs).

Prints the table (and writes it to runs/demo_finetune/table.md, and to ``--table PATH`` too: the
manual includes benchmarks/results/demo_finetune.md): top-1 at insertion, after the warm-up epoch
and after fine-tuning. Each step is skipped when its run exists (delete the folder to
start again).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/demo_finetune")
BASE = ["--config", str(ROOT / "configs/demo/digits_csa.yaml")]
FINETUNE = ["--config", str(ROOT / "configs/recipe/finetune.yaml"), "--model.optimizer.init_args.lr", "0.01",
            "--model.lr_schedule.init_args.warmup_epochs", "0", "--trainer.max_epochs", "4"]  # fmt: skip


def _cli(args: List[str]):
    from csa_lightning.cli import main

    return main(args)


def _last_checkpoint(root: Path) -> Path:
    found = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _validate(args: List[str]) -> float:
    cli = _cli(["validate", *BASE, *args, "--trainer.enable_progress_bar", "false"])
    return float(cli.trainer.callback_metrics["val/top1"])


def _epoch_top1(root: Path) -> Dict[int, float]:
    """val/top1 by epoch, from the run's metrics.csv (the newest version folder)."""
    (metrics,) = sorted(root.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)[-1:]
    by_epoch = {}
    with open(metrics) as handle:
        for row in csv.DictReader(handle):
            if row.get("val/top1"):
                by_epoch[int(row["epoch"])] = float(row["val/top1"])
    return by_epoch


def main(argv: List[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    plain_root = OUT / "plain"
    if _last_checkpoint(plain_root) is None:
        _cli(["fit", *BASE, "--model.net.init_args.attention", "none", "--trainer.default_root_dir", str(plain_root)])
    plain_ckpt = _last_checkpoint(plain_root)
    plain = _validate(["--model.net.init_args.attention", "none", "--ckpt_path", str(plain_ckpt),
                       "--trainer.default_root_dir", str(plain_root)])  # fmt: skip
    rows = [f"| plain ResNet-18 (trained) | {100 * plain:.2f} | | | |"]
    for block in ("se", "csa"):
        gated = ["--model.net.init_args.attention", block, "--model.backbone_weights", str(plain_ckpt)]
        root = OUT / block
        at_insertion = _validate([*gated, "--config", str(ROOT / "configs/recipe/finetune.yaml"),
                                  "--trainer.default_root_dir", str(root / "insertion")])  # fmt: skip
        default_start = _validate([*gated, "--trainer.default_root_dir", str(root / "insertion_default")])
        print(f"{block}: validation top-1 at insertion {100 * at_insertion:.2f} % (plain network: {100 * plain:.2f} %; "
              f"inserted with the block's default start: {100 * default_start:.2f} %)")  # fmt: skip
        if _last_checkpoint(root / "finetune") is None:
            _cli(["fit", *BASE, *gated, *FINETUNE, "--trainer.default_root_dir", str(root / "finetune")])
        epochs = _epoch_top1(root / "finetune")
        rows.append(f"| + {block.upper()} at identity | {100 * at_insertion:.2f} | {100 * default_start:.2f} | "
                    f"{100 * epochs[0]:.2f} | {100 * epochs[max(epochs)]:.2f} |")  # fmt: skip
    table = "\n".join([
        "| network | top-1 at insertion (%) | without identity: the block's default start (%) "
        "| after the warm-up epoch (%) | after fine-tuning, 4 epochs (%) |",
        "|---|---|---|---|---|", *rows,
    ])  # fmt: skip
    for path in (OUT / "table.md", args.table):
        if path is not None:
            path.write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
