"""Gaussian Context Transformer: [`GaussianContextTransformer`][csa_lightning.attention.GaussianContextTransformer]
(the paper and the formula are in its docstring)."""

import torch
from torch import Tensor, nn

from .base import ChannelAttention, check_flag, check_number, global_avg_pool, standardize
from .registry import register_attention

__all__ = ["GaussianContextTransformer"]


@register_attention("gct")
class GaussianContextTransformer(ChannelAttention):
    """Gaussian Context Transformer (the GCT the CSA paper compares against).

    Ruan, Wang, Wang, Dong, Chen. "Gaussian Context Transformer". CVPR 2021 (the CSA paper's [45]).
    Not Yang et al.'s "Gated Channel Transformation", which shares the acronym.

    x = GAP(F); z = (x - mean_C(x)) / std_C(x) with the population std, scale-free (``standardize``: a
    row constant up to rounding gives z = 0, no eps);
    p = exp(-z^2 / (2 c^2)). GCT-B0 (the default, parameter-free, so GCT-R50 has exactly ResNet-50's
    parameter count) fixes c = 2, the value public re-implementations use. Note that several of those
    compute exp(-c z^2 / 2) instead, a different curve; this project uses exp(-z^2 / (2 c^2)), the
    Gaussian with standard deviation c. ``learn_c=True`` gives GCT-B1: c is one learnt scalar per block.
    Placed in every block.

    Args:
        channels: input channels.
        c: the Gaussian's standard deviation (GCT-B0: fixed at 2).
        learn_c: learn c, one scalar per block (GCT-B1).
    """

    default_placement = "every_block"

    def __init__(self, channels: int, c: float = 2.0, learn_c: bool = False) -> None:
        super().__init__(channels)
        check_number("c", c, positive=True)
        self.learn_c = check_flag("learn_c", learn_c)
        if learn_c:
            self.c = nn.Parameter(torch.tensor(float(c)))
        else:
            self.register_buffer("c", torch.tensor(float(c)), persistent=False)

    def gate(self, x: Tensor) -> Tensor:
        z = standardize(global_avg_pool(x))
        c = self.c.float()
        p = torch.exp(-z.pow(2) / (2 * c * c))
        return p.to(x.dtype)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, c={float(self.c):g}, learn_c={self.learn_c}"
