"""CSA's kernel choice (attention/csa.py KERNELS) and its fused Triton path.

The fused kernels themselves are tested under Triton's CPU interpreter in a child process
(tests/triton_interpreter_cases.py): Triton decides on the interpreter when it is first imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csa_lightning.attention import build_attention, csa_math, csa_triton
from csa_lightning.attention import csa as csa_module

from .conftest import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(csa_triton.unavailable_reason() is not None, reason="Triton is not installed")
def test_fused_kernels_under_the_triton_interpreter():
    """Every contiguity mode, dtype, layout and distance mode against float64, gradients, degenerate
    inputs (~15 s: the interpreter runs the kernels in numpy)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "0",
         str(ROOT / "tests" / "triton_interpreter_cases.py")],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]


def test_auto_takes_the_pytorch_path_on_the_cpu_and_triton_must_be_able_to_run():
    """kernel='auto' uses the fused kernels for CUDA tensors only; kernel='triton' on a CPU tensor
    (without the interpreter) is one line naming the fix, as is an unknown kernel."""
    x = torch.randn(2, 16, 5, 5)
    assert not csa_math.use_fused(x, "auto") and not csa_math.use_fused(x, "torch")
    if not csa_triton.interpreting():
        with pytest.raises(ValueError, match="kernel='triton' cannot run here: .* use kernel='auto' or 'torch'"):
            csa_module.spatial_autocorrelation(x, kernel="triton")
    with pytest.raises(ValueError, match="unknown kernel 'cuda': choose one of auto, triton, torch"):
        build_attention("csa", 16, kernel="cuda")


def test_kernel_choice_is_in_the_repr_and_the_default_is_auto():
    assert build_attention("csa", 16).kernel == "auto"
    assert "kernel='torch'" in repr(build_attention("csa", 16, kernel="torch"))
