"""The block check kit: the built-in blocks pass every check; each deliberately faulty block fails
the check meant to catch it; bad input is one line."""

import json

import pytest

from csa_lightning.blockcheck import FAIL, PASS, BlockUnderTest, blocks_under_test, builtin_names, check_block
from csa_lightning.blockcheck.__main__ import main

from . import faulty_blocks


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_block_passes_every_check(name):
    """Also the generic properties the suite asserted block by block before the kit (finite on
    all-zero maps, training under bf16 / fp16 autocast in a ResNet)."""
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
    report = check_block(BlockUnderTest(cls.__name__, cls))
    result = next(r for r in report.results if r.check == check)
    assert result.status == FAIL and detail in result.detail, result


def test_the_command_writes_both_reports_and_exits_1_on_a_fault(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["tests.faulty_blocks.NaNOnZeroMaps", "se", "--quick", "--out", str(out)])
    assert code == 1
    printed = capsys.readouterr().out
    assert "NaNOnZeroMaps: degenerate inputs: fail" in printed and "se: every check passes" in printed
    data = json.loads((out / "report.json").read_text())
    assert [b["block"] for b in data["blocks"]] == ["tests.faulty_blocks.NaNOnZeroMaps", "se"]
    table = (out / "report.md").read_text()
    assert "| tests.faulty_blocks.NaNOnZeroMaps | pass | pass | pass | **FAIL** |" in table
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
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
