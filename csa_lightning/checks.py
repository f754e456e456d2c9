"""Up-front checks of numeric options: one line naming the option and the rule, before any work.

A batch size of 0 used to fail after 24 s of loader start-up with ``empty range for randrange()``,
a negative lr inside the optimiser's constructor; both now fail when the module is built. Imports
nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

from .errors import UsageError

__all__ = [
    "MAX_IMAGE_SIDE",
    "is_number",
    "require",
    "require_positive",
    "require_non_negative",
    "require_normalisation",
    "require_fraction_range",
    "oversubscription_warning",
    "process_alive",
    "process_rank",
    "hold_run_lock",
    "run_lock_holder",
    "remove_dead_leftovers",
    "require_writable_folder",
    "require_writable_file",
]


#: the largest image side the tools accept (an --size of 100000 tried to allocate 960 GB)
MAX_IMAGE_SIDE = 4096


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (a JSON or YAML ``true`` is a Python bool, which is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(condition: bool, option: str, value: Any, rule: str) -> None:
    """Raise ``UsageError("<option> must be <rule>, got <value>")`` unless ``condition``."""
    if not condition:
        raise UsageError(f"{option} must be {rule}, got {value!r}")


def require_positive(option: str, value: Any, integer: bool = False) -> None:
    ok = is_number(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    require(ok, option, value, "a positive integer" if integer else "positive")


def require_non_negative(option: str, values: Iterable[Any] | Any) -> None:
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    require(all(isinstance(v, (int, float)) and v >= 0 for v in items), option, values, ">= 0")


def require_normalisation(prefix: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """Three finite means and three positive, finite stds (a zero std trained to a NaN loss, exit 0)."""
    import math

    def numbers(values):
        return isinstance(values, (list, tuple)) and all(is_number(v) and math.isfinite(v) for v in values)

    require(numbers(mean) and len(mean) == 3, f"{prefix}.mean", mean, "three finite numbers (one per channel)")
    require(
        numbers(std) and len(std) == 3 and all(v > 0 for v in std),
        f"{prefix}.std",
        std,
        "three positive numbers (one per channel; a zero divides by zero)",
    )


def require_fraction_range(option: str, values: Sequence[float]) -> None:
    """A (low, high) pair with 0 < low <= high <= 1 (a random-resized-crop scale range)."""
    ok = (
        isinstance(values, (list, tuple))
        and len(values) == 2
        and all(is_number(v) for v in values)
        and 0 < values[0] <= values[1] <= 1
    )
    require(ok, option, values, "[low, high] with 0 < low <= high <= 1")


def require_writable_folder(option: str, path: str | os.PathLike, _shown: Optional[str] = None) -> None:
    """A folder that a tool will create or write into: refused up front, in one line, when it is a
    file, lies under a file, or its nearest existing folder cannot be written (nothing is created)."""
    import tempfile

    shown = _shown if _shown is not None else str(path)
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {shown} is a file; give a folder (it is created if missing)")
    existing = target.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {shown} cannot be created: {existing} is a file; choose another place")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"{option} {shown} cannot be written ({existing}: {reason}); choose a place you can write"
        ) from None


def require_writable_file(option: str, path: str | os.PathLike) -> None:
    """A file a tool will write at the end of its work: refused up front, in one line, when it is a
    folder or its folder cannot be created or written (nothing is created)."""
    target = Path(path)
    if str(path).strip() == "":
        raise UsageError(f"{option} is empty; give the file to write")
    if target.is_dir():
        raise UsageError(f"{option} {path} is a folder; give the file to write inside it")
    require_writable_folder(option, target.parent, _shown=str(path))


def oversubscription_warning(
    world_size: int, cpus: Optional[int], on_cpu: bool, global_batch: Optional[int]
) -> Optional[str]:
    """The warning for more CPU processes than cores (each gets a slice; the lr still scales up)."""
    if not on_cpu or not cpus or world_size <= cpus:
        return None
    batch = f" to a global batch of {global_batch}" if global_batch else ""
    return (
        f"{world_size} CPU processes on {cpus} cores: they share the cores (no faster than {cpus}), and the lr is "
        f"scaled{batch} as for {world_size} devices; use --trainer.devices {cpus} or fewer"
    )


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts): whose lock or leftover file this is."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: file descriptors of the run locks this process holds (kept open until it exits)
_HELD_LOCKS: dict = {}


def process_rank() -> int:
    """This process's global rank as its launcher set it: torchrun's ``RANK``, else a SLURM task's
    ``SLURM_PROCID``, else 0 (a single process). Lightning's subprocess launcher sets neither in the
    processes it starts, only ``LOCAL_RANK``: check that too where it matters."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def hold_run_lock(path: str) -> None:
    """Hold an exclusive lock on ``path`` until this process exits, or raise a one-line error.

    The kernel releases it when the process ends, however it ends (SIGKILL included), so a lock
    left behind by a killed process never blocks; a live one always does. The ablation runner
    gives each training run the lock of its run folder: no two processes ever train into one.
    """
    import fcntl

    if path in _HELD_LOCKS:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RuntimeError(
            f"another process (pid {holder}) is training into {Path(path).parent}; wait for it to finish "
            f"or stop it (kill {holder}) before starting this run again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd


def run_lock_holder(path: str) -> Optional[int]:
    """The pid of the live process holding the run lock ``path``, or None when nobody holds it."""
    import fcntl

    if not Path(path).exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


def remove_dead_leftovers(target: Path, kinds: Sequence[str] = ("partial", "errors", "tmp")) -> List[Path]:
    """Remove ``.<name>.<kind>-<pid>`` files and folders beside ``target`` whose process is gone.

    A killed writer cannot clean up after itself (a ``.partial`` beton is as large as the finished
    one: tens of GB on ImageNet); the next writer of the same target does it. A live process's
    leftovers (a writer running beside this one) are kept.
    """
    removed: List[Any] = []
    if not target.parent.is_dir():
        return removed
    for kind in kinds:
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
