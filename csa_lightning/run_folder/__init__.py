"""The run folder: every file of a training run and of an ablation, the runner-to-training environment,
the attempt log, finding checkpoints (and the epoch and step one holds), and the result's schema with
what "done" means. The CLI, the task callbacks and the ablation runner all sit on it; it imports
nothing from them (torch only where a checkpoint is read)."""

from .attempts import log_attempt, read_attempts, redone_steps, stop_cause
from .checkpoints import (
    check_checkpoint_file,
    checkpoint_position,
    checkpoints_newest_first,
    newest_checkpoint,
    resolve_checkpoint,
    saved_config,
)
from .files import (
    AblationFolder,
    RunFolder,
    result_path_from_environment,
    run_lock_from_environment,
    runner_pid_from_environment,
    training_environment,
)
from .result import RESULT_SCHEMA, RunResult, is_done, missing_metric

__all__ = [
    "RunFolder",
    "AblationFolder",
    "training_environment",
    "result_path_from_environment",
    "run_lock_from_environment",
    "runner_pid_from_environment",
    "log_attempt",
    "read_attempts",
    "redone_steps",
    "stop_cause",
    "check_checkpoint_file",
    "checkpoint_position",
    "checkpoints_newest_first",
    "newest_checkpoint",
    "resolve_checkpoint",
    "saved_config",
    "RunResult",
    "RESULT_SCHEMA",
    "is_done",
    "missing_metric",
]
