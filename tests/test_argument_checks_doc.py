"""docs/argument-checks.md names, for every check, the test that shows it: every named test exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_tests():
    """(file, test name) for each `test_x.py::name` and each `::name` (of the file named last before it in its
    table row, or in its paragraph)."""
    named = []
    current = None
    for line in (ROOT / "docs" / "argument-checks.md").read_text().splitlines():
        if line.startswith("|"):
            current = None  # a table row names its own files; a paragraph goes on over its lines
        for file, name in re.findall(r"`(test_\w+\.py)?(?:::(\w+))?`", line):
            if file:
                current = file
            if name:
                named.append((current, name, line[:60]))
            elif file:
                named.append((file, None, line[:60]))
    return named


def test_every_test_the_argument_checks_page_names_exists():
    missing = []
    for file, name, row in _named_tests():
        path = ROOT / "tests" / (file or "")
        if file is None or not path.is_file():
            missing.append(f"{file}::{name} (row {row!r})")
        elif name and not re.search(rf"^(async )?def {name}\(", path.read_text(), flags=re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, missing
