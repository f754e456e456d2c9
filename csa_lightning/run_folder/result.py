"""A training's result (``result.json``): what the training writes and the records, the report,
``--status`` and both executors read; and what "done" means.

A run is **done** when its result holds a finite value of the metric its checkpoints monitor (the
metric the report compares) among its last epoch's validation metrics. Anything else, a result
without that metric (a run resumed with nothing left to train wrote ``"final": {}``) included, is
not done: the executors count it as failed, so a re-run trains or evaluates it again.

The schema is versioned (``schema``): a result written before the version existed reads as
version 0, with the same keys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["RunResult", "RESULT_SCHEMA", "TRAIN_IMAGES_PER_SEC", "is_done", "missing_metric"]

#: the version of the result's keys
RESULT_SCHEMA = 1

#: the metric the task logs once per epoch (the mean over its steps) and the result records as
#: ``train_images_per_sec``: images per second of the optimisation step, data loading not included
TRAIN_IMAGES_PER_SEC = "train/images_per_sec"


@dataclass
class RunResult:
    """What one finished training run wrote (`csa_lightning.tasks.callbacks.RecordResult`)."""

    #: the metric the checkpoints monitor, e.g. val/top1 (what the report compares)
    monitor: str
    #: its best value over the epochs (the best checkpoint's score)
    best: Optional[float]
    #: every validation scalar of the last epoch (val/top1, val/top5, or val/box_AP, val/mask_AP ...)
    final: Dict[str, float]
    epochs: int
    params: int
    gmac: float
    gmac_resolution: int
    #: mean training throughput of the last epoch (optimisation step only; data loading not included)
    train_images_per_sec: float
    #: eval-mode throughput on one batch (median of the timed batches) and its fastest and slowest batch
    inference_images_per_sec: float
    inference_images_per_sec_range: List[float] = field(default_factory=list)
    #: below 1: validation stopped early (limit_val_batches), on a stratified prefix of the data
    val_fraction: Optional[float] = None
    best_checkpoint: Optional[str] = None
    last_checkpoint: Optional[str] = None
    schema: int = RESULT_SCHEMA

    def to_json(self) -> Dict[str, Any]:
        """Plain JSON values."""
        return asdict(self)


def missing_metric(result: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why ``result`` is not done, in words (None when it is)."""
    if not result:
        return "no result was written"
    monitor = result.get("monitor") or "val/top1"
    value = (result.get("final") or {}).get(monitor)
    if value is None:
        legacy = result.get(f"final_{monitor.replace('/', '_')}")  # results written before "final" existed
        value = legacy
    if value is None:
        return f"its result has no {monitor} (the last epoch logged no validation metric)"
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return f"its result's {monitor} is {value!r}, not a finite number"
    return None


def is_done(result: Optional[Mapping[str, Any]]) -> bool:
    """A run is done when its result holds a finite value of the metric it monitors."""
    return missing_metric(result) is None
