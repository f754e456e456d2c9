"""What produced a run: ``run_info.json`` in its log folder and in every checkpoint (the commit, package
versions, the provenance of its code and of the files its model names)."""

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
from lightning.pytorch.callbacks import Callback

__all__ = ["RunInfo", "describe_run", "PACKAGES"]

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


def describe_run() -> Dict[str, Any]:
    """Git commit (and whether the tree was dirty), package versions, seed, command, host."""
    versions: Dict[str, Optional[str]] = {}
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
    """Writes ``run_info.json`` into the log directory and stores it in every checkpoint: this
    repository's commit, package versions, and under "code" the provenance of every class the run
    is built from (`csa_lightning.provenance.code_provenance`: the user's own packages too) and the
    files its model arguments name, by content (`csa_lightning.provenance.named_files`)."""

    def __init__(self) -> None:
        self.info = describe_run()

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        from ...provenance import code_provenance, named_files, run_classes

        datamodule, callbacks = getattr(trainer, "datamodule", None), getattr(trainer, "callbacks", [])
        self.info["code"] = code_provenance(run_classes(pl_module, datamodule, callbacks))
        # the files the model's arguments name (pretrained weights, a teacher), by content
        self.info["code"]["named_files"] = named_files(dict(getattr(pl_module, "hparams", {}) or {}))
        source = getattr(pl_module, "weights_source", None)
        if source:  # weights by name (IMAGENET1K_V2): the cached file it resolved to, by content
            found = named_files({"backbone_weights": source["path"]}).get("model.backbone_weights", {})
            self.info["code"]["named_files"]["model.backbone_weights"] = {**source, **found}
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
