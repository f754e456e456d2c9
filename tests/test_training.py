"""ClassificationModule: learning, lr scaling, parameter groups, checkpoints and exact resumption."""

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from csa_lightning.cli import main
from csa_lightning.data import DigitsMemoryDataModule
from csa_lightning.models import ResNetSpec
from csa_lightning.tasks import ClassificationModule, StepDecay, parameter_groups

from .conftest import DEMO_CONFIG


def small_module(lr=0.1, weight_decay=1e-4, **kwargs):
    net = {k: kwargs.pop(k) for k in ("depth", "attention", "num_classes") if k in kwargs}
    args = dict(
        optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay),
        lr_reference_batch=16,
        lr_schedule=StepDecay(milestones=[100]),
    )
    args.update(kwargs)
    return ClassificationModule(ResNetSpec(**{"depth": 18, "attention": "csa", "num_classes": 10, **net}), **args)


def quiet_trainer(**kwargs):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)  # fmt: skip
    args.update(kwargs)
    return L.Trainer(**args)


def test_overfits_a_few_batches():
    L.seed_everything(0)
    module = small_module(weight_decay=0.0)
    data = DigitsMemoryDataModule(batch_size=16, resolution=16, limit_train_samples=64)
    trainer = quiet_trainer(max_epochs=20, overfit_batches=2, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/top1"]) == 1.0
    assert float(metrics["train/loss_epoch"]) < 0.2


def test_lr_scales_with_the_global_batch():
    module = small_module(lr=0.1, lr_reference_batch=128)
    data = DigitsMemoryDataModule(batch_size=32, resolution=16)
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, data)
    optimizer = trainer.optimizers[0]
    assert module.global_batch_size() == 64
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.05)
    assert trainer.callback_metrics["lr_scaled"] == pytest.approx(0.05)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9


def test_parameter_groups_exclude_norms_and_biases_on_request():
    model = small_module().model
    n_norm = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    n_bias = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith("bias") and "bn" not in n and "downsample.1" not in n
    )
    total = sum(p.numel() for p in model.parameters())
    groups = parameter_groups(model, ["norm", "bias"])
    decayed = sum(p.numel() for p in groups[0]["params"])
    # the first group takes the optimiser's own weight decay, whichever optimiser it is
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0 and decayed == total - n_norm - n_bias
    assert len(parameter_groups(model, [])) == 1
    with pytest.raises(
        ValueError, match=r"^model.no_weight_decay_on must be a list of 'norm' and 'bias', got \['norms'\]"
    ):
        small_module(no_weight_decay_on=["norms"])


def test_logs_top1_top5_errors_throughput_and_run_info(in_tmp_cwd):
    cli = main(["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
                "--data.resolution", "16", "--data.batch_size", "32", "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
                "--trainer.log_every_n_steps", "1"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    for key in ("val/top1", "val/top5", "val/top1_err", "val/top5_err", "val/loss", "train/loss_epoch",
                "train/images_per_sec", "lr_scaled"):  # fmt: skip
        assert key in metrics, key
    # the lr is logged once, by LearningRateMonitor (callbacks/classification.yaml), not by the module too
    assert "lr" not in metrics
    csv = (Path(cli.trainer.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert any(c.startswith("lr-SGD") for c in csv) and "lr" not in csv
    # TensorBoard curves beside the CSV, in the same version folder (tensorboard --logdir runs)
    events = list(Path(cli.trainer.log_dir).glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert float(metrics["val/top1_err"]) == pytest.approx(100 * (1 - float(metrics["val/top1"])), abs=1e-4)
    log_dir = Path(cli.trainer.log_dir)
    info = json.loads((log_dir / "run_info.json").read_text())
    assert info["packages"]["torch"] and info["seed"] == "0" and "git_commit" in info
    assert (log_dir / "config.yaml").is_file()
    ckpt = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["run_info"]["packages"]["lightning"]


def _fit(args, tmp):
    base = ["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
            "--data.resolution", "16", "--data.batch_size", "32", "--data.limit_train_samples", "128",
            "--trainer.limit_val_batches", "2"]  # fmt: skip
    return main(base + args)


@pytest.mark.system  # a run trained, stopped and resumed end to end (20-30 s on a busy 2-core CPU)
@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [["--model.lr_schedule", "StepDecay", "--model.lr_schedule.milestones", "[1]"],
     ["--model.lr_schedule.warmup_epochs", "1.5"]],
    ids=["step", "warmup-cosine"],
)  # fmt: skip
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, schedule):
    """Run A: 3 epochs straight. Run B: stopped after epoch 1 (max_epochs still 3, as in a killed
    run), then `--ckpt_path last`. Step: the lr drops at epoch 1; warm-up + cosine: B stops in the
    middle of its warm-up. The scheduler, the optimiser's momentum and the epoch counter must all
    come back for the weights to match."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    straight = _fit([*schedule, "--trainer.max_epochs", "3"], tmp_path)
    monkeypatch.chdir(tmp_path / "b")
    stopped = _fit([*schedule, "--trainer.max_epochs", "3", "--trainer.callbacks+=tests.stop_early.StopAfterEpochs"],
                   tmp_path)  # fmt: skip
    assert stopped.trainer.current_epoch == 1
    resumed = _fit([*schedule, "--trainer.max_epochs", "3", "--ckpt_path", "last"], tmp_path)
    assert resumed.trainer.current_epoch == 3
    assert Path(resumed.trainer.log_dir).name == "version_1"  # the interrupted run's logs are kept
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lr = resumed.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == straight.trainer.optimizers[0].param_groups[0]["lr"]
    if "step" in schedule:
        assert lr == pytest.approx(0.1 * 32 / 64 * 0.1)


def test_validate_test_and_predict_from_a_checkpoint(in_tmp_cwd):
    memory = [
        "--data",
        "csa_lightning.data.DigitsMemoryDataModule",
        "--data.resolution",
        "16",
        "--data.batch_size",
        "60",
    ]
    fit = main(["fit", "--config", str(DEMO_CONFIG), *memory, "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "4"])  # fmt: skip
    ckpt = str(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt")
    validated = main(["validate", "--config", str(DEMO_CONFIG), *memory, "--ckpt_path", ckpt])
    val_top1 = float(validated.trainer.callback_metrics["val/top1"])
    tested = main(["test", "--config", str(DEMO_CONFIG), *memory, "--ckpt_path", ckpt])
    assert float(tested.trainer.callback_metrics["test/top1"]) == pytest.approx(val_top1)  # same split
    predicted = main(["predict", "--config", str(DEMO_CONFIG), *memory, "--ckpt_path", ckpt])
    batches = predicted.trainer.predict_loop.predictions
    assert sum(len(b["prediction"]) for b in batches) == 360
    accuracy = sum(int((b["prediction"] == b["label"]).sum()) for b in batches) / 360
    assert accuracy == pytest.approx(val_top1, abs=1e-6)
    assert all(((b["confidence"] > 0) & (b["confidence"] <= 1)).all() for b in batches)
    # predict writes what it predicted (it used to write nothing but an empty version folder)
    import csv

    written = next(c for c in predicted.trainer.callbacks if type(c).__name__ == "PredictionWriter").path
    rows = list(csv.DictReader(open(written)))
    assert len(rows) == 360 and list(rows[0])[:5] == ["index", "path", "label", "class_1", "prob_1"]
    assert sum(r["class_1"] == r["label"] for r in rows) / 360 == pytest.approx(val_top1, abs=1e-6)
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)


def test_load_from_checkpoint_rebuilds_the_network_without_the_config(tmp_path):
    """The network's spec is stored as plain values in the checkpoint: a module made in Python and
    one made by the CLI both come back with the same network and weights from the file alone."""
    from .conftest import make_classification_checkpoint

    path = make_classification_checkpoint(tmp_path / "python.ckpt", "se", depth=34, steps=1)
    hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["net"] == {"class_path": "csa_lightning.models.ResNetSpec",
                              "init_args": {"depth": 34, "attention": "se", "placement": None, "attention_options": None,
                                            "num_classes": 10, "zero_init_residual": False, "gates_at_identity": False}}  # fmt: skip
    module = ClassificationModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert module.net_spec == ResNetSpec(34, "se", num_classes=10)
    assert len(list(module.model.gates())) == 16
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())


def test_a_checkpoint_names_no_arbitrary_class(tmp_path):
    from csa_lightning.models import network_spec

    with pytest.raises(TypeError, match="is not a ClassifierSpec subclass"):
        network_spec(
            {"class_path": "collections.OrderedDict", "init_args": {}},
            base=__import__("csa_lightning.models", fromlist=["ClassifierSpec"]).ClassifierSpec,
        )


@pytest.mark.system  # a run trained, stopped and resumed end to end (20-30 s on a busy 2-core CPU)
def test_last_resumes_this_configs_run_never_a_fast_dev_run_or_another_model(tmp_path, monkeypatch, capsys):
    """Before: --ckpt_path last took the newest last*.ckpt under the root: a fast_dev_run's 1-step
    model, or an SE run when the config is CSA's. Now only a run of the same model and data config."""
    monkeypatch.chdir(tmp_path)
    csa = _fit(["--trainer.max_epochs", "1"], tmp_path)
    ckpt = Path(csa.trainer.log_dir) / "checkpoints" / "last.ckpt"
    # a fast_dev_run under the same root writes a newer last.ckpt (Lightning 2.6.6) but saves no config
    _fit(["--trainer.fast_dev_run", "1"], tmp_path)
    resumed = _fit(["--trainer.max_epochs", "2", "--ckpt_path", "last"], tmp_path)
    assert resumed.trainer.ckpt_path == str(ckpt)
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * 128 // 32
    # an SE run, newest under the root: the CSA command still resumes the CSA run
    _fit(["--trainer.max_epochs", "1", "--model.net.attention", "se"], tmp_path)
    again = _fit(["--trainer.max_epochs", "3", "--ckpt_path", "last"], tmp_path)
    assert "version_1" in again.trainer.ckpt_path and again.model.net_spec.attention == "csa"  # the resumed CSA run
    # a root holding only an SE run: the CSA command refuses, in one line naming both
    _fit(
        ["--trainer.max_epochs", "1", "--model.net.attention", "se", "--trainer.default_root_dir", "runs/se_only"],
        tmp_path,
    )
    with pytest.raises(SystemExit):
        _fit(
            ["--trainer.max_epochs", "3", "--ckpt_path", "last", "--trainer.default_root_dir", "runs/se_only"], tmp_path
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --ckpt_path last: the newest run under runs/se_only (")
    assert "has another model.net.attention ('se' there, 'csa' now)" in err


def test_a_run_folder_means_its_configured_runs_not_a_fast_dev_run(tmp_path):
    """Detection's backbone from a run folder loaded a fast_dev_run's checkpoint (the newest file)."""
    import os

    from csa_lightning.run_folder import resolve_checkpoint

    real = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    real.parent.mkdir(parents=True)
    torch.save({}, real)  # a readable file: resolve_checkpoint refuses corrupt ones
    (real.parent.parent / "config.yaml").write_text("model: {}\n")
    dev = tmp_path / "checkpoints" / "last.ckpt"  # where a fast_dev_run leaves it, no config beside
    dev.parent.mkdir()
    torch.save({}, dev)
    os.utime(real, (1e9, 1e9))  # the real run is older
    assert resolve_checkpoint(str(tmp_path)) == str(real)
    real.unlink()
    assert resolve_checkpoint(str(tmp_path)) == str(dev)  # nothing else there: taken


def test_checkpoints_keep_their_hyperparameters_and_say_so(tmp_path, monkeypatch, capsys):
    """Before: resuming with --model.optimizer.lr 0.05 silently kept 0.1; validating an SE checkpoint under
    a CSA-R18 config silently validated SE-R34; validate without a checkpoint said nothing."""
    monkeypatch.chdir(tmp_path)
    first = _fit(["--trainer.max_epochs", "1"], tmp_path)
    ckpt = str(Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        _fit(["--trainer.max_epochs", "2", "--model.optimizer.lr", "0.05", "--ckpt_path", ckpt], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: checkpoint {ckpt} was made with other hyperparameters than this command's (model.optimizer.lr: 0.1 there, "
        "0.05 here): a checkpoint keeps its own; drop the overrides, or use the config it was trained with"
    )
    se = _fit(
        ["--trainer.max_epochs", "1", "--model.net.attention", "se", "--trainer.default_root_dir", "runs/se"], tmp_path
    )
    se_ckpt = str(Path(se.trainer.log_dir) / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
              "--data.resolution", "16", "--ckpt_path", se_ckpt])  # fmt: skip
    assert "than this command's (model.net.attention: 'se' there, 'csa' here)" in capsys.readouterr().err
    main(["validate", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
          "--data.resolution", "16", "--trainer.limit_val_batches", "1"])  # fmt: skip
    assert (
        "warning: validate without --ckpt_path evaluates the config's freshly initialised weights"
        in capsys.readouterr().err
    )


def test_backbone_weights_of_another_depth_are_refused_unless_partial(tmp_path):
    """Before: a CSA-R18 checkpoint as the backbone of a CSA-R34 'succeeded' with 114 tensors left
    as initialised; a garbage file's message repeated torch's advice to set weights_only=False."""
    from .conftest import make_classification_checkpoint

    ckpt = make_classification_checkpoint(tmp_path / "r18.ckpt", "csa", depth=18, steps=1)
    with pytest.raises(ValueError, match=r"leaves \d+ of the model's tensors outside its gates unloaded"):
        ClassificationModule(ResNetSpec(34, "csa", num_classes=10), backbone_weights=ckpt)
    ClassificationModule(ResNetSpec(34, "csa", num_classes=10), backbone_weights=ckpt, backbone_partial=True)
    # a plain-ResNet file for an attention ResNet: only the gates are new, which is fine
    plain = tmp_path / "plain.pth"
    torch.save(ResNetSpec(18, None, num_classes=10).build().state_dict(), plain)
    ClassificationModule(ResNetSpec(18, "se", num_classes=10), backbone_weights=str(plain))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ValueError) as err:
        ClassificationModule(ResNetSpec(18, "csa", num_classes=10), backbone_weights=str(garbage))
    assert "weights_only" not in str(err.value) and str(garbage) in str(err.value)


def test_last_checkpoint_is_the_last_epoch_even_when_it_is_not_the_best(in_tmp_cwd):
    """Lightning 2.6's save_last copies only the epochs the best-checkpoint callback saves: with a
    metric that stops improving, last.ckpt stayed at the best epoch and --ckpt_path last re-trained
    the epochs after it. lr ~0: val/top1 never beats epoch 0, yet last.ckpt must be epoch 2's."""
    cli = main(["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
                "--data.resolution", "16", "--data.batch_size", "32", "--data.limit_train_samples", "64",
                "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "2", "--model.optimizer.lr", "1e-12"])  # fmt: skip
    log_dir = Path(cli.trainer.log_dir)
    last = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6
    (best,) = (log_dir / "checkpoints").glob("best-*.ckpt")  # the best epoch's own file, beside it
    assert torch.load(best, weights_only=True)["epoch"] <= 2


def _as_before_the_pieces(init_args: dict) -> dict:
    """Model arguments as the code before issue 27 wrote them (flat lr, momentum, milestones, schedule ...)."""
    old = {k: v for k, v in init_args.items() if k not in ("optimizer", "lr_schedule", "lr_scaling")}
    sgd, schedule = init_args["optimizer"]["init_args"], init_args["lr_schedule"]
    old.update(lr=sgd["lr"], momentum=sgd["momentum"], nesterov=sgd["nesterov"], weight_decay=sgd["weight_decay"])
    old.update(milestones=[30, 60, 90], gamma=0.1, warmup_epochs=0.0, warmup_iters=0, warmup_factor=0.001)
    old.update({k: v for k, v in schedule["init_args"].items()})
    old["schedule"] = "cosine" if schedule["class_path"].endswith("CosineDecay") else "step"
    return old


@pytest.mark.system  # a run trained, stopped and resumed end to end (20-30 s on a busy 2-core CPU)
def test_checkpoints_from_before_the_recipe_pieces_resume_and_load(in_tmp_cwd):
    """A run written when lr, momentum and the schedule were flat module arguments: --ckpt_path last
    finds it (its config.yaml is read as pieces), resumes it with the same numbers, and
    load_from_checkpoint and the analysis tools read it."""
    import yaml

    from csa_lightning.analysis.checkpoints import load_checkpoint_model

    first = _fit(["--trainer.max_epochs", "1"], in_tmp_cwd)
    log_dir = Path(first.trainer.log_dir)
    config_file = log_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["model"]["init_args"] = _as_before_the_pieces(config["model"]["init_args"])
    config_file.write_text(yaml.safe_dump(config))
    for ckpt in (log_dir / "checkpoints").glob("*.ckpt"):
        saved = torch.load(ckpt, weights_only=True)
        saved["hyper_parameters"] = _as_before_the_pieces(saved["hyper_parameters"])
        torch.save(saved, ckpt)
    last = log_dir / "checkpoints" / "last.ckpt"
    module = ClassificationModule.load_from_checkpoint(last, weights_only=True)
    assert module.hparams.optimizer == first.model.hparams.optimizer
    assert module.hparams.lr_schedule == first.model.hparams.lr_schedule
    assert load_checkpoint_model(str(last)).label == "CSA-R18"
    resumed = _fit(["--trainer.max_epochs", "2", "--ckpt_path", "last"], in_tmp_cwd)
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 8
    straight = _fit(["--trainer.max_epochs", "2", "--trainer.default_root_dir", "straight"], in_tmp_cwd)
    lr = resumed.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == straight.trainer.optimizers[0].param_groups[0]["lr"]
