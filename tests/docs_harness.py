"""The manual's code blocks as tests (``make test-docs``), collected by Sybil from README.md and
docs/*.md: a new page's blocks are picked up without registering them.

Every fenced ``bash``, ``sh`` and ``python`` block runs, in its page's order, from the repository root:

- Python blocks in one namespace per page (a block may use what an earlier block of its page made);
- shell blocks with ``bash -e``, the environment's ``python`` first on PATH and ``CSA_SHORT_RUN=1``
  (every training shortened, `csa_lightning.run_switches`), each within `SHELL_TIMEOUT` seconds.

An HTML comment right above a block (invisible on the site and on GitHub) says it cannot run here:

    <!-- docs-test: parse-only: WHY -->

for commands whose data or machine this one lacks (ImageNet, COCO, a GPU, a cluster, the network)
or that CI runs as steps of their own (``make test``). Such a shell block still runs, with
``CSA_PARSE_ONLY=1``: each command parses its arguments and config files and stops, and ``make T``
becomes ``make -n T``, so a renamed option or target still fails; such a Python block is compiled.
Blocks in other languages (YAML, TOML, listings) are not commands and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sybil import Region, Sybil
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parent.parent
#: the longest a shell block may take (a shortened demo with its data written first is about a minute)
SHELL_TIMEOUT = 600
#: the marker a block may carry, right above it
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<mode>[\w-]+)\s*(?::\s*(?P<why>[^>]*?))?\s*-->\s*\Z")
MODES = ("parse-only",)


def _marker(text: str, start: int):
    """The ``docs-test`` mode and reason of the comment ending right above ``start`` (else None)."""
    found = MARKER.search(text[:start].rstrip())
    if found is None:
        return None, None
    mode, why = found.group("mode"), (found.group("why") or "").strip()
    if mode not in MODES or not why:
        raise ValueError(f"docs-test marker {found.group(0)!r}: use <!-- docs-test: parse-only: WHY -->")
    return mode, why


def _make_dry(source: str) -> str:
    return re.sub(r"(?m)^(\s*)make(\s)", r"\1make -n\2", source)


def _run_shell(example) -> None:
    source, mode = example.parsed
    env = dict(os.environ, CSA_SHORT_RUN="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("CSA_PARSE_ONLY", None)
    if mode == "parse-only":
        env["CSA_PARSE_ONLY"] = "1"
        source = _make_dry(source)
    done = subprocess.run(["bash", "-e", "-c", source], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=SHELL_TIMEOUT)  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise AssertionError(f"{example.path}:{example.line}: exit status {done.returncode}\n{tail}")


def _run_python(example) -> None:
    source, mode = example.parsed
    code = compile(source, f"{example.path}:{example.line}", "exec")
    if mode == "parse-only":
        return
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(code, example.namespace)  # noqa: S102 - the manual's own examples
    finally:
        os.chdir(cwd)


#: a line of a block that the site replaces with a file (pymdownx.snippets)
SNIPPET = re.compile(r'(?m)^--8<-- "([^"]+)"\s*$')


def _with_snippets(source: str) -> str:
    """The block as the site shows it: each ``--8<-- "FILE"`` line replaced by the file."""
    return SNIPPET.sub(lambda found: (ROOT / found.group(1)).read_text(), source)


def parse_blocks(document):
    """Sybil's parser: a region for each bash, sh and python block, with its marker's mode."""
    for lexed in FencedCodeBlockLexer(language=r"bash|sh|python")(document):
        language = lexed.lexemes["language"]
        mode, _ = _marker(document.text, lexed.start)
        source = _with_snippets(str(lexed.lexemes["source"]))
        if language == "python":
            # line numbers in tracebacks: the block's own lines in the page
            source = "\n" * lexed.lexemes["source"].line_offset + source
            yield Region(lexed.start, lexed.end, (source, mode), _run_python)
        else:
            yield Region(lexed.start, lexed.end, (source, mode), _run_shell)


def reading_order() -> list:
    """README.md, then the pages of docs/ in the site's navigation order (mkdocs.yml), a newcomer's
    order: a page may use what an earlier one made (README's ``make demo`` trains the checkpoint
    the publishing page publishes)."""
    nav = re.findall(r"(?m)^\s*-\s*[^:\n]+:\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text())
    return ["README.md", *(f"docs/{page}" for page in nav)]


def order_items(items) -> None:
    """pytest's collection, the manual's blocks sorted by `reading_order` (pages not in the
    navigation last), each page's blocks in their order."""
    order = {page: i for i, page in enumerate(reading_order())}

    def key(item):
        path = Path(str(item.fspath)).resolve()
        page = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        return order.get(page, len(order))

    items.sort(key=key)  # stable: each page's blocks stay in their order


def _installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


#: the example project, which a page installs into the environment as a reader would
EXAMPLE_PROJECT = "your-project"
_EXAMPLE_WAS_INSTALLED = _installed(EXAMPLE_PROJECT)


def restore_environment() -> None:
    """Uninstall the example project if the pages installed it (the suite expects the built-in names only)."""
    if not _EXAMPLE_WAS_INSTALLED and _installed(EXAMPLE_PROJECT):
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", EXAMPLE_PROJECT], check=False)


manual = Sybil(parsers=[parse_blocks], patterns=["README.md", "docs/*.md"], path=str(ROOT))
pytest_collect_file = manual.pytest()
