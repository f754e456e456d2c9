"""The ``ChannelAttention`` interface, the attention registry and the pieces the blocks share.

Every block is an ``nn.Module`` built as ``Cls(channels, **options)`` that maps a feature map
``x`` of shape (N, C, H, W) to per-channel weights ``gate(x)`` of shape (N, C, 1, 1) and returns
``x * gate(x)``. ``descriptors(x)`` exposes the intermediate per-channel quantities the analysis
tools plot. This module imports torch only, so ``csa_lightning.attention`` can be copied into
another project on its own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any, Callable, Dict, Optional, Type, Union

import torch
from torch import Tensor, nn

__all__ = [
    "PAPER_ATTENTIONS",
    "ChannelAttention",
    "ReductionMLP",
    "MLPGate",
    "register_attention",
    "build_attention",
    "construct_attention",
    "resolve_attention",
    "available_attentions",
    "attention_key",
    "attention_name",
    "start_gates_at_identity",
    "attention_names",
    "ENTRY_POINT_GROUP",
    "standardize",
    "global_avg_pool",
    "PLACEMENTS",
    "autocast_disabled",
    "sqrt_zero_safe",
    "check_int",
    "check_number",
    "check_flag",
]

#: the comparison of the CSA paper (Table 1): no gate, then SE, CBAM's channel gate, ECA, GCT and CSA;
#: what the ablation runner, the benchmark and the summary compare unless told otherwise
PAPER_ATTENTIONS = ("none", "se", "cbam", "eca", "gct", "csa")

#: The placements ``attention_resnet`` understands by name (a list of [stage, block] pairs also works).
PLACEMENTS = ("stage_end", "every_block")

_REGISTRY: Dict[str, Type["ChannelAttention"]] = {}
_NONE_NAMES = ("none",)


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
    #: options under which backward is the exact derivative of forward, for the block check kit's
    #: float64 gradcheck (a block that deliberately treats a quantity as a constant names the switch)
    exact_gradient_options: Dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _accepting_factory_kwargs(cls.__dict__["__init__"])

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
        factory = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
        self.identity_blend = nn.Parameter(torch.zeros(self.channels, **factory))
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
ChannelAttention.__init__ = _accepting_factory_kwargs(ChannelAttention.__init__)


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


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_attention(name: str) -> Callable[[Type[ChannelAttention]], Type[ChannelAttention]]:
    """Class decorator: make a ChannelAttention subclass buildable by ``name``.

    >>> @register_attention("my_gate")
    ... class MyGate(ChannelAttention): ...

    A package outside this repository can instead (or as well) declare its blocks under the
    entry-point group `csa_lightning.attention.base.ENTRY_POINT_GROUP` in its ``pyproject.toml``; every tool then finds
    them without importing the package first.
    """
    key = attention_key(name)
    if key in _NONE_NAMES:
        raise ValueError(f"'{name}' is reserved: it means 'no attention'")
    if "." in key or ":" in key:
        raise ValueError(f"'{name}' cannot name a block: a dot or a colon means an import path; drop it")

    def decorator(cls: Type[ChannelAttention]) -> Type[ChannelAttention]:
        if not (isinstance(cls, type) and issubclass(cls, ChannelAttention)):
            raise TypeError(f"register_attention('{name}') expects a ChannelAttention subclass, got {cls!r}")
        existing = _REGISTRY.get(key)
        # the same module and name again is a re-import (importlib.reload, a re-run notebook cell)
        if existing is not None and _origin(existing) != _origin(cls):
            raise ValueError(
                f"attention name '{key}' is already registered to {_origin(existing)}; {_origin(cls)} cannot "
                f"take it too: register it under another name"
            )
        _REGISTRY[key] = cls
        cls.registered_name = key
        return cls

    return decorator


#: the entry-point group under which installed packages declare their blocks, in their pyproject.toml:
#: ``[project.entry-points."csa_lightning.attention"]`` then ``srm = "your_project.srm:SRM"``
ENTRY_POINT_GROUP = "csa_lightning.attention"

_PLUGIN_CACHE: Dict[tuple, Dict[str, list]] = {}


def attention_key(spec: str) -> str:
    """The one spelling of an attention name: stripped; a short name lower-cased ("CSA" -> "csa", ""
    -> "none"); a dotted import path ("mypkg.blocks.MyGate") kept as written, its case included."""
    text = str(spec).strip()
    if "." in text or ":" in text:
        return text
    return text.lower() or "none"


def _plugins() -> Dict[str, list]:
    """{short name: [entry points]} declared under `csa_lightning.attention.base.ENTRY_POINT_GROUP` by the installed
    distributions visible on ``sys.path`` now. Nothing is imported here: a plugin loads when its
    name is looked up, so a broken one breaks that name only."""
    import sys
    from importlib import metadata

    key = tuple(sys.path)
    if key not in _PLUGIN_CACHE:
        found: Dict[str, list] = {}
        _UNUSABLE.clear()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if "." in ep.name or ":" in ep.name or not ep.name.strip():
                # a name with a dot reads as an import path and could never be looked up: left out, and
                # said once when the names are listed (`csa_lightning.attention.base.unusable_plugin_names`)
                _UNUSABLE.add(_entry_point_origin(ep))
                continue
            same = found.setdefault(attention_key(ep.name), [])
            if all(other.value != ep.value for other in same):  # one package seen twice on the path
                same.append(ep)
        _PLUGIN_CACHE.clear()
        _PLUGIN_CACHE[key] = found
        if _UNUSABLE:
            import warnings

            warnings.warn(
                f"ignoring entry point(s) of group {ENTRY_POINT_GROUP} whose name contains '.' or ':' (it reads "
                f"as an import path): {', '.join(sorted(_UNUSABLE))}; rename them in their package's pyproject.toml",
                stacklevel=2,
            )
    return _PLUGIN_CACHE[key]


#: entry points whose names no tool can look up (a dot or colon reads as an import path)
_UNUSABLE: set = set()


def unusable_plugin_names() -> list[str]:
    """The installed entry points whose names cannot be used as block names, each with its package."""
    _plugins()
    return sorted(_UNUSABLE)


def _entry_point_origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    where = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
    return f"{ep.value.replace(':', '.')} (entry point '{ep.name}' of {where})"


def _sources(key: str) -> list:
    """The distinct definitions of a short name: a registered class and/or entry points."""
    sources: list = []
    registered = _REGISTRY.get(key)
    if registered is not None:
        sources.append(registered)
    for ep in _plugins().get(key, []):
        if registered is not None and ep.value.replace(":", ".") == _origin(registered):
            continue  # the plugin's class registered itself under its entry point's name: one source
        sources.append(ep)
    return sources


def _clash(key: str, sources: list) -> ValueError:
    names = [_origin(s) + " (registered)" if isinstance(s, type) else _entry_point_origin(s) for s in sources]
    return ValueError(
        f"attention name '{key}' is defined twice: {' and '.join(names[:2])}; rename one (an entry point's "
        f"name is set in its package's pyproject.toml) or uninstall one package"
    )


def available_attentions() -> list[str]:
    """Every attention name a tool accepts, "none" (no gate) first: the registered blocks and those
    installed packages declare as entry points (listed, not imported). A name defined twice is an error."""
    names = set(_REGISTRY) | set(_plugins())
    for key in sorted(names):
        sources = _sources(key)
        if len(sources) > 1:
            raise _clash(key, sources)
    return ["none", *sorted(names)]


AttentionSpec = Union[None, str, Type[ChannelAttention]]


def resolve_attention(spec: AttentionSpec) -> Optional[Type[ChannelAttention]]:
    """Turn a spec into a ChannelAttention class, or None for no attention: the one resolver of
    names every tool calls.

    ``spec`` is None / "none", a short name in any case ("CSA"; registered, or declared by an
    installed package under `csa_lightning.attention.base.ENTRY_POINT_GROUP`), a dotted import path
    ("mypkg.blocks.MyGate", imported on demand, case kept), or a ChannelAttention subclass.
    """
    if spec is None:
        return None
    if isinstance(spec, type):
        if issubclass(spec, ChannelAttention):
            return spec
        raise TypeError(f"attention class must subclass ChannelAttention, got {_origin(spec)}")
    if not isinstance(spec, str):
        raise TypeError(f"attention must be a name, a dotted path or a ChannelAttention subclass, got {spec!r}")
    key = attention_key(spec)
    if key in _NONE_NAMES:
        return None
    if "." in key or ":" in key:
        return _import_attention(key)
    sources = _sources(key)
    if len(sources) > 1:
        raise _clash(key, sources)
    if not sources:
        import difflib

        known = available_attentions()
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(
            f"unknown attention '{spec.strip()}'{hint}: choose one of {', '.join(known)}, give a dotted import "
            f"path such as 'mypkg.blocks.MyGate', or install a package declaring it under the entry-point "
            f"group '{ENTRY_POINT_GROUP}'"
        )
    source = sources[0]
    if isinstance(source, type):
        return source
    try:
        cls = source.load()
    except Exception as err:  # noqa: BLE001  (any error of a plugin's import is that plugin's, and one line)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"attention '{key}': {_entry_point_origin(source)} fails to load ({type(err).__name__}: {first}); "
            f"fix that package or uninstall it"
        ) from err
    return _check_class(cls, f"attention '{key}' ({_entry_point_origin(source)})")


def _check_class(cls: Any, what: str) -> Type[ChannelAttention]:
    if not (isinstance(cls, type) and issubclass(cls, ChannelAttention)):
        kind = type(cls).__name__ if not isinstance(cls, type) else f"class {_origin(cls)}"
        raise TypeError(
            f"{what} is a {kind}, not a ChannelAttention subclass; point it to a class that subclasses "
            f"csa_lightning.attention.ChannelAttention"
        )
    return cls


def _import_attention(path: str) -> Type[ChannelAttention]:
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"attention '{path}': expected a dotted import path such as 'mypkg.blocks.MyGate'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import attention '{path}': {err}; install its package (pip install -e PATH) or put the "
            f"folder that holds '{module_name.split('.')[0]}' on PYTHONPATH"
        ) from err
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"module '{module_name}' has no attribute '{attr}' (attention '{path}'); check the name")
    return _check_class(cls, f"attention '{path}'")


def attention_name(spec: AttentionSpec) -> str:
    """The canonical name of an attention spec, after checking that it resolves: what tools print,
    label rows with and pass on ("none", "csa", "mypkg.blocks.MyGate"). Raises as
    [`resolve_attention`][csa_lightning.attention.resolve_attention]."""
    cls = resolve_attention(spec)
    if isinstance(spec, type):
        return getattr(cls, "registered_name", None) or _origin(cls)
    return attention_key(spec) if spec is not None else "none"


def attention_names(text: str) -> list[str]:
    """A comma-separated list of attention specs (a tool's ``--attentions``) as canonical names, each
    checked by [`resolve_attention`][csa_lightning.attention.resolve_attention] (the first that does not resolve raises
    its one-line error)."""
    return [attention_name(part) for part in str(text).split(",") if part.strip()]


def build_attention(spec: AttentionSpec, channels: int, **options) -> Optional[ChannelAttention]:
    """Build the block ``spec`` names for ``channels`` channels, or return None for "none"."""
    cls = resolve_attention(spec)
    if cls is None:
        if options:
            raise ValueError(f"attention 'none' takes no options, got {sorted(options)}")
        return None
    return construct_attention(cls, channels, options)


def construct_attention(cls: Type[ChannelAttention], channels: int, options: Dict) -> ChannelAttention:
    """``cls(channels, **options)`` for an already resolved class, with a clear error for bad options."""
    try:
        return cls(channels, **options)
    except TypeError as err:
        raise TypeError(f"cannot build attention {cls.__name__}({channels}, **{options}): {err}") from err
