"""Channel-wise Spatially Autocorrelated attention (CSA).

"Channel-wise Spatially Autocorrelated Attention Networks" (CSA-Net), Nikzad, Gao and Zhou,
2024 (the paper this project is built around; REFERENCE.md restates its equations). The gate re-weights channels by their local Moran's I over the C feature maps:

1. x_i = GAP(F_i); z = (x - mean_C(x)) / (std_C(x) + eps)
2. l_ij = ||f_i - f_j||_2 between the flattened maps; v_ij = exp(-l_ij / l_bar); v_ii = 0
3. w = v / sum_ij v_ij (the unitary spatial weight matrix)
4. I_i = z_i (w z)_i (= diag(z z^T w), w symmetric); q = (I - mean_C(I)) / (std_C(I) + eps)
5. p = sigmoid(U(ReLU(D(q)))), D: Linear(C, C // r), U: Linear(C // r, C), r = 16, with biases
6. output F * p

Conventions fixed here where the paper is silent (see REFERENCE.md section 1):

- std is the population std (divide by C) with ``eps`` added, in z and in q;
- v_ii = 0 in every contiguity mode; in "l2" mode l_bar is the mean over the C(C - 1)
  off-diagonal pairs, clamped below at ``eps`` (so identical or all-zero channels give finite w);
- ``contiguity``: "l2" is the paper's formula (default); "cosine" is v_ij = max(cos(f_i, f_j), 0);
  "hybrid" is the authors' public code's default, v_ij = max(cos, 0) * exp(-l_ij / l_bar) with their
  l_bar, the mean over the whole C x C matrix, zero diagonal included. Only v follows the authors'
  code; the standardisations keep this project's conventions in every mode;
- when every v_ij is 0 (possible in the cosine modes) w is all zeros, so I = 0 and q = 0;
- ``contiguity_grad=False`` (default, as in the authors' code, and cheaper): w is a constant for
  autograd and gradients reach the input through z only; ``True`` differentiates through w too
  (zero distances get a zero subgradient instead of the infinite one of sqrt at 0);
- under autocast (bf16 / fp16) the descriptor math and the MLP run in float32 (a float64 input stays
  float64); the gate is returned in the input's dtype.

Costs: one batched C x C Gram matrix per sample (C * C * H * W multiply-adds), never a C x C x C
tensor (the authors' code builds diag(z z^T w) with an O(C^3) product). Placed, as in the paper, at
the end of each resolution stage ("stage_end": the last block of layer1..layer4; CSA-R50 has
26,257,432 parameters).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .base import ChannelAttention, ReductionMLP, autocast_disabled, register_attention, sqrt_zero_safe, standardize

CONTIGUITY_MODES = ("l2", "hybrid", "cosine")

__all__ = ["CSA", "spatial_autocorrelation", "contiguity_weights", "CONTIGUITY_MODES"]


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


def contiguity_weights(x: Tensor, contiguity: str = "l2", eps: float = 1e-5) -> Tensor:
    """The unitary spatial weight matrix w, shape (N, C, C), of a feature map (N, C, H, W).

    Symmetric, zero diagonal, non-negative entries summing to 1 per sample (or all 0 when every
    v_ij is 0, which only the cosine modes can produce). Computed from one batched Gram matrix.
    """
    n, c = _check_contiguity_input(x, contiguity)
    f = x.reshape(n, c, -1)
    gram = torch.bmm(f, f.transpose(1, 2))  # (N, C, C): the only O(C^2 HW) step
    sq_norms = gram.diagonal(dim1=1, dim2=2)  # (N, C) = ||f_i||^2
    off_diagonal = ~torch.eye(c, dtype=torch.bool, device=x.device)

    v = None
    if contiguity in ("l2", "hybrid"):
        sq_dist = (sq_norms[:, :, None] + sq_norms[:, None, :] - 2 * gram).clamp_min(0)
        dist = sqrt_zero_safe(sq_dist) * off_diagonal
        pairs = c * (c - 1) if contiguity == "l2" else c * c  # hybrid: the authors' mean over all C^2
        mean_dist = (dist.sum(dim=(1, 2)) / pairs).clamp_min(eps)
        v = torch.exp(-dist / mean_dist[:, None, None])
    if contiguity in ("cosine", "hybrid"):
        norms = sqrt_zero_safe(sq_norms).clamp_min(eps)
        cosine = (gram / (norms[:, :, None] * norms[:, None, :])).clamp_min(0)
        v = cosine if v is None else v * cosine
    v = v * off_diagonal
    total = v.sum(dim=(1, 2), keepdim=True)
    # all v_ij = 0 (cosine modes, no positively correlated pair): w = 0 rather than 0 / 0
    return v / torch.where(total > 0, total, torch.ones_like(total))


@torch.no_grad()
def _contiguity_weights_in_place(x: Tensor, contiguity: str, eps: float) -> Tensor:
    """:func:`contiguity_weights` for the no-gradient path, with the C x C work done in place.

    Same math, same conventions; the elementwise chain over the (N, C, C) matrices is the cost
    that dominates CSA (REFERENCE.md section 1), so it reuses the Gram matrix's storage instead of
    allocating a new matrix per step (about half the passes over memory).
    """
    n, c = _check_contiguity_input(x, contiguity)
    f = x.reshape(n, c, -1)
    gram = torch.bmm(f, f.transpose(1, 2))
    sq_norms = gram.diagonal(dim1=1, dim2=2).clone()
    cosine = None
    if contiguity in ("cosine", "hybrid"):
        norms = sq_norms.sqrt().clamp_min_(eps)
        cosine = gram.div(norms[:, :, None]).div_(norms[:, None, :]).clamp_min_(0)
        v = cosine
    if contiguity in ("l2", "hybrid"):
        dist = gram.mul_(-2).add_(sq_norms[:, :, None]).add_(sq_norms[:, None, :]).clamp_min_(0).sqrt_()
        dist.diagonal(dim1=1, dim2=2).zero_()
        pairs = c * (c - 1) if contiguity == "l2" else c * c
        mean_dist = (dist.sum(dim=(1, 2)) / pairs).clamp_min_(eps)
        v = dist.mul_((-1.0 / mean_dist)[:, None, None]).exp_()
        if cosine is not None:
            v.mul_(cosine)
    v.diagonal(dim1=1, dim2=2).zero_()
    total = v.sum(dim=(1, 2), keepdim=True)
    return v.div_(torch.where(total > 0, total, torch.ones_like(total)))


def spatial_autocorrelation(
    x: Tensor, contiguity: str = "l2", eps: float = 1e-5, contiguity_grad: bool = False
) -> Dict[str, Tensor]:
    """Parameter-free CSA descriptors of any feature map (N, C, H, W).

    Returns a dict of (N, C) tensors: "z" (standardised GAP), "I" (local Moran's I, z * (w z))
    and "q" (standardised I), in float32 (float64 for float64 input), with the same options and
    conventions as :class:`CSA`. The analysis tools apply it to models without a CSA gate.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (N, C, H, W), got shape {tuple(x.shape)}")
    with autocast_disabled(x):
        xf = x.to(_descriptor_dtype(x))
        z = standardize(xf.mean(dim=(2, 3)), eps)
        if contiguity_grad:
            w = contiguity_weights(xf, contiguity, eps)
        else:
            w = _contiguity_weights_in_place(xf.detach(), contiguity, eps)
        moran = z * torch.bmm(w, z.unsqueeze(-1)).squeeze(-1)
        q = standardize(moran, eps)
    return {"z": z, "I": moran, "q": q}


@register_attention("csa")
class CSA(ChannelAttention):
    """CSA gate: p = sigmoid(MLP(q)) from the standardised local Moran's I of the channels."""

    default_placement = "stage_end"

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        contiguity: str = "l2",
        contiguity_grad: bool = False,
        eps: float = 1e-5,
        compile: bool = False,
    ) -> None:
        super().__init__(channels)
        if contiguity not in CONTIGUITY_MODES:
            raise ValueError(f"unknown contiguity '{contiguity}': choose one of {', '.join(CONTIGUITY_MODES)}")
        if channels < 2:
            raise ValueError(f"CSA needs at least 2 channels, got {channels}")
        self.reduction = reduction
        self.contiguity = contiguity
        self.contiguity_grad = contiguity_grad
        self.eps = eps
        self.descriptor_eps = eps
        self.compile = compile
        self.mlp = ReductionMLP(channels, reduction)
        # opt-in: torch.compile fuses the chain of elementwise passes over the C x C matrices
        self._autocorrelation = torch.compile(spatial_autocorrelation) if compile else spatial_autocorrelation

    def autocorrelation(self, x: Tensor) -> Dict[str, Tensor]:
        """z, I and q of ``x`` with this gate's options (see :func:`spatial_autocorrelation`)."""
        self._check_input(x)
        return self._autocorrelation(x, contiguity=self.contiguity, eps=self.eps, contiguity_grad=self.contiguity_grad)

    def _excite(self, q: Tensor) -> Tensor:
        with autocast_disabled(q):
            return self.mlp(q.to(self.mlp.fc1.weight.dtype)).sigmoid()

    def gate(self, x: Tensor) -> Tensor:
        p = self._excite(self.autocorrelation(x)["q"])
        return p.to(x.dtype)[:, :, None, None]

    def descriptors(self, x: Tensor) -> Dict[str, Tensor]:
        out = dict(self.autocorrelation(x))
        out["p"] = self._excite(out["q"])
        return out

    def extra_macs(self, input_shape: torch.Size) -> int:
        # the Gram matrix: C * C * H * W multiply-adds per sample, however it is computed
        c, h, w = input_shape[-3:]
        return int(c) * int(c) * int(h) * int(w)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction={self.reduction}, contiguity={self.contiguity!r}, "
            f"contiguity_grad={self.contiguity_grad}, eps={self.eps:g}"
        )
