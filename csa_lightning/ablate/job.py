"""Starting one variant's training, wherever it runs: the command line that makes the variant out of
the base config, the checkpoint to resume from (chosen now, when the training starts: a requeued
job never reuses a path fixed at submission) and the run folder's attempt log.

Each start is logged in the run folder's attempt log (`csa_lightning.run_folder.attempts`), whose
summary a finished run's record carries: how many starts, and the steps trained twice.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from ..checks import process_rank
from ..run_folder import (
    RunFolder,
    checkpoint_position,
    log_attempt,
    newest_checkpoint,
    scheduler_job_id,
    training_environment,
)
from ..run_folder.attempts import ATTEMPT_MARKER

__all__ = ["fit_command", "start_training"]


def fit_command(variant_args: Sequence[str], base_config: str, extra: Sequence[str], run_dir: Path) -> List[str]:
    """``python -m csa_lightning.cli fit ...`` for one variant, its outputs in ``run_dir``."""
    return [
        sys.executable, "-m", "csa_lightning.cli", "fit",
        "--config", base_config, *variant_args,
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run_dir),
        "--trainer.logger.name", "logs",
        "--trainer.callbacks+=csa_lightning.tasks.callbacks.RecordResult",
        *extra,
    ]  # fmt: skip


def _end_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM when the thread that started it ends,
    however that ends (SIGKILL included): a training never outlives its runner (Linux only)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the run's own lock still keeps a restart out
        pass


def start_training(run_dir: Path, command: Sequence[str], env: Dict[str, str], rank: int = 0,
                   ignore_signals: Sequence[int] = (), end_with_parent: bool = False) -> subprocess.Popen:  # fmt: skip
    """Start the training process, resuming from the run folder's newest ``last.ckpt`` if there is one.
    Rank 0 (or a single process) logs the start; ``rank`` picks the output file
    (`csa_lightning.run_folder.RunFolder.log`), and the run folder's environment is set
    (`csa_lightning.run_folder.training_environment`). ``ignore_signals`` are ignored by the training
    (a scheduler's warning signal meant for the process that starts it). ``end_with_parent``: the
    training is sent SIGTERM when this process dies (call from the main thread: the kernel watches
    the thread that starts it); it stops as after any SIGTERM and its attempt log says why."""
    run_dir = Path(run_dir)
    command = list(command)
    last = newest_checkpoint(str(run_dir), last_only=True)
    resumed = None
    if last is not None:
        command += ["--ckpt_path", str(last)]
        resumed = {"checkpoint": Path(last).name, **checkpoint_position(last)}
    if process_rank() == 0:
        log_attempt(run_dir, "start", host=socket.gethostname(), job=scheduler_job_id(),
                    restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)), resumed=resumed)  # fmt: skip
    run = RunFolder(run_dir)
    env = {**env, **training_environment(run, os.getpid() if end_with_parent else None)}

    def prepare():
        for signum in ignore_signals:
            signal.signal(signum, signal.SIG_IGN)
        if end_with_parent:
            _end_with_parent()

    log = open(run.log(rank), "a")
    log.write(f"{ATTEMPT_MARKER} {time.strftime('%Y-%m-%d %H:%M:%S')} (resumed: {resumed or 'no'})\n")
    log.flush()
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **env),
                                preexec_fn=prepare if (ignore_signals or end_with_parent) else None)  # fmt: skip
    finally:
        log.close()  # the child has its own descriptor
