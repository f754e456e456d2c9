"""Finding checkpoints: a file as given, or the newest one of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["resolve_checkpoint", "newest_checkpoint"]


def newest_checkpoint(folder: str) -> Optional[Path]:
    """The newest ``last*.ckpt`` under ``folder`` (any depth), else its newest ``*.ckpt``, else None."""
    root = Path(folder)
    if not root.is_dir():
        return None
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def resolve_checkpoint(path: str) -> str:
    """``path`` if it is a file; for a run folder, its newest checkpoint (see :func:`newest_checkpoint`)."""
    if Path(path).is_file():
        return path
    found = newest_checkpoint(path)
    if found is None:
        what = "no .ckpt file under" if Path(path).is_dir() else "no such file or folder:"
        raise FileNotFoundError(f"{what} {path}; train first (cli.py fit) or pass a checkpoint file")
    return str(found)
