"""The strong recipe (configs/recipe/strong.yaml): batch mixing and erasing, EMA validated and
checkpointed and resumed exactly, TrivialAugmentWide on the ImageFolder path."""

from pathlib import Path

import pytest
import torch

from csa_lightning.cli import main
from csa_lightning.tasks.batch_augment import BatchAugment

from .conftest import CONFIGS, DEMO_CONFIG

STRONG = CONFIGS / "recipe" / "strong.yaml"


def test_strong_include_switches_a_table1_row_to_torchvisions_recipe(tmp_path):
    cli = main(["--config", str(CONFIGS / "csa_r50.yaml"), "--config", str(STRONG),
                "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    hp = cli.model.hparams
    sgd, schedule = hp.optimizer["init_args"], hp.lr_schedule
    assert (sgd["lr"], hp.lr_reference_batch, sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (
        0.5, 1024, 0.9, False, 2e-5,
    )  # fmt: skip
    assert schedule["class_path"] == "csa_lightning.tasks.CosineDecay" and hp.label_smoothing == 0.1
    assert (schedule["init_args"]["warmup_epochs"], schedule["init_args"]["warmup_factor"]) == (5, 0.01)
    assert (hp.mixup_alpha, hp.cutmix_alpha, hp.random_erasing) == (0.2, 1.0, 0.1)
    assert list(hp.no_weight_decay_on) == ["norm"] and hp.net["init_args"]["attention"] == "csa"
    assert hp.ema_decay == pytest.approx(1 - 2e-5 * 1024 * 32 / 600) and hp.ema_every_n_steps == 32
    speed, ema = cli.model.configure_callbacks()
    assert type(ema).__name__ == "EMAWeightAveraging" and ema.update_every_n_steps == 32
    assert type(speed).__name__ == "ImagesPerSecond"
    assert cli.trainer.max_epochs == 600
    assert (cli.datamodule.resolution, cli.datamodule.val_resolution) == (176, 224)
    assert round(224 / cli.datamodule.hparams.val_crop_ratio) == 232


def _batch(n=8, classes=10):
    torch.manual_seed(0)
    return torch.rand(n, 3, 16, 16) + 1.0, torch.arange(n) % classes  # every pixel > 0: erasing shows as 0


def test_mixup_mixes_each_image_with_its_neighbour():
    images, labels = _batch()
    mixed, targets = BatchAugment(10, mixup_alpha=0.2)(images, labels)
    lam = float(targets[0, labels[0]])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    assert ((targets > 0).sum(1) == 2).all()  # two labels per image, in the proportions of the pixels


def test_cutmix_pastes_one_rectangle_from_the_neighbour():
    images, labels = _batch()
    for _ in range(10):
        mixed, targets = BatchAugment(10, cutmix_alpha=1.0)(images, labels)
        from_other = (mixed == images.roll(1, 0)).all(dim=1)  # (N, H, W) pixels taken from the neighbour
        from_self = (mixed == images).all(dim=1)
        assert (from_other | from_self).all()
        area = from_other[0].float().mean()
        assert float(targets[0, labels.roll(1, 0)[0]]) == pytest.approx(float(area), abs=1e-6)


def test_with_both_each_batch_gets_one_of_the_two():
    images, labels = _batch()
    augment = BatchAugment(10, mixup_alpha=0.2, cutmix_alpha=1.0)
    kinds = set()
    for _ in range(40):
        mixed, _ = augment(images, labels)
        pure = ((mixed == images) | (mixed == images.roll(1, 0))).all()
        kinds.add("cutmix" if pure else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_random_erasing_draws_a_rectangle_per_image():
    images, labels = _batch(16)
    images = images[:1].expand(16, -1, -1, -1).clone()  # sixteen identical images
    erased, targets = BatchAugment(10, random_erasing=1.0)(images, labels)
    assert torch.equal(targets, labels)  # erasing alone keeps the hard labels
    masks = (erased == 0).all(dim=1)  # (N, H, W): erased pixels
    assert all(m.any() for m in masks)
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 8  # not one rectangle for the whole batch


def test_bad_augmentation_values_are_one_line_errors():
    with pytest.raises(ValueError, match=r"model.random_erasing must be in \[0, 1\], got 2"):
        BatchAugment(10, random_erasing=2)
    with pytest.raises(ValueError, match="model.mixup_alpha must be >= 0"):
        BatchAugment(10, mixup_alpha=-1)


def test_image_folder_trivial_augment():
    from csa_lightning.data import ImageFolderDataModule

    steps = [type(t).__name__ for t in ImageFolderDataModule(auto_augment="trivial").train_transform().transforms]
    assert "TrivialAugmentWide" in steps
    assert "TrivialAugmentWide" not in [type(t).__name__ for t in ImageFolderDataModule().train_transform().transforms]
    with pytest.raises(ValueError, match="data.auto_augment must be null or 'trivial'"):
        ImageFolderDataModule(auto_augment="rand")


def _fit(*extra):
    return main(["fit", "--config", str(DEMO_CONFIG), "--config", str(STRONG),
                 "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16",
                 "--data.batch_size", "32", "--data.limit_train_samples", "96", "--trainer.limit_val_batches", "2",
                 "--model.lr_schedule.warmup_epochs", "1", "--model.ema_decay", "0.5", "--model.ema_every_n_steps", "1",
                 *extra])  # fmt: skip


@pytest.mark.slow
def test_ema_is_validated_checkpointed_and_resumed_exactly(tmp_path, monkeypatch):
    """Run A: 3 epochs. Run B: stopped after 1, resumed with --ckpt_path last. The EMA weights
    (the checkpoint's state_dict) and the raw ones (current_model_state) must match A's exactly,
    and the EMA weights are what validation measured. Long (~25-50 s): four short fits through the CLI,
    since only a real stop and resume shows the EMA state coming back."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    straight = _fit("--trainer.max_epochs", "3")
    monkeypatch.chdir(tmp_path / "b")
    _fit("--trainer.max_epochs", "3", "--trainer.callbacks+=tests.stop_early.StopAfterEpochs")
    resumed = _fit("--trainer.max_epochs", "3", "--ckpt_path", "last")
    a = torch.load(next((tmp_path / "a").rglob("last.ckpt")), weights_only=True)
    b = torch.load(sorted((tmp_path / "b").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1], weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["current_model_state"][key], b["current_model_state"][key]), key
    assert resumed.trainer.current_epoch == 3
    ema, raw = a["state_dict"], a["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.endswith("weight"))
    # validating the checkpoint's (EMA) weights reproduces the last epoch's val/top1 exactly
    logged = float(straight.trainer.callback_metrics["val/top1"])
    monkeypatch.chdir(tmp_path / "a")
    ckpt = str(next((tmp_path / "a").rglob("last.ckpt")))
    validated = main(["validate", "--config", str(DEMO_CONFIG), "--config", str(STRONG),
                      "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16",
                      "--data.batch_size", "32", "--trainer.limit_val_batches", "2", "--model.lr_schedule.warmup_epochs", "1",
                      "--model.ema_decay", "0.5", "--model.ema_every_n_steps", "1", "--ckpt_path", ckpt])  # fmt: skip
    assert float(validated.trainer.callback_metrics["val/top1"]) == pytest.approx(logged, abs=1e-6)
    assert Path(ckpt).is_file()
