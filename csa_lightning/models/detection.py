"""Faster R-CNN and Mask R-CNN (torchvision's) on attention-ResNet + FPN backbones.

Nothing of the detectors is rewritten: the attention ResNet keeps torchvision's attribute names,
so torchvision's own FPN extractor wraps it (returning layer1..layer4 to the FPN, freezing the
stem and the first stages), and torchvision's ``FasterRCNN`` / ``MaskRCNN`` take the result.
What this module adds: building that backbone from this project's options, loading ImageNet
(or digits) classification weights into it with a report, FrozenBatchNorm for pretrained
backbones as torchvision does, and the head sizes a small demo needs to slim.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.misc import FrozenBatchNorm2d

from ..attention.registry import AttentionSpec
from ..third_party import resnet_fpn_extractor
from .attention_resnet import AttentionResNet, PlacementSpec
from .backbone_weights import BackboneLoadReport, load_backbone_weights
from .networks import DetectorSpec, default_placement

__all__ = ["ARCHITECTURES", "attention_resnet_fpn", "RCNNSpec"]

ARCHITECTURES = ("faster_rcnn", "mask_rcnn")


def attention_resnet_fpn(
    depth: int = 50,
    attention: AttentionSpec = None,
    placement: PlacementSpec = None,
    attention_options: Optional[Mapping[str, Any]] = None,
    trainable_layers: int = 3,
    backbone_weights: Optional[str] = None,
    frozen_bn: Optional[bool] = None,
) -> Tuple[BackboneWithFPN, Optional[BackboneLoadReport]]:
    """An attention ResNet with an FPN on layer1..layer4 (256 channels), and the weight-load report.

    ``backbone_weights``: a torchvision ResNet state dict or a ClassificationModule checkpoint of
    this project; its ``fc`` head is ignored. ``frozen_bn`` (default: True when weights are given,
    as torchvision) swaps BatchNorm for FrozenBatchNorm2d, whose statistics and affine parameters
    stay those of the classifier. ``trainable_layers`` (0..5) counts stages from the top, as in
    torchvision: 3 trains layer2..layer4 and the FPN; the gates of frozen stages are frozen too.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be 0..5, got {trainable_layers}")
    if frozen_bn is None:
        frozen_bn = backbone_weights is not None
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    resnet = AttentionResNet(depth, attention, placement, attention_options, norm_layer=norm_layer)
    report = None
    if backbone_weights:
        report = load_backbone_weights(resnet, backbone_weights, exclude=("fc.",))
    return resnet_fpn_extractor(resnet, trainable_layers), report


class RCNNSpec(DetectorSpec):
    """torchvision's Faster R-CNN or Mask R-CNN on an attention-ResNet-FPN backbone, as a task's ``net``.

    Args:
        architecture: "faster_rcnn" or "mask_rcnn".
        num_classes: object categories (COCO: 80; the background is added here).
        depth: the backbone, as [`ResNetSpec`][csa_lightning.models.ResNetSpec].
        attention: see ``depth``.
        placement: see ``depth``.
        attention_options: see ``depth``.
        trainable_layers: backbone stages trained, counted from the top (torchvision's; 3 in the paper).
        frozen_bn: FrozenBatchNorm2d in the backbone (torchvision's choice for a pretrained one).
        min_size: torchvision's resizing of the input images (800 / 1333 for COCO).
        max_size: see ``min_size``.
        anchor_sizes: one anchor size per FPN level (default torchvision's 32..512). The ``rpn_*``,
            ``box_*`` and ``mask_head_layers`` arguments: torchvision's sampling and proposal numbers, the box head's
            width and the mask head's convolutions. The defaults are torchvision's (COCO); a small
            demo lowers the sampled RoIs and anchors, the proposals kept, the image size, the box
            head's width and the mask head's convolutions (they run on every positive RoI and
            dominate a CPU training step once the RPN finds objects).
    """

    def __init__(
        self,
        architecture: str = "faster_rcnn",
        num_classes: int = 80,
        depth: int = 50,
        attention: Optional[str] = None,
        placement: Union[None, str, List[List[int]]] = None,
        attention_options: Optional[Dict[str, Any]] = None,
        trainable_layers: int = 3,
        frozen_bn: bool = True,
        min_size: int = 800,
        max_size: int = 1333,
        anchor_sizes: Optional[List[int]] = None,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        box_representation_size: int = 1024,
        box_detections_per_img: int = 100,
        box_score_thresh: float = 0.05,
        mask_head_layers: Sequence[int] = (256, 256, 256, 256),
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{architecture}': choose one of {', '.join(ARCHITECTURES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes (object categories, background excluded) must be >= 1, got {num_classes}")
        placement = default_placement(placement)
        # every argument under its own name: config() reads them back
        for name, value in list(locals().items()):
            if name not in ("self", "__class__"):
                setattr(self, name, list(value) if isinstance(value, tuple) else value)

    @property
    def iou_types(self) -> Tuple[str, ...]:
        """What the detector is evaluated on: boxes, and masks for Mask R-CNN."""
        spec: Any = self  # the arguments are attributes set in a loop (__init__): untyped for the checker
        return ("bbox", "segm") if spec.architecture == "mask_rcnn" else ("bbox",)

    def build_backbone(self) -> BackboneWithFPN:
        """The attention ResNet-FPN, randomly initialised (weights are loaded by the task)."""
        spec: Any = self  # the arguments are attributes set in a loop (__init__): untyped for the checker
        backbone, _ = attention_resnet_fpn(
            spec.depth,
            spec.attention,
            spec.placement,
            spec.attention_options,
            trainable_layers=spec.trainable_layers,
            frozen_bn=spec.frozen_bn,
        )
        return backbone

    def build(self) -> nn.Module:
        spec: Any = self  # the arguments are attributes set in a loop (__init__): untyped for the checker
        backbone = self.build_backbone()
        levels = len(backbone.body.return_layers) + 1  # FPN levels + the max-pool level
        anchors = None
        if spec.anchor_sizes is not None:
            if len(spec.anchor_sizes) != levels:
                raise ValueError(f"anchor_sizes needs one size per FPN level ({levels}), got {list(spec.anchor_sizes)}")
            anchors = AnchorGenerator(tuple((int(s),) for s in spec.anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
        resolution = 7  # torchvision's MultiScaleRoIAlign output for boxes
        box_head = TwoMLPHead(backbone.out_channels * resolution**2, spec.box_representation_size)
        kwargs = dict(
            min_size=spec.min_size,
            max_size=spec.max_size,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=spec.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=spec.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=spec.rpn_batch_size_per_image,
            box_batch_size_per_image=spec.box_batch_size_per_image,
            box_detections_per_img=spec.box_detections_per_img,
            box_score_thresh=spec.box_score_thresh,
            box_head=box_head,
            box_predictor=FastRCNNPredictor(spec.box_representation_size, spec.num_classes + 1),
        )
        if spec.architecture == "faster_rcnn":
            return FasterRCNN(backbone, num_classes=None, **kwargs)
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        # MaskRCNN builds its predictor from num_classes unless given one; with a box predictor
        # given, num_classes must be None, so the mask head and predictor are given too
        layers = [int(c) for c in spec.mask_head_layers]
        kwargs["mask_head"] = MaskRCNNHeads(backbone.out_channels, layers, dilation=1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(layers[-1], 256, spec.num_classes + 1)
        return MaskRCNN(backbone, num_classes=None, **kwargs)
