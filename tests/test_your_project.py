"""examples/your_project installed as a user installs it, then every tool on its block by short name.

The package is installed with pip, offline (``--no-deps --no-build-isolation``), into a temporary
target; that target is on ``PYTHONPATH`` of every process started here (the ablation runner's runs
inherit it) and on ``sys.path`` of the in-process calls. No tool gets a flag, an import or a wrapper.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from csa_lightning.ablate import summarise

from .conftest import MEMORY_MODULE, ROOT, TIMEOUT, refusal

EXAMPLE = ROOT / "examples" / "your_project"
# one install, one worker: the tests below share it
pytestmark = [pytest.mark.xdist_group("your_project"), pytest.mark.system]
#: the in-memory digits, one batch of 32 an epoch (a key given twice is refused, so not MEMORY_DATA's batch size)
ONE_BATCH = [*MEMORY_MODULE, "--data.batch_size", "32", "--data.limit_train_samples", "32",
             "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
TINY = [*ONE_BATCH, "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The folder pip installed your-project into (its dist-info holds the entry point)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "your_project"
    shutil.copytree(EXAMPLE, source)  # pip's build writes build/ and *.egg-info beside the sources
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, timeout=TIMEOUT, capture_output=True,
    )  # fmt: skip
    return target


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m == "your_project" or m.startswith("your_project.")]:
        del sys.modules[name]


def _env(site):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))


def test_the_examples_own_tests_pass_once_installed(site):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=EXAMPLE, env=_env(site), capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout


def test_the_block_is_listed_and_resolved_by_short_name(on_path):
    from your_project import SRM

    from csa_lightning.attention import available_attentions, resolve_attention

    assert "srm" in available_attentions() and resolve_attention("SRM") is SRM


def test_summary_and_benchmark_take_the_short_name(on_path, capsys):
    from csa_lightning.benchmark import main as benchmark
    from csa_lightning.models.summary import main as summary

    summary(["--depths", "18", "--attentions", "none,srm", "--variant", "every|srm|{\"placement\": \"every_block\"}",
             "--format", "json"])  # fmt: skip
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["srm-R18"]["params"] - rows["ResNet-18"]["params"] == 3 * (
        64 + 128 + 256 + 512
    )  # cfc (2) + bias per channel
    rows = benchmark(["--depth", "18", "--attentions", "none,SRM", "--batch", "2", "--size", "32", "--repeats", "1",
                      "--format", "json"])  # fmt: skip
    assert [r["variant"] for r in rows] == ["none", "srm"] and rows[1]["train_ratio"] > 0


def test_fit_ablate_stale_check_export_and_analysis_by_short_name(site, tmp_path, monkeypatch, capsys):
    """The ablation runner and its runs (separate processes, two at a time) find "srm" with nothing
    but the package installed, and a sweep of CSA's contiguity reaches CSA only; the records and
    run_info.json carry the block's provenance; an edit of its code makes its variant (only) stale,
    naming the file, a comment does not; export and analysis read the checkpoint. Long (~50 s):
    three real runs, each its own process, then the runner's checks and the tools in this process."""
    out = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "csa_lightning.ablate", "--config", str(EXAMPLE / "configs" / "srm_digits.yaml"),
           "--attentions", "srm,csa", "--seeds", "0", "--sweep", "model.attention_options.contiguity=l2,cosine",
           "--parallel", "2", "--out", str(out), *TINY]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(site), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
    assert sorted(records) == ["csa_contiguity-cosine_seed0", "csa_contiguity-l2_seed0", "srm_seed0"]
    config = (out / "runs" / "csa_contiguity-cosine_seed0" / "logs" / "version_0" / "config.yaml").read_text()
    assert "contiguity: cosine" in config
    rows = {r["variant"]: r for r in summarise(list(records.values()))}
    assert set(rows) == {"srm", "csa contiguity=l2", "csa contiguity=cosine"}
    # --trainer.limit_val_batches 1 validated one of the 12 batches of 32, and the report says so
    assert all(r["val_fraction"] == pytest.approx(1 / 12, abs=1e-6) for r in records.values())
    assert all("partial validation (8 % of the batches)" in r["note"] for r in rows.values())

    code = records["srm_seed0"]["code"]
    assert "your_project.srm.SRM" in code["classes"]
    assert code["packages"]["your_project"]["distribution"] == "your-project"
    assert code["packages"]["your_project"]["version"] == "0.1.0"
    assert "your_project/srm.py" in code["files"] and "csa_lightning/attention/base.py" in code["files"]
    # each run's own code: SRM's run does not use csa.py, CSA's does not use srm.py
    assert "csa_lightning/attention/csa.py" not in code["files"]
    csa_files = records["csa_contiguity-l2_seed0"]["code"]["files"]
    assert "csa_lightning/attention/csa.py" in csa_files and "your_project/srm.py" not in csa_files
    info = json.loads(next((out / "runs" / "srm_seed0").rglob("run_info.json")).read_text())
    assert info["code"]["files"]["your_project/srm.py"] == code["files"]["your_project/srm.py"]

    # the runner's later calls only check (nothing left to train): in this process, to save its start-up
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    from csa_lightning.ablate import main as ablate_here

    args = cmd[3:]
    installed = site / "your_project" / "srm.py"
    original = installed.read_text()
    installed.write_text(original + "\n# a comment changes no code\n")
    assert len(ablate_here(args)) == 3 and "3 already finished, 0 to run" in capsys.readouterr().out
    installed.write_text(original.replace("[[1.0, 0.0]]", "[[1.0, 0.5]]"))
    try:
        assert refusal(capsys, ablate_here, args) == (
            f"error: 1 variant(s) in {out} ran with another configuration or code (srm_seed0: code changed in "
            "your_project/srm.py); pass --rerun to train them again, --keep-stale to keep their results, or "
            "choose another --out"
        )
        assert len(ablate_here([*args, "--keep-stale"])) == 3 and "0 to run" in capsys.readouterr().out
    finally:
        installed.write_text(original)

    from csa_lightning.export import main as export

    run = out / "runs" / "srm_seed0"
    assert export(["--ckpt", str(run), "--format", "pt2", "--out", str(tmp_path / "srm.pt2")]) <= 1e-4
    from PIL import Image

    images = tmp_path / "images" / "0"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(images / f"{i}.png")
    from csa_lightning import analyze

    written = analyze.main(["descriptors", "--ckpt", str(run), "--images", str(images.parent), "--out",
                            str(tmp_path / "figs")])  # fmt: skip
    assert any(path.suffix == ".png" for path in written)


def test_a_module_subclass_adds_an_l1_penalty_on_the_gates_through_the_cli(on_path, tmp_path, monkeypatch):
    """The example's GatePenaltyModule: extra_losses over record_gates' p, chosen on the command line;
    the penalty is logged under its own name and the total loss is the sum."""
    import csv

    from csa_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(EXAMPLE / "configs" / "srm_digits.yaml"), "--model", "your_project.GatePenaltyModule",
          "--model.gate_l1", "0.5", *TINY, "--trainer.log_every_n_steps", "1",
          "--trainer.default_root_dir", str(tmp_path / "run")])  # fmt: skip
    rows = [
        r for r in csv.DictReader(next((tmp_path / "run").rglob("metrics.csv")).open()) if r.get("train/gate_l1_step")
    ]
    assert len(rows) == 1  # 32 training images, one batch
    for row in rows:
        penalty, task, total = (float(row[f"train/{k}_step"]) for k in ("gate_l1", "loss_classification", "loss"))
        assert 0 < penalty <= 0.5 and total == pytest.approx(task + penalty, rel=1e-5)


def test_a_module_holds_a_frozen_teacher_moved_not_optimised_not_saved(on_path, tmp_path, monkeypatch):
    """The example's DistillationModule: the teacher (a trained run of this project) goes with the
    module, gets no gradient and no optimiser slot, stays in eval mode while training, is left out
    of the checkpoint, and the checkpoint resumes strictly."""
    import torch

    from csa_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(EXAMPLE / "configs" / "srm_digits.yaml")
    main(["fit", "--config", config, *TINY, "--trainer.default_root_dir", str(tmp_path / "teacher")])
    cli = main(["fit", "--config", config, "--model", "your_project.DistillationModule",
                "--model.teacher", str(tmp_path / "teacher"), *TINY, "--trainer.log_every_n_steps", "1",
                "--trainer.default_root_dir", str(tmp_path / "student")])  # fmt: skip
    module = cli.model
    assert not module.teacher.training and all(not p.requires_grad for p in module.teacher.parameters())
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    last = next((tmp_path / "student").rglob("last.ckpt"))
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert state and not [k for k in state if k.startswith("teacher.")]
    metrics = next((tmp_path / "student").rglob("metrics.csv")).read_text()
    assert "train/distill_step" in metrics
    two_epochs = [*ONE_BATCH, "--trainer.max_epochs", "2"]
    resumed = main(["fit", "--config", config, "--model", "your_project.DistillationModule",
                    "--model.teacher", str(tmp_path / "teacher"), *two_epochs,
                    "--trainer.default_root_dir", str(tmp_path / "student"), "--ckpt_path", str(last)])  # fmt: skip
    assert resumed.trainer.current_epoch == 2 and not resumed.model.teacher.training
