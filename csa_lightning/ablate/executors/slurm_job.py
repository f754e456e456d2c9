"""What a SLURM job runs on its node, in each of its tasks (`VariantJob`: submitit pickles it and calls it
there): start the variant's training, resuming from the newest ``last.ckpt``; wait; write the record.
On the time-limit warning (submitit's ``checkpoint`` hook) stop the training through SIGTERM and hand
submitit the same job to requeue; on SIGTERM from SLURM (preemption, scancel) wait for SLURM to requeue
or end the job. The submitting side is `csa_lightning.ablate.executors.slurm`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ...checks import process_rank
from ...run_folder import RunFolder, log_attempt, scheduler_job_id, stopped_by_signal
from ..job import start_training
from ..records import finish_record
from .local import last_error_line

__all__ = ["VariantJob"]


class VariantJob:
    """What a job runs in each of its tasks: start the training (resuming from the newest
    ``last.ckpt``), wait, write the record. Picklable (submitit sends it to the job)."""

    def __init__(self, run_dir: str, command: List[str], env: Dict[str, str]) -> None:
        self.run_dir, self.command, self.env = run_dir, command, env
        self._proc: Optional[subprocess.Popen] = None

    def __call__(self) -> str:
        rank = process_rank()
        run_dir = Path(self.run_dir)
        started = time.time()
        log = RunFolder(run_dir).log(rank)
        # the time-limit warning is for this process (submitit's handler); the training ignores it
        # the training runs on the job's own Python (the one its setup lines made active), not the path of
        # the interpreter that submitted it
        command = [sys.executable, *self.command[1:]]
        self._proc = start_training(run_dir, command, self.env, rank, ignore_signals=(signal.SIGUSR2,))
        code = _wait(self._proc)
        if rank != 0:
            if code not in (0, 143):
                raise RuntimeError(f"rank {rank}: {last_error_line(log) or f'exit {code}'}")
            return "done"
        log_attempt(run_dir, "end", code=code, job=scheduler_job_id())
        if stopped_by_signal(code):
            # SIGTERM from SLURM (143 through the training's handler, -15 when it landed after the handler was
            # gone, between the fit's end and the process's): preemption (SLURM requeues the job once its grace
            # time is over, but only if the job has not ended by itself before) or scancel (it is being
            # cancelled). Either way SLURM ends this job: wait for that instead of ending it as failed.
            state = _job_state(os.environ.get("SLURM_JOB_ID"))
            print(f"the training stopped on SIGTERM (job state {state}); waiting for SLURM to requeue or end the job",
                  flush=True)  # fmt: skip
            time.sleep(float(os.environ.get("CSA_SLURM_STOP_WAIT", 3600)))
            raise RuntimeError("stopped by SIGTERM and not ended by SLURM within CSA_SLURM_STOP_WAIT seconds")
        if code != 0:
            raise RuntimeError(last_error_line(log) or f"the training exited with status {code}")
        finish_record(run_dir, time.time() - started)  # a ValueError when the run is not done: the job fails
        return "done"

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on the time-limit signal (rank 0): stop the trainings through the one
        mechanism (SIGTERM, a batch boundary, exit 143), then requeue this same job; the start after
        the requeue chooses the checkpoint again."""
        import submitit

        job = os.environ.get("SLURM_JOB_ID")
        if job:  # every task's training, on every node of the job
            subprocess.run(["scancel", "--signal=TERM", job], check=False)  # the steps, not the batch shell
        if self._proc is not None:
            if _wait(self._proc, timeout=float(os.environ.get("CSA_SIGTERM_GRACE", 60)) + 10) is None:
                self._proc.kill()
                _wait(self._proc)
            log_attempt(Path(self.run_dir), "end", code=self._proc.returncode, job=scheduler_job_id(),
                        requeued="time limit")  # fmt: skip
        fresh = VariantJob(self.run_dir, self.command, self.env)
        return submitit.helpers.DelayedSubmission(fresh)

    def __getstate__(self):
        return {"run_dir": self.run_dir, "command": self.command, "env": self.env}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)


def _job_state(job: Optional[str]) -> str:
    if not job:
        return "unknown"
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return listed.stdout.strip() or "unknown"


def _wait(proc: subprocess.Popen, timeout: Optional[float] = None) -> Optional[int]:
    """Wait by polling: submitit's signal handler runs in this thread, and a blocking Popen.wait
    interrupted by it would hold the lock the handler's own wait needs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    return proc.returncode
