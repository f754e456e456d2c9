"""CSA's maths: the dense reference (the unitary spatial weight matrix w, differentiable: the
``contiguity_grad=True`` path and what tracers record) and the blocked path that computes w y without
forming w (on the CPU, and on CUDA through the fused Triton kernels of
`csa_lightning.attention.csa_triton`). docs/csa.md states the conventions."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import csa_triton
from .base import sqrt_zero_safe
from .csa_cache import is_plain_eager, projection, workspace
from .csa_options import CONTIGUITY_MODES, check_choice, descriptor_dtype, rounding_floor

__all__ = ["contiguity_weights", "distance_features", "pool_map"]


def check_contiguity_input(x: Tensor, contiguity: str) -> tuple:
    check_choice("contiguity", contiguity, CONTIGUITY_MODES)
    n, c = x.shape[:2]
    if c < 2:
        raise ValueError(f"spatial autocorrelation needs at least 2 channels, got {c}")
    return n, c


def contiguity_weights(
    x: Tensor, contiguity: str = "l2", eps: float = 1e-5, projection_dim: Optional[int] = None, projection_seed: int = 0
) -> Tensor:
    """The unitary spatial weight matrix w, shape (N, C, C), of a feature map (N, C, H, W).

    Symmetric, zero diagonal, non-negative entries summing to 1 per sample (or all 0 when every
    v_ij is 0, which only the cosine modes can produce). Computed from one batched Gram matrix,
    differentiably (the ``contiguity_grad=True`` path; the default path never forms w).
    """
    n, c = check_contiguity_input(x, contiguity)
    f = distance_features(x, projection_dim, projection_seed) if projection_dim else x.reshape(n, c, -1)
    gram = torch.bmm(f, f.transpose(1, 2))  # (N, C, C): the only O(C^2 HW) step
    sq_norms = gram.diagonal(dim1=1, dim2=2)  # (N, C) = ||f_i||^2
    off_diagonal = ~torch.eye(c, dtype=torch.bool, device=x.device)

    v = None
    if contiguity in ("l2", "hybrid"):
        floor = rounding_floor(sq_norms, f.shape[-1])
        sq_dist = (sq_norms[:, :, None] + sq_norms[:, None, :] - 2 * gram - floor[:, None, None]).clamp_min(0)
        dist = sqrt_zero_safe(sq_dist) * off_diagonal
        pairs = c * (c - 1) if contiguity == "l2" else c * c  # hybrid: the authors' mean over all C^2
        mean_dist = (dist.sum(dim=(1, 2)) / pairs).clamp_min(eps)
        v = torch.exp(-dist / mean_dist[:, None, None])
    if contiguity in ("cosine", "hybrid"):
        norms = sqrt_zero_safe(sq_norms).clamp_min(eps)
        cosine = (gram / (norms[:, :, None] * norms[:, None, :])).clamp_min(0)
        v = cosine if v is None else v * cosine
    assert v is not None, contiguity  # every mode above sets it
    v = v * off_diagonal
    total = v.sum(dim=(1, 2), keepdim=True)
    # all v_ij = 0 (cosine modes, no positively correlated pair): w = 0 rather than 0 / 0
    return v / torch.where(total > 0, total, torch.ones_like(total))


def pool_map(x: Tensor, size: int) -> Tensor:
    """Average-pool a map (N, C, H, W) to min(size, H) x min(size, W): never upsampled."""
    target = (min(size, x.shape[-2]), min(size, x.shape[-1]))
    if target == tuple(x.shape[-2:]):
        return x
    return torch.nn.functional.adaptive_avg_pool2d(x, target)


def distance_features(x: Tensor, projection_dim: Optional[int] = None, projection_seed: int = 0) -> Tensor:
    """The flattened maps (N, C, H*W) the distances are computed from, in the descriptor dtype.

    With ``projection_dim`` k and H*W > k: a fixed Gaussian random projection (N, C, k) of them
    (seeded, scaled by 1/sqrt(k), so squared distances and norms are preserved in expectation):
    the Gram matrix then costs C * C * k instead of C * C * H * W.
    """
    n, c = x.shape[:2]
    # a view for contiguous and channels_last maps alike (H and W merge in both layouts); the dtype
    # conversion keeps the layout, so it is the only pass over the map
    f = x.reshape(n, c, -1).to(descriptor_dtype(x))
    if projection_dim is None or f.shape[-1] <= projection_dim:
        return f
    return torch.matmul(f, projection(f.shape[-1], projection_dim, projection_seed, f))


def use_fused(x: Tensor, kernel: str) -> bool:
    """Whether w z comes from the fused Triton kernels (see `csa_lightning.attention.csa_options.KERNELS`)."""
    if kernel == "torch":
        return False
    if kernel == "triton":
        if not csa_triton.supports(x):
            why = csa_triton.unavailable_reason() or (
                f"got a {x.dtype} tensor on {x.device}: it takes float32, bfloat16 or float16 CUDA tensors"
            )
            raise ValueError(f"kernel='triton' cannot run here: {why}; use kernel='auto' or 'torch'")
        return True
    # auto: real CUDA tensors (the custom operator's real kernel runs on those, in compiled graphs too)
    return x.is_cuda and is_plain_eager(x) and csa_triton.supports(x)


def tracing_or_exporting() -> bool:
    """Whether torch.jit.trace, torch.export (or the ONNX exporter on top of it) is recording."""
    compiler = getattr(torch, "compiler", None)
    exporting = compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting()
    return bool(exporting or torch.jit.is_tracing())


def symmetric_blocks(channels: int, blocks: int) -> List[Tuple[slice, slice]]:
    """The (row, column) slices of the upper-triangular blocks (diagonal included) of a C x C
    matrix cut into ``blocks`` x ``blocks`` pieces: w is symmetric, so only these are computed."""
    edges = [round(i * channels / blocks) for i in range(blocks + 1)]
    cuts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return [(r, c) for i, r in enumerate(cuts) for c in cuts[i:]]


def default_blocks(channels: int) -> int:
    # blocks of at least 128 channels: smaller ones lose more to per-call overhead than they save
    return max(1, min(4, channels // 128))


@torch.no_grad()
def weighted_sums(
    f: Tensor, y: Tensor, contiguity: str, eps: float, blocks: int, stats: Optional[Tuple[Tensor, Tensor]] = None
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """w @ y for the contiguity weights w of ``f`` (N, C, K), without ever holding w.

    ``y`` is (N, C, m). w is symmetric, so only the upper-triangular blocks of the Gram matrix
    and of the elementwise work are computed, each block used for both (i, j) and (j, i). Also
    returns (mean distance, sum of v) per sample, which a second call (the backward pass) takes
    as ``stats`` to skip the reductions. Same math and conventions as
    [`contiguity_weights`][csa_lightning.attention.contiguity_weights].
    """
    n, c, _ = f.shape
    sq = torch.linalg.vector_norm(f, dim=-1).square_()  # ||f_i||^2, (N, C), one pass without an N x C x K temporary
    norms = sq.sqrt().clamp_min(eps) if contiguity != "l2" else None
    pieces = symmetric_blocks(c, blocks)
    # w y is accumulated transposed, as row vectors times blocks (y^T v): on CPU that product is
    # ~10x faster than v y with a one-column y, and v^T y comes from the same block for free
    y_t = y.transpose(1, 2)
    out_t = y_t.new_zeros(y_t.shape)
    need_stats = stats is None
    mean_dist: Optional[Tensor] = None if stats is None else stats[0]
    total: Optional[Tensor] = None if stats is None else stats[1]
    dists: List[Tensor] = []
    if contiguity in ("l2", "hybrid"):
        dist_sum = torch.zeros(n, dtype=f.dtype, device=f.device)
        sq_floored = sq - rounding_floor(sq, f.shape[-1])[:, None]
        f_times_minus_2 = -2 * f  # folds the -2 into the product (baddbmm's broadcast copy is slower)
        shapes = [(n, r.stop - r.start, col.stop - col.start) for r, col in pieces]
        space = workspace(sum(a * b * k for a, b, k in shapes), f)
        offset = 0
        for (r, col), shape in zip(pieces, shapes):
            d = space[offset : offset + shape[0] * shape[1] * shape[2]].view(shape)
            offset += d.numel()
            # ||f_i||^2 - floor + ||f_j||^2 - 2 f_i.f_j
            torch.bmm(f[:, r], f_times_minus_2[:, col].transpose(1, 2), out=d)
            d.add_(sq_floored[:, r, None]).add_(sq[:, None, col]).clamp_min_(0).sqrt_()
            if r == col:
                d.diagonal(dim1=1, dim2=2).zero_()
            if need_stats:
                dist_sum += d.sum((1, 2)) * (1 if r == col else 2)
            dists.append(d)
        if need_stats:
            pairs = c * (c - 1) if contiguity == "l2" else c * c  # hybrid: the authors' mean over all C^2
            mean_dist = (dist_sum / pairs).clamp_min_(eps)
        # exp(-l / l_bar) = 2^(-l log2(e) / l_bar): exp2 is ~2.5x faster than exp on this CPU
        assert mean_dist is not None
        scale = (-math.log2(math.e) / mean_dist)[:, None, None]
    v_sum = torch.zeros(n, dtype=f.dtype, device=f.device)
    for index, (r, col) in enumerate(pieces):
        if contiguity == "cosine":
            v = torch.bmm(f[:, r], f[:, col].transpose(1, 2))
        else:
            v = dists[index].mul_(scale).exp2_()
        if contiguity != "l2":
            assert norms is not None
            cosine = v if contiguity == "cosine" else torch.bmm(f[:, r], f[:, col].transpose(1, 2))
            cosine.div_(norms[:, r, None]).div_(norms[:, None, col]).clamp_min_(0)
            v = cosine if contiguity == "cosine" else v.mul_(cosine)
        if r == col:
            v.diagonal(dim1=1, dim2=2).zero_()
        if need_stats:
            v_sum += v.sum((1, 2)) * (1 if r == col else 2)
        out_t[:, :, col] += torch.bmm(y_t[:, :, r], v)  # (v^T y_r)^T: the block's columns
        if r != col:
            out_t[:, :, r] += torch.bmm(y_t[:, :, col], v.transpose(1, 2))  # (v y_col)^T: its rows
    if need_stats:
        total = v_sum
        if mean_dist is None:  # cosine: no distances
            mean_dist = torch.zeros_like(total)
    assert mean_dist is not None and total is not None
    # all v_ij = 0 (cosine modes, no positively correlated pair): w = 0 rather than 0 / 0
    out_t /= torch.where(total > 0, total, torch.ones_like(total))[:, None, None]
    return out_t.transpose(1, 2), (mean_dist, total)


def weighted_sums_by_kernel(
    x: Tensor, y: Tensor, contiguity: str, eps: float, blocks: int, projection: tuple, fused: bool, stats=None
) -> Tuple[Tensor, tuple]:
    """w y (N, C) for the map x and a vector y (N, C), and the statistics (mean distance, sum of v),
    by the fused Triton kernels or the blocked PyTorch path."""
    if fused:
        # the map in its own dtype (a view): the kernels multiply bf16 / fp16 tiles exactly
        f = distance_features(x, *projection) if projection[0] else x.reshape(*x.shape[:2], -1)
        return csa_triton.weighted_sums(f, y, contiguity, eps, stats)
    f = distance_features(x, *projection)
    out, stats = weighted_sums(f, y.unsqueeze(-1).to(f.dtype), contiguity, eps, blocks, stats)
    return out.squeeze(-1), stats
