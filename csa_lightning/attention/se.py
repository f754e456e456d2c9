"""Squeeze-and-Excitation: [`SqueezeExcitation`][csa_lightning.attention.SqueezeExcitation]
(the paper and the formula are in its docstring)."""

from torch import Tensor

from .base import MLPGate, global_avg_pool
from .registry import register_attention

__all__ = ["SqueezeExcitation"]


@register_attention("se")
class SqueezeExcitation(MLPGate):
    """Squeeze-and-Excitation.

    Hu, Shen, Albanie, Sun, Wu. "Squeeze-and-Excitation Networks". CVPR 2018 / TPAMI 2020.
    https://arxiv.org/abs/1709.01507

    GAP -> Linear(C, C // r) -> ReLU -> Linear(C // r, C) -> sigmoid, r = 16, both layers with biases.
    Placed in every residual block as in the paper (SE-R50: 28,088,024 parameters).
    """

    default_placement = "every_block"

    def gate(self, x: Tensor) -> Tensor:
        squeezed = global_avg_pool(x).to(x.dtype)
        return self.mlp(squeezed).sigmoid()[:, :, None, None]
