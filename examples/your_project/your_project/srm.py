"""SRM: a channel gate from each channel's style, its spatial mean and standard deviation.

After Lee, Kim and Nam, "SRM: A Style-based Recalibration Module for Convolutional Neural Networks"
(ICCV 2019): style pooling gives each channel (mean, std) over space; a channel-wise fully connected
layer (two weights and a bias per channel) integrates them, and a sigmoid makes the gate. The
paper's BatchNorm between the two is left out here, so that the gate is defined for a batch of one
in training mode. Declared in ``pyproject.toml`` under the entry-point group
``csa_lightning.attention`` as "srm": ``--model.net.attention srm`` works in every tool once this
package is installed.
"""

import torch
from torch import Tensor, nn

from csa_lightning.attention import ChannelAttention, sqrt_zero_safe


class SRM(ChannelAttention):
    # at the end of each stage, as CSA: four gates in a ResNet
    default_placement = "stage_end"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        # weights (mean, std) per channel: the gate starts from the mean alone, sigmoid(mean)
        self.cfc = nn.Parameter(torch.tensor([[1.0, 0.0]]).repeat(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels))

    def style(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, 2): each channel's spatial mean and population std, computed in at
        least float32 (float64 stays float64: no fixed cast)."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = x.mean(dim=(2, 3))
        variance = (x - mean[:, :, None, None]).pow(2).mean(dim=(2, 3))
        # an all-zero or constant map has std 0: value 0 and gradient 0, where a plain sqrt gives nan
        return torch.stack([mean, sqrt_zero_safe(variance)], dim=-1)

    def gate(self, x: Tensor) -> Tensor:
        style = self.style(x)
        logits = (style * self.cfc.to(style.dtype)).sum(-1) + self.bias.to(style.dtype)
        return logits.sigmoid().to(x.dtype)[:, :, None, None]

    def descriptors(self, x: Tensor) -> dict:
        """The analysis tools' per-channel descriptors: the defaults ("z", "p") and the style's std."""
        out = super().descriptors(x)
        out["std"] = self.style(x)[..., 1]
        return out
