"""Gate statistics while training: how open each stage's channel gates are, logged every N steps.

For every gated stage (the gates under ``layer1`` .. ``layer4`` of an attention ResNet; in other
networks, the gates grouped by their top-level module) the callback logs the mean, standard
deviation and 5th / 95th percentiles of the gate p over the batch's images and channels, and the
same of CSA's descriptor q. It reads them from forward hooks on each gate's hook points
(``gate_output``, ``descriptor_output``): nothing is recomputed, and the hooks exist only during
the steps it logs, so the other steps run exactly as without it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List

import lightning as L
import torch
from torch import Tensor

from ..attention import ChannelAttention
from ..checks import require_positive

__all__ = ["GateStatistics", "gate_stage"]


def gate_stage(name: str) -> str:
    """The stage a gate belongs to, from its qualified name: 'model.layer3.5.attention' -> 'layer3',
    'stages.2.blocks.1.attn' -> 'stages.2'."""
    parts = [p for p in name.split(".") if p not in ("model", "net", "_orig_mod", "attention_gates")]
    if not parts:
        return "gates"
    if not parts[0][-1:].isdigit() and len(parts) > 1 and parts[1].isdigit():
        return f"{parts[0]}.{parts[1]}"  # a list of stages, as timm's 'stages.2'
    return parts[0]


class GateStatistics(L.Callback):
    """Log per-stage statistics of the gates (p, and CSA's q) every ``every_n_steps`` training steps.

    Logged as ``gates/<stage>/p_mean``, ``p_std``, ``p_p05``, ``p_p95`` (and ``q_*``) to every
    logger of the trainer, at the step they describe (TensorBoard and metrics.csv).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        require_positive("GateStatistics.every_n_steps", every_n_steps, integer=True)
        self.every_n_steps = int(every_n_steps)
        self._handles: List = []
        self._last_step = -1  # under gradient accumulation, one step spans several batches: log it once
        self._values: Dict[str, List[Tensor]] = defaultdict(list)

    def _observe(self, key: str):
        def hook(module, inputs, output: Tensor) -> None:
            # a float copy of one (N, C) tensor per gate, on the logging step only
            self._values[key].append(output.detach().flatten(1).float())

        return hook

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        for name, module in pl_module.named_modules():
            if isinstance(module, ChannelAttention):
                stage = gate_stage(name)
                self._handles.append(module.gate_output.register_forward_hook(self._observe(f"{stage}/p")))
                probe = getattr(module, "descriptor_output", None)
                if probe is not None:
                    self._handles.append(probe.register_forward_hook(self._observe(f"{stage}/q")))

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs, batch, batch_idx):
        if not self._handles:
            return
        self._remove_hooks()
        metrics = {}
        for key, chunks in self._values.items():
            values = torch.cat([c.reshape(-1) for c in chunks])
            low, high = torch.quantile(values[: 2**24], torch.tensor([0.05, 0.95], device=values.device))
            metrics.update(
                {
                    f"gates/{key}_mean": float(values.mean()),
                    f"gates/{key}_std": float(values.std()) if values.numel() > 1 else 0.0,
                    f"gates/{key}_p05": float(low),
                    f"gates/{key}_p95": float(high),
                }
            )
        self._values.clear()
        # the step these values describe (global_step has already counted it)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._remove_hooks()
        self._values.clear()

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._remove_hooks()
        self._values.clear()
