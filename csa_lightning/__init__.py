"""csa-lightning: a PyTorch Lightning research template for CSA-Net and channel-attention baselines.

Layers (lower never import upper): ``attention`` (torch only) -> ``models`` -> ``data`` / ``tasks``.
"""

__version__ = "0.1.0"
