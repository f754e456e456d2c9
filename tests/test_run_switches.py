"""The two environment switches the manual's harness applies (`csa_lightning.run_switches`):
CSA_SHORT_RUN shortens every training whatever its config says, CSA_PARSE_ONLY stops each command
after parsing, while a renamed or mistyped option still fails."""

import pytest

from csa_lightning.ablate.runner import main as ablate_main
from csa_lightning.blockcheck.__main__ import main as blockcheck_main
from csa_lightning.cli import main
from csa_lightning.run_switches import SHORT_RUN_BATCHES, parse_only, short_run

from .conftest import DEMO_CONFIG, MEMORY_DATA


@pytest.mark.parametrize("value, on", [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)])
def test_a_switch_is_on_for_any_value_but_0_false_no_or_empty(monkeypatch, value, on):
    monkeypatch.setenv("CSA_SHORT_RUN", value)
    monkeypatch.setenv("CSA_PARSE_ONLY", value)
    assert short_run() is on and parse_only() is on


def test_a_short_run_overrides_the_configs_epochs_and_batches(in_tmp_cwd, monkeypatch):
    monkeypatch.setenv("CSA_SHORT_RUN", "1")
    # the command line asks for 5 epochs of every batch: the switch wins
    cli = main(["fit", "--config", str(DEMO_CONFIG), *MEMORY_DATA, "--trainer.max_epochs", "5"])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.current_epoch == 1
    assert trainer.global_step == SHORT_RUN_BATCHES
    assert trainer.num_sanity_val_steps == 0


def test_parse_only_stops_before_anything_is_built_and_writes_nothing(in_tmp_cwd, monkeypatch, capsys):
    monkeypatch.setenv("CSA_PARSE_ONLY", "1")
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(DEMO_CONFIG), "--data.data_dir", "nowhere"])  # data that does not exist
    assert stopped.value.code == 0
    assert "cli.py fit: the arguments parse" in capsys.readouterr().out
    assert not (in_tmp_cwd / "runs").exists() and not (in_tmp_cwd / "nowhere").exists()


@pytest.mark.parametrize(
    "run",
    [
        lambda: main(["fit", "--config", str(DEMO_CONFIG), "--trainer.max_epochz", "1"]),
        lambda: ablate_main(["--config", str(DEMO_CONFIG), "--attentions", "none", "--seedz", "0", "--out", "x"]),
        lambda: blockcheck_main(["se", "--quik"]),
    ],
    ids=["cli", "ablate", "blockcheck"],
)
def test_parse_only_still_refuses_a_mistyped_option(in_tmp_cwd, monkeypatch, run):
    monkeypatch.setenv("CSA_PARSE_ONLY", "1")
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code not in (0, None)


def test_parse_only_checks_an_ablation_plan_and_stops_before_running(in_tmp_cwd, monkeypatch, capsys):
    monkeypatch.setenv("CSA_PARSE_ONLY", "1")
    with pytest.raises(SystemExit) as stopped:
        ablate_main(["--config", str(DEMO_CONFIG), "--attentions", "none,csa", "--seeds", "0", "--out", "abl"])
    assert stopped.value.code == 0
    assert "the arguments parse" in capsys.readouterr().out
    assert not (in_tmp_cwd / "abl" / "runs").exists()
    # a plan that cannot be built still fails: an unknown attention
    with pytest.raises(SystemExit) as refused:
        ablate_main(["--config", str(DEMO_CONFIG), "--attentions", "none,nope", "--seeds", "0", "--out", "abl2"])
    assert refused.value.code not in (0, None)
