"""jsonargparse's parse errors as one line: the key, what is wrong, and the fix.

jsonargparse nests the message of every Union alternative over many lines (a bad optimiser class
came out as ``Problem with given class_path 'csa_lightning.tasks.ClassificationModule':`` and
nothing else); this reads the innermost key and reason and says them in the project's words: a class
not found (with the closest name), a class of the wrong kind (not an optimiser, not a Schedule), an
option a piece does not take (with what it takes), a value of the wrong type (``nan`` and ``inf``
where a finite number is expected). The text it reads is jsonargparse's; tests/test_bad_values.py
checks every case against the pinned version.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import List, Optional

__all__ = ["parse_error_line", "one_line"]


def one_line(err: BaseException) -> str:
    """The useful line of an error: jsonargparse wraps errors raised while instantiating classes
    in a list of what each Union member said; keep the one that is not 'Expected a NoneType'."""
    text = str(err)
    if "Does not validate against any of the Union subtypes" in text:
        reasons = [
            line.strip()[2:]
            for line in text.splitlines()
            if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line
        ]
        if reasons:
            text = reasons[0]
    return " ".join(text.split())


def _import(path: str):
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _parameters(path: str) -> List[str]:
    try:
        return [p for p in inspect.signature(_import(path)).parameters if p not in ("self", "params", "kwargs")]
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return []


def _closest_class(path: str) -> Optional[str]:
    """The closest existing name in the module ``path`` points into (``torch.optim.Adamw`` -> AdamW)."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - no module, no suggestion
        return None
    names = [n for n in dir(module) if not n.startswith("_") and inspect.isclass(getattr(module, n, None))]
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f"{module_name}.{lowered[close[0]]}" if close else None


def _key(text: str) -> str:
    """The dotted key of the innermost problem: ``model`` + ``optimizer`` + ``lr`` -> model.optimizer.lr."""
    keys: List[str] = []
    for key in re.findall(r'Parser key "([^"]+)"', text):
        key = key.replace(".init_args.", ".").removeprefix("init_args.")
        if not keys or keys[-1] != key:
            keys.append(key)
    return ".".join(keys)


def _given(text: str) -> str:
    """The value the user gave (jsonargparse's NestedArg(key=..., val=...) repr unwrapped)."""
    values = re.findall(r"Given value: (.*?)(?:\. Got value: .*)?$", text, flags=re.MULTILINE)
    value = values[0] if values else ""
    nested = re.match(r"NestedArg\(key='[^']*', val=(.*)\)$", value)
    if nested:
        value = nested.group(1).strip("'\"")
    return value


def parse_error_line(err: BaseException) -> str:
    """One line for a jsonargparse parse error of ``cli.py``."""
    text = str(err)
    key = _key(text)
    piece = re.search(r"Got value: Namespace\(class_path='([^']+)'", text)
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    if unknown and piece:  # an argument the chosen optimiser or schedule does not take
        name = unknown.group(1).split(".")[-1]
        takes = _parameters(piece.group(1))
        close = difflib.get_close_matches(name, takes, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{key}: {piece.group(1)} takes no option '{name}'{hint}; it takes {', '.join(takes) or 'no options'}"
    owners = re.findall(r"Problem with given class_path '([^']+)'", text)
    if unknown and owners:
        name = unknown.group(1).split(".")[-1]
        owner = owners[-1]
        params = _parameters(owner)
        close = difflib.get_close_matches(name, params, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        from .tasks.legacy import LEGACY_OPTIONS

        if name in LEGACY_OPTIONS and {"optimizer", "lr_schedule"} <= set(params):
            hint = f": the optimiser and the lr schedule are pieces now; use model.{LEGACY_OPTIONS[name]}"
        return f"{owner.rpartition('.')[2]} has no option '{unknown.group(1)}'{hint}"
    path = re.search(r"Expected a path but (\S+) either not accessible or invalid", text)
    given: str = path.group(1) if path else _given(text)
    if re.search(r"has no attribute|No module named|not accessible|Unable to import", text) and re.search(
        r"has no attribute '|No module named '", text
    ):
        closest = _closest_class(given)
        hint = f"; did you mean {closest}?" if closest else "; give the full import path of a class"
        return f"{key}: class {given} not found{hint}"
    if "to be a subclass of <class 'Optimizer'>" in text:
        return f"{key}: {given} is not an optimiser (a torch.optim.Optimizer subclass); name one, e.g. torch.optim.SGD"
    if "does not correspond to a subclass of Schedule" in text:
        return (
            f"{key}: {given} is not a csa_lightning.tasks.Schedule (the module steps its own schedule piece, so "
            "torch's lr schedulers do not fit here); use csa_lightning.tasks.StepDecay or "
            "csa_lightning.tasks.CosineDecay, or subclass Schedule"
        )
    choices = re.findall(r"Expected a typing\.Literal\[(.*?)\]\s*$", text, flags=re.MULTILINE)
    if key and choices:
        return f"option '{key}' expects one of {', '.join(choices)}; got {given or '?'}"
    expected = [e for e in re.findall(r"Expected a <class '([^']+)'>", text) if e != "NoneType"]
    expected = list(dict.fromkeys(expected))
    if key and expected:
        if given.lower().lstrip("+-") in ("nan", "inf", "infinity", ".nan", ".inf") and "float" in expected:
            return f"option '{key}' expects a finite number, got {given}"
        return f"option '{key}' expects {' or '.join(expected)}, got {given!r}"
    return one_line(err)
