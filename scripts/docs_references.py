"""Every reference to a csa_lightning name, in the docstrings and the manual, names an object that exists.

An MkDocs hook (mkdocs.yml ``hooks:``), so ``make docs --strict`` fails on a stale reference. mkdocstrings
and autorefs check the cross-references ``[title][csa_lightning.x.Y]`` of the docstrings they render
(the target must be a rendered object); this covers what they do not see:

- a cross-reference in a docstring that is not rendered (a submodule's docstring, a private helper);
- a code span naming a dotted path (`` `csa_lightning.ablate.plan` ``), the form for targets the API
  reference does not render (submodules, module constants, private helpers);
- a code span naming a repository path (`` `configs/r50.yaml` ``) that does not exist;
- a reST role (``:class:`X```), which neither tool resolves or checks: write a cross-reference;
- a class or function of the API reference without a docstring of its own;
- an argument entry of a docstring's ``Args:`` list inserted into the middle of the entry above it
  (the entry above ends with an open parenthesis or a dangling word such as "see", and its sentence
  goes on below the inserted one).

It reads the sources as text and imports only to resolve a path, so a reference in a comment counts too.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Iterable, List

ROOT = Path(__file__).resolve().parent.parent
#: what is scanned: the package, the example project and the benchmarks' sources; the manual's pages
SOURCES = ("csa_lightning", "examples", "benchmarks")
PAGES = ("docs", "README.md")

REST_ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|obj|exc|const):`[^`\s]+`")
CROSS_REFERENCE = re.compile(r"\]\[(csa_lightning(?:\.\w+)+)\]")
CODE_PATH = re.compile(r"(?<![`\w])``?(csa_lightning(?:\.\w+)+)``?(?![`\w])")
#: a code span naming a file or folder of the repository (placeholders such as <name> or * are skipped)
TOP_FOLDERS = "csa_lightning|configs|tests|scripts|benchmarks|examples|docs"
FILE_PATH = re.compile(rf"(?<![`\w])``?((?:{TOP_FOLDERS})/[\w./-]*)``?(?![`\w])")

log = logging.getLogger("mkdocs.hooks.docs_references")


def resolves(path: str) -> bool:
    """Whether a dotted path names a module or an attribute reachable from one."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError as error:
            # a module of the path that does not exist: try a shorter one; a missing dependency is a
            # real failure, not a stale reference
            if error.name is not None and ".".join(parts[:split]).startswith(error.name):
                continue
            raise
        for name in parts[split:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def file_exists(path: str) -> bool:
    """A path from the repository's root, or from the example project's (its own pages name its files)."""
    return any((root / path).exists() for root in (ROOT, *sorted((ROOT / "examples").glob("*/"))))


def problems_in(path: Path, text: str) -> List[str]:
    """One line per stale reference or reST role in one file's text."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
        for role in REST_ROLE.findall(line):
            fix = "write [`Name`][csa_lightning.package.Name] (a checked cross-reference)"
            found.append(f"{where}: reST role {role}: {fix}")
        targets = CROSS_REFERENCE.findall(line) + CODE_PATH.findall(line)
        for target in dict.fromkeys(targets):
            if not resolves(target):
                found.append(f"{where}: {target} names no object (renamed or removed?): update the reference")
        for target in dict.fromkeys(FILE_PATH.findall(line)):
            if not file_exists(target):
                found.append(f"{where}: {target} is no file or folder of the repository: update the path")
    return found


ARG_ENTRY = re.compile(r"^(\s*)(\*{0,2}\w+)(?: \([^)]*\))?: ")
#: words a sentence does not end on: an entry whose text ends with one was cut
DANGLING = ("see", "of", "the", "a", "an", "and", "or", "to", "with", "for", "by", "in", "e.g.", "i.e.")


def cut_entries(path: Path, text: str) -> List[str]:
    """One line per ``Args:`` entry that starts while the entry above it is mid-sentence."""
    found = []
    lines = text.splitlines()
    in_args, entry_indent, entry_text, entry_name = False, None, "", ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            in_args, entry_indent, entry_text = True, None, ""
            continue
        if not in_args:
            continue
        indent = len(line) - len(line.lstrip())
        match = ARG_ENTRY.match(line)
        if not stripped or (entry_indent is not None and indent < entry_indent) or stripped.startswith('"""'):
            in_args = False
            continue
        if match and (entry_indent is None or indent == entry_indent):
            words = entry_text.rstrip().split()
            unfinished = entry_text.count("(") > entry_text.count(")") or entry_text.rstrip().endswith((",", ";"))
            if entry_text and (unfinished or (words and words[-1] in DANGLING)):
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
                found.append(f"{where}: the Args entry '{match.group(2)}' starts inside the sentence of "
                             f"'{entry_name}' ({entry_text.rstrip()[-40:]!r}): move it below that entry")  # fmt: skip
            entry_indent, entry_name, entry_text = indent, match.group(2), line[match.end() :]
        else:
            ended = entry_text.rstrip().endswith(".") and not entry_text.rstrip().endswith(("e.g.", "i.e."))
            if entry_text and ended and stripped[:1].islower() and entry_indent is not None and indent > entry_indent:
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
                found.append(f"{where}: the Args entry '{entry_name}' is followed by the rest of another entry's "
                             f"sentence ({stripped[:40]!r}): move that text back to its entry")  # fmt: skip
            entry_text += " " + stripped
    return found


def files(root: Path = ROOT) -> Iterable[Path]:
    for name in SOURCES:
        yield from sorted((root / name).rglob("*.py"))
    for name in PAGES:
        path = root / name
        yield from sorted(path.rglob("*.md")) if path.is_dir() else [path]


def find_problems(paths: Iterable[Path]) -> List[str]:
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        found += problems_in(path, text) + (cut_entries(path, text) if path.suffix == ".py" else [])
    return found


def undocumented(api_pages: Path = ROOT / "docs" / "api") -> List[str]:
    """One line per class or function the API reference renders (each ``::: package`` page shows
    what the package's ``__all__`` lists) that has no docstring of its own."""
    import inspect

    found = []
    for page in sorted(api_pages.glob("*.md")):
        for package in re.findall(r"^::: (\S+)", page.read_text(encoding="utf-8"), flags=re.M):
            module = importlib.import_module(package)
            for name in getattr(module, "__all__", []):
                obj = getattr(module, name)
                own = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (own or "").strip():
                    found.append(f"{package}.{name} has no docstring: the API reference shows it bare; say what it is")
    return found


def on_pre_build(config) -> None:
    """MkDocs hook: each problem is a warning, which --strict turns into a failed build."""
    for problem in find_problems(files()) + undocumented():
        log.warning(problem)
