"""SIGTERM always ends a run, and says what it resumes from: the project's one stop-and-resume mechanism."""

from __future__ import annotations

import os
import sys
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ...run_folder import checkpoint_position
from .run_summary import checkpoint_files

__all__ = ["SigtermWatchdog", "sigterm_resume_line"]


class SigtermWatchdog(Callback):
    """SIGTERM always ends the run, and says so: the project's one stop-and-resume mechanism.

    Lightning's handler (which stops at the next batch boundary and raises ``SIGTERMException``,
    an exit with status 0) is kept. When the run stops, this callback prints one line naming the
    checkpoint to resume from: the newest ``last.ckpt`` (written at the end of every epoch), and
    the interrupted epoch, which a resumed run trains again from its first batch (ffcv's and
    torch's loaders cannot resume mid-epoch), or that none was written yet. With a loader that
    resumes mid-epoch (LitData's) it first saves ``last.ckpt`` at the stop
    (`csa_lightning.tasks.callbacks.sigterm.save_at_stop`), and the resumed run continues at the next batch;
    ``cli.py`` then exits with status 143 (128 + SIGTERM), so a shell script or a scheduler sees an interrupted run.
    If the process is still alive ``grace`` seconds after the signal (blocked in a data loader that
    never returns a batch, so no boundary comes) it exits with status 143 and one line saying why.

    ``grace``: seconds (default 60, or ``CSA_SIGTERM_GRACE``); long enough for Lightning to finish a
    step and the checkpoint it writes, short of a scheduler's kill timeout.
    """

    def __init__(self, grace: Optional[float] = None) -> None:
        super().__init__()
        self.grace = float(grace if grace is not None else os.environ.get("CSA_SIGTERM_GRACE", 60))
        self._installed = False
        self._timers: list = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        # installed before Lightning registers its own SIGTERM handler (later in the same run),
        # which then calls this one beside its notifier (it composes with a handler already there)
        import signal
        import threading

        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        grace = self.grace

        def arm_watchdog(signum, frame):
            timer = threading.Timer(grace, _exit_after_sigterm, args=(grace,))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)
            if signal.getsignal(signal.SIGTERM) is arm_watchdog:
                # Lightning installs its handler only after the setup and on_fit_start hooks: a signal
                # before that would go unseen until the watchdog fired; stop here (nothing to save yet)
                from lightning.pytorch.utilities.exceptions import SIGTERMException

                raise SIGTERMException()

        self._previous = signal.signal(signal.SIGTERM, arm_watchdog)
        self._installed = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        saved = save_at_stop(trainer)  # every rank: saving is collective under DDP
        if trainer.is_global_zero:
            print(f"error: {sigterm_resume_line(trainer, saved)}", file=sys.stderr, flush=True)
        self._disarm()  # the run has stopped: the watchdog is for one that never reaches this

    def _disarm(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        import signal

        self._disarm()
        if self._installed and signal.getsignal(signal.SIGTERM) is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous)  # what the process had before the run
            except ValueError:  # not the main thread
                pass
            self._installed = False


def resumable_mid_epoch(loader) -> bool:
    """A training loader whose position Lightning saves and restores (LitData's StreamingDataLoader,
    torchdata's StatefulDataLoader): a run stopped mid-epoch can continue at its next batch."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


def _last_checkpoint_path(trainer: "L.Trainer") -> Optional[str]:
    """Where the every-epoch ``last.ckpt`` callback writes (also before it has written anything)."""
    _, last = checkpoint_files(trainer)
    if last:
        return last
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and not cb.monitor and cb.dirpath and "{" not in (cb.filename or "last"):
            return os.path.join(cb.dirpath, f"{cb.filename or 'last'}{cb.FILE_EXTENSION}")
    return None


def save_at_stop(trainer: "L.Trainer") -> Optional[str]:
    """With a loader that resumes mid-epoch, save ``last.ckpt`` at the stop (the loader's position
    and the loops' progress in it), so that nothing of the interrupted epoch is trained twice;
    with any other loader save nothing (a mid-epoch checkpoint would restart the epoch's data and
    train part of it twice): the epoch-end ``last.ckpt`` stays what a resumed run starts from."""
    if trainer.state.fn != "fit" or not resumable_mid_epoch(trainer.train_dataloader):
        return None
    path = _last_checkpoint_path(trainer)
    if path is None:
        return None
    trainer.save_checkpoint(path)
    return path


def sigterm_resume_line(trainer: "L.Trainer", saved_at_stop: Optional[str] = None) -> str:
    """What a run stopped by SIGTERM has to resume from, in one line."""
    where = f"interrupted by SIGTERM in epoch {trainer.current_epoch}"
    if trainer.state.fn != "fit":
        return f"{where} while running {trainer.state.fn}; nothing to resume: run the same command again"
    if saved_at_stop:
        return (
            f"{where} (step {trainer.global_step}); saved at the stop: {saved_at_stop} (the loader resumes at its "
            "next batch of this epoch); resume with the same command and --ckpt_path last"
        )
    _, last = checkpoint_files(trainer)
    if not last or not os.path.isfile(last):
        return (
            f"{where} before any checkpoint was written; run the same command again to start afresh "
            "(nothing is lost but this partial epoch)"
        )
    position = checkpoint_position(last)
    epoch, step = position["epoch"], position["step"]
    return (
        f"{where} (step {trainer.global_step}); resume with the same command and --ckpt_path last (= {last}, "
        f"saved at the end of epoch {epoch}, step {step}; epoch {epoch + 1} is trained again from its first batch)"
    )


def _exit_after_sigterm(grace: float) -> None:
    print(
        f"error: the run did not stop within {grace:g} s of SIGTERM (blocked in a data loader?); exiting",
        file=sys.stderr,
        flush=True,
    )
    os._exit(143)
