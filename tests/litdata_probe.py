"""Callbacks the LitData tests run inside fits (tests/test_litdata.py)."""

import json
import os
import signal
from pathlib import Path

from lightning.pytorch import Callback


class RecordSampleIds(Callback):
    """Appends (epoch, batch index, global step, sample ids) of every training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ids = [int(i) for i in batch[2]]
        line = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": trainer.global_step, "ids": ids}
        with open(Path(self.path).with_suffix(f".rank{trainer.global_rank}.jsonl"), "a") as handle:
            handle.write(json.dumps(line) + "\n")


class SigtermAt(Callback):
    """Sends this process SIGTERM after the given training batch of the given epoch (a scheduler's stop)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
