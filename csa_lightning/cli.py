"""The LightningCLI behind ``cli.py``.

Model and data are in subclass mode, so ``class_path`` picks any LightningModule or
LightningDataModule, a user's subclass in another package included. Beyond LightningCLI:

- ``--ckpt_path`` is checked before anything runs: a missing or corrupt checkpoint is a
  one-line error; ``last`` is this config's newest ``last.ckpt`` under ``default_root_dir``, and
  ``auto`` (fit) is ``last`` when there is one, else a fresh start (what a requeued job wants);
- a run that fails before its first checkpoint removes the log folder it created, so no
  half-made run folder is left behind;
- checkpoints are written by `csa_lightning.tasks.checkpoint_io.AtomicCheckpointIO`
  (a kill while saving leaves no file in the system's temporary folder);
- errors caused by input (missing files, bad values) print as one line,
  ``error: <what is wrong and how to fix it>``; set ``CSA_LIGHTNING_TRACEBACK=1`` for the traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from .config_diff import comparable, differences
from .config_errors import one_line, parse_error_line
from .errors import first_line
from .resume import evaluation_data_warning, find_last_checkpoint
from .run_folder import check_checkpoint_file
from .run_switches import parse_only, short_run, short_trainer_values, stop_after_parsing
from .trainer_setup import (
    check_trainer_values,
    default_loggers,
    prefer_counts_to_fractions,
    quiet_lightning,
    with_atomic_checkpoint_io,
)

__all__ = ["CSALightningCLI", "main", "check_checkpoint_file", "repeated_option"]


class CSALightningCLI(LightningCLI):
    """LightningCLI in subclass mode; the module configures its own optimiser and scheduler."""

    def add_arguments_to_parser(self, parser) -> None:
        prefer_counts_to_fractions(parser)

    def before_instantiate_classes(self) -> None:
        # the trainer's numbers, checked before anything is built: Lightning rejects some only in
        # a 30-line traceback (max_epochs -2), others never (accumulate_grad_batches 0 divided by zero)
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        check_trainer_values(config.get("trainer") or {})
        if self.subcommand:  # a command line to run (the tools' plan checks build with run=False)
            stop_after_parsing(f"cli.py {self.subcommand}")
        if short_run() and config.get("trainer") is not None:
            for key, value in short_trainer_values().items():
                config.trainer[key] = value

    def _parse_ckpt_path(self) -> None:
        # LightningCLI unpickles --ckpt_path right after parsing (for its hyperparameters), before any
        # public hook runs (before_instantiate_classes comes later): only this override can turn a
        # missing or corrupt file into a one-line error, resolve "last" to this config's run, and
        # refuse a checkpoint whose hyperparameters differ from the command's (Lightning silently
        # replaces the command's model arguments with the checkpoint's)
        subcommand = self.config.get("subcommand")
        if not subcommand or parse_only():  # parsing only: no checkpoint is read
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path == "auto" and subcommand == "fit":
            # what a job that may be requeued starts with: resume this config's run if it has a
            # checkpoint, else start afresh (decided now, when the process starts)
            root = self.config[subcommand].trainer.get("default_root_dir") or "lightning_logs"
            from .run_folder import checkpoints_newest_first

            ckpt_path = "last" if checkpoints_newest_first(str(root)) else None
            self.config[subcommand].ckpt_path = ckpt_path
            if ckpt_path is None:
                print(f"--ckpt_path auto: no checkpoint under {root} yet; training from the start", file=sys.stderr)
        if ckpt_path == "last":
            ckpt_path = self.config[subcommand].ckpt_path = str(find_last_checkpoint(self.config[subcommand]))
        check_checkpoint_file(ckpt_path)
        if ckpt_path is None and subcommand in ("validate", "test", "predict"):
            print(
                f"warning: {subcommand} without --ckpt_path evaluates the config's freshly initialised weights; "
                "pass --ckpt_path FILE (or last) to evaluate a trained model",
                file=sys.stderr,
            )
        asked = comparable(self.config[subcommand].get("model"))
        try:
            self._merge_checkpoint_hparams(subcommand, ckpt_path)
        except (RuntimeError, EOFError, OSError, KeyError) as err:
            first = first_line(err)
            raise ValueError(
                f"cannot read checkpoint {ckpt_path} ({first}); resume from another one, e.g. --ckpt_path last"
            ) from None
        if ckpt_path is not None and subcommand in ("validate", "test", "predict"):
            warning = evaluation_data_warning(ckpt_path, self.config[subcommand].get("data"))
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
        changed = differences(comparable(self.config[subcommand].get("model")), asked, "model")
        if changed and ckpt_path is not None:
            listed = "; ".join(f"{key}: {saved!r} there, {now!r} here" for key, saved, now in changed[:3])
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise ValueError(
                f"checkpoint {ckpt_path} was made with other hyperparameters than this command's ({listed}{more}): "
                "a checkpoint keeps its own; drop the overrides, or use the config it was trained with"
            )

    def _merge_checkpoint_hparams(self, subcommand: str, ckpt_path: Optional[str]) -> None:
        """LightningCLI's reading of a checkpoint's hyperparameters into the config, for checkpoints
        written before the optimiser and schedule were pieces too (their flat recipe is rewritten)."""
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch

        from .tasks.legacy import upgrade_recipe_hparams

        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams = upgrade_recipe_hparams(hparams) or dict(hparams)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_trainer(self, **kwargs):
        # no logger chosen in the config: CSV and TensorBoard (Lightning's default is one of the two)
        config = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        if "logger" not in kwargs and trainer.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(trainer.get("default_root_dir") or os.getcwd())
        if "plugins" not in kwargs:
            kwargs["plugins"] = with_atomic_checkpoint_io(trainer.get("plugins"))
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        # no public hook wraps the subcommand's run (before_/after_<subcommand> do not see failures),
        # so removing the run folder of a run that failed needs this override
        # a fast_dev_run's DummyLogger has no log dir; RunInfo then writes to default_root_dir
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        created = _first_missing_ancestor(Path(log_dir)) if log_dir else None
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # leave no half-made run folder behind for a run that never wrote a checkpoint
            if created is not None and created.is_dir() and not any(created.rglob("*.ckpt")):
                shutil.rmtree(created, ignore_errors=True)
            raise


def _first_missing_ancestor(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = path.absolute()
    missing = None
    while not path.exists():
        missing = path
        path = path.parent
    return missing


def build_cli(args: Optional[Sequence[str]] = None, run: bool = True) -> CSALightningCLI:
    import warnings

    quiet_lightning()
    with warnings.catch_warnings():
        # the tools (the ablation's plan check, analyze) call the CLI with args from within a command of
        # their own; LightningCLI would warn that the process also has command-line arguments
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _build_cli(args, run)


def _build_cli(args: Optional[Sequence[str]], run: bool) -> CSALightningCLI:
    return CSALightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        # parse errors raise instead of printing a usage dump first: main() prints one line
        parser_kwargs={"exit_on_error": False, **{c: {"exit_on_error": False} for c in SUBCOMMANDS}},
        args=list(args) if args is not None else None,
        run=run,
    )


SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: what a bad key or value's line ends with
HELP_HINT = " (python cli.py fit --help lists every option)"


def input_errors() -> tuple:
    """What a command line or a config can get wrong (a bad key or value, a missing file, a class that
    does not import, Lightning refusing a trainer setting): printed as one line. Anything else is a bug
    and keeps its traceback."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ArgumentError, FileNotFoundError, ValueError, TypeError, ImportError, MisconfigurationException)


def input_error_line(err: BaseException, hint: str = "") -> str:
    """The one line for an input error: jsonargparse's nested message read by
    `csa_lightning.config_errors.parse_error_line` (then ``hint``), anything else's first useful line."""
    return f"{parse_error_line(err)}{hint}" if isinstance(err, ArgumentError) else one_line(err)


def repeated_option(argv: Sequence[str]) -> Optional[str]:
    """The message for a key given twice on one command line (argparse's "the last one wins" would drop
    the first without a word), or None. ``--config`` may repeat (configs layer, later over earlier), as
    may ``--KEY+=VALUE`` (it appends); a key set in a config and again on the command line is layering too."""
    seen: dict = {}
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if not token.startswith("--") or token == "--":
            continue
        key, _, inline = token[2:].partition("=")
        if key == "config" or key.endswith("+") or not key:
            continue
        value = inline if inline or "=" in token else (tokens[i + 1] if i + 1 < len(tokens) else "")
        if key in seen:
            return (
                f"--{key} is given twice ({seen[key]}, then {value}); give it once (a value in a --config file "
                "may be overridden on the command line: that is how configs layer)"
            )
        seen[key] = value
    return None


def main(args: Optional[Sequence[str]] = None, run: bool = True) -> CSALightningCLI:
    """Run the CLI; input errors become ``error: ...`` on one line and exit status 2."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .checks import hold_run_lock, process_rank
    from .run_folder import run_lock_from_environment

    repeated = repeated_option(sys.argv[1:] if args is None else args)
    if repeated:
        print(f"error: {repeated}", file=sys.stderr)
        raise SystemExit(2)
    lock = run_lock_from_environment()
    if lock and run and os.environ.get("LOCAL_RANK", "0") == "0" and process_rank() == 0:
        # the ablation runner's runs: this process (not only its runner) holds its run folder

        try:
            hold_run_lock(lock)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    try:
        if os.environ.get("CSA_LIGHTNING_TRACEBACK"):
            return build_cli(args, run)
        try:
            return build_cli(args, run)
        except SIGTERMException:
            # Lightning ends a SIGTERM'd run with status 0; 128 + 15 tells a script or a scheduler it
            # did not finish (SigtermWatchdog printed the checkpoint to resume from)
            raise SystemExit(143) from None
        except input_errors() as err:
            print(f"error: {input_error_line(err, HELP_HINT)}", file=sys.stderr)
            raise SystemExit(2) from None
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Destroy the DDP process group before the interpreter exits.

    Lightning leaves it alive after fit (for later trainer calls); a gloo group still alive at
    interpreter exit sometimes aborts the process with "terminate called without an active
    exception" (exit -6) after a finished run (measured: 1 run in 4 of the 2-process CPU test).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
