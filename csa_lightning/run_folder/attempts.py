"""A run folder's attempt log (``attempts.jsonl``): one JSON line per event of a training that may be
stopped and started again (a killed ablation runner, a requeued SLURM job).

"start" (written by whoever starts the training: the checkpoint resumed, with its epoch and step),
"stop" (written by the training when a signal stopped it: its epoch and step,
`csa_lightning.tasks.callbacks.RecordResult`), "end" (the exit status). One process writes at
a time: the starter before the training runs and after it ends, the training in between.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .files import RunFolder, runner_pid_from_environment

__all__ = [
    "log_attempt",
    "read_attempts",
    "redone_steps",
    "stop_cause",
    "ATTEMPT_MARKER",
    "last_attempt_lines",
    "scheduler_job_id",
    "stopped_by_signal",
]

#: the line each start writes into the training's output (stdout.log, appended to by every attempt), so
#: that what an attempt printed, its error above all, is told from the previous attempts'
ATTEMPT_MARKER = "==== csa-lightning: training starts"


def log_attempt(run_dir, event: str, **fields: Any) -> None:
    """Append one event ("start", "stop" or "end", with ``fields``) and its time to the run folder's attempt log."""
    line = json.dumps({"event": event, "time": round(time.time(), 1), **fields})
    with open(RunFolder(Path(run_dir)).attempts, "a") as handle:
        handle.write(line + "\n")


def scheduler_job_id() -> Optional[str]:
    """The SLURM job this process runs in, as squeue and ``--status`` name it: ``ARRAY_TASK`` (105_2) for a
    task of a job array, else the job id; None outside SLURM."""
    import os

    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def stopped_by_signal(code: Optional[int]) -> bool:
    """Whether a training's exit status means a SIGTERM or SIGINT stopped it (a stop to resume, not a
    failure): 143 or 130 when its handler ended it, -15 or -2 when the signal killed it outright (it landed
    after the handler was gone, e.g. between the fit's end and the process's)."""
    import signal

    stops = {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}
    return code in stops


def stop_cause() -> Dict[str, Any]:
    """Why this training is being stopped, for its "stop" event: ``{"cause": "runner ended"}`` when
    the local runner that started it is gone (this process now has another parent), else nothing."""
    import os

    runner = runner_pid_from_environment()
    if runner is not None and os.getppid() != runner:
        return {"cause": "runner ended", "runner_pid": runner}
    return {}


def last_attempt_lines(log, tail: int = 2000) -> List[str]:
    """The lines the last attempt wrote to ``log`` (all of them when no attempt marked its start)."""
    path = Path(log)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()[-tail:]
    starts = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_MARKER)]
    return lines[starts[-1] + 1 :] if starts else lines


def read_attempts(run_dir) -> List[Dict[str, Any]]:
    """The run folder's attempt events, oldest first (a line cut by a kill is skipped)."""
    path = RunFolder(Path(run_dir)).attempts
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the others still count
            continue
    return events


def redone_steps(events: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How many times the training started, where each signal stopped it, and the optimiser steps it
    trained twice: each stop's step minus the step of the checkpoint the next start resumed from
    (an epoch-boundary loader such as FFCV's redoes the interrupted epoch up to the stop)."""
    starts = [e for e in events if e.get("event") == "start"]
    redone, stops, pending = 0, [], None
    for e in events:
        if e.get("event") == "stop":
            pending = e
        elif e.get("event") == "start" and pending is not None:
            resumed_step = max(0, int((e.get("resumed") or {}).get("step", 0)))
            redone += max(0, int(pending.get("step", 0)) - resumed_step)
            stops.append({"epoch": pending.get("epoch"), "step": pending.get("step"), "resumed_step": resumed_step})
            pending = None
    return {"starts": len(starts), "stops": stops, "redone_steps": redone}
