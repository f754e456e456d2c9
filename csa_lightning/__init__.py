"""csa-lightning: a PyTorch Lightning research template for CSA-Net and channel-attention baselines.

Layers (lower never import upper): ``attention`` (torch only) -> ``models`` -> ``data`` / ``tasks``.

Importing it costs nothing more: the attention ResNets' timm names (`csa_lightning.models.names`) are
registered when timm is imported too, in either order (timm is optional and slow to import).
"""

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def _register_timm_names() -> None:
    from .models.names import register_timm_names

    register_timm_names()


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Runs `_register_timm_names` right after ``import timm`` finishes (once; then it leaves sys.meta_path)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_timm_names()

        spec.loader.exec_module = exec_then_register  # this spec's own loader object
        return spec


if "timm" in sys.modules:
    _register_timm_names()
else:
    sys.meta_path.insert(0, _AfterTimmImport())
