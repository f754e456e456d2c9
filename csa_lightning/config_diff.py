"""Configurations as plain values, and where two differ: what a resumed run, an evaluation and the
ablation's stale check compare (a checkpoint's hyperparameters with the command's, a run folder's
resolved configuration with the plan's). Public: the CLI and the ablation runner both use it."""

from __future__ import annotations

__all__ = ["comparable", "plain_config", "differences", "first_difference"]


def comparable(value):
    """Plain, YAML-shaped values (Namespaces, tuples and paths made dicts, lists and strings)."""
    import yaml

    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return yaml.safe_load(yaml.safe_dump(plain_config(value)))


def plain_config(value):
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def differences(then, now, key: str = "") -> list:
    """(dotted key, value then, value now) of every difference, the network's first."""
    if isinstance(then, dict) and isinstance(now, dict):
        keys = sorted(set(then) | set(now), key=lambda k: (k not in ("net", "init_args", "class_path"), k))
        return [d for k in keys for d in differences(then.get(k), now.get(k), f"{key}.{k}" if key else str(k))]
    return [] if then == now else [(key.replace(".init_args", ""), then, now)]


def first_difference(then, now, key: str = ""):
    """(dotted key, value then, value now) of the first difference, or None."""
    found = differences(then, now, key)
    return found[0] if found else None
