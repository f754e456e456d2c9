"""LightningModules: image classification (Table 1) and detection / instance segmentation (Tables 2, 3)."""

from .classification import ClassificationModule, parameter_groups
from .detection import DetectionModule, detection_metric

__all__ = ["ClassificationModule", "DetectionModule", "detection_metric", "parameter_groups"]
