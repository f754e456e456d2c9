"""Channel gates in timm CNNs: at the end of every stage of any model with ``feature_info``, or in
every block of the families that have an attention slot; [`TimmSpec`][csa_lightning.models.TimmSpec] for the tasks.

timm is an optional extra (``pip install csa-lightning[timm]``; ``make`` installs it). Two ways in:

- ``placement="stage_end"`` (default): a gate after the output of each stage that timm's
  ``feature_info`` lists (the stem excluded), or of the stages named in a list. The gate sits on
  the stage's *output*, after the last residual addition, not on the residual branch as in this
  project's ResNets ([`AttentionResNet`][csa_lightning.models.AttentionResNet]), so it re-weights the whole
  stage output (identity path included). Works for every timm CNN with ``feature_info``
  (ResNet, ConvNeXt, EfficientNet, RegNet, MobileNetV3, ...). The gates are kept in
  ``model.attention_gates`` and applied by a forward hook on each stage module: none of timm's
  state-dict keys changes, so timm weights load with only the gates' keys missing.
- ``placement="blocks"``: the gate as the block's own attention layer in the families that take
  one (timm's ResNet and Res2Net ``block_args=dict(attn_layer=...)``, EfficientNet and MobileNetV3
  ``se_layer=...``): exactly where timm puts SE in ``seresnet50`` or ``efficientnet_b0``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from torch import Tensor, nn

from ..attention import ChannelAttention, resolve_attention, start_gates_at_identity
from .networks import ClassifierSpec, default_placement

__all__ = ["TimmSpec", "add_stage_gates", "timm_stage_modules", "BLOCK_SLOTS"]

#: timm model modules -> the create_model keyword that sets every block's attention layer
BLOCK_SLOTS = {
    "timm.models.resnet": "block_args.attn_layer",
    "timm.models.res2net": "block_args.attn_layer",
    "timm.models.efficientnet": "se_layer",
    "timm.models.mobilenetv3": "se_layer",
}

_STEM = re.compile(r"(^|\.)(stem|act1|bn1|conv1|conv_stem|bn_stem)(\.|$)")


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm is not installed: pip install 'csa-lightning[timm]' (make install does it)") from None
    return timm


def timm_stage_modules(model: nn.Module) -> List[str]:
    """The stage modules a timm CNN's ``feature_info`` names, its stem excluded ('layer1' .. 'layer4',
    'stages.0' .., 'blocks.1' ..)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info: name its stage modules in a list placement")
    return [f["module"] for f in info if not _STEM.search(f["module"])]


def _apply_stage_gate(stage: nn.Module, inputs, output: Tensor) -> Tensor:
    # a module-level function reading the gate off the stage itself: a deep copy of the model (EMA,
    # AveragedModel) or a pickled one then applies its own gates, never the original's
    return stage.__dict__["_stage_gate"](output)


def add_stage_gates(
    model: nn.Module,
    attention: Union[str, type],
    stages: Optional[Sequence[str]] = None,
    options: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Put a gate after the output of each stage of ``model`` (in place; returns the model).

    Args:
        model: a timm CNN (any module whose stages ``stages`` names).
        attention: a registered name ("csa", "se", ...) or a ChannelAttention class.
        stages: module names (default: `csa_lightning.models.timm_net.timm_stage_modules`).
        options: the gate's options (e.g. ``{"contiguity": "hybrid"}``).

    The gates live in ``model.attention_gates`` (an ``nn.ModuleDict`` keyed by the stage name
    with "." as "_"), so timm's own state-dict keys are unchanged; the channel count of each gate
    is the stage's output width, read from ``feature_info`` or from a dry run.
    """
    cls = resolve_attention(attention)
    if cls is None:
        return model
    names = list(stages) if stages is not None else timm_stage_modules(model)
    widths = _stage_widths(model, names)
    if hasattr(model, "attention_gates"):
        raise ValueError("this model already has stage gates (model.attention_gates)")
    model.attention_gates = nn.ModuleDict()
    for name in names:
        gate = cls(widths[name], **(options or {}))
        model.attention_gates[name.replace(".", "_")] = gate
        stage = model.get_submodule(name)
        # registered once, under attention_gates; the stage keeps a plain (unregistered) reference
        stage.__dict__["_stage_gate"] = gate
        stage.register_forward_hook(_apply_stage_gate)
    return model


def _stage_widths(model: nn.Module, names: Sequence[str]) -> Dict[str, int]:
    info = {f["module"]: f["num_chs"] for f in getattr(model, "feature_info", None) or []}
    widths = {n: info[n] for n in names if n in info}
    unknown = [n for n in names if n not in widths]
    for name in unknown:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no module '{name}'") from None
    if unknown:  # not in feature_info: one dry run on a small image finds their output widths
        import torch

        seen: Dict[str, int] = {}
        handles = [
            model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape[1]))
            for n in unknown
        ]
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        widths.update(seen)
    return widths


def _load_pretrained_around_gates(model: nn.Module, state: Dict[str, Tensor], name: str, classifier: str) -> None:
    """Load a plain network's weights into the same network with gates in its blocks' attention slots:
    every tensor but the gates' and the ``classifier`` head's (a new head of another class count) must
    load (the gates, and an attention layer the plain network had in that slot, are the only differences)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    gate_names = {n for n, m in model.named_modules() if isinstance(m, ChannelAttention)}
    outside = [
        k for k in missing if k.rsplit(".", 1)[0] != classifier and not any(k.startswith(f"{g}.") for g in gate_names)
    ]
    if outside:
        raise ValueError(f"timm's pretrained {name} leaves {len(outside)} tensors outside the gates unloaded "
                         f"(e.g. {outside[0]}); choose placement stage_end")  # fmt: skip


class TimmSpec(ClassifierSpec):
    """A timm classifier with channel gates, as a task's ``net``.

    Args:
        model_name: any timm model name (``timm.list_models()``), e.g. "resnet50", "convnext_tiny".
        attention: a registered block name or dotted class path (None / "none": the plain model).
        placement: "stage_end" (after each stage's output; any CNN with ``feature_info``),
            "blocks" (the block's own attention slot; see `csa_lightning.models.timm_net.BLOCK_SLOTS`), or a list of
            module names to gate at their output (e.g. ["stages.2", "stages.3"]).
        attention_options: the gate's options.
        num_classes: classifier outputs.
        model_kwargs: further ``timm.create_model`` arguments (drop_path_rate, ...).
        pretrained: start from timm's pretrained weights of ``model_name`` (a tag chooses which:
            "resnet50.a1_in1k"; downloaded and cached by timm, from the Hugging Face Hub), loaded before the gates
            are added, so every pretrained tensor loads and only the gates are new.
        pretrained_file: start from this file of timm weights instead (a state dict or safetensors; timm's
            ``pretrained_cfg_overlay=dict(file=...)``).
        gates_at_identity: every gate starts as the identity
            ([`start_at_identity`][csa_lightning.attention.ChannelAttention.start_at_identity]): the pretrained
            network's output is unchanged before the first step.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        attention: Optional[str] = None,
        placement: Union[str, List[str]] = "stage_end",
        attention_options: Optional[Dict[str, Any]] = None,
        num_classes: int = 1000,
        model_kwargs: Optional[Dict[str, Any]] = None,
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        gates_at_identity: bool = False,
    ) -> None:
        placement = default_placement(placement) or "stage_end"
        if isinstance(placement, str) and placement not in ("stage_end", "blocks"):
            raise ValueError(f"placement must be 'stage_end', 'blocks' or a list of module names, got '{placement}'")
        resolve_attention(attention)  # an unknown name fails here, not at build()
        self.model_name = model_name
        self.attention = attention
        self.placement = placement
        self.attention_options = dict(attention_options) if attention_options else None
        self.num_classes = num_classes
        self.model_kwargs = dict(model_kwargs) if model_kwargs else None
        self.pretrained = pretrained
        self.pretrained_file = pretrained_file
        self.gates_at_identity = gates_at_identity

    def build(self) -> nn.Module:
        timm = _timm()
        if not timm.is_model(self.model_name):  # a pretrained tag ("resnet50.a1_in1k") is part of a valid name
            import difflib

            close = difflib.get_close_matches(self.model_name, timm.list_models(), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown timm model '{self.model_name}'{hint}")
        kwargs = dict(self.model_kwargs or {})
        cls = resolve_attention(self.attention)
        if cls is not None and self.placement == "blocks":
            module = timm.models.model_entrypoint(self.model_name).__module__
            slot = BLOCK_SLOTS.get(module)
            if slot is None:
                raise ValueError(
                    f"timm model '{self.model_name}' ({module}) has no attention slot this project knows; "
                    f"use placement stage_end (known: {', '.join(sorted(BLOCK_SLOTS))})"
                )
            layer = functools.partial(cls, **(self.attention_options or {}))
            if slot == "block_args.attn_layer":
                kwargs["block_args"] = {**kwargs.get("block_args", {}), "attn_layer": layer}
            else:
                kwargs[slot] = layer
        # the head's name in timm's pretrained config ("fc", "head.fc", "classifier"): a file's head of another
        # class count is left out, and left new in the network
        classifier = timm.models.get_pretrained_cfg_value(self.model_name, "classifier") or "fc"
        weights = self._pretrained_weights(timm, classifier)
        model = timm.create_model(self.model_name, pretrained=False, num_classes=self.num_classes, **kwargs)
        if weights is not None:
            _load_pretrained_around_gates(model, weights, self.model_name, classifier)
        if cls is not None and self.placement != "blocks":
            stages = None if self.placement == "stage_end" else list(self.placement)
            add_stage_gates(model, cls, stages, self.attention_options)
        if self.gates_at_identity:
            start_gates_at_identity(model)
        return model

    def _pretrained_weights(self, timm, classifier: str) -> Optional[Dict[str, Tensor]]:
        """The pretrained state dict: the file's (read by timm's reader: safetensors, or torch.load with
        weights_only), or the plain network timm builds with its pretrained weights (its head replaced when
        ``num_classes`` differs). A file's head of another class count is left out (a new head)."""
        if self.pretrained_file:
            from timm.models import load_state_dict

            state = load_state_dict(self.pretrained_file)
            for suffix in (".weight", ".bias"):
                value = state.get(classifier + suffix)
                if value is not None and value.shape[0] != self.num_classes:
                    del state[classifier + suffix]
            return state
        if not self.pretrained:
            return None
        plain = timm.create_model(self.model_name, pretrained=True, num_classes=self.num_classes,
                                  **dict(self.model_kwargs or {}))  # fmt: skip
        return plain.state_dict()
