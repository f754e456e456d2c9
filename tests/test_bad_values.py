"""Bad numbers are refused up front, in one line naming the option (issue: nothing silently wrong).

Before: ``--data.batch_size 0`` ran for 24 s and ended in ``empty range for randrange()``;
``--model.lr -1`` in ``Invalid learning rate: -0.0015625``; 3 CPU processes on 2 cores tripled the
lr without a word.
"""

from functools import partial

import pytest
import torch

from csa_lightning.checks import oversubscription_warning
from csa_lightning.cli import main

from .conftest import DEMO_CONFIG

MEMORY = ["--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.batch_size", "0"], "data.batch_size must be a positive integer, got 0"),
        (["--data.batch_size", "-3"], "data.batch_size must be a positive integer, got -3"),
        (["--data.resolution", "0"], "data.resolution must be a positive integer, got 0"),
        (["--model.optimizer.lr", "-1"], "model.optimizer.lr must be positive, got -1.0"),
        (["--model.optimizer.lr", "0"], "model.optimizer.lr must be positive, got 0.0"),
        (["--model.lr_reference_batch", "0"], "model.lr_reference_batch must be a positive integer, got 0"),
        (["--model.lr_scaling", "quadratic"], "model.lr_scaling must be one of linear, sqrt, none, got 'quadratic'"),
        # the optimiser's own checks, run when the module is built
        (
            ["--model.optimizer.momentum=-0.5"],
            "model.optimizer: torch.optim.SGD refuses its arguments (Invalid momentum value: -0.5)",
        ),
        (
            ["--model.optimizer.weight_decay=-1e-4"],
            "model.optimizer: torch.optim.SGD refuses its arguments (Invalid weight_decay value: -0.0001)",
        ),
        (
            ["--model.optimizer", "Adam", "--model.optimizer.betas", "[0.9, 1.5]"],
            "model.optimizer: torch.optim.Adam refuses its arguments (Invalid beta parameter at index 1: 1.5)",
        ),
        (
            ["--model.lr_schedule", "StepDecay", "--model.lr_schedule.milestones", "[4, -1]"],
            "model.lr_schedule.milestones must be >= 0, got [4, -1]",
        ),
        (
            ["--model.lr_schedule", "StepDecay", "--model.lr_schedule.warmup_factor", "0"],
            "model.lr_schedule.warmup_factor must be in (0, 1], got 0.0",
        ),
        (["--model.label_smoothing", "1.0"], "model.label_smoothing must be in [0, 1), got 1.0"),
    ],
)
def test_bad_numbers_are_one_line_errors_before_any_work(args, message, in_tmp_cwd, capsys):
    memory = MEMORY[:2] if "--data.resolution" in args else MEMORY  # a key given twice is refused itself
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEMO_CONFIG), *memory, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {message}"
    assert not (in_tmp_cwd / "runs").exists()  # refused before a run folder or a loader existed


def test_detection_recipe_values_are_checked_too():
    from csa_lightning.models import RCNNSpec
    from csa_lightning.tasks import DetectionModule, StepDecay

    net = RCNNSpec(depth=18, num_classes=2, min_size=32, max_size=32)
    with pytest.raises(ValueError, match=r"^model.lr_schedule.warmup_factor must be in \(0, 1\], got 0$"):
        DetectionModule(net, lr_schedule=StepDecay(warmup_factor=0))
    with pytest.raises(ValueError, match="^model.optimizer.lr must be positive"):
        DetectionModule(net, optimizer=partial(torch.optim.SGD, lr=-0.02))


def test_an_optimizer_argument_of_another_optimizer_is_refused_in_one_line():
    """A Python mapping keeps what it is given: SGD's momentum under AdamW is named, not dropped."""
    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    net = ResNetSpec(depth=18, num_classes=10)
    adamw = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "momentum": 0.9}}
    with pytest.raises(
        ValueError, match=r"^model.optimizer: torch.optim.AdamW takes no argument 'momentum' \(it takes lr, "
    ):
        ClassificationModule(net, optimizer=adamw)
    with pytest.raises(TypeError, match="^model.optimizer must name a torch.optim.Optimizer subclass"):
        ClassificationModule(net, optimizer={"class_path": "torch.nn.Linear"})
    with pytest.raises(ValueError, match=r"^model.no_weight_decay_on must be \[\] with torch.optim.LBFGS"):
        ClassificationModule(net, optimizer=torch.optim.LBFGS, no_weight_decay_on=["bias"])


def test_more_cpu_processes_than_cores_is_a_warning():
    message = oversubscription_warning(world_size=3, cpus=2, on_cpu=True, global_batch=192)
    assert message.startswith("3 CPU processes on 2 cores") and "global batch of 192" in message
    assert "--trainer.devices 2" in message
    assert oversubscription_warning(2, 2, True, 128) is None
    assert oversubscription_warning(8, 2, False, 1024) is None  # GPUs: not about cores


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--data.std", "[0.3, 0, 0.3]"],
            "data.std must be three positive numbers (one per channel; a zero divides by zero), got (0.3, 0.0, 0.3)",
        ),
        (
            ["--data.mean", "[0.3, .nan, 0.3]"],
            "data.mean must be three finite numbers (one per channel), got (0.3, nan, 0.3)",
        ),
        (
            ["--data.val_crop_ratio", "0"],
            "data.val_crop_ratio must be in (0, 1] (centre crop side / shorter image side; 0.875 = 224/256), got 0.0",
        ),
        (
            ["--data.val_crop_ratio", "1.5"],
            "data.val_crop_ratio must be in (0, 1] (centre crop side / shorter image side; 0.875 = 224/256), got 1.5",
        ),
        (
            ["--data.train_crop_scale", "[1.0, 0.5]"],
            "data.train_crop_scale must be [low, high] with 0 < low <= high <= 1, got (1.0, 0.5)",
        ),
        (
            ["--data.train_crop_scale", "[0, 1]"],
            "data.train_crop_scale must be [low, high] with 0 < low <= high <= 1, got (0.0, 1.0)",
        ),
        (["--data.val_resolution", "0"], "data.val_resolution must be a positive integer, got 0"),
    ],
)
def test_bad_data_values_are_one_line_errors_where_the_data_module_is_built(args, message, in_tmp_cwd, capsys):
    """Before: a zero std trained and validated to a NaN loss with exit status 0; val_crop_ratio 0
    aborted inside OpenCV (status 134) leaving a half-made log folder; an inverted scale range trained."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEMO_CONFIG), "--data.data_dir", "nowhere", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {message}"
    assert not (in_tmp_cwd / "runs").exists() and not (in_tmp_cwd / "nowhere").exists()


def test_a_zero_std_is_refused_by_the_memory_digits_too():
    from csa_lightning.data import DigitsMemoryDataModule

    with pytest.raises(ValueError, match=r"^data.std must be three positive numbers"):
        DigitsMemoryDataModule(std=(0.3, 0.0, 0.3))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.max_epochs", "-2"], "trainer.max_epochs must be -1 (no limit) or >= 0, got -2"),
        (["--trainer.max_steps", "-5"], "trainer.max_steps must be -1 (no limit) or >= 0, got -5"),
        (
            ["--trainer.accumulate_grad_batches", "0"],
            "trainer.accumulate_grad_batches must be a positive integer, got 0",
        ),
        (
            ["--trainer.check_val_every_n_epoch", "0"],
            "trainer.check_val_every_n_epoch must be null or a positive integer, got 0",
        ),
        (["--trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be null or >= 0, got -1"),
        (
            ["--trainer.limit_val_batches", "1.5"],
            "trainer.limit_val_batches must be a number of batches (an integer >= 0) or a fraction in [0, 1], got 1.5",
        ),
        (["--trainer.num_sanity_val_steps=-2"], "trainer.num_sanity_val_steps must be -1 (all) or >= 0, got -2"),
        (["--trainer.devices", "0"], "`Trainer(devices='0')` value is not a valid input using cpu accelerator."),
        (["--data.image_size", "0"], "data.image_size must be a positive integer, got 0"),
    ],
)
def test_bad_trainer_values_are_one_line_errors(args, message, in_tmp_cwd, capsys):
    """Before: Lightning's own refusals (max_epochs -2, devices 0) were 30-line tracebacks, and an
    accumulate_grad_batches of 0 ended in ZeroDivisionError; an image size of 0 in PIL's words."""
    data = [] if args[0].startswith("--data") else MEMORY
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEMO_CONFIG), *data, *args, "--data.data_dir" if not data else "--data.batch_size",
              "nowhere" if not data else "8"])  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {message}"


def test_minus_one_still_means_no_limit(in_tmp_cwd):
    from csa_lightning.cli import build_cli

    cli = build_cli(["--config", str(DEMO_CONFIG), *MEMORY, "--trainer.max_epochs", "-1", "--trainer.max_steps", "-1"],
                    run=False)  # fmt: skip
    assert cli.trainer.max_epochs == -1 and cli.trainer.max_steps == -1


def test_a_literal_option_lists_its_choices(in_tmp_cwd, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEMO_CONFIG), "--trainer.precision", "17"])
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("error: option 'trainer.precision' expects one of 64, 32, 16, ") and "'bf16-mixed'" in first
    assert first.endswith("; got 17 (python cli.py fit --help lists every option)")


def test_a_one_class_data_set_is_warned_about(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "only" / "0").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / "only" / "0" / f"{i}.png")
    with pytest.warns(UserWarning, match="the data has a single class: accuracy is 100 %"):
        main(["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.ImageFolderDataModule",
              "--data.train_path", "only", "--data.val_path", "only", "--data.num_workers", "0", "--data.resolution",
              "8", "--data.batch_size", "2", "--trainer.fast_dev_run", "1"])  # fmt: skip


def test_evaluating_with_other_image_settings_than_training_is_warned_about(tmp_path):
    from csa_lightning.cli import evaluation_data_warning

    from .conftest import make_classification_checkpoint

    ckpt = make_classification_checkpoint(tmp_path / "m.ckpt", "se", steps=1)  # memory digits, 32 px
    same = {"class_path": "csa_lightning.data.DigitsMemoryDataModule", "init_args": {"resolution": 32}}
    assert evaluation_data_warning(ckpt, same) is None
    other = {"init_args": {"resolution": 16, "std": [0.5, 0.5, 0.5]}}
    warning = evaluation_data_warning(ckpt, other)
    assert warning.startswith(f"checkpoint {ckpt} was trained with other image settings (")
    assert "resolution 32 then, 16 now" in warning and "std [0.324, 0.324, 0.324] then, [0.5, 0.5, 0.5] now" in warning


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.optimizer", "torch.optim.Nope"], "model.optimizer: class torch.optim.Nope not found; "),
        (["--model.optimizer", "torch.optim.adamw"], "model.optimizer: class torch.optim.adamw not found; did you mean torch.optim.AdamW?"),
        (["--model.optimizer", "torch.nn.Linear"], "model.optimizer: torch.nn.Linear is not an optimiser (a torch.optim.Optimizer subclass)"),
        (["--model.lr_schedule", "torch.optim.lr_scheduler.StepLR"],
         "model.lr_schedule: torch.optim.lr_scheduler.StepLR is not a csa_lightning.tasks.Schedule (the module steps its own "
         "schedule piece, so torch's lr schedulers do not fit here); use csa_lightning.tasks.StepDecay or "),
        (["--model.lr_schedule", "csa_lightning.tasks.Nope"], "model.lr_schedule: class csa_lightning.tasks.Nope not found"),
        (["--model.optimizer", "Adam", "--model.optimizer.momentum", "0.9"],
         "model.optimizer: torch.optim.Adam takes no option 'momentum'; it takes lr, betas, eps, weight_decay"),
        (["--model.optimizer.betas", "[0.9,0.99]"], "model.optimizer: torch.optim.SGD takes no option 'betas'; it takes lr, momentum"),
        (["--model.optimizer.nesterof", "true"], "model.optimizer: torch.optim.SGD takes no option 'nesterof' (did you mean 'nesterov'?)"),
        (["--model.optimizer.init_args.lr", "nan"], "option 'model.optimizer.lr' expects a finite number, got nan"),
        (["--trainer.gradient_clip_val", "inf"], "option 'trainer.gradient_clip_val' expects a finite number, got inf"),
    ],
)  # fmt: skip
def test_class_paths_and_piece_arguments_name_the_class_and_what_is_wrong(args, message, in_tmp_cwd, capsys):
    """Before: the whole message of the first five was "Problem with given class_path
    'csa_lightning.tasks.ClassificationModule':", and momentum under Adam blamed ClassificationModule."""
    from .conftest import refusal

    error = refusal(capsys, main, ["fit", "--config", str(DEMO_CONFIG), *MEMORY, *args])
    assert error.startswith(f"error: {message}"), error
    assert "NestedArg" not in error and error.endswith("(python cli.py fit --help lists every option)")


BLOCK_CASES = [
    ("se", 0, {}, "channels must be a positive integer, got 0"),
    ("se", 2.5, {}, "channels must be a positive integer, got 2.5"),
    ("se", True, {}, "channels must be a positive integer, got True"),
    ("se", 16, {"reduction": True}, "reduction must be a positive integer, got True"),
    ("cbam", 16, {"reduction": 2.5}, "reduction must be a positive integer, got 2.5"),
    ("eca", 16, {"gamma": 0.0}, "gamma must be a positive number, got 0.0"),
    ("eca", 16, {"b": float("inf")}, "b must be a finite number, got inf"),
    ("eca", 16, {"k_size": 4}, "ECA k_size must be a positive odd integer, got 4"),
    ("gct", 16, {"c": float("nan")}, "c must be a positive number, got nan"),
    ("gct", 16, {"learn_c": "yes"}, "learn_c must be true or false, got 'yes'"),
    ("csa", 16, {"eps": 0.0}, "eps must be a positive number, got 0.0"),
    ("csa", 16, {"eps": float("nan")}, "eps must be a positive number, got nan"),
    ("csa", 16, {"contiguity_grad": "yes"}, "contiguity_grad must be true or false, got 'yes'"),
    ("csa", 16, {"projection_dim": 2.5}, "projection_dim must be a positive integer, got 2.5"),
    ("csa", 16, {"projection_seed": -1}, "projection_seed must be an integer >= 0, got -1"),
    ("csa", 16, {"compile": 2}, "compile must be true or false, got 2"),
]


@pytest.mark.parametrize("name, channels, options, message", BLOCK_CASES)
def test_block_arguments_of_the_wrong_type_or_range_are_one_line(name, channels, options, message):
    """Before: GCT(16, c=nan) and CSA(16, eps=-1) were built and gave NaN gates; ECA(16, gamma=0) divided by zero;
    a 2.5 or True passed as a count of channels."""
    from csa_lightning.attention import resolve_attention

    with pytest.raises(ValueError) as err:
        resolve_attention(name)(channels, **options)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 2.5}, "num_classes must be a positive integer, got 2.5"),
        ({"num_classes": True}, "num_classes must be a positive integer, got True"),
        ({"zero_init_residual": "yes"}, "zero_init_residual must be true or false, got 'yes'"),
        ({"depth": 17}, "unsupported ResNet depth 17: choose one of [18, 34, 50, 101, 152]"),
    ],
)
def test_a_network_spec_checks_its_values_when_it_is_built_from_the_config(kwargs, message):
    """Before: num_classes 2.5 failed in torch.empty() when the network was built; zero_init_residual 'yes' was true."""
    from csa_lightning.models import ResNetSpec

    with pytest.raises(ValueError) as err:
        ResNetSpec(**{"depth": 18, **kwargs})
    assert str(err.value) == message
