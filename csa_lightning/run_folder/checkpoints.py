"""Finding checkpoints: a file as given, or the newest one of a run folder."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional

__all__ = [
    "checkpoint_position",
    "resolve_checkpoint",
    "newest_checkpoint",
    "checkpoints_newest_first",
    "saved_config",
    "check_checkpoint_file",
]

#: names Lightning resolves itself for --ckpt_path
_SPECIAL_CKPT = {"last", "best", "hpc", "registry"}

_RESUME_FIX = "resume from another one, e.g. --ckpt_path last"


def check_checkpoint_file(path: Optional[str], fix: str = _RESUME_FIX) -> None:
    """Raise a one-line error if ``path`` is not a readable torch checkpoint (cheap: no unpickling).

    ``fix`` ends the message: what to do instead (by default, for ``--ckpt_path``, resume from another)."""
    if path is None or str(path) in _SPECIAL_CKPT or "://" in str(path):
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass an existing .ckpt or --ckpt_path last to resume")
    if not zipfile.is_zipfile(p):
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint (truncated write?); {fix}")
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt ({err}); {fix}") from None
    if bad is not None or not any(n.endswith("data.pkl") for n in names):
        raise ValueError(f"checkpoint {path} is corrupt (damaged member {bad}); {fix}")


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
    """``path`` if it is a file; for a run folder, its newest checkpoint (see
    `csa_lightning.run_folder.checkpoints.newest_checkpoint`).

    The one place that turns "a checkpoint file, or a run folder" into a file: the CLI, the
    detection backbone, the ablation runner and the analysis tools all call it. A missing one is a
    one-line error naming ``what`` it was for and the command that makes it.
    """
    if Path(path).is_file():
        check_checkpoint_file(path, fix=f"pass another {what} file or run folder")
        return str(path)
    found = newest_checkpoint(path)
    if found is None:
        where = f"no .ckpt file under {path}" if Path(path).is_dir() else f"no such file or folder: {path}"
        raise FileNotFoundError(
            f"{what}: {where}; train it first (python cli.py fit --config CONFIG with trainer.default_root_dir "
            f"{path}; for the demos: make demo) or pass a checkpoint file"
        )
    check_checkpoint_file(str(found), fix=f"pass another {what} file or run folder")
    return str(found)


def checkpoint_position(path) -> dict:
    """``{"epoch": E, "step": S}`` a checkpoint was saved at (-1 where it does not say); reads the
    file memory-mapped, without unpickling anything but plain values."""
    import torch

    saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {"epoch": int(saved.get("epoch", -1)), "step": int(saved.get("global_step", -1))}
