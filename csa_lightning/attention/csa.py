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
the same w z comes from fused Triton kernels (`csa_lightning.attention.csa_triton`, ``kernel="auto"``),
where no C x C block reaches memory at all. On the CPU the distance blocks use a per-thread workspace
(see `csa_lightning.attention.csa_cache.workspace`); nothing is cached under torch.compile, torch.export
or FakeTensor tracing.
Opt-in ``distance="projected"``: distances from a seeded random projection of each map to
``projection_dim`` dimensions where H * W is larger.
``distance="pooled"`` (the authors' detection backbone): distances from each map average-pooled to a
side set by its channel count (`csa_lightning.attention.csa_options.AUTHORS_POOL_SIZES`) or ``pool_size``.
Placed, as in the paper, at the end of each resolution stage ("stage_end"; CSA-R50 has 26,257,432
parameters).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .base import (
    ChannelAttention,
    ReductionMLP,
    autocast_disabled,
    check_flag,
    check_int,
    check_number,
    standardize,
)
from .csa_math import check_contiguity_input, contiguity_weights, default_blocks, pool_map, tracing_or_exporting
from .csa_op import moran_i
from .csa_options import CONTIGUITY_MODES, DISTANCE_MODES, KERNELS, check_choice, descriptor_dtype, pooled_size
from .registry import register_attention

__all__ = ["CSA", "spatial_autocorrelation"]


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
    `csa_lightning.attention.csa_options.AUTHORS_POOL_SIZES`; never upsampled), z still from the full map.
    ``blocks``: the symmetric Gram work is cut into blocks x blocks pieces (default: from C; 1 = one piece).
    ``kernel``: "auto" (the fused Triton kernels of `csa_lightning.attention.csa_triton` for CUDA tensors, the
    blocked PyTorch path otherwise), "triton" or "torch" (see `csa_lightning.attention.csa_options.KERNELS`).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (N, C, H, W), got shape {tuple(x.shape)}")
    check_choice("distance", distance, DISTANCE_MODES)
    check_contiguity_input(x, contiguity)
    check_choice("kernel", kernel, KERNELS)
    projection = (projection_dim if distance == "projected" else None, projection_seed)
    with autocast_disabled(x):
        # the map the distances come from: the authors' detection backbone pools it first
        source = pool_map(x, pooled_size(x.shape[1], pool_size)) if distance == "pooled" else x
        # the mean accumulates in the descriptor dtype without a converted copy of the whole map
        z = standardize(x.mean(dim=(2, 3), dtype=descriptor_dtype(x)))
        if contiguity_grad or tracing_or_exporting():
            # the plain-ops path (w as one tensor): differentiable through w when asked, and what
            # torch.jit.trace / torch.export / ONNX record (no custom operator, no state)
            w = contiguity_weights(source.to(descriptor_dtype(x)), contiguity, eps, *projection)
            moran = z * torch.bmm(w, z.unsqueeze(-1)).squeeze(-1)
        else:
            blocks = blocks or default_blocks(x.shape[1])
            moran = moran_i(source, z, contiguity, eps, blocks, projection[0], projection_seed, kernel)[0]
        q = standardize(moran)
    return {"z": z, "I": moran, "q": q}


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
        check_choice("kernel", kernel, KERNELS)
        check_choice("contiguity", contiguity, CONTIGUITY_MODES)
        check_choice("distance", distance, DISTANCE_MODES)
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
