"""The pinned dependencies' private APIs the project relies on (csa_lightning/third_party.py) are still there
with the parameters it passes: an upgrade that changes one fails here."""

import inspect

from csa_lightning.third_party import LIGHTNING_CLI_OVERRIDES


def test_submitits_job_script_takes_every_parameter_the_resources_pass():
    from submitit.slurm.slurm import _make_sbatch_string

    from csa_lightning.ablate.executors.slurm_resources import SlurmResources

    accepted = set(inspect.signature(_make_sbatch_string).parameters)
    resources = SlurmResources(gres="gpu:2", gpus_per_task=1, mem_per_gpu="4G", constraint="a", exclude="n",
                               comment="c", setup=["true"])  # fmt: skip
    assert set(resources.submitit_parameters()) | {"command", "folder", "job_name"} <= accepted


def test_torchvisions_fpn_extractor_takes_a_resnet_and_trainable_layers():
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    assert list(inspect.signature(_resnet_fpn_extractor).parameters)[:2] == ["backbone", "trainable_layers"]


def test_the_lightning_cli_methods_the_project_overrides_exist_with_their_parameters():
    from lightning.pytorch.cli import LightningCLI

    for name, parameters in LIGHTNING_CLI_OVERRIDES.items():
        assert list(inspect.signature(getattr(LightningCLI, name)).parameters) == parameters, name


def test_the_fit_loops_validation_loop_is_where_run_validation_reaches():
    from lightning.pytorch.loops import _EvaluationLoop, _FitLoop, _TrainingEpochLoop

    assert callable(_EvaluationLoop.run)
    assert (
        "val_loop" in inspect.signature(_TrainingEpochLoop.__init__).parameters
        or hasattr(_TrainingEpochLoop, "val_loop")
        or "val_loop" in inspect.getsource(_TrainingEpochLoop.__init__)
    )
    assert "epoch_loop" in inspect.getsource(_FitLoop.__init__)


def test_jsonargparse_actions_still_carry_their_typehint():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--x", type=int)
    assert any(getattr(action, "_typehint", None) is int for action in parser._actions)
