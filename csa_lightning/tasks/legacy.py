"""Checkpoints and configs from before the optimiser and the lr schedule were config pieces, in one place.

Their flat recipe (``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule``, ``milestones``,
``gamma``, warm-up) is rewritten as pieces with the same numbers by one function,
`upgrade_recipe_hparams`, which every reader calls: ``load_from_checkpoint``
(`read_checkpoint_hparams`), the CLI's merge of a checkpoint's hyperparameters and its reading of a
run's saved config.yaml; the config-error reader names the new key of an old option
(`LEGACY_OPTIONS`). New code never writes the old form.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, Mapping, Optional

from ..spec import plain

__all__ = ["LEGACY_OPTIONS", "upgrade_recipe_hparams", "read_checkpoint_hparams", "full_config"]


#: the recipe options before the optimiser and schedule were pieces, and where each went
LEGACY_OPTIONS = {
    **{k: f"optimizer.{k}" for k in ("lr", "momentum", "nesterov", "weight_decay")},
    **{k: f"lr_schedule.{k}" for k in ("milestones", "gamma", "warmup_epochs", "warmup_iters", "warmup_factor")},
    "schedule": "lr_schedule (csa_lightning.tasks.StepDecay or CosineDecay)",
}
_LEGACY_KEYS = tuple(LEGACY_OPTIONS)


def upgrade_recipe_hparams(hparams: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """A module's hyperparameters (or a saved config's ``model.init_args``) from before the optimiser
    and schedule were pieces, rewritten as pieces with the same numbers: SGD with the old ``lr``,
    ``momentum``, ``nesterov`` and ``weight_decay``; ``StepDecay`` or ``CosineDecay`` with the old
    milestones and warm-up. Every argument of both is written out, as a parsed config holds them.
    None when there is nothing to upgrade."""
    if not any(k in hparams for k in _LEGACY_KEYS) or "optimizer" in hparams:
        return None
    new = {k: v for k, v in hparams.items() if k not in _LEGACY_KEYS}
    momentum = hparams.get("momentum", 0.9)
    new["optimizer"] = full_config(
        {
            "class_path": "torch.optim.SGD",
            "init_args": {
                "lr": hparams.get("lr", 0.1),
                "momentum": momentum,
                "nesterov": bool(hparams.get("nesterov", False)) and momentum > 0,
                "weight_decay": hparams.get("weight_decay", 1e-4),
            },
        }
    )
    warmup = {k: hparams[k] for k in ("warmup_epochs", "warmup_iters", "warmup_factor") if k in hparams}
    if hparams.get("schedule", "step") == "cosine":
        schedule = {"class_path": "csa_lightning.tasks.CosineDecay", "init_args": warmup}
    else:
        steps = {"milestones": list(hparams.get("milestones", (30, 60, 90))), "gamma": hparams.get("gamma", 0.1)}
        schedule = {"class_path": "csa_lightning.tasks.StepDecay", "init_args": {**steps, **warmup}}
    new["lr_schedule"] = full_config(schedule)
    new.setdefault("lr_scaling", "linear")  # the only rule there was
    return new


def full_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``{class_path, init_args}`` with every ``__init__`` argument written out (the class's
    defaults where not given), as jsonargparse writes a parsed piece."""
    module_name, _, name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    args = {}
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "params") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        given = (config.get("init_args") or {}).get(pname, param.default)
        args[pname] = None if given is inspect.Parameter.empty else given
    return {"class_path": config["class_path"], "init_args": plain(args)}


def read_checkpoint_hparams(checkpoint: Dict[str, Any]) -> bool:
    """Upgrade a loaded checkpoint's hyperparameters in place; True when they changed."""
    hparams = checkpoint.get("hyper_parameters")
    upgraded = upgrade_recipe_hparams(hparams) if isinstance(hparams, Mapping) else None
    if upgraded is None:
        return False
    checkpoint["hyper_parameters"] = upgraded
    return True
