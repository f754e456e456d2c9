"""Finding checkpoints: a file as given, or the newest one of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

__all__ = ["resolve_checkpoint", "newest_checkpoint", "checkpoints_newest_first", "saved_config"]


def checkpoints_newest_first(folder: str, pattern: str = "last*.ckpt") -> List[Path]:
    """Every checkpoint matching ``pattern`` under ``folder`` (any depth), newest first."""
    root = Path(folder)
    return sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []


def saved_config(checkpoint: Path) -> Path:
    """Where the run that wrote ``checkpoint`` saved its config (none for a fast_dev_run)."""
    return checkpoint.parent.parent / "config.yaml"


def newest_checkpoint(folder: str, last_only: bool = False) -> Optional[Path]:
    """The newest ``last*.ckpt`` under ``folder`` (any depth), else (unless ``last_only``) its
    newest ``*.ckpt``, else None. Checkpoints of runs that saved their config (``config.yaml``
    beside the ``checkpoints`` folder) come first: a fast_dev_run, which saves none, is taken only
    when nothing else is there."""
    for pattern in ("last*.ckpt",) if last_only else ("last*.ckpt", "*.ckpt"):
        found = checkpoints_newest_first(folder, pattern)
        configured = [p for p in found if saved_config(p).is_file()]
        if found:
            return (configured or found)[0]
    return None


def resolve_checkpoint(path: str, what: str = "checkpoint") -> str:
    """``path`` if it is a file; for a run folder, its newest checkpoint (see :func:`newest_checkpoint`).

    The one place that turns "a checkpoint file, or a run folder" into a file: the CLI, the
    detection backbone, the ablation runner and the analysis tools all call it. A missing one is a
    one-line error naming ``what`` it was for and the command that makes it.
    """
    if Path(path).is_file():
        return str(path)
    found = newest_checkpoint(path)
    if found is None:
        where = f"no .ckpt file under {path}" if Path(path).is_dir() else f"no such file or folder: {path}"
        raise FileNotFoundError(
            f"{what}: {where}; train it first (python cli.py fit --config CONFIG with trainer.default_root_dir "
            f"{path}; for the demos: make demo) or pass a checkpoint file"
        )
    return str(found)
