"""Checkpoint writing that leaves nothing behind when the process is killed while saving.

Lightning's ``TorchCheckpointIO`` serialises the checkpoint into memory, then writes it through an
fsspec transaction, which stages the bytes in a ``tempfile.mkstemp()`` file in the *system*
temporary folder and moves it into place on commit: a kill while saving leaves a ``/tmp/tmpXXXX``
file as large as the checkpoint that nothing removes (and across file systems the "move" is a copy,
so the target can be half-written). This IO writes the checkpoint straight to
``.<name>.partial-<pid>`` beside the target, flushes it to disk and renames it over the target
(atomic within one folder); the next save into that folder removes a dead process's partial file.
Remote paths (``s3://`` and the like) go through Lightning's IO unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checks import remove_dead_leftovers

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a rename of a partial file in the target's folder.

    Pass it as ``Trainer(plugins=[AtomicCheckpointIO()])``; ``cli.py`` adds it to every trainer
    whose config names no checkpoint IO of its own.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_leftovers(target, kinds=("partial",))
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
