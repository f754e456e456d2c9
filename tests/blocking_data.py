"""A data module whose validation loader never yields a batch: a stand-in for a loader whose
worker died (the truncated-beton hang), for the SIGTERM test."""

import time
from pathlib import Path

import lightning as L
import torch


class _Never(torch.utils.data.IterableDataset):
    def __iter__(self):
        Path("loader_started").write_text("1")
        while True:
            time.sleep(0.2)
            yield from ()  # never a batch


class BlockingData(L.LightningDataModule):
    def __init__(self, batch_size: int = 2) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_classes = 10

    def val_dataloader(self):
        return torch.utils.data.DataLoader(_Never(), batch_size=None)
