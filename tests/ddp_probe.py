"""A callback the DDP test adds from the command line: each rank writes what it saw."""

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RecordRankMetrics(Callback):
    def __init__(self):
        self.val_samples = 0
        self.val_correct = 0
        self.train_batches = 0
        self.train_batch_size = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1
        self.train_batch_size = len(batch[1])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_samples += len(batch[1])
        self.val_correct += int((pl_module(batch[0]).argmax(1) == batch[1]).sum())  # this rank's shard only

    def on_validation_end(self, trainer, pl_module):
        # after the module's on_validation_epoch_end has logged the synchronised val/top1
        out = Path(os.environ["PROBE_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "val_top1": float(trainer.callback_metrics["val/top1"]),
            "val_samples": self.val_samples,
            "val_correct": self.val_correct,
            "train_batches": self.train_batches,
            "train_batch_size": self.train_batch_size,
        }
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
