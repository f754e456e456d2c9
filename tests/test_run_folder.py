"""The run folder as one declared module (csa_lightning/run_folder): every file name of a run and of an
ablation lives there, no csa_lightning package imports another's private names, and "done" means a
result that holds its metric."""

import ast
import json
from pathlib import Path

import pytest

from csa_lightning.run_folder import AblationFolder, RunFolder, RunResult, is_done, missing_metric, training_environment

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "csa_lightning"

#: the file names a run folder and an ablation folder hold (config_hash, a file too, is also a record key)
NAMES = {"result.json", "record.json", "results.json", "attempts.jsonl", "stdout.log", ".training.lock",
         "config_resolved.json", "code.json", "variant.json", "slurm_job.json", ".ablate.lock",
         "CSA_RESULT_PATH", "CSA_RUN_LOCK", "CSA_RUNNER_PID"}  # fmt: skip


def _strings(path: Path):
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_run_folder_name_is_spelled_outside_the_run_folder_module():
    """Before: result.json and stdout.log were each spelled in four modules."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "run_folder" in path.parts:
            continue
        for line, text in _strings(path):
            hits = [name for name in NAMES if name in text]
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{line}: {hits}")
    assert not found, found


def test_no_package_imports_another_packages_private_names():
    """Before: ablate imported cli._comparable and cli._differences."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                for alias in node.names:
                    own = node.level == 1 and (node.module is None or "." not in (node.module or ""))
                    if alias.name.startswith("_") and not own and alias.name != "__version__":
                        found.append(
                            f"{path.relative_to(ROOT)}: from {'.' * node.level}{node.module} import {alias.name}"
                        )
    assert not found, found


def test_paths_and_environment(tmp_path):
    out = AblationFolder(tmp_path)
    run = out.run("se_seed0")
    assert run.path == tmp_path / "runs" / "se_seed0" and run.log(3).name == "stdout.rank3.log"
    env = training_environment(run, runner_pid=42)
    assert env == {"CSA_RESULT_PATH": str(run.result), "CSA_RUN_LOCK": str(run.lock), "CSA_RUNNER_PID": "42"}


def test_done_means_a_result_with_its_metric():
    """Before: a run resumed with nothing left to train wrote "final": {} and counted as done."""
    result = RunResult(monitor="val/top1", best=0.9, final={"val/top1": 0.91}, epochs=3, params=1, gmac=0.1,
                       gmac_resolution=32, train_images_per_sec=10.0, inference_images_per_sec=20.0).to_json()  # fmt: skip
    assert is_done(result) and result["schema"] == 1
    assert not is_done({**result, "final": {}})
    assert missing_metric({**result, "final": {}}) == (
        "its result has no val/top1 (the last epoch logged no validation metric)"
    )
    assert not is_done({**result, "final": {"val/top1": float("nan")}}) and not is_done(None)
    assert is_done({"monitor": "val/box_AP", "final": {"val/box_AP": 0.3}})
    assert is_done({"final_val_top1": 0.5})  # a result from before "final" existed


def test_a_run_without_its_metric_makes_no_record_and_an_old_one_is_not_done(tmp_path):
    from csa_lightning.ablate.plan import Resolved, Variant
    from csa_lightning.ablate.records import finish_record, folder_records, load_results, stamp

    run = AblationFolder(tmp_path).run("se_seed0")
    stamp(run.path, Variant("se", 0), Resolved({}, "h", {"files": {}}))
    run.result.write_text(json.dumps({"monitor": "val/top1", "best": None, "final": {}}))
    with pytest.raises(ValueError, match="se_seed0 ended without its result: its result has no val/top1"):
        finish_record(run.path, 1.0)
    assert not run.record.exists()
    # records an earlier runner wrote without the metric are not finished runs
    run.record.write_text(json.dumps({"variant": "se_seed0", "final": {}}))
    AblationFolder(tmp_path).results.write_text(json.dumps([{"variant": "se_seed0", "final": {}}]))
    assert folder_records(tmp_path) == [] and load_results(tmp_path) == []


def test_a_run_resumed_with_nothing_left_to_train_still_writes_its_result(tmp_path, monkeypatch):
    """Before: a run stopped between the end of its last epoch and its record, then resumed from last.ckpt,
    wrote "best": null, "final": {} (nothing was validated in the resumed process), and counted as done.
    Now it validates the checkpoint it resumed and records the same numbers."""
    from csa_lightning.cli import main

    from .conftest import DEMO_CONFIG

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSA_RESULT_PATH", str(tmp_path / "result.json"))
    args = ["fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
            "--data.resolution", "16", "--data.batch_size", "32", "--data.limit_train_samples", "64",
            "--model.net.init_args.depth", "18", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.callbacks+=csa_lightning.tasks.callbacks.RecordResult"]  # fmt: skip
    main(args)
    first = json.loads((tmp_path / "result.json").read_text())
    (tmp_path / "result.json").unlink()
    main([*args, "--ckpt_path", "last"])
    again = json.loads((tmp_path / "result.json").read_text())
    assert is_done(again) and again["final"] == first["final"] and again["epochs"] == first["epochs"]


def test_the_error_shown_is_the_last_attempts_own(tmp_path):
    """Before: stdout.log is appended across attempts, and a run killed in its second attempt was shown
    failed with the first attempt's message."""
    from csa_lightning.ablate.executors.local import last_error_line
    from csa_lightning.ablate.job import start_training

    run = RunFolder(tmp_path)
    first = start_training(tmp_path, ["python3", "-c", "raise ValueError('the first attempt')"], {})
    first.wait()
    assert last_error_line(run.log()) == "ValueError: the first attempt"
    second = start_training(tmp_path, ["python3", "-c", "print('killed without a word')"], {})
    second.wait()
    assert last_error_line(run.log()) == ""
    assert "ValueError: the first attempt" in run.log().read_text()  # the log keeps every attempt's output
