"""Attention ResNets on torchvision's ResNet, network specs for the tasks, weight loading, detectors
and the model summary table."""

from .attention_resnet import (
    RESNET_LAYOUTS,
    AttentionBasicBlock,
    AttentionBottleneck,
    AttentionResNet,
    BackboneLoadReport,
    ResNetSpec,
    attention_resnet,
    load_backbone_weights,
    resolve_placement,
)
from .detection import RCNNSpec, attention_resnet_fpn
from .networks import ClassifierSpec, DetectorSpec, NetworkSpec, network_spec

__all__ = [
    "attention_resnet_fpn",
    "RCNNSpec",
    "ResNetSpec",
    "ClassifierSpec",
    "DetectorSpec",
    "NetworkSpec",
    "network_spec",
    "RESNET_LAYOUTS",
    "AttentionBasicBlock",
    "AttentionBottleneck",
    "AttentionResNet",
    "BackboneLoadReport",
    "attention_resnet",
    "load_backbone_weights",
    "resolve_placement",
]
