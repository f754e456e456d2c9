"""CSA's fused Triton kernels (attention/csa_triton.py) under Triton's CPU interpreter.

Run by tests/test_csa_triton.py in a child pytest with TRITON_INTERPRET=1: Triton reads it when it
is first imported, so it cannot be switched on inside a process that has imported Triton already.
The kernels are the code that runs on a GPU (there they multiply bf16 / fp16 tiles on the tensor
cores; the interpreter multiplies them in float32, the same products). The GPU kit
(benchmarks/gpu_check.py) checks them on CUDA against float64.
"""

import os

import pytest
import torch

from csa_lightning.attention import build_attention, csa_math, csa_triton
from csa_lightning.attention import csa as csa_module

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="run by tests/test_csa_triton.py with TRITON_INTERPRET=1"
)


@pytest.fixture
def interpreter():
    assert csa_triton.interpreting()
    yield


def correlated_map(n=2, c=40, side=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = 0.6 * torch.randn(n, 1, side, side, generator=g) + torch.randn(n, c, side, side, generator=g)
    return (x + 0.3 * torch.randn(n, c, 1, 1, generator=g)).to(dtype)


def float64_reference(x, y, contiguity):
    w = csa_math.contiguity_weights(x.double(), contiguity)
    return torch.bmm(w, y.double().unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("contiguity", csa_module.CONTIGUITY_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_weighted_sums_equal_float64_w_times_y(interpreter, contiguity, dtype, channels_last):
    """Several row and column tiles, a K loop with a ragged last step, both memory layouts."""
    x = correlated_map(dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randn(2, 40, generator=torch.Generator().manual_seed(1))
    f = x.reshape(2, 40, -1)  # a view in both layouts: what the kernels read
    out, (mean_dist, total) = csa_triton.weighted_sums(f, y, contiguity, 1e-5, config=(16, 16, 1, 1))
    reference = float64_reference(x, y, contiguity)
    assert (out.double() - reference).abs().max() <= 2e-6 * reference.abs().max()
    # the statistics equal the PyTorch path's (which the backward reuses)
    _, (mean_torch, total_torch) = csa_math.weighted_sums(f.float(), y.unsqueeze(-1), contiguity, 1e-5, 1)
    torch.testing.assert_close(mean_dist, mean_torch, rtol=1e-5, atol=0)
    torch.testing.assert_close(total, total_torch, rtol=1e-5, atol=0)


@pytest.mark.parametrize("contiguity", csa_module.CONTIGUITY_MODES)
# every distance mode; exact distances at both default tile configurations (K = 49 and 81)
@pytest.mark.parametrize("distance, side", [("exact", 7), ("exact", 9), ("projected", 7), ("pooled", 7)])
def test_fused_descriptors_and_input_gradients_equal_float64(interpreter, contiguity, distance, side):
    options = dict(contiguity=contiguity, distance=distance)
    if distance == "projected":
        options["projection_dim"] = 16
    if distance == "pooled":
        options["pool_size"] = 4
    x = correlated_map(c=24, side=side)
    upstream = torch.randn(2, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x64 = x.double().requires_grad_(True)
    reference = csa_module.spatial_autocorrelation(x64, kernel="torch", **options)
    (reference["q"] * upstream).sum().backward()
    errors = {}
    for kernel in ("triton", "torch"):  # float32 on each path, against float64
        x32 = x.clone().requires_grad_(True)
        out = csa_module.spatial_autocorrelation(x32, kernel=kernel, **options)
        (out["q"] * upstream.float()).sum().backward()
        errors[kernel] = {
            key: float((out[key].double() - reference[key]).abs().max().detach() / reference[key].abs().max().detach())
            for key in ("z", "I", "q")
        }
        errors[kernel]["grad"] = float((x32.grad.double() - x64.grad).abs().max() / x64.grad.abs().max())
    # as exact as the PyTorch path (float32's own error here is up to ~1e-5 of the largest value)
    for key, err in errors["triton"].items():
        assert err <= 1.5 * errors["torch"][key] + 1e-6, (
            f"{key} off by {err:.1e} (PyTorch path {errors['torch'][key]:.1e})"
        )
        assert err <= 1e-4, f"{key} off by {err:.1e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_gate_is_finite_on_degenerate_inputs_under_autocast(interpreter, dtype):
    block = build_attention("csa", 32, kernel="triton")
    g = torch.Generator().manual_seed(0)
    cases = {
        "all_zero": torch.zeros(2, 32, 5, 5),
        "identical_channels": torch.randn(2, 1, 5, 5, generator=g).expand(2, 32, 5, 5).contiguous(),
        "constant_maps": torch.randn(2, 32, 1, 1, generator=g).expand(2, 32, 5, 5).contiguous(),
        "tiny_values": torch.randn(2, 32, 5, 5, generator=g) * 1e-20,
    }
    for case, x in cases.items():
        x = x.to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
        out.float().sum().backward()
        assert torch.isfinite(out.float()).all() and torch.isfinite(x.grad.float()).all(), case
        block.zero_grad(set_to_none=True)


def test_identical_channels_get_weight_one_from_the_fused_path(interpreter):
    """Distance exactly 0 between channels equal up to rounding (the floor), as on the PyTorch path:
    two identical channels among random ones get the largest weight of their rows."""
    x = correlated_map(n=1, c=20)
    x[:, 7] = x[:, 3]
    f = x.reshape(1, 20, -1)
    y = torch.zeros(1, 20)
    y[0, 7] = 1.0  # w y = column 7 of w
    out, (mean_dist, total) = csa_triton.weighted_sums(f, y, "l2", 1e-5)
    assert torch.isclose(out[0, 3] * total[0], torch.tensor(1.0), rtol=1e-6)  # v_37 = exp(0)


def test_float64_is_refused_by_the_fused_path_in_one_line(interpreter):
    x = correlated_map(c=16).double()
    assert csa_math.use_fused(x.float(), "triton")
    with pytest.raises(ValueError, match="got a torch.float64 tensor on cpu: it takes float32, bfloat16 or float16"):
        csa_module.spatial_autocorrelation(x, kernel="triton")
