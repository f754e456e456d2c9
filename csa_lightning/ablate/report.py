"""The ablation's report: one row per variant group (mean, std and interval over seeds, paired
differences to the baseline), as report.md, report.csv and report.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..timing import STABLE_SPREAD, spread_of

__all__ = ["summarise", "write_report", "default_metric", "metric_label"]

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


def _mean_std(values: List[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample std (None for one value: there is no spread to state)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def _speed(items: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """A speed over a group's runs: the median, its range (over seeds; for one run, the range of its own
    timed batches where the record has it) and whether that range supports the figure."""
    import statistics

    values: List[float] = [float(r[key]) for r in items if r.get(key) is not None and math.isfinite(r[key])]
    if not values:
        return {"median": None, "range": None, "stable": None}
    stable: Optional[bool]
    low: Optional[float]
    high: Optional[float]
    if len(values) > 1:
        low, high = min(values), max(values)
        stable = spread_of(values) <= STABLE_SPREAD
    else:
        low, high = items[0].get(f"{key}_range") or (None, None)
        stable = None if low is None else (high - low) / values[0] <= STABLE_SPREAD
    return {"median": statistics.median(values), "range": None if low is None else [low, high], "stable": stable}


def _speed_text(row: Dict[str, Any], name: str) -> str:
    if row[name] is None:
        return "-"
    text = f"{row[name]:.0f}"
    if row[f"{name}_range"]:
        low, high = row[f"{name}_range"]
        text += f" ({low:.0f}-{high:.0f})"
    return text + (" unstable" if row[f"{name}_stable"] is False else "")


def _extra_metrics(records: Sequence[Dict[str, Any]], metric: str) -> List[str]:
    """Further columns: Mask R-CNN's val/mask_AP beside val/box_AP (and the other way round)."""
    names: set = set()
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
    from ..stats import MIN_SEEDS, paired_comparisons, per_variant_intervals

    metric = metric or default_metric(records)
    extra = _extra_metrics(records, metric)
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if reported(r, metric) is not None:
            groups.setdefault(r["group"], []).append(r)
    # groups hold only records with the metric reported
    values: Dict[str, Dict[int, float]] = {
        g: {r["seed"]: float(reported(r, metric) or 0.0) for r in items} for g, items in groups.items()
    }
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
            shown = [float(v) for v in (reported(r, m) for r in items) if v is not None]
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
            }
        )
        for name, key in (("train_img_s", "train_images_per_sec"), ("infer_img_s", "inference_images_per_sec")):
            speed = _speed(items, key)
            row.update({name: speed["median"], f"{name}_range": speed["range"], f"{name}_stable": speed["stable"]})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["variant"] != baseline, r["variant"]))


def _interval(pair) -> str:
    return "-" if not pair else f"[{pair[0]:+.2f}, {pair[1]:+.2f}]"


def write_report(
    out: Path, records: List[Dict[str, Any]], title: str = "", metric: Optional[str] = None, baseline: str = "none"
) -> List[Dict[str, Any]]:
    """Write ``report.md``, ``report.csv`` and ``report.png`` from the records; returns the summary rows."""
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
        spread = "(n = 1)" if r["std"] is None else f"± {r['std']:.2f}"  # one seed: no spread to state
        extra_cells = "".join(" - |" if r[k] is None else f" {r[k]:.2f} |" for k in extra)
        diff = "-" if r["diff_mean"] is None else f"{r['diff_mean']:+.2f}"
        holm_p = "-" if r["holm_p"] is None else f"{r['holm_p']:.3g}"
        params = "-" if r["params"] is None else f"{r['params']:,}"
        gmac = "-" if r["gmac"] is None else f"{r['gmac']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['mean']:.2f} {spread} | {half} |{extra_cells} {diff} | "
            f"{_interval(r['diff_ci95'])} | {_interval(r['diff_ci_holm'])} | {holm_p} | {params} | {gmac} | "
            f"{_speed_text(r, 'train_img_s')} | {_speed_text(r, 'infer_img_s')} | {r['note']} |"
        )
    lines += ["", *_starting_points(records)]
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
        "",
        "Images/s: the median over seeds with the lowest and highest run (one run: its fastest and slowest timed "
        f"batch), 'unstable' where that range exceeds {STABLE_SPREAD:.0%} of the median. They are measured while the "
        "runs train "
        "(in parallel runs they share the machine): compare speeds with `python -m csa_lightning.benchmark`, "
        "which times the variants interleaved in one process.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(out / "report.png", rows, label)
    return rows


def started_from(record: Dict[str, Any]) -> str:
    """The weights a run started from, as its record's configuration names them (with the file's content
    hash where the run's provenance has it): ``backbone_weights``, or a timm network's pretrained weights."""
    model = (record.get("config") or {}).get("model") or {}
    args = model.get("init_args", model) if isinstance(model, dict) else {}
    net = (args.get("net") or {}) if isinstance(args.get("net"), dict) else {}
    net_args = net.get("init_args", net)
    files = (record.get("code") or {}).get("named_files") or {}
    found = []
    for key, value in (
        ("backbone_weights", args.get("backbone_weights")),
        ("net.pretrained_file", net_args.get("pretrained_file")),
    ):
        if value:
            digest = (files.get(f"model.{key}") or {}).get("sha256")
            found.append(f"`{value}`" + (f" (sha256 {digest[:12]})" if digest else ""))
    if net_args.get("pretrained"):
        found.append(f"timm's pretrained `{net_args.get('model_name')}`")
    if found and net_args.get("gates_at_identity"):
        found.append("gates at identity")
    return ", ".join(found) or "a random initialisation"


def _starting_points(records: Sequence[Dict[str, Any]]) -> List[str]:
    """The report's line (or table) naming the weights every variant started from."""
    by_variant: Dict[str, set] = {}
    for record in records:
        by_variant.setdefault(record.get("group") or record["variant"], set()).add(started_from(record))
    points = {v: " / ".join(sorted(s)) for v, s in by_variant.items()}
    if len(set(points.values())) == 1:
        return [f"Every variant started from {next(iter(points.values()))}."]
    return ["Started from:", "", "| variant | weights |", "|---|---|", *(f"| {v} | {w} |" for v, w in points.items())]


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
