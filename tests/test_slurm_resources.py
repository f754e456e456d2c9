"""The SLURM resources piece, checked before anything is submitted, and what reaches sbatch (no SLURM needed:
`make test`); the jobs themselves are tests/test_slurm.py's, against the one-node SLURM."""

import pytest


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--slurm.time_min", "0"], "--slurm.time_min must be a positive integer, got 0"),
        (["--slurm.nodes", "-1"], "--slurm.nodes must be a positive integer, got -1"),
        (["--slurm.mem_gb", "10", "--slurm.mem_per_cpu", "4G"], "--slurm: mem_gb and mem_per_cpu are both set"),
        (["--slurm.time_min", "1", "--slurm.signal_delay_s", "120"], "--slurm.signal_delay_s (120) must be shorter"),
        (["--slurm.setup", "module load cuda"], "--slurm.setup is a list of shell lines: write --slurm.setup '["),
    ],
)
def test_resources_that_cannot_run_are_one_line(argv, message):
    from csa_lightning.ablate.executors.slurm_resources import parse_resources
    from csa_lightning.errors import UsageError

    with pytest.raises(UsageError) as err:
        parse_resources(argv)
    assert str(err.value).startswith(message)


def test_first_class_keys_reach_the_job_and_gpus_by_gres_alone():
    from csa_lightning.ablate.executors.slurm_resources import parse_resources, sbatch_error

    resources = parse_resources(["--slurm.gres", "gpu:a100:4", "--slurm.gpus_per_node", "4", "--slurm.constraint",
                                 "a100", "--slurm.exclude", "node07", "--slurm.comment", "csa", "--slurm.mem_per_gpu",
                                 "40G", "--slurm.gpus_per_task", "1"])  # fmt: skip
    options = resources.sbatch_options()
    assert options["gres"] == "gpu:a100:4" and "gpus-per-node" not in options  # GPUs by --gres alone
    assert options["ntasks-per-node"] == 4 and options["mem-per-gpu"] == "40G" and options["gpus-per-task"] == 1
    assert (options["constraint"], options["exclude"], options["comment"]) == ("a100", "node07", "csa")
    parameters = resources.submitit_parameters()
    assert parameters["gres"] == "gpu:a100:4" and parameters["constraint"] == "a100"
    # sbatch's own error, not only its "(Try sbatch --help ...)" hint
    stderr = "sbatch: unrecognized option '--gpus-per-nod=1'\nTry \"sbatch --help\" for more information\n"
    assert sbatch_error(stderr, "x") == "unrecognized option '--gpus-per-nod=1'"


def test_status_says_when_the_requeues_after_time_limits_are_used_up():
    """Before: the run's log said 'requeued: time limit' and --status said 'stopped ... run again to resume'."""
    from csa_lightning.ablate.executors import Status
    from csa_lightning.ablate.executors.slurm import requeues_used_up

    events = [{"event": "start"}, {"event": "end", "code": 143, "requeued": "time limit"}] * 4
    status = requeues_used_up(Status("stopped", detail="stopped by a signal (exit 143); run again to resume"),
                              events, {"max_requeues": 3, "time_min": 60})  # fmt: skip
    assert status.detail == (
        "reached its time limit (60 min) 4 times: the 3 requeues are used up; give it a longer --slurm.time_min or "
        "--slurm.max_requeues (or fewer epochs per start), then run again to resume"
    )
    fine = requeues_used_up(Status("queued"), events[:2], {"max_requeues": 3, "time_min": 60})
    assert fine.state == "queued" and not fine.detail


def test_setup_lines_that_fail_stop_the_job_and_choose_its_python(tmp_path):
    """Before: a failing `module load` went unnoticed, and the job ran the submitting machine's interpreter
    path whatever `conda activate` chose."""
    import sys

    from csa_lightning.ablate.executors.slurm_resources import parse_resources
    from csa_lightning.slurm import sbatch_script
    from csa_lightning.third_party import make_sbatch_string

    plain = parse_resources([])
    assert plain.setup_lines() == [] and plain.job_python().strip("'") == sys.executable
    resources = parse_resources(["--slurm.setup", '["module load cuda/12", "conda activate csa"]'])
    assert resources.job_python() == "python"
    script = make_sbatch_string(command=f"{resources.job_python()} -u -m submitit.core._submit x",
                                 folder=str(tmp_path / "%j"), job_name="x", **resources.submitit_parameters())  # fmt: skip
    body = script[script.index("set -e") :]
    assert body.index("set -e") < body.index("module load cuda/12") < body.index("conda activate csa")
    assert body.index("conda activate csa") < body.index("set +e") < body.index("python -u -m submitit")
    single = sbatch_script(resources, ["fit", "--config", "c.yaml"])
    assert "set -e\nmodule load cuda/12\nconda activate csa\nset +e" in single
    assert "srun --kill-on-bad-exit=1 python -m csa_lightning.cli fit --config c.yaml" in single
    assert parse_resources(["--slurm.python", "/opt/env/bin/python"]).job_python() == "/opt/env/bin/python"


def test_attempts_record_the_array_task_id_that_status_shows(tmp_path, monkeypatch):
    """Before: attempts.jsonl recorded the raw job id (107) while --status showed the array task (105_2)."""
    from csa_lightning.ablate.job import start_training
    from csa_lightning.run_folder import read_attempts, scheduler_job_id

    monkeypatch.setenv("SLURM_JOB_ID", "107")
    assert scheduler_job_id() == "107"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "105")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert scheduler_job_id() == "105_2"
    start_training(tmp_path, ["python3", "-c", "pass"], {}).wait()
    assert read_attempts(tmp_path)[0]["job"] == "105_2"
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name)
    assert scheduler_job_id() is None


def test_a_training_killed_by_sigterm_itself_is_stopped_not_failed(tmp_path):
    """Before: a training SIGTERM killed outright (exit -15: the signal landed after its handler was gone)
    was shown failed, with the previous attempt's error; it is a stop like exit 143."""
    from csa_lightning.ablate.executors.local import status_from_attempts
    from csa_lightning.run_folder import RunFolder, log_attempt, stopped_by_signal
    from csa_lightning.run_folder.attempts import ATTEMPT_MARKER

    assert stopped_by_signal(143) and stopped_by_signal(-15) and stopped_by_signal(130) and stopped_by_signal(-2)
    assert not stopped_by_signal(1) and not stopped_by_signal(-9) and not stopped_by_signal(None)
    RunFolder(tmp_path).log().write_text(f"{ATTEMPT_MARKER}\nValueError: the first attempt\n{ATTEMPT_MARKER}\n")
    log_attempt(tmp_path, "start")
    log_attempt(tmp_path, "end", code=-15)
    status = status_from_attempts(tmp_path)
    assert (status.state, status.detail) == ("stopped", "stopped by SIGTERM (killed by it); run again to resume")


def _slurm_run(tmp_path, events, name="se_seed0"):
    import json
    import types

    from csa_lightning.ablate.executors.slurm import SlurmExecutor
    from csa_lightning.ablate.plan import Variant
    from csa_lightning.run_folder import AblationFolder, log_attempt

    run = AblationFolder(tmp_path).run(name)
    run.path.mkdir(parents=True)
    run.slurm_job.write_text(json.dumps({"job_id": "105_2", "stderr": str(tmp_path / "105_2.err"),
                                         "resources": {"max_requeues": 3, "time_min": 60}}))  # fmt: skip
    for event in events:
        log_attempt(run.path, **event)
    return SlurmExecutor(types.SimpleNamespace(slurm=None)), Variant("se", 0)


@pytest.mark.parametrize(
    "ends, squeue, state, detail",
    [
        ([{"code": 143, "requeued": "time limit"}], "PENDING", "requeued",
         "requeued at its time limit, 1 of 3 requeues (squeue: PENDING)"),
        ([{"code": 143}], "PENDING", "requeued", "requeued after SIGTERM: preempted, or scontrol requeue (squeue: PENDING)"),
        ([{"code": -15}], None, "stopped",
         "stopped by SIGTERM and not requeued: cancelled (scancel) or ended by SLURM; run again to resume"),
        ([{"code": 1}], None, "failed", "exit 1"),
    ],
)  # fmt: skip
def test_status_says_why_each_job_ended(tmp_path, monkeypatch, ends, squeue, state, detail):
    from csa_lightning.ablate.executors.slurm import SlurmExecutor

    events = [e for end in ends for e in ({"event": "start", "job": "105_2"}, {"event": "end", **end})]
    executor, variant = _slurm_run(tmp_path, events)
    monkeypatch.setattr(SlurmExecutor, "_squeue", staticmethod(lambda ids: {"105_2": squeue} if squeue else {}))
    live = executor.live(tmp_path, [variant])
    status = live[variant.name] if variant.name in live else executor.status(tmp_path, variant)
    assert (status.state, status.detail, status.job) == (state, detail, "105_2")
