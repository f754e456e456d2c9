"""ResNets with channel-attention gates, built on torchvision's ResNet (not a rewrite of it).

The gate sits on the residual branch after the block's last BN (``bn3`` of a Bottleneck, ``bn2`` of
a BasicBlock) and before the identity is added, as in SE and the CSA paper. Every torchvision
attribute name and state-dict key is kept (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``,
``inplanes``, ``layerK.N.bn3.weight``...); the gates add ``layerK.N.attention.*`` keys only, so a
torchvision state dict loads with just those missing (`csa_lightning.models.backbone_weights`) and
torchvision's detection backbones (the FPN extractor) accept the model.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..attention import PLACEMENTS, ChannelAttention, attention_name, check_flag, check_int, resolve_attention
from ..attention.base import start_gates_at_identity
from ..attention.registry import AttentionSpec, construct_attention
from .networks import ClassifierSpec, default_placement

log = logging.getLogger(__name__)

__all__ = [
    "ResNetSpec",
    "AttentionBasicBlock",
    "AttentionBottleneck",
    "AttentionResNet",
    "attention_resnet",
    "resolve_placement",
    "RESNET_LAYOUTS",
]


class AttentionBasicBlock(BasicBlock):
    """torchvision's BasicBlock with an optional gate between ``bn2`` and the residual add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_module("attention", None)

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2

    @property
    def out_channels(self) -> int:
        return self.conv2.out_channels

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attention is not None:
            out = self.attention(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class AttentionBottleneck(Bottleneck):
    """torchvision's Bottleneck with an optional gate between ``bn3`` and the residual add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_module("attention", None)

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3

    @property
    def out_channels(self) -> int:
        return self.conv3.out_channels

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attention is not None:
            out = self.attention(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


#: depth -> (block class, blocks per stage), as in torchvision's resnet18 .. resnet152
RESNET_LAYOUTS: Dict[int, Tuple[type, Tuple[int, int, int, int]]] = {
    18: (AttentionBasicBlock, (2, 2, 2, 2)),
    34: (AttentionBasicBlock, (3, 4, 6, 3)),
    50: (AttentionBottleneck, (3, 4, 6, 3)),
    101: (AttentionBottleneck, (3, 4, 23, 3)),
    152: (AttentionBottleneck, (3, 8, 36, 3)),
}

PlacementSpec = Union[None, str, Sequence[Sequence[int]]]


def resolve_placement(placement: PlacementSpec, layers: Sequence[int]) -> List[Tuple[int, int]]:
    """Turn a placement into sorted, 0-based (stage, block) pairs.

    ``placement`` is "stage_end" (last block of each stage), "every_block", or a list of
    [stage, block] pairs with stage in 0..3 and block indices that may be negative (-1 = last).
    """
    if isinstance(placement, str):
        if placement == "stage_end":
            return [(s, n - 1) for s, n in enumerate(layers)]
        if placement == "every_block":
            return [(s, b) for s, n in enumerate(layers) for b in range(n)]
        raise ValueError(
            f"unknown placement '{placement}': use {' or '.join(repr(p) for p in PLACEMENTS)}, "
            "or a list of [stage, block] pairs"
        )
    if placement is None:
        raise ValueError("placement None means the block's default_placement: resolve it before calling this")
    pairs = set()
    for item in placement:
        try:
            stage, block = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"placement entries must be [stage, block] pairs of integers, got {item!r}") from None
        if not 0 <= stage < len(layers):
            raise ValueError(f"placement stage {stage} out of range: stages are 0..{len(layers) - 1}")
        n = layers[stage]
        if not -n <= block < n:
            raise ValueError(f"placement block {block} out of range for stage {stage}, which has {n} blocks")
        pairs.add((stage, block % n))
    return sorted(pairs)


def _check_depth_and_classes(depth: Any, num_classes: Any) -> None:
    """A supported depth and a positive integer class count, each refused in one line."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth}: choose one of {sorted(RESNET_LAYOUTS)}")
    check_int("num_classes", num_classes)


#: torchvision ResNet arguments that change the network's shapes, kept in ``build_args``
_REBUILD_KWARGS = ("groups", "width_per_group", "replace_stride_with_dilation")


class AttentionResNet(ResNet):
    """torchvision ``ResNet`` with channel-attention gates at chosen blocks.

    Args:
        depth: 18, 34, 50, 101 or 152.
        attention: a registered name ("se", "cbam", "eca", "gct", "csa"), a dotted import path, a
            ChannelAttention subclass, or None / "none" for a plain ResNet.
        placement: None (the block's ``default_placement``), "stage_end", "every_block", or a list
            of [stage, block] pairs (0-based, negative block indices allowed).
        attention_options: keyword arguments for every gate (e.g. ``{"contiguity": "hybrid"}``).
        num_classes: size of ``fc``.
        gates_at_identity: every gate starts as the identity
            ([`start_at_identity`][csa_lightning.attention.ChannelAttention.start_at_identity]): inserted into a trained
            network (``load_backbone_weights``), the network's output is unchanged before the first step.
        **resnet_kwargs: passed to torchvision's ResNet (``zero_init_residual``, ``norm_layer``,
            ``groups``, ``width_per_group``, ``replace_stride_with_dilation``).
    """

    def __init__(
        self,
        depth: int = 50,
        attention: AttentionSpec = None,
        placement: PlacementSpec = None,
        attention_options: Optional[Mapping[str, Any]] = None,
        num_classes: int = 1000,
        gates_at_identity: bool = False,
        **resnet_kwargs: Any,
    ) -> None:
        _check_depth_and_classes(depth, num_classes)
        check_flag("gates_at_identity", gates_at_identity)
        block, layers = RESNET_LAYOUTS[depth]
        super().__init__(block, list(layers), num_classes=num_classes, **resnet_kwargs)
        self.depth = depth
        options = dict(attention_options or {})
        cls = resolve_attention(attention)
        # what rebuilds this network elsewhere (a model folder's config, timm's model_args); zero_init_residual
        # only sets initial values, which loaded weights replace
        kept = {k: v for k, v in resnet_kwargs.items() if k in _REBUILD_KWARGS}
        self.build_args: Dict[str, Any] = dict(
            depth=depth, attention=attention_name(attention), placement=placement,
            attention_options=options or None, num_classes=num_classes, gates_at_identity=gates_at_identity, **kept,
        )  # fmt: skip
        self.attention_name = "none" if cls is None else getattr(cls, "registered_name", cls.__name__)
        if cls is None:
            if options:
                raise ValueError(f"attention_options {options} given without an attention")
            self.gate_positions: List[Tuple[int, int]] = []
            return
        chosen = cls.default_placement if placement is None else placement
        self.gate_positions = resolve_placement(chosen, layers)
        for stage, index in self.gate_positions:
            blk = getattr(self, f"layer{stage + 1}")[index]
            blk.attention = construct_attention(cls, blk.out_channels, options)  # resolved once, above
        if gates_at_identity:
            start_gates_at_identity(self)

    def gates(self) -> Iterator[Tuple[str, ChannelAttention]]:
        """(qualified name, gate) for every gate in the network, in forward order."""
        for name, module in self.named_modules():
            if isinstance(module, ChannelAttention):
                yield name, module

    def stage_blocks(self) -> List[nn.Module]:
        """The four stages ``layer1``..``layer4`` (each an nn.Sequential of blocks)."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]


class ResNetSpec(ClassifierSpec):
    """An attention-ResNet classifier ([`AttentionResNet`][csa_lightning.models.AttentionResNet]) as a task's ``net``.

    Args: as [`AttentionResNet`][csa_lightning.models.AttentionResNet] (``gates_at_identity`` included), plus
    ``zero_init_residual`` (torchvision's option: zero the last BN of each residual branch).
    """

    def __init__(
        self,
        depth: int = 50,
        attention: Optional[str] = None,
        placement: Union[None, str, List[List[int]]] = None,
        attention_options: Optional[Dict[str, Any]] = None,
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        gates_at_identity: bool = False,
    ) -> None:
        # the plain values are checked here, when a config builds the spec, not deep in the network's build
        _check_depth_and_classes(depth, num_classes)
        check_flag("zero_init_residual", zero_init_residual)
        check_flag("gates_at_identity", gates_at_identity)
        self.depth = depth
        self.attention = attention
        self.placement = default_placement(placement)
        self.attention_options = dict(attention_options) if attention_options else None
        self.num_classes = num_classes
        self.zero_init_residual = zero_init_residual
        self.gates_at_identity = gates_at_identity

    def build(self) -> "AttentionResNet":
        return AttentionResNet(
            self.depth,
            self.attention,
            self.placement,
            self.attention_options,
            self.num_classes,
            gates_at_identity=self.gates_at_identity,
            zero_init_residual=self.zero_init_residual,
        )


def attention_resnet(
    depth: int = 50,
    attention: AttentionSpec = None,
    placement: PlacementSpec = None,
    attention_options: Optional[Mapping[str, Any]] = None,
    num_classes: int = 1000,
    gates_at_identity: bool = False,
    **resnet_kwargs: Any,
) -> AttentionResNet:
    """Build an attention ResNet; see [`AttentionResNet`][csa_lightning.models.AttentionResNet] for the arguments."""
    return AttentionResNet(depth, attention, placement, attention_options, num_classes, gates_at_identity,
                           **resnet_kwargs)  # fmt: skip
