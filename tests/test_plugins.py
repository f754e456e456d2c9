"""Blocks from a user's own package: entry points, the one resolver of names, clashes, broken plugins.

Each test installs a package as pip would leave it (a ``*.dist-info`` folder with an
``entry_points.txt``, and the module beside it) into a temporary folder on ``sys.path``.
"""

import sys

import pytest
import torch

from csa_lightning.attention import (
    ENTRY_POINT_GROUP,
    ChannelAttention,
    attention_name,
    attention_names,
    available_attentions,
    build_attention,
    register_attention,
    resolve_attention,
)

GATE = """
import torch
from csa_lightning.attention import ChannelAttention


class {name}(ChannelAttention):
    def gate(self, x):
        return torch.full_like(x[:, :, :1, :1], 0.5)
"""


@pytest.fixture
def site(tmp_path, monkeypatch, clean_registry):
    """install(dist, {entry name: "module:Class"}, {module: source}): a package as pip installs it."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist, entries, modules):
        info = tmp_path / f"{dist.replace('-', '_')}-0.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(source)

    yield install
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_plugin_is_found_by_short_name_in_any_case_and_listed_without_being_imported(site):
    site("gate-pkg", {"halfgate": "gate_pkg_mod:HalfGate"}, {"gate_pkg_mod": GATE.format(name="HalfGate")})
    assert "halfgate" in available_attentions()
    assert "gate_pkg_mod" not in sys.modules  # listing imports nothing
    cls = resolve_attention(" HalfGate ")
    assert issubclass(cls, ChannelAttention) and cls.__name__ == "HalfGate"
    assert attention_name("HALFGATE") == "halfgate"
    out = build_attention("halfgate", 4)(torch.ones(2, 4, 3, 3))
    assert torch.equal(out, torch.full((2, 4, 3, 3), 0.5))


def test_a_broken_plugin_breaks_its_own_name_only_in_one_line(site):
    site("broken-pkg", {"broken": "broken_mod:Gate"}, {"broken_mod": "import no_such_dependency\n"})
    assert "broken" in available_attentions()
    assert resolve_attention("csa").__name__ == "CSA"  # the other blocks are untouched
    with pytest.raises(ValueError) as err:
        resolve_attention("broken")
    message = str(err.value)
    assert message == (
        "attention 'broken': broken_mod.Gate (entry point 'broken' of broken-pkg 0.3) fails to load "
        "(ModuleNotFoundError: No module named 'no_such_dependency'); fix that package or uninstall it"
    )


def test_a_plugin_that_is_no_block_is_named_with_the_fix(site):
    site("odd-pkg", {"odd": "odd_mod:helper"}, {"odd_mod": "def helper():\n    pass\n"})
    with pytest.raises(TypeError, match=r"^attention 'odd' \(odd_mod.helper \(entry point 'odd' of odd-pkg 0.3\)\) "
                       r"is a function, not a ChannelAttention subclass; point it to a class"):  # fmt: skip
        resolve_attention("odd")


def test_a_clash_names_both_sources_on_lookup_and_on_listing(site):
    site("se-pkg", {"SE": "se_mod:MySE"}, {"se_mod": GATE.format(name="MySE")})
    expected = (
        "attention name 'se' is defined twice: csa_lightning.attention.se.SqueezeExcitation (registered) and "
        "se_mod.MySE (entry point 'SE' of se-pkg 0.3); rename one"
    )
    for call in (lambda: resolve_attention("se"), available_attentions):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    assert resolve_attention("csa").__name__ == "CSA"


def test_two_plugins_with_one_name_clash(site):
    site("one-pkg", {"gate": "one_mod:Gate"}, {"one_mod": GATE.format(name="Gate")})
    site("two-pkg", {"gate": "two_mod:Gate"}, {"two_mod": GATE.format(name="Gate")})
    with pytest.raises(ValueError, match=r"'gate' is defined twice: one_mod.Gate .*one-pkg 0.3.* and two_mod.Gate "
                       r".*two-pkg 0.3"):  # fmt: skip
        resolve_attention("gate")


def test_a_plugin_whose_class_also_registers_itself_is_one_source(site):
    source = (
        GATE.format(name="Gate")
        .replace(
            "from csa_lightning.attention import ChannelAttention",
            "from csa_lightning.attention import ChannelAttention, register_attention",
        )
        .replace("class Gate", '@register_attention("selfreg")\nclass Gate')
    )
    site("selfreg-pkg", {"selfreg": "selfreg_mod:Gate"}, {"selfreg_mod": source})
    first = resolve_attention("selfreg")  # loads the entry point, whose import registers the class
    assert resolve_attention("selfreg") is first and available_attentions().count("selfreg") == 1


def test_two_classes_registered_under_one_name_fail_naming_both(clean_registry):
    """Before: the registry compared __qualname__ only, so two modules' Gate classes replaced each
    other without a word."""

    def make(module):
        return type("Gate", (ChannelAttention,), {"__module__": module})

    register_attention("twice")(make("first_pkg.blocks"))
    register_attention("twice")(make("first_pkg.blocks"))  # the same class re-imported: allowed
    with pytest.raises(ValueError) as err:
        register_attention("twice")(make("second_pkg.blocks"))
    assert str(err.value) == (
        "attention name 'twice' is already registered to first_pkg.blocks.Gate; second_pkg.blocks.Gate cannot "
        "take it too: register it under another name"
    )


def test_names_are_canonical_in_one_place():
    assert attention_names(" CSA, none ,Se,csa_lightning.attention.csa.CSA") == [
        "csa",
        "none",
        "se",
        "csa_lightning.attention.csa.CSA",  # a dotted path keeps its case
    ]
    with pytest.raises(ValueError, match=r"unknown attention 'sse' \(did you mean 'se'\?\)"):
        attention_names("none,sse")


def test_every_tool_takes_a_dotted_path_with_its_case(capsys):
    """Before: the benchmark lower-cased names and accepted only registered ones; the summary
    lower-cased a variant's path and ended in a traceback."""
    from csa_lightning.benchmark import main as benchmark
    from csa_lightning.models.summary import main as summary
    from csa_lightning.models.summary import parse_variant

    path = "csa_lightning.attention.se.SqueezeExcitation"
    assert parse_variant(f"mine|{path}|{{}}") == ("mine", path, {})
    summary(["--depths", "18", "--attentions", path, "--variant", f"mine|{path}|{{}}", "--format", "json"])
    assert '"attention": "csa_lightning.attention.se.SqueezeExcitation"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark(["--attentions", "csa_lightning.attention.se.Nope"])
    assert "has no attribute 'Nope'" in capsys.readouterr().err


def test_an_entry_point_named_like_an_import_path_is_not_listed_and_said_once(site):
    """Before: an entry point named `my.gate` was listed but unusable (the name reads as an import path)."""
    site(
        "dotted-pkg",
        {"my.gate": "dotted_mod:Gate", "fine": "dotted_mod:Gate"},
        {"dotted_mod": GATE.format(name="Gate")},
    )
    with pytest.warns(
        UserWarning,
        match=r"ignoring entry point\(s\) .* dotted_mod.Gate \(entry point 'my.gate' of dotted-pkg 0.3\); rename",
    ):
        names = available_attentions()
    assert "fine" in names and "my.gate" not in names
