"""Which checkpoint a command resumes or evaluates, and whether it fits the command: ``--ckpt_path last``
(and ``auto``) finds this config's newest ``last.ckpt`` under its ``default_root_dir`` (a run of another
model or data set is never resumed), and a checkpoint evaluated with other image settings than it was
trained with is named. `csa_lightning.cli` calls these before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config_diff import comparable, first_difference

__all__ = ["find_last_checkpoint", "evaluation_data_warning"]


#: data options that change what an image looks like to the network: evaluating a checkpoint with other
#: values than it was trained with changes its accuracy without an error
_PIXEL_OPTIONS = ("mean", "std", "resolution", "val_resolution", "val_crop_ratio", "image_size")


def evaluation_data_warning(ckpt_path: str, data_config) -> Optional[str]:
    """A warning when the command's data normalises or sizes images otherwise than the checkpoint's run."""
    import torch

    try:
        saved = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - a warning is optional; the checkpoint itself is checked elsewhere
        return None
    trained = saved.get("datamodule_hyper_parameters") or {}
    now = (comparable(data_config) or {}).get("init_args") or {}
    differing = []
    for key in _PIXEL_OPTIONS:
        if key in trained and key in now:
            then_value, now_value = comparable(trained[key]), now[key]
            if then_value != now_value:
                differing.append(f"{key} {then_value!r} then, {now_value!r} now")
    if not differing:
        return None
    return (
        f"checkpoint {ckpt_path} was trained with other image settings ({'; '.join(differing)}): "
        "its scores here are not those of its training run; pass the data options it was trained with"
    )


def _upgrade_saved_model_config(saved: dict) -> None:
    """A run's config.yaml from before the optimiser and schedule were pieces, as pieces (in place)."""
    from .tasks.legacy import upgrade_recipe_hparams

    init_args = ((saved.get("model") or {}).get("init_args")) if isinstance(saved.get("model"), dict) else None
    upgraded = upgrade_recipe_hparams(init_args) if isinstance(init_args, dict) else None
    if upgraded is not None:
        saved["model"]["init_args"] = upgraded


def find_last_checkpoint(config) -> Path:
    """The newest ``last*.ckpt`` of an earlier run of this config (under its default_root_dir).

    "This config's run" means a run whose saved config.yaml (beside its checkpoints folder) has the
    same model and data sections as the command's: a fast_dev_run (which saves no config) or a run
    of another model or data set under the same root is never resumed. When only such runs exist,
    a one-line error names the newest one and what differs. Lightning's own "last" looks only in
    the new run's checkpoint folder, which a versioned logger makes fresh on every start; a resumed
    run logs into a new version folder, so nothing of the interrupted run's logs is overwritten.
    """
    import yaml

    from .run_folder import checkpoints_newest_first, saved_config

    root = Path(config.trainer.get("default_root_dir") or "lightning_logs")
    found = checkpoints_newest_first(str(root))
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {root}; train first, or pass the checkpoint's path"
        )
    current = comparable({"model": config.get("model"), "data": config.get("data")})
    other = None
    for ckpt in found:
        config_file = saved_config(ckpt)
        if not config_file.is_file():
            continue  # a fast_dev_run (Lightning saves no config for it) or a file from elsewhere
        saved = yaml.safe_load(config_file.read_text()) or {}
        _upgrade_saved_model_config(saved)
        difference = first_difference(comparable({"model": saved.get("model"), "data": saved.get("data")}), current)
        if difference is None:
            return ckpt
        other = other or (ckpt, difference)
    if other is not None:
        ckpt, (key, then, now) = other
        raise ValueError(
            f"--ckpt_path last: the newest run under {root} ({ckpt}) has another {key} ({then!r} there, {now!r} now); "
            f"resume it with its own config and --ckpt_path {ckpt}, or set another trainer.default_root_dir"
        )
    raise FileNotFoundError(
        f"--ckpt_path last: no run of this config under {root} (only fast_dev_run checkpoints); train first, "
        "or pass the checkpoint's path"
    )
