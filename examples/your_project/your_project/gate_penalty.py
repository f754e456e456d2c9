"""A ClassificationModule that adds an L1 penalty on every gate's p to the loss, through the
module's extension point ``extra_losses`` and the gate values of the step (``record_gates``).

    python path/to/csa-lightning/cli.py fit --config configs/srm_digits.yaml \\
        --model your_project.GatePenaltyModule --model.gate_l1 1e-3

The penalty is logged as ``train/gate_l1`` beside ``train/loss_classification``.
"""

from typing import Dict

from torch import Tensor

from csa_lightning.attention import GateRecord
from csa_lightning.tasks import ClassificationModule


class GatePenaltyModule(ClassificationModule):
    def __init__(self, *args, gate_l1: float = 1e-3, **kwargs) -> None:
        """``gate_l1``: the penalty's weight on the mean |p| over every gate, image and channel;
        every other argument is [`ClassificationModule`][csa_lightning.tasks.ClassificationModule]'s."""
        super().__init__(*args, **kwargs)
        self.gate_l1 = gate_l1

    def extra_losses(self, gates: GateRecord, batch, logits: Tensor) -> Dict[str, Tensor]:
        p = gates.values("p")
        if not p:  # a network without gates
            return {}
        return {"gate_l1": self.gate_l1 * sum(v.abs().mean() for v in p) / len(p)}
