"""The ablation runner's SLURM executor against a real SLURM: the one-node cluster of ``make slurm``
(scripts/slurm_up.sh). ``make test-slurm`` brings it up and runs these; elsewhere they are skipped.

Runs are tiny (the in-memory digits at 16 px); SLURM holds a requeued job back 120 s before it is
eligible again, which the requeue tests shorten to 3 s with ``scontrol update StartTime=now+3`` (the only thing
they do that a cluster would not).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[1]
CPU_PIECE = ROOT / "configs" / "cluster" / "local_cpu.yaml"
TIMEOUT = 600


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    listed = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return listed.returncode == 0 and any(s in listed.stdout for s in ("idle", "mix", "alloc"))


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not _slurm_up(), reason="no SLURM answers here (make slurm starts a one-node one)"),
]


def _ablation(out, *extra, attentions="none", epochs=1, samples=32):
    return [
        sys.executable, "-m", "csa_lightning.ablate", "--config", str(DEMO_CONFIG), "--attentions", attentions,
        "--seeds", "0", "--out", str(out), "--data", "csa_lightning.data.DigitsMemoryDataModule",
        "--data.resolution", "16", "--data.batch_size", "32", "--data.limit_train_samples", str(samples),
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", str(epochs), "--executor", "slurm", "--slurm", str(CPU_PIECE), *extra,
    ]  # fmt: skip


def _run(cmd, check=True, **env):
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env))  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _status(out, cmd):
    done = _run([*cmd, "--status"])
    rows = [line.split() for line in done.stdout.splitlines()]
    return {row[0]: row[1] for row in rows if row and row[0].endswith("_seed0")}


def _job(run_dir) -> str:
    return json.loads((run_dir / "slurm_job.json").read_text())["job_id"]


def _events(run_dir):
    path = run_dir / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _until(condition, what, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _release_requeued(job):
    """A requeued job is eligible only 120 s after it was requeued: shorten that hold to 3 s. Not to
    0: the node revokes the previous run's credential at its end, with one-second resolution, and a
    restart within that second is killed ("Killing non-startable batch job: Job credential
    revoked"), which is what the 120 s hold exists to prevent."""
    _until(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                               text=True).stdout, f"job {job} pending again")  # fmt: skip
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], check=True)


def test_two_variants_run_as_jobs_with_status_and_resubmitting_submits_nothing(tmp_path):
    out = tmp_path / "grid"
    cmd = _ablation(out, attentions="none,se")
    first = _run(cmd)
    assert "2 to submit" in first.stdout and "submitted 2 job(s) as SLURM array" in first.stdout
    states = _status(out, cmd)  # while the jobs are queued or running
    assert set(states) == {"none_seed0", "se_seed0"} and set(states.values()) <= {"queued", "running", "done"}
    again = _run([*cmd, "--wait", "--poll", "1"])  # the same command: nothing new, it waits and merges
    assert "0 to submit" in again.stdout and "submitted" not in again.stdout
    records = json.loads((out / "results.json").read_text())
    assert sorted(r["variant"] for r in records) == ["none_seed0", "se_seed0"]
    assert all(r["attempts"] == {"starts": 1, "stops": [], "redone_steps": 0} for r in records)
    assert "| se | 1 |" in (out / "report.md").read_text()
    assert _status(out, cmd) == {"none_seed0": "done", "se_seed0": "done"}
    third = _run(cmd)
    assert "2 already finished, 0 to submit" in third.stdout


def test_a_job_of_two_tasks_runs_lightning_ddp_and_both_ranks_agree(tmp_path):
    """Two SLURM tasks, one rank each: Lightning reads the ranks from SLURM; num_nodes and devices
    come from the resources piece (the runner passes them)."""
    out = tmp_path / "ddp"
    cmd = _ablation(out, "--slurm.tasks_per_node", "2", "--trainer.callbacks+=tests.slurm_probe.RankDigest", samples=64)
    _run([*cmd, "--wait", "--poll", "1"])
    run_dir = out / "runs" / "none_seed0"
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert "MEMBER: 2/2" in (run_dir / "stdout.rank1.log").read_text()
    config = json.loads((out / "results.json").read_text())[0]["config"]["trainer"]
    assert (config["num_nodes"], str(config["devices"]), config["accelerator"]) == (1, "2", "cpu")


def _check_resumed_record(record, run_dir, epochs):
    attempts = record["attempts"]
    starts = [e for e in _events(run_dir) if e["event"] == "start"]
    stop = next(e for e in _events(run_dir) if e["event"] == "stop")
    assert attempts["starts"] == 2 and starts[1]["resumed"]["checkpoint"] == "last.ckpt"
    assert attempts["redone_steps"] == stop["step"] - starts[1]["resumed"]["step"] == 1
    assert attempts["stops"][0]["epoch"] == 1 and record["epochs"] == epochs
    assert starts[1]["job"] == _job(run_dir)  # the array task id, as --status shows it


def test_jobs_stopped_by_their_time_limit_or_by_preemption_requeue_and_resume(tmp_path):
    """Each run's first start holds at the first batch of epoch 1 until it is stopped (the held file
    says it got there: no sleeping into an epoch). none: SIGUSR2, what a job gets signal_delay_s before
    its time limit (#SBATCH --signal): the job stops its training and requeues itself. se: a job of
    the urgent partition preempts it (PreemptMode=REQUEUE): SLURM sends SIGTERM, the training stops
    through the one mechanism, SLURM requeues after the grace time. Both resume from last.ckpt."""
    out = tmp_path / "stopped"
    cmd = _ablation(
        out, "--trainer.callbacks+=tests.slurm_probe.HoldInEpoch", attentions="none,se", epochs=3, samples=64
    )  # two steps an epoch: the stop lands inside epoch 1
    _run(cmd)
    runs = {name: out / "runs" / f"{name}_seed0" for name in ("none", "se")}
    _until(lambda: all((run / "held").exists() for run in runs.values()), "both runs held in epoch 1")
    jobs = {name: _job(run) for name, run in runs.items()}
    subprocess.run(["scancel", "--signal=USR2", jobs["none"]], check=True)
    _until(lambda: any(e["event"] == "end" and e.get("requeued") for e in _events(runs["none"])), "the requeue")
    assert _status(out, cmd)["none_seed0"] == "requeued"
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", "2", "-o", str(tmp_path / "urgent.out"),
                             "--wrap", "sleep 1"], capture_output=True, text=True, check=True)  # fmt: skip
    _until(lambda: any(e["event"] == "stop" for e in _events(runs["se"])), "the preempted training's stop")
    for job in jobs.values():
        _release_requeued(job)
    _until(lambda: (tmp_path / "urgent.out").exists(), f"the urgent job {urgent.stdout.strip()}")
    _run([*cmd, "--wait", "--poll", "1"])
    records = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
    assert sorted(records) == ["none_seed0", "se_seed0"]  # one record each, not two
    for name, run_dir in runs.items():
        _check_resumed_record(records[f"{name}_seed0"], run_dir, epochs=3)


def test_bad_resources_and_failing_jobs_are_one_line(tmp_path, monkeypatch):
    out = tmp_path / "bad"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    for key, value, message in [
        ("--slurm.partition", "nope", "SLURM refuses this job's resources (allocation failure: Invalid partition"),
        ("--slurm.cpus_per_task", "64", "Requested node configuration is not available"),
        ("--slurm.cpu_per_task", "1", "error: --slurm: "),
    ]:
        done = _run(_ablation(out, key, value), check=False)
        assert done.returncode != 0 and message in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), PYTHONPATH=str(ROOT))
    done = subprocess.run(_ablation(out), capture_output=True, text=True, cwd=ROOT, env=env, timeout=TIMEOUT)
    assert "error: --executor slurm needs SLURM's sbatch on the PATH" in done.stderr.strip().splitlines()[-1]
    # a job whose training fails: failed, with the error's last line, and not retried
    failing = _ablation(out, "--attentions", "tests.slurm_probe.FailsInTraining")
    _run([*failing, "--wait", "--poll", "1"], check=False)
    done = _run([*failing, "--status"])
    row = next(line for line in done.stdout.splitlines() if "FailsInTraining" in line and "seed0" in line)
    assert " failed " in row and "RuntimeError: FailsInTraining: a deliberate error" in row, row


def test_plain_fit_as_an_sbatch_script_requeues_at_its_time_limit_and_resumes(tmp_path):
    """python -m csa_lightning.slurm: one cli.py fit as a job script from the same resources piece;
    SIGUSR2 (its time-limit warning, #SBATCH --signal=B:USR2@...) to the script requeues it, and the
    new start resumes through --ckpt_path auto."""
    root = tmp_path / "fit"
    script = tmp_path / "fit.sbatch"
    done = subprocess.run(
        [sys.executable, "-m", "csa_lightning.slurm", "--slurm", str(CPU_PIECE), "--script", str(script), "--submit",
         "--", "fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.DigitsMemoryDataModule",
         "--data.resolution", "16", "--data.batch_size", "32", "--data.limit_train_samples", "64",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "3",
         "--trainer.default_root_dir", str(root), "--trainer.callbacks+=tests.slurm_probe.HoldInEpoch"],
        capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    job = done.stdout.split()[2].rstrip(":")
    assert "#SBATCH --signal=B:USR2@30" in script.read_text() and "--ckpt_path auto" in script.read_text()
    _until(lambda: (root / "held").exists(), "the training held in epoch 1")
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)
    _release_requeued(job)
    _until(lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip(),
           f"job {job} to finish")  # fmt: skip
    output = (tmp_path / f"csa-fit-{job}.out").read_text()
    assert "--ckpt_path auto: no checkpoint under" in output  # the first start
    assert "interrupted by SIGTERM in epoch" in output  # the time limit's stop, through the one mechanism
    assert "Restored all states from the checkpoint" in output  # the requeued start resumed
    import torch

    (last,) = sorted(root.glob("**/last.ckpt"), key=lambda p: p.stat().st_mtime)[-1:]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2


def test_stops_between_the_last_epoch_and_the_record_lose_no_result(tmp_path):
    """Before: a run stopped after its last epoch but before its record was requeued, resumed with nothing
    left to train and recorded "final": {}, shown done and left out of the report. Two such stops here,
    while each run is held after its last epoch: the time-limit warning (SIGUSR2, the job stops its
    training and requeues itself) and preemption by the urgent partition (SLURM's SIGTERM and requeue).
    Each run's second start evaluates the checkpoint and records; the report has both with their numbers."""
    out = tmp_path / "held"
    cmd = _ablation(out, "--trainer.callbacks+=tests.slurm_probe.HoldBeforeRecord", attentions="none,se", epochs=2)
    _run(cmd, CSA_SIGTERM_GRACE="5")
    runs = {name: out / "runs" / f"{name}_seed0" for name in ("none", "se")}
    _until(lambda: all((run / "held").exists() for run in runs.values()), "both runs held after their last epoch")
    jobs = {name: _job(run) for name, run in runs.items()}
    subprocess.run(["scancel", "--signal=USR2", jobs["none"]], check=True)
    _until(lambda: any(e["event"] == "end" and e.get("requeued") for e in _events(runs["none"])), "the requeue")
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", "2", "-o", str(tmp_path / "urgent.out"),
                             "--wrap", "sleep 1"], capture_output=True, text=True, check=True)  # fmt: skip
    _until(lambda: any(e["event"] == "end" for e in _events(runs["se"])), "the preempted run's end")
    assert [e["code"] for e in _events(runs["se"]) if e["event"] == "end"] in ([143], [-15])
    states = _status(out, cmd)
    assert states["none_seed0"] == "requeued"
    for job in jobs.values():
        _release_requeued(job)
    _until(lambda: (tmp_path / "urgent.out").exists(), f"the urgent job {urgent.stdout.strip()}")
    _run([*cmd, "--wait", "--poll", "1"])
    records = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
    assert sorted(records) == ["none_seed0", "se_seed0"]
    for name, record in records.items():
        assert record["attempts"]["starts"] == 2 and record["epochs"] == 2, record
        assert 0.0 <= record["final"]["val/top1"] <= 1.0 and record["best"] is not None, record
        starts = [e for e in _events(runs[name.split("_")[0]]) if e["event"] == "start"]
        assert starts[1]["job"] == jobs[name.split("_")[0]]  # the array task id, as --status shows it
    report = (out / "report.md").read_text()
    assert "| none | 1 |" in report and "| se | 1 |" in report, report
    assert _status(out, cmd) == {"none_seed0": "done", "se_seed0": "done"}
