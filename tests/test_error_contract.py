"""The one error contract: every command refuses bad input in one line with exit status 2, --help exits 0,
repeated options add up or are refused (never silently dropped), and library code raises UsageError."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from csa_lightning.errors import ToolParser, UsageError, command, list_option

from .conftest import refusal

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo" / "digits_csa.yaml")

#: every command-line entry point (module with main(argv)) and one bad argument list for it
COMMANDS = {
    "csa_lightning.cli": ["fit", "--config", DEMO, "--trainer.max_epochs", "-3"],
    "csa_lightning.ablate.runner": ["--config", DEMO, "--out", "x", "--seeds", "zero"],
    "csa_lightning.analysis.cli": ["descriptors", "--ckpt", "x", "--images", "y", "--out", "z", "--size", "0"],
    "csa_lightning.benchmark": ["--batch", "0"],
    "csa_lightning.models.summary": ["--depths", "17"],
    "csa_lightning.blockcheck.__main__": [],
    "csa_lightning.export": ["--ckpt", "x", "--out", "y.onnx", "--opset", "12"],
    "csa_lightning.publish": ["--ckpt", "/no/such/run", "--out", "folder"],
    "csa_lightning.slurm": ["--", "validate"],
    "csa_lightning.data.write_beton": ["--root", "/no/such/folder", "--out", "x.beton"],
    "csa_lightning.data.write_litdata": ["/no/such/folder", "out"],
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_refuses_bad_input_in_one_line_with_status_2(module, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    line = refusal(capsys, main, COMMANDS[module])
    assert len(line) > len("error: ") + 10


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_exits_0_everywhere(module, capsys):
    main = importlib.import_module(module).main
    args = ["fit", "--help"] if module == "csa_lightning.cli" else ["--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    assert "usage" in capsys.readouterr().out.lower()


def test_a_tool_run_as_a_program_exits_2_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "csa_lightning.ablate", "--config", DEMO, "--out", "x", "--seeds", "0", "--seeds", "0"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: --seeds lists 0 twice; give each value once"


def test_usage_error_is_a_value_error_and_command_turns_it_into_status_2(capsys):
    assert issubclass(UsageError, ValueError)

    @command
    def main(argv):
        raise UsageError("--thing must be positive, got -1\nsecond line is dropped")

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --thing must be positive, got -1\n"


def test_the_traceback_switch_reraises(monkeypatch):
    monkeypatch.setenv("CSA_LIGHTNING_TRACEBACK", "1")

    @command
    def main(argv):
        raise UsageError("bad")

    with pytest.raises(UsageError):
        main([])


def _parser():
    parser = ToolParser(prog="tool")
    parser.add_argument("--out")
    parser.add_argument("--size", type=int, default=3)
    list_option(parser, "--seeds", item_type=int, default=[0])
    return parser


def test_a_list_option_adds_up_over_repeats_and_refuses_an_item_twice():
    assert _parser().parse_args([]).seeds == [0]
    assert _parser().parse_args(["--seeds", "0,1", "--seeds", "2"]).seeds == [0, 1, 2]
    assert _parser().parse_args(["--seeds", "5"]).seeds == [5]  # the default is replaced, not extended
    with pytest.raises(UsageError, match="--seeds lists 1 twice"):
        _parser().parse_args(["--seeds", "0,1", "--seeds", "1"])
    with pytest.raises(UsageError, match="--seeds is empty"):
        _parser().parse_args(["--seeds", ""])
    with pytest.raises(UsageError, match="empty item"):
        _parser().parse_args(["--seeds", "0,,1"])


def test_a_single_value_option_given_twice_is_refused():
    with pytest.raises(UsageError, match=r"--size is given twice \(3, then 4\); give it once"):
        _parser().parse_args(["--size", "3", "--size", "4"])
    with pytest.raises(UsageError, match="--out is given twice"):
        _parser().parse_args(["--out=a", "--out", "b"])


def test_a_value_that_looks_like_an_option_is_the_options_value():
    parser = ToolParser(prog="tool")

    def non_negative(text):
        value = int(text)
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    list_option(parser, "--seeds", item_type=non_negative)
    with pytest.raises(UsageError, match="--seeds: must be >= 0, got -1"):
        parser.parse_args(["--seeds", "-1,0"])


def test_argparse_errors_are_usage_errors_naming_help():
    with pytest.raises(UsageError, match=r"unrecognized arguments: --nope \(tool --help lists every option\)"):
        _parser().parse_args(["--nope"])


def test_lightning_noise_is_left_out_of_the_projects_commands(tmp_path, monkeypatch):
    """Before: every run printed the litlogger tip, and Lightning's srun hint where SLURM is installed."""
    import logging
    import warnings

    from lightning.fabric.plugins.environments import SLURMEnvironment

    from csa_lightning.cli import build_cli, quiet_lightning

    monkeypatch.chdir(tmp_path)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = Keep()
    logger.addHandler(handler)
    try:
        build_cli(["--config", DEMO, "--trainer.fast_dev_run", "1"], run=False)
    finally:
        logger.removeHandler(handler)
    assert seen and not any("litlogger" in m for m in seen)  # Lightning's other messages still come through
    quiet_lightning()
    monkeypatch.setattr("lightning.fabric.plugins.environments.slurm.shutil.which", lambda name: "/usr/bin/srun")
    with warnings.catch_warnings(record=True) as caught:
        SLURMEnvironment._validate_srun_used()
    assert not any("srun" in str(w.message) for w in caught)


#: found by trying every option of every tool with a wrong type, an empty value, a value out of range and the
#: same value twice: each was a traceback, a hang or a silent run before; each is one line now
OPTION_CASES = [
    ("csa_lightning.benchmark", ["--attentions", ""], "error: --attentions is empty"),
    ("csa_lightning.benchmark", ["--csa-modes", ""], "error: --csa-modes is empty"),
    ("csa_lightning.benchmark", ["--csa-modes", "foo"], "error: --csa-modes: unknown contiguity mode 'foo': choose from l2"),
    ("csa_lightning.benchmark", ["--size", "100000"], "error: argument --size: must be from 1 to 4096, got 100000"),
    ("csa_lightning.benchmark", ["--depth", "17"], "error: argument --depth: invalid choice: 17"),
    ("csa_lightning.benchmark", ["--out", "/proc/csa/x.json"], "error: --out /proc/csa/x.json cannot be written"),
    ("csa_lightning.benchmark", ["--batch", "2", "--batch", "4"], "error: --batch is given twice (2, then 4)"),
    ("csa_lightning.models.summary", ["--depths", "18,18"], "error: --depths lists 18 twice"),
    ("csa_lightning.models.summary", ["--depths", "17"], "error: --depths: unsupported depth '17': choose from 18, 34"),
    ("csa_lightning.models.summary", ["--attentions", ""], "error: --attentions is empty"),
    ("csa_lightning.models.summary", ["--placement", "foo"], "error: argument --placement: invalid choice: 'foo'"),
    ("csa_lightning.blockcheck.__main__", ["se", "--out", "/proc/csa/x"], "error: --out /proc/csa/x cannot be written"),
    ("csa_lightning.export", ["--ckpt", "", "--out", "m.onnx"], "error: argument --ckpt: must not be empty"),
    ("csa_lightning.export", ["--ckpt", "x", "--out", "/proc/csa/m.onnx"], "error: --out /proc/csa/m.onnx cannot be written"),
    ("csa_lightning.slurm", ["--job-name", "", "--", "fit"], "error: argument --job-name: must not be empty"),
    ("csa_lightning.slurm", ["--script", "/proc/csa/x.sh", "--", "fit"], "error: --script /proc/csa/x.sh cannot be written"),
    ("csa_lightning.data.write_beton", ["--root", "", "--out", "x.beton"], "error: argument --root: must not be empty"),
    ("csa_lightning.data.write_beton", ["--root", "r", "--out", "/proc/csa/x.beton"], "error: --out /proc/csa/x.beton cannot be written"),
    ("csa_lightning.data.write_litdata", ["i", "o", "--chunk-bytes", "abc"], "error: argument --chunk-bytes: must be a positive size"),
    ("csa_lightning.data.write_litdata", ["i", "o", "--splits", "train,train"], "error: --splits lists train twice"),
    ("csa_lightning.ablate.runner", ["--config", DEMO, "--out", "x", "--metric", ""], "error: argument --metric: must not be empty"),
    ("csa_lightning.ablate.runner", ["--config", DEMO, "--out", "x", "--baseline", " "], "error: argument --baseline: must not be empty"),
]  # fmt: skip


@pytest.mark.parametrize("module, args, message", OPTION_CASES, ids=[f"{m}:{' '.join(a)}" for m, a, _ in OPTION_CASES])
def test_every_option_refuses_a_bad_value_in_one_line(module, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = refusal(capsys, importlib.import_module(module).main, args)
    assert error.startswith(message), error
