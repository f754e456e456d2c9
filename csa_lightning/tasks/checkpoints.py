"""Finding checkpoints: a file as given, or the newest one of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["resolve_checkpoint", "newest_checkpoint"]


def newest_checkpoint(folder: str, last_only: bool = False) -> Optional[Path]:
    """The newest ``last*.ckpt`` under ``folder`` (any depth), else (unless ``last_only``) its
    newest ``*.ckpt``, else None. Checkpoints of runs that saved their config (``config.yaml``
    beside the ``checkpoints`` folder) come first: a fast_dev_run, which saves none, is taken only
    when nothing else is there."""
    root = Path(folder)
    if not root.is_dir():
        return None
    for pattern in ("last*.ckpt",) if last_only else ("last*.ckpt", "*.ckpt"):
        found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)
        configured = [p for p in found if (p.parent.parent / "config.yaml").is_file()]
        if found:
            return (configured or found)[-1]
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
