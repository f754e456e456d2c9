"""MkDocs hook: the development page's table of test files, built from each file's own docstring.

One place for what a test file covers (its docstring); the table on the site is made from it when
the site is built, so adding a test file adds its row. The marker ``<!-- tests by file -->`` in
docs/development.md is where the table goes.
"""

from __future__ import annotations

import ast
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest (the dev extra) brings there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tests by file -->"
#: the project's pytest marks (they decide which make target runs a test), as pyproject.toml declares them
TARGET_MARKS = {
    line.split(":")[0]
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
}


def rows(tests: Path = ROOT / "tests") -> list[str]:
    table = ["| File | Marks | What it checks |", "| --- | --- | --- |"]
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree)
        if not doc:
            raise ValueError(f"{path.relative_to(ROOT)} has no module docstring: say in one sentence what it checks")
        first_paragraph = " ".join(doc.split("\n\n")[0].split())
        marks = sorted(
            {
                node.attr
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute)
                and node.attr in TARGET_MARKS
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"
            }
        )
        cell = first_paragraph.replace("|", "\\|")
        table.append(f"| `{path.relative_to(ROOT)}` | {', '.join(marks)} | {cell} |")
    return table


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri != "development.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/development.md lost the marker {MARKER!r} where the tests table goes")
    return markdown.replace(MARKER, "\n".join(rows()))
