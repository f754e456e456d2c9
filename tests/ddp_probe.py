"""A callback the DDP test adds from the command line: each rank writes what it saw."""

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback


def write_rank_record(trainer, prefix: str, **fields) -> None:
    """PROBE_DIR/{prefix}{rank}.json with the rank, the world size and ``fields``."""
    out = Path(os.environ["PROBE_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    record = {"rank": trainer.global_rank, "world_size": trainer.world_size, **fields}
    (out / f"{prefix}{trainer.global_rank}.json").write_text(json.dumps(record))


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
        write_rank_record(
            trainer,
            "rank",
            val_top1=float(trainer.callback_metrics["val/top1"]),
            val_samples=self.val_samples,
            val_correct=self.val_correct,
            train_batches=self.train_batches,
            train_batch_size=self.train_batch_size,
        )


class RecordDetectionShards(Callback):
    """Each rank writes the image ids it trained and validated on, and the synchronised box AP50."""

    def __init__(self):
        self.train_ids = []
        self.val_ids = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_ids += [int(t["image_id"]) for t in batch[1]]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_ids += [int(t["image_id"]) for t in batch[1]]

    def on_validation_end(self, trainer, pl_module):
        write_rank_record(
            trainer,
            "detection_rank",
            box_AP50=float(trainer.callback_metrics["val/box_AP50"]),
            evaluated_images=float(trainer.callback_metrics["val/images"]),
            train_ids=self.train_ids,
            val_ids=self.val_ids,
        )
