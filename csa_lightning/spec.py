"""Specs: objects described by plain values, which a config gives as ``class_path`` / ``init_args``
and a checkpoint stores as the same plain mapping (so ``load_from_checkpoint`` rebuilds them).

A spec's ``__init__`` takes plain values and stores each under the attribute of the same name;
`csa_lightning.spec.Spec.config` reads them back. The network a task trains (`csa_lightning.models.networks`)
and its learning-rate schedule (`csa_lightning.tasks.schedules`) are specs. Standard library only.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, Mapping, Type, TypeVar, Union, cast

__all__ = ["Spec", "spec_from_config", "public_path", "plain"]


class Spec:
    """Base of specs: ``config()`` gives back what made the spec."""

    def config(self) -> Dict[str, Any]:
        """{"class_path": ..., "init_args": {...}}: every ``__init__`` argument, read back from the
        attribute of the same name (plain values only, so a checkpoint's hyperparameters stay plain)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise TypeError(f"{type(self).__name__} must store its arguments as attributes; missing {missing}")
        return {"class_path": public_path(type(self)), "init_args": {n: plain(getattr(self, n)) for n in names}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config()["init_args"].items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.config() == other.config()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: not hashable


def public_path(cls: type) -> str:
    """The shortest import path of ``cls`` ("csa_lightning.models.ResNetSpec", not the defining
    module's), the spelling configs use, so a saved spec and a config compare equal."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = importlib.import_module(".".join(parts[:end]))
        if getattr(module, cls.__qualname__, None) is cls:
            return f"{module.__name__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def plain(value: Any) -> Any:
    """Tuples made lists, mappings dicts, recursively (YAML's and a checkpoint's shapes)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


SpecT = TypeVar("SpecT", bound=Spec)


def spec_from_config(value: Union[SpecT, Mapping[str, Any]], base: Type[SpecT], what: str) -> SpecT:
    """A spec as given, or one rebuilt from its ``config()`` (a checkpoint's hyperparameters).

    Only subclasses of ``base`` are accepted, so a checkpoint cannot name an arbitrary class;
    ``what`` names the argument in errors ("net", "model.lr_schedule").
    """
    if isinstance(value, base):
        return value
    if isinstance(value, Spec):
        raise TypeError(f"{what} must be a {base.__name__}, got a {type(value).__name__}")
    if not isinstance(value, Mapping) or "class_path" not in value:
        raise TypeError(f"{what} must be a {base.__name__} or a {{class_path, init_args}} mapping, got {value!r}")
    module_name, _, name = str(value["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {what} '{value['class_path']}': {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{what}: '{value['class_path']}' is not a {base.__name__} subclass")
    return cast(SpecT, cls(**dict(value.get("init_args") or {})))
