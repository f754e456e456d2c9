"""The run folder: every file of a training run and of an ablation, the runner-to-training environment,
the attempt log, finding checkpoints (and the epoch and step one holds), and the result's schema with
what "done" means. The CLI, the task callbacks and the ablation runner all sit on it; it imports
nothing from them (torch only where a checkpoint is read). Its names are its modules' ``__all__``."""

from . import attempts, checkpoints, files, result
from .attempts import *  # noqa: F401,F403
from .checkpoints import *  # noqa: F401,F403
from .files import *  # noqa: F401,F403
from .result import *  # noqa: F401,F403

__all__ = [*files.__all__, *result.__all__, *attempts.__all__, *checkpoints.__all__]
