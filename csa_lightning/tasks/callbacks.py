"""Callbacks every run uses: what produced it (run_info.json) and where its outputs are."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["RunInfo", "RunSummary", "RecordResult", "run_info"]

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "jsonargparse",
    "ffcv",
    "numba",
    "numpy",
    "csa-lightning",
)


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_info() -> Dict[str, Any]:
    """Git commit (and whether the tree was dirty), package versions, seed, command, host."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "python": sys.version.split()[0],
        "seed": os.environ.get("PL_GLOBAL_SEED"),
        "command": sys.argv,
        "host": platform.node(),
    }


class RunInfo(Callback):
    """Writes ``run_info.json`` into the log directory and stores it in every checkpoint."""

    def __init__(self) -> None:
        self.info = run_info()

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # trainer.log_dir is a collective under DDP: every rank asks, rank 0 writes
        log_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.global_rank != 0:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        info = dict(self.info, world_size=trainer.world_size, precision=str(trainer.precision))
        (Path(log_dir) / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        checkpoint["run_info"] = self.info

    def state_dict(self) -> Dict[str, Any]:
        return {}


class RunSummary(Callback):
    """Prints, as the last lines of a fit, where the checkpoints and logs are and the best score."""

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: all ranks
        if trainer.global_rank != 0:
            return
        lines = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                # fast_dev_run names checkpoints it never writes: list only files that exist
                if cb.best_model_path and os.path.isfile(cb.best_model_path):
                    score = (
                        f" ({cb.monitor} = {float(cb.best_model_score):.4f})" if cb.best_model_score is not None else ""
                    )
                    lines.append(f"best checkpoint: {cb.best_model_path}{score}")
                if cb.last_model_path and os.path.isfile(cb.last_model_path):
                    lines.append(f"last checkpoint: {cb.last_model_path}")
        lines.append(f"logs: {log_dir}")
        print("\n" + "\n".join(lines), flush=True)


class RecordResult(Callback):
    """Writes the outcome of a fit as JSON (the ablation runner's record of one run).

    Path: ``result_path``, or the environment variable ``CSA_RESULT_PATH``. Contents: best and final
    validation top-1, epochs, params, GMAC at the data's resolution, train images/s (mean over the
    last epoch) and inference images/s (eval mode, one batch, median of 5), and the checkpoints.
    """

    def __init__(self, result_path: Optional[str] = None) -> None:
        self.result_path = result_path or os.environ.get("CSA_RESULT_PATH")

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        import statistics
        import time

        import torch

        from ..models.summary import count_cost

        if trainer.global_rank != 0 or not self.result_path:
            return
        datamodule = trainer.datamodule
        size = int(getattr(datamodule, "resolution", 224))
        batch = int(getattr(datamodule, "batch_size", 32))
        net = getattr(pl_module, "model", pl_module)
        params, gmac = count_cost(net, size)
        was_training = pl_module.training
        pl_module.eval()
        x = torch.randn(batch, 3, size, size, device=pl_module.device)
        times = []
        with torch.no_grad():
            for _ in range(6):
                start = time.perf_counter()
                pl_module(x)
                times.append(time.perf_counter() - start)
        pl_module.train(was_training)
        metrics = trainer.callback_metrics
        ckpt = trainer.checkpoint_callback
        best = (
            ckpt.best_model_score if ckpt is not None and ckpt.best_model_score is not None else metrics.get("val/top1")
        )
        record = {
            "best_val_top1": float(best) if best is not None else None,
            "final_val_top1": float(metrics["val/top1"]) if "val/top1" in metrics else None,
            "final_val_loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
            "epochs": trainer.current_epoch,
            "params": params,
            "gmac": round(gmac, 4),
            "gmac_resolution": size,
            "train_images_per_sec": float(metrics.get("train/images_per_sec_epoch", float("nan"))),
            "inference_images_per_sec": batch / statistics.median(times[1:]),
            "best_checkpoint": getattr(ckpt, "best_model_path", None),
            "last_checkpoint": getattr(ckpt, "last_model_path", None),
        }
        path = Path(self.result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
