"""Degenerate inputs, autocast and memory shape of the attention blocks.

CSA divides by standard deviations and mean distances: all-zero maps, a zero-initialised last
BN, identical channels, batch size 1 and bf16 / fp16 autocast must give finite outputs and
gradients.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from csa_lightning.attention import CSA, spatial_autocorrelation
from csa_lightning.models import attention_resnet

MODES = ["l2", "hybrid", "cosine"]


def assert_finite_forward_backward(block, x):
    x = x.clone().requires_grad_(True)
    out = block(x)
    assert torch.isfinite(out).all(), "non-finite output"
    out.sum().backward()
    assert torch.isfinite(x.grad).all(), "non-finite input gradient"
    for name, p in block.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient of {name}"
    return out


def csa_variants():
    return [dict(contiguity=m, contiguity_grad=g) for m in MODES for g in (False, True)]


@pytest.mark.parametrize("options", csa_variants(), ids=lambda o: f"{o['contiguity']}-grad{o['contiguity_grad']}")
@pytest.mark.parametrize(
    "case",
    [
        "all_zero",
        "identical_channels",
        "constant_maps",
        "batch_of_one",
        "opposite_channels",
        "tiny_values",
        "huge_values",
    ],
)
def test_csa_degenerate_inputs_give_finite_outputs_and_gradients(options, case):
    g = torch.Generator().manual_seed(0)
    c = 16
    if case == "all_zero":
        x = torch.zeros(2, c, 5, 5)
    elif case == "identical_channels":
        x = torch.randn(2, 1, 5, 5, generator=g).expand(2, c, 5, 5).contiguous()
    elif case == "constant_maps":  # each channel constant over space: distances only from the levels
        x = torch.randn(2, c, 1, 1, generator=g).expand(2, c, 5, 5).contiguous()
    elif case == "batch_of_one":
        x = torch.randn(1, c, 5, 5, generator=g)
    elif case == "opposite_channels":  # cosine similarities all <= 0: sum of v is 0 in cosine mode
        base = torch.randn(1, 1, 5, 5, generator=g)
        x = torch.cat([base, -base], dim=1).expand(2, 2, 5, 5).contiguous()
        c = 2
    elif case == "tiny_values":
        x = torch.randn(2, c, 5, 5, generator=g) * 1e-20
    else:
        x = torch.randn(2, c, 5, 5, generator=g) * 1e15
    block = CSA(c, reduction=2 if c < 16 else 16, **options)
    out = assert_finite_forward_backward(block, x)
    desc = block.descriptors(x)
    for key in ("z", "I", "q", "p"):
        assert torch.isfinite(desc[key]).all(), key
    if case in ("all_zero", "identical_channels"):
        # no channel stands out: z = 0, I = 0, q = 0, and the gate is the MLP's response to 0
        assert torch.equal(desc["q"], torch.zeros_like(desc["q"]))
        p0 = block.mlp(torch.zeros(1, c)).sigmoid()
        torch.testing.assert_close(desc["p"], p0.expand_as(desc["p"]))
    assert out.shape == x.shape


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("options", csa_variants(), ids=lambda o: f"{o['contiguity']}-grad{o['contiguity_grad']}")
def test_zero_initialised_last_bn_gives_finite_gradients(depth, options):
    """zero_init_residual=True zeroes the last BN's weight: every gate sees an all-zero map."""
    torch.manual_seed(0)
    model = attention_resnet(depth, "csa", attention_options=options, num_classes=10, zero_init_residual=True)
    seen = []
    for _, gate in model.gates():
        gate.register_forward_pre_hook(lambda m, args: seen.append(float(args[0].detach().abs().max())))
    out = model(torch.randn(2, 3, 32, 32))
    assert seen and max(seen) == 0.0, "zero_init_residual should give the gates all-zero maps"
    out.logsumexp(1).sum().backward()
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("contiguity", MODES)
def test_csa_under_autocast_runs_distances_in_fp32_and_agrees_with_fp32_gate(dtype, contiguity, monkeypatch):
    """The distance chain (w z inside CSA's custom operator, forward and backward) gets float32 maps
    and vectors under bf16 / fp16 autocast, and no bmm or exp outside it runs in low precision."""
    from csa_lightning.attention import csa_math as csa_module

    torch.manual_seed(0)
    block = CSA(64, contiguity=contiguity)
    x = torch.randn(2, 64, 7, 7) + 0.5 * torch.randn(2, 1, 7, 7)
    reference = block.gate(x).flatten(1)
    dtypes = []
    weighted_sums = csa_module.weighted_sums

    def recording(f, y, *args, **kwargs):
        dtypes.extend([f.dtype, y.dtype])
        return weighted_sums(f, y, *args, **kwargs)

    monkeypatch.setattr(csa_module, "weighted_sums", recording)

    class RecordBmm(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.exp):
                dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=dtype), RecordBmm():
        low = x.to(dtype).requires_grad_(True)  # what a convolution under autocast hands the gate
        gated = block(low)
        p = block.gate(low).flatten(1)
        gated.float().sum().backward()
    assert len(dtypes) >= 6 and all(d == torch.float32 for d in dtypes), dtypes  # 2 forwards + 1 backward
    assert gated.dtype == dtype
    assert torch.isfinite(p).all()
    assert float((p.float() - reference).abs().max().detach()) <= 1e-2


def test_csa_never_builds_a_cubic_tensor():
    """No op of forward or backward produces a tensor as large as C x C x C (the authors' code does)."""
    c, n = 64, 2
    largest = []

    class RecordSizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    largest.append(t.numel())
            return out

    for contiguity_grad in (False, True):
        block = CSA(c, contiguity="hybrid", contiguity_grad=contiguity_grad)
        x = torch.randn(n, c, 4, 4, requires_grad=True)
        with RecordSizes():
            block(x).sum().backward()
    assert max(largest) <= n * c * c < c**3


def test_spatial_autocorrelation_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown contiguity 'l3'"):
        spatial_autocorrelation(torch.randn(1, 4, 2, 2), contiguity="l3")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        spatial_autocorrelation(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="expects \\(N, 8, H, W\\)"):
        CSA(8)(torch.randn(1, 4, 2, 2))


def test_csa_compile_option_matches_eager():
    """compile=True wraps the descriptor math in torch.compile; results equal eager ones."""
    torch.manual_seed(0)
    eager = CSA(32)
    compiled = CSA(32, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)


def test_compiled_csa_network_is_one_graph_and_equals_eager():
    """CSA's w z is a custom operator: dynamo traces a CSA network without a graph break, and the
    compiled gate (AOT autograd, the operator's fake shapes and registered backward) gives eager's
    outputs and input gradients. Before, inductor decomposed the blocked path into loops fused with
    batch norm, and a compiled CSA-ResNet-18 trained 6x slower than eager."""
    import torch._dynamo

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.BatchNorm2d(32), CSA(32), torch.nn.ReLU())
    x = torch.randn(2, 3, 9, 9)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert any("moran_i" in op for op in ops), ops
    gate = CSA(32)
    compiled = torch.compile(gate, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 32, 7, 7) + 0.5 * torch.randn(2, 1, 7, 7)
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [module(t) for module, t in zip((gate, compiled), inputs)]
    for out in outputs:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("contiguity", MODES)
@pytest.mark.parametrize("case", ["random", "all_zero", "identical_channels", "opposite_channels"])
@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_lean_weighted_sums_equal_the_dense_weights(contiguity, case, blocks):
    """The default path (symmetric blocks, w never formed) computes w @ y for the same w as the
    dense, differentiable contiguity_weights, for any block count (uneven blocks included)."""
    from csa_lightning.attention.csa_math import contiguity_weights, weighted_sums

    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64)
    x = {
        "random": torch.randn(3, 23, 5, 5, generator=g, dtype=torch.float64),
        "all_zero": torch.zeros(2, 23, 5, 5, dtype=torch.float64),
        "identical_channels": base.expand(2, 23, 5, 5).contiguous(),
        "opposite_channels": torch.cat([base, -base] * 11 + [base], dim=1),
    }[case]
    y = torch.randn(x.shape[0], 23, 2, generator=g, dtype=torch.float64)
    before = x.clone()
    lean, _ = weighted_sums(x.reshape(x.shape[0], 23, -1), y, contiguity, 1e-5, blocks)
    dense = contiguity_weights(x, contiguity, 1e-5)
    torch.testing.assert_close(lean, torch.bmm(dense, y), atol=1e-12, rtol=1e-9)
    assert torch.equal(x, before), "the input must not be modified"


def _saved_for_backward(fn, x):
    """(shape, storage bytes) of every distinct storage autograd keeps during fn(x)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return seen


@pytest.mark.parametrize("contiguity", MODES)
def test_lean_path_keeps_no_channel_by_channel_matrix_for_backward(contiguity):
    """Default CSA keeps for backward the feature map (which x * p keeps anyway) and a few
    per-channel vectors: no C x C tensor per sample. contiguity_grad=True keeps several."""
    n, c = 4, 64
    x = torch.randn(n, c, 6, 6, requires_grad=True)
    torch.manual_seed(0)
    lean = _saved_for_backward(CSA(c, contiguity=contiguity), x)
    assert all(shape[-2:] != (c, c) for shape, _ in lean.values())
    others = sum(nbytes for ptr, (shape, nbytes) in lean.items() if ptr != x.untyped_storage().data_ptr())
    mlp_weights = sum(p.numel() for p in CSA(c).mlp.parameters()) * 4
    assert others <= mlp_weights + 24 * n * c * 4  # weights and O(N x C) vectors, nothing of size C x C
    dense = _saved_for_backward(CSA(c, contiguity=contiguity, contiguity_grad=True), x)
    assert sum(nbytes for shape, nbytes in dense.values() if shape[-2:] == (c, c)) >= n * c * c * 4


def test_projected_distances():
    from csa_lightning.attention.csa_math import distance_features

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 16, 16, generator=g)
    # maps no larger than k are used as they are: projected == exact
    small = torch.randn(2, 32, 4, 4, generator=g)
    for key in ("z", "I", "q"):
        torch.testing.assert_close(
            spatial_autocorrelation(small, distance="projected", projection_dim=16)[key],
            spatial_autocorrelation(small)[key],
            atol=1e-6,
            rtol=1e-6,
        )
    # the projection is fixed by its seed (the same in every process and call), and another seed differs
    a = distance_features(x, 64, projection_seed=3)
    assert a.shape == (2, 32, 64) and torch.equal(a, distance_features(x, 64, projection_seed=3))
    assert not torch.equal(a, distance_features(x, 64, projection_seed=4))
    # Johnson-Lindenstrauss: 64 x 64 maps (4,096 values) projected to 1,024 keep their pairwise distances
    big = torch.randn(1, 16, 64, 64, generator=g)
    exact = torch.cdist(big.flatten(2), big.flatten(2))
    projected = torch.cdist(distance_features(big, 1024), distance_features(big, 1024))
    off = ~torch.eye(16, dtype=torch.bool)
    assert ((projected[0][off] / exact[0][off]) - 1).abs().max() < 0.15
    # the gate runs, projected, with finite gradients, and says so in its repr
    gate = CSA(32, distance="projected", projection_dim=32)
    xg = x.clone().requires_grad_()
    gate(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and "projection_dim=32" in repr(gate)
    assert gate.extra_macs(x.shape) == 32 * 256 * 32 + 32 * 32 * 32
    # ResNet-50's first stage end: 256 channels of 56 x 56, k = 64: 3.7x fewer multiply-adds
    stage1 = torch.Size([1, 256, 56, 56])
    assert CSA(256).extra_macs(stage1) / CSA(256, distance="projected").extra_macs(stage1) > 3.6
    with pytest.raises(ValueError, match="unknown distance"):
        CSA(32, distance="approximate")
