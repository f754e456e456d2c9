"""Helpers the SLURM tests run inside jobs (importable there: a job starts in the submitting folder)."""

import hashlib
import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from csa_lightning.attention import ChannelAttention


class RankDigest(Callback):
    """Each rank writes its global rank, the world size and a digest of its weights after the fit:
    DDP's ranks must agree on every weight."""

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        about = {"rank": trainer.global_rank, "world_size": trainer.world_size, "digest": digest.hexdigest()}
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(about))


class FailsInTraining(ChannelAttention):
    """Builds (the runner's up-front check passes) but raises in the first training step."""

    def gate(self, x):
        if self.training:
            raise RuntimeError("FailsInTraining: a deliberate error in the first training step")
        return torch.sigmoid(x.mean((2, 3), keepdim=True))


class HoldBeforeRecord(Callback):
    """A run's first start stops between the end of its last epoch (its last.ckpt saved) and its record:
    it writes ``held`` in the run folder and waits there, as a slow record on a loaded file system would,
    until a signal ends it (SIGTERM: the project's watchdog exits 143 after ``CSA_SIGTERM_GRACE`` s).
    Later starts pass through."""

    def on_train_end(self, trainer, pl_module):
        marker = Path(trainer.default_root_dir, "held")
        if trainer.global_rank != 0 or marker.exists():
            return
        marker.write_text(str(trainer.current_epoch))
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(0.2)


class HoldInEpoch(Callback):
    """A run's first start holds at the first batch of epoch ``epoch`` (the epoch before it saved in
    last.ckpt), writing ``held`` in the run folder, until a SIGTERM reaches the training; it then stops
    at that batch boundary through Lightning's handler, as at any other. A test waits for ``held``
    instead of sleeping into an epoch; later starts pass through."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        marker = Path(trainer.default_root_dir, "held")
        if trainer.current_epoch != self.epoch or batch_idx != 0 or marker.exists():
            return
        marker.write_text(str(trainer.global_step))
        deadline = time.time() + 600
        while not trainer.received_sigterm and time.time() < deadline:
            time.sleep(0.2)
