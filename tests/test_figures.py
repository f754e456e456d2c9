"""scripts/figures.py, the one source of the manual's measured figures: a figure edited by hand in a
generated region fails its check (make docs), rendering restores it, and README's ablation summary
is the report table's own cells."""

import importlib.util

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_figure_typed_into_a_generated_region_fails_the_check(figures, tmp_path, monkeypatch, capsys):
    original = (ROOT / "README.md").read_text()
    edited = original.replace("| ResNet-50 | - | 0 | 25,557,032 |", "| ResNet-50 | - | 0 | 25,600,000 |", 1)
    assert edited != original
    readme = tmp_path / "README.md"
    readme.write_text(edited)
    monkeypatch.setattr(figures, "README", readme)
    assert figures.check() == 1
    assert "README.md's generated regions" in capsys.readouterr().err
    assert figures.readme(figures.rendered()) == original  # rendering puts the measured figure back


def test_a_region_without_its_markers_is_named(figures):
    with pytest.raises(SystemExit, match="<!-- model table: start"):
        figures.readme_region("no markers here\n", "model table", "| a |\n")


def test_readmes_ablation_summary_is_the_report_tables_cells(figures):
    report = [line for line in figures.ABLATION_TABLE.read_text().splitlines() if line.startswith("| ")]
    summary = figures.ablation_summary().splitlines()
    assert figures._cells(summary[0]) == list(figures.ABLATION_COLUMNS)
    names = figures._cells(report[0])
    for row, shown in zip(report[1:], summary[2:]):
        cells = dict(zip(names, figures._cells(row)))
        assert figures._cells(shown) == [cells[column] for column in figures.ABLATION_COLUMNS]
    assert len(summary) == len(report) + 1  # its header, rule and every variant's row
