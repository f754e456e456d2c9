"""Attention ResNets on torchvision's ResNet, timm CNNs with channel gates, network specs for the
tasks, weight loading, detectors, the model summary table, and the names and model folders a trained
network leaves by (timm, torch.hub, safetensors with a model card)."""

from .attention_resnet import (
    RESNET_LAYOUTS,
    AttentionBasicBlock,
    AttentionBottleneck,
    AttentionResNet,
    ResNetSpec,
    attention_resnet,
    resolve_placement,
)
from .backbone_weights import BackboneLoadReport, load_backbone_weights, resolve_weights
from .detection import RCNNSpec, attention_resnet_fpn
from .model_folder import load_model_folder, save_model_folder
from .names import hub_entrypoints, register_timm_names
from .networks import ClassifierSpec, DetectorSpec, NetworkSpec, network_spec
from .timm_net import TimmSpec, add_stage_gates

__all__ = [
    "attention_resnet_fpn",
    "RCNNSpec",
    "ResNetSpec",
    "TimmSpec",
    "add_stage_gates",
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
    "resolve_weights",
    "resolve_placement",
    "load_model_folder",
    "save_model_folder",
    "register_timm_names",
    "hub_entrypoints",
]
