"""Attention ResNets on torchvision's ResNet, weight loading, detectors and the model summary table."""

from .attention_resnet import (
    RESNET_LAYOUTS,
    AttentionBasicBlock,
    AttentionBottleneck,
    AttentionResNet,
    BackboneLoadReport,
    attention_resnet,
    load_backbone_weights,
    resolve_placement,
)
from .detection import attention_resnet_fpn, build_detector

__all__ = [
    "attention_resnet_fpn",
    "build_detector",
    "RESNET_LAYOUTS",
    "AttentionBasicBlock",
    "AttentionBottleneck",
    "AttentionResNet",
    "BackboneLoadReport",
    "attention_resnet",
    "load_backbone_weights",
    "resolve_placement",
]
