"""Attention ResNets on torchvision's ResNet, weight loading and the model summary table."""

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

__all__ = [
    "RESNET_LAYOUTS",
    "AttentionBasicBlock",
    "AttentionBottleneck",
    "AttentionResNet",
    "BackboneLoadReport",
    "attention_resnet",
    "load_backbone_weights",
    "resolve_placement",
]
