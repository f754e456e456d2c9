"""A kill while saving a checkpoint leaves no file in the system's temporary folder (issue 14, item 10)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from csa_lightning.tasks.checkpoint_io import AtomicCheckpointIO

from .conftest import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]

# A process that saves a checkpoint through AtomicCheckpointIO and is killed (os._exit) at the moment the
# written file would be moved into place: the worst moment, everything written, nothing committed.
KILLED_WHILE_SAVING = textwrap.dedent(
    """
    import os, shutil, sys
    import torch
    from csa_lightning.tasks.checkpoint_io import AtomicCheckpointIO

    def die(*args, **kwargs):
        os._exit(9)

    shutil.move = die
    os.replace = die
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, sys.argv[1])
    """
)


def _save_and_get_killed(target: Path, system_tmp: Path) -> None:
    system_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(system_tmp), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(target)], env=env, timeout=TIMEOUT)
    assert result.returncode == 9


@pytest.mark.slow
def test_a_kill_while_saving_leaves_nothing_in_the_system_tmp(tmp_path):
    """Lightning's IO stages the bytes in tempfile.mkstemp() (the system's temporary folder): a kill
    before the move left them there for good (measured: the same kill under TorchCheckpointIO leaves
    a file in TMPDIR). Ours writes beside the target, and the next save into that folder removes the
    dead process's partial file."""
    target = tmp_path / "b" / "last.ckpt"
    _save_and_get_killed(target, tmp_path / "tmp_ours")
    assert not list((tmp_path / "tmp_ours").iterdir())
    assert not target.exists()
    (leftover,) = target.parent.glob(".last.ckpt.partial-*")
    AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert not leftover.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(target, weights_only=True) == {"step": 2}


def test_failed_save_keeps_the_previous_checkpoint_and_removes_its_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(target) == {"step": 1}


def test_a_live_process_partial_file_is_kept(tmp_path):
    """A partial file of a process still running (another rank or run saving beside this one) stays."""
    live = tmp_path / f".last.ckpt.partial-{os.getppid()}"
    live.write_bytes(b"being written")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert live.exists()


def test_cli_trainers_save_through_the_atomic_io(tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from csa_lightning.cli import build_cli
    from csa_lightning.trainer_setup import with_atomic_checkpoint_io

    cli = build_cli(
        ["--config", str(ROOT / "configs/demo/digits_csa.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    # a config that names its own checkpoint IO keeps it
    own = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([own]) == [own]
    assert isinstance(with_atomic_checkpoint_io(None)[0], AtomicCheckpointIO)
