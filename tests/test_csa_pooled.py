"""distance="pooled": the authors' detection backbone (CSA in every block, distances from maps
average-pooled to a size set by the channel count, z from the full map, contiguity "hybrid")."""

import math

import pytest
import torch

from csa_lightning.attention import CSA, spatial_autocorrelation
from csa_lightning.attention.csa_options import AUTHORS_POOL_SIZES
from csa_lightning.models import attention_resnet
from csa_lightning.models.summary import count_cost

AUTHORS = {"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"}


def adaptive_pool_ref(x, out_h, out_w):
    """PyTorch's adaptive average pooling by its definition: window i covers
    [floor(i * H / out), ceil((i + 1) * H / out)), by explicit loops."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum((2, 3)) / ((r1 - r0) * (c1 - c0))
    return out


def pooled_descriptors_ref(x, side, contiguity="hybrid"):
    """z from the full map; distances, cosines and l_bar from the pooled one; float64, dense."""
    n, c = x.shape[:2]
    gap = x.mean((2, 3))
    z = (gap - gap.mean(1, keepdim=True)) / (gap - gap.mean(1, keepdim=True)).square().mean(1, keepdim=True).sqrt()
    f = adaptive_pool_ref(x, min(side, x.shape[2]), min(side, x.shape[3])).reshape(n, c, -1)
    dist = torch.cdist(f, f)
    off = 1 - torch.eye(c, dtype=x.dtype)
    norms = f.norm(dim=-1)
    cos = (f @ f.transpose(1, 2) / norms[:, :, None] / norms[:, None, :]).clamp_min(0)
    pairs = c * c if contiguity == "hybrid" else c * (c - 1)
    v = torch.exp(-dist / ((dist * off).sum((1, 2)) / pairs)[:, None, None])
    v = (v * cos if contiguity == "hybrid" else v) * off
    w = v / v.sum((1, 2), keepdim=True)
    moran = z * (w @ z.unsqueeze(-1)).squeeze(-1)
    centred = moran - moran.mean(1, keepdim=True)
    return z, centred / centred.square().mean(1, keepdim=True).sqrt()


@pytest.mark.parametrize("contiguity", ["hybrid", "l2"])
@pytest.mark.parametrize("channels,side,size", [(64, 35, 37), (128, 28, 30), (512, 7, 14), (1024, 4, 14), (256, 14, 9)])
def test_pooled_q_matches_a_float64_transcription(contiguity, channels, side, size):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, size, size + 1, generator=g, dtype=torch.float64)
    x = x + torch.randn(2, 1, size, size + 1, generator=g, dtype=torch.float64)
    assert AUTHORS_POOL_SIZES[channels] == side
    got = spatial_autocorrelation(x, contiguity=contiguity, distance="pooled")
    z, q = pooled_descriptors_ref(x, side, contiguity)
    torch.testing.assert_close(got["z"], z, atol=1e-9, rtol=0)
    torch.testing.assert_close(got["q"], q, atol=1e-6, rtol=0)


def test_pool_size_overrides_the_table_and_small_maps_are_never_upsampled():
    x = torch.randn(2, 96, 12, 10, dtype=torch.float64)
    got = spatial_autocorrelation(x, contiguity="hybrid", distance="pooled", pool_size=5)
    torch.testing.assert_close(got["q"], pooled_descriptors_ref(x, 5)[1], atol=1e-6, rtol=0)
    # 64 channels pool to 35: an 8 x 8 map stays 8 x 8, the same as exact distances
    small = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    pooled = spatial_autocorrelation(small, contiguity="hybrid", distance="pooled")["q"]
    torch.testing.assert_close(pooled, spatial_autocorrelation(small, contiguity="hybrid")["q"], atol=1e-12, rtol=0)


def test_channel_counts_outside_the_table_need_pool_size():
    with pytest.raises(ValueError, match=r"no default size for 96 channels .*give pool_size") as err:
        CSA(96, distance="pooled")
    assert "\n" not in str(err.value)
    assert CSA(96, distance="pooled", pool_size=6).pool_size == 6
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        CSA(96, distance="pooled", pool_size=0)
    with pytest.raises(ValueError, match="pool_size is for distance='pooled'"):
        CSA(64, pool_size=4)


def test_pooled_gate_trains_with_finite_gradients_and_says_so():
    for grad in (False, True):
        gate = CSA(128, contiguity="hybrid", distance="pooled", contiguity_grad=grad)
        x = torch.randn(2, 128, 40, 40, requires_grad=True)
        gate(x).sum().backward()
        assert torch.isfinite(x.grad).all()
    assert "distance='pooled', pool_size=28" in repr(gate)


def test_authors_backbone_counts():
    """CSA in every block of ResNet-50 has SE-R50's parameter count; its GMAC is SE-R50's plus
    the pooled Gram matrices: per block C^2 x min(side, H) x min(side, W)."""
    with torch.device("meta"):
        authors = attention_resnet(
            50, "csa", placement="every_block", attention_options={k: v for k, v in AUTHORS.items() if k != "placement"}
        )
        se = attention_resnet(50, "se")
    params, gmac = count_cost(authors)
    se_params, se_gmac = count_cost(se)
    assert params == se_params == 28_088_024
    grams = 3 * 256**2 * 14**2 + 4 * 512**2 * 7**2 + 6 * 1024**2 * 4**2 + 3 * 2048**2 * 4**2
    assert math.isclose(gmac, se_gmac + grams / 1e9, abs_tol=2e-3)  # SE's own gate MACs are ~0.003
    assert round(gmac, 2) == 4.48
