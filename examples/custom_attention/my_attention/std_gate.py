"""StdGate: a channel gate from the per-channel spatial standard deviation (style pooling).

In the spirit of SRM (Lee, Kim, Nam, "SRM: A Style-based Recalibration Module", ICCV 2019):
each channel is described by its mean and its standard deviation over space, a per-channel
linear map (2 weights and a bias per channel) mixes the two, then BN-free sigmoid gating.
Registered as "std_gate", so once this package is imported ``--model.net.attention std_gate`` works;
without the import, ``--model.net.attention my_attention.StdGate`` finds it by dotted path.
"""

import torch
from torch import Tensor, nn

from csa_lightning.attention import ChannelAttention, global_avg_pool, register_attention


@register_attention("std_gate")
class StdGate(ChannelAttention):
    default_placement = "stage_end"

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels)
        self.eps = eps
        self.mix = nn.Parameter(torch.tensor([[1.0, 0.0]]).repeat(channels, 1))  # start from the mean
        self.bias = nn.Parameter(torch.zeros(channels))

    def gate(self, x: Tensor) -> Tensor:
        mean = global_avg_pool(x)
        std = (x.float().var(dim=(2, 3), unbiased=False) + self.eps).sqrt()
        style = torch.stack([mean, std], dim=-1)  # (N, C, 2)
        logits = (style * self.mix).sum(-1) + self.bias
        return logits.sigmoid().to(x.dtype)[:, :, None, None]
