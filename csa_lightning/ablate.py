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

Each finished run appends a record to ``OUT/results.json`` (rewritten atomically): the resolved
configuration (every value the run is built from, whichever file, include or argument set it) and its hash,
attention, options, seed, final and best validation metrics, params, GMAC, train and inference
images/s, wall time, checkpoint path, git commit, and the provenance of the code it is built from
(:mod:`csa_lightning.provenance`: package, version, commit and a hash per source file of every class
the config names, a user's own blocks included). Killed and restarted with the same command, the
runner skips finished variants, resumes an interrupted one from its ``last.ckpt``, and neither
loses nor duplicates a record. A variant whose resolved configuration changed since it ran (a value
in an included file, a new default after a Lightning or jsonargparse upgrade) is refused in one
line naming what changed; so is one whose code changed (a block's source, this repository's or a
plugin's, naming the changed files; comments and files the run does not use do not count).
``--rerun`` trains it again, ``--keep-stale`` keeps its result. Records written before either scheme
(hashes of the base file's text; no code recorded) count as changed.
``OUT/report.md``, ``report.csv`` and ``report.png`` summarise
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
#: held by each training run (not its runner) while it trains into its folder: see checks.hold_run_lock
RUN_LOCK = ".training.lock"


@dataclass
class Variant:
    attention: str
    seed: int
    sweep: Dict[str, str] = field(default_factory=dict)
    #: further arguments of this variant's runs (e.g. its backbone from a classification ablation)
    extra_args: List[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        """The variant without its seed: what the report averages over seeds."""
        keys = _short_keys(self.sweep)
        return " ".join([self.attention] + [f"{keys[k]}={v}" for k, v in sorted(self.sweep.items())])

    @property
    def name(self) -> str:
        """Folder and record name: readable, and never shared by two variants (a value's characters
        outside ``[A-Za-z0-9._+=-]`` are percent-encoded, so ``data/digits`` is ``data%2Fdigits``,
        not ``data-digits``; a swept key is shortened to its last part only where that is unique)."""
        keys = _short_keys(self.sweep)
        parts = [_safe(self.attention)] + [f"{keys[k]}-{_safe(v)}" for k, v in sorted(self.sweep.items())]
        return "_".join(parts) + f"_seed{self.seed}"

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
        return args + list(self.extra_args)


def _short_keys(sweep: Dict[str, str]) -> Dict[str, str]:
    """Each swept key by its last part (``model.attention_options.contiguity`` -> ``contiguity``),
    or whole where two keys share that part (``data.x`` and ``model.x`` stay apart)."""
    last = [k.split(".")[-1] for k in sweep]
    return {k: k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k for k in sweep}


def _safe(text: str) -> str:
    from urllib.parse import quote

    return quote(str(text), safe="._+=-")


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
                if (v.attention, v.seed, tuple(sorted(v.sweep.items()))) in seen:
                    continue  # the same variant listed twice (e.g. --attentions se,SE)
                seen.add((v.attention, v.seed, tuple(sorted(v.sweep.items()))))
                variants.append(v)
    for field_name in ("name", "group"):
        taken: Dict[str, Variant] = {}
        for v in variants:
            other = taken.setdefault(getattr(v, field_name) + ("" if field_name == "name" else f"#{v.seed}"), v)
            if other is not v:
                raise ValueError(
                    f"variants {other.attention} {other.sweep} and {v.attention} {v.sweep} would share the "
                    f"{field_name} '{getattr(v, field_name)}'; give the sweep values distinct names"
                )
    return variants


#: how ``config_hash`` is computed; records without it (or with another) predate the current scheme
CONFIG_SCHEME = 2

#: keys of a resolved config that never change what a run computes: left out of its hash (the paths
#: the runner sets per run, the config files' own names, progress display)
_RUN_NEUTRAL_KEYS = ("config", "ckpt_path", "trainer.default_root_dir", "trainer.enable_progress_bar",
                     "trainer.enable_model_summary")  # fmt: skip


def run_relevant_config(resolved: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved config (plain values) without the keys that do not change a run."""
    import copy

    config = copy.deepcopy(resolved)
    for key in _RUN_NEUTRAL_KEYS:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def config_hash(config: Dict[str, Any]) -> str:
    """Hash of a variant's resolved configuration (:func:`run_relevant_config`): every value the run
    is built from, whichever file, include or argument set it; comments and key order do not count."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
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


def _write_results(out: Path, records: List[Dict[str, Any]]) -> None:
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(records, indent=2))
    os.replace(tmp, out / RESULT_FILE)  # atomic: a kill leaves the old file or the new one


def _append_result(out: Path, record: Dict[str, Any]) -> None:
    _write_results(out, [r for r in load_results(out) if r["variant"] != record["variant"]] + [record])


# ------------------------------------------------------------------------------------------
# one run


def _run_variant(
    variant: Variant, base_config: str, extra: Sequence[str], out: Path, device: Optional[int], resolved: "_Resolved"
) -> subprocess.Popen:
    run_dir = out / "runs" / variant.name
    run_dir.mkdir(parents=True, exist_ok=True)
    # what this folder's checkpoints were trained with: a later runner resumes them only if it matches
    _stamp(run_dir, resolved)
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
    env = dict(os.environ, CSA_RESULT_PATH=str(run_dir / "result.json"), CSA_RUN_LOCK=str(run_dir / RUN_LOCK))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    with open(run_dir / "stdout.log", "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stamp(run_dir: Path, resolved: "_Resolved") -> None:
    (run_dir / "config_hash").write_text(f"{CONFIG_SCHEME}:{resolved.hash}")
    (run_dir / "config_resolved.json").write_text(json.dumps(resolved.config, indent=1, sort_keys=True))
    (run_dir / "code.json").write_text(json.dumps(resolved.code, indent=1, sort_keys=True))


def _record_for(variant: Variant, resolved: "_Resolved", out: Path, wall: float) -> Dict[str, Any]:
    from .tasks.callbacks import run_info

    run_dir = out / "runs" / variant.name
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "variant": variant.name,
        "group": variant.group,
        "config_scheme": CONFIG_SCHEME,
        "config_hash": resolved.hash,
        "config": resolved.config,
        "code": resolved.code,
        "attention": variant.attention,
        "sweep": variant.sweep,
        "seed": variant.seed,
        **result,
        "wall_s": round(wall, 1),
        "git_commit": run_info()["git_commit"],
    }


# ------------------------------------------------------------------------------------------
# report

#: what a result's metric is called in the report, and whether it is shown as an error (100 - x %)
_ERROR_METRICS = ("top1", "top5")


def default_metric(records: Sequence[Dict[str, Any]]) -> str:
    """The metric the runs' checkpoints monitored (val/top1 for classification, val/box_AP for
    detection): what the task itself ranks models by."""
    for r in records:
        if r.get("monitor"):
            return r["monitor"]
    return "val/top1"


def metric_value(record: Dict[str, Any], metric: str) -> Optional[float]:
    """The last epoch's value of ``metric`` in one run's record (None if the run did not log it)."""
    final = record.get("final") or {}
    if metric in final:
        return final[metric]
    legacy = record.get(f"final_{metric.replace('/', '_')}")  # records written before "final" existed
    return legacy if legacy is not None else None


def _is_error_metric(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in _ERROR_METRICS


def metric_label(metric: str) -> str:
    """'val/top1' -> 'val top-1 err %' (lower is better); 'val/box_AP' -> 'val box_AP %'."""
    stage, _, name = metric.rpartition("/")
    prefix = f"{stage} " if stage else ""
    if _is_error_metric(metric):
        return f"{prefix}{name.replace('top', 'top-')} err %"
    return f"{prefix}{name} %"


def reported(record: Dict[str, Any], metric: str) -> Optional[float]:
    """The value the report shows: an error in % for accuracies, the metric in % otherwise."""
    value = metric_value(record, metric)
    if value is None:
        return None
    return 100.0 * (1.0 - value) if _is_error_metric(metric) else 100.0 * value


def _mean_std(values: List[float]) -> Tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _extra_metrics(records: Sequence[Dict[str, Any]], metric: str) -> List[str]:
    """Further columns: Mask R-CNN's val/mask_AP beside val/box_AP (and the other way round)."""
    names = set()
    for r in records:
        names.update((r.get("final") or {}).keys())
    return [m for m in ("val/box_AP", "val/mask_AP") if m in names and m != metric]


def summarise(
    records: List[Dict[str, Any]], metric: Optional[str] = None, baseline: str = "none"
) -> List[Dict[str, Any]]:
    """One row per variant group: mean, sample std and 95 % t interval over seeds of the metric
    (the last epoch's: picking each seed's best epoch on the validation set would flatter every
    variant), the seed-paired difference to ``baseline`` with its 95 % and Holm-corrected
    intervals, and the costs."""
    from .stats import MIN_SEEDS, paired_comparisons, per_variant_intervals

    metric = metric or default_metric(records)
    extra = _extra_metrics(records, metric)
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if reported(r, metric) is not None:
            groups.setdefault(r["group"], []).append(r)
    values = {g: {r["seed"]: reported(r, metric) for r in items} for g, items in groups.items()}
    half_widths = per_variant_intervals({g: list(v.values()) for g, v in values.items()})
    comparisons = {}
    if baseline in values:
        others = {g: v for g, v in values.items() if g != baseline}
        comparisons = {c.variant: c for c in paired_comparisons(values[baseline], others)}
    rows = []
    for group, items in groups.items():
        mean, std = _mean_std(list(values[group].values()))
        row = {
            "variant": group,
            "attention": items[0]["attention"],
            "metric": metric,
            "seeds": len(items),
            "mean": mean,
            "std": std,
            "ci95_half_width": half_widths[group],
        }
        for m in extra:
            shown = [reported(r, m) for r in items if reported(r, m) is not None]
            row[f"{m}_mean"] = _mean_std(shown)[0] if shown else None
        c = comparisons.get(group)
        row.update(
            {
                "paired_seeds": c.n if c else None,
                "diff_mean": c.mean_difference if c else None,
                "diff_ci95": list(c.interval) if c and c.interval else None,
                "holm_p": c.holm_p if c else None,
                "diff_ci_holm": list(c.holm_interval) if c and c.holm_interval else None,
                "significant": c.significant if c else None,
            }
        )
        fractions = [r["val_fraction"] for r in items if r.get("val_fraction") is not None and r["val_fraction"] < 1]
        row["partial_validation"] = min(fractions) if fractions else None
        if group == baseline:
            row["note"] = "baseline"
        elif baseline not in values:
            row["note"] = f"no baseline '{baseline}'"
        elif c is None or c.n == 0:
            row["note"] = "no seed shared with the baseline"
        elif c.n < MIN_SEEDS:
            row["note"] = f"{c.n} paired seed(s): no interval (needs {MIN_SEEDS})"
        else:
            row["note"] = "significant" if c.significant else "not significant"
        if row["partial_validation"] is not None:
            row["note"] += f"; partial validation ({100 * row['partial_validation']:.0f} % of the batches)"
        row.update(
            {
                "params": items[0].get("params"),
                "gmac": items[0].get("gmac"),
                "train_img_s": _mean_std([r.get("train_images_per_sec", float("nan")) for r in items])[0],
                "infer_img_s": _mean_std([r.get("inference_images_per_sec", float("nan")) for r in items])[0],
            }
        )
        rows.append(row)
    return sorted(rows, key=lambda r: (r["variant"] != baseline, r["variant"]))


def _interval(pair) -> str:
    return "-" if not pair else f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def write_report(
    out: Path, records: List[Dict[str, Any]], title: str = "", metric: Optional[str] = None, baseline: str = "none"
) -> List[Dict[str, Any]]:
    metric = metric or default_metric(records)
    rows = summarise(records, metric, baseline)
    if not rows:
        return rows
    import csv

    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    label = metric_label(metric)
    extra = [k for k in rows[0] if k.endswith("_mean") and k not in ("mean", "diff_mean")]
    extra_head = "".join(f" {metric_label(k[: -len('_mean')])} (mean) |" for k in extra)
    lines = [
        f"# Ablation {title}".rstrip(),
        "",
        f"Metric: {label}, last epoch, mean ± sample std and 95 % t interval over seeds. "
        f"Differences are to `{baseline}`, paired by seed (variant minus baseline, in points); 95 % t "
        "intervals with n - 1 degrees of freedom, and Holm-corrected across the variants compared: "
        "*significant* only where Holm rejects (the corrected interval excludes 0).",
        "",
        f"| variant | seeds | {label} | 95 % CI ± |{extra_head} vs {baseline} (paired) | 95 % CI | Holm CI "
        "| Holm p | params | GMAC | train img/s | infer img/s | note |",
        "|---|---:|---:|---:|" + "---:|" * len(extra) + "---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        half = "-" if r["ci95_half_width"] is None else f"{r['ci95_half_width']:.2f}"
        extra_cells = "".join(" - |" if r[k] is None else f" {r[k]:.2f} |" for k in extra)
        diff = "-" if r["diff_mean"] is None else f"{r['diff_mean']:+.2f}"
        holm_p = "-" if r["holm_p"] is None else f"{r['holm_p']:.3g}"
        params = "-" if r["params"] is None else f"{r['params']:,}"
        gmac = "-" if r["gmac"] is None else f"{r['gmac']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['mean']:.2f} ± {r['std']:.2f} | {half} |{extra_cells} {diff} | "
            f"{_interval(r['diff_ci95'])} | {_interval(r['diff_ci_holm'])} | {holm_p} | {params} | {gmac} | "
            f"{r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | {r['note']} |"
        )
    if any(r["partial_validation"] is not None for r in rows):
        lines += [
            "",
            "**Partial validation**: rows so marked were scored on the first batches of the validation set "
            "(`limit_val_batches`): a stratified sample of it (every prefix of the evaluation order is), "
            "not all of it.",
        ]
    lines += [
        "",
        "Seeds pair each variant's initialisation and data order with the baseline's. ffcv's random "
        "augmentations (crops, flips) are drawn in its loader threads and are not reproducible from the seed, "
        "so on the FFCV path a pair shares less than the same seed suggests (the pairing is conservative then, "
        "never flattering).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(out / "report.png", rows, label)
    return rows


def _plot(path: Path, rows: List[Dict[str, Any]], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, xlabel in ((axes[0], "params", "parameters (M)"), (axes[1], "infer_img_s", "inference images/s")):
        for r in rows:
            if r[key] is None:
                continue
            x = r[key] / 1e6 if key == "params" else r[key]
            yerr = r["ci95_half_width"] if r["ci95_half_width"] is not None else 0.0
            ax.errorbar(x, r["mean"], yerr=yerr, fmt="o", capsize=4, label=r["variant"])
            ax.annotate(r["variant"], (x, r["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label}: mean, bars = 95 % t interval")
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
        "--metric",
        default=None,
        help="the validation metric the report compares (default: what the checkpoints monitor: val/top1 for "
        "classification, val/box_AP for detection)",
    )
    parser.add_argument("--baseline", default="none", help="the variant every other one is compared with, by seed")
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
    args, extra = parser.parse_known_args(argv)
    if not Path(args.config).is_file():
        sys.exit(f"error: base config not found: {args.config}; pass a cli.py fit config with --config")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        sys.exit(f"error: --out {args.out} is a file; give a folder for the runs and the report (it is created)")
    if args.parallel < 1:
        sys.exit(f"error: --parallel must be a positive integer (runs at once), got {args.parallel}")
    return args, extra


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args, extra = _parse(argv)
    from .attention import attention_names

    try:  # the one resolver cli.py uses: short names in any case, plugins' names, dotted paths
        attentions = attention_names(args.attentions)
    except (ValueError, TypeError) as err:
        sys.exit(f"error: {err}")
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
    try:
        variants = plan_variants(attentions, seeds, sweeps)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.backbone_runs:
        _attach_backbones(variants, Path(args.backbone_runs))
    resolved = _check_variants(args.config, variants, extra)  # every variant builds, before the first one trains
    out.mkdir(parents=True, exist_ok=True)
    with _runner_lock(out):
        return _run_plan(args, extra, out, variants, resolved)


def _attach_backbones(variants: Sequence[Variant], runs: Path) -> None:
    """Give each variant the classification run of the same attention and seed as its backbone
    (``--model.backbone_weights RUN_FOLDER``: its newest checkpoint); one line lists what is missing."""
    from .tasks.checkpoints import newest_checkpoint

    folder = runs / "runs" if (runs / "runs").is_dir() else runs
    missing = []
    for v in variants:
        run = folder / f"{v.attention}_seed{v.seed}"
        if newest_checkpoint(str(run)) is None:
            missing.append(run.name)
        v.extra_args = ["--model.backbone_weights", str(run)]
    if missing:
        sys.exit(
            f"error: --backbone-runs {runs}: no checkpoint for {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}; run the classification ablation with the same attentions "
            "and seeds first (python -m csa_lightning.ablate --config configs/demo/digits_csa.yaml ...)"
        )


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


@dataclass
class _Resolved:
    """A variant's resolved configuration (without run-neutral keys), its hash, and the provenance
    of the code it is built from (:func:`csa_lightning.provenance.code_provenance`)."""

    config: Dict[str, Any]
    hash: str
    code: Dict[str, Any]


def _check_variants(base_config: str, variants: Sequence[Variant], extra: Sequence[str]) -> Dict[str, _Resolved]:
    """Build every variant's config and network (on the meta device: no memory, no data read) so
    that a bad key or value fails in one line before any run trains; returns each variant's
    resolved configuration, what the stale check compares."""
    import contextlib
    import io
    import tempfile

    import torch

    from .cli import _comparable
    from .cli import main as cli_main
    from .provenance import code_provenance, run_classes

    resolved = {}
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
                        cli = cli_main(args, run=False)
            except SystemExit:
                lines = [line for line in captured.getvalue().splitlines() if line.startswith("error: ")]
                reason = lines[-1].removeprefix("error: ") if lines else "its config does not build"
                sys.exit(f"error: variant {variant.name}: {reason}")
            config = run_relevant_config(_comparable(cli.config))
            code = code_provenance(run_classes(cli.model, cli.datamodule, cli.trainer.callbacks))
            resolved[variant.name] = _Resolved(config, config_hash(config), code)
    return resolved


def _stale(out: Path, variants: Sequence[Variant], resolved: Dict[str, _Resolved]) -> Dict[str, str]:
    """Variants whose finished result or started run folder came from another resolved
    configuration: {name: what differs, in words}."""
    from .cli import _differences
    from .provenance import changed_files

    recorded = {r["variant"]: r for r in load_results(out)}
    stale = {}
    for v in variants:
        now = resolved[v.name]
        record = recorded.get(v.name)
        started = out / "runs" / v.name / "config_hash"
        if record is not None:
            then_scheme, then_hash = record.get("config_scheme"), record.get("config_hash")
            then_config, then_code = record.get("config"), record.get("code")
        elif started.exists():
            scheme, _, then_hash = started.read_text().strip().rpartition(":")
            then_scheme = int(scheme) if scheme.isdigit() else None
            saved = started.with_name("config_resolved.json")
            then_config = json.loads(saved.read_text()) if saved.exists() else None
            saved_code = started.with_name("code.json")
            then_code = json.loads(saved_code.read_text()) if saved_code.exists() else None
        else:
            continue
        if then_scheme != CONFIG_SCHEME:
            stale[v.name] = "recorded by an earlier runner, which hashed the config file's text only"
        elif then_hash != now.hash:
            differences = _differences(then_config, now.config) if then_config is not None else []
            listed = "; ".join(f"{key}: {a!r} then, {b!r} now" for key, a, b in differences[:2])
            stale[v.name] = listed or "another configuration"
        elif then_code is None:
            stale[v.name] = "recorded by an earlier runner, which did not record the code a run uses"
        else:
            changed = changed_files(then_code.get("files"), now.code["files"])
            if changed:
                stale[v.name] = f"code changed in {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"
    return stale


def _keep_stale(out: Path, resolved: Dict[str, _Resolved], names: Sequence[str]) -> None:
    """--keep-stale: adopt ``names``' results and run folders as made by the current configuration."""
    records = load_results(out)
    for r in records:
        if r["variant"] in names:
            r.update(config_scheme=CONFIG_SCHEME, config_hash=resolved[r["variant"]].hash,
                     config=resolved[r["variant"]].config, code=resolved[r["variant"]].code)  # fmt: skip
    _write_results(out, records)
    for name in names:
        if (out / "runs" / name).is_dir():
            _stamp(out / "runs" / name, resolved[name])


def _forget(out: Path, names: Sequence[str]) -> None:
    """Drop the results and run folders (their checkpoints would be resumed) of ``names``."""
    import shutil

    _write_results(out, [r for r in load_results(out) if r["variant"] not in set(names)])
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


def _run_plan(
    args, extra: List[str], out: Path, variants: List[Variant], resolved: Dict[str, _Resolved]
) -> List[Dict[str, Any]]:
    from .checks import run_lock_holder

    # first: --rerun below removes run folders, and a live run (of a stopped runner) may train in one
    busy = [(v.name, run_lock_holder(str(out / "runs" / v.name / RUN_LOCK))) for v in variants]
    busy = [(name, pid) for name, pid in busy if pid is not None]
    if busy:
        name, pid = busy[0]
        sys.exit(
            f"error: {len(busy)} variant(s) in {out} are still being trained by another process ({name}: pid {pid}), "
            f"left by a runner that was stopped; wait for them or stop them (kill {pid}), then run this again"
        )
    stale = _stale(out, variants, resolved)
    if stale and not (args.rerun or args.keep_stale):
        first = next(iter(stale))
        sys.exit(
            f"error: {len(stale)} variant(s) in {out} ran with another configuration or code ({first}: {stale[first]}"
            f"{'; ...' if len(stale) > 1 else ''}); pass --rerun to train them again, --keep-stale to keep "
            "their results, or choose another --out"
        )
    if stale and args.keep_stale:
        print(f"ablation: --keep-stale: keeping {len(stale)} result(s) made with another config or code", flush=True)
        _keep_stale(out, resolved, list(stale))
    elif stale:
        print(f"ablation: --rerun: forgetting {len(stale)} variant(s) that ran with another config or code", flush=True)
        _forget(out, list(stale))
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
    with _stop_runs_on_signal(running):
        finished = _run_queue(args, extra, out, variants, resolved, todo, devices, running, slots, finished, failures)
    rows = write_report(out, load_results(out), Path(args.config).stem, args.metric, args.baseline)
    if rows:
        print((out / "report.md").read_text())
    if failures:
        sys.exit(f"error: {len(failures)} run(s) failed: {', '.join(failures)}; rerun the same command to retry them")
    return rows


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


class _stop_runs_on_signal:
    """SIGTERM or SIGINT to the runner: pass SIGTERM on to every running training process, wait for
    them (each saves nothing new but stops at a batch boundary; its last epoch-end checkpoint is what
    the next runner resumes), then exit 143 (130 for SIGINT) with one line. SIGKILL cannot be passed
    on: the runs' own locks keep a restarted runner from training into a folder a live run still uses."""

    def __init__(self, running: Dict[int, Tuple[Variant, subprocess.Popen, float]]) -> None:
        self.running = running

    def __enter__(self):
        import signal
        import threading

        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Stopped(signum)

    def __exit__(self, kind, error, tb):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if kind is KeyboardInterrupt:
            error = _Stopped(signal.SIGINT)
        if not isinstance(error, _Stopped):
            return False
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the wait short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs = [proc for _, proc, _ in self.running.values() if proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        names = ", ".join(v.name for v, _, _ in self.running.values()) or "none"
        print(
            f"error: ablation stopped by {signal.Signals(error.signum).name}; {len(procs)} run(s) interrupted "
            f"({names}) and ended; run the same command again to resume them from their last checkpoints",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(143 if error.signum == signal.SIGTERM else 130)


def _run_queue(args, extra, out, variants, resolved, todo, devices, running, slots, finished, failures) -> int:
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
            proc = _run_variant(variant, args.config, extra, out, device, resolved[variant.name])
            running[slot] = (variant, proc, time.time())
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
            _append_result(out, _record_for(variant, resolved[variant.name], out, time.time() - started))
            finished += 1
            write_report(out, load_results(out), Path(args.config).stem, args.metric, args.baseline)
            print(f"    done {variant.name}: {finished}/{len(variants)} finished", flush=True)
    return finished


def _gpu_ids() -> List[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


if __name__ == "__main__":
    main()
