"""The block check kit: the built-in blocks pass every check; each deliberately faulty block fails
the check meant to catch it; bad input is one line."""

import json

import pytest

from csa_lightning.blockcheck import (
    FAIL,
    FINDING,
    PASS,
    SECTIONS,
    BlockUnderTest,
    blocks_under_test,
    builtin_names,
    check_block,
    check_blocks,
    reference_reports,
)
from csa_lightning.blockcheck import cost as cost_section
from csa_lightning.blockcheck.__main__ import main

from . import faulty_blocks
from .conftest import refusal


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_block_passes_every_check(name):
    """Correctness and deployment (the cost section is the reference report's). Also the generic
    properties the suite asserted block by block before the kit (finite on all-zero maps, training
    under bf16 / fp16 autocast in a ResNet)."""
    (block,) = blocks_under_test([name])
    report = check_block(block, quick=True)
    assert [(r.check, r.status, r.detail) for r in report.results if r.status != PASS] == []


@pytest.mark.parametrize(
    "cls, check, detail",
    [
        (faulty_blocks.NaNOnZeroMaps, "degenerate inputs", "all_zero: non-finite output"),
        (faulty_blocks.StateAtModuleLevel, "calls, copies, threads", "depends on the input of an earlier call"),
        (faulty_blocks.FloatCast, "float64 gradcheck", "a float64 input gives a torch.float32 gate"),
        (faulty_blocks.BatchNormOnVectors, "batch of 1, training", "batch of 1 in training mode fails (ValueError"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_each_faulty_block_fails_its_check(cls, check, detail):
    report = check_block(BlockUnderTest(cls.__name__, cls), sections=["correctness"])
    result = next(r for r in report.results if r.check == check)
    assert result.status == FAIL and detail in result.detail, result


def test_a_block_torch_export_cannot_capture_is_a_finding_not_a_fault():
    block = BlockUnderTest("branch", faulty_blocks.DataDependentBranch)
    report = check_block(block, sections=["deployment"])
    statuses = {r.check: r.status for r in report.results}
    # a trace records the branch its example took: the negated map shows it
    assert statuses == {"torch.export": FINDING, "ONNX": FINDING, "timm": PASS, "jit.trace": FINDING}, statuses
    assert "torch.export with a dynamic batch fails" in report.results[0].detail
    assert report.failed == []


def test_cost_measures_against_the_plain_resnet_and_finds_undeclared_multiply_adds(monkeypatch):
    monkeypatch.setitem(cost_section.SETTINGS, True, dict(depth=18, batch=2, size=32, repeats=1))
    blocks = [BlockUnderTest("gram", faulty_blocks.UndeclaredProduct), *blocks_under_test(["csa"])]
    gram, csa = check_blocks(blocks, quick=True, sections=[])
    for report in (gram, csa):
        for placement in ("stage_end", "every_block"):
            row = report.cost[placement]
            assert row["params"] >= report.cost["plain"]["params"] and row["train_ratio"] > 0
            assert row["saved_ratio"] > 1  # the gate's product with the map is saved for backward
    # a (N, C, C) Gram matrix of a 64-channel 14 x 14 map: 64 * 64 * 196 multiply-adds, none declared
    assert gram.cost["extra_macs"] == {"declared": 0, "flop_counter": 64 * 64 * 196, "input": [1, 64, 14, 14]}
    (result,) = gram.results
    assert result.status == FINDING and "extra_macs declares 0 multiply-adds" in result.detail
    # CSA declares what the flop counter sees of its matrix products (within the 10 % the finding allows)
    macs = csa.cost["extra_macs"]
    assert macs["flop_counter"] <= 1.1 * macs["declared"] + 1000, macs


def test_the_command_writes_both_reports_and_exits_1_on_a_fault(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["tests.faulty_blocks.NaNOnZeroMaps", "se", "--builtins", "--quick", "--no-cost", "--out", str(out)])
    assert code == 1
    printed = capsys.readouterr().out
    assert "NaNOnZeroMaps: degenerate inputs: fail" in printed and "se: every check passes" in printed
    data = json.loads((out / "report.json").read_text())
    # the named blocks measured, the other built-ins' rows from the reference report
    rows = [(b["block"], b["source"]) for b in data["blocks"]]
    others = [(n, "reference") for n in builtin_names() if n != "se"]
    assert rows == [("tests.faulty_blocks.NaNOnZeroMaps", "measured"), ("se", "measured"), *others]
    table = (out / "report.md").read_text()
    assert "| tests.faulty_blocks.NaNOnZeroMaps | pass | pass | pass | **FAIL** |" in table
    assert "| csa (reference) | pass |" in table and "| csa | ResNet-50, 8 x 224 px | every_block |" in table
    # constructor arguments the kit cannot guess come as JSON options
    assert main(["tests.faulty_blocks.NeedsAnArgument", "--options", '{"temperature": 2.0}', "--quick",
                 "--out", str(out)]) == 0  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["sqeeze"], "error: unknown attention 'sqeeze'"),
        (["none"], "error: 'none' is no block (it means no attention); name a block to check"),
        (["torch.nn.Linear"], "not a ChannelAttention subclass; point it to a class that subclasses"),
        (["tests.faulty_blocks.NeedsAnArgument"], "pass its constructor arguments with --options JSON"),
        (["se", "--options", "[1]"], "error: --options must be a JSON object"),
        ([], "error: name at least one block"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    assert message in refusal(capsys, main, [*args, "--out", str(tmp_path)])


def test_the_reference_report_covers_every_builtin_block_and_every_check():
    """A check added to the kit (or a block to the registry) needs make blockcheck-reference."""
    reports = {r.block: r for r in reference_reports()}
    assert sorted(reports) == sorted(builtin_names()), "run make blockcheck-reference"
    expected = [(section, name) for section, checks in SECTIONS.items() for name, _ in checks] + [("cost", "cost")]
    for report in reports.values():
        assert [(r.section, r.check) for r in report.results] == expected, "run make blockcheck-reference"
        assert report.cost["setting"] == cost_section.SETTINGS[False]


def test_a_block_whose_constructor_fails_gets_one_line_and_a_report_row(tmp_path, capsys):
    """Before: a 20-line traceback and no report."""
    assert main(["tests.faulty_blocks.BrokenInit", "--no-cost", "--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "tests.faulty_blocks.BrokenInit: could not be built (__init__ raised RuntimeError: weights file for the gate "
        "is missing); its row says so"
    ]
    report = (tmp_path / "report.md").read_text()
    assert "| tests.faulty_blocks.BrokenInit | **FAIL** |" in report
    assert "correctness / build: fail: __init__ raised RuntimeError" in report
