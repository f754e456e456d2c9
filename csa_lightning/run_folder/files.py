"""Every path of a training run and of an ablation, and what the runner tells a training it starts.

An ablation's folder ``OUT``::

    OUT/results.json            the merged records of the finished runs (the runner writes it)
    OUT/.ablate.lock            the runner's lock: one runner per OUT
    OUT/report.{md,csv,png}     the report
    OUT/slurm/<job id>/         submitit's files of each SLURM job (its stdout and stderr)
    OUT/runs/<variant>/         one run folder per variant:
        variant.json            the variant (attention, seed, swept values)
        config_hash             scheme:hash of its resolved configuration
        config_resolved.json    that configuration, code.json the code provenance it was planned with
        result.json             the training's result (`csa_lightning.run_folder.result.RunResult`)
        record.json             the run's record: variant, configuration, code, result, attempts
        attempts.jsonl          start / stop / end events (`csa_lightning.run_folder.attempts`)
        stdout.log              the training's output (stdout.rank<N>.log for further SLURM tasks)
        .training.lock          held by the training process while it runs (a flock)
        slurm_job.json          the SLURM job that trains it (the SLURM executor)

The runner starts each training with three environment variables (`training_environment`): where to
write its result, which lock to hold, and its own pid (a local runner: the training can tell that it
was stopped because the runner died). The training reads them through `result_path_from_environment`,
`run_lock_from_environment` and `runner_pid_from_environment`. Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

__all__ = [
    "RunFolder",
    "AblationFolder",
    "training_environment",
    "result_path_from_environment",
    "run_lock_from_environment",
    "runner_pid_from_environment",
    "RESULT_PATH_ENV",
    "RUN_LOCK_ENV",
    "RUNNER_PID_ENV",
]

#: the runner -> training environment variables
RESULT_PATH_ENV = "CSA_RESULT_PATH"
RUN_LOCK_ENV = "CSA_RUN_LOCK"
RUNNER_PID_ENV = "CSA_RUNNER_PID"


def _file(name: str, doc: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}``: {doc}")


@dataclass(frozen=True)
class RunFolder:
    """One variant's run folder (``OUT/runs/<variant>``) and the files in it."""

    path: Path

    @property
    def name(self) -> str:
        """The variant's name (the folder's)."""
        return self.path.name

    result = _file("result.json", "the training's result")
    record = _file("record.json", "the run's record (variant, configuration, code, result, attempts)")
    attempts = _file("attempts.jsonl", "the attempt log")
    lock = _file(".training.lock", "held by the training while it runs")
    variant = _file("variant.json", "the variant")
    config_hash = _file("config_hash", "scheme:hash of the resolved configuration")
    config_resolved = _file("config_resolved.json", "the resolved configuration")
    code = _file("code.json", "the code provenance the run was planned with")
    slurm_job = _file("slurm_job.json", "the SLURM job that trains it")

    def log(self, rank: int = 0) -> Path:
        """The training's output: ``stdout.log`` for rank 0, ``stdout.rank<N>.log`` for the others."""
        return self.path / ("stdout.log" if rank == 0 else f"stdout.rank{rank}.log")


@dataclass(frozen=True)
class AblationFolder:
    """An ablation's ``--out`` folder."""

    path: Path

    results = _file("results.json", "the merged records of the finished runs")
    lock = _file(".ablate.lock", "the runner's lock")
    runs = _file("runs", "the run folders")
    slurm_jobs = _file("slurm", "submitit's job folders (logs and pickles), one per SLURM job id")

    def run(self, name: str) -> RunFolder:
        """The run folder of variant ``name``."""
        return RunFolder(self.runs / name)

    def records(self):
        """The ``record.json`` files the run folders hold, sorted by variant."""
        return sorted(self.runs.glob("*/record.json"))


def training_environment(run: RunFolder, runner_pid: Optional[int] = None) -> Dict[str, str]:
    """What a runner sets for a training it starts: where the result goes, the lock the training holds,
    and (a local runner) the runner's pid."""
    env = {RESULT_PATH_ENV: str(run.result), RUN_LOCK_ENV: str(run.lock)}
    if runner_pid is not None:
        env[RUNNER_PID_ENV] = str(runner_pid)
    return env


def result_path_from_environment() -> Optional[str]:
    """Where a training started by the ablation runner writes its result (None: not started by one)."""
    return os.environ.get(RESULT_PATH_ENV) or None


def run_lock_from_environment() -> Optional[str]:
    """The run folder lock a training started by the ablation runner holds while it runs."""
    return os.environ.get(RUN_LOCK_ENV) or None


def runner_pid_from_environment() -> Optional[int]:
    """The pid of the local runner that started this training (None: not started by one)."""
    value = os.environ.get(RUNNER_PID_ENV, "")
    return int(value) if value.isdigit() else None
