"""The ablation runner: planning, the results file, the report, and surviving a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from csa_lightning.ablate import Variant, load_results, plan_variants, write_report

from .conftest import DEMO_CONFIG, ROOT, TIMEOUT, refusal


def test_plan_resets_options_and_applies_sweeps_only_where_they_fit():
    variants = plan_variants(
        ["none", "se", "csa"], [0, 1],
        {"model.placement": ["stage_end", "every_block"], "model.attention_options.contiguity": ["l2", "hybrid"]},
    )  # fmt: skip
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    # none: no placement, no contiguity -> 2 seeds; se: 2 placements x 2 seeds; csa: 2 x 2 x 2
    assert sum(v.attention == "none" for v in variants) == 2
    assert sum(v.attention == "se" for v in variants) == 4
    assert sum(v.attention == "csa" for v in variants) == 8
    se = next(v for v in variants if v.attention == "se")

    def net(args):
        return json.loads(args[args.index("--model.net") + 1])["init_args"]

    assert net(se.cli_args(["reduction"]))["attention_options"] is None  # reset to SE's defaults
    csa = next(
        v for v in variants if v.attention == "csa" and v.sweep["model.attention_options.contiguity"] == "hybrid"
    )
    assert net(csa.cli_args(["reduction", "contiguity"])) == {
        "attention": "csa",
        "placement": csa.sweep["model.placement"],
        "attention_options": {"contiguity": "hybrid"},
    }
    assert net(Variant("gct", 3).cli_args([])) == {"attention": "gct", "placement": None, "attention_options": None}


def _record(group, attention, seed, top1, params=1000, speed=100.0, **final):
    return {"variant": f"{group}_{seed}", "group": group, "attention": attention, "seed": seed,
            "monitor": "val/top1", "best": min(1.0, top1 + 0.01), "final": {"val/top1": top1, **final},
            "params": params, "gmac": 0.5, "train_images_per_sec": speed, "inference_images_per_sec": 2 * speed}  # fmt: skip


def test_report_pairs_variants_with_the_baseline_by_seed(tmp_path):
    """Errors 10/8/9 (none), 9.5/7/8.5 (se: paired differences -0.5, -1, -0.5) and 5/3/4 (csa: -5 each)."""
    records = [
        _record("none", "none", 0, 0.90), _record("none", "none", 1, 0.92), _record("none", "none", 2, 0.91),
        _record("se", "se", 0, 0.905), _record("se", "se", 1, 0.93), _record("se", "se", 2, 0.915),
        _record("csa", "csa", 0, 0.95), _record("csa", "csa", 1, 0.97), _record("csa", "csa", 2, 0.96),
    ]  # fmt: skip
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "test")}
    assert rows["none"]["mean"] == pytest.approx(9.0) and rows["none"]["std"] == pytest.approx(1.0)
    # per-variant 95 % interval: t(0.975, 2) = 4.302653 x 1 / sqrt(3)
    assert rows["none"]["ci95_half_width"] == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    se = rows["se"]
    # differences -0.5, -1, -0.5: mean -2/3, sd 0.288675, t = -4, two-sided p(t_2) = 0.057191
    assert se["diff_mean"] == pytest.approx(-2 / 3)
    half = 4.302653 * 0.288675 / 3**0.5
    assert se["diff_ci95"] == pytest.approx([-2 / 3 - half, -2 / 3 + half], rel=1e-5)
    # csa: constant difference -5 (sd 0): p = 0, ranked first; Holm: se's p x 1 (second of two)
    assert rows["csa"]["holm_p"] == pytest.approx(0.0, abs=1e-12) and rows["csa"]["significant"] is True
    assert se["holm_p"] == pytest.approx(0.057191, rel=1e-4) and se["significant"] is False
    assert se["note"] == "not significant" and rows["csa"]["note"] == "significant"
    report = (tmp_path / "report.md").read_text()
    assert "| csa | 3 | 4.00 ± 1.00 | 2.48 | -5.00 | [-5.00, -5.00] |" in report
    assert "not reproducible from the seed" in report  # ffcv's augmentations are not paired
    assert (tmp_path / "report.csv").read_text().count("\n") == 4
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "Partial validation" not in report and se["partial_validation"] is None


def test_report_marks_results_of_a_partial_validation(tmp_path):
    records = [_record("none", "none", 0, 0.90), _record("se", "se", 0, 0.91)]
    records[1]["val_fraction"] = 0.25
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "test")}
    assert rows["se"]["partial_validation"] == 0.25 and rows["none"]["partial_validation"] is None
    assert rows["se"]["note"].endswith("; partial validation (25 % of the batches)")
    assert "**Partial validation**" in (tmp_path / "report.md").read_text()


def test_paired_statistics_agree_with_scipy_and_holm_by_hand():
    from scipy import stats

    from csa_lightning.stats import holm_adjust, paired_comparisons

    base = {0: 10.0, 1: 12.5, 2: 11.0, 3: 9.0, 4: 10.5}
    a = {0: 9.0, 1: 11.0, 2: 10.8, 3: 8.1, 4: 9.0}
    b = {0: 10.2, 1: 12.0, 2: 11.5, 3: 9.3, 4: 10.1}
    results = {r.variant: r for r in paired_comparisons(base, {"a": a, "b": b})}
    for name, values in (("a", a), ("b", b)):
        diffs = [values[s] - base[s] for s in sorted(base)]
        ref = stats.ttest_rel([values[s] for s in sorted(base)], [base[s] for s in sorted(base)])
        assert results[name].p_value == pytest.approx(ref.pvalue, rel=1e-9)
        low, high = ref.confidence_interval(0.95)
        assert results[name].interval == pytest.approx((low, high), rel=1e-9)
        assert results[name].mean_difference == pytest.approx(sum(diffs) / 5)
    # Holm by hand: ascending p 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, max(0.04, 0.06) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    # the smaller p is tested at alpha / 2: its Holm interval is the 97.5 % one, the other's the 95 % one
    first, second = sorted(results.values(), key=lambda r: r.p_value)
    diffs = [a[s] - base[s] for s in sorted(base)] if first.variant == "a" else [b[s] - base[s] for s in sorted(base)]
    assert first.holm_interval == pytest.approx(stats.ttest_1samp(diffs, 0).confidence_interval(0.975), rel=1e-9)
    assert second.holm_interval == pytest.approx(second.interval, rel=1e-12)


def test_fewer_than_three_seeds_give_no_interval_and_say_so(tmp_path):
    records = [_record("none", "none", 0, 0.90), _record("none", "none", 1, 0.92),
               _record("se", "se", 0, 0.905), _record("se", "se", 1, 0.925)]  # fmt: skip
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "test")}
    assert rows["se"]["diff_mean"] == pytest.approx(-0.5)
    assert rows["se"]["diff_ci95"] is None and rows["se"]["significant"] is None
    assert rows["se"]["note"] == "2 paired seed(s): no interval (needs 3)"


def test_report_follows_the_detection_metric_with_mask_columns(tmp_path):
    def det(group, seed, box, mask):
        r = _record(group, group, seed, 0.0)
        r.update(monitor="val/box_AP", final={"val/box_AP": box, "val/mask_AP": mask})
        return r

    records = [det("none", s, 0.30 + s / 100, 0.25) for s in range(3)] + [
        det("csa", s, 0.33 + s / 100, 0.27) for s in range(3)
    ]
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "det")}
    assert rows["none"]["metric"] == "val/box_AP" and rows["none"]["mean"] == pytest.approx(31.0)
    assert rows["csa"]["diff_mean"] == pytest.approx(3.0) and rows["csa"]["val/mask_AP_mean"] == pytest.approx(27.0)
    report = (tmp_path / "report.md").read_text()
    assert "val box_AP %" in report and "val mask_AP % (mean)" in report
    # --metric picks another logged metric; --baseline another variant
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "det", "val/mask_AP", baseline="csa")}
    assert rows["none"]["diff_mean"] == pytest.approx(-2.0) and rows["csa"]["note"] == "baseline"


def test_corrupt_results_file_is_explained(tmp_path):
    (tmp_path / "results.json").write_text("[{ truncated")
    with pytest.raises(ValueError, match="results.json is corrupt"):
        load_results(tmp_path)


@pytest.mark.system
@pytest.mark.slow
def test_killed_ablation_resumes_without_losing_or_duplicating(tmp_path):
    """Long (~40-60 s): the runner and its runs are real processes (each imports torch and Lightning),
    killed mid-run and restarted; nothing shorter shows that no record is lost or duplicated."""
    out = tmp_path / "ablation"
    cmd = [
        sys.executable, "-m", "csa_lightning.ablate", "--config", str(DEMO_CONFIG),
        "--attentions", "none,csa", "--seeds", "0", "--out", str(out),
        "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16", "--data.batch_size", "32",
        "--data.limit_train_samples", "64", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    csa_run = out / "runs" / "csa_seed0"
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline:  # kill once the first run is recorded and the second has a checkpoint
            if len(load_results(out)) == 1 and list(csa_run.rglob("last.ckpt")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("the ablation never reached the second run's first checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(load_results(out)) == 1 and not (csa_run / "result.json").exists()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 variants, 1 already finished, 1 to run" in again.stdout
    records = load_results(out)
    assert sorted(r["variant"] for r in records) == ["csa_seed0", "none_seed0"]
    csa = next(r for r in records if r["attention"] == "csa")
    assert csa["epochs"] == 2 and csa["params"] > 0 and csa["git_commit"] is not None
    assert "Restoring states from the checkpoint" in (csa_run / "stdout.log").read_text()
    assert len(list((csa_run / "logs").glob("version_*"))) == 2  # the interrupted run's logs are kept
    assert (out / "report.md").exists() and (out / "report.png").exists()


def _tiny_ablation(out, *extra):
    return [
        "--config", str(DEMO_CONFIG), "--attentions", "none", "--seeds", "0", "--out", str(out),
        "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16", "--data.batch_size", "32",
        "--data.limit_train_samples", "32", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


@pytest.mark.system
@pytest.mark.slow
def test_changed_overrides_never_reuse_stale_results(tmp_path, monkeypatch, capsys):
    """Before: re-running the same --out with --trainer.max_epochs 2 after 1-epoch runs reported
    the 1-epoch results. Now a changed config or override is refused in one line, and --rerun
    trains again from scratch (not from the old run's checkpoint). Long (~40 s): four runner calls
    and two real training processes, since staleness is decided across runs of the runner."""
    from csa_lightning.ablate import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ablation"
    first = main(_tiny_ablation(out, "--trainer.max_epochs", "1"))
    assert first and json.loads((out / "results.json").read_text())[0]["epochs"] == 1
    exit_info = refusal(capsys, main, _tiny_ablation(out, "--trainer.max_epochs", "2"))
    assert "1 variant(s)" in exit_info and "pass --rerun" in exit_info
    assert "\n" not in exit_info
    main(_tiny_ablation(out, "--trainer.max_epochs", "2", "--rerun"))
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 1 and records[0]["epochs"] == 2
    # the same command again: nothing to do
    main(_tiny_ablation(out, "--trainer.max_epochs", "2"))
    assert "1 already finished, 0 to run" in capsys.readouterr().out


def test_a_second_runner_on_the_same_out_is_refused(tmp_path, capsys):
    from csa_lightning.ablate import main

    out = tmp_path / "ablation"
    out.mkdir()
    (out / ".ablate.lock").write_text(str(os.getpid()))  # a live runner holds it
    exit_info = refusal(capsys, main, _tiny_ablation(out))
    assert exit_info.startswith(f"error: another ablation runner (pid {os.getpid()}) is using {out}")
    assert not (out / "runs").exists()


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            "model.attention_options.contiguty=l2,hybrid",
            "no block of none, csa takes an option 'contiguty'; did you mean 'contiguity'?",
        ),
        (
            "model.attention_options.contiguity=l2,hybird",
            "variant csa_contiguity-hybird_seed0: unknown contiguity 'hybird'",
        ),
        ("model.optimizer.lr=0.1,-1", "variant none_lr--1_seed0: model.optimizer.lr must be positive, got -1.0"),
        ("=1,2", "--sweep expects KEY=V1,V2 with a key and no empty value, got '=1,2'"),
    ],
)
def test_bad_sweeps_fail_before_any_run(sweep, message, tmp_path, capsys):
    """Before: a misspelt key was dropped silently, a bad value failed only after the other runs
    trained, and '=1,2' launched two doomed runs. Every variant is now built first."""
    from csa_lightning.ablate import main

    out = tmp_path / "ablation"
    args = ["--config", str(DEMO_CONFIG), "--attentions", "none,CSA", "--seeds", "0", "--out", str(out)]
    error = refusal(capsys, main, [*args, "--sweep", sweep])
    assert message in error
    assert not out.exists()  # nothing started


@pytest.mark.system
@pytest.mark.slow
def test_detection_ablation_takes_each_backbone_from_its_classification_run(tmp_path):
    """--backbone-runs: variant {attention}_seed{s} starts from the classification run of that name;
    the report follows the detector's metric (val/box_AP). Missing runs fail in one line, first.
    One detector variant (each is a process that writes its data and builds a detector: ~30 s here)."""
    from .conftest import make_classification_checkpoint

    classification = tmp_path / "cls"
    for attention in ("none", "csa"):
        (classification / "runs" / f"{attention}_seed0").mkdir(parents=True)
        make_classification_checkpoint(
            classification / "runs" / f"{attention}_seed0" / "model.ckpt", attention, steps=1
        )
    base = [
        sys.executable, "-m", "csa_lightning.ablate", "--config", str(ROOT / "configs/demo/digits_faster_rcnn_csa.yaml"),
        "--seeds", "0", "--backbone-runs", str(classification),
        "--data.init_args.num_train", "8", "--data.init_args.num_val", "4", "--data.init_args.canvas_size", "64",
        "--data.init_args.digit_size", "[16, 24]", "--data.init_args.data_dir", str(tmp_path / "coco"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    missing = subprocess.run([*base, "--attentions", "none,se", "--out", str(tmp_path / "bad")], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert missing.returncode != 0 and "no checkpoint for se_seed0" in missing.stderr
    assert not (tmp_path / "bad" / "runs").exists()
    out = tmp_path / "det"
    done = subprocess.run([*base, "--attentions", "csa", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = {r["variant"]: r for r in load_results(out)}
    assert sorted(records) == ["csa_seed0"]
    for name, record in records.items():
        assert record["monitor"] == "val/box_AP" and "val/box_AP50" in record["final"]
        log = (out / "runs" / name / "stdout.log").read_text()
        assert f"{name}/model.ckpt" in log and "backbone weights" in log
    assert "val box_AP %" in (out / "report.md").read_text()


def test_variant_names_and_groups_never_collide():
    """Before: '/' became '-' and a swept key kept only its last part, so data/digits and
    data-digits, or data.x and model.x, silently shared a folder and a report group."""
    values = plan_variants(["none"], [0], {"data.data_dir": ["data/digits", "data-digits"]})
    assert [v.name for v in values] == ["none_data_dir-data%2Fdigits_seed0", "none_data_dir-data-digits_seed0"]
    assert len({v.group for v in values}) == 2
    keys = plan_variants(["none"], [0], {"data.x": ["1"], "model.x": ["1"]})
    assert keys[0].name == "none_data.x-1_model.x-1_seed0" and keys[0].group == "none data.x=1 model.x=1"
    same = plan_variants(["se", "SE".lower()], [0, 0], {})
    assert [v.name for v in same] == ["se_seed0"]


def test_the_stale_check_hashes_the_resolved_config_not_the_files_text(tmp_path):
    """Before: the hash covered the base file's text and the arguments: a changed value in a file
    the base config includes reused old results. Comments and key order change nothing."""
    from csa_lightning.ablate.plan import check_variants

    piece = tmp_path / "piece.yaml"
    piece.write_text(f"config: {DEMO_CONFIG}\ntrainer.max_epochs: 3\n")
    base = tmp_path / "base.yaml"
    base.write_text("config: piece.yaml\ntrainer.default_root_dir: runs/x\n")  # a Table 1 row's shape

    def hashed():
        return check_variants(str(base), plan_variants(["se"], [0], {}), []).resolved["se_seed0"]

    first = hashed()
    assert first.config["trainer"]["max_epochs"] == 3 and "default_root_dir" not in first.config["trainer"]
    piece.write_text(f"# a comment\ntrainer.devices: 1\ntrainer.max_epochs: 3\nconfig: {DEMO_CONFIG}\n")  # same run
    assert hashed().hash == first.hash
    piece.write_text(f"config: {DEMO_CONFIG}\ntrainer.max_epochs: 4\n")
    assert hashed().hash != first.hash


def test_stale_results_name_what_changed_and_old_records_count_as_stale(tmp_path, capsys):
    from csa_lightning.ablate import main

    out = tmp_path / "ablation"
    args = _tiny_ablation(out, "--trainer.max_epochs", "2")
    out.mkdir()
    record = {**_record("none", "none", 0, 0.9), "variant": "none_seed0", "config_hash": "0123456789ab"}
    (out / "results.json").write_text(json.dumps([record]))
    exit_info = refusal(capsys, main, args)
    assert "none_seed0: recorded by an earlier runner, which hashed the config file's text only" in exit_info
    assert "--keep-stale" in exit_info and "\n" not in exit_info
    rows = main([*args, "--keep-stale"])  # adopted as they are: nothing trains
    assert len(rows) == 1 and "0 to run" in capsys.readouterr().out
    kept = json.loads((out / "results.json").read_text())[0]
    assert kept["config_scheme"] == 2 and kept["config"]["trainer"]["max_epochs"] == 2
    exit_info = refusal(capsys, main, _tiny_ablation(out, "--trainer.max_epochs", "3"))
    assert "(none_seed0: trainer.max_epochs: 2 then, 3 now)" in exit_info


@pytest.mark.system
@pytest.mark.slow
def test_sigterm_to_the_runner_ends_its_runs_and_a_live_run_keeps_its_folder(tmp_path, monkeypatch, capsys):
    """Before: SIGTERM to the runner left its child training; a restarted runner took the dead
    runner's lock as stale and could start a second training into the same folder. ~15-30 s."""
    import fcntl

    from csa_lightning.ablate import main
    from csa_lightning.checks import process_alive
    from csa_lightning.run_folder import AblationFolder

    out = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "csa_lightning.ablate", *_tiny_ablation(out, "--trainer.max_epochs", "50")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = AblationFolder(out).run("none_seed0").lock
    deadline = time.time() + TIMEOUT
    while not (lock.exists() and lock.read_text().strip().isdigit()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    child = int(lock.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err[-3000:]
    assert "error: ablation stopped by SIGTERM; 1 run(s) interrupted (none_seed0) and ended;" in err
    assert not process_alive(child)

    # a run still training (here: this test holding its lock) keeps a restarted runner out ...
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"4242   ", 0)
        monkeypatch.chdir(tmp_path)
        exit_info = refusal(capsys, main, _tiny_ablation(out, "--trainer.max_epochs", "50"))
        assert "are still being trained by another process (none_seed0: pid 4242)" in exit_info
        # ... and a run started into its folder anyway refuses by itself
        monkeypatch.setenv("CSA_RUN_LOCK", str(lock))
        from csa_lightning.cli import main as cli_main

        refusal(capsys, cli_main, ["fit", "--config", str(DEMO_CONFIG), "--trainer.fast_dev_run", "1"])
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "afile"], "error: --out afile is a file; give a folder (it is created if missing)"),
        (["--out", "afile/sub"], "error: --out afile/sub cannot be created: "),
        (["--out", "/proc/csa-test/x"], "error: --out /proc/csa-test/x cannot be written (/proc: "),
        (["--out", "x", "--parallel", "0"], "error: --parallel must be a positive integer (runs at once), got 0"),
        (["--out", "x", "--config", "nope.yaml"], "error: --config is given twice ("),
        (["--out", "x", "--seeds", "a"], "error: --seeds: seeds are integers, got 'a'"),
        (["--out", "x", "--attentions", "foo"], "error: --attentions: unknown attention 'foo': choose one of "),
        (
            ["--out", "x", "--sweep", "model.lr_scalng=sqrt,none"],
            "error: variant none_lr_scalng-sqrt_seed0: ClassificationModule has no option 'lr_scalng'; "
            "did you mean 'lr_scaling'?",
        ),
        (
            ["--out", "x", "--slurm.partition", "gpu"],
            "error: --slurm.partition is an option of --executor slurm; add --executor slurm",
        ),
        (["--out", "x", "--executor", "slurm", "--slurm.partiton", "gpu"], "error: --slurm: "),
        (["--out", "x", "--status"], "error: --out x does not exist; nothing was run there (check --out)"),
    ],
)
def test_runner_arguments_are_one_line_errors(args, message, tmp_path, monkeypatch, capsys):
    """Before: --out naming a file ended in FileExistsError's traceback, and a misspelt sweep key's
    message was the CLI's '--help' hint, without the key or the closest name."""
    from csa_lightning.ablate import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    exit_info = refusal(capsys, main, ["--config", str(DEMO_CONFIG), "--attentions", "none", *args])
    assert exit_info.startswith(message)


def test_process_rank_reads_torchrun_then_slurm(monkeypatch):
    from csa_lightning.checks import process_rank

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert process_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert process_rank() == 3
    # torchrun inside a SLURM allocation: RANK is the training's rank, SLURM_PROCID the task's
    monkeypatch.setenv("RANK", "5")
    assert process_rank() == 5


def test_code_hash_ignores_docstrings_comments_and_layout_but_not_code(tmp_path):
    """A docstring edit changes no run, so it must not make an ablation's results stale."""
    from csa_lightning.provenance import _file_hash

    def hash_of(name, text):
        path = tmp_path / name
        path.write_text(text)
        return _file_hash(path)

    code = 'class Gate:\n    """{doc}"""\n\n    def gate(self, x):\n        """{doc}"""\n        return x{op}\n'
    base = hash_of("a.py", '"""Module."""\n' + code.format(doc="Old words.", op=" * 2"))
    assert hash_of("b.py", '"""Module, reworded."""\n' + code.format(doc="New words.", op=" * 2")) == base
    assert hash_of("c.py", "# a comment\n\n" + code.format(doc="Old words.", op="  *  2")) == base
    assert hash_of("d.py", '"""Module."""\n' + code.format(doc="Old words.", op=" * 3")) != base
    # a string that is not a docstring is code
    assert hash_of("e.py", code.format(doc="Old words.", op=" * 2") + 'NAME = "a"\n') != hash_of(
        "f.py", code.format(doc="Old words.", op=" * 2") + 'NAME = "b"\n'
    )


def test_a_missing_base_config_is_one_line(tmp_path, capsys):
    from csa_lightning.ablate import main

    error = refusal(capsys, main, ["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "x")])
    assert error == f"error: base config not found: {tmp_path / 'nope.yaml'}; pass a cli.py fit config with --config"


def test_repeated_list_options_add_up_and_a_value_twice_is_refused(tmp_path, capsys):
    """Before: --seeds 0,1 --seeds 2 planned seed 2 only, and the same --sweep key twice kept the last."""
    from csa_lightning.ablate.runner import _parse

    base = ["--config", str(DEMO_CONFIG), "--out", str(tmp_path / "x")]
    args, _ = _parse([*base, "--seeds", "0,1", "--seeds", "2", "--attentions", "none", "--attentions", "se,CSA",
                      "--sweep", "model.net.depth=18", "--sweep", "model.net.depth=34,50"])  # fmt: skip
    assert args.seeds == [0, 1, 2] and args.attentions == ["none", "se", "csa"]
    assert args.sweep == {"model.net.depth": ["18", "34", "50"]}
    from csa_lightning.ablate import main

    for extra, message in (
        (["--seeds", "0,0"], "error: --seeds lists 0 twice; give each value once"),
        (["--seeds", "-1,0"], "error: --seeds: seeds are integers from 0 to 4294967295, got -1"),
        (["--seeds", ""], "error: --seeds is empty; give at least one value"),
        (["--attentions", ""], "error: --attentions is empty; give at least one value"),
        (["--attentions", "se,SE"], "error: --attentions lists SE twice; give each value once"),
        (["--sweep", "model.net.depth=18", "--sweep", "model.net.depth=18"], "error: --sweep model.net.depth lists 18 twice"),
        (["--parallel", "1", "--parallel", "2"], "error: --parallel is given twice (1, then 2); give it once"),
        (["--poll", "nan"], "error: --poll must be a positive number of seconds, got nan"),
    ):  # fmt: skip
        assert refusal(capsys, main, [*base, *extra]).startswith(message)
    assert not (tmp_path / "x").exists()


def test_a_sweep_written_with_the_configs_own_key_path_is_the_short_one(tmp_path):
    """Before: --sweep model.net.attention_options.reduction=4,8 was passed to every variant as a plain
    override, and the plan check failed blaming the none variant."""
    from csa_lightning.ablate.plan import check_variants, plan_variants, sweep_key
    from csa_lightning.ablate.runner import _parse

    assert sweep_key("model.net.attention_options.reduction") == "model.attention_options.reduction"
    assert sweep_key("model.net.init_args.placement") == "model.placement"
    assert sweep_key("model.net.depth") == "model.net.depth"
    args, extra = _parse(["--config", str(DEMO_CONFIG), "--out", str(tmp_path / "x"), "--attentions", "none,se",
                          "--sweep", "model.net.attention_options.reduction=4,8"])  # fmt: skip
    variants = plan_variants(args.attentions, args.seeds, args.sweep)
    assert [v.name for v in variants] == ["none_seed0", "se_reduction-4_seed0", "se_reduction-8_seed0"]
    checked = check_variants(str(DEMO_CONFIG), variants, extra)
    assert checked.errors == []
    net = checked.resolved["se_reduction-8_seed0"].config["model"]["init_args"]["net"]["init_args"]
    assert net["attention_options"] == {"reduction": 8}


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_runner_killed_hard_takes_its_trainings_with_it(tmp_path):
    """Before: SIGKILL to the runner left its training running as an orphan for minutes. The kernel now
    sends the training SIGTERM when the runner dies (PR_SET_PDEATHSIG), and its stop says why."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from csa_lightning.ablate.job import start_training\n"
        f"proc = start_training(Path({str(tmp_path)!r}), [sys.executable, '-c', "
        "'import os, sys, time; print(os.environ[\"CSA_RUNNER_PID\"], flush=True); time.sleep(120)'], {}, "
        "end_with_parent=True)\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(runner.stdout.readline())
    deadline = time.time() + 30
    while "CSA_RUNNER_PID" not in open(f"/proc/{child}/environ").read() and time.time() < deadline:
        time.sleep(0.05)  # the child has exec'd the training (PDEATHSIG survives exec)
    assert _state(child) not in ("gone", "Z")
    runner.kill()
    runner.wait()
    deadline = time.time() + 10
    while _state(child) not in ("gone", "Z") and time.time() < deadline:
        time.sleep(0.05)
    assert _state(child) in ("gone", "Z")
    assert json.loads((tmp_path / "attempts.jsonl").read_text().splitlines()[0])["event"] == "start"


def test_a_training_whose_runner_is_gone_says_so_in_its_stop(tmp_path, monkeypatch):
    from csa_lightning.ablate.executors.local import status_from_attempts
    from csa_lightning.run_folder import log_attempt, stop_cause
    from csa_lightning.run_folder.files import RUNNER_PID_ENV

    monkeypatch.setenv(RUNNER_PID_ENV, str(os.getppid()))
    assert stop_cause() == {}  # the runner that started it is still its parent
    monkeypatch.setenv(RUNNER_PID_ENV, "999999")
    assert stop_cause() == {"cause": "runner ended", "runner_pid": 999999}
    log_attempt(tmp_path, "start")
    log_attempt(tmp_path, "stop", epoch=1, step=9, **stop_cause())
    status = status_from_attempts(tmp_path)
    assert status.state == "stopped" and "stopped when its runner (pid 999999) ended" in status.detail


def test_one_seed_says_n_1_and_speeds_come_with_their_range(tmp_path):
    """Before: one seed showed '± 0.00', and images/s from 5 to 368 across seeds were averaged without a word."""
    records = [
        _record("none", "none", 0, 0.90, speed=368.0), _record("none", "none", 1, 0.92, speed=5.0),
        _record("none", "none", 2, 0.91, speed=300.0),
        {**_record("se", "se", 0, 0.95, speed=100.0), "inference_images_per_sec_range": [190.0, 210.0]},
    ]  # fmt: skip
    rows = {r["variant"]: r for r in write_report(tmp_path, records, "test")}
    assert rows["se"]["std"] is None
    assert rows["none"]["train_img_s"] == 300.0 and rows["none"]["train_img_s_range"] == [5.0, 368.0]
    assert rows["none"]["train_img_s_stable"] is False
    assert rows["se"]["infer_img_s_range"] == [190.0, 210.0] and rows["se"]["infer_img_s_stable"] is True
    assert rows["se"]["train_img_s_stable"] is None  # one run without a recorded range: nothing to judge
    report = (tmp_path / "report.md").read_text()
    assert "| se | 1 | 5.00 (n = 1) |" in report and "± 0.00" not in report
    assert "| 300 (5-368) unstable | 600 (10-736) unstable |" in report
    assert "| 100 | 200 (190-210) |" in report


def test_a_weights_file_retrained_at_the_same_path_makes_the_results_stale(tmp_path):
    """Before: a backbone or teacher checkpoint named by path was part of no hash: retrained in place, the
    old results were kept without a word."""
    from csa_lightning.ablate.plan import CONFIG_SCHEME, Resolved
    from csa_lightning.ablate.records import stale_variants
    from csa_lightning.provenance import named_files

    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"first training")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").write_bytes(b"teacher")
    config = {"backbone_weights": str(weights), "teacher": str(tmp_path / "run"), "lr": 0.1, "name": "a.b"}
    before = named_files(config)
    assert sorted(before) == ["model.backbone_weights", "model.teacher:last.ckpt"]
    variant = Variant("se", 0)
    out = tmp_path / "ablation"
    out.mkdir()
    record = {"variant": variant.name, "config_scheme": CONFIG_SCHEME, "config_hash": "h", "monitor": "val/top1",
              "final": {"val/top1": 0.9}, "code": {"files": {}, "named_files": before}}  # fmt: skip
    (out / "results.json").write_text(json.dumps([record]))

    def now():
        return {variant.name: Resolved({}, "h", {"files": {}, "named_files": named_files(config)})}

    assert stale_variants(out, [variant], now()) == {}
    weights.write_bytes(b"second training, same path")
    stale = stale_variants(out, [variant], now())
    assert stale == {
        variant.name: f"the file model.backbone_weights names ({weights}) changed since it ran (content hash)"
    }


def test_a_gpu_ablation_is_planned_and_checked_on_a_machine_without_gpus(tmp_path):
    """Before: the plan check built every variant with the job's --trainer.accelerator gpu on the submitting
    machine: 'No supported gpu backend found!' on every GPU-less login node. The job's values are parsed and
    hashed; the build runs on the CPU. The sbatch script carries the GPU request."""
    from csa_lightning.ablate.executors.slurm_resources import parse_resources
    from csa_lightning.ablate.plan import check_variants, plan_variants

    resources = parse_resources(["--slurm.gpus_per_node", "2", "--slurm.nodes", "2"])
    run_args = resources.lightning_args()
    assert run_args[run_args.index("--trainer.accelerator") + 1] == "gpu"
    checked = check_variants(str(DEMO_CONFIG), plan_variants(["none", "csa"], [0], {}), run_args)
    assert checked.errors == []
    trainer = checked.resolved["csa_seed0"].config["trainer"]
    assert (trainer["accelerator"], str(trainer["devices"]), trainer["num_nodes"]) == ("gpu", "2", 2)
    from csa_lightning.third_party import make_sbatch_string

    script = make_sbatch_string(command="true", folder=str(tmp_path / "%j"), job_name="x",
                                 **resources.submitit_parameters())  # fmt: skip
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --nodes=2" in script
    # a bad value is still found, as a value: one line per variant
    bad = check_variants(str(DEMO_CONFIG), plan_variants(["none"], [0], {}), [*run_args, "--model.lr_scalng", "x"])
    assert bad.resolved == {} and bad.errors[0].startswith("variant none_seed0: ClassificationModule has no option")


def test_every_stale_variant_is_named_when_several_changed(tmp_path):
    """Before: the stale check rebound its own `differences` function to the first variant's list, so a
    second changed variant raised "'list' object is not callable" instead of being named."""
    from csa_lightning.ablate.plan import CONFIG_SCHEME, Resolved, Variant
    from csa_lightning.ablate.records import stale_variants

    then = {"trainer": {"max_epochs": 2}}
    records = [{**_record(g, g, 0, 0.9), "variant": f"{g}_seed0", "config_scheme": CONFIG_SCHEME,
                "config_hash": "old", "config": then, "code": {"files": {}}} for g in ("none", "se")]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(records))
    now = Resolved({"trainer": {"max_epochs": 3}}, "new", {"files": {}})
    stale = stale_variants(tmp_path, [Variant("none", 0), Variant("se", 0)], {"none_seed0": now, "se_seed0": now})
    assert stale == {name: "trainer.max_epochs: 2 then, 3 now" for name in ("none_seed0", "se_seed0")}
