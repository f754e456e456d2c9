"""Export a trained classifier to ONNX or a torch.export program, and check it against PyTorch.

    python -m csa_lightning.export --ckpt runs/demo_digits_csa --format onnx --out csa_r18.onnx
    python -m csa_lightning.export --ckpt CKPT --format pt2 --out csa_r18.pt2 [--size 224] [--opset 18]

``--ckpt`` is a ClassificationModule checkpoint or a run folder (its newest checkpoint). The network
is exported in eval mode with a dynamic batch dimension at ``--size`` pixels (default: the
resolution the checkpoint's data module used, else 224): ONNX through the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``), pt2 through ``torch.export`` (``torch.export.save``).
The written file is then run on a random batch of another size (onnxruntime for ONNX, the loaded
program for pt2) and compared with the PyTorch model; the last line names the file and the largest
difference, and the command fails when it exceeds 1e-4 x max(1, max|y|).

While exporting, CSA takes its plain-ops path (the C x C weights as one tensor, no custom
operator, no cached state): the same math as the eager default. Detection checkpoints are refused:
torchvision's detectors (image lists, data-dependent proposal counts) do not export whole with
these exporters; export their classification backbone's checkpoint instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .checks import MAX_IMAGE_SIDE, require_writable_file
from .errors import ToolParser, UsageError, command, first_line, non_empty

__all__ = ["export_model", "check_export", "load_classifier", "main", "TOLERANCE"]

#: largest accepted difference between the exported model and PyTorch, relative to max(1, max|y|)
TOLERANCE = 1e-4


def load_classifier(ckpt: str) -> Tuple[nn.Module, Optional[int]]:
    """The eval-mode network of a ClassificationModule checkpoint (or run folder) and the image size
    its data module used (None if not recorded)."""
    from .run_folder import resolve_checkpoint

    path = resolve_checkpoint(ckpt, what="--ckpt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters", {})
    net = hparams.get("net") or {}
    from .models import ClassifierSpec, network_spec

    try:
        spec = network_spec(net, ClassifierSpec)
    except (TypeError, ValueError) as err:
        if isinstance(net, dict) and _is_detector(net):
            raise ValueError(
                f"{path} is a detection checkpoint: torchvision's detectors do not export whole with torch.export or "
                "the ONNX dynamo exporter here; export the classification checkpoint of its backbone instead"
            ) from None
        raise ValueError(f"{path} is not a ClassificationModule checkpoint of this project ({err})") from None
    model = spec.build()
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if not data:
        return model.eval(), None
    from .analysis.images import Preprocessing  # the one reading of a data module's evaluation size

    return model.eval(), Preprocessing.from_data_hparams(data).size


def _is_detector(net: dict) -> bool:
    from .models import DetectorSpec, network_spec

    try:
        network_spec(net, DetectorSpec)
        return True
    except (TypeError, ValueError):
        return False


def export_model(model: nn.Module, fmt: str, out: str, size: int = 224, opset: int = 18) -> Path:
    """Write ``model`` (eval mode) to ``out`` as ONNX or pt2 with a dynamic batch dimension."""
    model = model.eval()
    example = (torch.randn(2, 3, size, size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {"x": {0: batch}} if "x" in _forward_args(model) else ({0: batch},)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        exported = torch.export.export(model, example, dynamic_shapes=dynamic)
        torch.export.save(exported, str(out_path))
    elif fmt == "onnx":
        onnx_program = torch.onnx.export(
            model, example, dynamo=True, dynamic_shapes=dynamic, opset_version=opset, verbose=False
        )
        assert onnx_program is not None  # dynamo=True returns the program
        onnx_program.save(str(out_path))
    else:
        raise ValueError(f"unknown format '{fmt}': choose onnx or pt2")
    return out_path


def _forward_args(model: nn.Module) -> Sequence[str]:
    import inspect

    return list(inspect.signature(model.forward).parameters)


def check_export(model: nn.Module, path: Path, fmt: str, size: int = 224, batch: int = 3) -> Tuple[float, float]:
    """Run the exported file on a random batch (another size than the export's) and compare with
    PyTorch: (largest absolute difference, the tolerance it must stay under)."""
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected = model.eval()(x)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.export.load(str(path)).module()(x)
    difference = float((got - expected).abs().max())
    return difference, TOLERANCE * max(1.0, float(expected.abs().max()))


@command
def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = ToolParser(prog="python -m csa_lightning.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", required=True, type=non_empty, help="a ClassificationModule checkpoint or a run folder"
    )
    parser.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=None, help="image size (default: the checkpoint's data, else 224)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    args = parser.parse_args(argv)
    if args.opset < 18:
        raise UsageError(f"--opset must be >= 18 (the dynamo exporter's minimum), got {args.opset}")
    if args.size is not None and not 1 <= args.size <= MAX_IMAGE_SIDE:
        raise UsageError(f"--size must be an image side in pixels from 1 to {MAX_IMAGE_SIDE}, got {args.size}")
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the file to write, e.g. {Path(args.out) / 'model.onnx'}")
    require_writable_file("--out", args.out)
    try:
        model, data_size = load_classifier(args.ckpt)
        size = args.size or data_size or 224
        path = export_model(model, args.format, args.out, size, args.opset)
        difference, tolerance = check_export(model, path, args.format, size)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise UsageError(first_line(err)) from None
    verdict = "ok" if difference <= tolerance else f"FAILED (tolerance {tolerance:.2e})"
    print(
        f"wrote {path} ({args.format}, {size} px, dynamic batch); "
        f"largest difference to PyTorch {difference:.2e} {verdict}"
    )
    if difference > tolerance:
        sys.exit(1)
    return difference


if __name__ == "__main__":
    main()
