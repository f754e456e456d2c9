"""examples/custom_attention: a user's block trains through cli.py without editing csa_lightning."""

import os
import subprocess
import sys

import pytest

from .conftest import DEMO_CONFIG, ROOT, TIMEOUT

EXAMPLE = ROOT / "examples" / "custom_attention"
FAST = ["--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16", "--data.batch_size", "16",
        "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.mark.parametrize(
    "script,attention",
    [(ROOT / "cli.py", "my_attention.StdGate"), (EXAMPLE / "train.py", "std_gate")],
    ids=["dotted-path", "registered-name"],
)
def test_custom_attention_trains_from_the_command_line(tmp_path, script, attention):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]))
    cmd = [sys.executable, str(script), "fit", "--config", str(DEMO_CONFIG), "--model.net.attention", attention, *FAST]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]


def test_custom_block_is_used_in_the_model(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from my_attention import StdGate

    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    module = ClassificationModule(ResNetSpec(18, "my_attention.StdGate", num_classes=10))
    gates = [g for _, g in module.model.gates()]
    assert len(gates) == 4 and all(isinstance(g, StdGate) for g in gates)


def test_custom_block_gets_the_shape_check_without_writing_it(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(EXAMPLE))
    from my_attention import StdGate

    with pytest.raises(ValueError, match=r"StdGate was built for 16 channels"):
        StdGate(16)(torch.randn(2, 8, 4, 4))
