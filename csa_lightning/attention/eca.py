"""Efficient Channel Attention: [`EfficientChannelAttention`][csa_lightning.attention.EfficientChannelAttention]
(the paper and the formula are in its docstring)."""

import math
from typing import Optional

from torch import Tensor, nn

from .base import ChannelAttention, check_int, check_number, global_avg_pool
from .registry import register_attention

__all__ = ["EfficientChannelAttention", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive kernel size for ``channels`` channels (odd, at least 3)."""
    t = int(abs(math.log2(channels) + b) / gamma)
    k = t if t % 2 == 1 else t + 1
    return max(3, k)


@register_attention("eca")
class EfficientChannelAttention(ChannelAttention):
    """Efficient Channel Attention.

    Wang, Wu, Zhu, Li, Zuo, Hu. "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks". CVPR 2020. https://arxiv.org/abs/1910.03151

    GAP -> Conv1d(1, 1, k, padding (k - 1) // 2, no bias) along the channel axis -> sigmoid.
    The kernel size adapts to C as the reference implementations read the paper's "nearest odd":
    t = int(|log2(C) + b| / gamma), k = t if t is odd else t + 1, at least 3 (gamma = 2, b = 1), so
    C = 64, 128, 256, 512, 1024, 2048 give k = 3, 5, 5, 5, 5, 7. This adaptive rule is what this
    project uses by default; the officially released ECA models hand-set k per stage instead
    (R50: 3, 5, 5, 7; R101: 3, 3, 5, 7): pass ``k_size`` to reproduce them. Placed in every block.

    Args:
        channels: input channels.
        k_size: the Conv1d's kernel size (odd); None: the adaptive size of ``eca_kernel_size``.
        gamma: the adaptive rule's gamma.
        b: the adaptive rule's b.
    """

    default_placement = "every_block"

    def __init__(self, channels: int, k_size: Optional[int] = None, gamma: float = 2.0, b: float = 1.0) -> None:
        super().__init__(channels)
        check_number("gamma", gamma, positive=True)
        check_number("b", b)
        k = eca_kernel_size(channels, gamma, b) if k_size is None else check_int("k_size", k_size)
        if k % 2 == 0:
            raise ValueError(f"ECA k_size must be a positive odd integer, got {k}")
        self.k_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def gate(self, x: Tensor) -> Tensor:
        squeezed = global_avg_pool(x).to(x.dtype)
        return self.conv(squeezed[:, None, :]).sigmoid()[:, 0, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_size={self.k_size}"
