"""LightningModules: image classification (Table 1) and detection / instance segmentation (Tables 2, 3),
and the recipe pieces they share (optimiser by class path, lr schedules)."""

from .classification import ClassificationModule
from .detection import DetectionModule, detection_metric
from .finetune import Finetune
from .recipe import parameter_groups
from .schedules import CosineDecay, Schedule, StepDecay

__all__ = [
    "ClassificationModule",
    "DetectionModule",
    "detection_metric",
    "parameter_groups",
    "Finetune",
    "Schedule",
    "StepDecay",
    "CosineDecay",
]
