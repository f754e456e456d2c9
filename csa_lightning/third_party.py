"""The private APIs of pinned dependencies the project relies on, in one marked place.

Each is something the dependency does not offer publicly and the project would otherwise copy.
``tests/test_third_party.py`` fails when the pinned version changes one of them (a name gone, a
parameter renamed), so an upgrade is caught by the suite, not by a user.

- submitit ``_make_sbatch_string``: the job script submitit would submit, for ``sbatch --test-only``
  before anything is submitted (`csa_lightning.ablate.executors.slurm.SlurmExecutor.check`);
- torchvision ``_resnet_fpn_extractor``: the FPN backbone of torchvision's own detectors, fed an
  attention ResNet (`csa_lightning.models.detection`);
- Lightning ``LightningCLI._parse_ckpt_path`` and ``LightningCLI._run_subcommand``: overridden by
  `csa_lightning.cli.CSALightningCLI` (no public hook runs before the checkpoint is unpickled, or
  around a subcommand's failure);
- jsonargparse actions' ``_typehint``: rewritten for the trainer's int-or-float options
  (`csa_lightning.trainer_setup.prefer_counts_to_fractions`);
- Lightning's ``trainer.fit_loop.epoch_loop.val_loop``: the validation a resumed run with nothing
  left to train runs to write its result (`csa_lightning.tasks.callbacks.RecordResult`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_sbatch_string", "resnet_fpn_extractor", "LIGHTNING_CLI_OVERRIDES", "run_validation"]

#: LightningCLI's private methods CSALightningCLI overrides, with the parameters it expects
LIGHTNING_CLI_OVERRIDES = {"_parse_ckpt_path": ["self"], "_run_subcommand": ["self", "subcommand"]}


def make_sbatch_string(**parameters: Any) -> str:
    """submitit's job script for ``parameters`` (its ``_make_sbatch_string``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(**parameters)


def resnet_fpn_extractor(backbone, trainable_layers: int):
    """torchvision's ResNet-FPN backbone extractor (its ``_resnet_fpn_extractor``)."""
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    return _resnet_fpn_extractor(backbone, trainable_layers)


def run_validation(trainer) -> None:
    """Run the fit loop's validation once, as Lightning does at an epoch's end (inside ``fit``)."""
    trainer.validating = True
    try:
        trainer.fit_loop.epoch_loop.val_loop.run()
    finally:
        trainer.validating = False
