"""Block names: the registry that ``@register_attention("name")`` fills, installed plugins (entry points),
dotted import paths, and the one resolver every tool uses (`resolve_attention`), with clash detection.
Imports torch only (through the block interface)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Optional, Type, Union

from .base import ChannelAttention

__all__ = [
    "PAPER_ATTENTIONS",
    "register_attention",
    "build_attention",
    "construct_attention",
    "resolve_attention",
    "available_attentions",
    "attention_key",
    "attention_name",
    "attention_names",
    "unusable_plugin_names",
    "ENTRY_POINT_GROUP",
    "AttentionSpec",
]

#: the comparison of the CSA paper (Table 1): no gate, then SE, CBAM's channel gate, ECA, GCT and CSA;
#: what the ablation runner, the benchmark and the summary compare unless told otherwise
PAPER_ATTENTIONS = ("none", "se", "cbam", "eca", "gct", "csa")

_REGISTRY: Dict[str, Type[ChannelAttention]] = {}
_NONE_NAMES = ("none",)


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_attention(name: str) -> Callable[[Type[ChannelAttention]], Type[ChannelAttention]]:
    """Class decorator: make a ChannelAttention subclass buildable by ``name``.

    >>> @register_attention("my_gate")
    ... class MyGate(ChannelAttention): ...

    A package outside this repository can instead (or as well) declare its blocks under the
    entry-point group `csa_lightning.attention.registry.ENTRY_POINT_GROUP` in its ``pyproject.toml``; every
    tool then finds them without importing the package first.
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
    """{short name: [entry points]} declared under `csa_lightning.attention.registry.ENTRY_POINT_GROUP` by the installed
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
                # said once when the names are listed (`csa_lightning.attention.registry.unusable_plugin_names`)
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
    installed package under `csa_lightning.attention.registry.ENTRY_POINT_GROUP`), a dotted import path
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
        return getattr(cls, "registered_name", None) or _origin(spec)
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
