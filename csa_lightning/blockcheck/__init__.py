"""The block check kit: is a new channel-attention block sound, beside the built-in ones?

``python -m csa_lightning.blockcheck your_package.YourGate srm csa`` resolves each name as every tool
does (short names, installed plugins, dotted paths), runs every check on each block and writes
``report.md`` and ``report.json``: one row per block, each check **pass**, **fail** (a correctness
fault; the exit status is then 1) or **finding** (a limit worth knowing, such as no float64
support). ``--builtins`` adds the built-in blocks as rows beside yours.

The checks are in :mod:`csa_lightning.blockcheck.correctness` (one function each); this module
runs them and keeps the results.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..attention import available_attentions, resolve_attention
from .correctness import CORRECTNESS_CHECKS, BlockUnderTest, Fault, Finding

__all__ = ["CheckResult", "BlockReport", "check_block", "check_blocks", "write_report", "blocks_under_test"]

PASS, FAIL, FINDING = "pass", "fail", "finding"


@dataclass
class CheckResult:
    check: str
    status: str  # pass / fail / finding
    detail: str
    seconds: float


@dataclass
class BlockReport:
    block: str
    class_path: str
    options: Dict[str, Any]
    results: List[CheckResult]

    @property
    def failed(self) -> List[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def findings(self) -> List[CheckResult]:
        return [r for r in self.results if r.status == FINDING]


def blocks_under_test(names: Sequence[str], options: Optional[Dict[str, Any]] = None) -> List[BlockUnderTest]:
    """Resolve each name (one-line ValueError / TypeError naming the fix for one that resolves to nothing)."""
    blocks = []
    for name in names:
        cls = resolve_attention(name)
        if cls is None:
            raise ValueError(f"'{name}' is no block (it means no attention); name a block to check")
        blocks.append(BlockUnderTest(name, cls, dict(options or {})))
    return blocks


def builtin_names() -> List[str]:
    return [n for n in available_attentions() if n != "none"]


def check_block(block: BlockUnderTest, quick: bool = False, checks=None) -> BlockReport:
    """Every check on one block; an unexpected exception in a check is that check's failure."""
    results = []
    for name, check in checks or CORRECTNESS_CHECKS:
        started = time.perf_counter()
        try:
            status, detail = PASS, check(block, quick)
        except Finding as finding:
            status, detail = FINDING, str(finding)
        except Fault as fault:
            status, detail = FAIL, str(fault)
        except Exception as err:  # noqa: BLE001 - a check that breaks on this block is a failure of the block
            first = (str(err).strip().splitlines() or [""])[0][:200]
            status, detail = FAIL, f"{type(err).__name__}: {first}"
        results.append(CheckResult(name, status, detail, round(time.perf_counter() - started, 3)))
    cls = block.cls
    return BlockReport(block.label, f"{cls.__module__}.{cls.__qualname__}", block.options, results)


def check_blocks(blocks: Sequence[BlockUnderTest], quick: bool = False, progress=None) -> List[BlockReport]:
    reports = []
    for block in blocks:
        report = check_block(block, quick)
        if progress is not None:
            progress(report)
        reports.append(report)
    return reports


def _cell(result: CheckResult) -> str:
    return {PASS: "pass", FAIL: "**FAIL**", FINDING: "finding"}[result.status]


def to_markdown(reports: Sequence[BlockReport], quick: bool) -> str:
    checks = [r.check for r in reports[0].results] if reports else []
    lines = [
        "# Block check report",
        "",
        f"{'Quick mode (smaller inputs, fast gradcheck). ' if quick else ''}"
        "pass / **FAIL** (a correctness fault) / finding (a limit worth knowing); details below the table.",
        "",
        "| block | " + " | ".join(checks) + " |",
        "|---|" + "---|" * len(checks),
    ]
    for report in reports:
        lines.append(f"| {report.block} | " + " | ".join(_cell(r) for r in report.results) + " |")
    for report in reports:
        options = f", options {json.dumps(report.options)}" if report.options else ""
        lines += ["", f"## {report.block} (`{report.class_path}`{options})", ""]
        lines += [f"- {r.check}: {r.status}: {r.detail} ({r.seconds:.2f} s)" for r in report.results]
    return "\n".join(lines) + "\n"


def write_report(reports: Sequence[BlockReport], out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"quick": quick, "blocks": [asdict(r) for r in reports]}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "report.md").write_text(to_markdown(reports, quick))
