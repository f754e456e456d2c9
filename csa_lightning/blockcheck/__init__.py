"""The block check kit: is a new channel-attention block sound, beside the built-in ones?

``python -m csa_lightning.blockcheck your_package.YourGate srm csa`` resolves each name as every tool
does (short names, installed plugins, dotted paths), runs every check on each block and writes
``report.md`` and ``report.json``: one row per block, each check **pass**, **fail** (a correctness
fault; the exit status is then 1) or **finding** (a limit worth knowing, such as no float64
support). ``--builtins`` adds the built-in blocks as rows beside yours.

Three sections, one module each: `csa_lightning.blockcheck.correctness` (faults fail),
`csa_lightning.blockcheck.deployment` (torch.export, ONNX, timm, jit.trace: findings) and
`csa_lightning.blockcheck.cost` (parameters, GMAC, saved bytes and CPU time ratios to the
plain ResNet of the same run). The built-in blocks' rows come from ``reference.json`` beside this
file, which ``make blockcheck-reference`` regenerates; a run measures only the blocks it names.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..attention import available_attentions, resolve_attention
from ..errors import describe
from .correctness import CORRECTNESS_CHECKS, BlockUnderTest, Fault, Finding
from .deployment import DEPLOYMENT_CHECKS

__all__ = [
    "BlockReport",
    "BlockUnderTest",
    "CheckResult",
    "Fault",
    "Finding",
    "attach_cost",
    "blocks_under_test",
    "build_report",
    "builtin_names",
    "check_block",
    "check_blocks",
    "reference_reports",
    "reference_tables",
    "to_markdown",
    "write_report",
    "PASS",
    "FAIL",
    "FINDING",
    "REFERENCE",
]

#: the built-in blocks' report rows, which make blockcheck-reference rewrites
REFERENCE = Path(__file__).with_name("reference.json")
SECTIONS = {"correctness": CORRECTNESS_CHECKS, "deployment": DEPLOYMENT_CHECKS}

__all__ = ["CheckResult", "BlockReport", "check_block", "check_blocks", "write_report", "blocks_under_test",
           "build_report"]  # fmt: skip

PASS, FAIL, FINDING = "pass", "fail", "finding"


@dataclass
class CheckResult:
    section: str
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
    cost: Optional[Dict[str, Any]] = None
    source: str = "measured"  # or "reference..." (a built-in's row from reference.json)

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


def build_report(block: BlockUnderTest) -> Optional[BlockReport]:
    """None when ``block`` builds; else its report: one failed "build" check naming what ``__init__``
    raised. Options it does not take (TypeError) and bad option values (ValueError) are the user's
    to fix and propagate."""
    try:
        block.build(8)
    except (ValueError, TypeError):
        raise
    except Exception as err:  # noqa: BLE001 - the block's own constructor failed: that is the block's row
        detail = f"__init__ raised {describe(err)}"
        cls = block.cls
        result = CheckResult("correctness", "build", FAIL, detail, 0.0)
        return BlockReport(block.label, f"{cls.__module__}.{cls.__qualname__}", block.options, [result])
    return None


def builtin_names() -> List[str]:
    return [n for n in available_attentions() if n != "none"]


def check_block(block: BlockUnderTest, quick: bool = False, sections: Sequence[str] = tuple(SECTIONS),
                checks=None) -> BlockReport:  # fmt: skip
    """The checks of ``sections`` on one block; an unexpected exception in a check is that check's failure."""
    results = []
    for section in sections:
        for name, check in checks or SECTIONS[section]:
            started = time.perf_counter()
            try:
                status, detail = PASS, check(block, quick)
            except Finding as finding:
                status, detail = FINDING, str(finding)
            except Fault as fault:
                status, detail = FAIL, str(fault)
            except Exception as err:  # noqa: BLE001 - a check that breaks on this block is a failure of the block
                status, detail = FAIL, describe(err)
            results.append(CheckResult(section, name, status, detail, round(time.perf_counter() - started, 3)))
    cls = block.cls
    return BlockReport(block.label, f"{cls.__module__}.{cls.__qualname__}", block.options, results)


def check_blocks(blocks: Sequence[BlockUnderTest], quick: bool = False, cost: bool = True,
                 progress=None, sections: Sequence[str] = tuple(SECTIONS)) -> List[BlockReport]:  # fmt: skip
    """``sections`` on every block; the cost of all of them in one benchmark run (one plain baseline)."""
    reports = []
    for block in blocks:
        report = check_block(block, quick, sections)
        if progress is not None:
            progress(report)
        reports.append(report)
    if cost and blocks:
        attach_cost(reports, blocks, quick)
    return reports


def attach_cost(reports: Sequence[BlockReport], blocks: Sequence[BlockUnderTest], quick: bool) -> None:
    """Measure the cost of ``blocks`` in one benchmark run (one plain baseline for all) and set each
    report's cost and its "cost" check (replacing one it had, e.g. a reference row re-measured)."""
    from .cost import cost_findings, measure_cost

    measured = measure_cost(blocks, quick)
    for report in reports:
        if report.block not in measured:
            continue
        report.cost = measured[report.block]
        found = cost_findings(report.cost)
        report.results = [r for r in report.results if r.check != "cost"]
        report.results.append(
            CheckResult("cost", "cost", FINDING if found else PASS, "; ".join(found) or "no finding", 0.0)
        )


def reference_reports() -> List[BlockReport]:
    """The built-in blocks' rows as ``make blockcheck-reference`` measured them."""
    if not REFERENCE.is_file():
        raise FileNotFoundError(f"no reference report at {REFERENCE}; run make blockcheck-reference")
    data = json.loads(REFERENCE.read_text())
    reports = []
    for row in data["blocks"]:
        results = [CheckResult(**r) for r in row.pop("results")]
        reports.append(BlockReport(**{**row, "results": results, "source": "reference"}))
    return reports


def _cell(result: CheckResult) -> str:
    return {PASS: "pass", FAIL: "**FAIL**", FINDING: "finding"}[result.status]


def _check_table(reports: Sequence[BlockReport], mark_sources: bool = True) -> List[str]:
    checks = list(dict.fromkeys(r.check for report in reports for r in report.results))
    lines = ["| block | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
    for report in reports:
        mark = f" ({report.source})" if mark_sources and report.source.startswith("reference") else ""
        cells = {r.check: _cell(r) for r in report.results}
        lines.append(f"| {report.block}{mark} | " + " | ".join(cells.get(c, "-") for c in checks) + " |")
    return lines


def to_markdown(reports: Sequence[BlockReport], quick: bool) -> str:
    lines = [
        "# Block check report",
        "",
        f"{'Quick mode (smaller inputs, fast gradcheck, ResNet-18 timings). ' if quick else ''}"
        "pass / **FAIL** (a correctness fault) / finding (a limit worth knowing); details below the tables. "
        "Rows marked (reference) are the built-ins' as `make blockcheck-reference` measured them.",
        "",
        *_check_table(reports),
    ]
    costed = [r for r in reports if r.cost]
    if costed:
        lines += ["", "## Cost", "", _cost_table(costed)]
    for report in reports:
        options = f", options {json.dumps(report.options)}" if report.options else ""
        lines += ["", f"## {report.block} (`{report.class_path}`{options})", ""]
        lines += [f"- {r.section} / {r.check}: {r.status}: {r.detail} ({r.seconds:.2f} s)" for r in report.results]
    return "\n".join(lines) + "\n"


def reference_tables() -> str:
    """The built-ins' reference (``reference.json``) as the manual shows it: the checks table, then
    the cost table, without the per-check details."""
    reports = reference_reports()
    return (
        "\n".join([*_check_table(reports, mark_sources=False), "", _cost_table([r for r in reports if r.cost])]) + "\n"
    )


def _cost_table(reports: Sequence[BlockReport]) -> str:
    from ..benchmark import ratio_text

    lines = [
        "Against the plain ResNet of the same run (one process, interleaved rounds): parameters and "
        "millions of multiply-adds added, bytes saved for backward, CPU training-step and inference time "
        "ratios (median of the rounds' paired ratios, with their quartiles; 'unstable' where that range is "
        "too wide to support the figure); extra_macs as declared / as torch's flop counter sees them "
        "(64 channels, 14 x 14). Rows are comparable only at the same network, batch and size.",
        "",
        "| block | network, batch x size | placement | + params | + MMAC | saved for backward | train | infer | "
        "extra_macs declared / seen |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for report in reports:
        c = report.cost
        if c is None:
            continue
        setting = c["setting"]
        net = f"ResNet-{setting['depth']}, {setting['batch']} x {setting['size']} px"
        macs = c["extra_macs"]
        for p in ("stage_end", "every_block"):
            row = c[p]
            mmac = (row["gmac"] - c["plain"]["gmac"]) * 1e3
            lines.append(
                f"| {report.block} | {net} | {p} | {row['params'] - c['plain']['params']:,} | "
                f"{mmac:.0f} | {row['saved_ratio']:.2f}x | {ratio_text(row, 'train')} | "
                f"{ratio_text(row, 'infer')} | {macs['declared']:,} / {macs['flop_counter']:,} |"
            )
    return "\n".join(lines)


def write_report(reports: Sequence[BlockReport], out: Path, quick: bool) -> None:
    """Write ``report.json`` and ``report.md`` of the reports into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"quick": quick, "blocks": [asdict(r) for r in reports]}
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "report.md").write_text(to_markdown(reports, quick))
