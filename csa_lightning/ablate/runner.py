"""The ablation runner's command line: plan the variants, build each one's configuration (a bad key
fails before anything runs), take the ablation's lock, merge the records runs left, refuse stale
results, hand what is missing to an executor (local processes or SLURM jobs), write the report.
``--status`` and ``--cancel`` look at (or stop) what an executor still has."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..attention import PAPER_ATTENTIONS, attention_name
from ..checks import require_writable_folder
from ..errors import ToolParser, UsageError, command, list_option, non_empty
from ..run_folder import AblationFolder, RunFolder, training_environment
from ..run_switches import parse_only, stop_after_parsing
from .executors import EXECUTORS, Executor, Run, Status, executor_class
from .executors.slurm_resources import parse_resources, split_slurm_args
from .job import fit_command
from .plan import (
    Resolved,
    Variant,
    _option_keys,
    attach_backbones,
    check_sweep_keys,
    check_variants,
    plan_variants,
    sweep_key,
)
from .records import folder_records, forget, keep_stale, load_results, merge_records, stale_variants, stamp
from .report import write_report

__all__ = ["main"]


def _seed(text: str) -> int:
    """One seed: an integer Lightning's seed_everything takes (0 .. 2**32 - 1)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"seeds are integers, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise ValueError(f"seeds are integers from 0 to 4294967295, got {value}")
    return value


def _sweeps(items: Sequence[str]) -> Dict[str, List[str]]:
    """``--sweep KEY=V1,V2`` items as {key: values}; the same key twice adds its values in order,
    a value listed twice is refused, and the config's own spelling of a block option
    (``model.net.attention_options.X``, ``model.net.placement``) means the short one."""
    sweeps: Dict[str, List[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip() or not all(v.strip() for v in values.split(",")):
            raise UsageError(f"--sweep expects KEY=V1,V2 with a key and no empty value, got '{item}'")
        key = sweep_key(key.strip())
        merged = sweeps.setdefault(key, [])
        for value in (v.strip() for v in values.split(",")):
            if value in merged:
                raise UsageError(f"--sweep {key} lists {value} twice; give each value once")
            merged.append(value)
    return sweeps


def _parse(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    from . import __doc__ as package_doc

    parser = ToolParser(prog=PROG, description=package_doc.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="base config (any cli.py fit config)")
    list_option(parser, "--attentions", item_type=attention_name, default=PAPER_ATTENTIONS, metavar="A,B",
                help="the blocks to compare, comma-separated (repeatable: the lists add up)")  # fmt: skip
    list_option(parser, "--seeds", item_type=_seed, default=[0], metavar="S1,S2",
                help="seeds, comma-separated (repeatable: the lists add up)")  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for the runs, their merged results and the report")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="an extra axis (repeatable; the same key twice adds its values)")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (one GPU each when there are GPUs)")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="local",
                        help="local: a process each, here; slurm: a SLURM job each (see --slurm)")  # fmt: skip
    parser.add_argument("--slurm", metavar="FILE", default=None,
                        help="--executor slurm: the resources piece (configs/cluster/slurm.yaml); each of its keys "
                        "is also an option, --slurm.KEY VALUE")  # fmt: skip
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--status", action="store_true",
                       help="list each variant (done / queued / running / requeued / failed ...) and exit")  # fmt: skip
    state.add_argument("--cancel", action="store_true", help="cancel the grid's queued and running jobs and exit")
    parser.add_argument("--wait", action="store_true",
                        help="slurm: stay until every job has ended, merging results as they come")  # fmt: skip
    parser.add_argument("--poll", type=float, default=30.0, help="slurm --wait: seconds between looks at squeue")
    parser.add_argument(
        "--metric",
        default=None,
        type=non_empty,
        help="the validation metric the report compares (default: what the checkpoints monitor: val/top1 for "
        "classification, val/box_AP for detection)",
    )
    parser.add_argument("--baseline", default="none", type=non_empty,
                        help="the variant every other one is compared with, by seed")  # fmt: skip
    parser.add_argument(
        "--backbone-runs",
        default=None,
        metavar="DIR",
        help="a classification ablation's --out: each variant's backbone is its {attention}_seed{s} run's checkpoint",
    )
    stale = parser.add_mutually_exclusive_group()
    stale.add_argument(
        "--rerun", action="store_true", help="train again the variants whose resolved config changed since they ran"
    )
    stale.add_argument(
        "--keep-stale",
        action="store_true",
        help="keep the results of variants whose resolved config or code changed (e.g. a new Lightning default, "
        "an edited block) as they are",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args(["--help"])
    argv, slurm_argv = split_slurm_args(argv)
    args, extra = parser.parse_known_args(argv)
    if slurm_argv and args.executor != "slurm":
        raise UsageError(f"{slurm_argv[0]} is an option of --executor slurm; add --executor slurm")
    args.slurm = parse_resources(slurm_argv) if args.executor == "slurm" else None
    if not Path(args.config).is_file():
        raise UsageError(f"base config not found: {args.config}; pass a cli.py fit config with --config")
    require_writable_folder("--out", args.out)
    if args.parallel < 1:
        raise UsageError(f"--parallel must be a positive integer (runs at once), got {args.parallel}")
    if not math.isfinite(args.poll) or args.poll <= 0:
        raise UsageError(f"--poll must be a positive number of seconds, got {args.poll}")
    args.sweep = _sweeps(args.sweep)
    return args, extra


PROG = "python -m csa_lightning.ablate"


@command
def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """``python -m csa_lightning.ablate``: plan, check, run (or submit) what is missing, report; returns the records."""
    args, extra = _parse(argv)
    attentions, seeds, sweeps = args.attentions, args.seeds, args.sweep
    check_sweep_keys(sweeps, attentions)

    out = Path(args.out)
    variants = plan_variants(attentions, seeds, sweeps)
    executor = executor_class(args.executor)(args)
    extra = [*executor.run_args(), *extra]  # nodes and devices on SLURM: part of each run's configuration
    dry_run = parse_only()  # CSA_PARSE_ONLY: the plan check below is this command's dry run
    if args.backbone_runs and not dry_run:
        attach_backbones(variants, Path(args.backbone_runs))
    if (args.status or args.cancel) and not dry_run:
        return _status_or_cancel(args, out, variants, executor)
    # every variant builds, before the first one trains; a dry run builds the first with every extra
    # argument (the others differ only in the attention, seed and swept keys checked above) and reads
    # no backbone runs, scheduler or data
    checked = check_variants(args.config, variants[:1] if dry_run else variants, extra)
    if checked.errors:
        more = f" (and {len(checked.errors) - 1} more variant(s))" if len(checked.errors) > 1 else ""
        raise UsageError(f"{checked.errors[0]}{more}")
    stop_after_parsing(PROG)
    resolved = checked.resolved
    out.mkdir(parents=True, exist_ok=True)
    executor.check(out)  # e.g. SLURM refusing the resources: before anything is submitted
    with _runner_lock(out):
        return _run_plan(args, extra, out, variants, resolved, executor)


class _runner_lock:
    """One runner per --out: a second one would train every variant again into the same folders."""

    def __init__(self, out: Path) -> None:
        self.path = AblationFolder(out).lock

    def __enter__(self) -> "_runner_lock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                from ..checks import process_alive

                holder = self.path.read_text().strip() if self.path.exists() else ""
                if holder.isdigit() and process_alive(int(holder)):
                    raise UsageError(
                        f"another ablation runner (pid {holder}) is using {self.path.parent}; "
                        f"wait for it to finish or choose another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # its runner is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        raise UsageError(f"cannot take the lock {self.path}; remove it if no runner is using {self.path.parent}")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _run_plan(args, extra: List[str], out: Path, variants: List[Variant], resolved: Dict[str, Resolved],
              executor: Executor) -> List[Dict[str, Any]]:  # fmt: skip
    merge_records(out)  # what runs elsewhere finished since the last look
    live = executor.live(out, variants)  # queued or running: never started twice
    stale = stale_variants(out, variants, resolved)
    busy = sorted(set(stale) & set(live)) if args.executor != "local" else sorted(live)
    if busy:
        name = busy[0]
        if args.executor == "local":
            pid = str(live[name].job).split()[1]
            raise UsageError(
                f"{len(busy)} variant(s) in {out} are still being trained by another process ({name}: "
                f"pid {pid}), left by a runner that was stopped; wait for them or stop them (kill {pid}), then run "
                "this again"
            )
        raise UsageError(
            f"{len(busy)} variant(s) in {out} ran with another configuration or code and still have a job "
            f"({name}: job {live[name].job}); cancel them first (--cancel) or wait for them"
        )
    if stale and not (args.rerun or args.keep_stale):
        first = next(iter(stale))
        raise UsageError(
            f"{len(stale)} variant(s) in {out} ran with another configuration or code ({first}: {stale[first]}"
            f"{'; ...' if len(stale) > 1 else ''}); pass --rerun to train them again, --keep-stale to keep "
            "their results, or choose another --out"
        )
    if stale and args.keep_stale:
        print(f"ablation: --keep-stale: keeping {len(stale)} result(s) made with another config or code", flush=True)
        keep_stale(out, {v.name: v for v in variants}, resolved, list(stale))
    elif stale:
        print(f"ablation: --rerun: forgetting {len(stale)} variant(s) that ran with another config or code", flush=True)
        forget(out, list(stale))
    done = {r["variant"] for r in load_results(out)}
    todo = [v for v in variants if v.name not in done and v.name not in live]
    print(
        f"ablation: {len(variants)} variants, {len(done & {v.name for v in variants})} already finished, "
        f"{f'{len(live)} queued or running, ' if live else ''}"
        f"{len(todo)} to {'run' if args.executor == 'local' else 'submit'} -> {out}",
        flush=True,
    )

    from ..models.summary import count_cost  # noqa: F401  (fail early if the stack is broken)

    runs = []
    for v in todo:
        run_dir = AblationFolder(out).run(v.name).path
        stamp(run_dir, v, resolved[v.name])
        env = training_environment(RunFolder(run_dir))
        command = fit_command(v.cli_args(_option_keys(v.attention)), args.config, extra, run_dir)
        runs.append(Run(v, run_dir, command, env))

    def report() -> List[Dict[str, Any]]:
        return write_report(out, merge_records(out), Path(args.config).stem, args.metric, args.baseline)

    failures = executor.submit(out, runs, report)
    if args.executor != "local" and args.wait:
        failures = _wait(args, out, variants, executor, report)
    rows = report()
    if rows:
        print((out / "report.md").read_text())
    if failures:
        print(f"error: {len(failures)} run(s) failed: {', '.join(failures)}; rerun the same command to retry them",
              file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(1)
    if args.executor != "local" and not args.wait and (runs or live):
        print("ablation: the jobs run on their own; add --status to see them, run the same command later to "
              "merge their results into the report (or pass --wait)", flush=True)  # fmt: skip
    return rows


def _wait(args, out: Path, variants: Sequence[Variant], executor: Executor, report) -> List[str]:
    """Stay until no job of the grid is queued or running; merge and report as records come."""
    import time

    seen = len(load_results(out))
    while True:
        live = executor.live(out, variants)
        merged = merge_records(out)
        if len(merged) != seen:
            seen = len(merged)
            report()
            print(f"    {seen}/{len(variants)} finished", flush=True)
        if not live:
            break
        time.sleep(args.poll)
    done = {r["variant"] for r in load_results(out)}
    return [v.name for v in variants if v.name not in done]


def variant_statuses(out: Path, variants: Sequence[Variant], executor: Executor) -> Dict[str, Status]:
    """Each variant's state: done (a record), what the executor has live, or what its folder says."""
    done = {r["variant"]: r for r in load_results(out)}
    done.update({r["variant"]: r for r in folder_records(out)})
    live = executor.live(out, variants)
    statuses = {}
    for v in variants:
        if v.name in done:
            attempts = done[v.name].get("attempts") or {}
            redone = attempts.get("redone_steps", 0)
            detail = (
                f"completed; {attempts.get('starts', 1)} start(s), {redone} step(s) redone" if attempts else "completed"
            )
            log = str(AblationFolder(out).run(v.name).log())
            statuses[v.name] = Status("done", job=executor.status(out, v).job, log=log, detail=detail)
        elif v.name in live:
            statuses[v.name] = live[v.name]
        else:
            statuses[v.name] = executor.status(out, v)
    return statuses


def _status_or_cancel(args, out: Path, variants: Sequence[Variant], executor: Executor) -> List[Dict[str, Any]]:
    if not out.is_dir():
        raise UsageError(f"--out {out} does not exist; nothing was run there (check --out)")
    if args.cancel:
        stopped = executor.cancel(out, variants)
        print(f"ablation: cancelled {len(stopped)} run(s){': ' + ', '.join(stopped) if stopped else ''}", flush=True)
        return []
    statuses = variant_statuses(out, variants, executor)
    width = max(len(v.name) for v in variants)
    print(f"{'variant':<{width}}  {'state':<11}  {'job':<10}  log / detail")
    for v in variants:
        s = statuses[v.name]
        detail = f"  {s.detail}" if s.detail else ""
        print(f"{v.name:<{width}}  {s.state:<11}  {s.job or '-':<10}  {s.log or '-'}{detail}")
    counts: Dict[str, int] = {}
    for s in statuses.values():
        counts[s.state] = counts.get(s.state, 0) + 1
    print("ablation: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), flush=True)
    return [{"variant": name, **vars(s)} for name, s in statuses.items()]
