"""Where the code of a run came from: for every class the run is built from, its package's
distribution and version, the git commit and dirty state of the checkout it sits in, and a hash of
each source file the run uses.

"The code a run uses" is, for each class a run's config names (the module, every sub-module of its
network, gates included, the data module, the callbacks) and each base class in its MRO: the file
that defines it and, transitively, every module of the same top-level package that file refers to
at module level (``from .base import X``, ``import pkg.mod``). A file's hash is that of its syntax
tree less its docstrings, so comments, docstrings and formatting do not count; a README, or a
module no such file refers to, is not part of it. The packages this project depends on (torch,
lightning, torchmetrics, ...) are recorded by distribution and version only: their code changes
when they are upgraded, which the record shows.

Standard library only, like `csa_lightning.checks`, so every layer may import it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterable, List, Optional, Set

__all__ = ["code_provenance", "changed_files", "run_classes", "named_files", "changed_named_files"]

#: this project's distribution: its declared requirements are recorded by version, not hashed
PROJECT_DISTRIBUTION = "csa-lightning"


def run_classes(*objects: Any) -> List[type]:
    """The classes ``objects`` are made of: each object's class, and for an ``nn.Module`` (anything
    with ``modules()``) the class of every sub-module; lists of objects (callbacks) are walked."""
    found: Dict[str, type] = {}

    def add(obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                add(item)
            return
        cls = obj if isinstance(obj, type) else type(obj)
        found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        modules = getattr(obj, "modules", None)
        if not isinstance(obj, type) and callable(modules):
            for sub in modules():
                sub_cls = type(sub)
                found.setdefault(f"{sub_cls.__module__}.{sub_cls.__qualname__}", sub_cls)

    for obj in objects:
        add(obj)
    return [found[name] for name in sorted(found)]


@functools.lru_cache(maxsize=None)
def _top_level_distributions() -> Dict[str, List[str]]:
    return dict(metadata.packages_distributions())  # reads every installed distribution's metadata: once


@functools.lru_cache(maxsize=None)
def _dependency_packages() -> frozenset:
    """Top-level import names of the distributions this project requires (extras included)."""
    try:
        requires = metadata.requires(PROJECT_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        requires = []
    names = {re.split(r"[\s;<>=!~\[(]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requires}
    tops = set()
    for top, dists in _top_level_distributions().items():
        if any(d.lower().replace("_", "-") in names for d in dists):
            tops.add(top)
    return frozenset(tops)


def _top(module_name: str) -> str:
    return module_name.split(".", 1)[0]


def _module_closure(start: Set[str]) -> Set[str]:
    """``start`` and every module of the same top-level package they refer to at module level."""
    seen: Set[str] = set()
    stack = list(start)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        module = sys.modules.get(name)
        if module is None or not getattr(module, "__file__", None):
            continue
        seen.add(name)
        top = _top(name)
        for value in list(vars(module).values()):
            if isinstance(value, ModuleType):
                dep = value.__name__
            elif isinstance(value, type) or callable(value):
                dep = getattr(value, "__module__", "")
            else:
                continue
            if isinstance(dep, str) and _top(dep) == top and dep not in seen:
                stack.append(dep)
    return seen


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """The tree less the docstrings of its module, classes and functions (a body of only a docstring
    keeps a ``pass`` in its place, so ``def f(): "doc"`` and ``def f(): pass`` hash alike)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def _code_hash(path: str, mtime_ns: int, size: int) -> str:
    source = Path(path).read_bytes()
    try:
        # comments, layout and docstrings do not change a run
        text = ast.dump(_without_docstrings(ast.parse(source)))
    except (SyntaxError, ValueError):
        text = source.decode("utf-8", "replace")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_hash(path: Path, hasher=_code_hash) -> str:
    """``hasher(path, mtime, size)``: a file's hash, cached until the file changes."""
    stat = path.stat()
    return hasher(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _git(folder: str) -> Optional[Dict[str, Any]]:
    def run(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=folder)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"root": run("rev-parse", "--show-toplevel"), "commit": commit, "dirty": bool(status)}


def _package_folder(top: str) -> Path:
    """The folder of a top-level package (its ``__init__.py``'s), or of a single-file module."""
    location = Path(str(sys.modules[top].__file__)).resolve()
    return location.parent if location.name == "__init__.py" else location.with_suffix("")


def _distribution(top: str) -> Dict[str, Optional[str]]:
    dists = _top_level_distributions().get(top) or []
    if not dists:
        return {"distribution": None, "version": None}
    try:
        return {"distribution": dists[0], "version": metadata.version(dists[0])}
    except metadata.PackageNotFoundError:
        return {"distribution": dists[0], "version": None}


def code_provenance(classes: Iterable[type]) -> Dict[str, Any]:
    """The provenance of ``classes`` (see the module docstring) as plain JSON values::

        {"classes": ["csa_lightning.tasks.classification.ClassificationModule", ...],
         "packages": {"csa_lightning": {"distribution": "csa-lightning", "version": "0.1.0",
                                        "path": ".../csa_lightning", "git": {"commit": ..., "dirty": false}},
                      "torch": {"distribution": "torch", "version": "2.14.1"}, ...},
         "files": {"csa_lightning/attention/csa.py": "<hash>", ...}}

    "files" covers the packages that are not this project's dependencies: this repository's and
    the user's own (installed, editable or on ``PYTHONPATH``).
    """
    classes = list(classes)
    dependencies = _dependency_packages()
    names, start = set(), set()
    for cls in classes:
        for base in cls.__mro__:
            module = base.__module__
            top = _top(module)
            if module == "builtins" or top in sys.stdlib_module_names:
                continue
            if top not in dependencies:
                names.add(f"{module}.{base.__qualname__}")
            start.add(module)
    packages: Dict[str, Dict[str, Any]] = {}
    files: Dict[str, str] = {}
    hashed = {m for m in start if _top(m) not in dependencies}
    # the dependencies by version (their classes are many: nn.Conv2d, Callback, ...), the rest by class
    for top in sorted({_top(m) for m in start}):
        entry: Dict[str, Any] = dict(_distribution(top))
        root = sys.modules.get(top)
        location: Optional[str] = getattr(root, "__file__", None)
        if location and top not in dependencies:
            folder = _package_folder(top)
            entry["path"] = str(folder)
            entry["git"] = _git(str(folder))
        packages[top] = entry
    for module_name in sorted(_module_closure(hashed)):
        path = Path(str(sys.modules[module_name].__file__)).resolve()
        package_parent = _package_folder(_top(module_name)).parent
        try:
            relative = path.relative_to(package_parent).as_posix()
        except ValueError:
            relative = path.as_posix()
        if path.suffix == ".py" and path.is_file():
            files[relative] = _file_hash(path)
    return {"classes": sorted(names), "packages": packages, "files": files}


def changed_files(then: Optional[Dict[str, str]], now: Dict[str, str]) -> List[str]:
    """The files whose code differs between two provenance "files" maps (added and removed included)."""
    then = then or {}
    return sorted(f for f in set(then) | set(now) if then.get(f) != now.get(f))


@functools.lru_cache(maxsize=256)
def _content_hash(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


#: files a folder named in a model config contributes: the checkpoints and weights it holds
_WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")


def named_files(config: Any, prefix: str = "model") -> Dict[str, Dict[str, str]]:
    """The files a model configuration names by path (a backbone's weights, a distillation
    teacher's checkpoint, ...), each by content hash: ``{key: {"path": ..., "sha256": ...}}``. A
    folder contributes every checkpoint or weights file under it (a run folder: its ``.ckpt`` files).
    So a file retrained at the same path is a changed input of every run that names it. Hashes are
    cached per (path, modification time, size) in the process."""
    found: Dict[str, Dict[str, str]] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, key if k == "init_args" else f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and value and len(value) < 4096 and ("/" in value or "." in value):
            path = Path(value).expanduser()
            try:
                if path.is_file():
                    found[key] = {"path": str(path), "sha256": _file_hash(path.resolve(), _content_hash)}
                elif path.is_dir():
                    for file in sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
                        found[f"{key}:{file.relative_to(path).as_posix()}"] = {
                            "path": str(file), "sha256": _file_hash(file.resolve(), _content_hash),
                        }  # fmt: skip
            except OSError:
                return

    walk(config, prefix)
    return found


def changed_named_files(then: Optional[Dict[str, Dict[str, str]]], now: Dict[str, Dict[str, str]]) -> List[str]:
    """The named files whose content (or presence) differs between two `named_files` maps."""
    then = then or {}
    return sorted(
        k for k in set(then) | set(now) if (then.get(k) or {}).get("sha256") != (now.get(k) or {}).get("sha256")
    )
