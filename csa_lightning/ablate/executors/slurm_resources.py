"""A SLURM job's resources: the resources piece (``configs/cluster/slurm.yaml``, any key as ``--slurm.KEY``),
checked before anything is submitted, and what it becomes for submitit, for an sbatch script of one's own,
and for Lightning (nodes, devices, accelerator); sbatch's own error line."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ...checks import require
from ...errors import UsageError

__all__ = ["SlurmResources", "split_slurm_args", "parse_resources", "sbatch_error"]


@dataclass
class SlurmResources:
    """One job's resources (``configs/cluster/slurm.yaml``; any key switchable as ``--slurm.KEY``)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    #: GPUs per node; 0 for CPU jobs. One task (one Lightning rank) per GPU.
    gpus_per_node: int = 1
    #: GPUs by --gres instead (e.g. "gpu:a100:4", as some clusters require): then --gpus-per-node is not
    #: passed, and gpus_per_node only says how many ranks a node runs
    gres: Optional[str] = None
    gpus_per_task: Optional[int] = None
    #: tasks (ranks) per node for CPU jobs; with GPUs it is gpus_per_node
    tasks_per_node: int = 1
    cpus_per_task: int = 8
    #: memory per node in GB (None: the partition's default); or per GPU / per CPU (e.g. "40G"): one of the three
    mem_gb: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    #: node features (--constraint "a100&ib"), nodes to avoid (--exclude node07), a note (--comment)
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    time_min: int = 24 * 60
    #: variants running at once (the job array's throttle, %N)
    array_parallelism: int = 16
    #: seconds before the time limit at which the job is told to stop and requeue
    signal_delay_s: int = 120
    #: requeues after a time limit before the job is left failed
    max_requeues: int = 3
    #: shell lines before the job starts (module load ..., conda activate ..., source .venv/bin/activate);
    #: a line that fails stops the job (its error reaches --status)
    setup: List[str] = field(default_factory=list)
    #: the Python the job runs: None is this machine's interpreter path, or, when there are setup lines,
    #: the ``python`` they make active (so that ``conda activate`` or a venv's activate chooses it)
    python: Optional[str] = None
    #: further #SBATCH options, e.g. {"constraint": "a100", "exclude": "node07"}
    sbatch: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def positive(key: str, allow_zero: bool = False) -> None:
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value >= 1)
            require(ok, f"--slurm.{key}", value, ">= 0" if allow_zero else "a positive integer")

        for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min", "array_parallelism"):
            positive(key)
        for key in ("gpus_per_node", "signal_delay_s", "max_requeues"):
            positive(key, allow_zero=True)
        for key in ("mem_gb", "gpus_per_task"):
            if getattr(self, key) is not None:
                positive(key)
        memory = [k for k in ("mem_gb", "mem_per_gpu", "mem_per_cpu") if getattr(self, k) is not None]
        if len(memory) > 1:
            raise UsageError(f"--slurm: {' and '.join(memory)} are both set; SLURM takes one of them (keep one)")
        if self.signal_delay_s >= 60 * self.time_min:
            raise UsageError(
                f"--slurm.signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit "
                f"({self.time_min} min): the stop signal would come before the job starts"
            )
        if isinstance(self.setup, str):
            raise UsageError(
                f"--slurm.setup is a list of shell lines, got the string {self.setup!r}; write it as a list: "
                f"--slurm.setup '[\"{self.setup}\"]' (or setup: [...] in the resources piece)"
            )

    @property
    def tasks(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    def lightning_args(self) -> List[str]:
        """What Lightning validates against the job's environment (it infers neither)."""
        args = ["--trainer.num_nodes", str(self.nodes), "--trainer.devices", str(self.tasks)]
        return args + ["--trainer.accelerator", "gpu" if self.gpus_per_node > 0 else "cpu"]

    def _job_options(self) -> Dict[str, Any]:
        """What one job asks SLURM for, in submitit's (underscore) spelling of sbatch's options."""
        options: Dict[str, Any] = {
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks,
            "cpus_per_task": self.cpus_per_task,
            "time": self.time_min,
        }
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                options[key] = getattr(self, key)
        if self.gres:
            options["gres"] = self.gres
        elif self.gpus_per_node > 0:
            options["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            options["mem"] = f"{self.mem_gb}GB"
        for key in ("gpus_per_task", "mem_per_gpu", "mem_per_cpu", "constraint", "exclude", "comment"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return options

    def sbatch_options(self) -> Dict[str, Any]:
        """The same resources as ``#SBATCH`` options, for a job script of one's own (python -m
        csa_lightning.slurm); the executor goes through submitit's parameters instead."""
        return {**{key.replace("_", "-"): value for key, value in self._job_options().items()}, **self.sbatch}

    def setup_lines(self) -> List[str]:
        """The setup lines, run so that the first one that fails ends the job (bash's ``set -e``)."""
        return ["set -e", *self.setup, "set +e"] if self.setup else []

    def job_python(self) -> str:
        """The command that starts Python on the node (see ``python``)."""
        if self.python:
            return self.python
        return "python" if self.setup else shlex.quote(sys.executable)

    def submitit_parameters(self) -> Dict[str, Any]:
        return {
            **self._job_options(),
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
            "setup": self.setup_lines(),
            "additional_parameters": dict(self.sbatch),
        }


def split_slurm_args(argv: List[str]) -> Tuple[List[str], List[str]]:
    """``--slurm FILE`` and ``--slurm.KEY VALUE`` (or with =) apart from the rest."""
    rest, slurm = [], []
    items = iter(argv)
    for item in items:
        if item == "--slurm" or item.startswith("--slurm."):
            slurm.append(item)
            if "=" not in item:
                slurm.append(next(items, ""))
        elif item.startswith("--slurm="):
            slurm.append(item)
        else:
            rest.append(item)
    return rest, slurm


def sbatch_error(stderr: str, default: str) -> str:
    """sbatch's own reason from its output: the last line that is not its "(Try sbatch --help ...)" hint
    (an unknown option printed only that hint before), without the "sbatch: error: " prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.lstrip("(").startswith("Try ")]
    return (useful or lines or [default])[-1].removeprefix("sbatch: error: ").removeprefix("sbatch: ")


def parse_resources(slurm_argv: List[str]):
    """The resources piece and its command-line keys, through jsonargparse (one line on a bad key)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--slurm", type=SlurmResources, default=SlurmResources())
    try:
        parsed = parser.parse_args(slurm_argv)
    except Exception as err:  # noqa: BLE001 - jsonargparse's errors vary; each is a bad key or value here
        from ...config_errors import parse_error_line

        if 'Parser key "slurm.setup"' in str(err):
            raise UsageError(
                '--slurm.setup is a list of shell lines: write --slurm.setup \'["module load cuda", "source '
                ".venv/bin/activate\"]' (or setup: [...] in the resources piece)"
            ) from None
        raise UsageError(f"--slurm: {parse_error_line(err)} (keys: see configs/cluster/slurm.yaml)") from None
    return parser.instantiate_classes(parsed).slurm
