"""Channel-attention blocks behind one interface, :class:`ChannelAttention`.

Blocks: "se", "cbam" (channel gate), "eca", "gct" (Gaussian Context Transformer), "csa".
Every module in this package is imported here, so a new block is one new file with a
``@register_attention("name")`` class and no edit elsewhere. Imports torch only.
"""

import importlib
import pkgutil

from .base import (
    PLACEMENTS,
    ChannelAttention,
    MLPGate,
    ReductionMLP,
    available_attentions,
    build_attention,
    global_avg_pool,
    register_attention,
    resolve_attention,
    standardize,
)
from .cbam import CBAMChannelGate
from .csa import CSA, CONTIGUITY_MODES, contiguity_weights, spatial_autocorrelation
from .eca import EfficientChannelAttention, eca_kernel_size
from .gct import GaussianContextTransformer
from .se import SqueezeExcitation

# register blocks dropped into this folder without editing this file
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PLACEMENTS",
    "ChannelAttention",
    "MLPGate",
    "ReductionMLP",
    "available_attentions",
    "build_attention",
    "global_avg_pool",
    "register_attention",
    "resolve_attention",
    "standardize",
    "CBAMChannelGate",
    "CSA",
    "CONTIGUITY_MODES",
    "contiguity_weights",
    "spatial_autocorrelation",
    "EfficientChannelAttention",
    "eca_kernel_size",
    "GaussianContextTransformer",
    "SqueezeExcitation",
]
