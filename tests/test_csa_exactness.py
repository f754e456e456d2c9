"""CSA is exact and safe: q is a true z-score at every scale, and no call leaves shared state.

Three properties a training run cannot see and every measurement depends on:

- the standardisations are scale-free: q equals the paper's formula (population std, no eps) in
  float64 whatever the magnitude of I (which is O(1/C), so an absolute eps biased it), and the
  authors' variant (unbiased std, eps 1e-12) up to its sqrt((C - 1) / C) factor;
- concurrent calls from several threads and several models give the sequential results, and
  torch.export / FakeTensor tracing leave nothing behind that a later eager call reads;
- the random-projection cache stays bounded however many input sizes it sees.
"""

import math
import threading

import pytest
import torch

from csa_lightning.attention import (
    CSA,
    GaussianContextTransformer,
    csa_cache,
    csa_math,
    spatial_autocorrelation,
    standardize,
)

MODES = ["l2", "hybrid", "cosine"]


# ------------------------------------------------------------------- float64 transcriptions


def paper_standardize(v):
    """Eq. 2 / Eq. 7 as printed: (v - mean_C v) / std_C v, population std, no eps."""
    centred = v - v.mean(1, keepdim=True)
    return centred / centred.square().mean(1, keepdim=True).sqrt()


def paper_descriptors(x, contiguity):
    """z, I, q of a float64 map, dense, with torch.cdist: an independent transcription of the
    equations and of this project's conventions for v (docs/csa.md)."""
    n, c = x.shape[:2]
    f = x.reshape(n, c, -1)
    z = paper_standardize(f.mean(-1))
    dist = torch.cdist(f, f)
    off = 1 - torch.eye(c, dtype=x.dtype)
    norms = f.norm(dim=-1)
    cos = (f @ f.transpose(1, 2) / norms[:, :, None] / norms[:, None, :]).clamp_min(0)
    if contiguity == "l2":
        v = torch.exp(-dist / ((dist * off).sum((1, 2)) / (c * (c - 1)))[:, None, None])
    elif contiguity == "hybrid":
        v = cos * torch.exp(-dist / ((dist * off).sum((1, 2)) / (c * c))[:, None, None])
    else:
        v = cos
    v = v * off
    w = v / v.sum((1, 2), keepdim=True)
    moran = z * (w @ z.unsqueeze(-1)).squeeze(-1)
    return z, moran, paper_standardize(moran)


def authors_q(x):
    """The authors' CSA/CSA_Module.py ("hybrid"), transcribed in float64: unbiased std, z without
    eps, l_bar over the whole C x C matrix, w = v / (sum v + 1e-10), I = diag((z z^T) w),
    q = (I - mean) / (std + 1e-12)."""
    n, c = x.shape[:2]
    f = x.reshape(n, c, -1)
    gap = f.mean(-1)
    z = (gap - gap.mean(1, keepdim=True)) / gap.std(1, keepdim=True)
    dist = torch.cdist(f, f)
    l_bar = dist.mean((1, 2), keepdim=True)
    cos = torch.nn.functional.cosine_similarity(f[:, :, None, :], f[:, None, :, :], dim=-1).clamp_min(0)
    v = cos * torch.exp(-dist / l_bar) * (1 - torch.eye(c, dtype=x.dtype))
    w = v / (v.sum((1, 2), keepdim=True) + 1e-10)
    moran = torch.diagonal((z[:, :, None] * z[:, None, :]) @ w, dim1=1, dim2=2)
    return (moran - moran.mean(1, keepdim=True)) / (moran.std(1, keepdim=True) + 1e-12)


# ------------------------------------------------------------------------- 1. q is a z-score


@pytest.mark.parametrize("contiguity", MODES)
@pytest.mark.parametrize("channels", [3, 5, 48, 257, 2048])
def test_q_is_the_papers_z_score_in_float64(contiguity, channels):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 3, 2, generator=g, dtype=torch.float64) + torch.randn(
        2, 1, 3, 2, generator=g, dtype=torch.float64
    )
    got = spatial_autocorrelation(x, contiguity=contiguity)
    z, moran, q = paper_descriptors(x, contiguity)
    torch.testing.assert_close(got["z"], z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got["I"], moran, atol=1e-12, rtol=1e-7)
    torch.testing.assert_close(got["q"], q, atol=1e-6, rtol=0)
    # the standardisation itself is scale-free: I rescaled by 1e-8 .. 1e8 gives the same q
    for exponent in range(-8, 9, 2):
        scaled = got["I"] * 10.0**exponent
        torch.testing.assert_close(standardize(scaled), paper_standardize(scaled), atol=1e-6, rtol=0)


def test_two_channels_give_q_zero():
    """C = 2: w = [[0, 1/2], [1/2, 0]], so I_1 = I_2 = z_1 z_2 / 2 and q is exactly 0."""
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    for contiguity in ("l2", "hybrid"):
        out = spatial_autocorrelation(x, contiguity=contiguity)
        assert torch.equal(out["q"], torch.zeros_like(out["q"]))
        assert out["z"].abs().sub(1).abs().max() < 1e-12  # +-1 for two distinct channels


@pytest.mark.parametrize("channels", [3, 64, 1024])
def test_hybrid_q_equals_the_authors_code_after_the_unbiased_std_factor(channels):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, channels, 4, 3, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        2, 1, 4, 3, generator=g, dtype=torch.float64
    )
    q = spatial_autocorrelation(x, contiguity="hybrid")["q"]
    torch.testing.assert_close(q * math.sqrt((channels - 1) / channels), authors_q(x), atol=1e-6, rtol=0)


def test_gct_and_default_descriptors_share_the_scale_free_standardisation():
    """GCT and ChannelAttention.descriptors standardise the GAP vector the same way: a GAP of
    order 1e-6 (a tiny but non-degenerate map) gets the same z as its rescaled copy."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 4, 4, generator=g, dtype=torch.float64)
    gct = GaussianContextTransformer(32).double()
    torch.testing.assert_close(gct.gate(x * 1e-6), gct.gate(x), atol=1e-12, rtol=1e-9)
    gap = x.mean((2, 3))
    torch.testing.assert_close(gct.descriptors(x * 1e-6)["z"], paper_standardize(gap), atol=1e-9, rtol=0)


def test_q_has_unit_std_at_every_gate_of_csa_r50_on_digits():
    """CSA-R50 at initialisation, 4 digit images upsampled to 224 px: std_C(q) is 1 within 1e-3 at
    every gate (the absolute eps gave 0.989 .. 0.917 from layer1 to layer4)."""
    from sklearn.datasets import load_digits

    from csa_lightning.models import attention_resnet

    digits = torch.tensor(load_digits().images[:4], dtype=torch.float32) / 16
    images = torch.nn.functional.interpolate(digits[:, None], size=224, mode="bilinear").expand(4, 3, 224, 224)
    torch.manual_seed(0)
    model = attention_resnet(50, "csa", num_classes=10).eval()
    stds = {}
    for name, gate in model.gates():
        gate.register_forward_hook(
            lambda m, args, out, name=name: stds.__setitem__(
                name, m.autocorrelation(args[0])["q"].std(1, unbiased=False)
            )
        )
    with torch.no_grad():
        model(images)
    assert len(stds) == 4
    for name, std in stds.items():
        assert (std - 1).abs().max() < 1e-3, (name, std)


# ---------------------------------------------------------------------- 2. no shared state


def _run_threads(jobs):
    results, errors = {}, []

    def work(key, fn):
        try:
            results[key] = fn()
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_threads_and_models_get_the_sequential_results():
    """Two CSA gates (different options) called from four threads on four inputs, 8 calls each:
    every output equals the one computed alone (a module-level workspace made 50 of 60 wrong)."""
    torch.manual_seed(0)
    gates = [CSA(512).eval(), CSA(512, contiguity="hybrid").eval()]
    inputs = [torch.randn(4, 512, 14, 14) for _ in range(4)]
    with torch.no_grad():
        expected = {(gi, xi): gates[gi](inputs[xi]) for gi in range(2) for xi in range(4)}

    def calls(gi, xi):
        def run():
            with torch.no_grad():
                return [gates[gi](inputs[xi]) for _ in range(8)]

        return run

    results = _run_threads({(t % 2, t): calls(t % 2, t) for t in range(4)})
    for (gi, xi), outs in results.items():
        for out in outs:
            assert torch.equal(out, expected[(gi, xi)]), f"thread {xi} gate {gi} got a wrong output"


def _dense_gate(gate, x):
    """The same gate through the differentiable dense path, which keeps no workspace."""
    q = spatial_autocorrelation(x, contiguity=gate.contiguity, eps=gate.eps, contiguity_grad=True)["q"]
    return x * gate.mlp(q).sigmoid()[:, :, None, None]


def test_export_then_eager_equals_fresh_eager():
    """torch.export first in a process (nothing cached yet) must not leave a fake tensor that later
    eager calls use; eager first must not bake the cached workspace into the program."""
    csa_cache.release_workspace()
    torch.manual_seed(0)
    gate = CSA(256).eval()
    x1, x2 = torch.randn(2, 256, 7, 7), torch.randn(2, 256, 7, 7)
    program = torch.export.export(gate, (x1,))
    with torch.no_grad():
        torch.testing.assert_close(gate(x2), _dense_gate(gate, x2), atol=1e-5, rtol=1e-5)
        # eager ran, so a workspace exists now; a second export must not capture it
        program2 = torch.export.export(gate, (x1,))
        for prog in (program, program2):
            assert not [n for n, t in prog.constants.items() if isinstance(t, torch.Tensor) and t.numel() > 256 * 256]
            torch.testing.assert_close(prog.module()(x2), gate(x2), atol=1e-5, rtol=1e-5)


def test_fake_tensor_tracing_leaves_no_state():
    from torch._subclasses.fake_tensor import FakeTensorMode

    csa_cache.release_workspace()
    gate = CSA(64, distance="projected", projection_dim=8).eval()
    with FakeTensorMode(allow_non_fake_inputs=True):
        gate(torch.randn(2, 64, 6, 6))
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        out = gate(x)
    assert torch.isfinite(out).all()
    for t in csa_cache.projection_cache_tensors():
        assert type(t) is torch.Tensor, "a fake tensor was cached"
    torch.testing.assert_close(out, _dense_gate_projected(gate, x), atol=1e-5, rtol=1e-5)


def _dense_gate_projected(gate, x):
    q = spatial_autocorrelation(
        x, contiguity=gate.contiguity, contiguity_grad=True, distance="projected", projection_dim=gate.projection_dim
    )["q"]
    return x * gate.mlp(q).sigmoid()[:, :, None, None]


def test_projection_cache_is_bounded():
    """COCO's padded sizes vary batch to batch: the projection cache keeps only the newest sizes."""
    csa_cache.clear_projection_cache()
    for side in range(9, 9 + 3 * csa_cache.PROJECTION_CACHE_SIZE):
        csa_math.distance_features(torch.randn(1, 4, side, 9), projection_dim=8)
    assert len(csa_cache.projection_cache_tensors()) == csa_cache.PROJECTION_CACHE_SIZE


def test_workspace_made_under_inference_mode_serves_training_calls():
    """Found by the test suite: validation (torch.inference_mode) made the thread's workspace an
    inference tensor, and the next training step's in-place writes to it raised RuntimeError."""
    csa_cache.release_workspace()
    gate = CSA(256)
    x = torch.randn(2, 256, 7, 7)
    with torch.inference_mode():
        gate(x)
    out = gate(x.clone().requires_grad_())
    out.sum().backward()
    with torch.inference_mode():
        torch.testing.assert_close(gate(x), out.detach())
