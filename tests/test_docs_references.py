"""The docs build's reference check (scripts/docs_references.py, an MkDocs hook): stale references
and reST roles are found, and the repository has none (so make test catches them before make docs)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("docs_references", ROOT / "scripts" / "docs_references.py")
docs_references = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs_references)


def test_stale_references_and_rest_roles_are_found(tmp_path):
    page = tmp_path / "page.py"
    text = (
        '"""A [`CSA`][csa_lightning.attention.CSA] gate, see `csa_lightning.attention.csa_options.KERNELS`.\n'
        "Gone: [`Old`][csa_lightning.attention.OldGate] and `csa_lightning.nowhere.thing`.\n"
        "A role :class:`CSA` and :func:`~csa_lightning.attention.record_gates`.\n"
        "Not a reference: `python -m csa_lightning.ablate`, csa_lightning/attention/csa.py, `runs/<name>/`.\n"
        "Files: `configs/csa_r50.yaml`, `configs/csa_r5000.yaml`, `tests/test_your_project.py`, `configs/srm_digits.yaml`.\n"
        '"""\n'
    )
    page.write_text(text)
    problems = docs_references.find_problems([page])
    assert [p.split(": ", 1)[1].split(":")[0] for p in problems] == [
        "csa_lightning.attention.OldGate names no object (renamed or removed?)",
        "csa_lightning.nowhere.thing names no object (renamed or removed?)",
        "reST role ",
        "reST role ",
        "configs/csa_r5000.yaml is no file or folder of the repository",
    ]
    assert all(p.startswith(f"{page}:") for p in problems)
    assert problems[0].startswith(f"{page}:2:") and problems[2].startswith(f"{page}:3:")


def test_a_missing_dependency_is_an_error_not_a_stale_reference(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_torch(name, *args):
        if name == "csa_lightning.attention":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *args)

    monkeypatch.setattr(docs_references.importlib, "import_module", no_torch)
    try:
        docs_references.resolves("csa_lightning.attention.CSA")
    except ModuleNotFoundError as error:
        assert error.name == "torch"
    else:
        raise AssertionError("a missing dependency was taken for a stale reference")


def test_the_repository_has_no_stale_reference_or_rest_role():
    assert docs_references.find_problems(docs_references.files()) == []


def test_every_class_and_function_of_the_api_reference_has_a_docstring(tmp_path, monkeypatch):
    assert docs_references.undocumented() == []
    # a bare public function and class are found; a documented one, a private one and a constant are not
    (tmp_path / "bare_package.py").write_text(
        "__all__ = ['bare', 'Bare', 'documented', 'LIMIT']\n"
        "def bare(): pass\n"
        "class Bare: pass\n"
        "def documented():\n    'What it is.'\n"
        "def _private(): pass\n"
        "LIMIT = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pages = tmp_path / "api"
    pages.mkdir()
    (pages / "bare.md").write_text("# bare\n\n::: bare_package\n")
    assert [line.split(" has")[0] for line in docs_references.undocumented(pages)] == [
        "bare_package.bare",
        "bare_package.Bare",
    ]


def test_an_args_entry_inserted_mid_sentence_is_found(tmp_path):
    """Before: "cutmix_alpha: see ..." entries were inserted between "(0: off; see" and its continuation."""
    page = tmp_path / "module.py"
    page.write_text(
        "def f(mixup_alpha, cutmix_alpha, label_smoothing):\n"
        '    """Train.\n\n'
        "    Args:\n"
        "        mixup_alpha: batch augmentation while training (0: off; see\n"
        "        cutmix_alpha: see ``mixup_alpha``.\n"
        "            `BatchAugment`). Mixed batches train on soft targets.\n"
        "        label_smoothing: cross-entropy label smoothing (0 in the paper).\n"
        '    """\n'
    )
    problems = docs_references.find_problems([page])
    assert (
        len(problems) == 1
        and "the Args entry 'cutmix_alpha' starts inside the sentence of 'mixup_alpha'" in problems[0]
    )
    assert problems[0].startswith(f"{page}:6:")
