"""CBAM's channel-attention gate: [`CBAMChannelGate`][csa_lightning.attention.CBAMChannelGate]
(the paper and the formula are in its docstring)."""

from torch import Tensor

from .base import MLPGate, global_avg_pool
from .registry import register_attention

__all__ = ["CBAMChannelGate"]


@register_attention("cbam")
class CBAMChannelGate(MLPGate):
    """CBAM's channel-attention gate (the channel part of CBAM only).

    Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module". ECCV 2018.
    https://arxiv.org/abs/1807.06521

    One MLP (as SE's, r = 16, with biases) shared by the average- and the max-pooled descriptors;
    the two outputs are summed, then passed through a sigmoid. CBAM's spatial gate is not part of
    this project (the CSA paper's CBAM* row is the channel gate alone). Placed in every block.
    """

    default_placement = "every_block"

    def gate(self, x: Tensor) -> Tensor:
        avg = global_avg_pool(x).to(x.dtype)
        peak = x.amax(dim=(2, 3))
        return (self.mlp(avg) + self.mlp(peak)).sigmoid()[:, :, None, None]
