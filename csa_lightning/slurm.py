"""One ``cli.py fit`` run as a SLURM job, from the same resources piece as the ablation runner's jobs.

    python -m csa_lightning.slurm --slurm configs/cluster/slurm.yaml [--slurm.partition gpu] \\
        [--script run.sbatch] [--submit] -- fit --config configs/csa_r101.yaml [more cli.py arguments]

Writes an sbatch script (to ``--script``, or standard output) and, with ``--submit``, submits it. The
script runs one task per GPU with ``srun`` (Lightning reads the ranks from SLURM and checks them
against the ``--trainer.num_nodes`` / ``--trainer.devices`` the script passes from the piece) and
starts with ``--ckpt_path auto``: the newest ``last.ckpt`` of this config's run when there is one,
so a requeued job resumes. Time limit: ``signal_delay_s`` before it the script is sent SIGUSR2,
stops the training through SIGTERM (the project's one stop-and-resume mechanism) and requeues
itself, at most ``max_requeues`` times. Preemption or ``scancel``: SLURM's SIGTERM stops the training;
the script waits for SLURM to end the job (and to requeue it when preempted).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .checks import require_writable_file
from .errors import ToolParser, UsageError, command, non_empty

__all__ = ["sbatch_script", "main"]


def sbatch_script(resources, cli_args: Sequence[str], job_name: str = "csa-fit") -> str:
    """The job script: #SBATCH lines from ``resources`` (a SlurmResources), its set-up lines, the
    signal handling, and ``srun python -m csa_lightning.cli ARGS`` with the trainer's size and
    ``--ckpt_path auto``."""
    options = {"job-name": job_name, "output": f"{job_name}-%j.out", "open-mode": "append", "requeue": None,
               # B: to this script only; it passes SIGTERM on to the training
               "signal": f"B:USR2@{resources.signal_delay_s}", **resources.sbatch_options()}  # fmt: skip
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{key}" + ("" if value is None else f"={value}") for key, value in options.items()]
    lines += ["", "# set-up (the resources piece's setup lines; the first that fails ends the job)",
              *resources.setup_lines(), ""]  # fmt: skip
    # this Python (a cluster's login and compute nodes share the file system, so its venv too), or the
    # python the setup lines make active
    command = ["-m", "csa_lightning.cli", *cli_args, *resources.lightning_args(), "--ckpt_path", "auto"]
    lines += [
        "time_limit() {  # SIGUSR2, signal_delay_s before the time limit",
        '    scancel --signal=TERM "$SLURM_JOB_ID"   # every task: a batch boundary, exit 143',
        '    wait "$TRAINING"',
        f'    if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {resources.max_requeues} ]; then',
        '        scontrol requeue "$SLURM_JOB_ID"',
        "    else",
        f'        echo "error: time limit reached {resources.max_requeues} times; not requeued" >&2',
        "    fi",
        "    exit 0",
        "}",
        "stopped() {  # SIGTERM: preempted (SLURM requeues the job after its grace time) or scancel",
        '    wait "$TRAINING"',
        "    sleep 3600 & wait $!   # let SLURM end the job: one that ends by itself is not requeued",
        "}",
        "trap time_limit USR2",
        "trap stopped TERM",
        f"srun --kill-on-bad-exit=1 {resources.job_python()} {shlex.join(command)} &",
        "TRAINING=$!",
        'wait "$TRAINING"',
        "exit $?",
    ]
    return "\n".join(lines) + "\n"


@command
def main(argv: Optional[List[str]] = None) -> int:
    """``python -m csa_lightning.slurm [OPTIONS] -- fit ...``: print, write or submit the job script."""
    from .ablate.executors.slurm_resources import parse_resources, sbatch_error, split_slurm_args

    argv = list(sys.argv[1:] if argv is None else argv)
    at = argv.index("--") if "--" in argv else len(argv)
    own, cli_args = argv[:at], argv[at + 1 :]
    own, slurm_argv = split_slurm_args(own)
    parser = ToolParser(
        prog="python -m csa_lightning.slurm",
        description=__doc__.split("\n\n")[0],
        epilog="the cli.py arguments follow --, e.g. -- fit --config configs/csa_r101.yaml",
    )
    parser.add_argument("--script", default=None, help="write the job script here (default: standard output)")
    parser.add_argument("--submit", action="store_true", help="submit it with sbatch (needs --script)")
    parser.add_argument("--job-name", default="csa-fit", type=non_empty)
    parser.add_argument(
        "--slurm",
        metavar="FILE",
        default=None,
        help="the resources piece (configs/cluster/slurm.yaml); each key also as --slurm.KEY VALUE",
    )
    args = parser.parse_args(own)
    if at == len(argv):
        raise UsageError("give the cli.py arguments after --, e.g. -- fit --config configs/csa_r101.yaml")
    if not cli_args or cli_args[0] != "fit":
        raise UsageError("the job runs cli.py fit: the arguments after -- start with fit")
    if args.submit and not args.script:
        raise UsageError("--submit needs --script FILE (the job script sbatch reads)")
    if args.script:
        require_writable_file("--script", args.script)
    resources = parse_resources(slurm_argv)
    script = sbatch_script(resources, cli_args, args.job_name)
    if not args.script:
        print(script, end="")
        return 0
    Path(args.script).write_text(script)
    if args.submit:
        done = subprocess.run(["sbatch", "--parsable", args.script], capture_output=True, text=True)
        if done.returncode != 0:
            reason = sbatch_error(done.stderr, "sbatch failed")
            raise UsageError(f"SLURM refuses the job ({reason}); change the resources piece or --slurm.KEY")
        print(f"submitted job {done.stdout.strip()}: {args.script}; its output goes to {args.job_name}-<job id>.out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
