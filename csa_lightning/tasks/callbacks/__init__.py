"""The callbacks every run uses, one per file as Lightning keeps its own: what produced a run
(`RunInfo`), its training speed (`ImagesPerSecond`), where its outputs are (`RunSummary`), its result
for the ablation runner (`RecordResult`),
``cli.py predict``'s files (`PredictionWriter`) and SIGTERM's stop (`SigtermWatchdog`)."""

from . import images_per_second, prediction_writer, record_result, run_info, run_summary, sigterm
from .images_per_second import *  # noqa: F401,F403
from .prediction_writer import *  # noqa: F401,F403
from .record_result import *  # noqa: F401,F403
from .run_info import *  # noqa: F401,F403
from .run_summary import *  # noqa: F401,F403
from .sigterm import *  # noqa: F401,F403

__all__ = [
    *images_per_second.__all__,
    *run_info.__all__,
    *run_summary.__all__,
    *record_result.__all__,
    *prediction_writer.__all__,
    *sigterm.__all__,
]
