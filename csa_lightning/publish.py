"""Turn a trained classifier into a model folder with its model card, and publish it.

    python -m csa_lightning.publish --ckpt runs/demo_digits_csa --out models/csa_resnet18_digits
    python -m csa_lightning.publish --ckpt RUN --out FOLDER --push USER/REPO   # with a Hugging Face account

``--ckpt`` is a ClassificationModule checkpoint or a run folder (its best checkpoint by the metric
its checkpoints monitor, else its newest). The folder
(`csa_lightning.models.model_folder`) holds safetensors weights, the network's config and a model card
(``huggingface_hub``'s ModelCard): the data it was trained on, the recipe, the accuracy from the run's
own record (the ablation record beside the checkpoint, else the checkpoint's best-score state), the
code provenance stored in the checkpoint, and the licence. The folder is loaded back and compared
with the checkpoint's network before the command reports success (outputs bit-equal). ``--push``
uploads the folder to the Hugging Face Hub (``huggingface-cli login`` first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .checks import require_writable_folder
from .errors import ToolParser, UsageError, command, first_line, non_empty

__all__ = ["publish", "model_card", "run_record", "main"]


def run_record(checkpoint_path: str, checkpoint: Dict[str, Any]) -> Tuple[Dict[str, float], str]:
    """The accuracy the run recorded for itself: ({metric: value}, where it comes from). The ablation
    record (result.json) of the run folder that holds the checkpoint, else the checkpoint's own
    best-score state (its ModelCheckpoint's monitor and best value)."""
    from .run_folder import RunFolder, is_done

    for folder in list(Path(checkpoint_path).resolve().parents)[:4]:
        result_path = RunFolder(folder).result
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if is_done(result):
                metrics = {k: float(v) for k, v in result["final"].items()}
                if result.get("best") is not None:
                    metrics[f"best {result['monitor']}"] = float(result["best"])
                return metrics, f"the run's record {result_path} (last epoch; best over epochs)"
    best = _best_state(checkpoint)
    if best is not None:
        same = Path(best["best_model_path"]).name == Path(checkpoint_path).name
        where = "these weights" if same else f"epoch of {Path(best['best_model_path']).name}"
        return {
            f"best {best['monitor']}": float(best["best_model_score"])
        }, f"the checkpoint's best-score state ({where})"
    return {}, "no record: the run validated nothing"


def _best_state(checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The state of the checkpoint callback that monitors a metric (its best value and file), if any."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            return state
    return None


def _markdown_table(mapping: Dict[str, Any]) -> List[str]:
    return ["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in mapping.items())]


def model_card(name: str, checkpoint_path: str, checkpoint: Dict[str, Any], metrics: Dict[str, float],
               metrics_source: str, weights_sha256: str, license: str) -> str:  # fmt: skip
    """The model card (README.md with its YAML header), from what the checkpoint says about its run."""
    from huggingface_hub import ModelCardData

    hparams = checkpoint.get("hyper_parameters") or {}
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data_class = data.pop("_class_path", None)
    data.pop("_instantiator", None)
    net = (hparams.get("net") or {}).get("init_args", {})
    recipe = {k: v for k, v in hparams.items() if not k.startswith("_") and k != "net"}
    info = checkpoint.get("run_info") or {}
    code = info.get("code") or {}
    tags = ["image-classification", "csa-lightning", "channel-attention", "resnet"]
    card_data = ModelCardData(license=license, library_name="timm", pipeline_tag="image-classification", tags=tags)
    results = [f"| {k} | {v:.4f} |" for k, v in metrics.items()] or ["| (none) | |"]
    provenance = {
        "csa-lightning commit": f"{info.get('git_commit')}{' (uncommitted changes)' if info.get('git_dirty') else ''}",
        "packages": ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items() if v),
        "python": info.get("python"),
        "files the model's arguments named": json.dumps(code.get("named_files") or {}),
        "weights (model.safetensors) sha256": weights_sha256,
    }
    sources = {f"`{k}`": v for k, v in (code.get("files") or {}).items()}
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# {name}", "",
        f"A ResNet-{net.get('depth')} with {net.get('attention')} channel-attention gates "
        f"({net.get('num_classes')} classes), trained with csa-lightning.", "",
        "## How to load it", "",
        "FOLDER is this folder, or `hf-hub:USER/REPO` for timm once it is on the Hugging Face Hub.", "",
        "```python",
        "import csa_lightning, timm, torch",
        "model = csa_lightning.models.load_model_folder(FOLDER)                    # this package alone",
        "model = timm.create_model('local-dir:FOLDER', pretrained=True)            # timm (num_classes=N: new head)",
        f"model = torch.hub.load('OWNER/csa-lightning', '{name}', weights=FOLDER)  # torch.hub",
        "```", "",
        "## Training data", "",
        f"`{data_class}`:" if data_class else "The data module's settings (its class was not recorded):", "",
        *_markdown_table(data), "",
        "## Recipe", "",
        f"The published weights are those of `{Path(checkpoint_path).name}`, saved at epoch {checkpoint.get('epoch')} "
        f"after {checkpoint.get('global_step')} optimiser steps.", "",
        *_markdown_table({k: json.dumps(v) for k, v in recipe.items()}), "",
        "## Results", "",
        f"Validation, from {metrics_source}:", "",
        "| metric | value |", "|---|---|", *results, "",
        "## Provenance", "",
        *_markdown_table(provenance), "",
        "The source files the run was built from, by content hash (csa_lightning.provenance):", "",
        *(_markdown_table(sources) if sources else ["(not recorded)"]), "",
        "## Licence", "",
        f"{license} (the weights; csa-lightning itself is MIT).", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _preprocessing(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """timm's pretrained-config fields from the data module's evaluation settings."""
    from .analysis.images import Preprocessing  # the one reading of a data module's evaluation size

    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if not data:
        return {}
    pre = Preprocessing.from_data_hparams(data)
    return {"input_size": (3, pre.size, pre.size), "mean": pre.mean, "std": pre.std, "crop_pct": pre.crop_ratio}


def publish(ckpt: str, out: str, license: str = "mit") -> Tuple[Path, float]:
    """Write the model folder of ``ckpt`` (a checkpoint or run folder) into ``out`` and check it: (the
    folder, the largest output difference between the folder's network and the checkpoint's)."""
    from .export import load_classifier
    from .models import AttentionResNet
    from .models.model_folder import (
        CARD_FILE,
        WEIGHTS_FILE,
        load_model_folder,
        model_config,
        model_name,
        save_model_folder,
    )
    from .run_folder import resolve_checkpoint

    path = resolve_checkpoint(ckpt, what="--ckpt")
    if Path(ckpt).is_dir():  # a run folder: its best epoch's weights, which its record's best score describes
        best = _best_state(torch.load(path, map_location="cpu", weights_only=True))
        if best is not None and Path(best["best_model_path"]).is_file():
            path = best["best_model_path"]
    model, _ = load_classifier(path)
    if not isinstance(model, AttentionResNet):
        raise ValueError(f"{path} holds a {type(model).__name__}; a model folder holds an attention ResNet "
                         "(ResNetSpec) network")  # fmt: skip
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    folder = save_model_folder(model, out, model_config(model, _preprocessing(checkpoint)))
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    metrics, source = run_record(path, checkpoint)
    card = model_card(
        model_name(model.build_args["attention"], model.depth), path, checkpoint, metrics, source, digest, license
    )
    (folder / CARD_FILE).write_text(card)
    loaded = load_model_folder(folder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        difference = float((loaded(x) - model.eval()(x)).abs().max())
    return folder, difference


def push(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the Hugging Face Hub repository ``repo`` (created if new); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="csa-lightning model folder")
    return f"https://huggingface.co/{repo}"


@command
def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = ToolParser(prog="python -m csa_lightning.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, type=non_empty, help="a ClassificationModule checkpoint or run folder")
    parser.add_argument("--out", required=True, type=non_empty, help="the model folder to write")
    parser.add_argument("--license", default="mit", type=non_empty, help="the weights' licence (an SPDX id)")
    parser.add_argument("--push", metavar="USER/REPO", help="upload the folder to this Hugging Face Hub repository")
    args = parser.parse_args(argv)
    if Path(args.out).is_file():
        raise UsageError(f"--out {args.out} is a file; give the folder to write the model into")
    require_writable_folder("--out", args.out)
    try:
        folder, difference = publish(args.ckpt, args.out, args.license)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise UsageError(first_line(err)) from None
    if difference != 0.0:
        raise RuntimeError(f"the folder's network differs from the checkpoint's by {difference:.2e}")
    print(f"wrote {folder} (model.safetensors, config.json, README.md); loaded back: outputs bit-equal")
    if args.push:
        try:
            print(f"pushed to {push(folder, args.push)}")
        except Exception as err:  # noqa: BLE001 - the hub's errors (no login, no network) are one line each
            raise UsageError(f"--push {args.push}: {first_line(err)} (huggingface-cli login, then run again)") from None
    return folder


if __name__ == "__main__":
    main()
