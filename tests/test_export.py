"""Export: every block in every mode and the attention ResNet-18s through torch.export (dynamic
batch) and ONNX (dynamo exporter, onnxruntime), TorchScript tracing, and `python -m csa_lightning.export`."""

import pytest
import torch
from torch import nn

from csa_lightning.attention import available_attentions, resolve_attention
from csa_lightning.attention.csa_options import CONTIGUITY_MODES
from csa_lightning.models import attention_resnet

from .conftest import refusal

BATCH = torch.export.Dim("batch", min=1, max=1024)


def _all_block_modes(channels: int = 16) -> nn.Module:
    """One module chaining every block, CSA in every contiguity x distance mode (and contiguity_grad)."""
    blocks = [resolve_attention(name)(channels) for name in available_attentions() if name not in ("none", "csa")]
    csa = resolve_attention("csa")
    for contiguity in CONTIGUITY_MODES:
        blocks.append(csa(channels, reduction=4, contiguity=contiguity))
        blocks.append(csa(channels, reduction=4, contiguity=contiguity, distance="projected", projection_dim=8))
        blocks.append(csa(channels, reduction=4, contiguity=contiguity, distance="pooled", pool_size=4))
    blocks.append(csa(channels, reduction=4, contiguity_grad=True))
    return nn.Sequential(*blocks).eval()


def _tolerance(y: torch.Tensor) -> float:
    return 1e-4 * max(1.0, float(y.abs().max()))


def _onnx_matches(model: nn.Module, example: torch.Tensor, other: torch.Tensor, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: BATCH},), opset_version=18,
                                verbose=False)  # fmt: skip
    program.save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    with torch.no_grad():
        expected = model(other)
    assert float((torch.from_numpy(got) - expected).abs().max()) <= _tolerance(expected)


def test_every_block_and_mode_exports_with_a_dynamic_batch(tmp_path):
    """Long (~30 s): one torch.export and one ONNX export (the dynamo exporter decomposes and
    translates every op) of a chain holding every block and every CSA mode."""
    torch.manual_seed(0)
    model = _all_block_modes()
    example, other = torch.randn(2, 16, 12, 12), torch.randn(5, 16, 12, 12)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},))
    with torch.no_grad():
        expected = model(other)
        torch.testing.assert_close(program.module()(other), expected, rtol=0, atol=_tolerance(expected))
        # exporting left the eager model as it was (no state cached while tracing)
        torch.testing.assert_close(model(other), expected, rtol=0, atol=0)
    _onnx_matches(model, example, other, tmp_path)


@pytest.mark.parametrize("attention", ["none", "se", "cbam", "eca", "gct", "csa"])
def test_attention_resnet18_torch_export(attention):
    torch.manual_seed(0)
    model = attention_resnet(18, attention, num_classes=10).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: BATCH},))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert float((program.module()(x) - expected).abs().max()) <= _tolerance(expected)


def test_torchscript_trace_works():
    torch.manual_seed(0)
    model = attention_resnet(18, "csa", num_classes=10).eval()
    traced = torch.jit.trace(model, (torch.randn(2, 3, 32, 32),), check_trace=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_command_writes_and_checks_onnx(tmp_path, capsys):
    """The command on a CSA-ResNet-18 checkpoint: ONNX run by onnxruntime (the whole CSA-ResNet-18
    through the dynamo exporter, ~15 s of exporting here). Its pt2 format is exported from a run
    folder by tests/test_your_project.py."""
    from csa_lightning.export import main

    from .conftest import make_classification_checkpoint

    ckpt = make_classification_checkpoint(tmp_path / "csa.ckpt", "csa", steps=1)
    pytest.importorskip("onnxruntime")
    for fmt in ("onnx",):
        difference = main(["--ckpt", ckpt, "--format", fmt, "--out", str(tmp_path / f"m.{fmt}"), "--size", "32"])
        assert (tmp_path / f"m.{fmt}").stat().st_size > 100_000 and difference < 1e-4
        assert "largest difference to PyTorch" in capsys.readouterr().out.strip().splitlines()[-1]


def test_export_command_refuses_what_it_cannot_export(tmp_path, capsys):
    from csa_lightning.export import main

    info = refusal(capsys, main, ["--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx")])
    assert "no such file or folder" in info
    torch.save({"hyper_parameters": {"net": {"class_path": "csa_lightning.models.RCNNSpec", "init_args": {}}},
                "state_dict": {}}, tmp_path / "det.ckpt")  # fmt: skip
    info = refusal(capsys, main, ["--ckpt", str(tmp_path / "det.ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert "is a detection checkpoint" in info
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((tmp_path / "det.ckpt").read_bytes()[:200])
    (tmp_path / "folder").mkdir()
    for args, message in (
        (
            ["--ckpt", str(cut)],
            f"error: checkpoint {cut} is corrupt or not a torch checkpoint (truncated write?); "
            "pass another --ckpt file or run folder",
        ),
        (["--ckpt", str(tmp_path / "folder")], f"error: --ckpt: no .ckpt file under {tmp_path / 'folder'}"),
        (["--ckpt", str(cut), "--size", "0"], "error: --size must be an image side in pixels from 1 to 4096, got 0"),
        (["--ckpt", str(cut), "--size", "100000"], "error: --size must be an image side in pixels from 1 to 4096"),
    ):
        info = refusal(capsys, main, [*args, "--out", str(tmp_path / "m.onnx")])
        assert info.startswith(message)
    info = refusal(capsys, main, ["--ckpt", str(cut), "--out", str(tmp_path / "folder")])
    assert info.startswith(f"error: --out {tmp_path / 'folder'} is a folder; give the file to write")


class TinyGatedNet(nn.Sequential):
    def __init__(self, attention: str, num_classes: int):
        super().__init__(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            resolve_attention(attention)(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )  # fmt: skip


from csa_lightning.models import ClassifierSpec  # noqa: E402


class TinySpec(ClassifierSpec):
    """A one-gate network: compiles in seconds where a ResNet-18 takes minutes on a CPU."""

    def __init__(self, attention: str = "csa", num_classes: int = 10) -> None:
        self.attention = attention
        self.num_classes = num_classes

    def build(self) -> nn.Module:
        return TinyGatedNet(self.attention, self.num_classes)


@pytest.mark.slow
def test_model_compile_trains_with_unchanged_checkpoint_keys(in_tmp_cwd):
    """--model.compile true: the network is compiled in place (training steps through the compiled
    graph), and its checkpoint has the same keys as without compile. Long (~35 s): inductor compiles
    the forward and backward graphs even of this one-gate network."""
    from csa_lightning.cli import main

    from .conftest import DEMO_CONFIG

    net = '{"class_path": "tests.test_export.TinySpec", "init_args": {"attention": "csa", "num_classes": 10}}'
    cli = main(["fit", "--config", str(DEMO_CONFIG), "--model.net", net, "--model.compile", "true",
                "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16",
                "--data.batch_size", "32", "--data.limit_train_samples", "64", "--trainer.max_epochs", "1",
                "--trainer.limit_val_batches", "1"])  # fmt: skip
    model = cli.model.model
    assert model._compiled_call_impl is not None
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_epoch"])
    keys = set(torch.load(next(in_tmp_cwd.rglob("last.ckpt")), weights_only=True)["state_dict"])
    assert keys == {f"model.{k}" for k in TinySpec().build().state_dict()}
