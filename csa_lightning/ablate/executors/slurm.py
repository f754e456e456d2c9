"""The SLURM executor: each variant one job, submitted through submitit as one job array with a
throttle (``array_parallelism``), its resources from one config piece (``configs/cluster/slurm.yaml``).

Inside a job every task (``srun``, one per GPU) starts the variant's ``cli.py fit``; Lightning reads
the ranks, the node list and the master port from SLURM (its ``SLURMEnvironment``), and the runner
passes ``--trainer.num_nodes`` and ``--trainer.devices`` from the same resources, so a user never
writes them twice. The checkpoint to resume from is chosen when the job starts.

Stopping and requeueing, on the project's one stop-and-resume mechanism (SIGTERM: the training stops
at a batch boundary and exits 143; its newest epoch-end ``last.ckpt`` is what a start resumes):

- **time limit**: ``signal_delay_s`` before it, SLURM sends SIGUSR2 (``#SBATCH --signal``) to the
  job's tasks. The trainings ignore it; submitit, in the task that starts rank 0, calls
  `csa_lightning.ablate.executors.slurm_job.VariantJob.checkpoint`, which sends SIGTERM to the job's
  processes (``scancel --signal``), waits for rank 0's training to stop and hands submitit the same job to requeue
  (``scontrol requeue``), at most ``max_requeues`` times.
- **preemption** (``PreemptMode=REQUEUE``): SLURM sends SIGTERM itself, waits the partition's
  ``GraceTime`` and requeues the job; the trainings stop as above.
- **any other failure** (a Python error, a bad value): the job ends as failed and stays so; ``--status``
  shows the error's last line, and re-running the runner's command submits it again.

Status comes from ``squeue`` (queued / running) and the run folders' own files (record, attempt log,
output): not from ``sacct``, which many clusters (and the test cluster) do not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ...errors import UsageError
from ...run_folder import AblationFolder, RunFolder, read_attempts
from ...third_party import make_sbatch_string
from ..plan import Variant
from . import Executor, Run, Status
from .local import last_error_line, status_from_attempts
from .slurm_job import VariantJob
from .slurm_resources import SlurmResources, sbatch_error

__all__ = ["SlurmExecutor", "requeues_used_up"]

#: in each run folder: the job that trains it (id, log paths, when submitted)


def _requeue_reason(events: Sequence[Dict[str, Any]], resources: Dict[str, Any]) -> str:
    """Why a job that ran is pending again, from its attempt log's last end."""
    ends = [e for e in events if e.get("event") == "end"]
    if ends and ends[-1].get("requeued") == "time limit":
        used = sum(1 for e in ends if e.get("requeued") == "time limit")
        return f"requeued at its time limit, {used} of {resources.get('max_requeues', '?')} requeues"
    return "requeued after SIGTERM: preempted, or scontrol requeue"


def requeues_used_up(status: Status, events: Sequence[Dict[str, Any]], resources: Dict[str, Any]) -> Status:
    """A job that is no longer queued or running, whose last start ended at its time limit: SLURM did not
    requeue it because the requeues were used up (it said only "stopped ... run again to resume")."""
    ends = [e for e in events if e.get("event") == "end"]
    if not ends or ends[-1].get("requeued") != "time limit":
        return status
    limits = sum(1 for e in ends if e.get("requeued") == "time limit")
    allowed = resources.get("max_requeues")
    if allowed is None or limits <= allowed:
        return status
    minutes = resources.get("time_min")
    status.state = "stopped"
    status.detail = (
        f"reached its time limit ({minutes} min) {limits} times: the {allowed} requeues are used up; give it a "
        "longer --slurm.time_min or --slurm.max_requeues (or fewer epochs per start), then run again to resume"
    )
    return status


def _load_resources(args) -> SlurmResources:
    return args.slurm if isinstance(args.slurm, SlurmResources) else SlurmResources(**(args.slurm or {}))


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, args) -> None:
        super().__init__(args)
        self.resources = _load_resources(args)

    def run_args(self) -> List[str]:
        return self.resources.lightning_args()

    # ---- checks before anything is submitted

    def check(self, out: Path) -> None:
        for tool in ("sbatch", "squeue", "scancel"):
            if shutil.which(tool) is None:
                raise UsageError(
                    f"--executor slurm needs SLURM's {tool} on the PATH; run the runner on the cluster's "
                    "login node (make slurm starts a one-node SLURM on this machine)"
                )
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UsageError("--executor slurm needs submitit; pip install 'csa-lightning[slurm]'") from None
        folder = str(AblationFolder(out).slurm_jobs / "%j")
        script = make_sbatch_string(command="true", folder=folder, job_name="csa-check",
                                    **self.resources.submitit_parameters())  # fmt: skip
        test = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True)
        if test.returncode != 0:
            reason = sbatch_error(test.stderr, "sbatch refused the request")
            raise UsageError(
                f"SLURM refuses this job's resources ({reason}); change them in the resources piece "
                "or with --slurm.KEY (sinfo lists partitions and nodes; nothing was submitted)"
            )

    # ---- state

    def _jobs(self, out: Path, variants: Sequence[Variant]) -> Dict[str, Dict[str, Any]]:
        jobs = {}
        for v in variants:
            path = AblationFolder(out).run(v.name).slurm_job
            if path.exists():
                jobs[v.name] = json.loads(path.read_text())
        return jobs

    @staticmethod
    def _squeue(job_ids: Sequence[str]) -> Dict[str, str]:
        """{job id: state} of the given jobs still known to squeue (array tasks as ARRAY_TASK)."""
        if not job_ids:
            return {}
        arrays = sorted({j.split("_")[0] for j in job_ids})
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
                                capture_output=True, text=True)  # fmt: skip
        states = {}
        for line in listed.stdout.splitlines():
            job, _, state = line.strip().partition(" ")
            states[job] = state
        return states

    def live(self, out: Path, variants: Sequence[Variant]) -> Dict[str, Status]:
        jobs = self._jobs(out, variants)
        states = self._squeue([j["job_id"] for j in jobs.values()])
        live = {}
        for name, job in jobs.items():
            state = states.get(job["job_id"])
            if state is None or state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
                continue
            events = read_attempts(AblationFolder(out).run(name).path)
            detail = f"squeue: {state}"
            if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
                kind = "running"
            elif any(e.get("event") == "start" for e in events):
                kind = "requeued"  # pending again after it ran: preempted or timed out
                detail = f"{_requeue_reason(events, job.get('resources') or {})} ({detail})"
            else:
                kind = "queued"
            live[name] = Status(kind, job=job["job_id"], log=str(AblationFolder(out).run(name).log()), detail=detail)
        return live

    def status(self, out: Path, variant: Variant) -> Status:
        run_dir = AblationFolder(out).run(variant.name).path
        job = self._jobs(out, [variant]).get(variant.name)
        status = status_from_attempts(run_dir)
        if job is None:
            return status
        status.job = job["job_id"]
        if status.state == "failed" and not status.detail.startswith("error") and "Error" not in status.detail:
            # nothing in the training's output: the job's own log (setup lines, submitit) may say why
            status.detail = last_error_line(Path(job["stderr"])) or status.detail
        if status.state == "stopped" and "SIGTERM" in status.detail:
            # not live: SLURM did not requeue the job after the stop
            status.detail = (
                "stopped by SIGTERM and not requeued: cancelled (scancel) or ended by SLURM; run again to resume"
            )
        events = read_attempts(run_dir)
        if not events:
            status.log = job["stderr"]
            status.detail = last_error_line(Path(job["stderr"])) or "the job ended before the training started"
        return requeues_used_up(status, events, job.get("resources") or {})

    # ---- submit and cancel

    def submit(self, out: Path, runs: Sequence[Run], finished) -> List[str]:
        import submitit

        if not runs:
            return []
        self.check(out)
        executor = submitit.SlurmExecutor(folder=str(AblationFolder(out).slurm_jobs / "%j"),
                                          max_num_timeout=self.resources.max_requeues,
                                          python=self.resources.job_python())  # fmt: skip
        executor.update_parameters(job_name=f"csa-{out.name}"[:60], **self.resources.submitit_parameters())
        with executor.batch():
            jobs = [executor.submit(VariantJob(str(r.run_dir), r.command, r.env)) for r in runs]
        for run, job in zip(runs, jobs):
            about = {"job_id": job.job_id, "submitted": round(time.time(), 1), "stdout": str(job.paths.stdout),
                     "stderr": str(job.paths.stderr), "resources": asdict(self.resources)}  # fmt: skip
            RunFolder(run.run_dir).slurm_job.write_text(json.dumps(about, indent=1))
        array = jobs[0].job_id.split("_")[0]
        print(f"ablation: submitted {len(jobs)} job(s) as SLURM array {array} "
              f"(at most {self.resources.array_parallelism} at once)", flush=True)  # fmt: skip
        return []

    def cancel(self, out: Path, variants: Sequence[Variant]) -> List[str]:
        live = self.live(out, variants)
        if live:
            subprocess.run(["scancel", *sorted({str(s.job) for s in live.values()})], check=False)
        return sorted(live)
