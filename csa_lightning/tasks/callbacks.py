"""Callbacks every run uses: what produced it (run_info.json) and where its outputs are."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ..run_folder import RunResult, checkpoint_position, result_path_from_environment
from ..run_folder.result import TRAIN_IMAGES_PER_SEC
from ..third_party import run_validation

__all__ = [
    "RunInfo",
    "RunSummary",
    "checkpoint_files",
    "RecordResult",
    "PredictionWriter",
    "SigtermWatchdog",
    "run_info",
    "sigterm_resume_line",
]

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "jsonargparse",
    "ffcv",
    "numba",
    "numpy",
    "csa-lightning",
)


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_info() -> Dict[str, Any]:
    """Git commit (and whether the tree was dirty), package versions, seed, command, host."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions,
        "python": sys.version.split()[0],
        "seed": os.environ.get("PL_GLOBAL_SEED"),
        "command": sys.argv,
        "host": platform.node(),
    }


def checkpoint_files(trainer: "L.Trainer") -> Tuple[Optional[ModelCheckpoint], Optional[str]]:
    """(the checkpoint callback that monitors a metric, the path of the newest last checkpoint).

    The configs keep two: the best epoch by the task's metric, and ``last.ckpt`` written at the
    end of every epoch by one without a monitor (Lightning's ``save_last`` only copies the epochs
    the best-checkpoint callback saves). A single callback with ``save_last`` works too.
    """
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor), None)
    last = None
    for cb in callbacks:
        if cb.last_model_path:
            last = cb.last_model_path
        elif not cb.monitor and cb.best_model_path:
            last = cb.best_model_path  # no monitor: its "best" is the newest epoch
    return best, last


class RunInfo(Callback):
    """Writes ``run_info.json`` into the log directory and stores it in every checkpoint: this
    repository's commit, package versions, and under "code" the provenance of every class the run
    is built from (`csa_lightning.provenance.code_provenance`: the user's own packages too) and the
    files its model arguments name, by content (`csa_lightning.provenance.named_files`)."""

    def __init__(self) -> None:
        self.info = run_info()

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        from ..provenance import code_provenance, named_files, run_classes

        self.info["code"] = code_provenance(run_classes(pl_module, trainer.datamodule, trainer.callbacks))
        # the files the model's arguments name (pretrained weights, a teacher), by content
        self.info["code"]["named_files"] = named_files(dict(getattr(pl_module, "hparams", {}) or {}))
        source = getattr(pl_module, "weights_source", None)
        if source:  # weights by name (IMAGENET1K_V2): the cached file it resolved to, by content
            found = named_files({"backbone_weights": source["path"]}).get("model.backbone_weights", {})
            self.info["code"]["named_files"]["model.backbone_weights"] = {**source, **found}
        # trainer.log_dir is a collective under DDP: every rank asks, rank 0 writes
        log_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.global_rank != 0:
            return
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        info = dict(self.info, world_size=trainer.world_size, precision=str(trainer.precision))
        (Path(log_dir) / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        checkpoint["run_info"] = self.info

    def state_dict(self) -> Dict[str, Any]:
        return {}


class RunSummary(Callback):
    """Prints, as the last lines of a fit, where the checkpoints and logs are and the best score."""

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: all ranks
        if trainer.global_rank != 0:
            return
        best, last = checkpoint_files(trainer)
        lines = []
        # fast_dev_run names checkpoints it never writes: list only files that exist
        if best is not None and os.path.isfile(best.best_model_path):
            score = (
                f" ({best.monitor} = {float(best.best_model_score):.4f})" if best.best_model_score is not None else ""
            )
            lines.append(f"best checkpoint: {best.best_model_path}{score}")
        if last and os.path.isfile(last):
            lines.append(f"last checkpoint: {last}")
        lines.append(f"logs: {log_dir}")
        print("\n" + "\n".join(lines), flush=True)


class RecordResult(Callback):
    """Writes the outcome of a fit as JSON (the ablation runner's record of one run).

    Path: ``result_path``, or the one the ablation runner sets (`csa_lightning.run_folder.files`); contents:
    a `csa_lightning.run_folder.result.RunResult`: the metric
    the checkpoints monitor and its best value, every validation metric of the last epoch, epochs,
    params, GMAC at the data's resolution, train images/s (mean over the last epoch), inference
    images/s (eval mode, one batch, median of 5), and the checkpoints. A run a signal stops logs its
    epoch and step in the folder's attempt log (`csa_lightning.run_folder.attempts`).
    """

    def __init__(self, result_path: Optional[str] = None) -> None:
        self.result_path = result_path or result_path_from_environment()

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        import statistics
        import time

        import torch

        from ..models.summary import count_cost

        if not self.result_path:
            return
        ckpt, _ = checkpoint_files(trainer)
        monitor = getattr(ckpt, "monitor", None) or "val/top1"
        if monitor not in trainer.callback_metrics:
            # nothing was trained or validated in this process: a run resumed from a checkpoint saved after
            # its last epoch (a stop between the last epoch and this record). Its result is evaluated from
            # that checkpoint now (every rank: validation is collective under DDP), so the run is done.
            rank_zero_info(f"no {monitor} logged in this run (nothing left to train): validating the checkpoint")
            run_validation(trainer)
        if trainer.global_rank != 0:
            return
        datamodule = trainer.datamodule
        size = int(getattr(datamodule, "resolution", 224))
        batch = int(getattr(datamodule, "batch_size", 32))
        net = getattr(pl_module, "model", pl_module)
        params, gmac = count_cost(net, size)
        was_training = pl_module.training
        pl_module.eval()
        x = torch.randn(batch, 3, size, size, device=pl_module.device)
        times = []
        with torch.no_grad():
            for _ in range(6):
                start = time.perf_counter()
                pl_module(x)
                times.append(time.perf_counter() - start)
        pl_module.train(was_training)
        metrics = trainer.callback_metrics
        ckpt, last = checkpoint_files(trainer)
        best = ckpt.best_model_score if ckpt is not None and ckpt.best_model_score is not None else metrics.get(monitor)
        record = RunResult(
            monitor=monitor,
            best=float(best) if best is not None else None,
            final={k: float(v) for k, v in metrics.items() if k.startswith("val/") and v.numel() == 1},
            epochs=trainer.current_epoch,
            params=params,
            gmac=round(gmac, 4),
            gmac_resolution=size,
            train_images_per_sec=float(metrics.get(TRAIN_IMAGES_PER_SEC, float("nan"))),
            inference_images_per_sec=batch / statistics.median(times[1:]),
            inference_images_per_sec_range=[batch / max(times[1:]), batch / min(times[1:])],
            val_fraction=_validated_fraction(trainer),
            best_checkpoint=getattr(ckpt, "best_model_path", None),
            last_checkpoint=last,
        ).to_json()
        path = Path(self.result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        """A run stopped by a signal logs where it stopped in its folder's attempt log, so that the
        record of the run that finishes it says what was trained twice."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from ..run_folder import log_attempt, stop_cause

        if isinstance(exception, SIGTERMException) and trainer.global_rank == 0 and self.result_path:
            log_attempt(Path(self.result_path).parent, "stop", epoch=trainer.current_epoch, step=trainer.global_step,
                        **stop_cause())  # fmt: skip


def _validated_fraction(trainer: "L.Trainer") -> Optional[float]:
    """The share of the validation batches each epoch evaluated (None when there was no validation)."""
    loaders = trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders] if loaders is not None else []
    try:
        total = sum(len(loader) for loader in loaders)
    except TypeError:  # an iterable without a length
        return None
    used = sum(min(n, t) for n, t in zip(trainer.num_val_batches, (len(loader) for loader in loaders)))
    return round(used / total, 6) if total else None


class PredictionWriter(BasePredictionWriter):
    """``cli.py predict`` writes what it predicted, and says where in its last line.

    Classification: ``predictions.csv`` with one row per image in loader order: ``index``,
    ``path`` (the image file, where the data set knows it), ``label`` (where the data has one), then
    ``class_1, prob_1 .. class_k, prob_k`` (the model's top k, k = min(5, classes)). Detection:
    ``predictions.json`` in COCO's results format (``image_id``, ``category_id``, ``bbox`` as
    x, y, width, height, ``score``), ready for pycocotools' ``loadRes``. Written to the run's log
    folder (or ``default_root_dir``); under DDP each process writes ``predictions_rank{r}.*``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Optional[Path] = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        batches = _first_dataloader(predictions)
        if batches and isinstance(batches[0], list):  # detection: a list of per-image dicts per batch
            self.path = folder / f"predictions{suffix}.json"
            self.path.write_text(json.dumps(_coco_results(batches, trainer)))
        else:
            self.path = folder / f"predictions{suffix}.csv"
            _write_classification_csv(self.path, batches, trainer, _sample_indices(trainer, batch_indices))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.path is not None and trainer.is_global_zero:
            print(f"predictions: {self.path}")


def _first_dataloader(predictions: list) -> list:
    """Lightning gives one list of batch outputs per predict dataloader when there are several."""
    if predictions and isinstance(predictions[0], list) and predictions[0]:
        first = predictions[0][0]
        if isinstance(first, list) or (isinstance(first, dict) and "top_classes" in first):
            return predictions[0]
    return predictions


def _predict_loader(trainer):
    loaders = trainer.predict_dataloaders
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def _dataset_paths(trainer) -> Optional[list]:
    samples = getattr(getattr(_predict_loader(trainer), "dataset", None), "samples", None)  # torchvision ImageFolder
    return [str(s[0]) for s in samples] if samples else None


def _sample_indices(trainer, batch_indices) -> Optional[list]:
    """The data set index of every predicted row, in row order: what Lightning recorded from a torch
    loader's sampler, else the loader's own ``sample_indices`` (ffcv), else None (row = index).
    The loaders evaluate in a stratified order, not in stored order, so row and index differ."""
    recorded = _first_dataloader(batch_indices or [])
    if recorded and all(isinstance(b, (list, tuple)) and b for b in recorded):
        return [int(i) for b in recorded for i in b]
    own = getattr(_predict_loader(trainer), "sample_indices", None)
    return [int(i) for i in own] if own is not None else None


def _write_classification_csv(path: Path, batches: list, trainer, indices: Optional[list] = None) -> None:
    import csv

    paths = _dataset_paths(trainer)
    k = int(batches[0]["top_classes"].shape[1]) if batches else 0
    header = ["index", "path", "label"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        position = 0
        for batch in batches:
            labels = batch.get("label")
            for row in range(len(batch["top_classes"])):
                index = indices[position] if indices is not None and position < len(indices) else position
                cells = [index, paths[index] if paths and index < len(paths) else ""]
                cells.append(int(labels[row]) if labels is not None else "")
                for c, p in zip(batch["top_classes"][row].tolist(), batch["top_probs"][row].tolist()):
                    cells += [int(c), f"{p:.6f}"]
                writer.writerow(cells)
                position += 1


def _coco_results(batches: list, trainer) -> list:
    """torchvision detections -> COCO results; labels 1..K map back to the data's category ids."""
    datamodule = getattr(trainer, "datamodule", None)
    category_ids = getattr(getattr(datamodule, "val_set", None), "category_ids", None)
    results, index = [], 0
    for batch in batches:
        for detections in batch:
            image_id = int(detections.get("image_id", index))
            for box, label, score in zip(
                detections["boxes"].tolist(), detections["labels"].tolist(), detections["scores"].tolist()
            ):
                category = category_ids[int(label) - 1] if category_ids else int(label)
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})  # fmt: skip
            index += 1
    return results


class SigtermWatchdog(Callback):
    """SIGTERM always ends the run, and says so: the project's one stop-and-resume mechanism.

    Lightning's handler (which stops at the next batch boundary and raises ``SIGTERMException``,
    an exit with status 0) is kept. When the run stops, this callback prints one line naming the
    checkpoint to resume from: the newest ``last.ckpt`` (written at the end of every epoch), and
    the interrupted epoch, which a resumed run trains again from its first batch (ffcv's and
    torch's loaders cannot resume mid-epoch), or that none was written yet. With a loader that
    resumes mid-epoch (LitData's) it first saves ``last.ckpt`` at the stop
    (`csa_lightning.tasks.callbacks.save_at_stop`), and the resumed run continues at the next batch; ``cli.py`` then
    exits with status 143 (128 + SIGTERM), so a shell script or a scheduler sees an interrupted run.
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
