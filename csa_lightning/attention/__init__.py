"""Channel-attention blocks behind one interface, [`ChannelAttention`][csa_lightning.attention.ChannelAttention].

Blocks: "se", "cbam" (channel gate), "eca", "gct" (Gaussian Context Transformer), "csa".
One registration mechanism: every module in this folder is imported here (a scan, no list to
edit), its ``@register_attention("name")`` classes register themselves, and the names in its
``__all__`` become this package's. A new block is one new file. Imports torch only.
"""

import importlib
import pkgutil

from . import base as _base

__all__ = list(_base.__all__)
globals().update({name: getattr(_base, name) for name in _base.__all__})

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "base":
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
