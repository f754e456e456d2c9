"""Channel-attention blocks behind one interface, [`ChannelAttention`][csa_lightning.attention.ChannelAttention].

Blocks: "se", "cbam" (channel gate), "eca", "gct" (Gaussian Context Transformer), "csa", one file
each (CSA's options, caches, maths, operator and Triton kernels in csa_*.py beside
its module); ``@register_attention("name")`` (`csa_lightning.attention.registry`) makes a class buildable by
name. This package's names are its modules' ``__all__``: a new built-in block is one new file and its
import line here. Imports torch only.
"""

from . import base, cbam, csa, csa_cache, csa_math, csa_options, eca, gct, record, registry, se
from .base import *  # noqa: F401,F403
from .cbam import *  # noqa: F401,F403
from .csa import *  # noqa: F401,F403
from .csa_cache import *  # noqa: F401,F403
from .csa_math import *  # noqa: F401,F403
from .csa_options import *  # noqa: F401,F403
from .eca import *  # noqa: F401,F403
from .gct import *  # noqa: F401,F403
from .record import *  # noqa: F401,F403
from .registry import *  # noqa: F401,F403
from .se import *  # noqa: F401,F403

__all__ = [
    *base.__all__,
    *registry.__all__,
    *se.__all__,
    *cbam.__all__,
    *eca.__all__,
    *gct.__all__,
    *csa.__all__,
    *csa_options.__all__,
    *csa_math.__all__,
    *csa_cache.__all__,
    *record.__all__,
]
