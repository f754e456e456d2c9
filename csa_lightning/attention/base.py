"""The ``ChannelAttention`` interface and the pieces the blocks share (the names that build blocks are
`csa_lightning.attention.registry`'s).

Every block is an ``nn.Module`` built as ``Cls(channels, **options)`` that maps a feature map
``x`` of shape (N, C, H, W) to per-channel weights ``gate(x)`` of shape (N, C, 1, 1) and returns
``x * gate(x)``. ``descriptors(x)`` exposes the intermediate per-channel quantities the analysis
tools plot. This module imports torch only, so ``csa_lightning.attention`` can be copied into
another project on its own.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict

import torch
from torch import Tensor, nn

__all__ = [
    "ChannelAttention",
    "ReductionMLP",
    "MLPGate",
    "start_gates_at_identity",
    "standardize",
    "global_avg_pool",
    "PLACEMENTS",
    "autocast_disabled",
    "sqrt_zero_safe",
    "check_int",
    "check_number",
    "check_flag",
]

#: The placements ``attention_resnet`` understands by name (a list of [stage, block] pairs also works).
PLACEMENTS = ("stage_end", "every_block")


def check_int(name: str, value, low: int = 1) -> int:
    """A block's integer argument: an int (not a bool, not 2.5) of at least ``low``, else one line."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        rule = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return int(value)


def check_number(name: str, value, positive: bool = False) -> float:
    """A block's real argument: a finite number (positive if asked), else one line."""
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ValueError(f"{name} must be a {'positive' if positive else 'finite'} number, got {value!r}")
    return float(value)


def check_flag(name: str, value) -> bool:
    """A block's switch: True or False (a "yes" or a 2 is refused, not read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def global_avg_pool(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C) spatial mean, accumulated in at least float32."""
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (N, C, H, W), got shape {tuple(x.shape)}")
    return x.mean(dim=(2, 3), dtype=torch.promote_types(x.dtype, torch.float32))


def autocast_disabled(x: Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``x``'s device: the fp32 island of a gate's statistics."""
    device_type = x.device.type
    if device_type == "meta":  # shape-only passes (model summary) have no autocast state
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def sqrt_zero_safe(a: Tensor) -> Tensor:
    """sqrt(a) for a >= 0, with value 0 and gradient 0 (not inf) where a == 0.

    Zero variances (constant descriptors, all-zero maps) and zero distances (identical
    channels) are exactly where a plain sqrt's backward returns inf * 0 = nan.
    """
    tiny = torch.finfo(a.dtype).tiny
    return torch.where(a > 0, a.clamp_min(tiny).sqrt(), torch.zeros_like(a))


def standardize(x: Tensor) -> Tensor:
    """Standardise each row of (N, C) over its C entries: (x - mean) / std, population std, no eps.

    Scale-free: the only guard is relative to the row's own magnitude. A row whose std is at or
    below the rounding noise of its centring (4 sqrt(C) ulps of its largest entry) is constant up
    to rounding and maps to 0, with gradient 0 (an all-zero map, identical channels); every other
    row is divided by its exact std. An absolute eps added to the std is not safe here: CSA's
    Moran's I is O(1/C), so its std is of the order of any fixed eps (1e-5 shrank q by up to 8 %
    at C = 2048), and near 0 no fixed eps is small enough for every row.
    """
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    std = sqrt_zero_safe(centred.pow(2).mean(dim=1, keepdim=True))
    noise = 4 * x.shape[1] ** 0.5 * torch.finfo(x.dtype).eps * x.detach().abs().amax(dim=1, keepdim=True)
    constant = std <= noise
    return torch.where(constant, torch.zeros_like(centred), centred / torch.where(constant, torch.ones_like(std), std))


class ReductionMLP(nn.Module):
    """C -> C // r -> ReLU -> C, with biases: the excitation MLP of SE, CBAM and CSA.

    The hidden width is plain ``channels // reduction`` as in the SE and CSA papers and the
    authors' code (timm rounds it to a multiple of 8 instead), and at least 1.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        check_int("reduction", reduction)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


#: keyword arguments that model builders (timm) pass to every attention layer and a channel gate
#: has no use for: ignored. (``device`` and ``dtype`` are honoured, not ignored.)
IGNORED_BUILDER_KWARGS = ("act_layer",)


def _accepting_factory_kwargs(init: Callable) -> Callable:
    """Wrap a block's ``__init__`` so that it takes PyTorch's factory kwargs as timm passes them
    (``Cls(channels, device=..., dtype=...)``, plus ``act_layer``): the block is built, then its
    parameters and buffers are moved to ``device`` / ``dtype``. Every other keyword still goes to
    the block, so a misspelt option stays a TypeError. ``inspect.signature`` still shows the
    block's own options (``functools.wraps``), which is what the CLI and the ablation runner read."""

    @functools.wraps(init)
    def __init__(self, *args, device=None, dtype=None, **kwargs):
        for name in IGNORED_BUILDER_KWARGS:
            kwargs.pop(name, None)
        init(self, *args, **kwargs)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    return __init__


class ChannelAttention(nn.Module):
    """Base class of every channel-attention block.

    Subclasses implement [`gate`][csa_lightning.attention.ChannelAttention.gate];
    [`forward`][csa_lightning.attention.ChannelAttention.forward] checks the input's shape (once, here: a ``gate`` need
    not) and multiplies the input by the gate. Override
    [`descriptors`][csa_lightning.attention.ChannelAttention.descriptors] to expose more than the default "z"
    (standardised GAP) and "p" (the gate), and [`extra_macs`][csa_lightning.attention.ChannelAttention.extra_macs] when
    the block does multiply-adds that are neither convolutions nor linear layers (the model summary counts those two
    with torch's flop counter).

    Every block (a user's subclass included) also accepts PyTorch's factory kwargs ``device`` and
    ``dtype``, and ignores ``act_layer``, as timm passes them to its ``attn_layer`` / ``se_layer``:
    ``timm.create_model("resnet50", block_args=dict(attn_layer=CSA))`` works.

    ``gate_output`` (an ``nn.Identity``) is what [`forward`][csa_lightning.attention.ChannelAttention.forward] passes
    the gate through: register a forward hook on it to observe p during training.

    [`start_at_identity`][csa_lightning.attention.ChannelAttention.start_at_identity] makes any block (a user's too)
    start as the identity, for inserting gates into a trained network without changing its output.

    Class attribute ``default_placement`` says where ``attention_resnet`` puts the block when the
    user does not choose: "every_block" (SE, CBAM, ECA, GCT, as in their papers) or "stage_end".
    """

    default_placement: str = "every_block"
    #: the name `csa_lightning.attention.register_attention` gave the class (absent if it has none)
    registered_name: str
    #: options under which backward is the exact derivative of forward, for the block check kit's
    #: float64 gradcheck (a block that deliberately treats a quantity as a constant names the switch)
    exact_gradient_options: Dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _accepting_factory_kwargs(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        # a hook point, not a layer: forward hooks on it see the gate p (N, C, 1, 1) as the block
        # uses it, without recomputing anything (GateStatistics does this); no parameters
        self.gate_output = nn.Identity()
        # None unless start_at_identity() was called: then a (C,) blend of the gate with 1
        self.register_parameter("identity_blend", None)

    def start_at_identity(self) -> "ChannelAttention":
        """Start as the identity: the gate p is used as ``1 + a * (p - 1)`` with a learnable per-channel
        ``identity_blend`` a that starts at 0, so the block's output equals its input exactly before the
        first step (1 is exact in every float type), whatever p starts at (SE's ~0.5, GCT's ~0.89). The
        gradient of a is not zero, so a leaves 0 at the first step, and the gate's own parameters get
        gradients from the next (no block stays frozen at identity). Adds the state-dict key
        ``identity_blend``; returns the block."""
        weight = next(iter(self.parameters()), None)
        device, dtype = (weight.device, weight.dtype) if weight is not None else (None, None)
        self.identity_blend = nn.Parameter(torch.zeros(self.channels, device=device, dtype=dtype))
        return self

    def _blended(self, p: Tensor) -> Tensor:
        if self.identity_blend is None:
            return p
        # p is (N, C, 1, 1) as forward uses it, or (N, C) as descriptors report it
        return 1 + self.identity_blend.to(p.dtype).view(1, -1, *([1] * (p.dim() - 2))) * (p - 1)

    def gate(self, x: Tensor) -> Tensor:
        """Per-channel weights of shape (N, C, 1, 1) for a feature map of shape (N, C, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} must implement gate(x)")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return x * self.gate_output(self._blended(self.gate(x)))

    def descriptors(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-channel descriptors, each (N, C): "z" (standardised GAP) and "p" (the gate)."""
        self._check_input(x)
        return {
            "z": standardize(global_avg_pool(x)),
            "p": self._blended(self.gate(x)).flatten(1),
        }

    def extra_macs(self, input_shape: torch.Size) -> int:
        """Multiply-adds per sample beyond convolutions and linear layers (0 unless overridden)."""
        return 0

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.channels} channels and expects (N, "
                f"{self.channels}, H, W), got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


# the base's own __init__ too: a subclass that defines none inherits it, and timm passes it device / dtype
ChannelAttention.__init__ = _accepting_factory_kwargs(ChannelAttention.__init__)  # type: ignore[method-assign]


def start_gates_at_identity(model: nn.Module) -> int:
    """[`start_at_identity`][csa_lightning.attention.ChannelAttention.start_at_identity] on every block in ``model``;
    returns how many."""
    gates = [m for m in model.modules() if isinstance(m, ChannelAttention)]
    for gate in gates:
        gate.start_at_identity()
    return len(gates)


class MLPGate(ChannelAttention):
    """Base of the gates that excite a pooled descriptor through a
    [`ReductionMLP`][csa_lightning.attention.ReductionMLP] (SE, CBAM)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__(channels)
        self.reduction = reduction
        self.mlp = ReductionMLP(channels, reduction)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"
