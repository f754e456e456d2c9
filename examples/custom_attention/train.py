#!/usr/bin/env python
"""Train with the block by name: importing my_attention registers "std_gate", then the CLI runs.

python examples/custom_attention/train.py fit --config configs/demo/digits_csa.yaml --model.net.attention std_gate
"""

import my_attention  # noqa: F401  (registers "std_gate")

from csa_lightning.cli import main

if __name__ == "__main__":
    main()
