#!/usr/bin/env python
"""Command line for every csa-lightning run: a thin LightningCLI over tasks and data modules.

    python cli.py fit --config configs/csa_r101.yaml
    python cli.py fit --config configs/demo/digits_csa.yaml --model.net.attention se
    python cli.py validate --config configs/csa_r50.yaml --ckpt_path runs/.../best.ckpt

Model and data are in subclass mode: ``class_path`` selects any LightningModule or
LightningDataModule, a user's subclass in another package included.
"""

from csa_lightning.cli import main

if __name__ == "__main__":
    main()
