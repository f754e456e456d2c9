"""A ClassificationModule that learns from a frozen teacher network beside the labels (knowledge
distillation, Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015): how a
module holds an auxiliary network that is moved with it, never optimised and never saved.

    python path/to/csa-lightning/cli.py fit --config configs/srm_digits.yaml \\
        --model your_project.DistillationModule --model.teacher runs/teacher_digits

- **moved with the module**: the teacher is a submodule (``self.teacher``), so Lightning's move to the
  device (and DDP's) takes it along;
- **not optimised**: its parameters do not require gradients, and the recipe's optimiser takes the
  parameters of ``self.model`` only (the task's network); ``train()`` keeps it in eval mode, so its
  BatchNorm statistics stay as trained;
- **not saved**: a state-dict hook leaves its tensors out of every checkpoint (they are the teacher
  file's, named by ``teacher`` and recorded by content hash in run_info.json), and a load hook puts
  the loaded teacher's own tensors back, so checkpoints load and resume strictly.

The distillation term, ``distill_weight * T^2 * KL(teacher || student)`` at temperature ``T``, is
logged as ``train/distill`` beside ``train/loss_classification``.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from csa_lightning.attention import GateRecord
from csa_lightning.export import load_classifier
from csa_lightning.tasks import ClassificationModule

#: the submodule name the hooks leave out of checkpoints
TEACHER = "teacher"


class DistillationModule(ClassificationModule):
    def __init__(self, *args, teacher: str, distill_weight: float = 0.5, temperature: float = 4.0, **kwargs) -> None:
        """``teacher``: a classification checkpoint or run folder of this project (the teacher's
        network, loaded with ``weights_only=True``); ``distill_weight`` and ``temperature``: the
        distillation term's weight and temperature; every other argument is
        [`ClassificationModule`][csa_lightning.tasks.ClassificationModule]'s."""
        super().__init__(*args, **kwargs)
        network, _ = load_classifier(teacher)
        self.teacher = network.requires_grad_(False).eval()
        self.distill_weight, self.temperature = float(distill_weight), float(temperature)
        self.register_state_dict_post_hook(_leave_out_teacher)
        self.register_load_state_dict_pre_hook(_put_back_teacher)

    def train(self, mode: bool = True) -> "DistillationModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def extra_losses(self, gates: GateRecord, batch, logits: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            target = self.teacher(batch[0])
        t = self.temperature
        term = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1), log_target=True,
                        reduction="batchmean")  # fmt: skip
        return {"distill": self.distill_weight * t * t * term}


def _leave_out_teacher(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}{TEACHER}.")]:
        del state_dict[key]


def _put_back_teacher(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs) -> None:  # fmt: skip
    for key, value in module.teacher.state_dict().items():
        state_dict.setdefault(f"{prefix}{TEACHER}.{key}", value)
