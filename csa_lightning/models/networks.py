"""Network specs: a network described by plain values, which a task takes as its ``net``.

A task (``ClassificationModule``, ``DetectionModule``) does not repeat its network's arguments: it
takes a spec as a typed sub-config, as lightning-hydra-template injects ``net``::

    model:
      class_path: csa_lightning.tasks.ClassificationModule
      init_args:
        net:
          class_path: csa_lightning.models.ResNetSpec
          init_args: {depth: 50, attention: csa, num_classes: 1000}

and switches such as ``--model.net.attention se`` change it from the command line. The task stores
``spec.config()`` (class_path and init_args, plain values) in its hyperparameters, so
``Module.load_from_checkpoint(path)`` rebuilds the network without the config. A new backbone
family is one new :class:`ClassifierSpec` (or :class:`DetectorSpec`) subclass: its ``__init__``
takes plain values and stores each under the same attribute name, and ``build()`` returns the
``nn.Module``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, Mapping, Union

from torch import nn

__all__ = ["NetworkSpec", "ClassifierSpec", "DetectorSpec", "network_spec", "default_placement"]


class NetworkSpec:
    """Base of network specs: ``build()`` makes the module; ``config()`` gives back what made the spec."""

    #: outputs of the classifier / object categories of the detector (background excluded)
    num_classes: int

    def build(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def config(self) -> Dict[str, Any]:
        """{"class_path": ..., "init_args": {...}}: every ``__init__`` argument, read back from the
        attribute of the same name (plain values only, so a checkpoint's hyperparameters stay plain)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise TypeError(f"{type(self).__name__} must store its arguments as attributes; missing {missing}")
        return {
            "class_path": _public_path(type(self)),
            "init_args": {n: _plain(getattr(self, n)) for n in names},
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config()["init_args"].items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetworkSpec) and self.config() == other.config()


class ClassifierSpec(NetworkSpec):
    """Spec of an image classifier: ``build()`` returns a module mapping (N, 3, H, W) to (N, num_classes)."""


class DetectorSpec(NetworkSpec):
    """Spec of a torchvision-style detector: ``build()`` returns a module taking (images, targets)."""


def _public_path(cls: type) -> str:
    """The shortest import path of ``cls`` ("csa_lightning.models.ResNetSpec", not the defining
    module's), the spelling configs use, so a saved spec and a config compare equal."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = importlib.import_module(".".join(parts[:end]))
        if getattr(module, cls.__qualname__, None) is cls:
            return f"{module.__name__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def network_spec(value: Union[NetworkSpec, Mapping[str, Any]], base: type = NetworkSpec) -> NetworkSpec:
    """A spec as given, or one rebuilt from its ``config()`` (a checkpoint's hyperparameters).

    Only subclasses of ``base`` are accepted, so a checkpoint cannot name an arbitrary class.
    """
    if isinstance(value, base):
        return value
    if isinstance(value, NetworkSpec):
        raise TypeError(f"net must be a {base.__name__}, got a {type(value).__name__}")
    if not isinstance(value, Mapping) or "class_path" not in value:
        raise TypeError(f"net must be a {base.__name__} or a {{class_path, init_args}} mapping, got {value!r}")
    module_name, _, name = str(value["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import network spec '{value['class_path']}': {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"'{value['class_path']}' is not a {base.__name__} subclass")
    return cls(**dict(value.get("init_args") or {}))


def default_placement(placement: Any) -> Any:
    """None for "default" (and for a null that jsonargparse turned into the string "None" in a
    nested override): the network's own default placement; any other value unchanged."""
    if isinstance(placement, str) and placement.strip().lower() in ("default", "none", "null"):
        return None
    return placement
