"""The LightningCLI behind ``cli.py``."""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.cli import LightningCLI

__all__ = ["CSALightningCLI", "main"]


class CSALightningCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data; the module configures its own optimiser."""


def main(args: Optional[Sequence[str]] = None, run: bool = True) -> CSALightningCLI:
    return CSALightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
