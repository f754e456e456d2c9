"""Fair ablations: every (attention, sweep values, seed) variant of one base config, then a report.

    python -m csa_lightning.ablate --config configs/demo/digits_csa.yaml \\
        --attentions none,se,cbam,eca,gct,csa --seeds 0,1,2 --out runs/ablation-digits \\
        [--sweep model.placement=stage_end,every_block] [--sweep model.attention_options.contiguity=l2,hybrid] \\
        [--parallel 4] [--any.other cli --arguments passed to every run]

Every variant runs ``cli.py fit`` on the base config, changing only the attention (whose
``placement`` and ``attention_options`` reset to the new block's defaults unless a sweep sets
them), the seed and the swept keys; every other argument after the known ones goes to every run.
Each run is its own process under ``OUT/runs/<variant>/``; ``--parallel N`` runs N at once,
each on its own GPU when there are GPUs (CUDA_VISIBLE_DEVICES).

Each finished run appends a record to ``OUT/results.json`` (rewritten atomically): config hash,
attention, options, seed, final and best validation metrics, params, GMAC, train and inference
images/s, wall time, checkpoint path, git commit. Killed and restarted with the same command, the
runner skips finished variants, resumes an interrupted one from its ``last.ckpt``, and neither
loses nor duplicates a record. ``OUT/report.md``, ``report.csv`` and ``report.png`` summarise
the finished variants (mean and std over seeds) after every run.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Variant", "plan_variants", "load_results", "write_report", "main"]

RESULT_FILE = "results.json"


@dataclass
class Variant:
    attention: str
    seed: int
    sweep: Dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The variant without its seed: what the report averages over seeds."""
        parts = [self.attention] + [f"{k.split('.')[-1]}={v}" for k, v in sorted(self.sweep.items())]
        return " ".join(parts)

    @property
    def name(self) -> str:
        safe = "_".join([self.attention] + [f"{k.split('.')[-1]}-{v}" for k, v in sorted(self.sweep.items())])
        return f"{safe}_seed{self.seed}".replace("/", "-")

    def cli_args(self, attention_option_keys: Sequence[str]) -> List[str]:
        """The arguments that make this variant out of the base config.

        The user's keys (model.placement, model.attention_options.X) name the network's options;
        they are set together as one JSON merge into ``model.net`` (null resets the placement to
        the block's default and the options to none: jsonargparse turns a nested null into "None").
        """
        options = {
            k.split(".", 2)[2]: _yaml_scalar(v)
            for k, v in self.sweep.items()
            if k.startswith("model.attention_options.") and k.split(".", 2)[2] in attention_option_keys
        }
        placement = _yaml_scalar(self.sweep["model.placement"]) if "model.placement" in self.sweep else None
        net = {"attention": self.attention, "placement": placement, "attention_options": options or None}
        args = ["--model.net", json.dumps({"init_args": net}), "--seed_everything", str(self.seed)]
        for key, value in self.sweep.items():
            if key != "model.placement" and not key.startswith("model.attention_options."):
                args += [f"--{key}", value]
        return args


def _yaml_scalar(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def _option_keys(attention: str) -> List[str]:
    """Constructor options a block accepts, so a sweep over e.g. contiguity reaches CSA only."""
    import inspect

    from .attention import resolve_attention

    cls = resolve_attention(attention)
    if cls is None:
        return []
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "channels")]


def plan_variants(attentions: Sequence[str], seeds: Sequence[int], sweeps: Dict[str, List[str]]) -> List[Variant]:
    """Every combination; an attention_options sweep applies only to blocks that take the option."""
    variants, seen = [], set()
    for attention in attentions:
        keys = _option_keys(attention)
        axes = {
            k: v
            for k, v in sweeps.items()
            if not k.startswith("model.attention_options.") or k.split(".", 2)[2] in keys
        }
        if attention == "none":
            axes.pop("model.placement", None)
        for values in itertools.product(*axes.values()) if axes else [()]:
            for seed in seeds:
                v = Variant(attention, seed, dict(zip(axes.keys(), values)))
                if v.name not in seen:
                    seen.add(v.name)
                    variants.append(v)
    return variants


def config_hash(base_config: str, variant_args: Sequence[str], extra: Sequence[str]) -> str:
    text = Path(base_config).read_text() + "\0" + " ".join(variant_args) + "\0" + " ".join(extra)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------
# results file


def load_results(out: Path) -> List[Dict[str, Any]]:
    path = out / RESULT_FILE
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is corrupt ({err}); restore it or move it away to start the ablation afresh"
        ) from None


def _append_result(out: Path, record: Dict[str, Any]) -> None:
    records = [r for r in load_results(out) if r["variant"] != record["variant"]]
    records.append(record)
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(records, indent=2))
    os.replace(tmp, out / RESULT_FILE)  # atomic: a kill leaves the old file or the new one


# ------------------------------------------------------------------------------------------
# one run


def _run_variant(
    variant: Variant, base_config: str, extra: Sequence[str], out: Path, device: Optional[int]
) -> subprocess.Popen:
    run_dir = out / "runs" / variant.name
    run_dir.mkdir(parents=True, exist_ok=True)
    # what this folder's checkpoints were trained with: a later runner resumes them only if it matches
    (run_dir / "config_hash").write_text(_variant_hash(variant, base_config, extra))
    args = variant.cli_args(_option_keys(variant.attention))
    cmd = [
        sys.executable,
        "-m",
        "csa_lightning.cli",
        "fit",
        "--config",
        base_config,
        *args,
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "logs",
        "--trainer.callbacks+=csa_lightning.tasks.callbacks.RecordResult",
        *extra,
    ]
    from .tasks.checkpoints import newest_checkpoint

    last = newest_checkpoint(str(run_dir), last_only=True)
    if last is not None:
        cmd += ["--ckpt_path", str(last)]
    env = dict(os.environ, CSA_RESULT_PATH=str(run_dir / "result.json"))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    with open(run_dir / "stdout.log", "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _record_for(variant: Variant, base_config: str, extra: Sequence[str], out: Path, wall: float) -> Dict[str, Any]:
    from .tasks.callbacks import run_info

    run_dir = out / "runs" / variant.name
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "variant": variant.name,
        "group": variant.group,
        "config_hash": _variant_hash(variant, base_config, extra),
        "attention": variant.attention,
        "sweep": variant.sweep,
        "seed": variant.seed,
        **result,
        "wall_s": round(wall, 1),
        "git_commit": run_info()["git_commit"],
    }


# ------------------------------------------------------------------------------------------
# report


def _mean_std(values: List[float]) -> Tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _final_top1(record: Dict[str, Any]) -> float:
    final = record.get("final_val_top1")
    return record["best_val_top1"] if final is None else final


def summarise(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per variant group: mean and sample std over seeds of the error, and the costs."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    rows = []
    for group, items in groups.items():
        # the last epoch's error, as papers report it (picking each seed's best epoch on the
        # validation set would flatter every variant); best_val_top1 stays in results.json
        err_mean, err_std = _mean_std([100.0 * (1.0 - _final_top1(r)) for r in items])
        rows.append(
            {
                "variant": group,
                "attention": items[0]["attention"],
                "seeds": len(items),
                "top1_err_mean": err_mean,
                "top1_err_std": err_std,
                "params": items[0]["params"],
                "gmac": items[0]["gmac"],
                "train_img_s": _mean_std([r["train_images_per_sec"] for r in items])[0],
                "infer_img_s": _mean_std([r["inference_images_per_sec"] for r in items])[0],
            }
        )
    base = next((r for r in rows if r["variant"] == "none"), None)
    for r in rows:
        if base is None:
            r["delta_vs_none"], r["note"] = None, "no baseline"
            continue
        delta = r["top1_err_mean"] - base["top1_err_mean"]
        r["delta_vs_none"] = delta
        noise = max(r["top1_err_std"], base["top1_err_std"])
        r["note"] = "baseline" if r is base else ("within 1 std (noise)" if abs(delta) <= noise else "")
    return sorted(rows, key=lambda r: (r["attention"] != "none", r["variant"]))


def write_report(out: Path, records: List[Dict[str, Any]], title: str = "") -> List[Dict[str, Any]]:
    rows = summarise(records)
    if not rows:
        return rows
    import csv

    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Ablation {title}".rstrip(),
        "",
        "| variant | seeds | last-epoch top-1 err % (mean ± std) | vs none | params | GMAC | train img/s "
        "| infer img/s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        delta = "-" if r["delta_vs_none"] is None or r["note"] == "baseline" else f"{r['delta_vs_none']:+.2f}"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['top1_err_mean']:.2f} ± {r['top1_err_std']:.2f} | {delta} | "
            f"{r['params']:,} | {r['gmac']:.3f} | {r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | {r['note']} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(out / "report.png", rows)
    return rows


def _plot(path: Path, rows: List[Dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in ((axes[0], "params", "parameters (M)"), (axes[1], "infer_img_s", "inference images/s")):
        for r in rows:
            x = r[key] / 1e6 if key == "params" else r[key]
            ax.errorbar(x, r["top1_err_mean"], yerr=r["top1_err_std"], fmt="o", capsize=4, label=r["variant"])
            ax.annotate(r["variant"], (x, r["top1_err_mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 error % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# main


def _parse(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(prog="python -m csa_lightning.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="base config (any cli.py fit config)")
    parser.add_argument("--attentions", default="none,se,cbam,eca,gct,csa")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", required=True, help="folder for runs, results.json and the report")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="an extra axis (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (one GPU each when there are GPUs)")
    parser.add_argument(
        "--rerun", action="store_true", help="train again the variants whose config or overrides changed since they ran"
    )
    args, extra = parser.parse_known_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"base config not found: {args.config}")
    return args, extra


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args, extra = _parse(argv)
    from .attention import available_attentions

    # the same names cli.py accepts: registered names in any case, or dotted import paths
    attentions = [a.strip() if "." in a else a.strip().lower() for a in args.attentions.split(",") if a.strip()]
    for a in attentions:
        if a not in available_attentions() and "." not in a:
            sys.exit(f"error: unknown attention '{a}': choose from {', '.join(available_attentions())}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"error: --seeds must be comma-separated integers, got '{args.seeds}'")
    sweeps: Dict[str, List[str]] = {}
    for item in args.sweep:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip() or not all(v.strip() for v in values.split(",")):
            sys.exit(f"error: --sweep expects KEY=V1,V2 with a key and no empty value, got '{item}'")
        sweeps[key.strip()] = [v.strip() for v in values.split(",")]
    _check_sweep_keys(sweeps, attentions)

    out = Path(args.out)
    variants = plan_variants(attentions, seeds, sweeps)
    _check_variants(args.config, variants, extra)  # every variant builds, before the first one trains
    out.mkdir(parents=True, exist_ok=True)
    with _runner_lock(out):
        return _run_plan(args, extra, out, variants)


def _check_sweep_keys(sweeps: Dict[str, List[str]], attentions: Sequence[str]) -> None:
    """A sweep over an option no planned block takes would be silently dropped: refuse it."""
    import difflib

    takes = {a: _option_keys(a) for a in attentions}
    known = sorted({k for keys in takes.values() for k in keys})
    for key in sweeps:
        if key.startswith("model.attention_options."):
            option = key.split(".", 2)[2]
            if option not in known:
                close = difflib.get_close_matches(option, known, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                sys.exit(
                    f"error: --sweep {key}: no block of {', '.join(attentions)} takes an option '{option}'; "
                    f"{hint}options: {', '.join(known) or 'none'}"
                )


def _check_variants(base_config: str, variants: Sequence[Variant], extra: Sequence[str]) -> None:
    """Build every variant's config and network (on the meta device: no memory, no data read) so
    that a bad key or value fails in one line before any run trains."""
    import contextlib
    import io
    import tempfile

    import torch

    from .cli import main as cli_main

    with tempfile.TemporaryDirectory() as scratch:
        for variant in variants:
            args = [
                "--config", base_config, *variant.cli_args(_option_keys(variant.attention)), *extra,
                "--trainer.default_root_dir", scratch,
            ]  # fmt: skip
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
                    with torch.device("meta"):
                        cli_main(args, run=False)
            except SystemExit:
                lines = [line for line in captured.getvalue().strip().splitlines() if line.strip()]
                reason = lines[-1].removeprefix("error: ") if lines else "its config does not build"
                sys.exit(f"error: variant {variant.name}: {reason}")


def _variant_hash(variant: Variant, base_config: str, extra: Sequence[str]) -> str:
    return config_hash(base_config, variant.cli_args(_option_keys(variant.attention)), extra)


def _stale(out: Path, variants: Sequence[Variant], base_config: str, extra: Sequence[str]) -> List[str]:
    """Variants whose finished result or started run folder came from another config or overrides."""
    recorded = {r["variant"]: r.get("config_hash") for r in load_results(out)}
    stale = []
    for v in variants:
        current = _variant_hash(v, base_config, extra)
        started = out / "runs" / v.name / "config_hash"
        if (v.name in recorded and recorded[v.name] != current) or (
            started.exists() and started.read_text().strip() != current
        ):
            stale.append(v.name)
    return stale


def _forget(out: Path, names: Sequence[str]) -> None:
    """Drop the results and run folders (their checkpoints would be resumed) of ``names``."""
    import shutil

    keep = [r for r in load_results(out) if r["variant"] not in set(names)]
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(keep, indent=2))
    os.replace(tmp, out / RESULT_FILE)
    for name in names:
        shutil.rmtree(out / "runs" / name, ignore_errors=True)


class _runner_lock:
    """One runner per --out: a second one would train every variant again into the same folders."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".ablate.lock"

    def __enter__(self) -> "_runner_lock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                from .checks import process_alive

                holder = self.path.read_text().strip() if self.path.exists() else ""
                if holder.isdigit() and process_alive(int(holder)):
                    sys.exit(
                        f"error: another ablation runner (pid {holder}) is using {self.path.parent}; "
                        f"wait for it to finish or choose another --out"
                    )
                self.path.unlink(missing_ok=True)  # its runner is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        sys.exit(f"error: cannot take the lock {self.path}; remove it if no runner is using {self.path.parent}")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _run_plan(args, extra: List[str], out: Path, variants: List[Variant]) -> List[Dict[str, Any]]:
    stale = _stale(out, variants, args.config, extra)
    if stale and not args.rerun:
        sys.exit(
            f"error: {len(stale)} variant(s) in {out} ran with another config or overrides ({', '.join(stale[:3])}"
            f"{', ...' if len(stale) > 3 else ''}); pass --rerun to train them again, or choose another --out"
        )
    if stale:
        print(f"ablation: --rerun: forgetting {len(stale)} variant(s) that ran with another config", flush=True)
        _forget(out, stale)
    done = {r["variant"] for r in load_results(out)}
    todo = [v for v in variants if v.name not in done]
    print(
        f"ablation: {len(variants)} variants, {len(done & {v.name for v in variants})} already finished, "
        f"{len(todo)} to run -> {out}",
        flush=True,
    )

    from .models.summary import count_cost  # noqa: F401  (fail early if the stack is broken)

    devices = _gpu_ids()
    running: Dict[int, Tuple[Variant, subprocess.Popen, float]] = {}
    slots = list(range(max(1, args.parallel)))
    finished = len(variants) - len(todo)
    failures = []
    while todo or running:
        while todo and slots:
            slot = slots.pop(0)
            variant = todo.pop(0)
            device = devices[slot % len(devices)] if devices else None
            print(
                f"[{finished + len(running) + 1}/{len(variants)}] running {variant.group} seed={variant.seed} "
                f"({len(todo)} queued){'' if device is None else f' on GPU {device}'}",
                flush=True,
            )
            running[slot] = (variant, _run_variant(variant, args.config, extra, out, device), time.time())
        time.sleep(0.5)
        for slot, (variant, proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            slots.append(slot)
            if proc.returncode != 0 or not (out / "runs" / variant.name / "result.json").exists():
                failures.append(variant.name)
                print(
                    f"    {variant.name} failed (exit {proc.returncode}); "
                    f"see {out / 'runs' / variant.name / 'stdout.log'}",
                    flush=True,
                )
                continue
            _append_result(out, _record_for(variant, args.config, extra, out, time.time() - started))
            finished += 1
            write_report(out, load_results(out), title=Path(args.config).stem)
            print(f"    done {variant.name}: {finished}/{len(variants)} finished", flush=True)
    rows = write_report(out, load_results(out), title=Path(args.config).stem)
    if rows:
        print((out / "report.md").read_text())
    if failures:
        sys.exit(f"error: {len(failures)} run(s) failed: {', '.join(failures)}; rerun the same command to retry them")
    return rows


def _gpu_ids() -> List[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


if __name__ == "__main__":
    main()
