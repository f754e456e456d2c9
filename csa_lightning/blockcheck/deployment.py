"""Deployment checks of a block: what happens when it leaves eager PyTorch. Every shortfall here is a
`csa_lightning.blockcheck.correctness.Finding` (a limit worth knowing), never a fault.

- torch.export with a dynamic batch, run at another batch size than the export's;
- ONNX through the dynamo exporter, run by onnxruntime (the largest difference to PyTorch);
- timm: the ``attn_layer`` slot of a timm ResNet, and stage gates on a non-ResNet family (ConvNeXt);
- ``torch.jit.trace`` (deprecated upstream: a finding only when it fails).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Tuple

import torch

from ..errors import describe
from .correctness import BlockUnderTest, Finding, correlated_map

__all__ = ["DEPLOYMENT_CHECKS"]

#: a difference above this share of the output's largest value is a finding
TOLERANCE = 1e-4


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> str:
    difference = float((got.double() - expected.double()).abs().max())
    scale = max(1e-30, float(expected.abs().max()))
    if difference > TOLERANCE * scale:
        raise Finding(
            f"{what} differs from PyTorch by {difference:.1e} ({difference / scale:.1e} of its largest value)"
        )
    return f"{what} runs; largest difference to PyTorch {difference:.1e}"


def _eval_block(b: BlockUnderTest):
    block = b.build(16).eval()
    example = correlated_map((2, 16, 7, 7), seed=20)
    other = correlated_map((3, 16, 7, 7), seed=21)  # another batch size than the export's
    with torch.no_grad():
        expected = block(other)
    return block, example, other, expected


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def check_torch_export(b: BlockUnderTest, quick: bool) -> str:
    block, example, other, expected = _eval_block(b)
    try:
        program = torch.export.export(block, (example,), dynamic_shapes=_dynamic_batch())
        with torch.no_grad():
            got = program.module()(other)
    except Exception as err:  # noqa: BLE001 - any failure to export is the finding
        raise Finding(f"torch.export with a dynamic batch fails ({describe(err)})") from None
    return _compare(got, expected, "torch.export (dynamic batch)")


def check_onnx(b: BlockUnderTest, quick: bool) -> str:
    try:
        import onnxruntime
    except ImportError:
        raise Finding("not checked: onnxruntime is not installed (pip install 'csa-lightning[export]')") from None
    block, example, other, expected = _eval_block(b)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "block.onnx"
        try:
            program = torch.onnx.export(block, (example,), dynamo=True, dynamic_shapes=_dynamic_batch(),
                                        opset_version=18, verbose=False)  # fmt: skip
            assert program is not None  # dynamo=True returns the program
            program.save(str(path))
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: other.numpy()})[0])
        except Exception as err:  # noqa: BLE001
            raise Finding(f"ONNX export or onnxruntime fails ({describe(err)})") from None
    return _compare(got, expected, "ONNX (opset 18) in onnxruntime")


def _sane_logits(out: torch.Tensor) -> None:
    if tuple(out.shape) != (2, 10) or not torch.isfinite(out).all():
        raise RuntimeError(f"logits of shape {tuple(out.shape)}, finite: {bool(torch.isfinite(out).all())}")


def check_timm(b: BlockUnderTest, quick: bool) -> str:
    try:
        import timm
    except ImportError:
        raise Finding("not checked: timm is not installed (pip install 'csa-lightning[timm]')") from None
    from ..models.timm_net import add_stage_gates

    x = torch.randn(2, 3, 32, 32)
    done = []
    try:
        layer = functools.partial(b.cls, **b.options) if b.options else b.cls
        model = timm.create_model("resnet18", pretrained=False, num_classes=10, block_args=dict(attn_layer=layer))
        with torch.no_grad():
            out = model.eval()(x)
        _sane_logits(out)
        done.append("timm resnet18 attn_layer")
    except Exception as err:  # noqa: BLE001
        raise Finding(f"timm's attn_layer slot fails ({describe(err)})") from None
    try:
        model = add_stage_gates(timm.create_model("convnext_atto", pretrained=False, num_classes=10), b.cls,
                                options=b.options or None)  # fmt: skip
        with torch.no_grad():
            out = model.eval()(x)
        _sane_logits(out)
        gates: Any = model.attention_gates  # the nn.ModuleDict add_stage_gates adds
        done.append(f"convnext_atto stage gates ({len(gates)})")
    except Exception as err:  # noqa: BLE001
        raise Finding(f"stage gates on timm's convnext_atto fail ({describe(err)})") from None
    return ", ".join(done)


def check_jit_trace(b: BlockUnderTest, quick: bool) -> str:
    block, example, other, expected = _eval_block(b)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the deprecation notice
            traced = torch.jit.trace(block, (example,), check_trace=False)
        with torch.no_grad():
            got = traced(other)
            # a trace records one path: the negated map takes another branch of a data-dependent if
            got_negated, expected_negated = traced(-other), block(-other)
    except Exception as err:  # noqa: BLE001
        raise Finding(f"torch.jit.trace fails ({describe(err)}); deprecated upstream") from None
    _compare(got_negated, expected_negated, "torch.jit.trace on the negated map (a traced branch?)")
    return _compare(got, expected, "torch.jit.trace (deprecated upstream)")


DEPLOYMENT_CHECKS: List[Tuple[str, Callable[[BlockUnderTest, bool], str]]] = [
    ("torch.export", check_torch_export),
    ("ONNX", check_onnx),
    ("timm", check_timm),
    ("jit.trace", check_jit_trace),
]
