"""Where a fit's outputs are, as its last lines, and the checkpoint callbacks that write them."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["RunSummary", "checkpoint_files"]


def checkpoint_files(trainer: "L.Trainer") -> Tuple[Optional[ModelCheckpoint], Optional[str]]:
    """(the checkpoint callback that monitors a metric, the path of the newest last checkpoint).

    The configs keep two: the best epoch by the task's metric, and ``last.ckpt`` written at the
    end of every epoch by one without a monitor (Lightning's ``save_last`` only copies the epochs
    the best-checkpoint callback saves). A single callback with ``save_last`` works too.
    """
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor), None)
    last = None
    for cb in callbacks:
        if cb.last_model_path:
            last = cb.last_model_path
        elif not cb.monitor and cb.best_model_path:
            last = cb.best_model_path  # no monitor: its "best" is the newest epoch
    return best, last


class RunSummary(Callback):
    """Prints, as the last lines of a fit, where the checkpoints and logs are and the best score."""

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: all ranks
        if trainer.global_rank != 0:
            return
        best, last = checkpoint_files(trainer)
        lines = []
        # fast_dev_run names checkpoints it never writes: list only files that exist
        if best is not None and os.path.isfile(best.best_model_path):
            score = (
                f" ({best.monitor} = {float(best.best_model_score):.4f})" if best.best_model_score is not None else ""
            )
            lines.append(f"best checkpoint: {best.best_model_path}{score}")
        if last and os.path.isfile(last):
            lines.append(f"last checkpoint: {last}")
        lines.append(f"logs: {log_dir}")
        print("\n" + "\n".join(lines), flush=True)
