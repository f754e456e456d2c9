#!/usr/bin/env python
"""The manual's measured figures of the make targets, in one data file, shown from it.

    python scripts/figures.py measure TARGET [TARGET ...] [--repeat N]   # time `make TARGET`, record what it found
    python scripts/figures.py render                                      # write the table and README's region
    python scripts/figures.py check                                       # both current? (make docs runs this)

``measure`` runs each target (N times), and records in benchmarks/results/make_targets.json its wall
times, the tests it ran (pytest's summary line) and the best score a training printed (the demos).
``render`` writes benchmarks/results/make_targets.md, which the site's pages include
(``--8<--``), and the region of README.md between the ``figures`` markers (GitHub renders no
includes). What each target runs comes from the comment above it in the Makefile, its one
description. ``render`` also writes benchmarks/results/blockcheck_reference.md, the built-in
blocks' rows of csa_lightning/blockcheck/reference.json (``make blockcheck-reference``) as tables,
benchmarks/results/loader_throughput.md from the loader benchmark's JSON (by the benchmark's own
renderer), README's model table (``csa_lightning.models.summary`` on meta tensors, computed
each time: a changed block or backbone shows in the check) and README's summary of the digits
ablation (columns of benchmarks/results/ablation_digits.md, the report table docs/ablations.md
includes).
``check`` fails when a file is not what ``render`` would write: a figure typed by hand, or a data
file changed without rendering.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "results" / "make_targets.json"
TABLE = ROOT / "benchmarks" / "results" / "make_targets.md"
BLOCKCHECK_TABLE = ROOT / "benchmarks" / "results" / "blockcheck_reference.md"
README = ROOT / "README.md"
LOADER_DATA = ROOT / "benchmarks" / "results" / "loader_throughput.json"
LOADER_TABLE = ROOT / "benchmarks" / "results" / "loader_throughput.md"
#: README's generated regions (GitHub renders no includes): marker name -> what fills it
REGIONS = {
    "figures": "benchmarks/results/make_targets.json",
    "model table": "csa_lightning.models.summary, ResNet-50 and -101",
    "ablation summary": "benchmarks/results/ablation_digits.md",
}
#: the digits ablation's report table, as the ablation runner wrote it (docs/ablations.md includes it)
ABLATION_TABLE = ROOT / "benchmarks" / "results" / "ablation_digits.md"
#: the columns of it README shows
ABLATION_COLUMNS = ("variant", "val top-1 err %", "vs none (paired)", "Holm CI", "params")
#: the depths of README's model table (the paper's Table 1)
MODEL_TABLE_DEPTHS = (50, 101)
#: the targets the table shows, in this order (those measured)
ORDER = ("demo", "demo-litdata", "demo-strong", "demo-finetune", "demo-detection", "test", "test-fast", "test-system",
         "test-slurm", "test-docs", "lint", "docs", "blockcheck-reference", "figures")  # fmt: skip


def makefile_descriptions() -> dict:
    """Each target's description: the comment lines right above its rule (and its variables) in the Makefile."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    found = {}
    for i, line in enumerate(lines):
        rule = re.match(r"^([\w-]+):", line)
        if not rule:
            continue
        comment = []
        j = i - 1
        while j >= 0 and re.match(r"^[A-Z_]+ *[:?]?=", lines[j]):  # the target's own variables
            j -= 1
        while j >= 0 and lines[j].startswith("#"):
            comment.insert(0, lines[j].lstrip("# ").strip())
            j -= 1
        if comment:
            found[rule.group(1)] = " ".join(comment)
    return found


def _found_in(output: str) -> dict:
    found: dict = {}
    summary = re.findall(r"=+ (.*?(?:passed|failed|error).*?) in [\d.]+s", output)
    if summary:
        counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                                summary[-1]))  # fmt: skip
        found["tests"] = counts
    scores = re.findall(r"best checkpoint: .*? \((\S+) = ([0-9.]+)\)", output)
    if scores:
        found["best"] = {"metric": scores[-1][0], "value": float(scores[-1][1])}
    return found


def measure(targets, repeat: int) -> None:
    data = json.loads(DATA.read_text()) if DATA.exists() else {"targets": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    for target in targets:
        runs = []
        for attempt in range(repeat):
            start = time.perf_counter()
            done = subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            output = done.stdout + done.stderr
            if done.returncode != 0:
                sys.exit(f"make {target} failed (exit {done.returncode}):\n" + "\n".join(output.splitlines()[-20:]))
            runs.append({"seconds": round(seconds, 1), **_found_in(output)})
            print(f"make {target} ({attempt + 1}/{repeat}): {_duration(seconds)} {_found_in(output)}", flush=True)
        data["targets"][target] = {"runs": runs, "commit": commit.strip(), "date": time.strftime("%Y-%m-%d")}
    data["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    render()


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _cell(entry: dict) -> tuple:
    runs = entry["runs"]
    seconds = [r["seconds"] for r in runs]
    time_text = _duration(statistics.median(seconds))
    if len(runs) > 1:
        time_text += f" (median of {len(runs)}: {', '.join(_duration(s) for s in seconds)})"
    found = []
    tests = runs[-1].get("tests")
    if tests:
        found.append(", ".join(f"{n} {kind}" for kind, n in tests.items()))
    best = [r["best"]["value"] for r in runs if "best" in r]
    if best:
        metric = runs[-1]["best"]["metric"]
        values = ", ".join(f"{100 * v:.2f} %" for v in best)
        median = f"{100 * statistics.median(best):.2f} %"
        found.append(f"best {metric} {median}" + (f" (median of {len(best)}: {values})" if len(best) > 1 else ""))
    return time_text, "; ".join(found)


def table() -> str:
    data = json.loads(DATA.read_text())
    described = makefile_descriptions()
    lines = ["| command | what it runs | wall time here | what it found |", "|---|---|---|---|"]
    for target in ORDER:
        entry = data["targets"].get(target)
        if entry is None:
            continue
        time_text, found = _cell(entry)
        lines.append(f"| `make {target}` | {described.get(target, '')} | {time_text} | {found} |")
    lines += ["", f"Measured with `python scripts/figures.py measure TARGET` on {data['machine']} (this project's "
              "development machine and CI's: no GPU), after set-up; the commit and date of each are in "
              "benchmarks/results/make_targets.json."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _markers(name: str) -> tuple:
    start = f"<!-- {name}: start (scripts/figures.py render writes this region from {REGIONS[name]}) -->"
    return start, f"<!-- {name}: end -->"


def readme_region(readme: str, name: str, body: str) -> str:
    """README with the region ``name`` (between its markers) holding ``body``."""
    start_marker, end_marker = _markers(name)
    start, end = readme.find(start_marker), readme.find(end_marker)
    if start < 0 or end < start:
        raise SystemExit(f"README.md has no region between {start_marker!r} and {end_marker!r}")
    # blank lines around the body: Markdown reads a table glued to an HTML comment as part of it
    return readme[: start + len(start_marker)] + "\n\n" + body + "\n" + readme[end:]


def model_table() -> str:
    """The parameter and GMAC table of the paper's models (meta tensors: a few seconds)."""
    from csa_lightning.models.summary import summary_table, to_markdown

    return to_markdown(summary_table(MODEL_TABLE_DEPTHS)) + "\n"


def _cells(line: str) -> list:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def ablation_summary() -> str:
    """README's columns of the digits ablation's report table."""
    header, rule, *rows = [line for line in ABLATION_TABLE.read_text().splitlines() if line.startswith("|")]
    names, aligns = _cells(header), _cells(rule)
    keep = [names.index(column) for column in ABLATION_COLUMNS]
    lines = ["| " + " | ".join(names[i] for i in keep) + " |", "|" + "|".join(aligns[i] for i in keep) + "|"]
    lines += ["| " + " | ".join(_cells(row)[i] for i in keep) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def loader_table() -> str:
    """benchmarks/results/loader_throughput.md from the benchmark's JSON (its own renderer)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loader_throughput", ROOT / "benchmarks" / "loader_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.table(json.loads(LOADER_DATA.read_text()))


def rendered() -> dict:
    """Each generated file and what it must hold: the make targets' table, and the built-in blocks'
    blockcheck reference as tables (from csa_lightning/blockcheck/reference.json)."""
    from csa_lightning.blockcheck import reference_tables

    return {TABLE: table(), BLOCKCHECK_TABLE: reference_tables(), LOADER_TABLE: loader_table()}


def readme(files: dict) -> str:
    """README.md with every generated region filled."""
    text = README.read_text()
    text = readme_region(text, "figures", files[TABLE])
    text = readme_region(text, "ablation summary", ablation_summary())
    return readme_region(text, "model table", model_table())


def render() -> None:
    files = rendered()
    for path, body in files.items():
        path.write_text(body)
    README.write_text(readme(files))


def check() -> int:
    files = rendered()
    stale = [str(path.relative_to(ROOT)) for path, body in files.items()
             if not path.exists() or path.read_text() != body]  # fmt: skip
    if readme(files) != README.read_text():
        stale.append("README.md's generated regions")
    if stale:
        print(f"error: {', '.join(stale)} not rendered from the data files; run python "
              "scripts/figures.py render (never edit the figures by hand)", file=sys.stderr)  # fmt: skip
        return 1
    print("figures: the tables and README's regions are rendered from their sources")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("measure", help="time make targets and record what they found")
    run.add_argument("targets", nargs="+")
    run.add_argument("--repeat", type=int, default=1)
    sub.add_parser("render", help="write the table and README's region from the data file")
    sub.add_parser("check", help="exit 1 when the table or README's region is not current")
    args = parser.parse_args()
    if args.action == "measure":
        measure(args.targets, args.repeat)
    elif args.action == "render":
        render()
    else:
        return check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
