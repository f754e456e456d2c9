"""cli.py and configs/: every config instantiates, print_config round-trips, switches, errors."""

import json
import sys

import pytest
import torch
import yaml

from csa_lightning.attention import CSA, SqueezeExcitation
from csa_lightning.cli import HELP_HINT, build_cli, main
from csa_lightning.data import DigitsMemoryDataModule, FFCVDataModule
from csa_lightning.tasks import ClassificationModule, DetectionModule

from . import recipe_trace
from .conftest import CONFIGS, DEMO_CONFIG, MEMORY_DATA, TIMEOUT

PAPER_ROWS = {
    "r50": (50, "none"), "se_r50": (50, "se"), "cbam_r50": (50, "cbam"), "eca_r50": (50, "eca"),
    "gct_r50": (50, "gct"), "csa_r50": (50, "csa"), "r101": (101, "none"), "se_r101": (101, "se"),
    "eca_r101": (101, "eca"), "gct_r101": (101, "gct"), "csa_r101": (101, "csa"),
}  # fmt: skip

# every runnable config: the top level (paper rows + their base), the COCO rows and the demos
RUNNABLE_CONFIGS = (
    sorted(CONFIGS.glob("*.yaml"))
    + sorted((CONFIGS / "coco").glob("*.yaml"))
    + sorted((CONFIGS / "demo").glob("*.yaml"))
)

RECORDED_RECIPES = json.loads(recipe_trace.RECORD.read_text())


def test_one_config_per_buildable_table1_row():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= set(PAPER_ROWS)


@pytest.mark.parametrize("path", RUNNABLE_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_instantiates(path, in_tmp_cwd):
    detection = "rcnn" in path.stem
    # build classifiers on the meta device (no ResNet-101 weights allocated); torchvision's detectors
    # copy constants at construction, so they are built for real (backbone weights load at fit time)
    with torch.device("cpu" if detection else "meta"):
        cli = build_cli(["--config", str(path)], run=False)
        # the optimiser, its parameter groups and every step's lr as recorded before they became pieces
        assert recipe_trace.trace_built(cli) == RECORDED_RECIPES[str(path.relative_to(CONFIGS).with_suffix(""))]
    if detection:
        assert isinstance(cli.model, DetectionModule) and cli.model.net_spec.architecture in path.stem
        return
    assert isinstance(cli.model, ClassificationModule)
    if path.stem in PAPER_ROWS:
        depth, attention = PAPER_ROWS[path.stem]
        hp, net = cli.model.hparams, cli.model.net_spec
        assert (net.depth, net.attention) == (depth, attention)
        sgd = hp.optimizer["init_args"]
        assert hp.optimizer["class_path"] == "torch.optim.SGD" and hp.lr_reference_batch == 128
        assert (sgd["lr"], sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (0.1, 0.9, True, 1e-4)
        assert hp.lr_schedule["init_args"]["milestones"] == [30, 60, 90] and cli.trainer.max_epochs == 100
        assert isinstance(cli.datamodule, FFCVDataModule) and cli.datamodule.batch_size == 64
        assert cli.trainer.precision == "bf16-mixed"
        expected_gates = 0 if attention == "none" else 4 if attention == "csa" else {50: 16, 101: 33}[depth]
        assert len(list(cli.model.model.gates())) == expected_gates


@pytest.mark.parametrize("name", sorted(recipe_trace.COMBINATIONS))
def test_strong_recipe_combinations_keep_their_recorded_recipe(name, in_tmp_cwd):
    assert recipe_trace.trace_config(recipe_trace.COMBINATIONS[name]) == RECORDED_RECIPES[name]


def test_print_config_round_trips(in_tmp_cwd, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "csa_r101.yaml"), "--print_config"])
    first = capsys.readouterr().out
    (in_tmp_cwd / "printed.yaml").write_text(first)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "printed.yaml", "--print_config"])
    second = capsys.readouterr().out
    assert first == second
    printed = yaml.safe_load(first)
    net = printed["model"]["init_args"]["net"]["init_args"]
    assert net["depth"] == 101 and net["attention"] == "csa"


def test_command_line_switches(in_tmp_cwd):
    with torch.device("meta"):
        cli = build_cli(
            [
                "--config", str(CONFIGS / "csa_r101.yaml"),
                "--model.net.attention", "se", "--model.net.depth", "50", "--model.net.placement", "stage_end",
                "--data.train_path", "/data/t.beton", "--data.val_path", "/data/v.beton",
            ],
            run=False,
        )  # fmt: skip
        gates = [g for _, g in cli.model.model.gates()]
        assert len(gates) == 4 and all(isinstance(g, SqueezeExcitation) for g in gates)
        assert cli.datamodule.train_path == "/data/t.beton" and cli.datamodule.val_path == "/data/v.beton"
        cli = build_cli(
            ["--config", str(CONFIGS / "csa_r50.yaml"), "--model.net.placement", "every_block",
             "--model.net.attention_options", "{contiguity: hybrid}"],
            run=False,
        )  # fmt: skip
        gates = [g for _, g in cli.model.model.gates()]
        assert len(gates) == 16 and all(isinstance(g, CSA) and g.contiguity == "hybrid" for g in gates)
        cli = build_cli(
            ["--config", str(CONFIGS / "csa_r50.yaml"), "--model.net.placement", "[[0, -1], [3, -1]]"], run=False
        )
        assert cli.model.model.gate_positions == [(0, 2), (3, 2)]


def test_fast_dev_run_through_the_cli(in_tmp_cwd):
    cli = main(["fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA, "--trainer.fast_dev_run", "2"])
    assert isinstance(cli.datamodule, DigitsMemoryDataModule)
    assert cli.trainer.state.finished
    assert "val/top1" in cli.trainer.callback_metrics


# ---------------------------------------------------------------------------- bad input


def run_cli_expecting_error(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    return capsys.readouterr().err.strip()


def test_missing_beton_names_the_path_and_the_writer(in_tmp_cwd, capsys):
    err = run_cli_expecting_error(
        ["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.FFCVDataModule",
         "--data.train_path", "nowhere/train.beton", "--data.val_path", "nowhere/val.beton"],
        capsys,
    )  # fmt: skip
    last = err.splitlines()[-1]
    assert last.startswith("error: train beton not found: nowhere/train.beton")
    assert "python -m csa_lightning.data.write_beton --root DIR --out nowhere/train.beton" in last
    assert not (in_tmp_cwd / "runs").exists(), "a failed run must leave no run folder behind"


def test_labels_beyond_num_classes_are_refused(in_tmp_cwd, digits_betons, capsys):
    err = run_cli_expecting_error(
        ["fit", "--config", str(DEMO_CONFIG), "--data.data_dir", str(digits_betons), "--model.net.num_classes", "5"],
        capsys,
    )
    assert (
        err.splitlines()[-1]
        == "error: the data has labels up to 9 but model.net.num_classes is 5; set --model.net.num_classes 10"
    )
    assert not (in_tmp_cwd / "runs").exists()


def test_unknown_attention_lists_the_known_ones(in_tmp_cwd, capsys):
    err = run_cli_expecting_error(["fit", "--config", str(DEMO_CONFIG), "--model.net.attention", "csaa"], capsys)
    from csa_lightning.attention import available_attentions

    known = available_attentions()  # the built-in blocks, plus any an earlier test registered
    assert {"none", "cbam", "csa", "eca", "gct", "se"} <= set(known)
    assert err.splitlines()[-1] == (
        f"error: unknown attention 'csaa' (did you mean 'csa'?): choose one of {', '.join(known)}, give a "
        "dotted import path such as 'mypkg.blocks.MyGate', or install a package declaring it under the "
        "entry-point group 'csa_lightning.attention'"
    )


def test_misspelt_config_key_is_reported(in_tmp_cwd, capsys):
    (in_tmp_cwd / "typo.yaml").write_text(f"config: {DEMO_CONFIG}\nmodel.init_args.atention: se\n")
    err = run_cli_expecting_error(["fit", "--config", "typo.yaml"], capsys)
    assert "atention" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_corrupt_or_missing_checkpoint_is_one_line(in_tmp_cwd, capsys, damage):
    path = in_tmp_cwd / "model.ckpt"
    if damage == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
        path.write_bytes(path.read_bytes()[:-300])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    err = run_cli_expecting_error(["fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA, "--ckpt_path", str(path)], capsys)
    assert len(err.splitlines()) == 1
    if damage == "missing":
        assert err == f"error: checkpoint not found: {path}; pass an existing .ckpt or --ckpt_path last to resume"
    else:
        assert err.startswith(f"error: checkpoint {path} is corrupt")


def test_resume_last_without_any_run_explains(in_tmp_cwd, capsys):
    err = run_cli_expecting_error(["fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA, "--ckpt_path", "last"], capsys)
    assert (
        err
        == "error: --ckpt_path last: no last.ckpt under runs/demo_digits_csa; train first, or pass the checkpoint's path"
    )


def test_cli_script_runs_as_a_program(in_tmp_cwd):
    import subprocess

    from .conftest import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(DEMO_CONFIG), "--print_config"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "csa_lightning.data.DigitsDataModule" in out.stdout


def test_a_failed_fast_dev_run_leaves_no_folder(in_tmp_cwd, capsys):
    """Before: a fast_dev_run that failed in its training step left runs/<name>/run_info.json."""
    err = run_cli_expecting_error(
        [
            "fit",
            "--config",
            str(DEMO_CONFIG),
            "--data",
            "csa_lightning.data.DigitsMemoryDataModule",
            "--data.resolution",
            "8",
            "--data.batch_size",
            "1",
            "--trainer.fast_dev_run",
            "1",
        ],  # fmt: skip
        capsys,
    )
    assert "Expected more than 1 value per channel" in err  # BatchNorm on a batch of one, mid-step
    assert not (in_tmp_cwd / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model.lr_scalng", "sqrt"],
            "error: ClassificationModule has no option 'lr_scalng'; did you mean 'lr_scaling'?",
        ),
        (
            ["--model.lr", "0.1"],
            "error: ClassificationModule has no option 'lr': the optimiser and the lr schedule "
            "are pieces now; use model.optimizer.lr",
        ),
        (["--model.net.depht", "18"], "error: ResNetSpec has no option 'depht'; did you mean 'depth'?"),
        (["--model.lr_reference_batch", "abc"], "error: option 'model.lr_reference_batch' expects int, got 'abc'"),
        (["--trainer.max_epochs", "abc"], "error: option 'trainer.max_epochs' expects int, got 'abc'"),
    ],
)
def test_a_misspelt_key_or_wrong_type_is_one_line_first(args, message, in_tmp_cwd, capsys):
    """Before: a 45-line usage dump, then jsonargparse's nested Union message."""
    err = run_cli_expecting_error(["fit", "--config", str(DEMO_CONFIG), *args], capsys).splitlines()
    assert err == [message + HELP_HINT]


@pytest.mark.system
@pytest.mark.slow
def test_sigterm_ends_a_run_blocked_in_its_data_loader(tmp_path):
    """Before: a loader that never returned a batch left `cli.py validate` waiting forever and
    SIGTERM was swallowed ('Received SIGTERM: 15'); only SIGKILL ended it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), CSA_SIGTERM_GRACE="2")
    cmd = [sys.executable, str(ROOT / "cli.py"), "validate", "--config", str(DEMO_CONFIG),
           "--data", "blocking_data.BlockingData", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while not (tmp_path / "loader_started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "error: the run did not stop within 2 s of SIGTERM (blocked in a data loader?); exiting" in err


def test_an_integer_batch_limit_stays_a_count_and_a_float_one_a_fraction(in_tmp_cwd):
    """Before: `--trainer.limit_val_batches 1` arrived as 1.0, which Lightning reads as 100 %: a
    one-batch smoke run validated everything (typing's Union cache handed jsonargparse the
    float-first Union[float, int, None] that lightning.fabric had created first)."""
    cli = main(["fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA, "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                ])  # fmt: skip
    assert cli.trainer.num_training_batches == 2 and cli.trainer.num_val_batches == [1]
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        parsed = build_cli(["--config", str(DEMO_CONFIG), f"--trainer.{key}", "1"], run=False).config.trainer[key]
        assert parsed == 1 and type(parsed) is int, key
    (in_tmp_cwd / "full.yaml").write_text("trainer:\n  limit_val_batches: 1.0\n")
    parsed = build_cli(["--config", str(DEMO_CONFIG), "--config", "full.yaml"], run=False).config.trainer
    assert type(parsed.limit_val_batches) is float and parsed.limit_val_batches == 1.0


@pytest.mark.system
@pytest.mark.slow
def test_sigterm_exits_143_naming_the_checkpoint_to_resume_from(tmp_path):
    """Before: a run ended by SIGTERM exited 0 without a word, and a scheduler took it as finished.
    Now 143 and one line naming the newest epoch-end last.ckpt (the interrupted epoch is redone).
    ~20 s: a real process killed in epoch 1; the no-checkpoint-yet line is checked in-process below."""
    import os
    import signal
    import subprocess
    import time

    from .conftest import ROOT

    def run_until(ready, root, *args):
        cmd = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA[:2],
               "--data.resolution", "32", "--data.batch_size", "4", "--trainer.max_epochs", "50",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root), *args]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
        deadline = time.time() + TIMEOUT
        while not ready(root):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, err.strip().splitlines()[-1]

    # a second after epoch 0's last.ckpt appeared, so the signal lands in epoch 1
    code, line = run_until(
        lambda root: any(time.time() - p.stat().st_mtime > 1 for p in root.rglob("last.ckpt")),
        tmp_path / "later",
        "--data.limit_train_samples",
        "128",
        "--trainer.limit_val_batches",
        "2",
    )
    last = next((tmp_path / "later").rglob("last.ckpt"))
    assert code == 143
    assert line.startswith("error: interrupted by SIGTERM in epoch 1 (step "), line
    assert (
        f"resume with the same command and --ckpt_path last (= {last}, saved at the end of epoch 0, step 32; " in line
    )
    assert "epoch 1 is trained again from its first batch" in line


def test_sigterm_before_any_checkpoint_says_to_start_afresh(tmp_path):
    """The other branch of the SIGTERM line: killed in epoch 0, nothing to resume from."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerFn

    from csa_lightning.tasks.callbacks import sigterm_resume_line

    trainer = L.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path)], logger=False, enable_progress_bar=False)
    trainer.state.fn = TrainerFn.FITTING
    assert sigterm_resume_line(trainer) == (
        "interrupted by SIGTERM in epoch 0 before any checkpoint was written; run the same command again to "
        "start afresh (nothing is lost but this partial epoch)"
    )


def test_a_key_given_twice_on_one_command_line_is_refused(in_tmp_cwd, capsys):
    """Before: --trainer.max_epochs 1 --trainer.max_epochs 2 trained 2 epochs without a word. Configs still
    layer (--config twice, a config's value overridden on the command line) and --KEY+=VALUE appends."""
    from csa_lightning.cli import repeated_option

    from .conftest import refusal

    error = refusal(capsys, main, ["fit", "--config", str(DEMO_CONFIG), "--trainer.max_epochs", "1",
                                   "--trainer.max_epochs=2"])  # fmt: skip
    assert error.startswith("error: --trainer.max_epochs is given twice (1, then 2); give it once")
    assert repeated_option(["fit", "--config", "a.yaml", "--config", "b.yaml", "--trainer.callbacks+=X",
                            "--trainer.callbacks+=Y", "--data", "D", "--data.batch_size", "8"]) is None  # fmt: skip
