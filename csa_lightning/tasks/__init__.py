"""LightningModules: classification (and detection once it lands)."""

from .classification import ClassificationModule, parameter_groups

__all__ = ["ClassificationModule", "parameter_groups"]
