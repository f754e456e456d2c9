"""Two environment switches every command here reads: how CI runs each command of the manual
(``make test-docs``), and a quick way to try a command by hand.

- ``CSA_SHORT_RUN=1``: every training the CLI starts is shortened, whatever its config says: one
  epoch of at most `SHORT_RUN_BATCHES` batches, and as many for validation, test and predict, no
  sanity check. The ablation runner's runs, ``make demo`` and the examples go through the CLI and
  are shortened too, and the block check kit runs in its ``--quick`` mode (but for
  ``--write-reference``). A shortened run's figures mean nothing; it shows that the command runs.
- ``CSA_PARSE_ONLY=1``: every command (``cli.py`` and each ``python -m csa_lightning.*`` tool) parses
  its command line and config files, checks them as it would before running, prints one line and
  exits with status 0 before it reads data or builds anything: a renamed or mistyped option still
  fails. For the commands whose data this machine lacks (ImageNet, COCO, a GPU, a cluster).

Imports nothing from the package.
"""

from __future__ import annotations

import os
from typing import Any, Dict

__all__ = ["short_run", "parse_only", "SHORT_RUN_BATCHES", "short_trainer_values", "stop_after_parsing"]

#: batches per epoch and per evaluation of a shortened training
SHORT_RUN_BATCHES = 2


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def short_run() -> bool:
    """``CSA_SHORT_RUN`` is set (to anything but 0, false or no)."""
    return _on("CSA_SHORT_RUN")


def parse_only() -> bool:
    """``CSA_PARSE_ONLY`` is set (to anything but 0, false or no)."""
    return _on("CSA_PARSE_ONLY")


def short_trainer_values() -> Dict[str, Any]:
    """The trainer values a shortened run takes over its config's."""
    batches = SHORT_RUN_BATCHES
    return {"max_epochs": 1, "max_steps": -1, "limit_train_batches": batches, "limit_val_batches": batches,
            "limit_test_batches": batches, "limit_predict_batches": batches, "num_sanity_val_steps": 0}  # fmt: skip


def stop_after_parsing(command: str) -> None:
    """With ``CSA_PARSE_ONLY``: say that ``command``'s arguments parsed, and exit with status 0."""
    if parse_only():
        print(f"{command}: the arguments parse (CSA_PARSE_ONLY is set: stopping before running)", flush=True)
        raise SystemExit(0)
