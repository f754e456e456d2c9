"""Every block against an independent, loop-based float64 transcription of its formula.

The transcriptions below use Python floats and explicit loops over channels and pixels (no
torch math), so they share no code with the library. Tolerance 1e-5 throughout.
"""

import math

import pytest
import torch

from csa_lightning.attention import (
    CSA,
    CBAMChannelGate,
    EfficientChannelAttention,
    GaussianContextTransformer,
    SqueezeExcitation,
    eca_kernel_size,
    spatial_autocorrelation,
)

TOL = 1e-5
EPS = 1e-5


# ---------------------------------------------------------------------------- loop references


def maps_of(x, n):
    """Sample n of a (N, C, H, W) tensor as a list of C flat lists of floats."""
    return [[float(v) for v in x[n, c].flatten()] for c in range(x.shape[1])]


def mean(values):
    return sum(values) / len(values)


def standardize_ref(values):
    """Population std, no eps (docs/csa.md); a row constant up to rounding maps to 0."""
    mu = mean(values)
    sigma = math.sqrt(mean([(v - mu) ** 2 for v in values]))  # population std
    if sigma <= 1e-12 * max(abs(v) for v in values):
        return [0.0 for _ in values]
    return [(v - mu) / sigma for v in values]


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def mlp_ref(mlp, values):
    """C -> hidden -> ReLU -> C with the module's own weights, by loops."""
    w1, b1 = mlp.fc1.weight.double().tolist(), mlp.fc1.bias.double().tolist()
    w2, b2 = mlp.fc2.weight.double().tolist(), mlp.fc2.bias.double().tolist()
    hidden = [max(0.0, b1[h] + sum(w1[h][i] * values[i] for i in range(len(values)))) for h in range(len(b1))]
    return [b2[k] + sum(w2[k][h] * hidden[h] for h in range(len(hidden))) for k in range(len(b2))]


def csa_descriptors_ref(x, contiguity="l2", eps=EPS, w_source=None):
    """z, I, q per sample, exactly as docs/csa.md states the equations and conventions.

    ``w_source`` (default ``x``) is the map the contiguity matrix is computed from, so that the
    gradient with w held constant (contiguity_grad=False) can be checked by finite differences.
    """
    w_source = x if w_source is None else w_source
    out = {"z": [], "I": [], "q": []}
    for n in range(x.shape[0]):
        f = maps_of(x, n)
        g = maps_of(w_source, n)
        c = len(f)
        z = standardize_ref([mean(fi) for fi in f])
        dist = [
            [math.sqrt(sum((a - b) ** 2 for a, b in zip(g[i], g[j]))) if i != j else 0.0 for j in range(c)]
            for i in range(c)
        ]
        norms = [max(math.sqrt(sum(a * a for a in gi)), eps) for gi in g]
        cos = [[sum(a * b for a, b in zip(g[i], g[j])) / (norms[i] * norms[j]) for j in range(c)] for i in range(c)]
        total_dist = sum(dist[i][j] for i in range(c) for j in range(c) if i != j)
        if contiguity == "l2":
            l_bar = max(total_dist / (c * (c - 1)), eps)
        else:  # hybrid: the authors' mean over the whole C x C matrix, zero diagonal included
            l_bar = max(total_dist / (c * c), eps)
        v = [[0.0] * c for _ in range(c)]
        for i in range(c):
            for j in range(c):
                if i == j:
                    continue
                if contiguity == "l2":
                    v[i][j] = math.exp(-dist[i][j] / l_bar)
                elif contiguity == "cosine":
                    v[i][j] = max(cos[i][j], 0.0)
                else:
                    v[i][j] = max(cos[i][j], 0.0) * math.exp(-dist[i][j] / l_bar)
        s = sum(map(sum, v))
        w = [[v[i][j] / s for j in range(c)] for i in range(c)]
        moran = [z[i] * sum(w[i][j] * z[j] for j in range(c)) for i in range(c)]
        out["z"].append(z)
        out["I"].append(moran)
        out["q"].append(standardize_ref(moran))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def csa_gate_ref(block, x, w_source=None):
    q = csa_descriptors_ref(x, block.contiguity, block.eps, w_source)["q"].tolist()
    return torch.tensor([[sigmoid(v) for v in mlp_ref(block.mlp, row)] for row in q], dtype=torch.float64)


def se_gate_ref(block, x):
    rows = []
    for n in range(x.shape[0]):
        gap = [mean(fi) for fi in maps_of(x, n)]
        rows.append([sigmoid(v) for v in mlp_ref(block.mlp, gap)])
    return torch.tensor(rows, dtype=torch.float64)


def cbam_gate_ref(block, x):
    rows = []
    for n in range(x.shape[0]):
        f = maps_of(x, n)
        avg = mlp_ref(block.mlp, [mean(fi) for fi in f])
        peak = mlp_ref(block.mlp, [max(fi) for fi in f])
        rows.append([sigmoid(a + b) for a, b in zip(avg, peak)])
    return torch.tensor(rows, dtype=torch.float64)


def eca_gate_ref(block, x):
    kernel = block.conv.weight.double().flatten().tolist()
    k = len(kernel)
    pad = (k - 1) // 2
    rows = []
    for n in range(x.shape[0]):
        gap = [mean(fi) for fi in maps_of(x, n)]
        c = len(gap)
        conv = []
        for i in range(c):
            acc = 0.0
            for t in range(k):
                j = i + t - pad
                if 0 <= j < c:  # zero padding at both ends of the channel axis
                    acc += kernel[t] * gap[j]
            conv.append(acc)
        rows.append([sigmoid(v) for v in conv])
    return torch.tensor(rows, dtype=torch.float64)


def gct_gate_ref(block, x):
    c_value = float(block.c.detach())
    rows = []
    for n in range(x.shape[0]):
        z = standardize_ref([mean(fi) for fi in maps_of(x, n)])
        rows.append([math.exp(-(v * v) / (2 * c_value * c_value)) for v in z])
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------- fixtures


def random_map(seed, shape=(2, 12, 5, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # a shared component makes the channels correlated, as real feature maps are
    base = torch.randn(shape[0], 1, *shape[2:], generator=g)
    return (0.6 * base + torch.randn(shape, generator=g) + 0.3 * torch.randn(shape[0], shape[1], 1, 1, generator=g)).to(
        dtype
    )


def init_mlp(block, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if hasattr(block, "mlp"):  # keep most hidden units active so gradients are not trivially 0
            block.mlp.fc1.bias.add_(1.5)
    return block


# ---------------------------------------------------------------------------- CSA


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_spatial_autocorrelation_matches_loop_reference(contiguity, seed):
    x = random_map(seed)
    got = spatial_autocorrelation(x, contiguity=contiguity, eps=EPS)
    ref = csa_descriptors_ref(x, contiguity)
    for key in ("z", "I", "q"):
        assert got[key].shape == (2, 12)
        torch.testing.assert_close(got[key], ref[key], atol=TOL, rtol=TOL, msg=f"{contiguity} {key}")


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
@pytest.mark.parametrize("contiguity_grad", [False, True])
def test_csa_gate_and_descriptors_match_loop_reference(contiguity, contiguity_grad):
    x = random_map(3)
    block = init_mlp(CSA(12, reduction=4, contiguity=contiguity, contiguity_grad=contiguity_grad), 7).double()
    ref_p = csa_gate_ref(block, x)
    torch.testing.assert_close(block.gate(x).flatten(1), ref_p, atol=TOL, rtol=TOL)
    torch.testing.assert_close(block(x), x * ref_p[:, :, None, None], atol=TOL, rtol=TOL)
    desc = block.descriptors(x)
    assert set(desc) >= {"z", "I", "q", "p"}
    ref = csa_descriptors_ref(x, contiguity)
    for key in ("z", "I", "q"):
        torch.testing.assert_close(desc[key], ref[key], atol=TOL, rtol=TOL)
    torch.testing.assert_close(desc["p"], ref_p, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
@pytest.mark.parametrize("contiguity_grad", [False, True])
def test_csa_gradients_match_finite_differences_of_reference(contiguity, contiguity_grad):
    """Directional derivatives of the loop reference (central differences) equal autograd's.

    With contiguity_grad=False the reference holds w at the unperturbed input, which is the
    function whose gradient the block must return.
    """
    x0 = random_map(5, shape=(1, 8, 4, 4))
    block = init_mlp(CSA(8, reduction=2, contiguity=contiguity, contiguity_grad=contiguity_grad), 11).double()
    weights = torch.randn(1, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    (block.gate(x).flatten(1) * weights).sum().backward()
    assert float(x.grad.abs().max()) > 1e-2  # a vacuous all-zero gradient would pass trivially
    h = 1e-6
    rng = torch.Generator().manual_seed(9)
    for _ in range(3):
        d = torch.randn(x0.shape, generator=rng, dtype=torch.float64)

        def objective(sign):
            xp = x0 + sign * h * d
            p = csa_gate_ref(block, xp, w_source=xp if contiguity_grad else x0)
            return float((p * weights).sum())

        numeric = (objective(1) - objective(-1)) / (2 * h)
        analytic = float((x.grad * d).sum())
        assert analytic == pytest.approx(numeric, abs=TOL, rel=TOL)


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
def test_csa_contiguity_grad_passes_gradcheck(contiguity):
    block = init_mlp(CSA(6, reduction=2, contiguity=contiguity, contiguity_grad=True), 1).double()
    x = random_map(4, shape=(2, 6, 3, 3)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: block(t), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
def test_csa_float32_stays_within_1e5_of_float64_reference(contiguity):
    x = random_map(6, shape=(2, 16, 6, 6))
    block = init_mlp(CSA(16, reduction=4, contiguity=contiguity), 3).double()
    ref_p = csa_gate_ref(block, x)
    block32 = block.float()
    torch.testing.assert_close(block32.gate(x.float()).flatten(1).double(), ref_p, atol=TOL, rtol=TOL)


def test_contiguity_modes_differ():
    x = random_map(8)
    qs = [spatial_autocorrelation(x, contiguity=m)["q"] for m in ("l2", "hybrid", "cosine")]
    assert not torch.allclose(qs[0], qs[1]) and not torch.allclose(qs[0], qs[2])


# ---------------------------------------------------------------------------- baselines


def test_se_matches_loop_reference():
    x = random_map(10, shape=(2, 32, 4, 4))
    block = init_mlp(SqueezeExcitation(32), 1).double()
    assert block.mlp.fc1.out_features == 2  # C // 16 hidden units
    ref = se_gate_ref(block, x)
    torch.testing.assert_close(block.gate(x).flatten(1), ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(block(x), x * ref[:, :, None, None], atol=TOL, rtol=TOL)
    torch.testing.assert_close(block.descriptors(x)["p"], ref, atol=TOL, rtol=TOL)


def test_cbam_channel_gate_matches_loop_reference():
    x = random_map(11, shape=(2, 32, 4, 4))
    block = init_mlp(CBAMChannelGate(32), 2).double()
    ref = cbam_gate_ref(block, x)
    torch.testing.assert_close(block.gate(x).flatten(1), ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(block(x), x * ref[:, :, None, None], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("channels,k_size", [(20, None), (64, None), (2048, None), (20, 7)])
def test_eca_matches_loop_reference(channels, k_size):
    x = random_map(12, shape=(2, channels, 3, 3))
    block = init_mlp(EfficientChannelAttention(channels, k_size=k_size), 3).double()
    assert block.k_size == (k_size or eca_kernel_size(channels))
    ref = eca_gate_ref(block, x)
    torch.testing.assert_close(block.gate(x).flatten(1), ref, atol=TOL, rtol=TOL)


def test_eca_adaptive_kernel_sizes():
    assert [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]


@pytest.mark.parametrize("learn_c", [False, True])
def test_gct_matches_loop_reference(learn_c):
    x = random_map(13, shape=(3, 24, 4, 4))
    block = GaussianContextTransformer(24, c=2.0, learn_c=learn_c).double()
    ref = gct_gate_ref(block, x)
    torch.testing.assert_close(block.gate(x).flatten(1), ref, atol=TOL, rtol=TOL)
    assert sum(p.numel() for p in block.parameters()) == (1 if learn_c else 0)


def test_default_descriptors_are_standardised_gap_and_gate():
    x = random_map(14, shape=(2, 32, 4, 4))
    block = init_mlp(SqueezeExcitation(32), 4).double()
    desc = block.descriptors(x)
    ref_z = torch.tensor([standardize_ref([mean(fi) for fi in maps_of(x, n)]) for n in range(2)], dtype=torch.float64)
    torch.testing.assert_close(desc["z"], ref_z, atol=TOL, rtol=TOL)
    assert desc["p"].shape == (2, 32)


def test_reference_sanity_random_inputs_are_not_degenerate():
    # guards the tests above against comparing trivially constant outputs
    q = csa_descriptors_ref(random_map(0), "l2")["q"]
    assert float(q.std()) > 0.5


@pytest.mark.parametrize("contiguity", ["l2", "hybrid", "cosine"])
def test_contiguity_grad_changes_the_gradient(contiguity):
    """The two gradient modes must be distinguishable, or the finite-difference test above proves nothing."""
    x0 = random_map(5, shape=(1, 8, 4, 4))
    grads = []
    for contiguity_grad in (False, True):
        block = init_mlp(CSA(8, reduction=2, contiguity=contiguity, contiguity_grad=contiguity_grad), 11).double()
        x = x0.clone().requires_grad_(True)
        block.gate(x).sum().backward()
        grads.append(x.grad)
    assert float((grads[0] - grads[1]).abs().max()) > 1e-3
