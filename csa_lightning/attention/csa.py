"""Channel-wise Spatially Autocorrelated attention (CSA).

"Channel-wise Spatially Autocorrelated Attention Networks" (CSA-Net), Nikzad, Gao and Zhou, 2024,
the paper this project is built around. The gate re-weights channels by their local Moran's I over
the C feature maps:

1. x_i = GAP(F_i); z = (x - mean_C(x)) / std_C(x)
2. l_ij = ||f_i - f_j||_2 between the flattened maps; v_ij = exp(-l_ij / l_bar); v_ii = 0
3. w = v / sum_ij v_ij (the unitary spatial weight matrix)
4. I_i = z_i (w z)_i (= diag(z z^T w), w symmetric); q = (I - mean_C(I)) / std_C(I)
5. p = sigmoid(U(ReLU(D(q)))), D: Linear(C, C // r), U: Linear(C // r, C), r = 16, with biases
6. output F * p

docs/csa.md states every convention this project fixes where the paper is silent and every
difference from the authors' code, with the option that selects each. In short:

- population std and no eps in z and q, scale-free ([`standardize`][csa_lightning.attention.standardize]: a row constant
  up to rounding maps to 0); I is O(1/C), so an absolute eps on std_C(I) would bias q;
- v_ii = 0 in every mode; in "l2" mode l_bar is the off-diagonal mean; ``eps`` floors l_bar and
  the cosine modes' norms (it binds only for all-zero or identical maps);
- ``contiguity``: "l2" is the paper's formula (default); "cosine" is v_ij = max(cos(f_i, f_j), 0);
  "hybrid" is the authors' code's default, max(cos, 0) * exp(-l_ij / l_bar) with their l_bar (the
  mean over the whole C x C matrix); when every v_ij is 0 (cosine modes) w = 0, so I = q = 0;
- ``contiguity_grad=False`` (default, as in the authors' code, and cheaper): w is a constant for
  autograd; ``True`` differentiates through w too;
- under autocast (bf16 / fp16) the descriptor math and the MLP run in float32; the gate is returned
  in the input's dtype.

Costs: one C x C Gram matrix per sample (C * C * H * W multiply-adds), never a C x C x C tensor.
The default path never forms w: the Gram matrix and the elementwise chain run on the
upper-triangular blocks only, each giving both its rows' and its columns' share of w z; backward
recomputes w (g * z) from the feature map instead of keeping a C x C matrix per sample. On CUDA
the same w z comes from fused Triton kernels (`csa_lightning.attention.csa_triton`, ``kernel="auto"``), where no
C x C block reaches memory at all. On the CPU the distance blocks use a per-thread workspace (see
`csa_lightning.attention.csa._workspace`); nothing is cached under torch.compile, torch.export or FakeTensor tracing.
Opt-in ``distance="projected"``: distances from a seeded random projection of each map to
``projection_dim`` dimensions where H * W is larger.
``distance="pooled"`` (the authors' detection backbone): distances from each map average-pooled to a
side set by its channel count (`csa_lightning.attention.csa.AUTHORS_POOL_SIZES`) or ``pool_size``. Placed, as in the
paper, at the end of each resolution stage ("stage_end"; CSA-R50 has 26,257,432
parameters).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import csa_triton
from .base import (
    ChannelAttention,
    ReductionMLP,
    autocast_disabled,
    check_flag,
    check_int,
    check_number,
    sqrt_zero_safe,
    standardize,
)
from .registry import register_attention

CONTIGUITY_MODES = ("l2", "hybrid", "cosine")
DISTANCE_MODES = ("exact", "projected", "pooled")
#: how w z is computed without forming w: "auto" = the fused Triton kernels for CUDA tensors (in eager
#: calls and compiled graphs alike), else the blocked PyTorch path; "triton" / "torch" force one (same
#: results to rounding)
KERNELS = ("auto", "triton", "torch")
#: distance="pooled": the side each map is average-pooled to before the distances, by channel
#: count, as in the authors' detection backbone (mmdet/models/backbones/CSA/CSA_Module.py)
AUTHORS_POOL_SIZES = {64: 35, 128: 28, 256: 14, 512: 7, 1024: 4, 2048: 4}

__all__ = [
    "CSA",
    "spatial_autocorrelation",
    "contiguity_weights",
    "distance_features",
    "release_workspace",
    "clear_projection_cache",
    "CONTIGUITY_MODES",
    "DISTANCE_MODES",
    "KERNELS",
    "PROJECTION_CACHE_SIZE",
    "AUTHORS_POOL_SIZES",
    "pooled_size",
    "pool_map",
]


def _descriptor_dtype(x: Tensor) -> torch.dtype:
    # half and bfloat16 are too coarse for distances and exp(-l / l_bar); float64 stays float64
    return torch.promote_types(x.dtype, torch.float32)


def _check_contiguity_input(x: Tensor, contiguity: str) -> tuple:
    if contiguity not in CONTIGUITY_MODES:
        raise ValueError(f"unknown contiguity '{contiguity}': choose one of {', '.join(CONTIGUITY_MODES)}")
    n, c = x.shape[:2]
    if c < 2:
        raise ValueError(f"spatial autocorrelation needs at least 2 channels, got {c}")
    return n, c


def rounding_floor(sq_norms: Tensor, length: int) -> Tensor:
    """Per sample, the rounding error of ||f_i||^2 + ||f_j||^2 - 2 f_i.f_j: 4 sqrt(K) ulps of the
    largest squared norm. It is subtracted before the clamp at 0, so channels equal up to rounding
    get distance 0 however the Gram matrix was blocked (otherwise their distances are rounding noise
    of about 1e-4 |f| in float32, which exp(-l / l_bar) would turn into arbitrary weights). The shift
    is below float32's resolution of the distances themselves."""
    ulp = torch.finfo(sq_norms.dtype).eps
    return 4 * length**0.5 * ulp * sq_norms.amax(dim=1)


def contiguity_weights(
    x: Tensor, contiguity: str = "l2", eps: float = 1e-5, projection_dim: Optional[int] = None, projection_seed: int = 0
) -> Tensor:
    """The unitary spatial weight matrix w, shape (N, C, C), of a feature map (N, C, H, W).

    Symmetric, zero diagonal, non-negative entries summing to 1 per sample (or all 0 when every
    v_ij is 0, which only the cosine modes can produce). Computed from one batched Gram matrix,
    differentiably (the ``contiguity_grad=True`` path; the default path never forms w).
    """
    n, c = _check_contiguity_input(x, contiguity)
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


def pooled_size(channels: int, pool_size: Optional[int] = None) -> int:
    """The side a map of ``channels`` channels is pooled to for distance="pooled": ``pool_size``
    if given, else the authors' size for that channel count (`csa_lightning.attention.csa.AUTHORS_POOL_SIZES`)."""
    if pool_size is not None:
        if int(pool_size) < 1:
            raise ValueError(f"pool_size must be a positive integer, got {pool_size}")
        return int(pool_size)
    if channels not in AUTHORS_POOL_SIZES:
        raise ValueError(
            f"distance='pooled' has no default size for {channels} channels (the authors' table covers "
            f"{', '.join(map(str, AUTHORS_POOL_SIZES))}): give pool_size"
        )
    return AUTHORS_POOL_SIZES[channels]


def pool_map(x: Tensor, size: int) -> Tensor:
    """Average-pool a map (N, C, H, W) to min(size, H) x min(size, W): never upsampled."""
    target = (min(size, x.shape[-2]), min(size, x.shape[-1]))
    if target == tuple(x.shape[-2:]):
        return x
    return torch.nn.functional.adaptive_avg_pool2d(x, target)


def spatial_autocorrelation(
    x: Tensor,
    contiguity: str = "l2",
    eps: float = 1e-5,
    contiguity_grad: bool = False,
    distance: str = "exact",
    projection_dim: int = 64,
    projection_seed: int = 0,
    blocks: Optional[int] = None,
    pool_size: Optional[int] = None,
    kernel: str = "auto",
) -> Dict[str, Tensor]:
    """Parameter-free CSA descriptors of any feature map (N, C, H, W).

    Returns a dict of (N, C) tensors: "z" (standardised GAP), "I" (local Moran's I, z * (w z))
    and "q" (standardised I), in float32 (float64 for float64 input), with the same options and
    conventions as [`CSA`][csa_lightning.attention.CSA]. The analysis tools apply it to models without a CSA gate.
    ``distance="projected"`` takes the distances from a seeded random projection of each map to
    ``projection_dim`` dimensions where H * W is larger (opt-in, approximate); ``distance="pooled"``
    from the map average-pooled to ``pool_size`` (default: the authors' size for its channel count,
    `csa_lightning.attention.csa.AUTHORS_POOL_SIZES`; never upsampled), z still from the full map. ``blocks``: the
    symmetric Gram work is cut into blocks x blocks pieces (default: from C; 1 = one piece).
    ``kernel``: "auto" (the fused Triton kernels of `csa_lightning.attention.csa_triton` for CUDA tensors, the
    blocked PyTorch path otherwise), "triton" or "torch" (see `csa_lightning.attention.csa.KERNELS`).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if distance not in DISTANCE_MODES:
        raise ValueError(f"unknown distance '{distance}': choose one of {', '.join(DISTANCE_MODES)}")
    _check_contiguity_input(x, contiguity)
    _check_kernel(kernel)
    projection = (projection_dim if distance == "projected" else None, projection_seed)
    with autocast_disabled(x):
        # the map the distances come from: the authors' detection backbone pools it first
        source = pool_map(x, pooled_size(x.shape[1], pool_size)) if distance == "pooled" else x
        # the mean accumulates in the descriptor dtype without a converted copy of the whole map
        z = standardize(x.mean(dim=(2, 3), dtype=_descriptor_dtype(x)))
        if contiguity_grad or _tracing_or_exporting():
            # the plain-ops path (w as one tensor): differentiable through w when asked, and what
            # torch.jit.trace / torch.export / ONNX record (no custom operator, no state)
            w = contiguity_weights(source.to(_descriptor_dtype(x)), contiguity, eps, *projection)
            moran = z * torch.bmm(w, z.unsqueeze(-1)).squeeze(-1)
        else:
            blocks = blocks or _default_blocks(x.shape[1])
            moran = _moran_i(source, z, contiguity, eps, blocks, projection[0], projection_seed, kernel)[0]
        q = standardize(moran)
    return {"z": z, "I": moran, "q": q}


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel '{kernel}': choose one of {', '.join(KERNELS)}")


def _use_fused(x: Tensor, kernel: str) -> bool:
    """Whether w z comes from the fused Triton kernels (see `csa_lightning.attention.csa.KERNELS`)."""
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
    return x.is_cuda and _is_plain_eager(x) and csa_triton.supports(x)


def _tracing_or_exporting() -> bool:
    """Whether torch.jit.trace, torch.export (or the ONNX exporter on top of it) is recording."""
    compiler = getattr(torch, "compiler", None)
    exporting = compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting()
    return bool(exporting or torch.jit.is_tracing())


def _symmetric_blocks(channels: int, blocks: int) -> List[Tuple[slice, slice]]:
    """The (row, column) slices of the upper-triangular blocks (diagonal included) of a C x C
    matrix cut into ``blocks`` x ``blocks`` pieces: w is symmetric, so only these are computed."""
    edges = [round(i * channels / blocks) for i in range(blocks + 1)]
    cuts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return [(r, c) for i, r in enumerate(cuts) for c in cuts[i:]]


def _default_blocks(channels: int) -> int:
    # blocks of at least 128 channels: smaller ones lose more to per-call overhead than they save
    return max(1, min(4, channels // 128))


def distance_features(x: Tensor, projection_dim: Optional[int] = None, projection_seed: int = 0) -> Tensor:
    """The flattened maps (N, C, H*W) the distances are computed from, in the descriptor dtype.

    With ``projection_dim`` k and H*W > k: a fixed Gaussian random projection (N, C, k) of them
    (seeded, scaled by 1/sqrt(k), so squared distances and norms are preserved in expectation):
    the Gram matrix then costs C * C * k instead of C * C * H * W.
    """
    n, c = x.shape[:2]
    # a view for contiguous and channels_last maps alike (H and W merge in both layouts); the dtype
    # conversion keeps the layout, so it is the only pass over the map
    f = x.reshape(n, c, -1).to(_descriptor_dtype(x))
    if projection_dim is None or f.shape[-1] <= projection_dim:
        return f
    return torch.matmul(f, _projection(f.shape[-1], projection_dim, projection_seed, f))


#: How many random projections (one per map size, device and dtype) are kept; COCO's padded
#: input sizes vary batch to batch, about 17 MB per layer1 size at k = 64.
PROJECTION_CACHE_SIZE = 8
_PROJECTIONS: "OrderedDict[tuple, Tensor]" = OrderedDict()
_PROJECTIONS_LOCK = threading.Lock()


def _is_plain_eager(t: Tensor) -> bool:
    """True for an ordinary tensor in an eager call: not under torch.compile or torch.export, and
    not a FakeTensor or another tracing subclass. Only then may a call keep state between calls
    (a workspace, a cached projection): a traced call would leave a fake tensor behind for later
    eager calls, or bake the cached tensor into the program as a constant."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def _projection(size: int, k: int, seed: int, like: Tensor) -> Tensor:
    def draw() -> Tensor:
        # drawn by numpy from its own seeded generator: the same matrix on every device and process,
        # and a constant (not a random op with a generator) in a torch.export / ONNX graph
        import numpy as np

        values = np.random.Generator(np.random.PCG64(seed * 1_000_003 + size)).standard_normal((size, k))
        return (torch.from_numpy(values) / k**0.5).to(like.device, like.dtype)

    if not _is_plain_eager(like):
        return draw()
    key = (size, k, seed, str(like.device), like.dtype)
    with _PROJECTIONS_LOCK:
        if key in _PROJECTIONS:
            _PROJECTIONS.move_to_end(key)
            return _PROJECTIONS[key]
    matrix = draw()
    with _PROJECTIONS_LOCK:
        _PROJECTIONS[key] = matrix
        while len(_PROJECTIONS) > PROJECTION_CACHE_SIZE:
            _PROJECTIONS.popitem(last=False)  # least recently used
    return matrix


def clear_projection_cache() -> None:
    """Forget the cached random projections (they are redrawn, identically, on the next call)."""
    with _PROJECTIONS_LOCK:
        _PROJECTIONS.clear()


def _projection_cache_tensors() -> List[Tensor]:
    with _PROJECTIONS_LOCK:
        return list(_PROJECTIONS.values())


_THREAD_STATE = threading.local()


def _workspace(numel: int, like: Tensor) -> Tensor:
    """Memory for the distance blocks, reused across eager calls of one thread on the CPU.

    The blocks of one call are alive together (the mean distance needs all of them before the
    exponentials); freshly allocated, tens of MB per call at ResNet-50's layer4 go back to the OS
    and fault in again page by page on the next call, which measured about a third of the gate's
    time there. Each thread keeps its own buffer (the largest size it has needed, per dtype), freed
    with the thread, so concurrent calls from several threads or models never share one: about
    N * C^2 * 5/8 * 4 bytes for the largest gate seen, 84 MB per thread for ResNet-50's layer4 at
    batch 8 (C = 2048, float32). Under torch.compile, torch.export or FakeTensor tracing a fresh
    tensor is used and nothing is kept. On GPUs the caching allocator already does this.
    [`release_workspace`][csa_lightning.attention.release_workspace] frees the calling thread's buffer.
    """
    if like.device.type != "cpu" or not _is_plain_eager(like):
        return torch.empty(numel, device=like.device, dtype=like.dtype)
    spaces = getattr(_THREAD_STATE, "spaces", None)
    if spaces is None:
        spaces = _THREAD_STATE.spaces = {}
    space = spaces.get(like.dtype)
    if space is None or space.numel() < numel:
        # a normal tensor even when first needed under torch.inference_mode (Lightning's validation):
        # an inference tensor cannot be written in place by a later training step
        with torch.inference_mode(False):
            space = spaces[like.dtype] = torch.empty(numel, dtype=like.dtype)
    return space


def release_workspace() -> None:
    """Free the CPU memory the calling thread keeps between calls for CSA's distance blocks."""
    _THREAD_STATE.spaces = {}


@torch.no_grad()
def _weighted_sums(
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
    pieces = _symmetric_blocks(c, blocks)
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
        space = _workspace(sum(a * b * k for a, b, k in shapes), f)
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


def _weighted_sums_by_kernel(
    x: Tensor, y: Tensor, contiguity: str, eps: float, blocks: int, projection: tuple, fused: bool, stats=None
) -> Tuple[Tensor, tuple]:
    """w y (N, C) for the map x and a vector y (N, C), and the statistics (mean distance, sum of v),
    by the fused Triton kernels or the blocked PyTorch path."""
    if fused:
        # the map in its own dtype (a view): the kernels multiply bf16 / fp16 tiles exactly
        f = distance_features(x, *projection) if projection[0] else x.reshape(*x.shape[:2], -1)
        return csa_triton.weighted_sums(f, y, contiguity, eps, stats)
    f = distance_features(x, *projection)
    out, stats = _weighted_sums(f, y.unsqueeze(-1).to(f.dtype), contiguity, eps, blocks, stats)
    return out.squeeze(-1), stats


# I = z * (w z) with w constant for autograd and never stored (``contiguity_grad=False``), as a
# PyTorch custom operator: torch.compile keeps it whole in its graph (no graph break) and runs its
# eager kernels, the fused Triton ones on CUDA or the blocked path on the CPU. (Traced instead,
# inductor decomposed the blocked path's one-row products into loops fused with the network's batch
# norms, and a compiled CSA-ResNet-18 trained 6x slower than eager on the CPU; measured.) The
# backward recomputes w (g * z) from the feature map, which the gated block keeps for its own
# backward anyway (x * p), instead of keeping a C x C matrix per sample.
_OPS = __name__.split(".")[0]  # "csa_lightning", or the package this folder was copied into


@torch.library.custom_op(f"{_OPS}::moran_i", mutates_args=())
def _moran_i(
    x: Tensor,
    z: Tensor,
    contiguity: str,
    eps: float,
    blocks: int,
    projection_dim: Optional[int],
    projection_seed: int,
    kernel: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(I, w z, mean distance, sum of v): I = z * (w z); the rest is kept for the backward."""
    fused = _use_fused(x, kernel)
    wz, (mean_dist, total) = _weighted_sums_by_kernel(
        x, z, contiguity, eps, blocks, (projection_dim, projection_seed), fused
    )
    wz = wz.to(z.dtype)
    return z * wz, wz, mean_dist, total


@_moran_i.register_fake
def _moran_i_shapes(x, z, contiguity, eps, blocks, projection_dim, projection_seed, kernel):
    stats = z.new_empty(z.shape[0], dtype=_descriptor_dtype(x))
    return torch.empty_like(z), torch.empty_like(z), stats, torch.empty_like(stats)


@torch.library.custom_op(f"{_OPS}::moran_i_backward", mutates_args=())
def _moran_i_backward(
    grad: Tensor,
    x: Tensor,
    z: Tensor,
    wz: Tensor,
    mean_dist: Tensor,
    total: Tensor,
    contiguity: str,
    eps: float,
    blocks: int,
    projection_dim: Optional[int],
    projection_seed: int,
    kernel: str,
) -> Tensor:
    """dL/dz of I = z * (w z): delta_ij (w z)_i + z_i w_ij, and w is symmetric."""
    with autocast_disabled(x):
        w_gz, _ = _weighted_sums_by_kernel(
            x,
            grad * z,
            contiguity,
            eps,
            blocks,
            (projection_dim, projection_seed),
            _use_fused(x, kernel),
            (mean_dist, total),
        )
    return grad * wz + w_gz.to(grad.dtype)


@_moran_i_backward.register_fake
def _moran_i_backward_shapes(grad, x, z, wz, mean_dist, total, *options):
    return torch.empty_like(grad)


def _moran_i_setup_context(ctx, inputs, output) -> None:
    x, z, *options = inputs
    _, wz, mean_dist, total = output
    ctx.save_for_backward(x, z, wz, mean_dist, total)
    ctx.options = options


def _moran_i_grad(ctx, grad, *unused_grads):
    x, z, wz, mean_dist, total = ctx.saved_tensors
    grad_z = _moran_i_backward(grad, x, z, wz, mean_dist, total, *ctx.options)
    return None, grad_z, None, None, None, None, None, None


_moran_i.register_autograd(_moran_i_grad, setup_context=_moran_i_setup_context)


@register_attention("csa")
class CSA(ChannelAttention):
    """CSA gate: p = sigmoid(MLP(q)) from the standardised local Moran's I of the channels."""

    default_placement = "stage_end"
    # the default treats the contiguity weights w as constants for autograd (the authors' choice)
    exact_gradient_options = {"contiguity_grad": True}

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        contiguity: str = "l2",
        contiguity_grad: bool = False,
        eps: float = 1e-5,
        distance: str = "exact",
        projection_dim: int = 64,
        projection_seed: int = 0,
        compile: bool = False,
        pool_size: Optional[int] = None,
        kernel: str = "auto",
    ) -> None:
        super().__init__(channels)
        _check_kernel(kernel)
        if contiguity not in CONTIGUITY_MODES:
            raise ValueError(f"unknown contiguity '{contiguity}': choose one of {', '.join(CONTIGUITY_MODES)}")
        if distance not in DISTANCE_MODES:
            raise ValueError(f"unknown distance '{distance}': choose one of {', '.join(DISTANCE_MODES)}")
        check_int("projection_dim", projection_dim)
        check_int("projection_seed", projection_seed, low=0)
        check_number("eps", eps, positive=True)
        check_flag("contiguity_grad", contiguity_grad)
        check_flag("compile", compile)
        if channels < 2:
            raise ValueError(f"CSA needs at least 2 channels, got {channels}")
        if distance == "pooled":
            pooled_size(channels, pool_size)  # a one-line error now, not at the first forward
        elif pool_size is not None:
            raise ValueError(f"pool_size is for distance='pooled', got distance='{distance}'")
        self.pool_size = pool_size
        self.kernel = kernel
        self.reduction = reduction
        self.contiguity = contiguity
        self.contiguity_grad = contiguity_grad
        self.eps = eps
        self.distance = distance
        self.projection_dim = projection_dim
        self.projection_seed = projection_seed
        # the option predates nn.Module.compile, which it shadows on the block (never called there)
        self.compile = compile  # type: ignore[method-assign,assignment]
        self.mlp = ReductionMLP(channels, reduction)
        self.descriptor_output = nn.Identity()  # a hook point for q (N, C), like gate_output for p
        # opt-in: torch.compile fuses the small ops around w z (the mean, the two standardisations);
        # w z itself is a custom operator that runs its own kernels. Measured on a 2-core CPU, one
        # gate's forward + backward: 14.4 -> 13.4 ms (256 x 14 x 14), 16.2 -> 13.1 ms (512 x 7 x 7).
        # Static shapes: the stage-end gates of one network have different shapes, and dynamic-shape
        # recompilation took minutes on a GPU (measured)
        self._autocorrelation = (
            torch.compile(spatial_autocorrelation, dynamic=False) if compile else spatial_autocorrelation
        )

    def autocorrelation(self, x: Tensor) -> Dict[str, Tensor]:
        """z, I and q of ``x`` with this gate's options (see
        [`spatial_autocorrelation`][csa_lightning.attention.spatial_autocorrelation])."""
        self._check_input(x)
        return self._descriptor_math(x)

    def _descriptor_math(self, x: Tensor) -> Dict[str, Tensor]:
        return self._autocorrelation(
            x,
            contiguity=self.contiguity,
            eps=self.eps,
            contiguity_grad=self.contiguity_grad,
            distance=self.distance,
            projection_dim=self.projection_dim,
            projection_seed=self.projection_seed,
            pool_size=self.pool_size,
            kernel=self.kernel,
        )

    def excite(self, q: Tensor) -> Tensor:
        """The gate p = sigmoid(MLP(q)) for descriptors q (N, C), in the MLP's dtype."""
        with autocast_disabled(q):
            return self.mlp(q.to(self.mlp.fc1.weight.dtype)).sigmoid()

    def gate(self, x: Tensor) -> Tensor:
        q = self.descriptor_output(self._descriptor_math(x)["q"])  # forward() has checked x
        p = self.excite(q)
        return p.to(x.dtype)[:, :, None, None]

    def descriptors(self, x: Tensor) -> Dict[str, Tensor]:
        out = dict(self.autocorrelation(x))
        out["p"] = self._blended(self.excite(out["q"]))
        return out

    def extra_macs(self, input_shape: torch.Size) -> int:
        # the Gram matrix: C * C * H * W multiply-adds per sample (the figure the paper's cost
        # discussion uses, though only its upper half is computed); projected: C * H * W * k for
        # the projection plus C * C * k
        c, h, w = (int(v) for v in input_shape[-3:])
        if self.distance == "pooled":  # the Gram of the pooled maps (pooling itself is additions only)
            side = pooled_size(c, self.pool_size)
            return c * c * min(side, h) * min(side, w)
        if self.distance == "projected" and h * w > self.projection_dim:
            k = self.projection_dim
            return c * h * w * k + c * c * k
        return c * c * h * w

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, contiguity={self.contiguity!r}, "
            f"contiguity_grad={self.contiguity_grad}, eps={self.eps:g}"
            + (f", distance='projected', projection_dim={self.projection_dim}" if self.distance == "projected" else "")
            + (
                f", distance='pooled', pool_size={pooled_size(self.channels, self.pool_size)}"
                if self.distance == "pooled"
                else ""
            )
            + (f", kernel={self.kernel!r}" if self.kernel != "auto" else "")
        )
