"""Gate statistics while training: how open each stage's channel gates are, logged every N steps.

For every gated stage (the gates under ``layer1`` .. ``layer4`` of an attention ResNet; in other
networks, the gates grouped by their top-level module) the callback logs the mean, standard
deviation and 5th / 95th percentiles of the gate p over the batch's images and channels, and the
same of CSA's descriptor q. It reads them through [`record_gates`][csa_lightning.attention.record_gates] (the
public API for a forward pass's gate values): nothing is recomputed, and the hooks exist only
during the steps it logs, so the other steps run exactly as without it.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional

import lightning as L
import torch

from ..attention import GateRecord, record_gates
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
        self._last_step = -1  # under gradient accumulation, one step spans several batches: log it once
        self._recording: Optional[contextlib.ExitStack] = None
        self._record: Optional[GateRecord] = None

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        self._recording = contextlib.ExitStack()
        self._record = self._recording.enter_context(record_gates(pl_module, detach=True))

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs, batch, batch_idx):
        if self._recording is None:
            return
        record = self._record
        self._stop()
        if record is None:
            return
        chunks: Dict[str, list] = {}
        for kind, per_gate in record.kinds.items():
            for name, tensors in per_gate.items():
                chunks.setdefault(f"{gate_stage(name)}/{kind}", []).extend(tensors)
        metrics = {}
        for key, tensors in chunks.items():
            values = torch.cat([t.float().reshape(-1) for t in tensors])
            low, high = torch.quantile(values[: 2**24], torch.tensor([0.05, 0.95], device=values.device))
            metrics.update(
                {
                    f"gates/{key}_mean": float(values.mean()),
                    f"gates/{key}_std": float(values.std()) if values.numel() > 1 else 0.0,
                    f"gates/{key}_p05": float(low),
                    f"gates/{key}_p95": float(high),
                }
            )
        # the step these values describe (global_step has already counted it)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def _stop(self) -> None:
        if self._recording is not None:
            self._recording.close()  # removes the hooks
        self._recording = self._record = None

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._stop()

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._stop()
