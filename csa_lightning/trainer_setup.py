"""What every Trainer the CLI builds gets beyond Lightning's defaults: its option values checked in one
line before anything is built, int-before-float parsing of its count-or-fraction options, CSV and
TensorBoard loggers in one version folder, atomic checkpoint writes, and a quieter output."""

from __future__ import annotations

__all__ = [
    "check_trainer_values",
    "prefer_counts_to_fractions",
    "default_loggers",
    "with_atomic_checkpoint_io",
    "quiet_lightning",
]


def check_trainer_values(trainer) -> None:
    """One line naming a trainer option whose value cannot run (before any class is built)."""
    from .checks import is_number, require

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    get = trainer.get
    for key in ("max_epochs", "max_steps"):
        value = get(key)
        require(value is None or (integer(value) and value >= -1), f"trainer.{key}", value, "-1 (no limit) or >= 0")
    for key in ("min_epochs", "min_steps"):
        value = get(key)
        require(value is None or (integer(value) and value >= 0), f"trainer.{key}", value, "null or >= 0")
    value = get("accumulate_grad_batches")
    require(value is None or (integer(value) and value >= 1), "trainer.accumulate_grad_batches", value,
            "a positive integer")  # fmt: skip
    for key in ("check_val_every_n_epoch", "log_every_n_steps"):
        value = get(key)
        require(value is None or (integer(value) and value >= 1), f"trainer.{key}", value, "null or a positive integer")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches"):  # fmt: skip
        value = get(key)
        ok = value is None or (integer(value) and value >= 0) or (is_number(value) and 0 <= value <= 1)
        require(ok, f"trainer.{key}", value, "a number of batches (an integer >= 0) or a fraction in [0, 1]")
    value = get("gradient_clip_val")
    require(value is None or (is_number(value) and value >= 0), "trainer.gradient_clip_val", value, "null or >= 0")
    value = get("num_sanity_val_steps")
    require(value is None or (integer(value) and value >= -1), "trainer.num_sanity_val_steps", value,
            "-1 (all) or >= 0")  # fmt: skip
    value = get("num_nodes")
    require(value is None or (integer(value) and value >= 1), "trainer.num_nodes", value, "a positive integer")


def prefer_counts_to_fractions(parser) -> None:
    """Options typed ``Optional[Union[int, float]]`` (``limit_val_batches`` ...) try int first.

    Python's typing caches unions and compares them as sets: lightning.fabric creates
    ``Optional[Union[float, int]]`` first, so the Trainer's ``Optional[Union[int, float]]`` *is*
    that object and jsonargparse tried float first: ``--trainer.limit_val_batches 1`` arrived as
    1.0, which Lightning reads as 100 %. A flat union is a different cache key and keeps its order;
    an integer (``1``) stays a count of batches, a float (``1.0``) a fraction.
    """
    import typing

    float_first = typing.Optional[typing.Union[float, int]]
    int_first = typing.Union.__getitem__((int, float, type(None)))
    for action in parser._actions:
        if getattr(action, "_typehint", None) == float_first:
            action._typehint = int_first


def default_loggers(root: str) -> list:
    """CSV metrics and TensorBoard curves in the same version folder of ``root``/lightning_logs.

    ``tensorboard --logdir runs`` then shows every run; metrics.csv stays where the tools read it
    (the first logger names the trainer's log_dir). The version is the CSV logger's, given to
    TensorBoard, so the two never pick different folders.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(save_dir=root, name="lightning_logs")
    return [csv, TensorBoardLogger(save_dir=root, name="lightning_logs", version=csv.version, default_hp_metric=False)]


def with_atomic_checkpoint_io(plugins):
    """The config's trainer plugins plus `csa_lightning.tasks.checkpoint_io.AtomicCheckpointIO` unless they name a
    checkpoint IO: a run killed while saving then leaves no checkpoint-sized file in the system's temporary folder."""
    from lightning.pytorch.plugins.io import CheckpointIO

    from .tasks.checkpoint_io import AtomicCheckpointIO

    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return list(plugins)
    return [*plugins, AtomicCheckpointIO()]


class _DropTips:
    """A logging filter dropping Lightning's advertisements (the litlogger tip) from a run's output."""

    def filter(self, record) -> bool:  # noqa: D102
        return "💡 Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Leave out of every run's output what tells a user nothing about their run: Lightning's litlogger
    tip, its hint that srun exists when a single process runs on a machine with SLURM installed (the
    project's SLURM paths start runs through srun), and the deprecation inside Lightning's own pytree
    helper that torch 2.14 triggers. Idempotent."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
