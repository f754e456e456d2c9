"""python -m csa_lightning.blockcheck BLOCK [BLOCK ...] [--builtins] [--options JSON] [--quick] [--no-cost] [--out DIR]

``--write-reference`` measures every built-in block (every section, the full cost setting) and
rewrites the reference report the ``--builtins`` rows come from (``make blockcheck-reference``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

from ..checks import require_writable_folder
from ..errors import ToolParser, UsageError, command, first_line
from ..run_switches import short_run
from . import (
    REFERENCE,
    attach_cost,
    blocks_under_test,
    build_report,
    builtin_names,
    check_blocks,
    reference_reports,
    write_report,
)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = ToolParser(
        prog="python -m csa_lightning.blockcheck",
        description="Check channel-attention blocks for correctness; writes report.md and report.json.",
    )
    parser.add_argument("blocks", nargs="*", help="short names, plugin names or dotted paths (your_pkg.YourGate)")
    parser.add_argument(
        "--builtins", action="store_true", help="add the built-in blocks' rows (from the reference report) beside yours"
    )
    parser.add_argument("--no-cost", action="store_true", help="skip the cost section (timings)")
    parser.add_argument(
        "--write-reference", action="store_true", help=f"measure every built-in block and rewrite {REFERENCE.name}"
    )
    parser.add_argument("--options", default="{}",
                        help="JSON constructor options for the named blocks, e.g. '{\"reduction\": 8}'")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smaller inputs and gradcheck's fast mode")
    parser.add_argument("--out", default="runs/blockcheck", help="folder for report.md and report.json")
    return parser.parse_args(argv)


@command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--options must be a JSON object such as '{{\"reduction\": 8}}', got {args.options!r}"
        ) from None
    if args.write_reference:
        args.blocks, args.builtins, args.quick, args.no_cost = builtin_names(), False, False, False
    elif short_run() and not args.quick:
        print("CSA_SHORT_RUN is set: checking in --quick mode", flush=True)
        args.quick = True
    require_writable_folder("--out", args.out)  # written after minutes of checks: refused now if it cannot be
    if not args.blocks and not args.builtins:
        raise UsageError("name at least one block (e.g. your_pkg.YourGate) or pass --builtins")
    try:
        blocks = blocks_under_test(args.blocks, options)
        unbuilt = [report for report in map(build_report, blocks) if report is not None]
        reference = reference_reports() if args.builtins else []
    except (ValueError, TypeError, FileNotFoundError) as err:
        message = first_line(err)
        hint = "; pass its constructor arguments with --options JSON" if "cannot build" in message else ""
        raise UsageError(f"{message}{hint}") from None
    for report in unbuilt:
        print(f"{report.block}: could not be built ({report.results[0].detail}); its row says so", file=sys.stderr)
    blocks = [b for b in blocks if b.label not in {r.block for r in unbuilt}]

    def progress(report) -> None:
        cells = (
            ", ".join(f"{r.check}: {r.status}" for r in report.results if r.status != "pass") or "every check passes"
        )
        print(f"{report.block}: {cells}", flush=True)

    # quick mode times a small network: the built-ins' reference rows (ResNet-50) are no comparison, so
    # their cost is measured again in the same run as the named blocks
    remeasure = args.quick and args.builtins and not args.no_cost
    reports = check_blocks(blocks, quick=args.quick, cost=not args.no_cost and not remeasure, progress=progress)
    named = {r.block for r in reports}
    reference = [r for r in reference if r.block not in named]
    if remeasure:
        builtins = blocks_under_test([r.block for r in reference])
        attach_cost(reports + reference, [*blocks, *builtins], quick=True)
        for report in reference:
            report.source = "reference; cost re-measured here"
    reports += unbuilt
    if args.write_reference:
        REFERENCE.write_text(json.dumps({"quick": False, "blocks": [asdict(r) for r in reports]}, indent=1) + "\n")
        print(f"reference: {REFERENCE}")
    reports += reference
    out = Path(args.out)
    write_report(reports, out, args.quick)
    failed = [r.block for r in reports if r.failed]
    print(f"report: {out / 'report.md'}; {len(failed)} of {len(reports)} blocks fail" +
          (f" ({', '.join(failed)})" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
