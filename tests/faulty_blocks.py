"""Deliberately faulty channel-attention blocks: the block check kit must fail each (tests/test_blockcheck.py)."""

import torch
from torch import nn

from csa_lightning.attention import ChannelAttention


class NaNOnZeroMaps(ChannelAttention):
    """Standardises the pooled descriptor without an eps: 0 / 0 on an all-zero map."""

    def gate(self, x):
        z = x.mean((2, 3), keepdim=True)
        return torch.sigmoid((z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True))


_LAST_SCALE = {}


class StateAtModuleLevel(ChannelAttention):
    """Keeps the previous call's scale in a module-level dict (a cache shared by calls and copies)."""

    def gate(self, x):
        z = x.mean((2, 3), keepdim=True)
        scale = _LAST_SCALE.get("scale", torch.ones(()))
        _LAST_SCALE["scale"] = z.detach().abs().mean()
        return torch.sigmoid(z / scale)


class FloatCast(ChannelAttention):
    """Computes in float32 whatever the input (the example block's x.float(), copied without care)."""

    def gate(self, x):
        return torch.sigmoid(x.float().mean((2, 3), keepdim=True))


class BatchNormOnVectors(ChannelAttention):
    """A BatchNorm1d over the pooled (N, C) vectors: training with a batch of one cannot normalise."""

    def __init__(self, channels):
        super().__init__(channels)
        self.norm = nn.BatchNorm1d(channels)

    def gate(self, x):
        return torch.sigmoid(self.norm(x.mean((2, 3)))).view(x.shape[0], -1, 1, 1)


class NeedsAnArgument(ChannelAttention):
    """A constructor argument the kit cannot guess."""

    def __init__(self, channels, temperature):
        super().__init__(channels)
        self.temperature = temperature

    def gate(self, x):
        return torch.sigmoid(x.mean((2, 3), keepdim=True) / self.temperature)


class DataDependentBranch(ChannelAttention):
    """Correct, but branches on a value of the input: torch.export cannot capture it (a finding, not a fault)."""

    def gate(self, x):
        z = x.mean((2, 3), keepdim=True)
        if bool(z.mean() > 0):
            return torch.sigmoid(z)
        return torch.sigmoid(-z)


class UndeclaredProduct(ChannelAttention):
    """Correct, but a channel-by-channel Gram matrix whose multiply-adds ``extra_macs`` does not declare."""

    def gate(self, x):
        flat = x.flatten(2)
        gram = flat @ flat.transpose(1, 2) / flat.shape[-1]  # (N, C, C)
        return torch.sigmoid(gram.mean(2)).view(x.shape[0], -1, 1, 1)


class BrokenInit(ChannelAttention):
    """Its constructor fails (a bug of the block, not a bad option): a report row, not a traceback."""

    def __init__(self, channels):
        super().__init__(channels)
        raise RuntimeError("weights file for the gate is missing")

    def gate(self, x):
        return x
