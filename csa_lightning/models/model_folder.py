"""A model folder: a trained attention ResNet as the Hugging Face convention keeps a model, loadable by
name without this repository's configs.

    model.safetensors   the weights (safetensors: no code runs when they are read)
    config.json         what rebuilds the network: timm's fields (architecture, num_classes, model_args,
                        pretrained_cfg with the input size and normalisation) and this package's own
                        (the network's build_args under the key csa_lightning)
    README.md           the model card (written by ``python -m csa_lightning.publish``, which also pushes)

Three loaders read the same folder, on disk or as a hub repository: `load_model_folder` (this package
alone), ``timm.create_model("local-dir:FOLDER")`` / ``"hf-hub:USER/REPO"`` (timm, with the names of
`csa_lightning.models.names`), and ``torch.hub.load(..., weights=FOLDER)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .attention_resnet import AttentionResNet

__all__ = [
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "CARD_FILE",
    "model_name",
    "timm_pretrained_cfg",
    "model_config",
    "save_model_folder",
    "load_model_folder",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def model_name(attention: str, depth: int) -> str:
    """The name of the ResNet of ``depth`` with the block ``attention`` ("csa", 50 -> "csa_resnet50")."""
    return f"{attention}_resnet{depth}"


def timm_pretrained_cfg(name: str) -> Dict[str, Any]:
    """timm's pretrained config of a name without published weights (a file or folder supplies them)."""
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875,
                interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                first_conv="conv1", classifier="fc", architecture=name)  # fmt: skip


def model_config(model: AttentionResNet, preprocessing: Optional[Dict[str, Any]] = None,
                 label_names: Optional[List[str]] = None) -> Dict[str, Any]:  # fmt: skip
    """config.json for ``model``. ``preprocessing``: ``input_size`` (C, H, W), ``mean``, ``std``,
    ``crop_pct``, ``interpolation`` as timm's pretrained config names them (default ImageNet's)."""
    args = dict(model.build_args)
    config: Dict[str, Any] = {"csa_lightning": {"build_args": args}}
    if "." not in args["attention"] and args["attention"] != "none":  # a registered block: it has a timm name
        name = model_name(args["attention"], args["depth"])
        pretrained_cfg = {**timm_pretrained_cfg(name), **(preprocessing or {}), "num_classes": args["num_classes"]}
        pretrained_cfg.pop("architecture")
        pretrained_cfg.pop("url")
        rest = {k: v for k, v in args.items() if k not in ("depth", "attention", "num_classes") and v is not None}
        config = {"architecture": name, "num_classes": args["num_classes"], "num_features": model.fc.in_features,
                  "model_args": rest, "pretrained_cfg": pretrained_cfg, **config}  # fmt: skip
    if label_names:
        config["label_names"] = list(label_names)
    return config


def save_model_folder(model: AttentionResNet, folder, config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights and config (default `model_config`) into ``folder``; returns it."""
    from safetensors.torch import save_file

    if not isinstance(model, AttentionResNet):
        raise ValueError(f"a model folder holds an AttentionResNet (or plain ResNet) of this package, not a "
                         f"{type(model).__name__}")  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config or model_config(model), indent=2) + "\n")
    return folder


def load_model_folder(folder) -> AttentionResNet:
    """The network a model folder holds, in eval mode, its weights loaded exactly (every tensor, every
    shape). A missing, corrupt or mismatched file is a one-line error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    fix = "write it with python -m csa_lightning.publish --ckpt RUN --out FOLDER"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} not found; {fix}")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"model folder {folder} has no {path.name}; {fix}")
    try:
        args = json.loads(config_path.read_text())["csa_lightning"]["build_args"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"{config_path} is not a csa-lightning model config (no csa_lightning.build_args); {fix}"
        ) from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}); {fix}") from None
    model = AttentionResNet(**args)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if shapes:
        what = shapes[0]
    elif missing:
        what = f"{len(missing)} tensors missing, e.g. {missing[0]}"
    elif unexpected:
        what = f"{len(unexpected)} tensors the config's network lacks, e.g. {unexpected[0]}"
    if shapes or missing or unexpected:
        raise ValueError(f"{weights_path} does not match {config_path.name} ({what}): the two files come from "
                         f"different models; {fix}")  # fmt: skip
    model.load_state_dict(state)
    return model.eval()
