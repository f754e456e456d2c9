"""The outcome of a fit as JSON: the ablation runner's record of one run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ...run_folder import RunResult, result_path_from_environment
from ...run_folder.result import TRAIN_IMAGES_PER_SEC
from ...third_party import run_validation
from .run_summary import checkpoint_files

__all__ = ["RecordResult"]


class RecordResult(Callback):
    """Writes the outcome of a fit as JSON (the ablation runner's record of one run).

    Path: ``result_path``, or the one the ablation runner sets (`csa_lightning.run_folder.files`); contents:
    a `csa_lightning.run_folder.result.RunResult`: the metric
    the checkpoints monitor and its best value, every validation metric of the last epoch, epochs,
    params, GMAC at the data's resolution, train images/s (mean over the last epoch), inference
    images/s (eval mode, one batch, median of 5), and the checkpoints. A run a signal stops logs its
    epoch and step in the folder's attempt log (`csa_lightning.run_folder.attempts`).
    """

    def __init__(self, result_path: Optional[str] = None) -> None:
        self.result_path = result_path or result_path_from_environment()

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        import statistics
        import time

        import torch

        from ...models.summary import count_cost

        if not self.result_path:
            return
        ckpt, _ = checkpoint_files(trainer)
        monitor = getattr(ckpt, "monitor", None) or "val/top1"
        if monitor not in trainer.callback_metrics:
            # nothing was trained or validated in this process: a run resumed from a checkpoint saved after
            # its last epoch (a stop between the last epoch and this record). Its result is evaluated from
            # that checkpoint now (every rank: validation is collective under DDP), so the run is done.
            rank_zero_info(f"no {monitor} logged in this run (nothing left to train): validating the checkpoint")
            run_validation(trainer)
        if trainer.global_rank != 0:
            return
        datamodule = getattr(trainer, "datamodule", None)
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
        ckpt, last = checkpoint_files(trainer)
        best = ckpt.best_model_score if ckpt is not None and ckpt.best_model_score is not None else metrics.get(monitor)
        record = RunResult(
            monitor=monitor,
            best=float(best) if best is not None else None,
            final={k: float(v) for k, v in metrics.items() if k.startswith("val/") and v.numel() == 1},
            epochs=trainer.current_epoch,
            params=params,
            gmac=round(gmac, 4),
            gmac_resolution=size,
            train_images_per_sec=float(metrics.get(TRAIN_IMAGES_PER_SEC, float("nan"))),
            inference_images_per_sec=batch / statistics.median(times[1:]),
            inference_images_per_sec_range=[batch / max(times[1:]), batch / min(times[1:])],
            val_fraction=_validated_fraction(trainer),
            best_checkpoint=getattr(ckpt, "best_model_path", None),
            last_checkpoint=last,
        ).to_json()
        path = Path(self.result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        """A run stopped by a signal logs where it stopped in its folder's attempt log, so that the
        record of the run that finishes it says what was trained twice."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from ...run_folder import log_attempt, stop_cause

        if isinstance(exception, SIGTERMException) and trainer.global_rank == 0 and self.result_path:
            log_attempt(Path(self.result_path).parent, "stop", epoch=trainer.current_epoch, step=trainer.global_step,
                        **stop_cause())  # fmt: skip


def _validated_fraction(trainer: "L.Trainer") -> Optional[float]:
    """The share of the validation batches each epoch evaluated (None when there was no validation)."""
    loaders = trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders] if loaders is not None else []
    try:
        total = sum(len(loader) for loader in loaders)
    except TypeError:  # an iterable without a length
        return None
    used = sum(min(n, t) for n, t in zip(trainer.num_val_batches, (len(loader) for loader in loaders)))
    return round(used / total, 6) if total else None
