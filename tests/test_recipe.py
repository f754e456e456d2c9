"""The one warm-up + decay schedule both tasks use (tasks/recipe.py), against torch's own schedulers."""

from dataclasses import dataclass

import pytest
import torch

from csa_lightning.tasks import CosineDecay, Schedule, StepDecay
from csa_lightning.tasks.schedules import WarmupDecay


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)


def test_step_decay_without_warmup_is_multisteplr_per_epoch():
    """The paper's recipe (lr x 0.1 at epochs 2 and 4), stepped per optimiser step, 7 steps an epoch."""
    ours_opt, ref_opt = _sgd(), _sgd()
    ours = torch.optim.lr_scheduler.LambdaLR(ours_opt, WarmupDecay(milestones=(2, 4), gamma=0.1, steps_per_epoch=7))
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[2, 4], gamma=0.1)
    per_step = _lrs(ours, ours_opt, 6 * 7)
    per_epoch = _lrs(ref, ref_opt, 6)
    assert per_step == pytest.approx([lr for lr in per_epoch for _ in range(7)], rel=1e-12)


def test_warmup_then_cosine_is_torchvision_linear_then_cosine():
    """torchvision's reference: LinearLR(start_factor, total_iters=W) then CosineAnnealingLR(T_max=T - W)."""
    warmup, total = 13, 100
    ours_opt, ref_opt = _sgd(), _sgd()
    ours = torch.optim.lr_scheduler.LambdaLR(
        ours_opt, WarmupDecay(warmup_steps=warmup, warmup_factor=0.01, decay="cosine", total_steps=total)
    )
    ref = torch.optim.lr_scheduler.SequentialLR(
        ref_opt,
        [
            torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=0.01, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total - warmup),
        ],
        milestones=[warmup],
    )
    assert _lrs(ours, ours_opt, total) == pytest.approx(_lrs(ref, ref_opt, total), rel=1e-9, abs=1e-12)


def test_detection_warmup_multiplies_the_step_decay():
    """The detection recipe as it was (torchvision's references): warm-up factor 0.001 -> 1 over 500
    steps, times 0.1 per milestone passed."""
    f = WarmupDecay(warmup_steps=500, warmup_factor=0.001, milestones=(16, 22), steps_per_epoch=100)
    assert f(0) == pytest.approx(0.001)
    assert f(250) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(499) == pytest.approx(0.001 * (1 / 500) + 499 / 500)
    assert f(500) == 1.0 and f(1599) == 1.0
    assert f(1600) == pytest.approx(0.1) and f(2200) == pytest.approx(0.01)


def test_the_schedule_survives_the_scheduler_state_dict():
    """Resuming restores LambdaLR's step count and the schedule's own fields: the same lr follows."""
    schedule = WarmupDecay(warmup_steps=5, warmup_factor=0.1, decay="cosine", total_steps=50)
    opt = _sgd()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    _lrs(sched, opt, 17)
    state = sched.state_dict()
    # as Lightning resumes: build both (configure_optimizers), then load the optimiser's, then the scheduler's state
    opt2 = _sgd()
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupDecay())
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0] == schedule
    assert _lrs(sched2, opt2, 10) == pytest.approx(_lrs(sched, opt, 10), rel=1e-15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"warmup_epochs": 1, "warmup_iters": 10},
            "model.lr_schedule.warmup_epochs must be 0 when warmup_iters is set",
        ),
        ({"warmup_epochs": -1}, "model.lr_schedule.warmup_epochs must be >= 0"),
        ({"warmup_factor": 0}, r"model.lr_schedule.warmup_factor must be in \(0, 1\]"),
        ({"gamma": 0}, "model.lr_schedule.gamma must be positive"),
    ],
)
def test_bad_schedule_values_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepDecay(**kwargs)


def test_classification_module_steps_its_schedule_per_optimiser_step():
    import lightning as L

    from csa_lightning.data import DigitsMemoryDataModule
    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    module = ClassificationModule(
        ResNetSpec(18, "se", num_classes=10), lr_reference_batch=32, lr_schedule=CosineDecay(warmup_epochs=0.5)
    )
    data = DigitsMemoryDataModule(batch_size=32, resolution=16, limit_train_samples=128)  # 4 steps an epoch
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, data)
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert (schedule.warmup_steps, schedule.total_steps, schedule.steps_per_epoch) == (2, 8, 4)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)  # cosine reached 0 at the last step


@dataclass(frozen=True)
class _Linear:
    total: int

    def __call__(self, step: int) -> float:
        return max(0.0, 1 - step / self.total)


class LinearDecay(Schedule):
    """docs/training.md's example of a schedule of your own."""

    def lr_lambda(self, steps_per_epoch: int, total_steps: int):
        return _Linear(total_steps)


def test_a_schedule_of_your_own_and_any_optimizer_through_the_module():
    """docs/training.md: a Schedule subclass and AdamW with sqrt scaling, stored as plain values."""
    from functools import partial
    from types import SimpleNamespace

    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    module = ClassificationModule(
        ResNetSpec(18, "se", num_classes=10),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
        lr_scaling="sqrt",
        lr_reference_batch=256,
        lr_schedule=LinearDecay(),
        no_weight_decay_on=["norm", "bias"],
    )
    assert module.hparams.optimizer == {
        "class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.05},
    }  # fmt: skip
    assert module.hparams.lr_schedule["class_path"].endswith("test_recipe.LinearDecay")
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=16), world_size=4,
                                      accumulate_grad_batches=1, num_training_batches=10,
                                      estimated_stepping_batches=100)  # fmt: skip
    configured = module.configure_optimizers()
    module._trainer = None
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (64 / 256) ** 0.5)  # sqrt scaling
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    for _ in range(50):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3 * 0.5)


@dataclass(frozen=True)
class _Negative:
    def __call__(self, step: int) -> float:
        return 1.0 if step < 2 else -1.0


class AscentSchedule(Schedule):
    """A schedule whose factor turns negative at step 2: gradient ascent, which trained to the end with exit 0."""

    def lr_lambda(self, steps_per_epoch: int, total_steps: int):
        return _Negative()


def _digits_trainer(**kwargs):
    import lightning as L

    return L.Trainer(limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kwargs)  # fmt: skip


def test_an_applied_lr_that_is_negative_stops_the_run_naming_the_schedule_and_step():
    from csa_lightning.data import DigitsMemoryDataModule
    from csa_lightning.errors import UsageError
    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    module = ClassificationModule(ResNetSpec(18, "none", num_classes=10), lr_schedule=AscentSchedule())
    data = DigitsMemoryDataModule(batch_size=32, resolution=16, limit_train_samples=128)
    with pytest.raises(UsageError, match=r"^model.lr_schedule AscentSchedule gives lr -0.025 at optimiser step 2: "):
        _digits_trainer(max_epochs=1).fit(module, data)


def test_a_warmup_longer_than_the_run_is_warned_about_with_the_fraction_reached():
    from types import SimpleNamespace

    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    module = ClassificationModule(ResNetSpec(18, "none", num_classes=10),
                                  lr_schedule=StepDecay(warmup_iters=100, warmup_factor=0.001))  # fmt: skip
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=256), world_size=1,
                                      accumulate_grad_batches=1, num_training_batches=4,
                                      estimated_stepping_batches=16)  # fmt: skip
    with pytest.warns(UserWarning, match=r"warm-up \(100 optimiser steps\) is longer than the run \(16 steps\): "
                      r"the lr reaches only 15 % of the configured lr"):  # fmt: skip
        module.lr_schedule()
    module = ClassificationModule(ResNetSpec(18, "none", num_classes=10), lr_schedule=StepDecay(warmup_iters=8))
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=256), world_size=1,
                                      accumulate_grad_batches=1, num_training_batches=4,
                                      estimated_stepping_batches=16)  # fmt: skip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.lr_schedule()
