"""Tests of your block: run them with `python -m pytest tests` from this folder once the package is
installed beside csa-lightning (docs/your-project.md). csa-lightning's own suite runs them too."""

import pytest
import torch
from your_project import SRM

from csa_lightning.attention import available_attentions, resolve_attention


def test_every_tool_finds_the_block_by_its_short_name():
    assert "srm" in available_attentions()
    assert resolve_attention("SRM") is SRM


def test_the_gate_is_a_per_channel_weight_in_0_1():
    x = torch.randn(2, 8, 5, 5)
    p = SRM(8).gate(x)
    assert p.shape == (2, 8, 1, 1) and bool(((p > 0) & (p < 1)).all())


def test_float64_gradients_match_finite_differences():
    """The example this template replaced cast to float32 inside the gate and failed this."""
    block = SRM(4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


@pytest.mark.parametrize("make", [torch.zeros, torch.ones], ids=["all-zero", "constant"])
def test_constant_maps_give_finite_outputs_and_gradients(make):
    x = make(2, 4, 3, 3, requires_grad=True)
    SRM(4)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_a_batch_of_one_trains():
    SRM(4).train()(torch.randn(1, 4, 3, 3)).sum().backward()
