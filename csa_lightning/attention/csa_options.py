"""CSA's options and the small pieces every part of it shares (the maths, the operator, the Triton
kernels, the module): the modes, one check of a chosen option, the descriptor dtype, the rounding floor
of the distances and the pooled size. Imports torch only; imported by the others, never the reverse."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["CONTIGUITY_MODES", "DISTANCE_MODES", "KERNELS", "AUTHORS_POOL_SIZES", "pooled_size"]

CONTIGUITY_MODES = ("l2", "hybrid", "cosine")

DISTANCE_MODES = ("exact", "projected", "pooled")

#: how w z is computed without forming w: "auto" = the fused Triton kernels for CUDA tensors (in eager
#: calls and compiled graphs alike), else the blocked PyTorch path; "triton" / "torch" force one (same
#: results to rounding)
KERNELS = ("auto", "triton", "torch")

#: distance="pooled": the side each map is average-pooled to before the distances, by channel
#: count, as in the authors' detection backbone (mmdet/models/backbones/CSA/CSA_Module.py)
AUTHORS_POOL_SIZES = {64: 35, 128: 28, 256: 14, 512: 7, 1024: 4, 2048: 4}


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    """One line for an option set to none of its modes (contiguity, distance, kernel)."""
    if value not in choices:
        raise ValueError(f"unknown {option} '{value}': choose one of {', '.join(choices)}")


def descriptor_dtype(x: Tensor) -> torch.dtype:
    # half and bfloat16 are too coarse for distances and exp(-l / l_bar); float64 stays float64
    return torch.promote_types(x.dtype, torch.float32)


def rounding_floor(sq_norms: Tensor, length: int) -> Tensor:
    """Per sample, the rounding error of ||f_i||^2 + ||f_j||^2 - 2 f_i.f_j: 4 sqrt(K) ulps of the
    largest squared norm. It is subtracted before the clamp at 0, so channels equal up to rounding
    get distance 0 however the Gram matrix was blocked (otherwise their distances are rounding noise
    of about 1e-4 |f| in float32, which exp(-l / l_bar) would turn into arbitrary weights). The shift
    is below float32's resolution of the distances themselves."""
    ulp = torch.finfo(sq_norms.dtype).eps
    return 4 * length**0.5 * ulp * sq_norms.amax(dim=1)


def pooled_size(channels: int, pool_size: Optional[int] = None) -> int:
    """The side a map of ``channels`` channels is pooled to for distance="pooled": ``pool_size``
    if given, else the authors' size for that channel count
    (`csa_lightning.attention.csa_options.AUTHORS_POOL_SIZES`)."""
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
