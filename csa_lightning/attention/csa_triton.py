"""CSA's contiguity-weighted sums w @ y as fused Triton kernels: the GPU path of `csa_lightning.attention.csa`.

On a GPU the default PyTorch path of `csa_lightning.attention.csa_math.weighted_sums` is memory-bound: a float32 copy of
the map, then a chain of separate elementwise passes (distances, exp2, sums) each over N x C x C
floats, 2 GB apiece at ResNet-50's layer4 at batch 128. Here one program takes one B x B tile of the
symmetric w on or above the diagonal for one sample: it forms the Gram tile from the map in its own
dtype on the tensor cores (bf16 / fp16 products are exact in the float32 accumulator; float32 maps
use IEEE float32 products, never TF32), turns it into distances and weights in registers, and
writes its rows' share of w y and, off the diagonal, its columns' share (the mirrored tile's rows).
Nothing of size C x C is ever written to memory. Two passes in the forward (the mean distance is
needed before any exponential), one in the backward (it reuses the forward's statistics). Every
program writes its own slot of partial sums, added afterwards in a fixed order (no atomics), so
results are deterministic.

Same math and conventions as [`contiguity_weights`][csa_lightning.attention.contiguity_weights] (docs/csa.md): v_ii = 0,
l_bar the mean over C (C - 1) pairs in "l2" mode and over C^2 in "hybrid", ``eps`` floors l_bar and the
norms, the rounding floor on squared distances, w = 0 when every v_ij is 0.

Triton ships with PyTorch's Linux CUDA wheels; it is imported only when this path runs, so
``attention/`` still needs nothing but torch elsewhere. With ``TRITON_INTERPRET=1`` set before
the first import the same kernels run on CPU tensors (how the test suite checks them without a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from .csa_options import CONTIGUITY_MODES, rounding_floor


def interpreting() -> bool:
    """Whether Triton runs its kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> Optional[str]:
    """None when the fused kernels can run here, else one line saying why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (it ships with PyTorch's Linux CUDA wheels)"
    return None


def supports(f: Tensor) -> bool:
    """Whether the fused kernels take this map: a CUDA tensor (or any, under Triton's interpreter)
    of a dtype the tensor cores multiply (float64 stays on the PyTorch path)."""
    if f.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    return (f.is_cuda or interpreting()) and unavailable_reason() is None


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def moran_tile(
        f_ptr,  # the maps, (N, C, K) with any strides, in their own dtype
        sq_ptr,  # ||f_i||^2, (N, C) float32
        floor_ptr,  # rounding floor per sample, (N,)
        inv_norm_ptr,  # 1 / max(||f_i||, eps), (N, C) (cosine modes)
        y_ptr,  # the vector w multiplies, (N, C) float32 (pass 2)
        scale_ptr,  # -log2(e) / l_bar per sample, (N,) (pass 2, distance modes)
        out_ptr,  # pass 2: shares of v y, (N, T, C) float32: slot t holds column tile t's share
        part_ptr,  # per tile pair: its sum of distances (pass 1) or of v (pass 2), (N, T, T), zeroed
        C,
        K,
        stride_n,
        stride_c,
        stride_k,
        MODE: tl.constexpr,  # the index in csa_options.CONTIGUITY_MODES: 0 l2, 1 hybrid, 2 cosine
        PASS: tl.constexpr,  # 1: sums of distances; 2: weighted sums
        PRECISION: tl.constexpr,  # "ieee" for float32 maps (ignored for 16-bit ones)
        UPCAST: tl.constexpr,  # multiply in float32 (the interpreter's bf16 dot is wrong; same products)
        B: tl.constexpr,
        BK: tl.constexpr,
    ):
        # one B x B tile (ti, tj) of the symmetric w, tj >= ti: it gives its rows' share of w y
        # and, off the diagonal, its columns' share (the mirrored tile's rows)
        ti = tl.program_id(0)
        tj = tl.program_id(1)
        if tj >= ti:
            n = tl.program_id(2).to(tl.int64)
            tiles = tl.num_programs(0)
            rows = ti * B + tl.arange(0, B)
            cols = tj * B + tl.arange(0, B)
            row_ok = rows < C
            col_ok = cols < C
            maps = f_ptr + n * stride_n
            vec = n * C
            gram = tl.zeros([B, B], dtype=tl.float32)
            for k0 in range(0, K, BK):
                ks = k0 + tl.arange(0, BK)
                k_ok = ks < K
                a = tl.load(
                    maps + rows[:, None] * stride_c + ks[None, :] * stride_k,
                    mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                b = tl.load(
                    maps + cols[None, :] * stride_c + ks[:, None] * stride_k,
                    mask=col_ok[None, :] & k_ok[:, None],
                    other=0.0,
                )
                if UPCAST:
                    a, b = a.to(tl.float32), b.to(tl.float32)
                gram = tl.dot(a, b, gram, input_precision=PRECISION)
            pair = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
            weight = tl.where(ti == tj, 1.0, 2.0)  # an off-diagonal tile stands for its mirror too
            if MODE != 2:
                # the floor is subtracted once per pair, from the row's squared norm
                sq_rows = tl.load(sq_ptr + vec + rows, mask=row_ok, other=0.0) - tl.load(floor_ptr + n)
                sq_cols = tl.load(sq_ptr + vec + cols, mask=col_ok, other=0.0)
                dist = tl.sqrt(tl.maximum(sq_rows[:, None] + sq_cols[None, :] - 2.0 * gram, 0.0))
                if PASS == 1:
                    total = tl.sum(tl.sum(tl.where(pair, dist, 0.0), axis=1), axis=0)
                    tl.store(part_ptr + (n * tiles + ti) * tiles + tj, total * weight)
            if PASS == 2:
                if MODE != 0:
                    inv_rows = tl.load(inv_norm_ptr + vec + rows, mask=row_ok, other=0.0)
                    inv_cols = tl.load(inv_norm_ptr + vec + cols, mask=col_ok, other=0.0)
                    cosine = tl.maximum(gram * inv_rows[:, None] * inv_cols[None, :], 0.0)
                if MODE == 0:
                    v = tl.exp2(dist * tl.load(scale_ptr + n))
                elif MODE == 1:
                    v = tl.exp2(dist * tl.load(scale_ptr + n)) * cosine
                else:
                    v = cosine
                v = tl.where(pair, v, 0.0)
                y_cols = tl.load(y_ptr + vec + cols, mask=col_ok, other=0.0)
                tl.store(out_ptr + (n * tiles + tj) * C + rows, tl.sum(v * y_cols[None, :], axis=1), mask=row_ok)
                if ti != tj:
                    y_rows = tl.load(y_ptr + vec + rows, mask=row_ok, other=0.0)
                    tl.store(out_ptr + (n * tiles + ti) * C + cols, tl.sum(v * y_rows[:, None], axis=0), mask=col_ok)
                total = tl.sum(tl.sum(v, axis=1), axis=0)
                tl.store(part_ptr + (n * tiles + ti) * tiles + tj, total * weight)

    return moran_tile


#: (B, BK, num_warps, num_stages): B x B tiles of w, the K loop in steps of BK; see
#: `csa_lightning.attention.csa_triton.tile_config`
Config = Tuple[int, int, int, int]


def tile_config(channels: int, length: int) -> Config:
    """The tiles for C channels of length K (H * W): 64 x 64 tiles of w, the K loop in steps of 64
    with 3 stages where maps are long (layer1..3), of 32 (16 where K <= 16) with 2 stages where they
    are short (layer4's 49, the authors' pooled maps).

    From ``benchmarks/csa_cuda_paths.py --sweep`` on an H100 (ResNet-50's stage-end shapes, batch
    128, bf16, both forward passes, ms; the README has the table): this choice took 0.454 / 0.365 /
    0.482 / 0.885 at layer1..4, the best of eight configurations 0.412 / 0.289 / 0.444 / 0.844
    (not one configuration, and run-to-run noise there is of that order); the earlier
    one-program-per-row-block layout (each Gram tile computed twice) took 0.443 / 0.422 / 0.581 /
    1.094 at its best configuration.
    """
    if length >= 64:
        return 64, 64, 4, 3
    return 64, 32 if length > 16 else 16, 4, 2


def weighted_sums(
    f: Tensor,
    y: Tensor,
    contiguity: str,
    eps: float,
    stats: Optional[Tuple[Tensor, Tensor]] = None,
    config: Optional[Config] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """w @ y (N, C) for the contiguity weights of ``f`` (N, C, K), and (mean distance, sum of v)
    per sample; ``stats`` from an earlier call on the same ``f`` skip the first pass. The same
    contract as `csa_lightning.attention.csa_math.weighted_sums` with a single column y (N, C). ``config``: (B, BK,
    num_warps, num_stages), default `csa_lightning.attention.csa_triton.tile_config`."""

    if contiguity not in CONTIGUITY_MODES:
        raise ValueError(f"unknown contiguity '{contiguity}': choose one of {', '.join(CONTIGUITY_MODES)}")
    kernel = _kernel()
    n, c, k = f.shape
    block, bk, warps, stages = config or tile_config(c, k)
    tiles = math.ceil(c / block)
    grid = (tiles, tiles, n)  # programs below the diagonal return at once
    mode = CONTIGUITY_MODES.index(contiguity)
    y = y.to(torch.float32).contiguous()
    sq = torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32).square_()  # one pass over the map
    floor = rounding_floor(sq, k)
    inv_norm = sq.sqrt().clamp_min(eps).reciprocal() if mode != 0 else sq
    # Triton's CPU interpreter multiplies bf16 tiles wrongly (triton 3.8); their float32 products
    # are the same numbers (a bf16 x bf16 product is exact in float32)
    upcast = interpreting() and f.dtype == torch.bfloat16
    launch = dict(
        C=c,
        K=k,
        stride_n=f.stride(0),
        stride_c=f.stride(1),
        stride_k=f.stride(2),
        MODE=mode,
        PRECISION="ieee" if f.dtype == torch.float32 or upcast else "tf32",
        UPCAST=upcast,
        B=block,
        BK=bk,
        num_warps=warps,
        num_stages=stages,
    )
    # every (column-tile slot, row tile) block of the shares is written by exactly one program
    shares = torch.empty(n, tiles, c, device=f.device, dtype=torch.float32)
    # Triton launches on the current CUDA device: make it the map's (several GPUs in one process)
    on_device = torch.cuda.device(f.device) if f.is_cuda else contextlib.nullcontext()
    with on_device:
        if stats is None:
            if mode != 2:
                sums = torch.zeros(n, tiles, tiles, device=f.device, dtype=torch.float32)
                kernel[grid](f, sq, floor, inv_norm, y, floor, shares, sums, PASS=1, **launch)
                pairs = c * (c - 1) if mode == 0 else c * c  # hybrid: the authors' mean over all C^2
                mean_dist = (sums.flatten(1).sum(dim=1) / pairs).clamp_min_(eps)
            else:
                mean_dist = torch.zeros(n, device=f.device, dtype=torch.float32)
        else:
            mean_dist = stats[0]
        scale = (-math.log2(math.e) / mean_dist).contiguous()
        sums = torch.zeros(n, tiles, tiles, device=f.device, dtype=torch.float32)
        kernel[grid](f, sq, floor, inv_norm, y, scale, shares, sums, PASS=2, **launch)
    out = shares.sum(dim=1)  # the column tiles' shares, added in a fixed order
    total = sums.flatten(1).sum(dim=1) if stats is None else stats[1]
    # all v_ij = 0 (cosine modes, no positively correlated pair): w = 0 rather than 0 / 0
    out /= torch.where(total > 0, total, torch.ones_like(total))[:, None]
    return out, (mean_dist, total)
