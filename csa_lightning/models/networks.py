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
family is one new [`ClassifierSpec`][csa_lightning.models.ClassifierSpec] (or
[`DetectorSpec`][csa_lightning.models.DetectorSpec]) subclass: its ``__init__`` takes plain values and stores each under
the same attribute name, and ``build()`` returns the ``nn.Module``.
"""

from __future__ import annotations

from typing import Any, Mapping, Type, Union

from torch import nn

from ..spec import Spec, spec_from_config

__all__ = ["NetworkSpec", "ClassifierSpec", "DetectorSpec", "network_spec", "default_placement"]


class NetworkSpec(Spec):
    """Base of network specs: ``build()`` makes the module; ``config()`` gives back what made the spec."""

    #: outputs of the classifier / object categories of the detector (background excluded)
    num_classes: int

    def build(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")


class ClassifierSpec(NetworkSpec):
    """Spec of an image classifier: ``build()`` returns a module mapping (N, 3, H, W) to (N, num_classes)."""


class DetectorSpec(NetworkSpec):
    """Spec of a torchvision-style detector: ``build()`` returns a module taking (images, targets)."""


def network_spec(value: Union[NetworkSpec, Mapping[str, Any]], base: Type[NetworkSpec] = NetworkSpec) -> NetworkSpec:
    """A spec as given, or one rebuilt from its ``config()`` (a checkpoint's hyperparameters).

    Only subclasses of ``base`` are accepted, so a checkpoint cannot name an arbitrary class.
    """
    return spec_from_config(value, base, "net")


def default_placement(placement: Any) -> Any:
    """None for "default" (and for a null that jsonargparse turned into the string "None" in a
    nested override): the network's own default placement; any other value unchanged."""
    if isinstance(placement, str) and placement.strip().lower() in ("default", "none", "null"):
        return None
    return placement
