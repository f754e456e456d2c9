"""The attention ResNets by the names people load models with: ``{block}_resnet{depth}`` ("csa_resnet50",
"se_resnet18", a plugin's "srm_resnet34") for every block the name resolver knows (built-ins and
installed plugins) and every depth, through timm's model registry and torch.hub's entry points.

timm: the names are registered when both ``csa_lightning`` and ``timm`` are imported, in either order
(``csa_lightning/__init__.py``), so ``timm.create_model("csa_resnet50", num_classes=10)`` works in a
script that imports both; a block defined after that gets its names from `register_timm_names`.
Names timm already has are left to timm (its own models are never shadowed). Weights come through
timm's pretrained config: a local file (``pretrained_cfg_overlay=dict(file="model.safetensors")``), a
model folder (``timm.create_model("local-dir:FOLDER")``) or a hub repository (``"hf-hub:USER/REPO"``);
a model folder is what ``python -m csa_lightning.publish`` writes (`csa_lightning.models.model_folder`).

torch.hub: ``hubconf.py`` at the repository root exposes `hub_entrypoints`:
``torch.hub.load("OWNER/csa-lightning", "csa_resnet50", num_classes=10, weights="FOLDER")``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..attention import available_attentions
from .attention_resnet import RESNET_LAYOUTS, AttentionResNet
from .model_folder import load_model_folder, model_name, timm_pretrained_cfg

__all__ = ["model_names", "register_timm_names", "hub_entrypoints", "default_cfgs"]

#: timm reads each registered name's pretrained config from its module's ``default_cfgs`` (filled below)
default_cfgs: Dict[str, Any] = {}


def model_names(attentions: Optional[Sequence[str]] = None) -> Dict[str, Tuple[str, int]]:
    """{name: (block, depth)} for ``attentions`` (default: every block the resolver knows) and every depth."""
    blocks = [a for a in (attentions if attentions is not None else available_attentions()) if a != "none"]
    return {model_name(a, depth): (a, depth) for a in blocks for depth in sorted(RESNET_LAYOUTS)}


def _timm_entrypoint(name: str, attention: str, depth: int) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg

        in_chans = kwargs.pop("in_chans", 3)
        if in_chans != 3:
            raise ValueError(f"{name} takes 3-channel images (in_chans=3), got in_chans={in_chans}")
        return build_model_with_cfg(
            AttentionResNet, name, pretrained, depth=depth, attention=attention, kwargs_filter=("in_chans",), **kwargs
        )  # timm adds in_chans from input_size

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__  # timm files an entry point under its function's module and name
    create.__doc__ = f"ResNet-{depth} with {attention} gates (csa_lightning.models.AttentionResNet)."
    return create


def register_timm_names(attentions: Optional[Sequence[str]] = None) -> List[str]:
    """Register ``{block}_resnet{depth}`` in timm's model registry for ``attentions`` (default: every block
    the resolver knows); returns the names registered now (names timm has, its own or already ours, are
    skipped)."""
    import timm
    from timm.models import generate_default_cfgs, register_model

    registered = []
    for name, (attention, depth) in model_names(attentions).items():
        if timm.is_model(name):
            continue
        default_cfgs.update(generate_default_cfgs({name: timm_pretrained_cfg(name)}))
        register_model(_timm_entrypoint(name, attention, depth))
        registered.append(name)
    return registered


def _hub_entrypoint(name: str, attention: str, depth: int) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, weights: Optional[str] = None, **kwargs: Any) -> nn.Module:
        if weights is not None:
            model = load_model_folder(weights)
            if (model.build_args["attention"], model.build_args["depth"]) != (attention, depth):
                raise ValueError(f"{weights} holds a {model_name(model.build_args['attention'], model.depth)}, "
                                 f"not a {name}; load it by its own name")  # fmt: skip
            return model
        if pretrained:
            raise ValueError(f"no weights are published for {name}; pass weights=FOLDER (a model folder that "
                             "python -m csa_lightning.publish wrote) or pretrained=False")  # fmt: skip
        return AttentionResNet(depth, attention, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__doc__ = (f"ResNet-{depth} with {attention} gates. pretrained=False builds it (keyword arguments as "
                      "AttentionResNet's: num_classes, placement, attention_options); weights=FOLDER loads a model "
                      "folder.")  # fmt: skip
    return create


def hub_entrypoints() -> Dict[str, Callable[..., nn.Module]]:
    """torch.hub's entry points, one per name (``hubconf.py`` exposes them)."""
    return {name: _hub_entrypoint(name, *block_depth) for name, block_depth in model_names().items()}
