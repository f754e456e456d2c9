"""Where an ablation's runs happen: behind one small interface, one file per executor.

`csa_lightning.ablate.executors.local.LocalExecutor` (each run a process on this machine) and
`csa_lightning.ablate.executors.slurm.SlurmExecutor` (each run a SLURM job through submitit). A third (another
scheduler, Ray) is one new file with a class like these, named in `csa_lightning.ablate.executors.EXECUTORS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..plan import Variant

__all__ = ["Run", "Status", "Executor", "EXECUTORS", "executor_class"]


@dataclass
class Run:
    """One variant's training as an executor receives it: its folder is stamped, its command is
    ``cli.py fit`` without ``--ckpt_path`` (the checkpoint is chosen when the training starts)."""

    variant: Variant
    run_dir: Path
    command: List[str]
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class Status:
    """What is known of a variant: state is one of queued, running, requeued, done, failed, stopped,
    not started; job and log where the executor has them; detail: why it failed or stopped."""

    state: str
    job: Optional[str] = None
    log: Optional[str] = None
    detail: str = ""


class Executor:
    """The interface. ``args`` are the runner's parsed arguments."""

    #: the value of ``--executor`` that selects it
    name = ""

    def __init__(self, args) -> None:
        self.args = args

    def run_args(self) -> List[str]:
        """Arguments every run gets from the executor (SLURM: nodes and devices from its resources);
        part of each variant's resolved configuration, so the stale check sees them."""
        return []

    def check(self, out: Path) -> None:
        """Refuse, in one line, what cannot be submitted; before anything is."""

    def live(self, out: Path, variants: Sequence[Variant]) -> Dict[str, Status]:
        """Variants this executor has queued or running now (never submitted again)."""
        raise NotImplementedError

    def status(self, out: Path, variant: Variant) -> Status:
        """A variant without a record: where it stands."""
        raise NotImplementedError

    def submit(self, out: Path, runs: Sequence[Run], finished) -> List[str]:
        """Start ``runs``; call ``finished()`` after each run whose record is written. Returns the names
        of the runs that failed (an executor that only submits returns [] and the runner's --status
        tells later)."""
        raise NotImplementedError

    def cancel(self, out: Path, variants: Sequence[Variant]) -> List[str]:
        """Stop the grid's queued and running runs; the names it stopped."""
        raise NotImplementedError


#: --executor name -> "module:class" (imported when chosen: submitit only for SLURM)
EXECUTORS = {"local": "local:LocalExecutor", "slurm": "slurm:SlurmExecutor"}


def executor_class(name: str) -> type:
    import importlib

    module, _, cls = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
