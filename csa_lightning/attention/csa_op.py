"""I = z * (w z) as a PyTorch custom operator (``contiguity_grad=False``: w constant for autograd and
never stored), with its backward as a second operator.

The operators' signatures are frozen: torch.compile keeps them whole in its graphs and calls them
by name (``csa_lightning::moran_i``), so an argument added or reordered here breaks compiled models
and saved programs; the options travel as plain values for that reason. What happens inside them, and
everything around them (the MLP, the standardisations, `csa_lightning.attention.csa.CSA`), may change
freely."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import autocast_disabled
from .csa_math import use_fused, weighted_sums_by_kernel
from .csa_options import descriptor_dtype

__all__: list = []

# I = z * (w z) with w constant for autograd and never stored (``contiguity_grad=False``), as a
# PyTorch custom operator: torch.compile keeps it whole in its graph (no graph break) and runs its
# eager kernels, the fused Triton ones on CUDA or the blocked path on the CPU. (Traced instead,
# inductor decomposed the blocked path's one-row products into loops fused with the network's batch
# norms, and a compiled CSA-ResNet-18 trained 6x slower than eager on the CPU; measured.) The
# backward recomputes w (g * z) from the feature map, which the gated block keeps for its own
# backward anyway (x * p), instead of keeping a C x C matrix per sample.
_OPS = __name__.split(".")[0]  # "csa_lightning", or the package this folder was copied into


@torch.library.custom_op(f"{_OPS}::moran_i", mutates_args=())
def moran_i(
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
    fused = use_fused(x, kernel)
    wz, (mean_dist, total) = weighted_sums_by_kernel(
        x, z, contiguity, eps, blocks, (projection_dim, projection_seed), fused
    )
    wz = wz.to(z.dtype)
    return z * wz, wz, mean_dist, total


@moran_i.register_fake
def _moran_i_shapes(x, z, contiguity, eps, blocks, projection_dim, projection_seed, kernel):
    stats = z.new_empty(z.shape[0], dtype=descriptor_dtype(x))
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
        w_gz, _ = weighted_sums_by_kernel(
            x,
            grad * z,
            contiguity,
            eps,
            blocks,
            (projection_dim, projection_seed),
            use_fused(x, kernel),
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


moran_i.register_autograd(_moran_i_grad, setup_context=_moran_i_setup_context)
