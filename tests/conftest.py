"""Shared fixtures. ffcv compiles for seconds per Loader: FFCV data is written once per session."""

import os
from functools import partial
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEMO_CONFIG = CONFIGS / "demo" / "digits_csa.yaml"
#: the demo config's data replaced by the digits in memory at 16 px (no ffcv Loader to compile)
MEMORY_MODULE = ["--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16"]
MEMORY_DATA = [*MEMORY_MODULE, "--data.batch_size", "16"]
#: seconds a test waits for a process it started: only reached when something hangs, so sized for a
#: loaded machine several times slower than a 2-core development box (the slowest child here: ~40 s)
TIMEOUT = 900


if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs two pytest-xdist workers on the two cores: one torch thread each, or four
    # threads would fight over two cores; the processes tests start (training runs of the ablation
    # runner, DDP launches, the GPU kit's dry run) inherit the environment and take one thread too
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Tests must not leak a changed thread count (ffcv sets it) into later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_betons(tmp_path_factory):
    """data_dir holding the digits ImageFolder and train/val betons, written once per session."""
    from csa_lightning.data import DigitsDataModule

    data_dir = tmp_path_factory.mktemp("digits")
    DigitsDataModule(data_dir=str(data_dir)).prepare_data()
    return data_dir


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty folder, so relative run folders land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_classification_checkpoint(path, attention: str, depth: int = 18, steps: int = 4) -> str:
    """A genuine Lightning checkpoint of a digits ClassificationModule after a few steps, saved with
    its data module's settings (as cli.py fit writes them)."""
    import lightning as L

    from csa_lightning.data import DigitsMemoryDataModule
    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule, StepDecay

    torch.manual_seed(0)
    module = ClassificationModule(
        ResNetSpec(depth, attention, num_classes=10),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lr_schedule=StepDecay(milestones=[5]),
    )
    data = DigitsMemoryDataModule(batch_size=32, limit_train_samples=128)
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture
def clean_registry():
    """The attention registry as it was before the test (tests register blocks of their own)."""
    from csa_lightning.attention import registry as attention_base

    saved = dict(attention_base._REGISTRY)
    yield
    attention_base._REGISTRY.clear()
    attention_base._REGISTRY.update(saved)


def refusal(capsys, function, *args, **kwargs) -> str:
    """Call a command's ``function``; it must refuse with exit status 2: returns its one ``error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        function(*args, **kwargs)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2, err
    lines = [line for line in err if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]
